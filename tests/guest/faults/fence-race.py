#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Two fencers at once: neither returns before bus mastering is off.

An invalidation the device does not acknowledge within inv_timeout_ms
fences the device (clears Bus Master Enable) and then gives its pages back
to the kernel. When two invalidations time out together, the second fencer
must not return while the first is still clearing the bit: the kernel
would free the second's pages while the device can still write to them
("Fencing" in docs/driver.md).

The window is the config write of pci_clear_master(), a round trip to the
device. The test makes two fencers meet there and watches them through
kprobes on pci_clear_master() and odprnic_fence() (entry and return, on
the global trace clock). Each round:

  1 two ODP MRs over anonymous memory, each faulted in by a remote write
  2 with never_ack set for both, two threads released together
    MADV_DONTNEED one range each: both invalidations time out together
  3 from the trace: no odprnic_fence() returned while a pci_clear_master()
    of another task was still running; rounds where the second fencer
    arrived while the first was clearing the bit count as "met"
  4 the driver recovers the device (a new ib_device) for the next round;
    recovery_burst is raised for the rounds and restored once the driver's
    60 s recovery window is over (the next tests need their recoveries)

Rounds go on until RACES rounds met, at most ROUNDS. Then: no early
return in any round, at least one round met (else the window was never
tried: failure), the oracle recorded no violation, and the kernel logged
no warning. Output is TAP; skipped when the device's ODP is off or the
kernel has no kprobe events.
"""

import ctypes
import mmap
import os
import re
import sys
import threading
import time

from odprnic_app import BAD_DMESG, Tap, counter, dmesg, ibdev, param, wait_for
from odprnic_ctl import Control
from pyverbs.device import Context
from pyverbs.enums import (IBV_ACCESS_LOCAL_WRITE, IBV_ACCESS_ON_DEMAND,
                           IBV_ACCESS_REMOTE_WRITE)
from pyverbs.mr import MR
from pyverbs.pd import PD

TRACING = "/sys/kernel/tracing"
GROUP = "odprnic_fence_race"
PROBES = {
    "clear_in": "p pci_clear_master",
    "clear_out": "r pci_clear_master",
    "fence_in": "p odp_rnic:odprnic_fence",
    "fence_out": "r odp_rnic:odprnic_fence",
}
ROUNDS = 40
RACES = 3
LENGTH = 16 * 1024
INV_TIMEOUT_MS = 100
RECOVERY_WINDOW_S = 61            # the driver's recovery window, 60 s, and a margin
MADV_DONTNEED = 4
ACCESS = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_ON_DEMAND

libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

LINE = re.compile(r"^\s*\S.*?-(\d+)\s+\[(\d+)\].*?\s([\d.]+):\s+(\w+):")


def tracefs(name, value=None, mode="w"):
    path = f"{TRACING}/{name}"
    if value is None:
        with open(path) as f:
            return f.read()
    # os.open: Python's "a" mode seeks, which kprobe_events refuses
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if mode == "a" else os.O_TRUNC))
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return None


def probes_on():
    """Sets the kprobe events up; False when the kernel has none."""
    if not os.path.exists(f"{TRACING}/kprobe_events"):
        os.system(f"mount -t tracefs nodev {TRACING} 2>/dev/null")
    if not os.path.exists(f"{TRACING}/kprobe_events"):
        return False
    probes_off()
    for name, spec in PROBES.items():
        kind, sym = spec.split()
        tracefs("kprobe_events", f"{kind}:{GROUP}/{name} {sym}\n", "a")
    tracefs("trace_clock", "global")
    tracefs(f"events/{GROUP}/enable", "1")
    tracefs("tracing_on", "1")
    return True


def probes_off():
    try:
        if os.path.exists(f"{TRACING}/events/{GROUP}"):
            tracefs(f"events/{GROUP}/enable", "0")
        for name in PROBES:
            if os.path.exists(f"{TRACING}/events/{GROUP}/{name}"):
                tracefs("kprobe_events", f"-:{GROUP}/{name}\n", "a")
    except OSError:
        pass


def events():
    """(time, pid, event) of the probes hit since the last clear."""
    out = []
    for line in tracefs("trace").splitlines():
        m = LINE.match(line)
        if m and m.group(4) in PROBES:
            out.append((float(m.group(3)), int(m.group(1)), m.group(4)))
    return sorted(out)


def judge(evs):
    """(early, met, summary): early lists the fencers that returned while
    another task's pci_clear_master() was running; met says whether a
    fencer arrived while another task was clearing the bit."""
    clears, open_ = [], {}
    for t, pid, ev in evs:
        if ev == "clear_in":
            open_[pid] = t
        elif ev == "clear_out" and pid in open_:
            clears.append((open_.pop(pid), t, pid))
    for pid, t in open_.items():      # never returned: open to the end
        clears.append((t, float("inf"), pid))
    early, met = [], False
    for t, pid, ev in evs:
        for start, end, owner in clears:
            if owner == pid or not start < t < end:
                continue
            if ev == "fence_out":
                early.append(f"task {pid} left odprnic_fence at {t:.6f}, "
                             f"task {owner} cleared bus mastering {start:.6f}-{end:.6f}")
            if ev == "fence_in":
                met = True
    counts = {e: sum(1 for x in evs if x[2] == e) for e in PROBES}
    return early, met, ", ".join(f"{k} {v}" for k, v in counts.items())


class Round:
    """Two ODP MRs on the current ib_device, each faulted in."""

    def __init__(self, dev, ctl):
        self.ctx = Context(name=dev)
        self.pd = PD(self.ctx)
        self.bufs, self.mrs, self.ok = [], [], True
        for _ in range(2):
            buf = mmap.mmap(-1, LENGTH, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            mr = MR(self.pd, LENGTH, ACCESS, address=addr)
            data = os.urandom(4096)
            r = ctl.request({"op": "write", "rkey": mr.rkey, "va": addr,
                             "data_hex": data.hex(), "timeout_ms": 5000})
            self.ok &= r.get("status") == "success" and buf[:4096] == data
            self.bufs.append((buf, addr))
            self.mrs.append(mr)

    def invalidate_together(self):
        """Both ranges MADV_DONTNEED at once; [(rc, seconds)] per thread."""
        gate = threading.Barrier(2)
        res = [None, None]

        def one(i):
            gate.wait()
            t0 = time.monotonic()
            rc = libc.madvise(self.bufs[i][1], LENGTH, MADV_DONTNEED)
            res[i] = (rc, time.monotonic() - t0)

        ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(2)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(60)
        return res

    def close(self):
        for o in self.mrs + [self.pd, self.ctx]:
            try:
                o.close()
            except Exception:  # a disassociated context refuses; freed anyway
                pass
        for buf, _ in self.bufs:
            buf.close()


def main():
    t = Tap()
    dev = ibdev()
    if dev is None:
        print("1..0 # SKIP no odp_rnic device")
        return 0
    ctl = Control.open()
    if not ctl.version().get("odp"):
        print("ok 1 - two fencers at once # SKIP the device's ODP is off\n1..1")
        return 0
    if not probes_on():
        print("ok 1 - two fencers at once # SKIP no kprobe events in this kernel\n1..1")
        return 0
    saved = {p: param(p) for p in ("inv_timeout_ms", "recovery_burst")}
    param("inv_timeout_ms", INV_TIMEOUT_MS)
    param("recovery_burst", ROUNDS + 5)
    viol0 = ctl.request({"op": "violations"}).get("count", 0)
    log0 = len(dmesg().splitlines())
    early_all, met, rounds, setup_bad, notes = [], 0, 0, 0, []
    started = time.monotonic()
    try:
        while rounds < ROUNDS and met < RACES:
            rounds += 1
            dev = wait_for(ibdev, 30)
            if not dev:
                notes.append(f"round {rounds}: no ib_device")
                break
            rec0 = counter(dev, "recoveries")
            r = Round(dev, ctl)
            setup_bad += not r.ok
            ctl.request({"op": "fault_plan", "set": {"kind": "never_ack", "count": 2}})
            tracefs("trace", "")
            res = r.invalidate_together()
            evs = events()
            ctl.request({"op": "fault_plan", "clear": True})
            early, was_met, summary = judge(evs)
            early_all += early
            met += was_met
            notes.append(f"round {rounds}: madvise {res}, {summary}"
                         f"{', met' if was_met else ''}{', EARLY' if early else ''}")
            r.close()
            if not wait_for(lambda: (d := ibdev()) and counter(d, "recoveries") > rec0, 30):
                notes.append(f"round {rounds}: the device did not come back")
                break
    finally:
        probes_off()
        # every round cost a recovery: the driver counts them per 60 s
        # window against recovery_burst, so the saved (lower) burst comes
        # back only once this window is over, or the next test's recovery
        # would be refused
        time.sleep(max(0.0, RECOVERY_WINDOW_S - (time.monotonic() - started)))
        for p, v in saved.items():
            param(p, v)
        ctl.request({"op": "fault_plan", "clear": True})
    for line in notes:
        print(f"# {line}")
    t(setup_bad == 0, "every round's MRs were faulted in by a remote write",
      f"{setup_bad} of {rounds} rounds not")
    t(not early_all, "no fencer returned while another was still clearing bus mastering",
      "; ".join(early_all[:3]))
    t(met > 0, "two fencers met at the config write",
      f"in {met} of {rounds} rounds")
    viol = ctl.request({"op": "violations"}).get("count", 0)
    t(viol == viol0, "the DMA oracle recorded no violation", f"{viol0} -> {viol}")
    bad = [ln for ln in dmesg().splitlines()[log0:]
           if any(w in ln for w in BAD_DMESG)]
    t(not bad, "the kernel logged no warning", "; ".join(bad[:3]))
    ctl.close()
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
