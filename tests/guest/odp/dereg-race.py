#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Deregistration racing invalidations: the device may not reach a page the
kernel took back while DESTROY_MR is still running.

Until DESTROY_MR completes the device may still translate through the key
("DESTROY_MR" in docs/hardware.md). The device's fault plan
delay_destroy_mr=MS holds the command that long while the key keeps working,
and counts every access through the key meanwhile (accesses_after_destroy).
For an explicit and an implicit ODP MR over anonymous memory, and each event
that takes the pages back (MADV_DONTNEED, munmap, MADV_SOFT_OFFLINE, which
migrates them, and MADV_PAGEOUT when swap on zram is available):

  1 the MR is registered and every page is faulted into the device by a
    remote write (pattern A), which lands byte-exact
  2 ibv_dereg_mr() runs in a thread (the device holds DESTROY_MR), and the
    device reports that it began (destroys_delayed)
  3 while it runs, the event takes the pages back; the CPU rewrites the
    range (pattern B, fresh pages) once the kernel's invalidation returned
  4 remote writes (pattern C) keep coming through the key until
    ibv_dereg_mr() returns: none lands, and the device makes no access
    through the key after the event returned (accesses_after_destroy does
    not move)
  5 ibv_dereg_mr() returns within its bound, successfully; the range holds
    pattern B byte for byte; the oracle recorded no violation

The MRs are made through libibverbs directly (ctypes), which lets the
event run while another thread sits in ibv_dereg_mr(). Output is TAP;
skipped when the device's ODP is off.
"""

import ctypes
import ctypes.util
import mmap
import os
import subprocess
import sys
import threading
import time

import mmsetup
from odprnic_app import BAD_DMESG, Tap, dmesg, ibdev, wait_for
from odprnic_ctl import Control

PAGE = 4096
PAGES = 16
LENGTH = PAGES * PAGE
DELAY_MS = 3000
AREA = 0x3f00_0000_0000          # fixed addresses, far from malloc's
IBV_ACCESS = 1 | 2 | 4 | 64       # LOCAL_WRITE REMOTE_WRITE REMOTE_READ ON_DEMAND
MADV_DONTNEED, MADV_PAGEOUT, MADV_SOFT_OFFLINE = 4, 21, 101
PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
MAP_FIXED_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

ibv = ctypes.CDLL(ctypes.util.find_library("ibverbs") or "libibverbs.so.1",
                  use_errno=True)
ibv.ibv_get_device_list.restype = ctypes.POINTER(ctypes.c_void_p)
ibv.ibv_get_device_list.argtypes = [ctypes.POINTER(ctypes.c_int)]
ibv.ibv_get_device_name.restype = ctypes.c_char_p
ibv.ibv_get_device_name.argtypes = [ctypes.c_void_p]
ibv.ibv_open_device.restype = ctypes.c_void_p
ibv.ibv_open_device.argtypes = [ctypes.c_void_p]
ibv.ibv_alloc_pd.restype = ctypes.c_void_p
ibv.ibv_alloc_pd.argtypes = [ctypes.c_void_p]
ibv.ibv_reg_mr_iova2.restype = ctypes.c_void_p
ibv.ibv_reg_mr_iova2.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_size_t, ctypes.c_uint64,
                                 ctypes.c_uint]
ibv.ibv_dereg_mr.argtypes = [ctypes.c_void_p]
ibv.ibv_dealloc_pd.argtypes = [ctypes.c_void_p]
ibv.ibv_close_device.argtypes = [ctypes.c_void_p]


class IbvMr(ctypes.Structure):
    _fields_ = [("context", ctypes.c_void_p), ("pd", ctypes.c_void_p),
                ("addr", ctypes.c_void_p), ("length", ctypes.c_size_t),
                ("handle", ctypes.c_uint32), ("lkey", ctypes.c_uint32),
                ("rkey", ctypes.c_uint32)]


def open_pd(name):
    n = ctypes.c_int()
    lst = ibv.ibv_get_device_list(ctypes.byref(n))
    dev = next(lst[i] for i in range(n.value)
               if ibv.ibv_get_device_name(lst[i]).decode() == name)
    ctx = ibv.ibv_open_device(dev)
    ibv.ibv_free_device_list(lst)
    pd = ibv.ibv_alloc_pd(ctx)
    if not ctx or not pd:
        raise OSError(ctypes.get_errno(), "cannot open the device")
    return ctx, pd


def map_fixed(addr):
    got = libc.mmap(addr, LENGTH, PROT_RW, MAP_FIXED_ANON, -1, 0)
    if got != addr:
        raise OSError(ctypes.get_errno(), "mmap")


def swap_on():
    """Swap on zram for MADV_PAGEOUT; False when the guest has none."""
    if any(l.startswith("/dev/zram") for l in open("/proc/swaps")):
        return True
    try:
        subprocess.run(["modprobe", "zram"], check=True, capture_output=True)
        with open("/sys/block/zram0/disksize", "w") as f:
            f.write("64M")
        subprocess.run(["mkswap", "/dev/zram0"], check=True, capture_output=True)
        subprocess.run(["swapon", "/dev/zram0"], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def event(kind, addr):
    """Takes the pages back; returns once the kernel's invalidation did."""
    if kind == "munmap":
        if libc.munmap(addr, LENGTH):
            raise OSError(ctypes.get_errno(), "munmap")
        map_fixed(addr)
        return
    advice = {"dontneed": MADV_DONTNEED, "pageout": MADV_PAGEOUT,
              "soft-offline": MADV_SOFT_OFFLINE}[kind]
    if kind == "soft-offline":
        for p in range(PAGES):
            if libc.madvise(addr + p * PAGE, PAGE, advice):
                raise OSError(ctypes.get_errno(), "madvise")
        return
    if libc.madvise(addr, LENGTH, advice):
        raise OSError(ctypes.get_errno(), "madvise")


