#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A guest RC QP connected to the device's wire injector like to any remote
peer ("Ports and the wire" in docs/hardware.md, docs/control.md).

The injector's GID is ::ffff:192.0.2.1; connecting a RoCE QP to it makes the
kernel resolve that address's MAC (ARP), which odp_rnic.ko's netdev answers.
Steps (TAP):

  1 the QP goes INIT -> RTR -> RTS with dgid ::ffff:192.0.2.1 and dest_qpn
    0xfff000 (the kernel resolved the injector's MAC; ip neigh shows it)
  2 a SEND injected from 0xfff000 lands in the posted receive buffer,
    byte-exact, as IBV_WC_RECV with its length
  3 a SEND posted by the guest reaches the injector (peer_sent), byte-exact
  4 an RDMA WRITE posted by the guest lands in the injector's memory
  5 an RDMA READ posted by the guest returns the injector's memory
  6 the DMA oracle recorded no violation
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "odp"))

import daxlib  # noqa: E402
import pyverbs.enums as e  # noqa: E402
from daxlib import Failed, Tap  # noqa: E402
from odprnic_ctl import Control  # noqa: E402
from odprnic_verbs import netup, rc_connect  # noqa: E402
from pyverbs.addr import GID  # noqa: E402
from pyverbs.cq import CQ  # noqa: E402
from pyverbs.device import Context  # noqa: E402
from pyverbs.mr import MR  # noqa: E402
from pyverbs.pd import PD  # noqa: E402
from pyverbs.qp import QP, QPCap, QPInitAttr  # noqa: E402
from pyverbs.wr import SGE, RecvWR, SendWR  # noqa: E402

INJECTOR_IP = "192.0.2.1"
INJECTOR_QPN = 0xfff000
LENGTH = 3000


def mapped_gid(ip):
    return "0000:0000:0000:0000:0000:ffff:" + "".join(
        f"{int(a):02x}{int(b):02x}:" for a, b in [ip.split(".")[0:2], ip.split(".")[2:4]]
    ).rstrip(":")


def gid_index(ctx, gid, tries=100):
    """The index of gid in port 1's table (it follows the netdev's address
    asynchronously)."""
    for _ in range(tries):
        for i in range(16):
            try:
                if str(ctx.query_gid(port_num=1, index=i)) == gid:
                    return i
            except Exception:
                continue
        time.sleep(0.05)
    raise Failed(f"GID {gid} not in port 1's table")


