#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A revocable registration racing an invalidation of its own range.

The driver pins the pages of a revocable MR with the mmu interval notifier
already in place, and only makes the key live if no invalidation ran since
it began (mmu_interval_read_retry): an invalidation in between means the
pins may no longer be the pages the process maps. An application whose
memory the kernel invalidates while it registers (a thread freeing a
neighbour page with MADV_DONTNEED, reclaim, migration, compaction) must
not see that as a failed ibv_reg_mr: the driver pins again, a bounded
number of times (docs/driver.md, "Revocable MRs: the decisions").

revocable-reg-race.c (built here with gcc) registers revocable MRs over
1 MiB of private anonymous memory while a second thread invalidates one of
its pages with MADV_DONTNEED:

  (a) the helper builds against libibverbs
  (b) once: one MADV_DONTNEED per registration, at a random point within
      twice the time a registration takes; no ibv_reg_mr fails
  (c) the race was provoked: registrations met an invalidation (EAGAIN
      before the driver retried; the driver's "raced an invalidation"
      debug lines after)
  (d) loop: MADV_DONTNEED in a loop for the whole run; every ibv_reg_mr
      returns, and fails, if at all, only with EAGAIN (the bound)
  (e) the DMA oracle recorded no violation; no kernel warning
"""

import json
import os
import tempfile

import daxlib
import revocable
from daxlib import BailOut, Failed, Tap

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 1 << 20
ONCE = 200
LOOP = 100
DYNDBG = ("/proc/dynamic_debug/control", "/sys/kernel/debug/dynamic_debug/control")
RACED = "raced an invalidation"
BAD_DMESG = ("WARNING:", "BUG:", "Call Trace", "hung_task")


def dmesg():
    return daxlib.run(["dmesg"], check=False).splitlines()


def dyndbg(on):
    """Turns the driver's debug lines on or off; False when the kernel has
    no dynamic debug control."""
    for path in DYNDBG:
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(f"module odp_rnic {'+p' if on else '-p'}\n")
            return True
    return False


def main():
    tap = Tap("revocable-reg-race")
    ibdev = daxlib.find_ibdev()
    if not ibdev:
        return tap.bail(f"no ib device bound to {daxlib.DRIVER}")
    try:
        import odprnic_ctl

        ctl = daxlib.Ctl(odprnic_ctl.Control.open(timeout=30.0))
        tap.diag(f"ib device {ibdev}; device {daxlib.brief(ctl.version())}")
    except Exception as x:
        return tap.bail(f"device control socket: {x}")
    start = len(dmesg())
    work = tempfile.mkdtemp()
    exe = os.path.join(work, "revocable-reg-race")
    st = {}

    def build():
        daxlib.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread", "-o", exe,
                    os.path.join(HERE, "revocable-reg-race.c"), "-libverbs"])
        st["exe"] = exe
        return exe

    tap.step("(a) revocable-reg-race.c builds", build)

    def run(mode, iterations):
        _, out = daxlib.bounded(lambda: daxlib.run([exe, ibdev, mode, str(iterations), str(SIZE)]),
                                600, f"revocable-reg-race {mode}")
        return json.loads(out.strip().splitlines()[-1])

    def once():
        mark = len(dmesg())
        st["dyndbg"] = dyndbg(True)
        try:
            r = run("once", ONCE)
        finally:
            dyndbg(False)
        st["raced"] = sum(RACED in ln for ln in dmesg()[mark:])
        st["once"] = r
        detail = (f"{r['iterations']} registrations of {SIZE >> 10} KiB ({r['reg_us']} us each "
                  f"undisturbed, slowest {r['max_reg_us']} us), {r['invalidations']} "
                  f"MADV_DONTNEED: {r['ok']} ok, {r['eagain']} EAGAIN, {r['other']} other")
        if r["eagain"] or r["other"]:
            raise Failed(detail + (f" (last errno {r['other_errno']})" if r["other"] else ""))
        return detail

    tap.step("(b) one MADV_DONTNEED during each registration: no ibv_reg_mr fails", once,
             needs=["exe"], st=st)

    def provoked():
        r = st["once"]
        seen = r["eagain"] + st["raced"]
        how = (f"{r['eagain']} failed with EAGAIN, the driver retried {st['raced']} time(s)"
               + ("" if st["dyndbg"] else " (no dynamic debug: retries not visible)"))
        if not seen and st["dyndbg"]:
            raise Failed(f"no registration met an invalidation: {how}")
        return how

    tap.step("(c) the invalidations hit registrations in flight", provoked, needs=["once"], st=st)

    def loop():
        r = run("loop", LOOP)
        detail = (f"{r['iterations']} registrations, {r['invalidations']} MADV_DONTNEED: "
                  f"{r['ok']} ok, {r['eagain']} EAGAIN after the bounded retries, "
                  f"{r['other']} other; slowest {r['max_reg_us']} us")
        if r["other"]:
            raise Failed(detail + f" (last errno {r['other_errno']})")
        return detail

    tap.step("(d) MADV_DONTNEED in a loop: every ibv_reg_mr returns, failing only with EAGAIN",
             loop, needs=["exe"], st=st)

    def clean():
        seen = revocable.oracle_clean(ctl)
        bad = [ln for ln in dmesg()[start:] if any(b in ln for b in BAD_DMESG)]
        if bad:
            raise Failed("kernel log: " + " | ".join(bad[:4]))
        return f"{seen}, no kernel warning"

    tap.step("(e) DMA oracle clean, kernel log clean", clean)
    ctl.close()
    return tap.finish()


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BailOut as b:
        raise SystemExit(Tap("revocable-reg-race").bail(str(b)))
