#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Whether two kernels' matrix columns are the same.

    compare.py A/matrix.json B/matrix.json

Compares the cells tests/matrix/cells.py wrote for two kernels: the same
cells, each with the same outcome and the same number of oracle
violations. Prints one line per difference and a summary; exit status 0
only if there is none (scripts/test's own-kernel-image stage: a Debian
kernel booted through --kernel-image must give the column --kernel gives).
"""

import json
import sys


def cells(path):
    run = json.load(open(path))
    name = run.get("label") or run["kernel"]
    return name, {(c["backing"], c["mode"], c["event"]):
                  (c.get("outcome"), c.get("violations", 0)) for c in run["cells"]}


def main(a_path, b_path):
    a_name, a = cells(a_path)
    b_name, b = cells(b_path)
    diff = 0
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            diff += 1
            print(f"differs: {'/'.join(k)}: {a_name} {a.get(k, 'missing')}, "
                  f"{b_name} {b.get(k, 'missing')}")
    print(f"# matrix compare: {len(set(a) | set(b))} cells, {diff} differ "
          f"({a_name} vs {b_name})")
    return 1 if diff else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
