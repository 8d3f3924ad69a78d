#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""ODP over huge pages: transparent huge pages, hugetlb and hugetlbfs, with
and without IBV_ACCESS_HUGETLB, explicit and implicit.

IBV_ACCESS_HUGETLB makes the core's ODP umem count in 2 MiB pages
(page_shift 21): a driver that indexes its page list in 4 KiB units reads
past it, hands the device wrong or no translations, and RDMA to all but the
first 4 KiB of each huge page goes astray or never completes; and such a
umem starts at the huge page below the MR's start, so a driver that takes
it to start at the MR's first page is off by the MR's offset in that huge
page (the MRs at region + 0x3000 show it). Every case
maps 8 MiB (four 2 MiB pages) of one backing, fills it from the CPU, and
keeps a model of every byte: the whole region is compared with it after
each phase, so a write that lands in the wrong place is seen as well as one
that does not land.

  (a) set-up: the THP setting, 8 free pages in the hugetlb pool, hugetlbfs
      mounted; two RC QPs of this process connected over the loopback port
      (the requester side: a pinned 4 MiB buffer); an implicit ODP MR
  (b) an implicit ODP MR with IBV_ACCESS_HUGETLB is refused with a clear
      errno (EINVAL or EOPNOTSUPP), or, if it is accepted, behaves as below
  then one case per row (backing, registration, HUGETLB, where the MR
  starts):
      thp        explicit  -         region
      thp        explicit  HUGETLB   region
      thp        explicit  HUGETLB   region + 0x3000 (not 2 MiB aligned)
      thp        implicit  -         (the whole address space)
      hugetlb    explicit  -         region      (MAP_HUGETLB, private)
      hugetlb    explicit  HUGETLB   region
      hugetlb    explicit  HUGETLB   region + 0x3000
      hugetlb    implicit  -
      hugetlbfs  explicit  HUGETLB   region      (a file, MAP_SHARED)
  (N.1) the backing is huge: AnonHugePages (thp) or Private/Shared_Hugetlb
      (hugetlb, hugetlbfs) in smaps covers the whole region; the MR is
      registered (an explicit HUGETLB registration may instead be refused
      with EINVAL or EOPNOTSUPP: then the case ends there, said so)
  (N.2) RDMA WRITEs at MR offsets 0x40, 0x3000, 0x201040, 0x67f000, the
      last byte, across each 2 MiB boundary (0x1000 bytes across the first,
      2 MiB + 8 KiB across the second and third, 10 bytes across the third),
      1 byte to 2 MiB long, then RDMA READs of each and of ranges the writes
      did not touch: every work request completes within 10 s (a hang is a
      failure: the QPs are replaced, and a case stops after two), the
      bytes are exact from the CPU and in what the READs return, and the
      whole region matches the model
  (N.3) MADV_DONTNEED of one 4 KiB page inside the second huge page (thp:
      splits it; hugetlb pages are never split, so not there) and of the
      whole third huge page (hugetlbfs: fallocate PUNCH_HOLE, since a shared
      file keeps its data): the CPU sees zeroes exactly there
  (N.4) RDMA WRITEs and READs again into the zapped page, across its edge,
      into a split-off neighbour, into the freed huge page and across its
      end: exact, no stale data, the region matches the model. With
      IBV_ACCESS_HUGETLB over THP a range that is no longer one huge page
      may fail cleanly instead (an error completion, no bytes written): the
      core maps a HUGETLB umem only in whole huge pages
  (N.5) the DMA oracle recorded no new violation; deregistration returns
      within 30 s
  (z) the DMA oracle recorded no violation; no kernel warning

