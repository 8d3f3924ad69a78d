#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""rdma-core's own pyverbs test suite against the device, one TAP line per
test case: tests.test_odp, test_device, test_mr, test_qp, test_cq and
test_pd, from the rdma-core source the lab built the provider from (the
same version as the guest's python3-pyverbs).

A case the suite skips (a capability the device does not advertise: device
memory, dma-buf, XRC, UC and raw packet QPs, MR re-registration, CQ resize,
implicit ODP where it is off) is a TAP skip with the suite's reason; a
failure or an error is a failure. 2 MiB huge pages are reserved first, so
the huge-page ODP cases run. With the device's ODP off every test_odp case
must be skipped by the suite itself (it checks the capabilities), not fail.
After the run, the DMA oracle must have recorded no violation. Per module,
a "# MODULE: P passed, S skipped, F failed" line.
"""

import glob
import os
import shutil
import sys
import tempfile
import time
import traceback
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "odp"))

import daxlib  # noqa: E402
from odprnic_ctl import Control  # noqa: E402
from odprnic_verbs import netup  # noqa: E402

MODULES = ["test_odp", "test_device", "test_mr", "test_qp", "test_cq", "test_pd"]
HUGEPAGES = 64


def case_name(test):
    """test_odp.OdpTestCase.test_odp_rc_traffic, whatever the docstring."""
    return test.id().removeprefix("tests.")


class TapResult(unittest.TestResult):
    def __init__(self, tap):
        super().__init__()
        self.tap = tap
        self.per_module = {}

    def _count(self, test, what):
        mod = case_name(test).split(".")[0]
        counts = self.per_module.setdefault(mod, {"passed": 0, "skipped": 0, "failed": 0})
        counts[what] += 1

    def addSuccess(self, test):
        self._count(test, "passed")
        self.tap.ok(case_name(test))

    def addSkip(self, test, reason):
        self._count(test, "skipped")
        self.tap.skip(case_name(test), reason)

    def _failed(self, test, err, kind):
        self._count(test, "failed")
        tb = "".join(traceback.format_exception(*err))
        self.tap.not_ok(f"{case_name(test)} ({kind})", "\n".join(tb.splitlines()[-12:]))

    def addFailure(self, test, err):
        self._failed(test, err, "failure")

    def addError(self, test, err):
        self._failed(test, err, "error")

    def addExpectedFailure(self, test, err):
        self._count(test, "passed")
        self.tap.ok(f"{case_name(test)} (expected failure)")

    def addUnexpectedSuccess(self, test):
        self._failed(test, (AssertionError, AssertionError("unexpected success"), None), "failure")


def violations():
    with Control.open(timeout=30.0) as ctl:
        v = ctl.violations()
        odp = bool(ctl.version().get("odp"))
    return v.get("count", len(v.get("violations", []))), odp


def main():
    tap = daxlib.Tap("tools/pyverbs-suites")
    try:
        ibdev, netdev, ipaddr = netup()
    except RuntimeError as x:
        return tap.bail(str(x))
    src = sorted(glob.glob("/opt/odp-rnic/pkgsrc/rdma-core-*/tests"))
    if not src:
        return tap.bail("no rdma-core tests in /opt/odp-rnic/pkgsrc")
    try:
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write(str(HUGEPAGES))
    except OSError as x:
        tap.diag(f"no huge pages reserved: {x}")
    before, odp = violations()
    work = tempfile.mkdtemp()
    shutil.copytree(src[-1], os.path.join(work, "tests"))
    sys.path[:0] = [work, os.path.join(work, "tests")]
    sys.argv = [sys.argv[0], "--dev", ibdev]
    from args_parser import parser  # the suite's own options (--dev)
    parser.parse_args()
    tap.diag(f"{src[-1]} on {ibdev} ({netdev}, {ipaddr}); device ODP {'on' if odp else 'off'}")

    result = TapResult(tap)
    t0 = time.monotonic()
    for mod in MODULES:
        suite = unittest.TestLoader().loadTestsFromName(f"tests.{mod}")
        suite.run(result)
        c = result.per_module.get(mod, {"passed": 0, "skipped": 0, "failed": 0})
        print(f"# {mod}: {c['passed']} passed, {c['skipped']} skipped, {c['failed']} failed",
              flush=True)
    secs = time.monotonic() - t0
    shutil.rmtree(work, ignore_errors=True)

    odp_cases = result.per_module.get("test_odp", {})
    if not odp and odp_cases.get("passed"):
        tap.not_ok("test_odp with the device's ODP off",
                   f"{odp_cases['passed']} case(s) passed: ODP caps are advertised")
    after, _ = violations()
    if after != before:
        tap.not_ok("DMA oracle after the suites", f"{after - before} new violation(s)")
    else:
        tap.ok(f"DMA oracle after the suites: no violation ({secs:.1f}s for {len(MODULES)} modules)")
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