def poll(cq, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n, wcs = cq.poll(num_entries=1)
        if n:
            return wcs[0]
        time.sleep(0.001)
    raise Failed(f"no completion for {what} within {timeout}s")


def main():
    tap = Tap("tools/injector-peer")
    st = {}
    try:
        ibdev, netdev, ipaddr = netup()
    except RuntimeError as x:
        return tap.bail(str(x))
    ctl = Control.open(timeout=30.0)
    ctx = Context(name=ibdev)
    pd = PD(ctx)
    cq = CQ(ctx, 16)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                           cap=QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=1,
                                     max_recv_sge=1)))
    acc = daxlib.ACCESS_RW
    buf = MR(pd, 64 * 1024, acc)
    tap.diag(f"{ibdev} on {netdev} ({ipaddr}), QP {qp.qp_num}")

    def step_connect():
        sgid = gid_index(ctx, mapped_gid(ipaddr))
        rc_connect(qp, INJECTOR_QPN, GID(mapped_gid(INJECTOR_IP)), sgid_index=sgid,
                   access=acc)
        neigh = daxlib.run(["ip", "neigh", "show", INJECTOR_IP, "dev", netdev]).strip()
        if "02:00:c0:00:02:01" not in neigh:
            raise Failed(f"ip neigh: {neigh!r}, expected the injector's MAC")
        st["rts"] = True
        return f"sgid index {sgid}; {neigh}"

    tap.step("RC QP connected to the injector (dgid ::ffff:192.0.2.1, dest_qpn 0xfff000)",
             step_connect)

    def step_recv():
        data = os.urandom(LENGTH)
        qp.post_recv(RecvWR(wr_id=1, num_sge=1, sg=[SGE(buf.buf, LENGTH + 100, buf.lkey)]))
        resp = ctl.request({"op": "send", "qpn": qp.qp_num, "src_qpn": INJECTOR_QPN,
                            "data_hex": data.hex(), "timeout_ms": 20000})
        if resp.get("status") != "success" or not resp.get("delivered"):
            raise Failed(f"injected SEND: {daxlib.brief(resp)}")
        wc = poll(cq, "the receive")
        if wc.status != e.IBV_WC_SUCCESS or wc.opcode != e.IBV_WC_RECV or wc.byte_len != LENGTH:
            raise Failed(f"receive completion: status {wc.status}, opcode {wc.opcode}, "
                         f"byte_len {wc.byte_len}")
        daxlib.expect_bytes(buf.read(LENGTH, 0), data, "receive buffer")
        return f"{LENGTH} bytes, IBV_WC_RECV, byte-exact"

    tap.step("a SEND from the injector lands in the receive buffer", step_recv,
             needs=["rts"], st=st)

    def post(opcode, length, remote=None):
        wr = SendWR(wr_id=2, opcode=opcode, num_sge=1, sg=[SGE(buf.buf, length, buf.lkey)],
                    send_flags=e.IBV_SEND_SIGNALED)
        if remote is not None:
            wr.set_wr_rdma(0x1234, remote)
        qp.post_send(wr)
        wc = poll(cq, f"opcode {opcode}")
        if wc.status != e.IBV_WC_SUCCESS:
            raise Failed(f"opcode {opcode} completed with status {wc.status}")

    def step_send():
        data = os.urandom(LENGTH)
        buf.write(data, LENGTH)
        ctl.request({"op": "peer_sent"})  # drop anything older
        post(e.IBV_WR_SEND, LENGTH)
        msgs = ctl.request({"op": "peer_sent"}).get("messages", [])
        mine = [m for m in msgs if m.get("src_qpn") == qp.qp_num]
        if len(mine) != 1 or mine[0].get("opcode") != "send":
            raise Failed(f"peer_sent: {daxlib.brief(msgs)}")
        daxlib.expect_bytes(bytes.fromhex(mine[0].get("data_hex", "")), data, "injector's copy")
        return f"{LENGTH} bytes to QPN {mine[0].get('dst_qpn'):#x}, byte-exact"

    tap.step("a guest SEND reaches the injector", step_send, needs=["rts"], st=st)

    def step_write():
        data = os.urandom(LENGTH)
        buf.write(data, LENGTH)
        post(e.IBV_WR_RDMA_WRITE, LENGTH, remote=0x100)
        got = ctl.request({"op": "peer_memory", "offset": 0x100, "length": LENGTH})
        daxlib.expect_bytes(bytes.fromhex(got.get("data_hex", "")), data, "injector memory")
        return f"{LENGTH} bytes at injector offset 0x100, byte-exact"

    tap.step("a guest RDMA WRITE lands in the injector's memory", step_write,
             needs=["rts"], st=st)

    def step_read():
        data = os.urandom(LENGTH)
        ctl.request({"op": "peer_memory", "offset": 0x8000, "data_hex": data.hex()})
        buf.write(b"\0" * LENGTH, LENGTH)
        post(e.IBV_WR_RDMA_READ, LENGTH, remote=0x8000)
        daxlib.expect_bytes(buf.read(LENGTH, 0), data, "local buffer after the READ")
        return f"{LENGTH} bytes from injector offset 0x8000, byte-exact"

    tap.step("a guest RDMA READ returns the injector's memory", step_read,
             needs=["rts"], st=st)

    def step_oracle():
        v = ctl.violations()
        count = v.get("count", len(v.get("violations", [])))
        if count:
            raise Failed(f"{count} oracle violation(s): {daxlib.brief(v.get('violations', [])[:4])}")
        return "0 violations"

    tap.step("DMA oracle: no violations", step_oracle)

    for obj in (qp, buf, cq, pd, ctx):
        obj.close()
    ctl.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
