#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# rdma-core's own pyverbs ODP tests (tests.test_odp from the rdma-core
# source the lab builds against), one TAP line per test case. They register
# ODP MRs smaller than a page (1 KiB) and drop the buffers with
# MADV_DONTNEED between iterations, so every iteration faults a page that
# reaches past the MR's bytes; ibv_rc_pingpong and perftest use page-sized
# buffers and do not cover that. Skipped cases (implicit ODP, huge pages,
# XRC) are reported as skips.
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup pyverbs-odp
LIMIT=${LIMIT:-300}
SRC=''
for d in /opt/odp-rnic/pkgsrc/rdma-core-*/tests; do
	[ -d "$d" ] && SRC=$d
done

if [ "$DATAPATH" = 0 ]; then
	t_skip "pyverbs tests.test_odp" "the kernel driver runs without the data path (max_qp 0)"
elif [ "$ODP" != true ]; then
	t_skip "pyverbs tests.test_odp" "the device's ODP is off"
elif [ -z "$SRC" ] || ! python3 -c 'import pyverbs' 2>/dev/null; then
	t_skip "pyverbs tests.test_odp" "no rdma-core tests or pyverbs in the guest"
else
	work=$(mktemp -d)
	cp -r "$SRC" "$work/tests"
	odp_mark
	out=$(cd "$work" && timeout "$LIMIT" python3 tests/run_tests.py --dev "$IBDEV" -v tests.test_odp 2>&1)
	rc=$?
	odp_delta
	rm -rf "$work"
	n=0
	while read -r name result; do
		n=$((n + 1))
		case "$result" in
		ok) t_ok "$name" ;;
		skipped*) t_skip "$name" "${result#skipped }" ;;
		*) t_fail "$name: $result" "$(grep -A12 -F "$name" <<<"$out" | grep -m3 -E 'Error|status')" ;;
		esac
	done < <(sed -nE 's/^(test_[A-Za-z0-9_]+) \(.*\) \.\.\. (.*)$/\1 \2/p' <<<"$out")
	if [ "$n" = 0 ] || { [ "$rc" != 0 ] && [ "$T_FAIL" = 0 ]; }; then
		t_fail "pyverbs tests.test_odp exited with status $rc" "$(tail -20 <<<"$out")"
	elif [ "${VIOLATIONS:-0}" != 0 ]; then
		t_fail "pyverbs tests.test_odp: the DMA oracle recorded $VIOLATIONS violations"
	else
		echo "# device page faults +${FAULTS:-?}, violations +${VIOLATIONS:-?}"
	fi
fi
t_summary