def pagemap(addr):
    """(present, swapped, pfn) of each page of the range."""
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        raw = f.read(PAGES * 8)
    out = []
    for i in range(PAGES):
        v = int.from_bytes(raw[i * 8:i * 8 + 8], "little")
        out.append((bool(v >> 63 & 1), bool(v >> 62 & 1), v & ((1 << 55) - 1)))
    return out


def taken(kind, before, after):
    """Whether the event really took every page from the process."""
    if kind == "soft-offline":
        # migrated: present again elsewhere, or not present yet
        return all(not a[0] or a[2] != b[2] for a, b in zip(after, before))
    if kind == "pageout":
        return all(a[1] for a in after)
    return all(not a[0] for a in after)


def fill(addr, byte):
    ctypes.memset(addr, byte, LENGTH)


def scenario(t, ctl, pd, mode, kind, addr):
    name = f"{mode} ODP, {kind}"
    map_fixed(addr)
    fill(addr, 0x11)
    if mode == "implicit":
        mrp = ibv.ibv_reg_mr_iova2(pd, None, ctypes.c_size_t(-1).value, 0,
                                   IBV_ACCESS)
    else:
        mrp = ibv.ibv_reg_mr_iova2(pd, addr, LENGTH, addr, IBV_ACCESS)
    if not t(bool(mrp), f"{name}: registered",
             os.strerror(ctypes.get_errno()) if not mrp else ""):
        return
    rkey = IbvMr.from_address(mrp).rkey
    ok = all(ctl.inject_write(rkey, addr + p * PAGE, b"\xaa" * PAGE)
             .get("status") == "success" for p in range(PAGES))
    t(ok and ctypes.string_at(addr, LENGTH) == b"\xaa" * LENGTH,
      f"{name}: every page faulted in by a remote write, byte-exact")

    before = ctl.counters()["counters"]
    ctl.set_fault_plan([f"delay_destroy_mr={DELAY_MS},count=1"])
    box = {}

    def dereg():
        t0 = time.monotonic()
        box["rc"] = ibv.ibv_dereg_mr(mrp)
        box["s"] = time.monotonic() - t0

    th = threading.Thread(target=dereg, daemon=True)
    th.start()
    began = wait_for(lambda: ctl.counters()["counters"]["destroys_delayed"]
                     > before["destroys_delayed"], 10)
    t(bool(began), f"{name}: DESTROY_MR began and is held by the device")
    frames = pagemap(addr)
    for _ in range(5):
        event(kind, addr)
        if taken(kind, frames, pagemap(addr)):
            break
        # pages the fault worker brought in may still wait in another
        # CPU's LRU batch, where reclaim cannot isolate them
        mmsetup.drain_lru_all()
    after_event = ctl.counters()["counters"]["accesses_after_destroy"]
    t(taken(kind, frames, pagemap(addr)),
      f"{name}: the kernel took every page back (/proc/self/pagemap)")
    fill(addr, 0x5b)

    landed = tries = 0
    while th.is_alive() and tries < 200:
        p = tries % PAGES
        r = ctl.inject_write(rkey, addr + p * PAGE, b"\xc3" * 64)
        landed += r.get("status") == "success"
        tries += 1
    th.join(DELAY_MS / 1000 + 15)
    ctl.clear_fault_plan()
    end = ctl.counters()["counters"]
    t(not th.is_alive() and box.get("rc") == 0,
      f"{name}: ibv_dereg_mr returns, successfully",
      f"rc {box.get('rc')} after {box.get('s', -1):.2f}s")
    stale = end["accesses_after_destroy"] - after_event
    t(landed == 0 and stale == 0,
      f"{name}: no access through the key after the kernel took the pages back",
      f"{landed} of {tries} later remote writes landed, "
      f"{stale} device accesses after the event")
    data = ctypes.string_at(addr, LENGTH)
    bad = [p for p in range(PAGES) if data[p * PAGE:(p + 1) * PAGE] !=
           b"\x5b" * PAGE]
    t(not bad, f"{name}: the CPU's rewrite of the range is intact byte for byte",
      f"pages {bad} changed")
    t(end["violations"] == before["violations"],
      f"{name}: the DMA oracle recorded no violation")
    libc.munmap(addr, LENGTH)


def main():
    t = Tap()
    dev = ibdev()
    if dev is None:
        print("1..0 # SKIP no odp_rnic device")
        return 0
    with Control.open() as ctl:
        if not ctl.version().get("odp"):
            print("ok 1 - deregistration racing invalidations "
                  "# SKIP the device's ODP is off\n1..1")
            return 0
        ctx, pd = open_pd(dev)
        kinds = ["dontneed", "munmap", "soft-offline"]
        if swap_on():
            kinds.append("pageout")
        else:
            print("# no swap on zram here: MADV_PAGEOUT not run")
        log0 = len(dmesg().splitlines())
        addr = AREA
        for mode in ("explicit", "implicit"):
            for kind in kinds:
                scenario(t, ctl, pd, mode, kind, addr)
                addr += 1 << 26      # its own implicit child block
        bad = [l for l in dmesg().splitlines()[log0:]
               if any(w in l for w in BAD_DMESG)]
        t(not bad, "the kernel logged no warning", "; ".join(bad[:3]))
        ibv.ibv_dealloc_pd(pd)
        ibv.ibv_close_device(ctx)
    return t.finish()


if __name__ == "__main__":
    sys.exit(main())
