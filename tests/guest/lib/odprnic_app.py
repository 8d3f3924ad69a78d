# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A running application on the device, for the tests that take the device
away under it (faults/recovery.py, driver/live-remove.py,
removal/surprise.py).

    App(ibdev, odp)      a context with a PD, a pinned source and destination
                         MR, an ODP MR on anonymous memory (odp=True), a CQ
                         and two RC QPs connected to each other over GID 0
                         (queues and doorbells mapped into the process)
    app.rdma_write(data) -> (ok, detail): an RDMA WRITE lands byte-exact
    app.inject(ctl, data) -> (ok, detail): a remote write from the device's
                         wire injector into the ODP MR lands byte-exact
    app.post_unchecked() posts on the old QP once the device is gone
    app.async_event(t)   the context's next IBV_EVENT_*, None within t s
    app.close()          closes everything; False if that hung
    ibdev()              the ib_device odp_rnic drives now, or None
    counter(ibdev, name) a hw_counter of the driver, current, -1 while it goes
                         away (read_counter: raises instead)
    param(name[, value]) an odp_rnic module parameter
    async_event(ctx, t)  a context's next IBV_EVENT_*, None within t s
    bounded(fn, t)       (returned, result or exception) of fn() within t s
    wait_for(pred, t)    pred()'s first true value within t s, or None
    rping_server(ip)     an RDMA CM listener (rping -s)
    tcp_listening(port)  something listens on the TCP port (perftest's
                         out-of-band connection)
    busy(ibdev, odp, ctl, ip) -> (app, rping, ok, detail): an App just used,
                         and an rping listener
    dmesg(), BAD_DMESG   the kernel log and what must not be in it
    Tap                  numbered TAP lines
"""

import ctypes
import fcntl
import mmap
import os
import select
import subprocess
import threading
import time

import pyverbs.enums as e
from odprnic_verbs import rc_connect
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.pyverbs_error import PyverbsRDMAError
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.wr import SGE, SendWR

PARAMS = "/sys/module/odp_rnic/parameters"
MODULE = f"/opt/odp-rnic/modules/{os.uname().release}/odp_rnic.ko"
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
          e.IBV_ACCESS_REMOTE_READ)
BAD_DMESG = ("WARNING:", "BUG:", "Call Trace", "hung_task", "INFO: task")


class Tap:
    """TAP lines numbered from 1; finish() prints the plan."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def __call__(self, ok, desc, detail=""):
        self.n += 1
        if not ok:
            self.failed += 1
        print(f"{'ok' if ok else 'not ok'} {self.n} - {desc}" +
              (f": {detail}" if detail else ""), flush=True)
        return ok

    def finish(self):
        print(f"1..{self.n}")
        return 1 if self.failed else 0


def ibdev():
    try:
        names = sorted(os.listdir("/sys/class/infiniband"))
    except FileNotFoundError:
        return None
    for d in names:
        drv = os.path.realpath(f"/sys/class/infiniband/{d}/device/driver")
        if os.path.basename(drv) == "odp_rnic":
            return d
    return None


def read_counter(dev, name):
    """The driver's counter NAME, current: the core keeps what a read of a
    port's hw_counters returned for hw_counters/lifespan ms (and the rest
    of that jiffy) and hands it to later reads, so a read right after an
    event could miss it. This one first waits that cache out (guest time,
    2.5 jiffies at HZ=100 to spare). Raises OSError or ValueError."""
    base = f"/sys/class/infiniband/{dev}/ports/1/hw_counters"
    with open(f"{base}/lifespan") as f:
        time.sleep(int(f.read()) / 1000 + 0.025)
    with open(f"{base}/{name}") as f:
        return int(f.read())


def counter(dev, name):
    """The driver's counter (read_counter), -1 while the ib_device is going
    away."""
    try:
        return read_counter(dev, name)
    except (OSError, ValueError):
        return -1


def param(name, value=None):
    path = f"{PARAMS}/{name}"
    if value is not None:
        with open(path, "w") as f:
            f.write(str(value))
    with open(path) as f:
        return f.read().strip()


def dmesg():
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout


def bounded(fn, timeout):
    """(returned, result or exception) of fn() run for at most timeout s."""
    box = {}

    def target():
        try:
            box["r"] = fn()
        except Exception as x:  # handed to the caller
            box["r"] = x

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("r")


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return None


