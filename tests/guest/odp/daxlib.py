# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Shared pieces of the FS-DAX scenarios in tests/guest/odp/.

TAP output in the format of tests/guest/lib/harness.sh ("ok N - ...",
"not ok N - ..." with "#   " detail lines, "... # SKIP reason", a summary
line), the pmem + XFS DAX mount, the odp-rnic ib device found by its driver,
registrations through pyverbs, a DAX file mapped MAP_SHARED, and the device's
control socket (tests/guest/lib/odprnic_ctl.py).
"""

import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import threading
import time
import traceback

LIB = os.environ.get("ODP_RNIC_TESTS") and os.path.join(os.environ["ODP_RNIC_TESTS"], "lib") or \
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib")
sys.path.insert(0, LIB)

from pyverbs.device import Context  # noqa: E402
from pyverbs.mr import MR  # noqa: E402
from pyverbs.pd import PD  # noqa: E402
from pyverbs.pyverbs_error import PyverbsError, PyverbsRDMAError  # noqa: E402
import pyverbs.enums as e  # noqa: E402

ACCESS_RW = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
             e.IBV_ACCESS_REMOTE_READ)
ACCESS_ODP_RW = ACCESS_RW | e.IBV_ACCESS_ON_DEMAND

DRIVER = "odp_rnic"
MOUNT = os.environ.get("ODP_RNIC_PMEM_MOUNT", "/mnt/pmem")
PMEM_DEV = os.environ.get("ODP_RNIC_PMEM_DEV", "/dev/pmem0")
STATX_ATTR_DAX = 0x00200000
PAGE = 4096


class Failed(Exception):
    """A step's check did not hold; the message says what was seen."""


class Skipped(Exception):
    """A step cannot run here; the message says why."""


class BailOut(Exception):
    """The guest is not usable for this scenario at all."""


def errno_name(err):
    # EOPNOTSUPP and ENOTSUP are one value on Linux; the kernel says EOPNOTSUPP.
    return "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode.get(err, "?")


def errname(err):
    return f"{errno_name(err)} ({err})"


def brief(obj):
    return json.dumps(obj, sort_keys=True, default=str)[:400]


# ------------------------------------------------------------------ TAP


class Tap:
    """harness.sh-compatible TAP lines; one step() per check."""

    def __init__(self, name):
        self.name = os.environ.get("T_NAME", name)
        self.n = self.passed = self.failed = self.skipped = 0

    @staticmethod
    def diag(msg):
        for line in str(msg).splitlines() or [""]:
            print(f"#   {line}", flush=True)

    def ok(self, desc, detail=None):
        self.n += 1
        self.passed += 1
        print(f"ok {self.n} - {desc}", flush=True)
        if detail:
            self.diag(detail)

    def not_ok(self, desc, detail):
        self.n += 1
        self.failed += 1
        print(f"not ok {self.n} - {desc}", flush=True)
        self.diag(detail)

    def skip(self, desc, reason):
        self.n += 1
        self.skipped += 1
        print(f"ok {self.n} - {desc} # SKIP {reason}", flush=True)

    def step(self, desc, fn, needs=(), st=None, skip=None):
        """Runs fn(); ok with its return value as detail, not ok on Failed or
        any exception, SKIP when skip is a reason or fn raises Skipped. A
        step whose inputs (keys of st) an earlier step did not produce is
        not ok: it could not be checked."""
        if skip:
            self.skip(desc, skip)
            return False
        missing = [k for k in needs if st is None or k not in st]
        if missing:
            self.not_ok(desc, f"not run: an earlier step failed (no {', '.join(missing)})")
            return False
        try:
            detail = fn()
        except Skipped as s:
            self.skip(desc, str(s))
            return False
        except Failed as f:
            self.not_ok(desc, str(f))
            return False
        except BailOut:
            raise
        except Exception as x:  # an unexpected error is a failure with its trace
            self.not_ok(desc, f"{type(x).__name__}: {x}\n{traceback.format_exc()}")
            return False
        self.ok(desc, detail)
        return True

    def bail(self, reason):
        print(f"Bail out! {reason}", flush=True)
        self.summary()
        return 1

    def summary(self):
        print(f"# {self.name}: {self.passed} passed, {self.failed} failed, "
              f"{self.skipped} skipped", flush=True)

    def finish(self):
        self.summary()
        return 1 if self.failed else 0