Output is TAP; the exit status is non-zero when a step failed. With the
device's ODP off everything after (a) is skipped.
"""

import errno
import os
import sys
import time

import daxlib
from daxlib import BailOut, Failed, Tap

import mmsetup
from mmsetup import HPAGE, PAGE, Mapping
import odprnic_env
from odprnic_env import Hung

import pyverbs.enums as e
from pyverbs.mr import MR
from pyverbs.pyverbs_error import PyverbsRDMAError

REGION = 4 * HPAGE
WR_BOUND = 10.0         # seconds a work request may take
MAX_HANGS = 2           # per case, then the case stops
ACCESS = daxlib.ACCESS_ODP_RW
HUGETLB = e.IBV_ACCESS_HUGETLB
HUGETLBFS = "/mnt/odp-rnic-huge"
REFUSALS = (errno.EINVAL, errno.EOPNOTSUPP)
CASES = (("thp", "explicit", False, 0),
         ("thp", "explicit", True, 0),
         ("thp", "explicit", True, 0x3000),
         ("thp", "implicit", False, 0),
         ("hugetlb", "explicit", False, 0),
         ("hugetlb", "explicit", True, 0),
         ("hugetlb", "explicit", True, 0x3000),
         ("hugetlb", "implicit", False, 0),
         ("hugetlbfs", "explicit", True, 0))


def writes_before(start, length):
    """(region offset, length) of the first writes, for an MR at region
    offset start of length bytes."""
    return [(start + 0x40, 64), (start + 0x3000, 4096), (start + 0x201040, 3 * PAGE + 17),
            (start + 0x67f000, PAGE), (start + length - 1, 1),
            (HPAGE - 0x800, 0x1000), (2 * HPAGE - 0x1000, HPAGE + 0x2000),
            (3 * HPAGE - 5, 10)]


# ranges no write touches (read faults of fresh pages)
UNTOUCHED = [(0x100000, 0x3000), (0x7f0000, 0x8000)]
SPLIT_PAGE = HPAGE + 0x3000             # the 4 KiB zapped in the second huge page
FREED = 2 * HPAGE                       # the third huge page, freed whole
WRITES_AFTER = [(SPLIT_PAGE + 0x10, 100), (SPLIT_PAGE - 0x100, 0x200), (HPAGE + 0x5000, 64),
                (FREED + 0x40, 8192), (FREED + HPAGE - 0x1000, 0x2000)]
READS_AFTER = [(SPLIT_PAGE, PAGE), (FREED, HPAGE)]


def differences(got, want, at):
    """Where got differs from want (equal lengths): how many 4 KiB pages,
    and the first differing bytes of the first four, by offset."""
    pages = [i for i in range(0, len(want), PAGE) if got[i:i + PAGE] != want[i:i + PAGE]]
    where = []
    for i in pages[:4]:
        ks = [k for k in range(min(PAGE, len(want) - i)) if got[i + k] != want[i + k]]
        a = i + ks[0]
        where.append(f"{at}0x{a:x}-0x{i + ks[-1] + 1:x} (got {got[a:a + 8].hex()} "
                     f"expected {want[a:a + 8].hex()})")
    return f"{len(pages)} page(s) differ: " + ", ".join(where)


def expect(got, want, what):
    if got != want:
        raise Failed(f"{what}: " + differences(got, want, "+"))


def main():
    tap = Tap("hugepages")
    return odprnic_env.main(tap, BailOut, lambda dev, log: scenario(tap, dev, log))


def scenario(tap, dev, log):
    off = None if dev.odp_on else "device --odp off"
    st = {"undo": []}

    def step_a():
        notes = [f"THP {mmsetup.thp_mode()}"]
        try:
            pool = mmsetup.HugetlbPool.reserve(8)
            st["undo"].append(pool.close)
            fs = mmsetup.Hugetlbfs.mount(HUGETLBFS)
            st["undo"].append(fs.close)
            st["fs"] = fs
            notes.append(f"hugetlb pool: {mmsetup.HugetlbPool.meminfo('HugePages_Free')} free "
                         f"2 MiB pages; hugetlbfs on {HUGETLBFS}")
        except mmsetup.Unavailable as x:
            st["no_hugetlb"] = str(x)
            notes.append(f"no hugetlb: {x}")
        st["lb"] = odprnic_env.Loopback(dev, size=4 << 20)
        st["imr"] = MR(dev.pd, 0, ACCESS, implicit=True)
        st["fill"] = os.urandom(REGION)
        notes.append(f"loopback RC pair; implicit MR rkey 0x{st['imr'].rkey:x}")
        return "; ".join(notes)

    tap.step("(a) set-up: THP, hugetlb pool and hugetlbfs, loopback QPs, an implicit ODP MR",
             step_a, skip=off)

    def step_b():
        try:
            mr = MR(dev.pd, 0, ACCESS | HUGETLB, implicit=True)
        except PyverbsRDMAError as x:
            if x.error_code not in REFUSALS:
                raise Failed(f"refused with {daxlib.errname(x.error_code)}, expected EINVAL or "
                             "EOPNOTSUPP")
            return f"refused with {daxlib.errname(x.error_code)}"
        st["imr_hugetlb"] = mr
        return f"accepted (rkey 0x{mr.rkey:x}): it takes the traffic of an implicit THP case"

    tap.step("(b) an implicit ODP MR with IBV_ACCESS_HUGETLB: refused with a clear errno, or "
             "working", step_b, needs=["imr"], st=st, skip=off)

    if "imr" in st:
        cases = list(CASES)
        if "imr_hugetlb" in st:
            cases.insert(4, ("thp", "implicit", True, 0))
        for n, case in enumerate(cases, 1):
            one_case(tap, dev, st, n, *case)
    for name in ("imr", "imr_hugetlb"):
        if name in st:
            st[name].close()

    odprnic_env.final_step(tap, dev, log, Failed)
    if "lb" in st:
        st["lb"].close()
    for fn in reversed(st["undo"]):
        fn()
    dev.close()
    return tap.finish()


class Case:
    """One region of one backing, its model, and the MR under test."""

    def __init__(self, dev, st, backing, mr_kind, hugetlb, start):
        self.dev, self.st = dev, st
        self.backing, self.mr_kind, self.hugetlb = backing, mr_kind, hugetlb
        self.start = start
        self.length = REGION - start - (0x1000 if start else 0)
        self.m = self.mr = None
        self.fd = -1
        self.hangs = 0
        self.notes = []

    def map(self):
        if self.backing == "thp":
            self.m = Mapping.anon(REGION)
            self.m.madvise(0, REGION, mmsetup.MADV_HUGEPAGE)
        elif self.backing == "hugetlb":
            self.m = Mapping.hugetlb(REGION)
        else:
            self.fd = self.st["fs"].create("hugepages.bin", REGION)
            self.m = Mapping.file(self.fd, REGION, shared=True)
        self.m.write(0, self.st["fill"])
        self.model = bytearray(self.st["fill"])

    def huge_kib(self):
        if self.backing == "thp":
            return self.m.anon_huge_kib()
        return self.m.hugetlb_kib()

    def register(self):
        """None, or the errno of a refused registration."""
        access = ACCESS | (HUGETLB if self.hugetlb else 0)
        if self.mr_kind == "implicit":
            self.key = self.st["imr_hugetlb" if self.hugetlb else "imr"]
            return None
        try:
            self.mr = MR(self.dev.pd, self.length, access, address=self.m.addr + self.start)
        except PyverbsRDMAError as x:
            return x.error_code
        self.key = self.mr
        return None

    def va(self, off):
        return self.m.addr + off

    def _post(self, where, post):
        """post()'s result; Failed when the work request hangs (the QPs are
        replaced)."""
        try:
            return post()
        except Hung as h:
            self.hangs += 1
            self.st["lb"].reset()
            raise Failed(f"{where}: {h}")

    def _failed(self, where, status, tolerate):
        self.st["lb"].reset()
        if not tolerate:
            raise Failed(f"{where}: completion status {status}")
        return f"{where}: failed cleanly (status {status})"

    def write(self, off, length, tolerate=False):
        """An RDMA WRITE of fresh bytes at region offset off. Returns a
        note, or None; raises Failed unless it lands (or, when tolerated,
        fails cleanly with nothing written)."""
        lb = self.st["lb"]
        data = os.urandom(length)
        where = f"write 0x{length:x} B at MR offset 0x{off - self.mr_off():x}"
        status = self._post(where, lambda: lb.write(self.key.rkey, self.va(off), data, WR_BOUND))
        if status != e.IBV_WC_SUCCESS:
            if self.m.read(off, length) != bytes(self.model[off:off + length]):
                self.st["lb"].reset()
                raise Failed(f"{where}: status {status}, and the bytes there changed")
            return self._failed(where, status, tolerate)
        self.model[off:off + length] = data
        expect(self.m.read(off, length), data, f"{where} (CPU)")
        return None

    def read(self, off, length, tolerate=False):
        lb = self.st["lb"]
        where = f"read 0x{length:x} B at MR offset 0x{off - self.mr_off():x}"
        status, got = self._post(where, lambda: lb.read(self.key.rkey, self.va(off), length,
                                                        WR_BOUND))
        if status != e.IBV_WC_SUCCESS:
            return self._failed(where, status, tolerate)
        expect(got, bytes(self.model[off:off + length]), where)
        return None

    def mr_off(self):
        return 0 if self.mr_kind == "implicit" else self.start

    def check_region(self, what):
        got = self.m.read(0, REGION)
        if got != bytes(self.model):
            raise Failed(f"{what}: the region differs from the model: "
                         + differences(got, bytes(self.model), "region offset "))

    def check(self, failures, count, what):
        """Raises Failed listing the failed accesses and, where the region
        differs from the model, where."""
        try:
            self.check_region(what)
        except Failed as f:
            failures = failures + [str(f)]
        if failures:
            raise Failed(f"{len(failures)} failure(s) in {count} accesses:\n" + "\n".join(failures))

    def run(self, accesses, tolerate=lambda off, length: False):
        """Runs (op, off, length) in order; raises Failed with every
        failure once all ran (or the case hung MAX_HANGS times)."""
        failures, notes = [], []
        for i, (op, off, length) in enumerate(accesses):
            if self.hangs >= MAX_HANGS:
                failures.append(f"{len(accesses) - i} more accesses not run after "
                                f"{self.hangs} hangs")
                break
            try:
                note = (self.write if op == "w" else self.read)(off, length,
                                                                 tolerate(off, length))
                if note:
                    notes.append(note)
            except Failed as f:
                failures.append(str(f))
        return failures, notes

    def close(self):
        ok = True
        if self.mr is not None:
            ok, r = odprnic_env.bounded(self.mr.close, 30)
            ok = ok and not isinstance(r, Exception)
            self.mr = None
        if self.m is not None:
            self.m.close()
        if self.fd >= 0:
            os.close(self.fd)
            os.unlink(os.path.join(HUGETLBFS, "hugepages.bin"))
        return ok


def one_case(tap, dev, st, n, backing, mr_kind, hugetlb, start):
    name = (f"({n}) {backing}, {mr_kind} MR" + (", IBV_ACCESS_HUGETLB" if hugetlb else "") +
            (f", MR at region + 0x{start:x}" if start else ""))
    if backing != "thp" and "no_hugetlb" in st:
        tap.skip(name, st["no_hugetlb"])
        return
    if backing == "thp" and mmsetup.thp_mode() == "never":
        tap.skip(name, "transparent huge pages are off")
        return
    c = Case(dev, st, backing, mr_kind, hugetlb, start)
    cs = {}
    t0 = time.monotonic()
    v0 = dev.violations()[0]

    def step_1():
        c.map()
        kib = c.huge_kib()
        if kib < REGION // 1024:
            raise Failed(f"only {kib} kB of the {REGION >> 10} kB region are huge pages")
        err = c.register()
        what = "AnonHugePages" if backing == "thp" else "Hugetlb"
        if err is not None:
            if not hugetlb or err not in REFUSALS:
                raise Failed(f"registration failed: {daxlib.errname(err)}")
            cs["refused"] = daxlib.errname(err)
            return f"{what} {kib} kB; registration refused with {cs['refused']}"
        cs["mr"] = True
        return (f"{what} {kib} kB at 0x{c.m.addr:x}; MR rkey 0x{c.key.rkey:x} over "
                f"0x{c.va(c.start):x}+0x{c.length:x}")

    tap.step(f"{name}.1 huge pages back the whole region; registered", step_1)
    if "refused" in cs:
        c.close()
        return

    def step_2():
        w = writes_before(c.start, c.length)
        acc = [("w", o, n_) for o, n_ in w] + [("r", o, n_) for o, n_ in w + UNTOUCHED]
        t0 = time.monotonic()
        failures, _ = c.run(acc)
        secs = time.monotonic() - t0
        c.check(failures, len(acc), "after the writes")
        cs["before"] = True
        return f"{len(w)} writes, {len(acc) - len(w)} reads byte-exact in {secs:.1f} s"

    tap.step(f"{name}.2 RDMA WRITEs and READs across the huge pages: bounded, byte-exact, "
             "nothing else changed", step_2, needs=["mr"], st=cs)

    def step_3():
        notes = []
        kib0 = c.huge_kib()
        if backing == "thp":
            c.m.madvise(SPLIT_PAGE, PAGE, mmsetup.MADV_DONTNEED)
            c.model[SPLIT_PAGE:SPLIT_PAGE + PAGE] = bytes(PAGE)
            notes.append(f"4 KiB at region offset 0x{SPLIT_PAGE:x}")
        if backing == "hugetlbfs":
            c.m.punch(FREED, HPAGE)
            notes.append(f"PUNCH_HOLE of region offset 0x{FREED:x}+2 MiB")
        else:
            c.m.madvise(FREED, HPAGE, mmsetup.MADV_DONTNEED)
            notes.append(f"MADV_DONTNEED of region offset 0x{FREED:x}+2 MiB")
        c.model[FREED:FREED + HPAGE] = bytes(HPAGE)
        c.check_region("after the zap")
        cs["zapped"] = True
        return f"{'; '.join(notes)}: zeroes there; huge pages {kib0} kB -> {c.huge_kib()} kB"

    tap.step(f"{name}.3 MADV_DONTNEED of 4 KiB inside a huge page"
             + (" (split)" if backing == "thp" else " (not for hugetlb)")
             + " and of a whole huge page: the CPU sees zeroes there", step_3,
             needs=["before"], st=cs)

    def step_4():
        after = [(o, n_) for o, n_ in WRITES_AFTER
                 if backing == "thp" or not (HPAGE <= o < 2 * HPAGE)]
        reads = [(o, n_) for o, n_ in READS_AFTER if backing == "thp" or o != SPLIT_PAGE]
        acc = [("w", o, n_) for o, n_ in after] + [("r", o, n_) for o, n_ in after + reads]

        def tolerate(off, length):
            # a HUGETLB umem over THP maps only whole huge pages: a range the
            # zap split or freed may fail cleanly
            return backing == "thp" and hugetlb and off < 3 * HPAGE and off + length > HPAGE

        failures, notes = c.run(acc, tolerate)
        c.check(failures, len(acc), "after the writes that followed the zap")
        out = (f"{len(acc) - len(notes)} of {len(acc)} accesses ({len(after)} writes, "
               f"{len(acc) - len(after)} reads) byte-exact")
        if notes:
            out += f"; the other {len(notes)} failed cleanly: " + "; ".join(notes)
        return out + f"; huge pages now {c.huge_kib()} kB"

    tap.step(f"{name}.4 RDMA WRITEs and READs after the zap: byte-exact, no stale data", step_4,
             needs=["zapped"], st=cs)

    def step_5():
        v1, first = dev.violations()
        ok = c.close()
        if v1 > v0:
            raise Failed(f"{v1 - v0} new oracle violation(s): {daxlib.brief(first)}")
        if not ok:
            raise Failed("deregistration did not return within 30 s")
        return (f"oracle violations {v0} -> {v1}; deregistered; the case took "
                f"{time.monotonic() - t0:.1f} s")

    tap.step(f"{name}.5 no oracle violation; deregistration returns", step_5, needs=["mr"],
             st=cs)
    if "mr" not in cs:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
