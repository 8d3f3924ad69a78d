#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Revocable MRs pin pages: they count against RLIMIT_MEMLOCK.

A pinned MR's pages count in the process's pinned_vm from registration to
deregistration, and a process without CAP_IPC_LOCK cannot register past
its RLIMIT_MEMLOCK (ib_umem_get()). A revocable MR pins its pages too, for
as long as it is not revoked, so an unprivileged process must not be able
to pin more through it than through a pinned MR.

An unprivileged child (uid 65534, no capabilities, RLIMIT_MEMLOCK 64 KiB)
registers MRs over anonymous memory:

  1 a pinned MR of 128 KiB fails with ENOMEM (the core's rule, for reference)
  2 a revocable MR of 128 KiB fails with ENOMEM
  3 two revocable MRs of 48 KiB: the first registers, the second fails with
    ENOMEM; once the first is deregistered, a third of 48 KiB registers
  4 a revocable MR revoked by MADV_DONTNEED gave its pages back: another of
    48 KiB registers beside it
  5 as root (CAP_IPC_LOCK) with the same limit, a revocable MR of 128 KiB
    registers

Output is TAP.
"""

import json
import os
import resource
import subprocess
import sys

from odprnic_app import Tap, ibdev, wait_for

LIMIT = 64 * 1024
NOBODY = 65534
ENOMEM = "Errno: 12"

CHILD = r"""
import ctypes, json, mmap, sys, os, time
import pyverbs.enums as e
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.pyverbs_error import PyverbsError

dev, plan = sys.argv[1], json.loads(sys.argv[2])
ctx = Context(name=dev)
pd = PD(ctx)
access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
bufs, mrs, out = {}, {}, []
for op, name, mode, size in plan:
    if op in ("reg", "regwait"):
        os.environ["ODPRNIC_MR_MODE"] = mode
        m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.write(b"\x5a" * size)
        bufs[name] = m
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        # regwait: the pins of a revoked MR go in a work item, after the
        # notifier returned; give it up to 10 s
        end = time.monotonic() + (10 if op == "regwait" else 0)
        while True:
            try:
                mrs[name] = MR(pd, size, access, address=addr)
                out.append([name, "ok"])
                break
            except PyverbsError as x:
                if "Errno: 12" not in str(x) or time.monotonic() > end:
                    out.append([name, str(x)])
                    break
                time.sleep(0.05)
    elif op == "dontneed":
        m = bufs[name]
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        rc = ctypes.CDLL(None).madvise(ctypes.c_void_p(addr), ctypes.c_size_t(len(m)), 4)
        out.append([name, f"madvise {rc}"])
    else:
        mrs.pop(name).close()
        out.append([name, "closed"])
print(json.dumps(out), flush=True)
"""

tap = Tap()


def run(dev, plan, unprivileged):
    """The child's outcome of each step of plan, in order, or an error string."""
    def drop():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (LIMIT, LIMIT))
        if unprivileged:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    try:
        r = subprocess.run([sys.executable, "-c", CHILD, dev, json.dumps(plan)],
                           preexec_fn=drop, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the child did not finish within 60 s"
    if r.returncode != 0:
        return f"child exit {r.returncode}: {r.stderr.strip()[-300:]}"
    return [o for _, o in json.loads(r.stdout.strip().splitlines()[-1])]


def main():
    dev = wait_for(ibdev, 20)
    if not dev:
        tap(False, "odp_rnic ib device present")
        return tap.finish()
    nodes = [os.path.join("/dev/infiniband", n) for n in os.listdir("/dev/infiniband")
             if n.startswith("uverbs")]
    modes = {n: os.stat(n).st_mode & 0o7777 for n in nodes}
    try:
        for n in nodes:
            os.chmod(n, 0o666)
        probe = run(dev, [["reg", "probe", "revocable", 4096]], False)
        if isinstance(probe, list) and "Errno: 95" in probe[0]:
            for i in range(1, 6):
                print(f"ok {i} - revocable MRs # SKIP the device does not offer them")
            print("1..5")
            return 0
        steps(dev)
    finally:
        for n, m in modes.items():
            os.chmod(n, m)
    return tap.finish()


def steps(dev):
    r = run(dev, [["reg", "p", "pinned", 2 * LIMIT]], True)
    tap(isinstance(r, list) and ENOMEM in r[0],
        "unprivileged, RLIMIT_MEMLOCK 64 KiB: a pinned MR of 128 KiB fails with ENOMEM",
        str(r)[:200])

    r = run(dev, [["reg", "r", "revocable", 2 * LIMIT]], True)
    tap(isinstance(r, list) and ENOMEM in r[0],
        "unprivileged, RLIMIT_MEMLOCK 64 KiB: a revocable MR of 128 KiB fails with ENOMEM",
        str(r)[:200])

    k = 48 * 1024
    r = run(dev, [["reg", "a", "revocable", k], ["reg", "b", "revocable", k],
                  ["close", "a", "", 0], ["reg", "c", "revocable", k]], True)
    ok = isinstance(r, list) and r[0] == "ok" and ENOMEM in r[1] and r[3] == "ok"
    tap(ok, "two revocable MRs of 48 KiB: the second fails with ENOMEM; "
        "after the first's deregistration a third registers", str(r)[:300])

    r = run(dev, [["reg", "a", "revocable", k], ["dontneed", "a", "", 0],
                  ["regwait", "b", "revocable", k]], True)
    ok = isinstance(r, list) and r[0] == "ok" and r[2] == "ok"
    tap(ok, "a revoked MR gave its pages back: another of 48 KiB registers beside it",
        str(r)[:300])

    r = run(dev, [["reg", "r", "revocable", 2 * LIMIT]], False)
    tap(isinstance(r, list) and r[0] == "ok",
        "root (CAP_IPC_LOCK), RLIMIT_MEMLOCK 64 KiB: a revocable MR of 128 KiB registers",
        str(r)[:200])


if __name__ == "__main__":
    sys.exit(main())