# ------------------------------------------------------------------ helpers


def run(argv, check=True):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode:
        raise Failed(f"$ {' '.join(argv)} -> exit {p.returncode}\n{p.stdout.strip()}")
    return p.stdout


def bounded(fn, timeout, what):
    """Runs fn() in a thread; returns (seconds, result). Raises BailOut when
    it does not return within timeout (the guest or the device is stuck)."""
    box = {}

    def target():
        t0 = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as x:  # handed to the caller
            box["error"] = x
        box["secs"] = time.monotonic() - t0

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise BailOut(f"{what} did not return within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["secs"], box.get("result")


def expect_bytes(got, want, what):
    if got == want:
        return
    if len(got) != len(want):
        raise Failed(f"{what}: {len(got)} bytes, expected {len(want)}")
    diff = [i for i in range(len(want)) if got[i] != want[i]]
    i = diff[0]
    raise Failed(f"{what}: {len(diff)} of {len(want)} bytes differ, first at +{i}: "
                 f"got {got[i:i + 16].hex()} expected {want[i:i + 16].hex()}")


def expect_success(resp, what):
    if not resp.get("ok", False) or resp.get("status") != "success":
        raise Failed(f"{what}: {brief(resp)}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                        ctypes.c_void_p]
AT_FDCWD = -100
MAP_FAILED = ctypes.c_void_p(-1).value


def statx_attributes(path):
    """(stx_attributes, stx_attributes_mask) of path."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statx(AT_FDCWD, os.fsencode(path), 0, 0x7ff, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    attrs, = struct.unpack_from("<Q", buf, 8)
    mask, = struct.unpack_from("<Q", buf, 56)
    return attrs, mask


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1


def fiemap_phys(fd, offset):
    """The physical address (page-aligned) of the block holding offset."""
    import fcntl

    hdr = struct.pack("<QQIIII", offset, 1, FIEMAP_FLAG_SYNC, 0, 1, 0)
    buf = bytearray(hdr + bytes(56))
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    mapped, = struct.unpack_from("<I", buf, 20)
    if mapped < 1:
        raise Failed(f"fiemap: no extent at offset 0x{offset:x}")
    logical, physical = struct.unpack_from("<QQ", buf, 32)
    return (physical + (offset - logical)) & ~(PAGE - 1)


# ------------------------------------------------------------------ DAX


def _mounts():
    with open("/proc/self/mounts") as f:
        return [line.split() for line in f]


def _dax_mounted(mount):
    for dev, mnt, fstype, opts, *_ in _mounts():
        if mnt == mount:
            return fstype == "xfs" and "dax=always" in opts.split(","), f"{dev} {fstype} {opts}"
    return None, None


def _fsdax_without_helper():
    """Turns the raw namespace into fsdax without labels: QEMU's 128 KiB
    label area leaves a region size that is not a multiple of the region's
    default alignment (16 MiB), which ndctl refuses, so align to 2 MiB."""
    out = run(["ndctl", "list", "-N"], check=False)
    try:
        nss = json.loads(out) if out.strip() else []
    except ValueError:
        nss = []
    if isinstance(nss, dict):
        nss = [nss]
    if any(ns.get("mode") == "fsdax" for ns in nss):
        return
    target = nss[0]["dev"] if nss else "namespace0.0"
    region = "/sys/bus/nd/devices/region0"
    with open(f"{region}/size") as f:
        size = int(f.read())
    with open(f"{region}/align") as f:
        align = int(f.read(), 0)
    if size % align:
        run(["ndctl", "disable-region", "region0"])
        with open(f"{region}/align", "w") as f:
            f.write("0x200000")
        run(["ndctl", "enable-region", "region0"])
    run(["ndctl", "create-namespace", "-f", "-e", target, "-m", "fsdax", "--align", "2M"])
    for _ in range(50):
        if os.path.exists(PMEM_DEV):
            break
        time.sleep(0.1)


def ensure_dax_mount(mount=MOUNT, dev=PMEM_DEV):
    """XFS with reflink, mounted dax=always on an fsdax pmem namespace.
    Returns a description; raises BailOut when it cannot be had."""
    ok, what = _dax_mounted(mount)
    if ok:
        return f"{mount}: {what} (already mounted)"
    if ok is False:
        raise BailOut(f"{mount} is mounted without XFS dax=always: {what}")
    # A raw namespace has no struct pages and cannot do FS-DAX: make an
    # fsdax one with the lab's helper (tests/guest/lib/pmem.sh), which
    # initialises the label area so that any size can be created.
    helper = os.path.join(LIB, "pmem.sh")
    if os.path.exists(helper):
        out = run(["bash", "-c", f'. "{helper}" && pmem_present && pmem_init_labels && pmem_create fsdax'])
        dev = out.strip().splitlines()[-1] if out.strip() else dev
    else:
        _fsdax_without_helper()
    if not os.path.exists(dev):
        raise BailOut(f"no {dev} (is the VM started with --pmem?)")
    run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev])
    os.makedirs(mount, exist_ok=True)
    run(["mount", "-o", "dax=always", dev, mount])
    ok, what = _dax_mounted(mount)
    if not ok:
        raise BailOut(f"mount -o dax=always {dev} {mount} gave: {what}")
    return f"{mount}: {what}"


PAGECACHE_MOUNT = "/mnt/pagecache"
PAGECACHE_IMAGE = "/tmp/odp-rnic-pagecache.img"


def ensure_pagecache_mount(mount=PAGECACHE_MOUNT, image=PAGECACHE_IMAGE, size="320M"):
    """XFS with reflink on a loop device over a sparse file in the guest's
    tmpfs (xfsprogs refuses filesystems under 300 MB): files there live in
    the page cache (no DAX). Returns a description."""
    for dev, mnt, fstype, opts, *_ in _mounts():
        if mnt == mount:
            return f"{mount}: {dev} {fstype} {opts} (already mounted)"
    run(["modprobe", "loop"], check=False)
    run(["truncate", "-s", size, image])
    run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", image])
    os.makedirs(mount, exist_ok=True)
    run(["mount", "-o", "loop", image, mount])
    for dev, mnt, fstype, opts, *_ in _mounts():
        if mnt == mount:
            return f"{mount}: {dev} {fstype} {opts}"
    raise BailOut(f"mount -o loop {image} {mount} did not appear in /proc/self/mounts")


class DaxFile:
    """A file on the DAX mount, filled, and mmapped MAP_SHARED read-write."""

    def __init__(self, path, size, fd, addr):
        self.path, self.size, self.fd, self.addr = path, size, fd, addr

    @classmethod
    def create(cls, path, size, dax=True):
        """dax=False: a page-cache file, which must not be DAX."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fill = bytes(i % 251 for i in range(PAGE))
        for off in range(0, size, PAGE):
            os.pwrite(fd, fill, off)
        os.fsync(fd)
        attrs, mask = statx_attributes(path)
        if dax and not mask & STATX_ATTR_DAX:
            os.close(fd)
            raise Failed("statx does not report STATX_ATTR_DAX for this kernel/filesystem")
        if bool(attrs & STATX_ATTR_DAX) != dax:
            os.close(fd)
            raise Failed(f"{path}: STATX_ATTR_DAX is {'clear' if dax else 'set'} "
                         f"(stx_attributes 0x{attrs:x})")
        import mmap

        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if addr in (None, MAP_FAILED):
            err = ctypes.get_errno()
            os.close(fd)
            raise Failed(f"mmap MAP_SHARED failed: {errname(err)}")
        return cls(path, size, fd, addr)

    def read_mapped(self, off, length):
        return ctypes.string_at(self.addr + off, length)

    def write_mapped(self, off, data):
        ctypes.memmove(self.addr + off, data, len(data))

    def close(self):
        if self.addr:
            _libc.munmap(self.addr, self.size)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------------ device


def find_ibdev(driver=DRIVER):
    """The ib device bound to driver (udev may have renamed it)."""
    base = "/sys/class/infiniband"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        link = os.path.join(base, name, "device", "driver")
        if os.path.islink(link) and os.path.basename(os.readlink(link)) == driver:
            return name
    return None


def hw_counter(ibdev, name):
    """The driver's counter NAME (`rdma statistic show`; in sysfs under
    /sys/class/infiniband/IBDEV/ports/1/hw_counters/)."""
    from odprnic_app import read_counter

    try:
        return read_counter(ibdev, name)
    except (OSError, ValueError) as x:
        raise Failed(f"hw_counters/{name} of {ibdev}: {x}")


class Ctl:
    """The device's control socket, through tests/guest/lib/odprnic_ctl.py,
    with the requests of docs/control.md the scenarios use."""

    def __init__(self, control):
        self.c = control

    def request(self, req, check=True):
        try:
            resp = self.c.request(req)
        except Exception as x:
            if check:
                raise Failed(f"control request {brief(req)} failed: {x}")
            return {"ok": False, "error": str(x)}
        if check and not resp.get("ok", False):
            raise Failed(f"control request {brief(req)} answered {brief(resp)}")
        return resp

    def version(self):
        return self.request({"op": "version"})

    def mr(self, key):
        return self.request({"op": "mr", "key": key})

    # How long the device waits for the driver to resolve a page fault
    # (docs/control.md, default 5 s: too short under TCG); the reply
    # timeout of the channel is longer.
    OP_TIMEOUT_MS = 20000

    def remote_write(self, rkey, va, data, check=True):
        return self.request({"op": "write", "rkey": rkey, "va": va, "data_hex": data.hex(),
                             "timeout_ms": self.OP_TIMEOUT_MS}, check=check)

    def remote_read(self, rkey, va, length):
        resp = self.request({"op": "read", "rkey": rkey, "va": va, "length": length,
                             "timeout_ms": self.OP_TIMEOUT_MS})
        if resp.get("status") != "success":
            raise Failed(f"remote read: {brief(resp)}")
        return bytes.fromhex(resp.get("data_hex", ""))

    def violations(self):
        return self.request({"op": "violations"})

    def close(self):
        close = getattr(self.c, "close", None)
        if close:
            close()


def _odp_flag(v):
    return v in (True, 1, "on", "true", "yes")


class Env:
    """Device, verbs context, PD, control socket and DAX mount."""

    def __init__(self):
        self.ibdev = self.ctx = self.pd = self.ctl = None
        self.odp_on = False
        self.mount = MOUNT

    @classmethod
    def setup(cls, tap, backing="dax"):
        """backing: "dax" (XFS dax=always on pmem) or "pagecache" (XFS on a
        loop device); env.mount is where its files go."""
        env = cls()
        try:
            env.ibdev = find_ibdev()
            if not env.ibdev:
                raise BailOut(f"no ib device bound to {DRIVER} in /sys/class/infiniband")
            try:
                import odprnic_ctl
            except ImportError as x:
                raise BailOut(f"no control client (tests/guest/lib/odprnic_ctl.py): {x}")
            try:
                # Faults under TCG are slow: a generous reply timeout.
                env.ctl = Ctl(odprnic_ctl.Control.open(timeout=30.0))
                ver = env.ctl.version()
            except Exception as x:
                raise BailOut(f"device control socket: {x}")
            env.odp_on = _odp_flag(ver.get("odp"))
            env.ctx = Context(name=env.ibdev)
            env.pd = PD(env.ctx)
            tap.diag(f"ib device {env.ibdev} ({DRIVER}); device {brief(ver)}")
            if backing == "pagecache":
                env.mount = PAGECACHE_MOUNT
                tap.diag(ensure_pagecache_mount())
            else:
                tap.diag(ensure_dax_mount())
        except BailOut as b:
            sys.exit(tap.bail(str(b)))
        except (PyverbsError, OSError, Failed) as x:
            sys.exit(tap.bail(f"setup: {x}"))
        return env

    def reg_mr(self, addr, length, access, mode=None):
        """An MR on [addr, addr + length); mode sets ODPRNIC_MR_MODE for
        this registration only (None: unset)."""
        old = os.environ.pop("ODPRNIC_MR_MODE", None)
        if mode:
            os.environ["ODPRNIC_MR_MODE"] = mode
        try:
            return MR(self.pd, length, access, address=addr)
        finally:
            os.environ.pop("ODPRNIC_MR_MODE", None)
            if old is not None:
                os.environ["ODPRNIC_MR_MODE"] = old

    def reg_mr_errno(self, addr, length, access, mode=None):
        """None when the registration succeeds (it is then released), else
        the errno it failed with."""
        try:
            mr = self.reg_mr(addr, length, access, mode)
        except PyverbsRDMAError as x:
            return x.error_code
        mr.close()
        return None

    def check_odp_caps(self):
        attr = self.ctx.query_device_ex()
        caps = attr.odp_caps
        general, rc = caps.general_caps, caps.rc_odp_caps
        seen = f"general_caps 0x{general:x}, rc_odp_caps 0x{rc:x}, ud 0x{caps.ud_odp_caps:x}"
        if self.odp_on:
            if not general & e.IBV_ODP_SUPPORT:
                raise Failed(f"device has --odp on but IBV_ODP_SUPPORT is clear ({seen})")
            need = e.IBV_ODP_SUPPORT_WRITE | e.IBV_ODP_SUPPORT_READ
            if rc & need != need:
                raise Failed(f"RC ODP caps lack WRITE|READ ({seen})")
        elif general or rc or caps.uc_odp_caps or caps.ud_odp_caps:
            raise Failed(f"device has --odp off but ODP caps are advertised ({seen})")
        return seen

    def close(self):
        for obj in (self.pd, self.ctx, self.ctl):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass


class LoopbackPair:
    """Two RC QPs of this process connected to each other over GID 0 (the
    device's loopback port), one CQ, and a source buffer: the application
    side of an RDMA WRITE into an MR of the same process, so that a scenario
    sees what an application sees (completion status, async events)."""

    def __init__(self, env, size=64 * 1024):
        from pyverbs.cq import CQ
        from pyverbs.qp import QP, QPCap, QPInitAttr
        from odprnic_verbs import rc_connect

        self.env = env
        self.cq = CQ(env.ctx, 16)
        cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1, max_recv_sge=1)
        self.qps = [QP(env.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq,
                                          rcq=self.cq, cap=cap)) for _ in range(2)]
        self.src = MR(env.pd, size, e.IBV_ACCESS_LOCAL_WRITE)
        gid = env.ctx.query_gid(port_num=1, index=0)
        for me, peer in ((self.qps[0], self.qps[1]), (self.qps[1], self.qps[0])):
            rc_connect(me, peer.qp_num, gid, access=ACCESS_RW)

    @property
    def requester(self):
        return self.qps[0]

    @property
    def responder(self):
        return self.qps[1]

    def rdma_write(self, rkey, va, data, timeout=60):
        """RDMA WRITE of data from the requester to (rkey, va) through the
        responder; returns the completion's status (IBV_WC_*)."""
        from pyverbs.wr import SGE, SendWR

        self.src.write(data, len(data))
        wr = SendWR(wr_id=7, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                    sg=[SGE(self.src.buf, len(data), self.src.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, va)
        self.requester.post_send(wr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n, wcs = self.cq.poll(num_entries=1)
            if n:
                return wcs[0].status
            time.sleep(0.001)
        raise Failed(f"no completion for the RDMA WRITE within {timeout}s")

    def async_event(self, timeout=30):
        """The next asynchronous event of the context (IBV_EVENT_*; pyverbs
        does not expose which QP it names); Failed when none comes within
        timeout."""
        from odprnic_app import async_event

        kind = async_event(self.env.ctx, timeout)
        if kind is None:
            raise Failed(f"ibv_get_async_event: no event within {timeout}s")
        return kind

    def close(self):
        for obj in self.qps + [self.src, self.cq]:
            try:
                obj.close()
            except Exception:
                pass
