# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A FUSE file system holding one regular file, served by a child process
that speaks the kernel's FUSE protocol on /dev/fuse itself (no libfuse, no
python3-fuse: the lab root has neither bindings nor fusermount), and that
can be told to stop answering reads. A page fault on a mapping of the file
then waits in the kernel for as long as the daemon wants: what a FUSE
daemon that never answers does to whoever faults, a kernel thread
included. Everything runs as root in the guest; a set-up that cannot be had
raises Unavailable.

    fs = FuseFile.mount(size)      a fresh mount point under /tmp with one
                                   file, fs.path, of size bytes (a multiple
                                   of 4096) holding FuseFile.content(); any
                                   user may open it (allow_other); read-ahead
                                   is off (max_readahead 0), so a fault reads
                                   exactly the page it needs
    fs.conn                        N of /sys/fs/fuse/connections/N
    FuseFile.content(off, n)       the file's bytes as mounted: 8-byte words
                                   that encode their own offset
    fs.hold()                      stop answering READ: each is kept, unanswered
    fs.release()                   answer the held READs, and later ones again
    fs.status()                    {"held": [[offset, size, pid], ...] (pid:
                                   the task that asked: a kernel worker for a
                                   fault resolved in one), "reads": READs
                                   answered, "writes": WRITEs, "aborted"}
    fs.held_pages()                {page index: pid} of the held READs
    fs.abort()                     write 1 to /sys/fs/fuse/connections/N/abort:
                                   every request, held or not, fails
    fs.watchdog(seconds)           a child process that aborts the connection
                                   after seconds unless .cancel() came first:
                                   nothing waits on the daemon forever
    fs.close()                     abort (when something is held), lazy
                                   unmount, daemon reaped, mount point removed
    close_fds(keep)                in a forked child: close every inherited
                                   descriptor but 0-2 and keep

The daemon answers INIT, LOOKUP, GETATTR, SETATTR, OPEN (FOPEN_KEEP_CACHE:
opening the file never invalidates pages under a held read), READ, WRITE
(kept: later reads return it), FLUSH, FSYNC, RELEASE, OPENDIR, READDIR
(empty), RELEASEDIR, STATFS, ACCESS and DESTROY; anything else gets ENOSYS.
Its standard output and error go to /dev/null, so a daemon that outlives
its test holds no pipe of the test's.
"""

import ctypes
import errno
import json
import os
import select
import socket
import stat
import struct
import subprocess
import tempfile
import time

PAGE = 4096
CONNECTIONS = "/sys/fs/fuse/connections"

# include/uapi/linux/fuse.h
FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR = 1, 2, 3, 4
FUSE_OPEN, FUSE_READ, FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE = 14, 15, 16, 17, 18
FUSE_FSYNC, FUSE_FLUSH, FUSE_INIT = 20, 25, 26
FUSE_OPENDIR, FUSE_READDIR, FUSE_RELEASEDIR = 27, 28, 29
FUSE_ACCESS, FUSE_INTERRUPT, FUSE_DESTROY, FUSE_BATCH_FORGET = 34, 36, 38, 42
NO_REPLY = (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT)
FOPEN_KEEP_CACHE = 1 << 1
ROOT_ID, FILE_ID = 1, 2
MINOR = 31                      # the protocol we speak: 7.31 at most

IN_HEADER = struct.Struct("<IIQQIIIHH")       # fuse_in_header, 40 bytes
OUT_HEADER = struct.Struct("<IiQ")            # fuse_out_header, 16 bytes
INIT_IN = struct.Struct("<IIII")              # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")  # fuse_init_out, 64 bytes
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")     # fuse_attr, 88 bytes
ENTRY_OUT = struct.Struct("<QQQQII")          # fuse_entry_out before its attr
ATTR_OUT = struct.Struct("<QII")              # fuse_attr_out before its attr
OPEN_OUT = struct.Struct("<QIi")
RW_IN = struct.Struct("<QQIIQII")             # fuse_read_in, fuse_write_in
WRITE_OUT = struct.Struct("<II")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")   # fuse_kstatfs, 80 bytes
BUFSIZE = 1 << 20
MAX_WRITE = 1 << 16
SEED = 0x0D9E_F00D_5EED_0000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class Unavailable(Exception):
    """This guest cannot provide the set-up; the message says why."""


def close_fds(keep=()):
    """In a forked child: close every descriptor but 0, 1, 2 and keep, so
    that a child that outlives its test holds no pipe or socket of it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _mounted(path, fstype):
    with open("/proc/self/mounts") as f:
        return any(l.split()[1] == path and l.split()[2] == fstype for l in f)


