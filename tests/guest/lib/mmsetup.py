# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Memory set-ups the guest tests share: swap on zram, a memory cgroup
(cgroup v2), the hugetlb page pool and a hugetlbfs mount, transparent huge
pages, mappings, and what the kernel says about a page (pagemap, kpageflags,
smaps). Everything runs as root in the guest; a set-up that cannot be had
raises Unavailable (a test turns it into a bail-out or a skip), a call that
fails raises OSError. Each set-up has close(), which undoes it.

    zram = ZramSwap.setup(mib=256)  swap on /dev/zramN (modprobe zram), the
                                    highest priority; close(): swapoff, reset
    cg = MemCgroup.create("name")   a fresh cgroup v2 child with the memory
                                    controller, this process moved into it
                                    (memory it touches from now on is charged
                                    there); cg.reclaim(n), cg.set_max(n),
                                    cg.current(), cg.stat()["pgfault"], close()
    pool = HugetlbPool.reserve(n)   at least n free 2 MiB pages in the pool
                                    (/proc/sys/vm/nr_hugepages); close()
                                    restores the old size
    fs = Hugetlbfs.mount(path)      hugetlbfs (pagesize=2M) at path; close()
    thp_mode()                      "always" | "madvise" | "never"
    Mapping.anon(size, align=HPAGE) private anonymous memory, aligned
    Mapping.hugetlb(size)           private anonymous MAP_HUGETLB
    Mapping.file(fd, size, shared)  a file mapping
    m.madvise(off, n, MADV_*), m.mprotect(off, n, prot), m.read(off, n),
    m.write(off, data), m.touch(), m.anon_huge_kib(), m.close()
    page_state(addr)                PageState: present, swapped, pfn and the
                                    page's kpageflags (dirty, swapcache, ...)
    drain_lru()                     applies this CPU's pending LRU moves (a
                                    MADV_FREE takes effect on a page only then)
    drain_lru_all()                 applies every CPU's pending LRU moves
    vmstat(name)                    a /proc/vmstat counter (exact, unlike a
                                    memory cgroup's memory.stat, which is
                                    flushed only now and then)
"""

import ctypes
import errno
import glob
import mmap
import os
import re
import subprocess

PAGE = 4096
HPAGE = 2 << 20

MADV_DONTNEED = 4
MADV_FREE = 8
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_WILLNEED = 3
MAP_HUGETLB = 0x40000
MAP_HUGE_2MB = 21 << 26
MAP_FIXED = 0x10
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

# include/uapi/linux/kernel-page-flags.h
KPF = {"locked": 0, "referenced": 2, "uptodate": 3, "dirty": 4, "lru": 5, "active": 6,
       "writeback": 8, "reclaim": 9, "mmap": 11, "anon": 12, "swapcache": 13,
       "swapbacked": 14, "compound_head": 15, "compound_tail": 16, "huge": 17,
       "unevictable": 18, "nopage": 20, "thp": 22, "zero_page": 24}

CGROUP = "/sys/fs/cgroup"
THP = "/sys/kernel/mm/transparent_hugepage"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
MAP_FAILED = ctypes.c_void_p(-1).value


class Unavailable(Exception):
    """This guest cannot provide the set-up; the message says why."""


def _oserror(what):
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _read(path):
    with open(path) as f:
        return f.read().strip()


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _run(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode:
        raise OSError(errno.EIO, f"{' '.join(argv)}: exit {p.returncode}: {p.stdout.strip()}")
    return p.stdout


def _mounted(path, fstype):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path and line.split()[2] == fstype for line in f)


# ------------------------------------------------------------------ swap


class ZramSwap:
    """Swap on a zram device, used before any other swap (priority 32767)."""

    def __init__(self, dev):
        self.dev = dev
        self.path = f"/dev/{dev}"

    @classmethod
    def setup(cls, mib=256):
        if not os.path.exists("/sys/class/zram-control") and not glob.glob("/sys/block/zram*"):
            p = subprocess.run(["modprobe", "zram", "num_devices=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode:
                raise Unavailable(f"modprobe zram: {p.stdout.strip()}")
        dev = None
        for d in sorted(glob.glob("/sys/block/zram*")):
            if _read(f"{d}/disksize") == "0":
                dev = os.path.basename(d)
                break
        if dev is None and os.path.exists("/sys/class/zram-control/hot_add"):
            dev = f"zram{_read('/sys/class/zram-control/hot_add')}"
        if dev is None:
            raise Unavailable("no unused zram device")
        z = cls(dev)
        try:
            _write(f"/sys/block/{dev}/disksize", f"{mib}M")
            _run(["mkswap", z.path])
            _run(["swapon", "-p", "32767", z.path])
        except OSError as x:
            z.close()
            raise Unavailable(f"swap on {z.path}: {x}")
        return z

    def used_kib(self):
        with open("/proc/swaps") as f:
            for line in f:
                if line.split()[0] == self.path:
                    return int(line.split()[3])
        return 0

    def close(self):
        subprocess.run(["swapoff", self.path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        try:
            _write(f"/sys/block/{self.dev}/reset", "1")
        except OSError:
            pass


# ------------------------------------------------------------------ memory cgroup


class MemCgroup:
    """A child of the cgroup v2 root with the memory controller, holding
    this process. Only memory the process touches after the move is
    charged to it (v2 does not move charges)."""

    def __init__(self, path):
        self.path = path

    @classmethod
    def create(cls, name):
        if not _mounted(CGROUP, "cgroup2"):
            try:
                _run(["mount", "-t", "cgroup2", "none", CGROUP])
            except OSError as x:
                raise Unavailable(f"mount cgroup2 on {CGROUP}: {x}")
        if "memory" not in _read(f"{CGROUP}/cgroup.controllers").split():
            raise Unavailable("cgroup v2 has no memory controller")
        if "memory" not in _read(f"{CGROUP}/cgroup.subtree_control").split():
            _write(f"{CGROUP}/cgroup.subtree_control", "+memory")
        path = f"{CGROUP}/{name}"
        if os.path.isdir(path):
            cls(path).close()
        os.mkdir(path)
        cg = cls(path)
        for f in ("memory.reclaim", "memory.max", "memory.current"):
            if not os.path.exists(f"{path}/{f}"):
                cg.close()
                raise Unavailable(f"no {f} in {path}")
        _write(f"{path}/cgroup.procs", os.getpid())
        return cg

    def current(self):
        return int(_read(f"{self.path}/memory.current"))

    def stat(self):
        out = {}
        for line in _read(f"{self.path}/memory.stat").splitlines():
            k, v = line.split()
            out[k] = int(v)
        return out

    def set_max(self, nbytes):
        _write(f"{self.path}/memory.max", "max" if nbytes is None else nbytes)

    def reclaim(self, nbytes):
        """Asks the kernel to reclaim nbytes from the cgroup; True when it
        did, False when it reclaimed less (EAGAIN)."""
        try:
            _write(f"{self.path}/memory.reclaim", nbytes)
        except OSError as x:
            if x.errno == errno.EAGAIN:
                return False
            raise
        return True

    def close(self):
        """Moves the cgroup's processes back to the root and removes it."""
        try:
            for pid in _read(f"{self.path}/cgroup.procs").split():
                try:
                    _write(f"{CGROUP}/cgroup.procs", pid)
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass


