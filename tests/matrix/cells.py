#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""The kernel behaviour matrix, one kernel: every backing x registration
mode x event, measured in this guest (scripts/matrix boots each kernel).

For each cell: register 256 KiB of the backing with the mode; a remote
write (the device's wire injector) into one page must land; then the event;
then a second remote write into the same page, and where it went decides
the outcome (tests/matrix/expect.py lists them). Also recorded: how long
the event took, the device's view of the MR afterwards and the DMA oracle's
violations. Each cell is checked against expect.py where it records an
expectation.

Backings: anon (private anonymous), shmem (memfd), pagecache (a file on XFS
on a loop device), fsdax (a file on XFS dax=always on pmem).
Modes: pinned, odp, implicit (one implicit ODP MR over the whole address
space), revocable.
Events: none; dontneed (MADV_DONTNEED of the page, anon); fork (a child
shares the memory copy-on-write, then the parent writes the page, anon);
punch
(fallocate PUNCH_HOLE of the page); truncate (the file to 0 and back to its
size); reflink (cp --reflink=always of the file, then a CPU write to the
page of the original).

Output: TAP, one line per cell; with a writable /lab (scripts/vm), the
cells as JSON in /lab/matrix.json.
"""

import ctypes
import errno
import json
import mmap
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "guest", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "guest", "odp"))

import daxlib  # noqa: E402
from expect import REASONS, expected  # noqa: E402
from pyverbs.mr import MR  # noqa: E402
from pyverbs.pyverbs_error import PyverbsRDMAError  # noqa: E402

SIZE = 256 * 1024
TARGET = 64 * 1024      # the page the remote writes go to
PAGE = 4096
BACKINGS = ("anon", "shmem", "pagecache", "fsdax")
MODES = ("pinned", "odp", "implicit", "revocable")
EVENTS = {
    "anon": ("none", "dontneed", "fork"),
    "shmem": ("none", "punch", "truncate"),
    "pagecache": ("none", "punch", "truncate", "reflink"),
    "fsdax": ("none", "punch", "truncate", "reflink"),
}
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
MADV_DONTNEED = 4

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Backing:
    """SIZE bytes of one kind of memory, filled with a pattern and mapped."""

    def __init__(self, kind, seq):
        self.kind, self.fd, self.path = kind, -1, None
        if kind == "anon":
            self.map = mmap.mmap(-1, SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            if kind == "shmem":
                self.fd = os.memfd_create(f"matrix-{seq}")
            else:
                mount = daxlib.MOUNT if kind == "fsdax" else daxlib.PAGECACHE_MOUNT
                self.path = os.path.join(mount, f"matrix-{seq}.bin")
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self.fd, SIZE)
            self.map = mmap.mmap(self.fd, SIZE, mmap.MAP_SHARED)
        self.map[:] = bytes([0xa5]) * SIZE
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def mapped(self, off, n):
        return bytes(self.map[off:off + n])

    def in_file(self, off, n):
        if self.fd < 0:
            return self.mapped(off, n)
        return os.pread(self.fd, n, off)

    def event(self, name):
        if name == "none":
            return
        if name == "dontneed":
            if libc.madvise(self.addr + TARGET, PAGE, MADV_DONTNEED):
                raise OSError(ctypes.get_errno(), "madvise")
        elif name == "punch":
            if libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, TARGET, PAGE):
                raise OSError(ctypes.get_errno(), "fallocate")
        elif name == "fork":
            pid = os.fork()
            if pid == 0:  # the child only holds the copy-on-write mapping
                time.sleep(2)
                os._exit(0)
            self.child = pid
            self.map[TARGET:TARGET + 8] = b"CPUwrite"  # the parent's CoW break
        elif name == "truncate":
            os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, SIZE)
        elif name == "reflink":
            os.fsync(self.fd)
            subprocess.run(["cp", "--reflink=always", self.path, self.path + ".copy"],
                           check=True, capture_output=True)
            self.map[TARGET:TARGET + 8] = b"CPUwrite"  # the CoW
        else:
            raise ValueError(name)

    def copy_bytes(self, off, n):
        with open(self.path + ".copy", "rb") as f:
            f.seek(off)
            return f.read(n)

    def close(self):
        if getattr(self, "child", None):
            os.waitpid(self.child, 0)
        self.map.close()
        if self.fd >= 0:
            os.close(self.fd)
        for p in (self.path, self.path and self.path + ".copy"):
            if p and os.path.exists(p):
                os.unlink(p)


def errname(err):
    # errno.errorcode says ENOTSUP for 95; the kernel's name is EOPNOTSUPP
    return "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode.get(err, str(err))


def register(env, b, mode):
    if mode == "implicit":
        return MR(env.pd, 0, daxlib.ACCESS_ODP_RW, implicit=True)
    access = daxlib.ACCESS_ODP_RW if mode == "odp" else daxlib.ACCESS_RW
    return env.reg_mr(b.addr, SIZE, access, mode=None if mode == "odp" else mode)


def cell(env, kernel, backing, mode, event, seq):
    """One cell: a dict of what it showed."""
    r = {"kernel": kernel, "backing": backing, "mode": mode, "event": event}
    b = Backing(backing, seq)
    mr = None
    try:
        try:
            mr = register(env, b, mode)
        except PyverbsRDMAError as x:
            r["outcome"] = f"refused:{errname(x.error_code)}"
            return r
        v0 = env.ctl.violations().get("count", 0)
        first = os.urandom(256)
        w = env.ctl.remote_write(mr.rkey, b.addr + TARGET, first, check=False)
        if w.get("status") != "success" or b.mapped(TARGET, 256) != first:
            r["outcome"] = "broken"
            r["detail"] = f"the first remote write: {w.get('status')}"
            return r
        t = time.monotonic()
        b.event(event)
        r["event_ms"] = round((time.monotonic() - t) * 1000, 1)
        data = os.urandom(256)
        w = env.ctl.remote_write(mr.rkey, b.addr + TARGET + 512, data, check=False)
        r["write"] = w.get("status")
        r["faults"] = w.get("faults", 0)
        in_map = b.mapped(TARGET + 512, 256) == data
        in_file = b.in_file(TARGET + 512, 256) == data
        in_copy = event == "reflink" and b.copy_bytes(TARGET + 512, 256) == data
        if in_copy:
            r["outcome"] = "corrupt"
        elif w.get("status") != "success":
            r["outcome"] = "refused" if not (in_map or in_file) else "broken"
        elif in_map and in_file:
            r["outcome"] = "coherent"
        elif not in_map and not in_file:
            r["outcome"] = "lost"
        else:
            r["outcome"] = "split"
            r["detail"] = f"in the mapping {in_map}, in the file {in_file}"
        r["mr_state"] = env.ctl.mr(mr.rkey).get("state")
        r["violations"] = env.ctl.violations().get("count", 0) - v0
        return r
    finally:
        if mr is not None:
            mr.close()
        b.close()


def main():
    tap = daxlib.Tap("matrix")
    env = daxlib.Env.setup(tap)  # the DAX mount
    tap.diag(daxlib.ensure_pagecache_mount())
    if not env.odp_on:
        return tap.bail("the matrix needs the device's ODP on")
    kernel = os.uname().release
    cells, seq = [], 0
    for backing in BACKINGS:
        for mode in MODES:
            for event in EVENTS[backing]:
                if cells and cells[-1]["backing"] == backing and cells[-1]["mode"] == mode \
                        and cells[-1]["outcome"].startswith("refused:"):
                    break  # the registration is refused: no event to try
                seq += 1
                try:
                    r = cell(env, kernel, backing, mode, event, seq)
                except Exception as x:  # a cell that could not run is a failure, not a crash
                    r = {"kernel": kernel, "backing": backing, "mode": mode, "event": event,
                         "outcome": "error", "detail": f"{type(x).__name__}: {x}"}
                exp = expected(kernel, backing, mode, event)
                r["expected"], r["why"] = exp if exp else (None, None)
                name = f"{backing} x {mode} x {event}: {r['outcome']}"
                detail = ", ".join(f"{k} {r[k]}" for k in ("event_ms", "write", "faults",
                                                          "mr_state", "violations", "detail")
                                   if k in r)
                bad_oracle = r.get("violations", 0) and mode != "pinned"
                if r["outcome"] in ("error", "broken") or bad_oracle:
                    tap.not_ok(name, detail)
                elif exp and exp[0] != r["outcome"]:
                    tap.not_ok(f"{name}, expected {exp[0]} ({REASONS[exp[1]]})", detail)
                else:
                    tap.ok(name + ("" if exp else " (no expectation recorded)"), detail)
                cells.append(r)
    if os.path.isdir("/lab") and os.access("/lab", os.W_OK):
        with open("/lab/matrix.json", "w") as f:
            json.dump({"kernel": kernel, "cells": cells}, f, indent=1)
    env.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
