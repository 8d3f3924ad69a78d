#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Surprise removal: the device vanishes under a running application.

The fault plan `kill` ends the device process at the next command, without
clean-up. QEMU's vfio-user client then reads all-ones from the device's
registers and drops its writes, as a PCIe function does after a surprise
removal. The device does not come back in this boot, so run-all runs the
tests in removal/ after every other test.

  1 an application holds a PD, pinned and ODP MRs, a CQ and a connected RC
    pair (queues and doorbells mapped), and rping listens
  2 the verb whose command the device died on fails within 2 s, not at
    cmd_timeout_ms
  3 the application gets IBV_EVENT_DEVICE_FATAL, the ib_device goes away,
    rping was told; dmesg says the device was lost and stays down
  4 the guest stays responsive; posting to the old QP does not crash the
    application, and it closes everything
  5 rmmod odp_rnic returns within 30 s and dmesg has no warning

Output is TAP.
"""

import subprocess
import sys
import time

import pyverbs.enums as e
from odprnic_app import BAD_DMESG, Tap, bounded, busy, dmesg, ibdev, param, wait_for
from odprnic_ctl import Control
from odprnic_verbs import netup
from pyverbs.pd import PD

tap = Tap()


def main():
    ctl = Control.open()
    odp = bool(ctl.version().get("odp"))
    _, _, ip = netup()
    dev = wait_for(ibdev, 20)
    param("cmd_timeout_ms", 5000)
    log0 = len(dmesg())
    app, rping, ok, detail = busy(dev, odp, ctl, ip)
    tap(ok, "an application's RC pair and ODP MR work, rping listens", detail)

    ctl.request({"op": "fault_plan", "set": {"kind": "kill", "count": 1}})
    t = time.monotonic()
    done, r = bounded(lambda: PD(app.ctx), 30)
    took = time.monotonic() - t
    tap(done and isinstance(r, Exception) and took < 2,
        "the verb the device died on fails within 2 s", f"{took:.2f} s, {r!r}"[:300])

    ev = app.async_event(20)
    gone = wait_for(lambda: ibdev() is None, 20)
    rping_gone = wait_for(lambda: rping.poll() is not None, 15)
    if not rping_gone:
        rping.kill()
    log = dmesg()[log0:]
    said = [l.split("] ", 1)[-1] for l in log.splitlines() if "odp_rnic" in l]
    tap(ev == e.IBV_EVENT_DEVICE_FATAL and bool(gone) and bool(rping_gone) and
        "device lost" in log and "stays down" in log,
        "IBV_EVENT_DEVICE_FATAL, the ib_device goes away, rping was told, dmesg says why",
        f"event {ev}, rping {'exited' if rping_gone else 'listening'}; " + " | ".join(said)[:400])

    t = time.monotonic()
    shell = subprocess.run(["sh", "-c", "echo alive"], capture_output=True, text=True,
                           timeout=10).stdout.strip()
    done, r = bounded(app.post_unchecked, 10)
    closed = app.close()
    tap(shell == "alive" and done and closed,
        "the guest stays responsive; posting to the old QP is harmless; the application closes",
        f"shell {shell!r} in {time.monotonic() - t:.2f} s, post_send {r}")

    t = time.monotonic()
    try:
        rm = subprocess.run(["rmmod", "odp_rnic"], capture_output=True, text=True, timeout=30)
        rmok, rmerr = rm.returncode == 0, rm.stderr.strip()
    except subprocess.TimeoutExpired:
        rmok, rmerr = False, "timed out"
    bad = [l for l in dmesg()[log0:].splitlines() if any(b in l for b in BAD_DMESG)]
    tap(rmok and not bad, "rmmod returns and dmesg has no warning",
        f"rmmod {'ok' if rmok else rmerr} in {time.monotonic() - t:.2f} s"
        + (", " + "; ".join(bad)[:300] if bad else ""))
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