# ------------------------------------------------------------------ huge pages


class HugetlbPool:
    """At least n free 2 MiB pages in the hugetlb pool."""

    NR = "/proc/sys/vm/nr_hugepages"

    def __init__(self, old):
        self.old = old

    @staticmethod
    def meminfo(key):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return None

    @classmethod
    def reserve(cls, n):
        if cls.meminfo("Hugepagesize") != HPAGE // 1024:
            raise Unavailable(f"the default huge page is {cls.meminfo('Hugepagesize')} kB")
        old = int(_read(cls.NR))
        free = cls.meminfo("HugePages_Free")
        _write(cls.NR, old + max(0, n - free))
        got = cls.meminfo("HugePages_Free")
        if got < n:
            _write(cls.NR, old)
            raise Unavailable(f"only {got} of {n} 2 MiB pages could be put in the pool")
        return cls(old)

    def close(self):
        try:
            _write(self.NR, self.old)
        except OSError:
            pass


class Hugetlbfs:
    """A hugetlbfs mount with 2 MiB pages."""

    def __init__(self, path, mounted_here):
        self.path, self.mounted_here = path, mounted_here

    @classmethod
    def mount(cls, path):
        if _mounted(path, "hugetlbfs"):
            return cls(path, False)
        os.makedirs(path, exist_ok=True)
        try:
            _run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", path])
        except OSError as x:
            raise Unavailable(f"mount hugetlbfs on {path}: {x}")
        return cls(path, True)

    def create(self, name, size):
        """A file of size bytes (a multiple of 2 MiB) on the mount: its fd."""
        fd = os.open(os.path.join(self.path, name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        return fd

    def close(self):
        if self.mounted_here:
            subprocess.run(["umount", self.path], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def thp_mode():
    """The system's THP setting for anonymous memory (the bracketed word)."""
    try:
        m = re.search(r"\[(\w+)\]", _read(f"{THP}/enabled"))
    except OSError:
        return "never"
    return m.group(1) if m else "never"


# ------------------------------------------------------------------ mappings


class Mapping:
    """A mapping made with mmap(2), at addr for size bytes."""

    def __init__(self, addr, size, base=None, base_size=None, fd=-1):
        self.addr, self.size, self.fd = addr, size, fd
        self._base, self._base_size = (base or addr), (base_size or size)

    @classmethod
    def anon(cls, size, align=HPAGE):
        """Private anonymous memory starting on an align boundary."""
        span = size + align
        base = _libc.mmap(None, span, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, MAP_FAILED):
            raise _oserror("mmap")
        addr = (base + align - 1) // align * align
        # keep only [addr, addr + size)
        if addr > base:
            _libc.munmap(base, addr - base)
        if base + span > addr + size:
            _libc.munmap(addr + size, base + span - addr - size)
        return cls(addr, size)

    @classmethod
    def hugetlb(cls, size):
        """Private anonymous memory from the hugetlb pool (2 MiB pages)."""
        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB,
                          -1, 0)
        if addr in (None, MAP_FAILED):
            raise _oserror("mmap MAP_HUGETLB")
        return cls(addr, size)

    @classmethod
    def file(cls, fd, size, shared=True):
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, fd, 0)
        if addr in (None, MAP_FAILED):
            raise _oserror("mmap")
        return cls(addr, size, fd=fd)

    def madvise(self, off, length, advice):
        if _libc.madvise(self.addr + off, length, advice):
            raise _oserror(f"madvise({advice}) at +0x{off:x} len 0x{length:x}")

    def mprotect(self, off, length, prot):
        if _libc.mprotect(self.addr + off, length, prot):
            raise _oserror("mprotect")

    def punch(self, off, length):
        """fallocate(PUNCH_HOLE) of the mapped file."""
        if _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length):
            raise _oserror("fallocate")

    def read(self, off, length):
        return ctypes.string_at(self.addr + off, length)

    def write(self, off, data):
        ctypes.memmove(self.addr + off, data, len(data))

    def touch(self):
        """Reads one byte of every page (faults them in without writing)."""
        s = 0
        for off in range(0, self.size, PAGE):
            s += ctypes.c_ubyte.from_address(self.addr + off).value
        return s

    def anon_huge_kib(self):
        """AnonHugePages of the mapping (smaps of the VMAs inside it)."""
        return _smaps_sum(self.addr, self.size, "AnonHugePages")

    def hugetlb_kib(self):
        return (_smaps_sum(self.addr, self.size, "Private_Hugetlb") +
                _smaps_sum(self.addr, self.size, "Shared_Hugetlb"))

    def close(self):
        if self._base:
            _libc.munmap(self._base, self._base_size)
            self._base = 0


