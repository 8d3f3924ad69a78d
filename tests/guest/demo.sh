#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# tests/guest/demo.sh [SCENARIO...]: the headline scenarios, in the guest
# (scripts/demo boots the VM and runs this). SCENARIO names a test
# tests/guest/odp/SCENARIO.py; default: dax-odp dax-revocable. Each one runs
# as it would under run-all (its TAP output is shown); the device's counters
# are read through the control socket before and after each. Then the
# scenario table is printed and the results are written as JSON to
# $ODP_RNIC_DEMO_JSON (default /lab/demo.json; the format is described in
# tests/guest/lib/demo_report.py). Exit status 0 only when no step failed
# and every scenario finished.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export ODP_RNIC_TESTS=$here
export PYTHONPATH=$here/lib${PYTHONPATH:+:$PYTHONPATH}
json=${ODP_RNIC_DEMO_JSON:-/lab/demo.json}
[ $# -gt 0 ] || set -- dax-odp dax-revocable
report=$here/lib/demo_report.py

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$report" snapshot "$work/counters-0.json"
i=0
for s in "$@"; do
	i=$((i + 1))
	t=$here/odp/$s.py
	echo "# demo: $s"
	if [ -f "$t" ]; then
		T_NAME=odp/$s python3 "$t" 2>&1 | tee "$work/$s.tap"
		echo "${PIPESTATUS[0]}" >"$work/$s.rc"
	else
		echo "Bail out! no scenario $t" | tee "$work/$s.tap"
		echo 1 >"$work/$s.rc"
	fi
	python3 "$report" snapshot "$work/counters-$i.json"
done
python3 "$report" parse "$work" "$@" >"$work/demo.json"
cp "$work/demo.json" "$json" 2>/dev/null || echo "# demo: cannot write $json"
echo
python3 "$report" table <"$work/demo.json"
