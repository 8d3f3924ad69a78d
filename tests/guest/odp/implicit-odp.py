#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Implicit ODP: one MR over the whole address space.

ibv_reg_mr(pd, NULL, SIZE_MAX, IBV_ACCESS_ON_DEMAND | ...) (pyverbs
MR(..., implicit=True)) and nothing else registered: every buffer below is
named by the implicit MR's lkey or rkey at its plain virtual address.
Anonymous regions are mmapped at fixed addresses 256 MiB apart, so that each
lies in its own block of the driver (docs/driver.md, "Implicit ODP").

  (a) query_device_ex: IBV_ODP_SUPPORT_IMPLICIT exactly when the device's
      ODP is on, with the other ODP caps (daxlib.Env.check_odp_caps)
  (b) the implicit registration succeeds (device mode "implicit"); with the
      device's ODP off it fails with EOPNOTSUPP and the rest is skipped
  (c) two RC QPs of this process over the loopback port: SEND, RDMA WRITE
      and RDMA READ between two anonymous regions, all through the implicit
      keys, byte-exact; the device faulted and the driver made children
  (d) an injected remote write into untouched anonymous memory faults and
      lands byte-exact; a remote read returns it
  (e) the same into an XFS-DAX file mapping on pmem: pread and the mapping
      see the bytes
  (f) MADV_DONTNEED of part of the anonymous region invalidates (the MR's
      counter, the odprnic_inv_start tracepoint with the MR's key and the
      range); the CPU sees zeroes there; the next remote write faults again
      and lands
  (g) the same on the DAX mapping: the next remote write faults again and
      lands in the file
  (h) munmap of a region alone in its block: invalidation (counter and
      tracepoint), the block's child is freed (odprnic_imr_child tracepoint,
      rdma resource show mr -dd children); a remote write there then fails
      cleanly, and the child its fault made goes again; one above the user
      address space fails without making a child
  (i) ibv_advise_mr(PREFETCH_WRITE, FLUSH) of a fresh region: a remote
      write there then needs no page fault and lands
  (i2) the same without FLUSH: the call returns at once, the device maps
      the pages shortly after, and a remote write needs no fault; an
      explicit ODP MR deregistered right after an asynchronous prefetch of
      all of it deregisters without hanging (the prefetch holds the MR)
  (j) a race: 200 remote writes into a region while another thread
      alternately zaps it (MADV_DONTNEED) and unmaps and maps it again: every
      write succeeds or fails cleanly (never a timeout), the driver's child
      for the block comes and goes, and afterwards a write lands byte-exact
  (k) rdma statistic show mr: the MR's page_faults, page_invalidations and
      page_prefetch are those the steps above caused (non-zero)
  (l) after deregistration every child made during the test was freed (the
      tracepoint, made and freed per block); the device forgets the key
  (m) the DMA oracle recorded no violation; the kernel logged no warning
      (WARNING, BUG, refcount_t) meanwhile

