# SPDX-License-Identifier: Apache-2.0 OR MIT
"""The device side the memory tests share (odp/hugepages.py,
odp/swap-dirty.py): no file system, only the device, and RDMA traffic whose
every work request is bounded.

    dev = Device.open()          the odp_rnic ib device, a context, a PD and
                                 the control channel (odprnic_ctl.Control);
                                 Unavailable when there is none
    dev.odp_on, dev.version      the device's --odp setting, its version reply
    dev.violations()             (count, first few) of the DMA oracle
    lb = Loopback(dev)           two RC QPs of this process connected to each
                                 other over GID 0, a CQ, a pinned buffer
    lb.write(rkey, va, data, t)  RDMA WRITE into (rkey, va): the completion's
                                 status; Hung when none comes within t s
    lb.read(rkey, va, n, t)      RDMA READ of (rkey, va): (status, bytes)
    lb.usable                    False after an error completion or a hang:
                                 lb.reset() makes a fresh pair
    log = KernelLog()            log.bad() lists the kernel log lines since
                                 then that name a warning, a BUG or an oops
    final_step(tap, dev, log, Failed)
                                 the last TAP step: the DMA oracle recorded
                                 no violation, the kernel log no warning
    main(tap, BailOut, scenario) a test's main: scenario(dev, log) with the
                                 device open; "Bail out!" when there is no
                                 device or the scenario raises BailOut
"""

import re
import subprocess
import time

import pyverbs.enums as e
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.wr import SGE, SendWR

import odprnic_ctl
from odprnic_app import bounded, ibdev as find_ibdev
from odprnic_verbs import rc_connect

ACCESS_RW = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
             e.IBV_ACCESS_REMOTE_READ)


class Unavailable(Exception):
    """No usable device in this guest."""


class Hung(Exception):
    """A work request did not complete within its bound."""


class Device:
    def __init__(self):
        self.ibdev = self.ctx = self.pd = self.control = None
        self.version = {}
        self.odp_on = False

    @classmethod
    def open(cls, timeout=30.0):
        d = cls()
        d.ibdev = find_ibdev()
        if not d.ibdev:
            raise Unavailable("no ib device bound to odp_rnic")
        try:
            # page faults under TCG are slow: a generous reply timeout
            d.control = odprnic_ctl.Control.open(timeout=timeout)
            d.version = d.control.version()
        except Exception as x:
            raise Unavailable(f"device control channel: {x}")
        d.odp_on = d.version.get("odp") in (True, 1, "on", "true", "yes")
        try:
            d.ctx = Context(name=d.ibdev)
            d.pd = PD(d.ctx)
        except Exception as x:
            d.close()
            raise Unavailable(f"{d.ibdev}: {x}")
        return d

    def violations(self):
        v = self.control.violations()
        return v.get("count", len(v.get("violations", []))), v.get("violations", [])[:4]

    def close(self):
        for obj in (self.pd, self.ctx, self.control):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass


class Loopback:
    def __init__(self, dev, size=1 << 20):
        self.dev, self.size = dev, size
        self.qps, self.cq, self.buf = [], None, None
        self._make()

    def _make(self):
        d = self.dev
        self.cq = CQ(d.ctx, 16)
        cap = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1, max_recv_sge=1)
        self.qps = [QP(d.pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq,
                                        cap=cap)) for _ in range(2)]
        self.buf = MR(d.pd, self.size, e.IBV_ACCESS_LOCAL_WRITE)
        gid = d.ctx.query_gid(port_num=1, index=0)
        for me, peer in ((self.qps[0], self.qps[1]), (self.qps[1], self.qps[0])):
            rc_connect(me, peer.qp_num, gid, access=ACCESS_RW)
        self.usable = True

    def _post(self, opcode, rkey, va, length, timeout):
        wr = SendWR(wr_id=1, opcode=opcode, num_sge=1,
                    sg=[SGE(self.buf.buf, length, self.buf.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, va)
        self.qps[0].post_send(wr)
        deadline = time.monotonic() + timeout
        while True:
            n, wcs = self.cq.poll(num_entries=1)
            if n:
                if wcs[0].status != e.IBV_WC_SUCCESS:
                    self.usable = False
                return wcs[0].status
            if time.monotonic() > deadline:
                self.usable = False
                raise Hung(f"no completion within {timeout:g} s")
            time.sleep(0.0005)

    def write(self, rkey, va, data, timeout):
        self.buf.write(data, len(data))
        return self._post(e.IBV_WR_RDMA_WRITE, rkey, va, len(data), timeout)

    def read(self, rkey, va, length, timeout):
        self.buf.write(bytes(length), length)
        status = self._post(e.IBV_WR_RDMA_READ, rkey, va, length, timeout)
        return status, (self.buf.read(length, 0) if status == e.IBV_WC_SUCCESS else b"")

    def close(self, timeout=30):
        def close_all():
            for obj in self.qps + [self.buf, self.cq]:
                if obj is not None:
                    obj.close()
        ok, r = bounded(close_all, timeout)
        self.qps, self.cq, self.buf = [], None, None
        return ok and not isinstance(r, Exception)

    def reset(self):
        """A fresh pair; False when the old one did not close within 30 s."""
        ok = self.close()
        self._make()
        return ok


BAD_LOG = re.compile(r"WARNING:|BUG:|refcount_t:|general protection|Oops|Call Trace")


class KernelLog:
    def __init__(self):
        self.mark = len(self._lines())

    @staticmethod
    def _lines():
        return subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()

    def bad(self):
        return [line for line in self._lines()[self.mark:] if BAD_LOG.search(line)]


def final_check(dev, log):
    """(problems, summary) at the end of a test: every violation the DMA
    oracle recorded, and the kernel log lines since log was made that name
    a warning, a BUG or an oops."""
    problems = []
    count, first = dev.violations()
    if count:
        problems.append(f"{count} oracle violation(s), the first: {first}")
    bad = log.bad()
    if bad:
        problems.append("kernel log:\n" + "\n".join(bad[:10]))
    return problems, f"{count} violations; {len(bad)} kernel warnings"


def final_step(tap, dev, log, failed):
    """The last step of a test (tap's step(), failing with the exception
    class failed): the oracle and the kernel log are clean."""
    def step():
        problems, summary = final_check(dev, log)
        if problems:
            raise failed("\n".join(problems))
        return summary

    tap.step("(z) DMA oracle: no violations; no kernel warning", step)


def main(tap, bailout, scenario):
    """Runs scenario(dev, log) with the device open and a kernel log mark
    taken first; returns its exit status. No device, or the bailout
    exception raised, ends the TAP stream with "Bail out!"."""
    log = KernelLog()
    try:
        dev = Device.open()
    except Unavailable as x:
        return tap.bail(str(x))
    try:
        return scenario(dev, log)
    except bailout as b:
        return tap.bail(str(b))
