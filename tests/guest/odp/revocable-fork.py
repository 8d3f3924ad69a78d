#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""What creating a child process does to a revocable MR.

fork() copies the parent's page tables; for a private (copy-on-write)
mapping that has anonymous pages, copy_page_range() first calls the mmu
notifiers of the parent's mm with MMU_NOTIFY_PROTECTION_PAGE over the whole
VMA, because it is about to write-protect the parent's PTEs. A revocable MR
revokes on every notifier event (docs/driver.md, "Revocable MRs: the
decisions"), so a fork revokes every revocable MR over private memory, even
though the pinned pages themselves stay the parent's (the kernel copies
pinned anonymous pages for the child instead of write-protecting them).
Nothing of that happens where copy_page_range() does not run or does not
write-protect: shared mappings, VMAs the child does not inherit
(MADV_DONTFORK) or gets empty (MADV_WIPEONFORK), and children made without
copying the address space (glibc's system() and popen() use posix_spawn,
which clones with CLONE_VM | CLONE_VFORK; Python's subprocess uses vfork).
rdma-core's fork-safe mode (RDMAV_FORK_SAFE, ibv_fork_init()) would set
MADV_DONTFORK on every registered range, but libibverbs skips it when the
kernel reports that it copies pinned pages on fork
(RDMA_NLDEV_SYS_ATTR_COPY_ON_FORK, 5.13+), so there it does not protect a
revocable MR.

Each step registers a revocable MR over 64 KiB, checks that a remote write
lands, makes a child in one way, then checks the MR's state on the device,
the driver's revocations counter, and that a remote write lands (live) or
fails without touching the memory (revoked).
"""

import ctypes
import json
import mmap
import os
import re
import subprocess
import sys

import daxlib
import revocable
from daxlib import BailOut, Failed, Tap

SIZE = 64 * 1024
OFF = 0x2000 - 100
LENGTH = 300

MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)
MMU_NOTIFY_PROTECTION_PAGE = 3
IBV_FORK_UNNEEDED = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.popen.restype = ctypes.c_void_p
libc.popen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.pclose.argtypes = [ctypes.c_void_p]


class Buffer:
    """SIZE bytes of anonymous memory, private or shared, filled."""

    def __init__(self, flags, advice=None):
        self.m = mmap.mmap(-1, SIZE, flags | mmap.MAP_ANONYMOUS)
        if advice is not None:
            self.m.madvise(advice)
        self.m.write(b"\x5a" * SIZE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.m))

    def close(self):
        self.m.close()


def vm_flags(addr):
    """The VmFlags line of /proc/self/smaps for the VMA holding addr."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    return []


def fork_and_exit():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        raise Failed(f"the child exited with status {status}")
    return "fork(), the child _exit(0)s"


def system_true():
    rc = os.system("true")
    if rc:
        raise Failed(f"system(\"true\") returned {rc}")
    return "system(\"true\")"


def popen_true():
    f = libc.popen(b"true", b"r")
    if not f:
        raise Failed(f"popen: {daxlib.errname(ctypes.get_errno())}")
    rc = libc.pclose(f)
    if rc:
        raise Failed(f"pclose returned {rc}")
    return "popen(\"true\", \"r\") and pclose()"


def subprocess_true():
    subprocess.run(["true"], check=True)
    return "subprocess.run([\"true\"])"


class Setup:
    def __init__(self, tap):
        from pyverbs.device import Context
        from pyverbs.pd import PD
        import odprnic_ctl

        self.ibdev = daxlib.find_ibdev()
        if not self.ibdev:
            raise BailOut(f"no ib device bound to {daxlib.DRIVER}")
        try:
            self.ctl = daxlib.Ctl(odprnic_ctl.Control.open(timeout=30.0))
            ver = self.ctl.version()
        except Exception as x:
            raise BailOut(f"device control socket: {x}")
        self.ctx = Context(name=self.ibdev)
        self.pd = PD(self.ctx)
        tap.diag(f"ib device {self.ibdev}; device {daxlib.brief(ver)}")

    def reg_revocable(self, addr):
        from pyverbs.mr import MR

        os.environ["ODPRNIC_MR_MODE"] = "revocable"
        try:
            mr = MR(self.pd, SIZE, daxlib.ACCESS_RW, address=addr)
        finally:
            del os.environ["ODPRNIC_MR_MODE"]
        return mr

    def state(self, rkey):
        info = self.ctl.mr(rkey)
        if info.get("mode") != "revocable":
            raise Failed(f"the device reports mode {info.get('mode')!r}: {daxlib.brief(info)}")
        return info.get("state")

    def check_live(self, rkey, addr):
        """The MR is live and a remote write through it lands."""
        if self.state(rkey) != "live":
            raise Failed(f"not live: {daxlib.brief(self.ctl.mr(rkey))}")
        data = os.urandom(LENGTH)
        daxlib.expect_success(self.ctl.remote_write(rkey, addr + OFF, data), "remote write")
        daxlib.expect_bytes(ctypes.string_at(addr + OFF, LENGTH), data, "memory after the remote write")

    def check_revoked(self, rkey, addr):
        """The MR is revoked and a remote write through it fails without
        touching the memory."""
        if self.state(rkey) != "revoked":
            raise Failed(f"not revoked: {daxlib.brief(self.ctl.mr(rkey))}")
        before = ctypes.string_at(addr + OFF, LENGTH)
        resp = self.ctl.remote_write(rkey, addr + OFF, os.urandom(LENGTH), check=False)
        if resp.get("status") != "remote_access_error":
            raise Failed(f"remote write through the revoked key: {daxlib.brief(resp)}")
        daxlib.expect_bytes(ctypes.string_at(addr + OFF, LENGTH), before,
                            "memory after the refused remote write")

    def close(self):
        for o in (self.pd, self.ctx, self.ctl):
            try:
                o.close()
            except Exception:
                pass


def dmesg_lines():
    return daxlib.run(["dmesg"], check=False).splitlines()


def revoke_events(lines, rkey):
    """Notifier events that revoked rkey, from the driver's log lines."""
    return [int(m.group(1)) for m in
            (re.search(rf"MR key {rkey:#x} revoked \(event (\d+),", ln) for ln in lines) if m]


def scenario(env, flags, advice, spawn, want_revoked):
    buf = Buffer(flags, advice)
    addr = buf.addr
    mr = env.reg_revocable(addr)
    try:
        env.check_live(mr.rkey, addr)
        mark = len(dmesg_lines())
        revs = daxlib.hw_counter(env.ibdev, "revocations")
        how = spawn()
        moved = daxlib.hw_counter(env.ibdev, "revocations") - revs
        events = revoke_events(dmesg_lines()[mark:], mr.rkey)
        if want_revoked:
            env.check_revoked(mr.rkey, addr)
            if moved != 1:
                raise Failed(f"revocations counter moved by {moved}, expected 1")
            if events and events != [MMU_NOTIFY_PROTECTION_PAGE]:
                raise Failed(f"revoked by notifier event(s) {events}, expected "
                             f"MMU_NOTIFY_PROTECTION_PAGE ({MMU_NOTIFY_PROTECTION_PAGE})")
            return (f"{how}: rkey {mr.rkey:#x} revoked (event {events or '?'}), "
                    "the remote write after it fails, memory intact")
        env.check_live(mr.rkey, addr)
        if moved:
            raise Failed(f"revocations counter moved by {moved}")
        return f"{how}: rkey {mr.rkey:#x} still live, a remote write after it lands"
    finally:
        mr.close()
        buf.close()


def fork_safe_child(ibdev):
    """Run with RDMAV_FORK_SAFE=1 (set before libibverbs initialises):
    registers a revocable MR over private memory, prints what libibverbs
    did, forks when told to, and deregisters when stdin closes."""
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD

    ctx = Context(name=ibdev)
    pd = PD(ctx)
    verbs = ctypes.CDLL("libibverbs.so.1")
    buf = Buffer(mmap.MAP_PRIVATE)
    addr = buf.addr
    mr = MR(pd, SIZE, daxlib.ACCESS_RW, address=addr)
    print(json.dumps({"rkey": mr.rkey, "vmflags": vm_flags(addr),
                      "fork_status": verbs.ibv_is_fork_initialized()}), flush=True)
    sys.stdin.readline()
    fork_and_exit()
    print(json.dumps({"forked": True}), flush=True)
    sys.stdin.read()
    mr.close()
    buf.close()
    pd.close()
    ctx.close()
    return 0


def fork_safe(env):
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--fork-safe-child", env.ibdev],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, RDMAV_FORK_SAFE="1", ODPRNIC_MR_MODE="revocable"))
    try:
        line = child.stdout.readline()
        if not line:
            raise Failed(f"the RDMAV_FORK_SAFE=1 process exited with {child.wait()}")
        info = json.loads(line)
        rkey = info["rkey"]
        dontfork = "dc" in info["vmflags"]
        if env.state(rkey) != "live":
            raise Failed(f"not live after registration: {daxlib.brief(env.ctl.mr(rkey))}")
        revs = daxlib.hw_counter(env.ibdev, "revocations")
        child.stdin.write("fork\n")
        child.stdin.flush()
        if not child.stdout.readline():
            raise Failed(f"the RDMAV_FORK_SAFE=1 process exited with {child.wait()}")
        state = env.state(rkey)
        moved = daxlib.hw_counter(env.ibdev, "revocations") - revs
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    what = (f"ibv_is_fork_initialized() = {info['fork_status']}"
            f"{' (IBV_FORK_UNNEEDED)' if info['fork_status'] == IBV_FORK_UNNEEDED else ''}, "
            f"VmFlags {'with' if dontfork else 'without'} dc (MADV_DONTFORK)")
    if dontfork:
        if state != "live" or moved:
            raise Failed(f"{what}, yet the fork revoked rkey {rkey:#x} ({state})")
        return f"{what}: rkey {rkey:#x} still live after fork()"
    if state != "revoked" or moved != 1:
        raise Failed(f"{what}, yet rkey {rkey:#x} is {state} after fork() "
                     f"(revocations +{moved})")
    if info["fork_status"] != IBV_FORK_UNNEEDED:
        raise Failed(f"{what}: libibverbs should have set MADV_DONTFORK")
    return (f"{what}: the kernel copies pinned pages on fork, so libibverbs sets "
            f"nothing and the fork revokes rkey {rkey:#x}")


def main():
    tap = Tap("revocable-fork")
    try:
        env = Setup(tap)
    except BailOut as b:
        return tap.bail(str(b))
    except Exception as x:
        return tap.bail(f"setup: {x}")
    anon, shared = mmap.MAP_PRIVATE, mmap.MAP_SHARED
    steps = [
        ("(a) private anonymous memory: fork() revokes the MR",
         anon, None, fork_and_exit, True),
        ("(b) shared anonymous memory: fork() leaves the MR live",
         shared, None, fork_and_exit, False),
        ("(c) private memory with MADV_DONTFORK: fork() leaves the MR live",
         anon, mmap.MADV_DONTFORK, fork_and_exit, False),
        ("(d) private memory with MADV_WIPEONFORK: fork() leaves the MR live",
         anon, MADV_WIPEONFORK, fork_and_exit, False),
        ("(e) private memory: system() (posix_spawn, CLONE_VFORK) leaves the MR live",
         anon, None, system_true, False),
        ("(f) private memory: popen() (posix_spawn, CLONE_VFORK) leaves the MR live",
         anon, None, popen_true, False),
        ("(g) private memory: Python's subprocess (vfork) leaves the MR live",
         anon, None, subprocess_true, False),
    ]
    for desc, flags, advice, spawn, revoked in steps:
        tap.step(desc, lambda f=flags, a=advice, s=spawn, r=revoked: scenario(env, f, a, s, r))
    tap.step("(h) RDMAV_FORK_SAFE=1 (ibv_fork_init) does not keep fork() from revoking",
             lambda: fork_safe(env))

    tap.step("(i) DMA oracle: no violations", lambda: revocable.oracle_clean(env.ctl))
    env.close()
    return tap.finish()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fork-safe-child":
        sys.exit(fork_safe_child(sys.argv[2]))
    sys.exit(main())