Output is TAP; the exit status is non-zero when a step failed.
"""

import ctypes
import errno
import json
import mmap
import os
import re
import random
import sys
import threading
import time

import daxlib
from daxlib import BailOut, Failed, Tap

import pyverbs.enums as e
from pyverbs.cq import CQ
from pyverbs.mr import MR
from pyverbs.pyverbs_error import PyverbsRDMAError
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR

from odprnic_verbs import rc_connect

MIB = 1 << 20
BLOCK = 64 * MIB          # the driver's child size (ODPRNIC_IMR_CHILD_SHIFT)
REGION = 4 * MIB
# 256 MiB apart, far from what the loader and malloc use
AREA = 0x3e00_0000_0000
STRIDE = 256 * MIB
# no process maps this (the kernel's half of the address space)
KERNEL_VA = 0xffff_8000_0000_0000
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED = 4
DAX_FILE_SIZE = 2 * MIB
ACCESS = daxlib.ACCESS_ODP_RW
TRACE = "/sys/kernel/tracing"
EVENTS = ("odprnic_inv_start", "odprnic_imr_child", "odprnic_page_fault")

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Region:
    """REGION bytes of private anonymous memory at a fixed address."""

    def __init__(self, slot, size=REGION):
        want = AREA + slot * STRIDE
        addr = libc.mmap(want, size, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
        if addr != want:
            raise Failed(f"mmap at 0x{want:x}: {os.strerror(ctypes.get_errno())} (got {addr})")
        self.addr, self.size = addr, size

    def write(self, off, data):
        ctypes.memmove(self.addr + off, data, len(data))

    def read(self, off, length):
        return ctypes.string_at(self.addr + off, length)

    def madvise_dontneed(self, off, length):
        if libc.madvise(self.addr + off, length, MADV_DONTNEED):
            raise Failed(f"madvise: {os.strerror(ctypes.get_errno())}")

    def unmap(self):
        if self.addr and libc.munmap(self.addr, self.size):
            raise Failed(f"munmap: {os.strerror(ctypes.get_errno())}")
        self.addr = 0


class Trace:
    """The driver's tracepoints, from tracefs (mounted when it is not). The
    buffer is never cleared: mark() says where "since" starts."""

    def __init__(self):
        if not os.path.isdir(f"{TRACE}/events"):
            daxlib.run(["mount", "-t", "tracefs", "nodev", TRACE])
        self._write("buffer_size_kb", "4096")
        self._write("trace", "")
        for ev in EVENTS:
            self._write(f"events/odp_rnic/{ev}/enable", "1")
        self.since = 0

    @staticmethod
    def _write(name, value):
        try:
            with open(f"{TRACE}/{name}", "w") as f:
                f.write(value)
        except OSError as x:
            raise Failed(f"{TRACE}/{name}: {x}")

    @staticmethod
    def _lines():
        with open(f"{TRACE}/trace") as f:
            return [line for line in f if not line.startswith("#")]

    def mark(self):
        self.since = len(self._lines())

    def events(self, name, everything=False):
        """The fields of the NAME events since mark() (or all of them)."""
        out = []
        for line in self._lines()[0 if everything else self.since:]:
            m = re.search(rf" {name}: (.*)$", line)
            if m:
                out.append(m.group(1))
        return out

    def close(self):
        for ev in EVENTS:
            try:
                self._write(f"events/odp_rnic/{ev}/enable", "0")
            except Failed:
                pass


def inv_ranges(trace, key):
    """(iova, len) of the invalidations of KEY in the trace."""
    out = []
    for f in trace.events("odprnic_inv_start"):
        m = re.match(r"key=(0x[0-9a-f]+|0) iova=(0x[0-9a-f]+|0) len=(0x[0-9a-f]+|0)", f)
        if m and int(m.group(1), 16) == key:
            out.append((int(m.group(2), 16), int(m.group(3), 16)))
    return out


def child_events(trace, key, everything=False):
    """(start, "made"|"freed") of KEY's children in the trace."""
    out = []
    for f in trace.events("odprnic_imr_child", everything):
        m = re.match(r"key=(0x[0-9a-f]+|0) child (0x[0-9a-f]+|0)-\S+ (made|freed)", f)
        if m and int(m.group(1), 16) == key:
            out.append((int(m.group(2), 16), m.group(3)))
    return out


def overlaps(ranges, start, length):
    return any(i < start + length and start < i + n for i, n in ranges)


def rdma_json(*args):
    out = daxlib.run(["rdma", "-j", "-dd", *args])
    try:
        return json.loads(out) if out.strip() else []
    except ValueError:
        raise Failed(f"rdma -j -dd {' '.join(args)}: not JSON: {out[:200]}")


def mr_res(ibdev, rkey):
    """The MR's entry in rdma resource show mr -dd (rkey in hex without
    0x, the driver's attributes as drv_*)."""
    for m in rdma_json("resource", "show", "mr", "dev", ibdev):
        if int(str(m.get("rkey", "-1")), 16) == rkey:
            return m
    raise Failed(f"rdma resource show mr: no MR with rkey 0x{rkey:x}")


