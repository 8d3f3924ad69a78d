#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Fault plan delay_map_pages: a MAP_PAGES that completes after the driver's
command timeout.

A page fault's MAP_PAGES is executed by the device at once but completed
later than cmd_timeout_ms. The driver must give the command (and its
slot) up to the device, never reissue that slot, send no RESUME through
it, and recover the device; the late completion must not free a slot in
use, and no translation may outlive the invalidation that follows it.

  1 an ODP MR on anonymous memory; with the plan set, a remote write into
    it faults; the driver's MAP_PAGES times out (cmd_timeouts +1, once:
    no second command through the abandoned slot times out or is reused)
  2 MADV_DONTNEED of the page right after: the remote write's page is
    not written after the invalidation returned (the CPU's rewrite stays
    byte-exact), and the oracle recorded no violation
  3 the kernel log has no "completed twice" nor warning, and names the
    timed-out command
  4 the driver recovers the device (DEVICE_FATAL, a new ib_device, no
    module reload), and every command slot works afterwards: more
    processes than there are slots register and deregister MRs at once,
    and all succeed (no slot lost, none handed out twice)

Output is TAP. Skipped when the device's ODP is off.
"""

import ctypes
import mmap
import os
import sys

from odprnic_app import async_event, counter, dmesg, ibdev, param, wait_for
from odprnic_ctl import Control
import pyverbs.enums as e
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD

PAGE = 4096
TIMEOUT_MS = 1000
SLOTS = 21                    # ODPRNIC_CMDQ_SIZE / 3 descriptors per slot
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
          e.IBV_ACCESS_ON_DEMAND)
MADV_DONTNEED = 4

n = failed = 0


def tap(ok, desc, detail=""):
    global n, failed
    n += 1
    failed += not ok
    print(f"{'ok' if ok else 'not ok'} {n} - {desc}" +
          (f": {detail}" if detail else ""), flush=True)
    return ok


def anon(length):
    buf = mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))


def write(ctl, rkey, va, data, timeout_ms=20000):
    return ctl.request({"op": "write", "rkey": rkey, "va": va,
                        "data_hex": data.hex(), "timeout_ms": timeout_ms})


CYCLES = 10


def churn(dev):
    """A child: CYCLES ODP registrations and deregistrations (CREATE_MR and
    DESTROY_MR commands); exit status 0 when all worked."""
    try:
        ctx = Context(name=dev)
        pd = PD(ctx)
        buf, addr = anon(PAGE)
        for _ in range(CYCLES):
            MR(pd, PAGE, ACCESS, address=addr).close()
        pd.close()
        ctx.close()
        return 0
    except Exception as x:
        print(f"# registering: {x}", flush=True)
        return 1


def main():
    ctl = Control.open()
    if not ctl.version().get("odp"):
        print("ok 1 - a late MAP_PAGES # SKIP the device's ODP is off\n1..1")
        return 0
    dev = wait_for(ibdev, 20)
    old_timeout = param("cmd_timeout_ms")
    param("cmd_timeout_ms", TIMEOUT_MS)
    log0 = len(dmesg())
    timeouts0 = counter(dev, "cmd_timeouts")
    rec0 = counter(dev, "recoveries")
    viol0 = ctl.violations().get("count", 0)

    ctx = Context(name=dev)
    pd = PD(ctx)
    buf, addr = anon(4 * PAGE)
    buf[:] = b"\x11" * (4 * PAGE)
    mr = MR(pd, 4 * PAGE, ACCESS, address=addr)
    ctl.set_fault_plan([f"delay_map_pages={TIMEOUT_MS + 2000},count=1"])
    # the device gives the write up after 300 ms; the driver's fault
    # handling goes on (the control port serves one request at a time)
    r = write(ctl, mr.rkey, addr, b"\xee" * 64, timeout_ms=300)
    timed_out = wait_for(lambda: counter(dev, "cmd_timeouts") > timeouts0, 30)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(PAGE), MADV_DONTNEED)
    buf[0:PAGE] = b"\x5b" * PAGE
    r2 = write(ctl, mr.rkey, addr, b"\xdd" * 64, timeout_ms=300)
    # the late completion and recovery come and go
    wait_for(lambda: (ibdev() and counter(ibdev(), "recoveries") > rec0), 30)
    tap(bool(timed_out), "the MAP_PAGES of a page fault times out",
        f"cmd_timeouts {timeouts0} -> {counter(dev, 'cmd_timeouts')}")
    ctl.clear_fault_plan()
    viol = ctl.violations().get("count", 0)
    tap(rc == 0 and buf[0:PAGE] == b"\x5b" * PAGE and viol == viol0,
        "nothing reaches the page after the invalidation; the oracle is clean",
        f"writes {r.get('status')}, {r2.get('status')}; violations {viol0} -> {viol}")
    log = dmesg()[log0:]
    bad = [l for l in log.splitlines()
           if any(w in l for w in ("completed twice", "WARNING:", "BUG:",
                                   "RESUME token"))]
    tap("timed out" in log and not bad,
        "the kernel log names the timed-out command, and nothing else went wrong",
        " | ".join(bad[:3]))

    kind = async_event(ctx, 30)
    for o in (mr, pd, ctx):
        try:
            o.close()
        except Exception as x:  # a disassociated context refuses
            print(f"# close {type(o).__name__}: {x}")
    buf.close()
    dev = wait_for(lambda: (d := ibdev()) and counter(d, "recoveries") > rec0 and d, 30)
    ok = kind == e.IBV_EVENT_DEVICE_FATAL and bool(dev)
    detail = f"async event {kind}, ib_device {dev}"
    if ok:
        # more processes than command slots, registering at once
        procs = 2 * SLOTS
        pids = []
        for _ in range(procs):
            pid = os.fork()
            if pid == 0:
                os._exit(churn(dev))
            pids.append(pid)
        good = 0
        for pid in pids:
            good += os.waitpid(pid, 0)[1] == 0
        ok = good == procs
        detail += f", {good} of {procs} processes registered {CYCLES} MRs each"
    tap(ok, "the driver recovers, and every command slot works afterwards", detail)
    param("cmd_timeout_ms", old_timeout)
    print(f"1..{n}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
