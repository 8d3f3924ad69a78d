#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# perftest between two processes in the guest over loopback (TCP 18515 on
# localhost for the exchange, RoCE GID index 0: -x 0), small runs
# (-n ITERS, -s 4096): ib_write_bw, ib_read_bw, ib_send_bw, ib_atomic_bw,
# ib_write_lat, each with and without --odp. perftest posts with the
# ibv_wr_* API (ibv_create_qp_ex with send_ops_flags) by default.
# With the device's ODP off the --odp runs must be refused cleanly (both
# processes exit non-zero, neither by the time limit). ib_atomic_bw is
# skipped when the device has no atomics (atomic_cap ATOMIC_NONE).
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup perftest
LIMIT=${LIMIT:-120}
ITERS=${ITERS:-200}

if [ "$DATAPATH" = 0 ]; then
	t_skip "perftest" "the kernel driver runs without the data path (max_qp 0)"
	t_summary
	exit 0
fi

# The result line: "#bytes #iterations ..." header, then the numbers.
result() { awk '/^ *#bytes/ { getline; print; exit }' <<<"$CLI_OUT" | tr -s ' ' | sed 's/^ //'; }

pt() {
	local tool=$1 odp=$2 size=4096 args=()
	[ "$tool" = ib_atomic_bw ] && size=8
	args=(-d "$IBDEV" -x 0 -p "$PORT" -n "$ITERS" -F)
	[ "$tool" = ib_atomic_bw ] || args+=(-s "$size")
	[ "$odp" = odp ] && args+=(--odp)
	local desc="$tool ${args[*]:2}"
	if [ "$tool" = ib_atomic_bw ] && ! has_atomics; then
		t_skip "$desc" "the device has no atomics (atomic_cap ATOMIC_NONE)"
		return
	fi
	odp_mark
	run_pair "$LIMIT" "$tool" "${args[@]}" -- "$tool" "${args[@]}" localhost
	odp_delta
	if [ "$odp" = odp ] && [ "$ODP" = false ]; then
		if pair_refused; then
			t_ok "$desc with device ODP off: refused ($(grep -m1 -i 'odp\|on.demand' <<<"$CLI_OUT$SRV_OUT" || head -1 <<<"$CLI_OUT"))"
		else
			t_fail "$desc with device ODP off: expected a clean refusal" "$(pair_detail)"
		fi
	elif ! pair_ok || [ -z "$(result)" ]; then
		t_fail "$desc" "$(pair_detail)"
	elif [ "${VIOLATIONS:-0}" != 0 ]; then
		t_fail "$desc: the DMA oracle recorded $VIOLATIONS violations" "$(pair_detail)"
	elif [ "$odp" = odp ] && [ "${FAULTS:-1}" = 0 ]; then
		t_fail "$desc: no page fault on the ODP MRs" "$(pair_detail)"
	else
		t_ok "$desc: $(result) (device page faults +${FAULTS:-?}, violations +${VIOLATIONS:-?})"
	fi
}

for tool in ib_write_bw ib_read_bw ib_send_bw ib_atomic_bw ib_write_lat; do
	pt "$tool" plain
	pt "$tool" odp
done
t_summary