class App:
    """What a running application holds on the device."""

    def __init__(self, dev, odp):
        self.ctx = Context(name=dev)
        self.pd = PD(self.ctx)
        self.cq = CQ(self.ctx, 16)
        cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1, max_recv_sge=1)
        self.qps = [QP(self.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq,
                                           rcq=self.cq, cap=cap)) for _ in range(2)]
        gid = self.ctx.query_gid(port_num=1, index=0)
        for me, peer in ((self.qps[0], self.qps[1]), (self.qps[1], self.qps[0])):
            rc_connect(me, peer.qp_num, gid, access=ACCESS)
        self.src = MR(self.pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
        self.dst = MR(self.pd, 64 * 1024, ACCESS)
        self.odp_buf = mmap.mmap(-1, 64 * 1024, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.odp_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.odp_buf))
        self.odp = MR(self.pd, 64 * 1024, ACCESS | e.IBV_ACCESS_ON_DEMAND,
                      address=self.odp_addr) if odp else None

    def rdma_write(self, data, timeout=30):
        """RDMA WRITE qps[0] -> qps[1] into dst; True when it completed
        successfully and the bytes are in dst."""
        self.src.write(data, len(data))
        wr = SendWR(wr_id=1, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                    sg=[SGE(self.src.buf, len(data), self.src.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(self.dst.rkey, self.dst.buf)
        self.qps[0].post_send(wr)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            k, wcs = self.cq.poll(num_entries=1)
            if k:
                return wcs[0].status == e.IBV_WC_SUCCESS and \
                    self.dst.read(len(data), 0) == data, f"status {wcs[0].status}"
            time.sleep(0.001)
        return False, "no completion"

    def inject(self, ctl, data):
        if not self.odp:
            return True, "left out (ODP off)"
        r = ctl.request({"op": "write", "rkey": self.odp.rkey, "va": self.odp_addr,
                         "data_hex": data.hex(), "timeout_ms": 5000})
        return r.get("status") == "success" and self.odp_buf[:len(data)] == data, \
            r.get("status")

    def post_unchecked(self):
        """Post an RDMA WRITE on qps[0] after the device went away: "accepted"
        or the error; what matters is that the process survives it."""
        wr = SendWR(wr_id=2, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1,
                    sg=[SGE(self.src.buf, 64, self.src.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(self.dst.rkey, self.dst.buf)
        try:
            self.qps[0].post_send(wr)
        except Exception as x:  # refusing is fine; crashing is not
            return repr(x)
        return "accepted"

    def async_event(self, timeout):
        return async_event(self.ctx, timeout)

    def close(self):
        def close_all():
            for o in self.qps + [self.cq, self.src, self.dst, self.odp, self.pd, self.ctx]:
                if o is None:
                    continue
                try:
                    o.close()
                except Exception as x:  # a disassociated context refuses; freed anyway
                    print(f"# close {type(o).__name__}: {x}")
            self.odp_buf.close()
        return bounded(close_all, 30)[0]


def _event_fds():
    """The process's uverbs event files (async events, completion channels)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[infinibandevent]":
                fds.append(int(name))
        except OSError:
            pass
    return fds


def async_event(ctx, timeout):
    """The context's next IBV_EVENT_* (acknowledged), None within timeout.

    pyverbs keeps the GIL while ibv_get_async_event() blocks, so a blocking
    call in a thread would stop the timeout too: the event files are made
    non-blocking for the call and waited on with select()."""
    end = time.monotonic() + timeout
    fds = _event_fds()
    flags = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in fds}
    try:
        for fd, fl in flags.items():
            fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        while True:
            try:
                return _event(ctx)
            except PyverbsRDMAError:
                # EAGAIN, mostly; pyverbs' errno is not reliable enough to
                # tell a gone context apart, and the deadline bounds both
                pass
            left = end - time.monotonic()
            if left <= 0 or not fds:
                return None
            ready, _, _ = select.select(fds, [], [], min(left, 0.2))
            if ready:  # perhaps another context's: do not spin on it
                time.sleep(0.02)
    finally:
        for fd, fl in flags.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fl)
            except OSError:
                pass


def _event(ctx):
    ev = ctx.get_async_event()
    kind = ev.event_type
    ev.ack()
    return kind


def busy(dev, odp, ctl, ip):
    """An App on dev whose RC pair and ODP MR were just used, and an rping
    listener: (app, rping, ok, detail)."""
    app = App(dev, odp)
    ok, how = app.rdma_write(os.urandom(2048))
    ok2, how2 = app.inject(ctl, os.urandom(4096))
    rping = rping_server(ip)
    up = rping.poll() is None
    return app, rping, ok and ok2 and up, \
        f"write {how}, injected {how2}, rping {'up' if up else 'exited'}"


def tcp_listening(port):
    """Something listens on TCP port (IPv4 or IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def rping_server(ip):
    """rping -s on ip, once it listens (its cm_id shows in `rdma resource
    show cm_id`): a test that takes the device away right after must find
    the listener bound to it."""
    p = subprocess.Popen(["rping", "-s", "-a", ip, "-C", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def listening():
        out = subprocess.run(["rdma", "resource", "show", "cm_id"], capture_output=True,
                             text=True).stdout
        return any("LISTEN" in l and f"pid {p.pid} " in l + " " for l in out.splitlines())
    wait_for(lambda: listening() or p.poll() is not None, 10)
    return p


