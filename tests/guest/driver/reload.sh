#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# odp_rnic.ko unloaded and loaded again CYCLES times (default 20), with
# traffic in between: after each load the netdev comes up, port 1 reaches
# ACTIVE and ibv_rc_pingpong runs between two processes (pinned MRs; every
# second cycle an ODP MR when the device's ODP is on). Afterwards the
# kernel log since the first unload must hold no warning, oops, leak or
# MAD-layer error.
set -uo pipefail
. "$(dirname "$0")/../tools/common.bash"
tools_setup ibv_rc_pingpong
CYCLES=${CYCLES:-20}
MODULE=/opt/odp-rnic/modules/$(uname -r)/odp_rnic.ko

mark=$(dmesg | wc -l)
detail='' c=0
for ((c = 1; c <= CYCLES; c++)); do
	rmmod odp_rnic || { detail="cycle $c: rmmod failed"; break; }
	insmod "$MODULE" || { detail="cycle $c: insmod $MODULE failed"; break; }
	odprnic_netup || { detail="cycle $c: $NETUP_ERR"; break; }
	args=(-c)
	[ "$ODP" = true ] && [ $((c % 2)) = 0 ] && args+=(-o)
	run_pair 60 ibv_rc_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n 20 "${args[@]}" -- \
		ibv_rc_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n 20 "${args[@]}" localhost
	pair_ok || { detail="cycle $c (${args[*]}): $(pair_detail)"; break; }
done
if [ -z "$detail" ]; then
	t_ok "$CYCLES unload/load cycles, each followed by ibv_rc_pingpong"
else
	t_fail "$CYCLES unload/load cycles with traffic" "$detail"
fi

log=$(dmesg | tail -n +"$((mark + 1))")
bad=$(grep -E 'WARNING|BUG|Oops|Call Trace|refcount|leak|ib_mad|Couldn.t|odp_rnic.*(error|failed)' <<<"$log" || true)
if [ -z "$bad" ]; then
	t_ok "kernel log over the cycles: no warning ($(wc -l <<<"$log") lines)"
else
	t_fail "kernel log over the cycles holds warnings" "$(head -n 20 <<<"$bad")"
fi
t_summary
