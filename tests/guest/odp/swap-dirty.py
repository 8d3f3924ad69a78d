#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A device write must survive a later read fault and reclaim.

The device writes a page it was allowed to write; the kernel must then
treat the page as dirty when it takes it back (ib_umem_odp_unmap_dma_pages
dirties what the device could write). If a later read fault over the same
range resyncs the page's entry to read-only, nothing dirties it, and a page
that is clean in the swap cache (or lazily freed) is dropped by reclaim
with the device's bytes in it. The device's write must reach a page whose
CPU mapping is already writable and clean, so that no CPU write fault (which
would dirty the PTE) happens on its behalf. And nothing may invalidate the
device's mapping between its write and the read fault: an invalidation
would dirty the page while the entry still allows writes.

Memory: private anonymous, no huge pages, in groups of a gap page, a block
of 8 pages and a gap page. The device writes each block with one remote
write (a write fault for the block only). Then, per group, the read fault
comes from
  read      a remote READ of gap + block + gap: the device faults for read
            from the first gap page to the last, over the block it maps
            writable already
  prefetch  ibv_advise_mr(PREFETCH, FLUSH) of the block (the driver's read
            path)
  none      nothing (the control: the write must survive on every kernel)

  (a) set-up: swap on zram, a fresh memory cgroup (cgroup v2) holding this
      process, the process bound to one CPU; an implicit ODP MR
  then four rounds, each with its own region and, for explicit rounds, its
  own ODP MR over it:
      swap-cache, explicit MR, reclaimed by memory.reclaim
      swap-cache, implicit MR, reclaimed by MADV_PAGEOUT
      lazyfree,   explicit MR, reclaimed by MADV_PAGEOUT
      lazyfree,   implicit MR, reclaimed by memory.reclaim
  (N.1) the pages are in the state that exposes a lost write. swap-cache:
      the CPU writes them, MADV_PAGEOUT puts them in swap, MADV_WILLNEED
      reads them back into the swap cache, the CPU reads them (6.12 maps an
      exclusive swap-cache page writable and clean on a read fault), then
      mprotect PROT_READ and PROT_READ|PROT_WRITE (which makes a clean
      exclusive anonymous PTE writable where the kernel allows it);
      kpageflags: present, swapcache, not dirty. A kernel that frees the
      swap slot of a page swapped in from zram and dirties the page (7.3)
      has no such page: the round is skipped, said so. lazyfree: the CPU
      writes them, MADV_FREE (clean, writable, lazyfree); kpageflags:
      present, not swapbacked, not dirty
  (N.2) the device writes each block (one write fault each); the CPU sees
      the bytes; the pages are still not dirty; /proc/vmstat counted no CPU
      fault per page meanwhile, so the PTEs were writable and stay clean
      (or: a driver that resolves write faults through the CPU's fault
      handler dirtied every PTE, as a CPU write would; said so)
      6.1 maps a swap-cache page read-only and its mprotect makes only a
      dirty PTE writable: the device's write fault dirties the PTE there,
      said so, and the swap-cache rounds can only check that nothing is
      lost (the lazyfree rounds still expose a lost write)
  (N.3) the read faults (remote READ: bytes as written; prefetch)
  (N.4) reclaim (memory.reclaim of all the cgroup holds, then MADV_PAGEOUT
      of what is left; or MADV_PAGEOUT); a page reclaim keeps because it
      is dirty is kept correctly
  (N.5) no byte lost: the CPU reads every block page back, byte for byte
      what the device wrote, per kind of read fault
  (z) the DMA oracle recorded no violation; no kernel warning