def _smaps_sum(addr, size, field):
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                lo, hi = int(m.group(1), 16), int(m.group(2), 16)
                inside = lo < addr + size and addr < hi
            elif inside and line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


# ------------------------------------------------------------------ page state


class PageState:
    """One page as pagemap and kpageflags show it."""

    def __init__(self, entry, flags):
        self.present = bool(entry >> 63 & 1)
        self.swapped = bool(entry >> 62 & 1)
        self.pfn = entry & ((1 << 55) - 1) if self.present else None
        self.flags = flags

    def __getattr__(self, name):
        if name in KPF:
            return self.flags is not None and bool(self.flags >> KPF[name] & 1)
        raise AttributeError(name)

    def __repr__(self):
        if not self.present:
            return "swapped" if self.swapped else "none"
        names = [n for n in KPF if self.flags is not None and self.flags >> KPF[n] & 1]
        return f"pfn 0x{self.pfn:x} {'|'.join(names)}"


def vmstat(name):
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k == name:
                return int(v)
    raise KeyError(name)


_dummy = []


def drain_lru():
    """Drains this CPU's LRU batches (madvise(MADV_COLD) calls
    lru_add_drain() first): pages MADV_FREE marked lazyfree, or that were
    just added to the LRU, get there only then. Bind the process to one CPU
    (os.sched_setaffinity) for it to cover the pages the process touched."""
    if not _dummy:
        _dummy.append(Mapping.anon(PAGE, align=PAGE))
    _dummy[0].madvise(0, PAGE, MADV_COLD)


def drain_lru_all():
    """Drains every CPU's LRU batches (lru_add_drain_all()), e.g. of pages a
    kernel worker on another CPU faulted in: until then reclaim cannot
    isolate them and MADV_PAGEOUT passes them over. drop_caches drains
    every CPU only since 6.3; a compaction request does on every lab
    kernel (it may migrate pages as well)."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")
    with open("/proc/sys/vm/compact_memory", "w") as f:
        f.write("1")


def page_states(addr, npages):
    """PageState of each page of [addr, addr + npages pages)."""
    out = []
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        pm.seek(addr // PAGE * 8)
        raw = pm.read(8 * npages)
        for i in range(npages):
            entry = int.from_bytes(raw[8 * i:8 * i + 8], "little")
            flags = None
            if entry >> 63 & 1 and entry & ((1 << 55) - 1):
                kf.seek((entry & ((1 << 55) - 1)) * 8)
                flags = int.from_bytes(kf.read(8), "little")
            out.append(PageState(entry, flags))
    return out


def page_state(addr):
    return page_states(addr, 1)[0]
