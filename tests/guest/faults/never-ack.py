#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Fault plan never_ack: an invalidation the device never acknowledges.

The driver must bound its wait in the MMU notifier (module parameter
inv_timeout_ms), give the MR up, fence the device and log why; the guest must
stay responsive, and the device's DMA oracle must see no access after the
driver gave up. The driver then recovers the device by itself, without a
module reload, so the tests after this one run on a healthy device.

  1 an ODP MR on anonymous memory; a remote write faults it in
  2 with never_ack set, MADV_DONTNEED (an invalidation) returns after the
    bound, not never; and not early either when a second MADV_DONTNEED of
    the MR comes while it waits (acknowledgements are in order: the device
    must not acknowledge the second)
  3 dmesg says which invalidation timed out and that the device was fenced
  4 a remote write after the timeout does not land; the oracle is clean
  5 the driver recovers on its own: the application's context gets
    IBV_EVENT_DEVICE_FATAL, a new ib_device of odp_rnic appears (counter
    recoveries +1, odp_rnic.ko never reloaded), and a new ODP MR on it
    takes a remote write byte-exact

and the same five with an implicit ODP MR (the whole address space), whose
invalidations come from the notifier of the block the pages lie in.

Output is TAP. Skipped (all steps) when the device's ODP is off.
"""

import ctypes
import mmap
import os
import subprocess
import sys
import threading
import time

from odprnic_app import async_event, counter, ibdev, wait_for
from odprnic_ctl import Control
import pyverbs.enums as e
from pyverbs.device import Context
from pyverbs.enums import (IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_ON_DEMAND,
                           IBV_ACCESS_REMOTE_WRITE)
from pyverbs.mr import MR
from pyverbs.pd import PD

BOUND_MS = 1000
LENGTH = 64 * 1024
PARAM = "/sys/module/odp_rnic/parameters/inv_timeout_ms"
MADV_DONTNEED = 4

n = 0
failed = 0


def tap(ok, desc, detail=""):
    global n, failed
    n += 1
    if not ok:
        failed += 1
    print(f"{'ok' if ok else 'not ok'} {n} - {desc}" + (f": {detail}" if detail else ""),
          flush=True)



def anon(length):
    buf = mmap.mmap(-1, length, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return buf, addr


def odp_mr(pd, addr, length, implicit):
    access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_ON_DEMAND
    if implicit:
        return MR(pd, 0, access, implicit=True)
    return MR(pd, length, access, address=addr)


def inject(ctl, rkey, va, data):
    return ctl.request({"op": "write", "rkey": rkey, "va": va,
                        "data_hex": data.hex(), "timeout_ms": 5000})



def module_loads():
    """Whether odp_rnic.ko was reloaded shows in inv_timeout_ms: this test
    set it to BOUND_MS, and a fresh load starts from the default."""
    with open(PARAM) as f:
        return int(f.read())


def dmesg():
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout


def main():
    ctl = Control.open()
    if not ctl.version().get("odp"):
        for i, desc in enumerate(("ODP MR faults in", "invalidation bounded",
                                  "dmesg says why", "no access after the timeout",
                                  "the driver recovers") * 2, 1):
            print(f"ok {i} - {desc} # SKIP the device's ODP is off")
        return 0
    for implicit in (False, True):
        if not scenario(ctl, implicit):
            break
    print(f"1..{n}")
    return 1 if failed else 0


def scenario(ctl, implicit):
    """The five steps with an explicit or an implicit ODP MR; False when
    the device is not there to go on."""
    what = "implicit ODP MR" if implicit else "ODP MR"
    dev = wait_for(ibdev, 20)
    if not dev:
        tap(False, "odp_rnic ib device present")
        return False
    with open(PARAM, "w") as f:
        f.write(str(BOUND_MS))
    dmesg_before = len(dmesg())
    rec_before = counter(dev, "recoveries")
    loaded = module_loads()  # BOUND_MS

    ctx = Context(name=dev)
    pd = PD(ctx)
    buf, addr = anon(LENGTH)
    mr = odp_mr(pd, addr, LENGTH, implicit)
    data = os.urandom(4096)
    r = inject(ctl, mr.rkey, addr + 4096, data)
    tap(r.get("status") == "success" and buf[4096:8192] == data,
        f"an injected write faults an {what} in and lands byte-exact",
        f"status {r.get('status')}, faults {r.get('faults')}")

    viol_before = ctl.request({"op": "violations"}).get("count", 0)
    ctl.request({"op": "fault_plan", "set": {"kind": "never_ack", "count": 1}})
    libc = ctypes.CDLL(None, use_errno=True)

    def dontneed(start, length, box):
        t = time.monotonic()
        rc = libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_DONTNEED)
        box.append((rc, time.monotonic() - t))

    # The first invalidation is never acknowledged. A second one of the same
    # MR comes while the first waits (on kernels whose notifier waits without
    # umem_mutex, two passes); acknowledgements are in order, so an
    # acknowledgement of the second would end the first's wait early.
    # The second starts once the device withheld the first's acknowledgement
    # (not after a sleep: a busy host may start the thread late).
    withheld = ctl.counters().get("counters", {}).get("inv_acks_withheld", 0)
    first, second = [], []
    th = threading.Thread(target=dontneed, args=(addr, 2 * 4096, first), daemon=True)
    th.start()
    wait_for(lambda: ctl.counters().get("counters", {}).get("inv_acks_withheld", 0)
             > withheld, 30)
    dontneed(addr + 2 * 4096, LENGTH - 2 * 4096, second)
    th.join(60)
    rc, took = first[0] if first else (None, -1.0)
    tap(rc == 0 and second[0][0] == 0 and BOUND_MS / 1000 * 0.9 <= took < 30,
        f"{what}: MADV_DONTNEED returns after the {BOUND_MS} ms bound, not never, "
        "and not early when a later invalidation came meanwhile",
        f"{took:.2f} s; the later one {second[0][1]:.2f} s")

    log = dmesg()[dmesg_before:]
    tap("not acknowledged within" in log and "fenced" in log,
        f"{what}: dmesg says which invalidation timed out and that the device is fenced",
        " | ".join(l.split("] ", 1)[-1] for l in log.splitlines()
                   if "odp" in l.lower())[:400])

    r = inject(ctl, mr.rkey, addr + 4096, os.urandom(4096))
    viol = ctl.request({"op": "violations"}).get("count", 0)
    tap(r.get("status") != "success" and viol == viol_before,
        f"{what}: a remote write after the timeout does not land; the oracle is clean",
        f"status {r.get('status')}, violations {viol_before} -> {viol}")
    ctl.request({"op": "fault_plan", "clear": True})

    # The driver takes the ib_device down and brings a new one up by itself.
    kind = async_event(ctx, 30)
    for o in (mr, pd, ctx):
        try:
            o.close()
        except Exception as x:  # a disassociated context refuses; the kernel freed it
            print(f"# close {type(o).__name__}: {x}")
    buf.close()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        dev = ibdev()
        if dev and counter(dev, "recoveries") > rec_before:
            break
        time.sleep(0.1)
    else:
        dev = None
    ok = kind == e.IBV_EVENT_DEVICE_FATAL and dev is not None and \
        module_loads() == loaded
    detail = (f"async event {kind} (DEVICE_FATAL is {e.IBV_EVENT_DEVICE_FATAL}), "
              f"ib_device {dev}, recoveries {rec_before} -> {counter(dev, 'recoveries') if dev else '?'}, "
              f"module {'not ' if module_loads() == loaded else ''}reloaded")
    if ok:
        ctx = Context(name=dev)
        pd = PD(ctx)
        buf, addr = anon(LENGTH)
        mr = odp_mr(pd, addr, LENGTH, implicit)
        data = os.urandom(4096)
        r = inject(ctl, mr.rkey, addr, data)
        ok = r.get("status") == "success" and buf[0:4096] == data
        detail += f", write {r.get('status')}"
        mr.close()
        pd.close()
        ctx.close()
        buf.close()
    tap(ok, f"{what}: the driver recovers the device without a reload", detail)
    return ok


if __name__ == "__main__":
    sys.exit(main())