Output is TAP; the exit status is non-zero when a step failed. With the
device's ODP off everything after (a) is skipped.
"""

import mmap
import os
import sys
import time

import daxlib
from daxlib import BailOut, Failed, Skipped, Tap

import mmsetup
from mmsetup import PAGE, Mapping
import odprnic_env

import pyverbs.enums as e
from pyverbs.mr import MR
from pyverbs.wr import SGE

BLOCK = 8                       # pages the device writes in one go
KINDS = ("read", "prefetch", "none")
GROUPS_PER_KIND = 2
GROUP = BLOCK + 2               # gap, block, gap
ROUNDS = (("swap-cache", "explicit", "memory.reclaim"),
          ("swap-cache", "implicit", "MADV_PAGEOUT"),
          ("lazyfree", "explicit", "MADV_PAGEOUT"),
          ("lazyfree", "implicit", "memory.reclaim"))
ACCESS = daxlib.ACCESS_ODP_RW
CGROUP = "odp-rnic-swap-dirty"


class Round:
    """One region, its MR and its groups."""

    def __init__(self, n, state, mr_kind, reclaim):
        self.n, self.state, self.mr_kind, self.reclaim = n, state, mr_kind, reclaim
        self.groups = [k for k in KINDS for _ in range(GROUPS_PER_KIND)]
        self.npages = len(self.groups) * GROUP
        self.m = Mapping.anon(self.npages * PAGE)
        self.m.madvise(0, self.m.size, mmsetup.MADV_NOHUGEPAGE)
        self.old = os.urandom(self.m.size)      # what the CPU writes first
        self.new = {}                           # group -> what the device writes
        self.mr = None

    def block(self, g):
        """(offset, length) of group g's block."""
        return (g * GROUP + 1) * PAGE, BLOCK * PAGE

    def block_pages(self, g):
        off, _ = self.block(g)
        return [off // PAGE + i for i in range(BLOCK)]

    def all_block_pages(self):
        return [p for g in range(len(self.groups)) for p in self.block_pages(g)]

    def states(self):
        return mmsetup.page_states(self.m.addr, self.npages)

    def close(self):
        if self.mr is not None:
            self.mr.close()
            self.mr = None
        self.m.close()


def summary(states, pages):
    """'N present, N swapcache, ...' over the given pages."""
    keys = ("present", "swapped", "swapcache", "dirty", "swapbacked", "anon")
    return ", ".join(f"{sum(1 for p in pages if getattr(states[p], k))} {k}" for k in keys)


def main():
    tap = Tap("swap-dirty")
    return odprnic_env.main(tap, BailOut, lambda dev, log: scenario(tap, dev, log))


def scenario(tap, dev, log):
    ctl = daxlib.Ctl(dev.control)
    off = None if dev.odp_on else "device --odp off"
    st = {}
    undo = []

    def step_a():
        z = mmsetup.ZramSwap.setup(mib=256)
        undo.append(z.close)
        cg = mmsetup.MemCgroup.create(CGROUP)
        undo.append(cg.close)
        st["cg"] = cg
        # one CPU: MADV_PAGEOUT drains this CPU's LRU batches only
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        st["imr"] = MR(dev.pd, 0, ACCESS, implicit=True)
        return (f"swap on {z.path} (256 MiB, priority 32767); cgroup {cg.path}; "
                f"CPU {min(os.sched_getaffinity(0))}; implicit MR rkey 0x{st['imr'].rkey:x}")

    try:
        tap.step("(a) swap on zram, a memory cgroup holding this process, an implicit ODP MR",
                 step_a, skip=off)
    except mmsetup.Unavailable as x:
        raise BailOut(str(x))
    if off or "imr" not in st:
        return finish(tap, dev, log, undo, st)

    for n, (state, mr_kind, reclaim) in enumerate(ROUNDS, 1):
        one_round(tap, dev, ctl, st, n, state, mr_kind, reclaim)
    return finish(tap, dev, log, undo, st)


def one_round(tap, dev, ctl, st, n, state, mr_kind, reclaim):
    r = Round(n, state, mr_kind, reclaim)
    rs = {}
    name = f"({n}) {state}, {mr_kind} MR, {reclaim}"
    cg = st["cg"]

    def key():
        return r.mr.rkey if r.mr is not None else st["imr"].rkey

    def lkey():
        return r.mr.lkey if r.mr is not None else st["imr"].lkey

    def step_1():
        if mr_kind == "explicit":
            r.mr = MR(dev.pd, r.m.size, ACCESS, address=r.m.addr)
        r.m.write(0, r.old)
        blocks = r.all_block_pages()
        if state == "swap-cache":
            for _ in range(3):
                r.m.madvise(0, r.m.size, mmsetup.MADV_PAGEOUT)
                s = r.states()
                if all(s[p].swapped for p in range(r.npages)):
                    break
            else:
                raise Failed("MADV_PAGEOUT did not swap every page out: "
                             f"{summary(s, range(r.npages))}")
            r.m.madvise(0, r.m.size, mmsetup.MADV_WILLNEED)
            time.sleep(0.1)
            daxlib.expect_bytes(r.m.read(0, r.m.size), r.old, "the pages read back from swap")
            r.m.mprotect(0, r.m.size, mmap.PROT_READ)
            r.m.mprotect(0, r.m.size, mmap.PROT_READ | mmap.PROT_WRITE)
            s = r.states()
            bad = [p for p in blocks if not (s[p].present and s[p].swapcache and not s[p].dirty)]
            detail = summary(s, blocks)
            if all(s[p].present and not s[p].swapcache and s[p].dirty for p in blocks):
                # a kernel that frees the swap slot of a page swapped in from
                # a synchronous device (zram) dirties the page (7.3 does): no
                # clean swap-cache page, nothing a missed dirtying could lose
                rs["skip"] = ("the kernel dropped the swapped-in pages from the swap cache "
                              f"and dirtied them ({detail}): no clean swap-cache page")
                raise Skipped(rs["skip"])
            if bad:
                raise Failed(f"{len(bad)} of {len(blocks)} block pages are not clean swap-cache "
                             f"pages ({detail}); first: page {bad[0]} {s[bad[0]]!r}")
        else:
            r.m.madvise(0, r.m.size, mmsetup.MADV_FREE)
            mmsetup.drain_lru()
            s = r.states()
            bad = [p for p in blocks if not (s[p].present and s[p].anon and
                                             not s[p].swapbacked and not s[p].dirty)]
            detail = summary(s, blocks)
            if bad:
                raise Failed(f"{len(bad)} of {len(blocks)} block pages are not clean lazyfree "
                             f"pages ({detail}); first: page {bad[0]} {s[bad[0]]!r}")
        rs["ready"] = True
        return f"{r.npages} pages at 0x{r.m.addr:x}; block pages: {detail}"

    how = ("write, MADV_PAGEOUT, MADV_WILLNEED, CPU read, mprotect R then RW: clean "
           "swap-cache pages" if state == "swap-cache" else
           "write, MADV_FREE: clean lazyfree pages")
    tap.step(f"{name}.1 {how}", step_1)

    def step_2():
        # page faults anywhere in the guest: a CPU fault taken for the
        # device's write (hmm_range_fault) is one per page; the guest does
        # little else meanwhile (a control request alone is the baseline)
        faults0 = mmsetup.vmstat("pgfault")
        ctl.version()
        baseline = mmsetup.vmstat("pgfault") - faults0
        faults0 = mmsetup.vmstat("pgfault")
        dev_faults = 0
        for g in range(len(r.groups)):
            off, length = r.block(g)
            r.new[g] = os.urandom(length)
            resp = ctl.remote_write(key(), r.m.addr + off, r.new[g])
            daxlib.expect_success(resp, f"remote write of block {g}")
            dev_faults += resp.get("faults", 0)
        cpu_faults = mmsetup.vmstat("pgfault") - faults0
        pages = len(r.groups) * BLOCK
        for g in range(len(r.groups)):
            off, length = r.block(g)
            daxlib.expect_bytes(r.m.read(off, length), r.new[g],
                                f"block {g} after the device's write")
        s = r.states()
        blocks = r.all_block_pages()
        detail = (f"{len(r.groups)} remote writes of {pages} pages, {dev_faults} device faults; "
                  f"CPU page faults meanwhile +{cpu_faults} (+{baseline} for a control request "
                  f"alone); block pages: {summary(s, blocks)}")
        if dev_faults < len(r.groups):
            raise Failed(f"the writes did not all fault: {detail}")
        rs["written"] = True
        if cpu_faults >= pages // 2 and all(s[p].dirty for p in blocks):
            # The driver resolves a device write fault through the CPU's
            # fault handler (fixup_user_fault(FAULT_FLAG_WRITE)), which
            # dirties the PTE as a CPU write would: the kernel knows.
            return (detail + "; the driver's write faults dirtied the PTEs as a CPU write "
                    "does: this round can only check that nothing is lost")
        if any(s[p].dirty for p in blocks):
            raise Failed(f"pages dirty after the device's write (something else dirtied them): "
                         f"{detail}")
        if cpu_faults < pages // 2:
            return detail + "; no CPU fault per page: the PTEs were writable and stay clean"
        if state == "lazyfree":
            # MADV_FREE leaves the PTEs writable, yet the device's write
            # faults went through the CPU's fault handler: the driver
            # resolves them with fixup_user_fault(FAULT_FLAG_WRITE), which
            # dirties the PTEs (kpageflags shows the folio's flag only)
            return (detail + "; the driver's write faults went through the CPU fault handler "
                    "and dirtied the PTEs: this round can only check that nothing is lost")
        # This kernel maps a clean swap-cache page read-only and mprotect
        # does not make a clean PTE writable (6.1): the write fault the
        # device needs dirties the PTE, and reclaim writes the page out.
        return (detail + "; the kernel write-faulted every page for the device (read-only "
                "PTEs): they are dirty now, so this round can only check that nothing is lost")

    tap.step(f"{name}.2 the device writes each block; the pages stay clean",
             step_2, needs=["ready"], st=rs, skip=rs.get("skip"))

    def step_3():
        done = []
        for g, kind in enumerate(r.groups):
            off, length = r.block(g)
            if kind == "read":
                resp = ctl.request({"op": "read", "rkey": key(), "va": r.m.addr + off - PAGE,
                                    "length": length + 2 * PAGE,
                                    "timeout_ms": ctl.OP_TIMEOUT_MS})
                if resp.get("status") != "success":
                    raise Failed(f"remote read over group {g}: {daxlib.brief(resp)}")
                if resp.get("faults", 0) < 1:
                    raise Failed(f"the remote read over group {g} did not fault: "
                                 f"{daxlib.brief(resp)}")
                want = r.old[off - PAGE:off] + r.new[g] + r.old[off + length:off + length + PAGE]
                daxlib.expect_bytes(bytes.fromhex(resp["data_hex"]), want,
                                    f"remote read over group {g}")
                done.append(f"{g}: read fault")
            elif kind == "prefetch":
                dev.pd.advise_mr(e._IBV_ADVISE_MR_ADVICE_PREFETCH, e._IBV_ADVISE_MR_FLAG_FLUSH,
                                 [SGE(r.m.addr + off, length, lkey())])
                done.append(f"{g}: prefetch")
        rs["faulted"] = True
        return "; ".join(done)

    tap.step(f"{name}.3 read faults over the written blocks (remote READ, prefetch)", step_3,
             needs=["written"], st=rs, skip=rs.get("skip"))

    def step_4():
        blocks = r.all_block_pages()
        notes = []
        if reclaim == "memory.reclaim":
            before = cg.current()
            full = cg.reclaim(before)
            s = r.states()
            left = [p for p in blocks if s[p].present]
            notes.append(f"memory.reclaim of {before >> 10} KiB: {'all' if full else 'less'} "
                         f"reclaimed, cgroup now {cg.current() >> 10} KiB, {len(left)} of "
                         f"{len(blocks)} block pages still present")
        left = blocks
        for _ in range(3):
            r.m.madvise(0, r.m.size, mmsetup.MADV_PAGEOUT)
            s = r.states()
            left = [p for p in blocks if s[p].present]
            if not left:
                break
        notes.append(f"after MADV_PAGEOUT: {summary(s, blocks)}")
        rs["reclaimed"] = True
        if left:
            # a page the kernel keeps because it is dirty is kept correctly
            notes.append(f"{len(left)} block pages stay in memory ({s[left[0]]!r})")
        return "; ".join(notes)

    tap.step(f"{name}.4 reclaim ({reclaim})", step_4, needs=["faulted"], st=rs,
             skip=rs.get("skip"))

    def step_5():
        lost = {k: [] for k in KINDS}
        seen = {}
        for g, kind in enumerate(r.groups):
            off, length = r.block(g)
            got = r.m.read(off, length)
            for i in range(BLOCK):
                a, b = i * PAGE, (i + 1) * PAGE
                if got[a:b] == r.new[g][a:b]:
                    continue
                lost[kind].append(off // PAGE + i)
                if got[a:b] == r.old[off + a:off + b]:
                    what = "the bytes from before the device's write"
                elif got[a:b] == bytes(PAGE):
                    what = "zeroes"
                else:
                    what = "other bytes"
                seen.setdefault(kind, what)
        per = [f"{k}: {len(lost[k])} of {GROUPS_PER_KIND * BLOCK} pages lost"
               + (f" (the CPU reads {seen[k]})" if lost[k] else "") for k in KINDS]
        if any(lost.values()):
            raise Failed("device writes lost after reclaim: " + "; ".join(per))
        return "; ".join(per)

    tap.step(f"{name}.5 no byte the device wrote is lost (CPU reads every block page)", step_5,
             needs=["reclaimed"], st=rs, skip=rs.get("skip"))
    r.close()


def finish(tap, dev, log, undo, st):
    odprnic_env.final_step(tap, dev, log, Failed)
    if "imr" in st:
        st["imr"].close()
    for fn in reversed(undo):
        fn()
    dev.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
