#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Compare two runs of the guest suite test by test.

    compare.py A B

A and B are run-all outputs (the `output` file of a scripts/vm --results
directory, e.g. $LAB/runs/test-DATE/stable-odp-on/output). Each check is
named by its test file, its TAP number and its description up to the first
": " (what follows is measured detail: times, counts); its outcome is pass,
fail or skip. Prints every check that passes in one run and fails in the
other (or fails against a skip), every check that only one run has, every
check skipped in one run only, and the checks skipped in both with their
reasons (a kernel without an option skips the tests that need it), then

    # suite compare: N checks, D differ, O only in one run, S skipped in
      one run only (KERNEL-A vs KERNEL-B)

and exits 1 when D or O is not 0 (the same pass/fail per check).
"""

import re
import sys

LINE = re.compile(r"^(not ok|ok)\s+(\d+)?\s*-?\s*(.*)$")


def parse(path):
    """{(test, number, description): (outcome, reason)} and the kernel."""
    checks, test, kernel = {}, "run-all", "?"
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("# test: "):
                test = line[len("# test: "):].strip()
                continue
            m = re.match(r"^# .*, kernel (\S+)$", line)
            if m and kernel == "?":
                kernel = m.group(1)
            m = LINE.match(line)
            if not m:
                continue
            status, number, rest = m.groups()
            reason = ""
            if " # SKIP" in rest:
                rest, reason = rest.split(" # SKIP", 1)
                outcome = "skip"
            else:
                outcome = "pass" if status == "ok" else "fail"
            desc = rest.split(": ", 1)[0].strip()
            key = (test, int(number) if number else 0, desc)
            checks[key] = (outcome, reason.strip())
    return checks, kernel


def name(key):
    test, number, desc = key
    return f"{test} {number} - {desc}" if number else f"{test} - {desc}"


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    a, ka = parse(argv[1])
    b, kb = parse(argv[2])
    if not a or not b:
        print(f"# suite compare: no checks in {argv[1] if not a else argv[2]}")
        return 1
    differ = only = skipped = 0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            only += 1
            print(f"only in {'A' if key in a else 'B'}: {name(key)}")
        elif a[key][0] != b[key][0]:
            why = f" ({a[key][1] or b[key][1]})" if a[key][1] or b[key][1] else ""
            if "fail" in (a[key][0], b[key][0]):
                differ += 1
                print(f"differs: {name(key)}: {a[key][0]} vs {b[key][0]}{why}")
            else:
                skipped += 1
                print(f"skipped in one run: {name(key)}: {a[key][0]} vs {b[key][0]}{why}")
    both = sorted(k for k in a if k in b and a[k][0] == b[k][0] == "skip")
    reasons = {}
    for k in both:
        reasons.setdefault(a[k][1], []).append(k)
    for reason, keys in sorted(reasons.items(), key=lambda r: -len(r[1])):
        tests = sorted({k[0] for k in keys})
        print(f"skipped in both ({len(keys)}): {reason}: " + ", ".join(tests)[:300])
    print(f"# suite compare: {len(set(a) | set(b))} checks, {differ} differ, "
          f"{only} only in one run, {skipped} skipped in one run only ({ka} vs {kb})")
    return 1 if differ or only else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
