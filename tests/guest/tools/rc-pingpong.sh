#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# ibv_rc_pingpong -g 0 between two processes in the guest (TCP 18515 on
# localhost for the exchange), with buffer validation (-c):
#   plain        pinned MRs
#   -e           the same, sleeping on CQ events (req_notify_cq, the CQ's
#                interrupt, the completion channel) instead of polling
#   -o           an ODP MR
#   -o -P        an ODP MR prefetched with ibv_advise_mr (-P needs -o)
#   -O           implicit ODP (the kernel must advertise it with ODP on)
# With the device's ODP on the ODP variants pass; with it off they must be
# refused cleanly: both processes exit non-zero, neither by the time limit.
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup ibv_rc_pingpong
LIMIT=${LIMIT:-60}
ITERS=${ITERS:-100}

pp() {
	local desc=$1 expect=$2 odp=0
	shift 2
	case " $* " in *" -o "* | *" -O "*) odp=1 ;; esac
	odp_mark
	run_pair "$LIMIT" ibv_rc_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n "$ITERS" -c "$@" -- \
		ibv_rc_pingpong -d "$IBDEV" -g 0 -p "$PORT" -n "$ITERS" -c "$@" localhost
	odp_delta
	if [ "$expect" = pass ]; then
		# an ODP MR starts empty: the device must have faulted (a
		# prefetch may have mapped everything first)
		if ! pair_ok || grep -q "Couldn't prefetch" <<<"$SRV_OUT$CLI_OUT"; then
			t_fail "$desc" "$(pair_detail)"
		elif [ "${VIOLATIONS:-0}" != 0 ]; then
			t_fail "$desc: the DMA oracle recorded $VIOLATIONS violations" "$(pair_detail)"
		elif [ "$odp" = 1 ] && [[ " $* " != *" -P "* ]] && [ "${FAULTS:-1}" = 0 ]; then
			t_fail "$desc: no page fault on an ODP MR" "$(pair_detail)"
		else
			t_ok "$desc: $(grep -m1 'iters in' <<<"$CLI_OUT") (device page faults +${FAULTS:-?}, violations +${VIOLATIONS:-?})"
		fi
	else
		if pair_refused; then
			t_ok "$desc: refused ($(grep -m1 -i 'odp\|capable\|on-demand' <<<"$CLI_OUT" || head -1 <<<"$CLI_OUT"))"
		else
			t_fail "$desc: expected a clean refusal" "$(pair_detail)"
		fi
	fi
}

if [ "$DATAPATH" = 0 ]; then
	t_skip "ibv_rc_pingpong" "the kernel driver runs without the data path (max_qp 0)"
	t_summary
	exit 0
fi

pp "ibv_rc_pingpong -g 0" pass
pp "ibv_rc_pingpong -g 0 -e (CQ events)" pass -e
if [ "$ODP" = true ]; then
	pp "ibv_rc_pingpong -g 0 -o (ODP MR)" pass -o
	pp "ibv_rc_pingpong -g 0 -o -P (ODP MR, prefetched)" pass -o -P
	if has_implicit_odp; then
		pp "ibv_rc_pingpong -g 0 -O (implicit ODP)" pass -O
	else
		t_fail "ibv_rc_pingpong -g 0 -O (implicit ODP)" \
			"device ODP on, but the kernel does not advertise IBV_ODP_SUPPORT_IMPLICIT"
	fi
else
	pp "ibv_rc_pingpong -g 0 -o with device ODP off" refuse -o
	pp "ibv_rc_pingpong -g 0 -o -P with device ODP off" refuse -o -P
	pp "ibv_rc_pingpong -g 0 -O with device ODP off" refuse -O
fi
t_summary