def mr_stats(ibdev, mrn):
    for m in rdma_json("statistic", "show", "mr"):
        if m.get("ifname") == ibdev and m.get("mrn") == mrn:
            return m
    raise Failed(f"rdma statistic show mr: no mrn {mrn} on {ibdev}")


def poll(cq, count, what, timeout=60):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count:
        n, wcs = cq.poll(num_entries=count - len(got))
        got += wcs[:n]
        if time.monotonic() > deadline:
            raise Failed(f"{what}: {len(got)} of {count} completions within {timeout}s")
        if not n:
            time.sleep(0.001)
    bad = [(w.wr_id, w.status) for w in got if w.status != e.IBV_WC_SUCCESS]
    if bad:
        raise Failed(f"{what}: completions with errors (wr_id, status): {bad}")
    return got


def main():
    tap = Tap("implicit-odp")
    try:
        return scenario(tap)
    except BailOut as b:
        return tap.bail(str(b))


def scenario(tap):
    dmesg_at_start = len(daxlib.run(["dmesg"]))
    env = daxlib.Env.setup(tap)
    odp_on = env.odp_on
    off = None if odp_on else "device --odp off"
    st = {"regions": []}

    def region(slot):
        r = Region(slot)
        st["regions"].append(r)
        return r

    def step_a():
        seen = env.check_odp_caps()
        general = env.ctx.query_device_ex().odp_caps.general_caps
        implicit = bool(general & e.IBV_ODP_SUPPORT_IMPLICIT)
        if implicit != odp_on:
            raise Failed(f"IBV_ODP_SUPPORT_IMPLICIT is {'set' if implicit else 'clear'} with the "
                         f"device's ODP {'on' if odp_on else 'off'} ({seen})")
        return f"{seen}: IBV_ODP_SUPPORT_IMPLICIT {'set' if implicit else 'clear'}"

    tap.step(f"(a) query_device_ex: IBV_ODP_SUPPORT_IMPLICIT {'set' if odp_on else 'clear'} "
             f"(device --odp {'on' if odp_on else 'off'})", step_a)

    def step_b():
        try:
            mr = MR(env.pd, 0, ACCESS, implicit=True)
        except PyverbsRDMAError as x:
            if odp_on:
                raise Failed(f"implicit registration failed: {daxlib.errname(x.error_code)}")
            if x.error_code != errno.EOPNOTSUPP:
                raise Failed(f"implicit registration failed with {daxlib.errname(x.error_code)}, "
                             "expected EOPNOTSUPP")
            return "--odp off: ibv_reg_mr(NULL, SIZE_MAX, ON_DEMAND) refused with EOPNOTSUPP"
        if not odp_on:
            mr.close()
            raise Failed("implicit registration succeeded on a device with --odp off")
        st["mr"] = mr
        info = env.ctl.mr(mr.rkey)
        if info.get("mode") != "implicit":
            raise Failed(f"the device reports {daxlib.brief(info)}")
        res = mr_res(env.ibdev, mr.rkey)
        st["mrn"] = res.get("mrn")
        st["trace"] = Trace()
        return (f"lkey 0x{mr.lkey:x} rkey 0x{mr.rkey:x} length {mr.length}; device "
                f"{daxlib.brief(info)}; restrack {daxlib.brief(res)}")

    tap.step("(b) implicit ODP MR registered" if odp_on else
             "(b) implicit ODP MR refused with EOPNOTSUPP (--odp off)", step_b)

    def step_c():
        mr = st["mr"]
        src, dst = region(0), region(1)
        cq = CQ(env.ctx, 16)
        cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1, max_recv_sge=1)
        qps = [QP(env.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
               for _ in range(2)]
        st["qp_objs"] = qps + [cq]
        gid = env.ctx.query_gid(port_num=1, index=0)
        for me, peer in ((qps[0], qps[1]), (qps[1], qps[0])):
            rc_connect(me, peer.qp_num, gid)
        faults0 = env.ctl.mr(mr.rkey).get("faults", 0)
        msg = os.urandom(3 * 4096 + 123)
        src.write(100, msg)
        # SEND: gathered from src, scattered into a receive in dst
        qps[1].post_recv(RecvWR(wr_id=1, num_sge=1,
                                sg=[SGE(dst.addr + 5000, len(msg), mr.lkey)]))
        qps[0].post_send(SendWR(wr_id=2, opcode=e.IBV_WR_SEND, num_sge=1,
                                sg=[SGE(src.addr + 100, len(msg), mr.lkey)],
                                send_flags=e.IBV_SEND_SIGNALED))
        poll(cq, 2, "SEND")
        daxlib.expect_bytes(dst.read(5000, len(msg)), msg, "SEND into the implicit MR")
        # RDMA WRITE src -> dst through the implicit rkey
        wmsg = os.urandom(10000)
        src.write(MIB, wmsg)
        wr = SendWR(wr_id=3, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                    sg=[SGE(src.addr + MIB, len(wmsg), mr.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(mr.rkey, dst.addr + 2 * MIB - 7)
        qps[0].post_send(wr)
        poll(cq, 1, "RDMA WRITE")
        daxlib.expect_bytes(dst.read(2 * MIB - 7, len(wmsg)), wmsg, "RDMA WRITE")
        # RDMA READ dst -> src
        wr = SendWR(wr_id=4, opcode=e.IBV_WR_RDMA_READ, num_sge=1,
                    sg=[SGE(src.addr + 3 * MIB, 6000, mr.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(mr.rkey, dst.addr + 2 * MIB)
        qps[0].post_send(wr)
        poll(cq, 1, "RDMA READ")
        daxlib.expect_bytes(src.read(3 * MIB, 6000), wmsg[7:6007], "RDMA READ")
        faults = env.ctl.mr(mr.rkey).get("faults", 0) - faults0
        made = {s for s, what in child_events(st["trace"], mr.rkey) if what == "made"}
        want = {src.addr // BLOCK * BLOCK, dst.addr // BLOCK * BLOCK}
        if faults < 1:
            raise Failed(f"no page fault for traffic on fresh memory (device faults +{faults})")
        if not want <= made:
            raise Failed(f"children made at {sorted(hex(m) for m in made)}, expected "
                         f"{sorted(hex(w) for w in want)}")
        return (f"SEND {len(msg)} B, WRITE {len(wmsg)} B, READ 6000 B byte-exact; device faults "
                f"+{faults}; children made at {sorted(hex(m) for m in made)}")

    tap.step("(c) SEND, RDMA WRITE, RDMA READ between anonymous regions through the implicit "
             "keys (loopback QPs)", step_c, needs=["mr", "trace"], st=st, skip=off)

    def step_d():
        mr = st["mr"]
        r = region(2)
        st["anon"] = r
        data = os.urandom(3 * 4096 + 500)
        resp = env.ctl.remote_write(mr.rkey, r.addr + 4096 - 250, data)
        daxlib.expect_success(resp, "remote write")
        if resp.get("faults", 0) < 1:
            raise Failed(f"remote write to untouched memory reported no fault: {daxlib.brief(resp)}")
        daxlib.expect_bytes(r.read(4096 - 250, len(data)), data, "anonymous memory (CPU)")
        back = env.ctl.remote_read(mr.rkey, r.addr + 4096 - 250, len(data))
        daxlib.expect_bytes(back, data, "remote read")
        st["anon_data"] = data
        return f"{len(data)} bytes at 0x{r.addr + 4096 - 250:x}: {resp['faults']} fault(s), byte-exact"

    tap.step("(d) injected remote write into anonymous memory faults and lands", step_d,
             needs=["mr"], st=st, skip=off)

    dax_off = 0x3000 - 100
    dax_len = 8192 + 200

    def step_e():
        mr = st["mr"]
        path = os.path.join(env.mount, "implicit-odp.bin")
        if os.path.exists(path):
            os.unlink(path)
        f = daxlib.DaxFile.create(path, DAX_FILE_SIZE)
        st["file"] = f
        data = os.urandom(dax_len)
        resp = env.ctl.remote_write(mr.rkey, f.addr + dax_off, data)
        daxlib.expect_success(resp, "remote write into the DAX mapping")
        if resp.get("faults", 0) < 1:
            raise Failed(f"no fault: {daxlib.brief(resp)}")
        daxlib.expect_bytes(os.pread(f.fd, dax_len, dax_off), data, "DAX file (pread)")
        daxlib.expect_bytes(f.read_mapped(dax_off, dax_len), data, "DAX file (mapping)")
        back = env.ctl.remote_read(mr.rkey, f.addr + dax_off, dax_len)
        daxlib.expect_bytes(back, data, "remote read of the DAX file")
        st["dax"] = True
        return (f"{path} (STATX_ATTR_DAX) at 0x{f.addr:x}: {dax_len} bytes at offset 0x{dax_off:x}, "
                f"{resp['faults']} fault(s), pread and mapping byte-exact")

    tap.step("(e) injected remote write into an XFS-DAX file mapping faults and lands", step_e,
             needs=["mr"], st=st, skip=off)

    def refault(what, rkey, va, length, check):
        """Invalidate-and-refault: returns the detail line."""
        data = os.urandom(length)
        resp = env.ctl.remote_write(rkey, va, data)
        daxlib.expect_success(resp, f"remote write after {what}")
        if resp.get("faults", 0) < 1:
            raise Failed(f"the remote write after {what} did not fault again: {daxlib.brief(resp)}")
        check(data)
        return resp["faults"]

    def invalidated(what, t, inv0, start, length):
        mr = st["mr"]
        inv1 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        ranges = inv_ranges(t, mr.rkey)
        if inv1 <= inv0:
            raise Failed(f"{what}: the MR's invalidations stayed at {inv0}")
        if not overlaps(ranges, start, length):
            raise Failed(f"{what}: no odprnic_inv_start for key 0x{mr.rkey:x} over "
                         f"0x{start:x}+0x{length:x}; seen {[(hex(i), hex(n)) for i, n in ranges]}")
        return inv1, ranges

    def step_f():
        mr, r, t = st["mr"], st["anon"], st["trace"]
        t.mark()
        inv0 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        r.madvise_dontneed(4096, 8192)
        inv1, ranges = invalidated("MADV_DONTNEED", t, inv0, r.addr + 4096, 8192)
        if r.read(4096, 8192) != bytes(8192):
            raise Failed("anonymous pages after MADV_DONTNEED are not zero")
        n = refault("MADV_DONTNEED", mr.rkey, r.addr + 4096 + 10, 5000,
                    lambda d: daxlib.expect_bytes(r.read(4096 + 10, 5000), d, "anonymous memory"))
        return (f"invalidations {inv0} -> {inv1}, traced {[(hex(i), hex(n)) for i, n in ranges]}; "
                f"zeroes after; the next remote write faulted {n}x and landed")

    tap.step("(f) MADV_DONTNEED of part of the anonymous region invalidates; the next remote "
             "write faults again", step_f, needs=["anon_data", "trace"], st=st, skip=off)

    def step_g():
        mr, f, t = st["mr"], st["file"], st["trace"]
        t.mark()
        inv0 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        page = (f.addr + dax_off) & ~0xfff
        if libc.madvise(page, 2 * 4096, MADV_DONTNEED):
            raise Failed(f"madvise: {os.strerror(ctypes.get_errno())}")
        inv1, ranges = invalidated("MADV_DONTNEED of the DAX mapping", t, inv0, page, 2 * 4096)
        n = refault("MADV_DONTNEED of the DAX mapping", mr.rkey, f.addr + dax_off, dax_len,
                    lambda d: daxlib.expect_bytes(os.pread(f.fd, dax_len, dax_off), d,
                                                  "DAX file (pread)"))
        return (f"invalidations {inv0} -> {inv1}, traced {[(hex(i), hex(n)) for i, n in ranges]}; "
                f"the next remote write faulted {n}x and landed in the file")

    tap.step("(g) MADV_DONTNEED of the DAX mapping invalidates; the next remote write faults "
             "again into the file", step_g, needs=["dax", "trace"], st=st, skip=off)

    def step_h():
        mr, t = st["mr"], st["trace"]
        r = region(3)
        block = r.addr // BLOCK * BLOCK
        t.mark()
        data = os.urandom(20000)
        daxlib.expect_success(env.ctl.remote_write(mr.rkey, r.addr + 3, data), "remote write")
        daxlib.expect_bytes(r.read(3, len(data)), data, "the region before munmap")
        if child_events(t, mr.rkey) != [(block, "made")]:
            raise Failed(f"expected one child made, for 0x{block:x}: {child_events(t, mr.rkey)}")
        kids0 = mr_res(env.ibdev, mr.rkey).get("drv_children")
        t.mark()
        inv0 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        addr = r.addr
        r.unmap()
        inv1, _ = invalidated("munmap", t, inv0, addr, REGION)

        def wait_freed(what, made):
            # the collector runs on the driver's workqueue: bounded wait
            deadline = time.monotonic() + 20
            while True:
                ev = [w for s, w in child_events(t, mr.rkey) if s == block]
                if (ev or not made) and ev[-1:] in ([], ["freed"]):
                    return ev
                if time.monotonic() > deadline:
                    raise Failed(f"{what}: the child of 0x{block:x} stays: {ev}")
                time.sleep(0.05)

        wait_freed("after munmap", True)
        # other children may go too (a fork write-protects private memory,
        # which invalidates it), none may come
        kids1 = mr_res(env.ibdev, mr.rkey).get("drv_children")
        if kids0 is None or kids1 is None or kids1 > kids0 - 1:
            raise Failed(f"children {kids0} before munmap, {kids1} after")
        t.mark()
        resp = env.ctl.remote_write(mr.rkey, addr + 3, b"x" * 64, check=False)
        status = resp.get("status")
        if status in ("success", "timeout", None):
            raise Failed(f"remote write to the unmapped range: {daxlib.brief(resp)}")
        # the failed fault made a child that holds nothing: it goes again
        ev = wait_freed("after the failed remote write", False)
        # above the user address space: refused without making anything
        t.mark()
        high = env.ctl.remote_write(mr.rkey, KERNEL_VA, b"y" * 64, check=False)
        if high.get("status") in ("success", "timeout", None) or child_events(t, mr.rkey):
            raise Failed(f"remote write to 0x{KERNEL_VA:x}: {daxlib.brief(high)}, children "
                         f"{child_events(t, mr.rkey)}")
        return (f"invalidations {inv0} -> {inv1}; child 0x{block:x} freed; children {kids0} -> "
                f"{kids1}; a remote write there then: {status}, its child {ev}; one to "
                f"0x{KERNEL_VA:x}: {high.get('status')}, no child")

    tap.step("(h) munmap of a region alone in its block invalidates and frees its child; a "
             "remote write there fails cleanly", step_h, needs=["mr", "trace"], st=st, skip=off)

    def step_i():
        mr = st["mr"]
        r = region(4)
        pf0 = env.ctl.mr(mr.rkey).get("prefetched_pages", 0)
        env.pd.advise_mr(e._IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
                         e._IBV_ADVISE_MR_FLAG_FLUSH,
                         [SGE(r.addr, 16 * 4096, mr.lkey)])
        pf1 = env.ctl.mr(mr.rkey).get("prefetched_pages", 0)
        if pf1 - pf0 < 16:
            raise Failed(f"the device counted {pf1 - pf0} prefetched pages, expected >= 16")
        data = os.urandom(16 * 4096 - 8)
        resp = env.ctl.remote_write(mr.rkey, r.addr + 4, data)
        daxlib.expect_success(resp, "remote write into the prefetched range")
        if resp.get("faults", 0):
            raise Failed(f"the write into a prefetched range faulted: {daxlib.brief(resp)}")
        daxlib.expect_bytes(r.read(4, len(data)), data, "prefetched region")
        return f"device prefetched_pages {pf0} -> {pf1}; remote write without a fault, byte-exact"

    tap.step("(i) ibv_advise_mr(PREFETCH_WRITE, FLUSH) on the implicit MR: no fault afterwards",
             step_i, needs=["mr"], st=st, skip=off)

    def step_i2():
        mr = st["mr"]
        r = region(6)
        pf0 = env.ctl.mr(mr.rkey).get("prefetched_pages", 0)
        t0 = time.monotonic()
        env.pd.advise_mr(e._IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE, 0,
                         [SGE(r.addr, 16 * 4096, mr.lkey)])
        returned = time.monotonic() - t0
        deadline = time.monotonic() + 10
        pf1 = pf0
        while time.monotonic() < deadline and pf1 - pf0 < 16:
            time.sleep(0.02)
            pf1 = env.ctl.mr(mr.rkey).get("prefetched_pages", 0)
        if pf1 - pf0 < 16:
            raise Failed(f"10 s after an asynchronous advise the device counted {pf1 - pf0} "
                         "prefetched pages, expected >= 16")
        data = os.urandom(16 * 4096 - 8)
        resp = env.ctl.remote_write(mr.rkey, r.addr + 4, data)
        daxlib.expect_success(resp, "remote write into the asynchronously prefetched range")
        if resp.get("faults", 0):
            raise Failed(f"the write into a prefetched range faulted: {daxlib.brief(resp)}")
        daxlib.expect_bytes(r.read(4, len(data)), data, "prefetched region")
        r2 = region(7)
        explicit = MR(env.pd, r2.size, ACCESS, address=r2.addr)
        env.pd.advise_mr(e._IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE, 0,
                         [SGE(r2.addr, r2.size, explicit.lkey)])
        took, _ = daxlib.bounded(explicit.close, 30, "dereg_mr after an asynchronous prefetch")
        return (f"advise returned in {returned * 1000:.1f} ms; device prefetched_pages {pf0} -> "
                f"{pf1}; remote write without a fault, byte-exact; an explicit MR deregistered "
                f"{took * 1000:.0f} ms after advising all {r2.size >> 20} MiB of it")

    tap.step("(i2) ibv_advise_mr(PREFETCH_WRITE) without FLUSH: asynchronous, then no fault; "
             "dereg right after one does not hang", step_i2, needs=["mr"], st=st, skip=off)

    def step_j():
        mr, t = st["mr"], st["trace"]
        r = region(5)
        base = r.addr
        stop, churn_err, rounds = threading.Event(), [], [0]

        def churn():
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
            while not stop.is_set():
                if rounds[0] % 2:
                    if libc.madvise(base, REGION, MADV_DONTNEED):
                        churn_err.append(f"madvise: {os.strerror(ctypes.get_errno())}")
                        return
                else:
                    # the region is gone for a moment, then back
                    if (libc.munmap(base, REGION) or
                            libc.mmap(base, REGION, prot, flags, -1, 0) != base):
                        churn_err.append(f"munmap/mmap: {os.strerror(ctypes.get_errno())}")
                        return
                rounds[0] += 1
                time.sleep(0.002)

        t.mark()
        thr = threading.Thread(target=churn, daemon=True)
        thr.start()
        seen = {}
        try:
            for _ in range(200):
                off = random.randrange(0, REGION - 300)
                resp = env.ctl.remote_write(mr.rkey, base + off, os.urandom(300), check=False)
                key = resp.get("status", f"no status: {resp.get('error')}")
                seen[key] = seen.get(key, 0) + 1
        finally:
            stop.set()
            thr.join(30)
        if thr.is_alive():
            raise Failed("the thread that unmaps and zaps did not stop")
        if churn_err:
            raise Failed(churn_err[0])
        bad = {k: v for k, v in seen.items() if k not in ("success", "remote_access_error")}
        if bad or not seen.get("success"):
            raise Failed(f"remote write outcomes {seen}")
        block = base // BLOCK * BLOCK
        ev = [w for b, w in child_events(t, mr.rkey) if b == block]
        data = os.urandom(9000)
        resp = env.ctl.remote_write(mr.rkey, base + 1234, data)
        daxlib.expect_success(resp, "remote write after the race")
        daxlib.expect_bytes(r.read(1234, len(data)), data, "the region after the race")
        return (f"{rounds[0]} rounds of MADV_DONTNEED or munmap+mmap; writes {seen}; the block's "
                f"child made {ev.count('made')}x, freed {ev.count('freed')}x; then byte-exact")

    tap.step("(j) remote writes racing MADV_DONTNEED and munmap+mmap of the same region",
             step_j, needs=["mr", "trace"], st=st, skip=off)

    def step_k():
        mr = st["mr"]
        s = mr_stats(env.ibdev, st["mrn"])
        want = ("page_faults", "page_invalidations", "page_prefetch")
        missing = [k for k in want if not s.get(k)]
        if missing:
            raise Failed(f"rdma statistic show mr: {missing} zero or absent: {daxlib.brief(s)}")
        res = mr_res(env.ibdev, mr.rkey)
        if res.get("drv_mode") != 2:
            raise Failed(f"rdma resource show mr -dd: {daxlib.brief(res)}")
        return f"{daxlib.brief({k: s[k] for k in want})}; drv_mode 2, children {res.get('drv_children')}"

    tap.step("(k) per-MR counters in restrack (rdma statistic show mr)", step_k,
             needs=["mrn"], st=st, skip=off)

    def step_l():
        mr, t = st.pop("mr"), st["trace"]
        rkey = mr.rkey
        mr.close()
        made, freed = {}, {}
        for start, what in child_events(t, rkey, everything=True):
            d = made if what == "made" else freed
            d[start] = d.get(start, 0) + 1
        if not made or made != freed:
            raise Failed(f"children made {[(hex(k), v) for k, v in made.items()]}, freed "
                         f"{[(hex(k), v) for k, v in freed.items()]}")
        resp = env.ctl.request({"op": "mr", "key": rkey}, check=False)
        if resp.get("ok"):
            raise Failed(f"the device still knows key 0x{rkey:x}: {daxlib.brief(resp)}")
        return (f"{sum(made.values())} children made over the test ({len(made)} blocks), as many "
                f"freed; device: {resp.get('error', resp)}")

    tap.step("(l) deregistration: every child made was freed; the device forgets the key", step_l,
             needs=["mr", "trace"], st=st, skip=off)

    def step_m():
        v = env.ctl.violations()
        count = v.get("count", len(v.get("violations", [])))
        if count:
            raise Failed(f"{count} oracle violation(s): {daxlib.brief(v.get('violations', [])[:4])}")
        log = daxlib.run(["dmesg"])[dmesg_at_start:]
        bad = [line for line in log.splitlines()
               if re.search(r"WARNING:|BUG:|refcount_t:|general protection", line)]
        if bad:
            raise Failed("kernel log:\n" + "\n".join(bad[:10]))
        return "0 violations; no kernel warning"

    tap.step("(m) DMA oracle: no violations; no kernel warning", step_m)

    for obj in st.get("qp_objs", []) + ([st["mr"]] if "mr" in st else []):
        try:
            obj.close()
        except Exception as x:
            tap.diag(f"close: {x}")
    for r in st["regions"]:
        r.unmap()
    if "file" in st:
        st["file"].close()
    if "trace" in st:
        st["trace"].close()
    env.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