def available():
    """/dev/fuse and the fusectl file system (modprobe fuse, mount fusectl
    on /sys/fs/fuse/connections when needed); Unavailable if not."""
    if not os.path.exists("/dev/fuse"):
        p = subprocess.run(["modprobe", "fuse"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if not os.path.exists("/dev/fuse"):
            raise Unavailable(f"no /dev/fuse (modprobe fuse: {p.stdout.strip() or p.returncode})")
    if not os.path.isdir(CONNECTIONS):
        raise Unavailable(f"no {CONNECTIONS}")
    if not _mounted(CONNECTIONS, "fusectl"):
        p = subprocess.run(["mount", "-t", "fusectl", "fusectl", CONNECTIONS],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode:
            raise Unavailable(f"mount -t fusectl: {p.stdout.strip()}")


class FuseFile:
    NAME = "data"

    def __init__(self, size, mountpoint, pid, sock):
        self.size = size
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, self.NAME)
        self.pid = pid
        self._sock = sock
        self._buf = b""
        self.conn = None
        self.aborted = False
        self.mounted = False

    @staticmethod
    def content(offset, length):
        """The file's bytes at [offset, offset + length) as mounted: the
        little-endian 8-byte word at offset w holds w ^ SEED."""
        first = offset & ~7
        words = b"".join(struct.pack("<Q", w ^ SEED)
                         for w in range(first, offset + length, 8))
        return words[offset - first:offset - first + length]

    @classmethod
    def mount(cls, size):
        if size <= 0 or size % PAGE:
            raise ValueError("size: a positive multiple of 4096")
        available()
        mnt = tempfile.mkdtemp(prefix="odprnic-fuse-")
        fd = os.open("/dev/fuse", os.O_RDWR)
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                close_fds((fd, theirs.fileno()))
                null = os.open(os.devnull, os.O_RDWR)
                for n in (0, 1, 2):
                    os.dup2(null, n)
                os.close(null)
                _Daemon(fd, theirs, size).run()
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        fs = cls(size, mnt, pid, mine)
        opts = (f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,"
                f"max_read={MAX_WRITE}").encode()
        rc = _libc.mount(b"odprnic-fusefs", mnt.encode(), b"fuse", MS_NOSUID | MS_NODEV, opts)
        err = ctypes.get_errno()
        os.close(fd)
        if rc:
            fs.close()
            raise Unavailable(f"mount -t fuse: {os.strerror(err)}")
        fs.mounted = True
        try:
            st = os.stat(mnt)           # waits for INIT, answered by the daemon
            fs.conn = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
            if not os.path.isdir(f"{CONNECTIONS}/{fs.conn}"):
                raise Unavailable(f"no {CONNECTIONS}/{fs.conn}")
            if os.stat(fs.path).st_size != size:
                raise Unavailable(f"{fs.path}: wrong size")
        except (OSError, Unavailable) as x:
            fs.close()
            raise Unavailable(f"FUSE mount at {mnt}: {x}") from x
        return fs

    # -- the daemon's control channel

    def _request(self, req, timeout=10):
        if self._sock is None:
            return {}
        try:
            self._sock.sendall(json.dumps(req).encode() + b"\n")
            end = time.monotonic() + timeout
            while b"\n" not in self._buf:
                left = end - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError(f"FUSE daemon: no answer to {req['op']}")
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise EOFError("FUSE daemon exited")
                self._buf += chunk
        except OSError as x:
            raise EOFError(f"FUSE daemon: {x}") from x
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def hold(self):
        return self._request({"op": "hold"})

    def release(self):
        return self._request({"op": "release"})

    def status(self):
        return self._request({"op": "status"})

    def held_pages(self):
        return {off // PAGE: pid for off, _, pid in self.status().get("held", [])}

    # -- the connection

    def abort(self):
        """Abort the FUSE connection: every request fails (ECONNABORTED),
        the daemon's /dev/fuse reads ENODEV."""
        if self.conn is None:
            return False
        try:
            with open(f"{CONNECTIONS}/{self.conn}/abort", "w") as f:
                f.write("1")
        except OSError:
            return False
        self.aborted = True
        return True

    def watchdog(self, seconds):
        return _Watchdog(self.conn, seconds)

    def close(self, timeout=10):
        if self.mounted:
            try:
                if not self.aborted and self.status().get("held"):
                    self.abort()
            except (EOFError, TimeoutError):
                self.abort()
            _libc.umount2(self.mountpoint.encode(), MNT_DETACH)
            self.mounted = False
        try:
            self._request({"op": "quit"}, timeout=2)
        except (EOFError, TimeoutError):
            pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        end = time.monotonic() + timeout
        while self.pid and time.monotonic() < end:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                self.pid = None
                break
            time.sleep(0.05)
        try:
            os.rmdir(self.mountpoint)
        except OSError:
            pass
        return self.pid is None


class _Watchdog:
    """A child that writes 1 to the connection's abort file after seconds,
    unless cancel() came first (or at once when its parent died)."""

    def __init__(self, conn, seconds):
        r, self._w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            close_fds((r,))
            # cancel() writes a byte; end of file: every writer is gone
            fired = not select.select([r], [], [], seconds)[0] or not os.read(r, 1)
            if fired:
                try:
                    with open(f"{CONNECTIONS}/{conn}/abort", "w") as f:
                        f.write("1")
                    print(f"# fusefs watchdog: aborted FUSE connection {conn} after {seconds} s",
                          flush=True)
                except OSError:
                    pass
            os._exit(0)
        os.close(r)

    def cancel(self):
        if self.pid:
            try:
                os.write(self._w, b"x")
            except OSError:
                pass            # it fired and exited already
            os.close(self._w)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


class _Daemon:
    def __init__(self, fd, sock, size):
        self.fd, self.sock = fd, sock
        self.data = bytearray(FuseFile.content(0, size))
        self.holding = False
        self.held = []              # (unique, offset, size, pid)
        self.reads = self.writes = 0
        self.aborted = False
        self.buf = b""

    def run(self):
        os.set_blocking(self.fd, False)
        while True:
            fds = [self.sock] + ([self.fd] if self.fd >= 0 else [])
            ready = select.select(fds, [], [])[0]
            if self.sock in ready and not self.control():
                return
            if self.fd in ready:
                try:
                    req = os.read(self.fd, BUFSIZE)
                except BlockingIOError:
                    continue
                except OSError as x:
                    if x.errno in (errno.EINTR, errno.ENOENT):
                        continue
                    self.aborted = True         # ENODEV: aborted or unmounted
                    self.held.clear()
                    os.close(self.fd)
                    self.fd = -1
                    continue
                self.handle(req)

    # -- control: one JSON request per line, one reply per line

    def control(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            op = json.loads(line)["op"]
            if op == "hold":
                self.holding = True
            elif op == "release":
                self.holding = False
                held, self.held = self.held, []
                for unique, off, size, _ in held:
                    self.answer_read(unique, off, size)
            self.sock.sendall(json.dumps({
                "held": [[o, s, p] for _, o, s, p in self.held], "reads": self.reads,
                "writes": self.writes, "aborted": self.aborted}).encode() + b"\n")
            if op == "quit":
                return False
        return True

    # -- the FUSE protocol

    def reply(self, unique, payload=b"", error=0):
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique) +
                     payload)
        except OSError:
            pass                # the request is gone (interrupted, aborted)

    def attr(self, nodeid):
        if nodeid == ROOT_ID:
            return ATTR.pack(ROOT_ID, 0, 0, 0, 0, 0, 0, 0, 0, stat.S_IFDIR | 0o755,
                             2, 0, 0, 0, PAGE, 0)
        return ATTR.pack(FILE_ID, len(self.data), len(self.data) // 512, 0, 0, 0, 0, 0, 0,
                         stat.S_IFREG | 0o666, 1, 0, 0, 0, PAGE, 0)

    def answer_read(self, unique, off, size):
        self.reads += 1
        self.reply(unique, bytes(self.data[off:off + size]))

    def handle(self, req):
        length, opcode, unique, nodeid, _, _, pid, _, _ = IN_HEADER.unpack_from(req)
        arg = req[IN_HEADER.size:length]
        if opcode in NO_REPLY:
            return
        if opcode == FUSE_INIT:
            _, minor, _, _ = INIT_IN.unpack_from(arg)
            # max_readahead 0: a fault reads its own page, synchronously
            self.reply(unique, INIT_OUT.pack(7, min(minor, MINOR), 0, 0, 16, 12, MAX_WRITE,
                                             1, 0, 0, 0, 0, 0))
        elif opcode == FUSE_LOOKUP:
            if nodeid == ROOT_ID and arg.split(b"\0")[0] == FuseFile.NAME.encode():
                self.reply(unique, ENTRY_OUT.pack(FILE_ID, 1, 3600, 3600, 0, 0) +
                           self.attr(FILE_ID))
            else:
                self.reply(unique, error=-errno.ENOENT)
        elif opcode in (FUSE_GETATTR, FUSE_SETATTR):
            self.reply(unique, ATTR_OUT.pack(3600, 0, 0) + self.attr(nodeid))
        elif opcode in (FUSE_OPEN, FUSE_OPENDIR):
            self.reply(unique, OPEN_OUT.pack(1, FOPEN_KEEP_CACHE, 0))
        elif opcode == FUSE_READ:
            _, off, size, _, _, _, _ = RW_IN.unpack_from(arg)
            size = max(0, min(size, len(self.data) - off))
            if self.holding:
                self.held.append((unique, off, size, pid))
            else:
                self.answer_read(unique, off, size)
        elif opcode == FUSE_WRITE:
            _, off, size, _, _, _, _ = RW_IN.unpack_from(arg)
            body = arg[RW_IN.size:RW_IN.size + size]
            size = max(0, min(len(body), len(self.data) - off))
            self.data[off:off + size] = body[:size]
            self.writes += 1
            self.reply(unique, WRITE_OUT.pack(size, 0))
        elif opcode == FUSE_STATFS:
            self.reply(unique, STATFS_OUT.pack(0, 0, 0, 0, 0, PAGE, 255, PAGE, 0))
        elif opcode == FUSE_READDIR:
            self.reply(unique)
        elif opcode in (FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FLUSH, FUSE_FSYNC, FUSE_ACCESS,
                        FUSE_DESTROY):
            self.reply(unique)
        else:
            self.reply(unique, error=-errno.ENOSYS)
