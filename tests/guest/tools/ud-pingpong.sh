#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# ibv_ud_pingpong -g 0 between two processes in the guest (TCP 18515 on
# localhost), with buffer validation (-c): UD QPs, address handles, GRH on
# receive.
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup ibv_ud_pingpong
LIMIT=${LIMIT:-60}
ITERS=${ITERS:-100}

if [ "$DATAPATH" = 0 ]; then
	t_skip "ibv_ud_pingpong" "the kernel driver runs without the data path (max_qp 0)"
	t_summary
	exit 0
fi
ud=$(ud_probe 2>&1)
case "$ud" in
yes) ;;
no)
	t_skip "ibv_ud_pingpong" "UD QPs refused with EOPNOTSUPP (the device lacks ODPRNIC_CAP_UD)"
	t_summary
	exit 0
	;;
*)
	t_fail "ibv_ud_pingpong: probing for UD QPs" "$ud"
	t_summary
	exit 1
	;;
esac
# the message must fit the active MTU (1024 on a 1500-byte netdev)
run_pair "$LIMIT" ibv_ud_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n "$ITERS" -s 1024 -c -- \
	ibv_ud_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n "$ITERS" -s 1024 -c localhost
if pair_ok; then
	t_ok "ibv_ud_pingpong -g 0 -c: $(grep -m1 'iters in' <<<"$CLI_OUT")"
else
	t_fail "ibv_ud_pingpong -g 0 -c" "$(pair_detail)"
fi
t_summary
