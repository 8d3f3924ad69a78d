#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Removing the PCI function while an application uses it (the path an
orderly hot-unplug takes: remove() with live user contexts), and bringing it
back with a rescan.

  1 an application holds a PD, pinned and ODP MRs, a CQ and a connected RC
    pair (queues and doorbells mapped), and rping listens
  2 `echo 1 > /sys/bus/pci/devices/BDF/remove` returns within 30 s, though
    the application keeps its file descriptors open
  3 the application gets IBV_EVENT_DEVICE_FATAL; the ib_device is gone;
    rping was told and exits
  4 the application survives posting to its old QP (its queue mappings were
    replaced, not torn out from under it) and closes everything
  5 `echo 1 > /sys/bus/pci/rescan` probes the device again: a new
    application's RDMA WRITE and ODP remote write land byte-exact, the
    oracle is clean, and dmesg has no warning

Output is TAP.
"""

import os
import sys
import time

import pyverbs.enums as e
from odprnic_app import BAD_DMESG, App, Tap, bounded, busy, dmesg, ibdev, wait_for
from odprnic_ctl import Control
from odprnic_verbs import netup

tap = Tap()


def sysfs_write(path, value):
    with open(path, "w") as f:
        f.write(value)


def main():
    ctl = Control.open()
    odp = bool(ctl.version().get("odp"))
    _, _, ip = netup()
    dev = wait_for(ibdev, 20)
    bdf = os.path.basename(os.path.realpath(f"/sys/class/infiniband/{dev}/device"))
    log0 = len(dmesg())
    viol0 = ctl.request({"op": "violations"}).get("count", 0)
    app, rping, ok, detail = busy(dev, odp, ctl, ip)
    tap(ok, "an application's RC pair and ODP MR work, rping listens", f"{dev} at {bdf}: " + detail)

    t = time.monotonic()
    done, r = bounded(lambda: sysfs_write(f"/sys/bus/pci/devices/{bdf}/remove", "1"), 30)
    took = time.monotonic() - t
    tap(done and not isinstance(r, Exception),
        "PCI remove returns while the application holds the device",
        f"{took:.2f} s{', ' + repr(r) if isinstance(r, Exception) else ''}")
    if not done:
        return tap.finish()

    ev = app.async_event(10)
    gone = ibdev() is None
    rping_gone = wait_for(lambda: rping.poll() is not None, 15)
    if not rping_gone:
        rping.kill()
    tap(ev == e.IBV_EVENT_DEVICE_FATAL and gone and bool(rping_gone),
        "the application gets IBV_EVENT_DEVICE_FATAL, the ib_device is gone, rping was told",
        f"event {ev}, ib_device {'gone' if gone else 'still there'}, "
        f"rping {'exited' if rping_gone else 'still listening'}")

    done, r = bounded(app.post_unchecked, 10)
    closed = app.close()
    tap(done and closed, "posting to the old QP does not crash the application; it closes",
        f"post_send {r}")

    sysfs_write("/sys/bus/pci/rescan", "1")
    new = wait_for(ibdev, 20)
    if not new:
        tap(False, "a rescan brings the device back", "no odp_rnic ib_device")
        return tap.finish()
    netup()
    fresh = App(new, odp)
    ok, how = fresh.rdma_write(os.urandom(3000))
    ok2, how2 = fresh.inject(ctl, os.urandom(4096))
    closed = fresh.close()
    viol = ctl.request({"op": "violations"}).get("count", 0)
    bad = [l for l in dmesg()[log0:].splitlines() if any(b in l for b in BAD_DMESG)]
    tap(ok and ok2 and closed and viol == viol0 and not bad,
        "a rescan brings the device back: data lands byte-exact, oracle clean, dmesg clean",
        f"{new}: write {how}, injected {how2}, violations {viol0} -> {viol}"
        + (", " + "; ".join(bad)[:300] if bad else ""))
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
