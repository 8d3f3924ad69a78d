#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""The odprnic provider's data path through pyverbs (python3-pyverbs),
where the tools do not reach: two RC QPs of one process connected to each
other over the loopback port.

  (a) ibv_post_send in RESET is refused (EINVAL), nothing posted
  (b) 5 SGEs (the device takes 4) are refused with EINVAL
  (c) 65 bytes of inline data (max_inline 64) are refused with EINVAL
  (d) an atomic on a device without atomics is refused with EINVAL
  (e) ibv_post_recv with 5 SGEs is refused with EINVAL
  (f) SEND_WITH_IMM, 64 bytes inline: the receiver's completion is RECV
      with IBV_WC_WITH_IMM, the immediate and the bytes
  (g) RDMA_WRITE_WITH_IMM from two SGEs: RECV_RDMA_WITH_IMM, data placed
  (h) RDMA_READ into two SGEs: byte-exact
  (i) a CQ of 4 entries recycled many times (owner bit across wraps)
"""

import errno
import os
import sys

import pyverbs.enums as e
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.pyverbs_error import PyverbsRDMAError
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR

from odprnic_verbs import rc_connect

N = 0
FAILED = 0
NAME = os.environ.get("T_NAME", "tools/provider-checks")


def ok(desc):
    global N
    N += 1
    print(f"ok {N} - {desc}", flush=True)


def fail(desc, detail=""):
    global N, FAILED
    N += 1
    FAILED += 1
    print(f"not ok {N} - {desc}", flush=True)
    for line in str(detail).splitlines():
        print(f"#   {line}")


def skip(desc, reason):
    global N
    N += 1
    print(f"ok {N} - {desc} # SKIP {reason}", flush=True)


def find_dev():
    for d in sorted(os.listdir("/sys/class/infiniband")):
        base = f"/sys/class/infiniband/{d}/device"
        try:
            ids = (open(f"{base}/vendor").read().strip(),
                   open(f"{base}/device").read().strip())
        except OSError:
            continue
        if ids == ("0x1234", "0x0db0"):
            return d
    return None


def expect_errno(desc, want, fn):
    try:
        fn()
    except PyverbsRDMAError as ex:
        if ex.error_code == want:
            ok(f"{desc}: {errno.errorcode[want]}")
        else:
            fail(desc, f"error {ex.error_code}, expected {want}: {ex}")
        return
    fail(desc, "accepted")


def poll(cq, what, count=1, spins=2_000_000):
    got = []
    for _ in range(spins):
        n, wcs = cq.poll(num_entries=count - len(got))
        got += wcs[:n]
        if len(got) == count:
            return got
    raise TimeoutError(f"no completion for {what}")


def connect(qps, gid):
    for me, peer in ((qps[0], qps[1]), (qps[1], qps[0])):
        rc_connect(me, peer.qp_num, gid)


def main():
    dev = find_dev()
    if not dev:
        skip("provider checks", "no odp-rnic RDMA device")
        return 0
    ctx = Context(name=dev)
    attr = ctx.query_device()
    if attr.max_qp == 0:
        skip("provider checks",
             "the kernel driver runs without the data path (max_qp 0)")
        return 0
    gid = ctx.query_gid(port_num=1, index=0)
    pd = PD(ctx)
    cq = CQ(ctx, 4)
    cap = QPCap(max_send_wr=8, max_recv_wr=8, max_send_sge=4,
                max_recv_sge=4, max_inline_data=64)
    qps = [QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                             cap=cap)) for _ in range(2)]
    acc = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
           e.IBV_ACCESS_REMOTE_READ)
    mrs = [MR(pd, 8192, acc) for _ in range(2)]

    def send_wr(opcode=e.IBV_WR_SEND, nsge=1, length=16, flags=None,
                mr=mrs[0]):
        sges = [SGE(mr.buf + i * 64, length, mr.lkey) for i in range(nsge)]
        return SendWR(wr_id=1, opcode=opcode, num_sge=nsge, sg=sges,
                      send_flags=(e.IBV_SEND_SIGNALED if flags is None
                                  else flags))

    # (a) RESET
    expect_errno("post_send in RESET", errno.EINVAL,
                 lambda: qps[0].post_send(send_wr()))
    connect(qps, gid)
    ok(f"two RC QPs ({qps[0].qp_num}, {qps[1].qp_num}) connected over GID 0")

    # (b)-(e) refused before the ring is touched
    expect_errno("post_send with 5 SGEs", errno.EINVAL,
                 lambda: qps[0].post_send(send_wr(nsge=5)))
    expect_errno("post_send with 65 bytes inline", errno.EINVAL,
                 lambda: qps[0].post_send(send_wr(
                     length=65, flags=e.IBV_SEND_SIGNALED |
                     e.IBV_SEND_INLINE)))
    if attr.atomic_caps == e.IBV_ATOMIC_NONE:
        wr = send_wr(opcode=e.IBV_WR_ATOMIC_FETCH_AND_ADD, length=8)
        wr.set_wr_atomic(rkey=mrs[1].rkey, addr=mrs[1].buf, compare_add=1)
        expect_errno("atomic on a device without atomics", errno.EINVAL,
                     lambda: qps[0].post_send(wr))
    else:
        skip("atomic on a device without atomics", "the device has atomics")
    expect_errno("post_recv with 5 SGEs", errno.EINVAL,
                 lambda: qps[1].post_recv(RecvWR(
                     wr_id=9, num_sge=5,
                     sg=[SGE(mrs[1].buf, 16, mrs[1].lkey)] * 5)))

    # (f) SEND_WITH_IMM, inline
    payload = bytes((i * 7 + 3) & 0xff for i in range(64))
    mrs[0].write(payload, 64, 0)
    mrs[1].write(b"\0" * 128, 128, 0)
    qps[1].post_recv(RecvWR(wr_id=0x77, num_sge=1,
                            sg=[SGE(mrs[1].buf, 128, mrs[1].lkey)]))
    wr = SendWR(wr_id=0x55, opcode=e.IBV_WR_SEND_WITH_IMM, num_sge=1,
                imm_data=0x12345678,
                sg=[SGE(mrs[0].buf, 64, mrs[0].lkey)],
                send_flags=e.IBV_SEND_SIGNALED | e.IBV_SEND_INLINE)
    mrs[0].write(payload, 64, 0)
    qps[0].post_send(wr)
    mrs[0].write(b"\xee" * 64, 64, 0)  # inline: copied at post time
    wcs = poll(cq, "SEND_WITH_IMM", 2)
    recv = [w for w in wcs if w.wr_id == 0x77]
    sent = [w for w in wcs if w.wr_id == 0x55]
    data = mrs[1].read(64, 0)
    if (len(recv) == 1 and len(sent) == 1 and
            all(w.status == e.IBV_WC_SUCCESS for w in wcs) and
            recv[0].opcode == e.IBV_WC_RECV and
            recv[0].wc_flags & e.IBV_WC_WITH_IMM and
            recv[0].imm_data == 0x12345678 and recv[0].byte_len == 64 and
            sent[0].opcode == e.IBV_WC_SEND and data == payload):
        ok("SEND_WITH_IMM, 64 bytes inline: RECV with the immediate and "
           "the bytes as posted")
    else:
        fail("SEND_WITH_IMM, 64 bytes inline",
             "\n".join(str(w) for w in wcs) + f"\ndata {data[:16].hex()}")

    # (g) RDMA_WRITE_WITH_IMM from two SGEs
    a, b = os.urandom(100), os.urandom(300)
    mrs[0].write(a, 100, 1000)
    mrs[0].write(b, 300, 2000)
    # the immediate consumes a receive; its buffer stays untouched
    qps[1].post_recv(RecvWR(wr_id=0x78, num_sge=1,
                            sg=[SGE(mrs[1].buf + 8000, 16, mrs[1].lkey)]))
    wr = SendWR(wr_id=0x56, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=2,
                imm_data=0x0badcafe,
                sg=[SGE(mrs[0].buf + 1000, 100, mrs[0].lkey),
                    SGE(mrs[0].buf + 2000, 300, mrs[0].lkey)])
    wr.set_wr_rdma(rkey=mrs[1].rkey, addr=mrs[1].buf + 4000)
    qps[0].post_send(wr)
    wcs = poll(cq, "RDMA_WRITE_WITH_IMM", 2)
    recv = [w for w in wcs if w.wr_id == 0x78]
    data = mrs[1].read(400, 4000)
    if (all(w.status == e.IBV_WC_SUCCESS for w in wcs) and recv and
            recv[0].opcode == e.IBV_WC_RECV_RDMA_WITH_IMM and
            recv[0].imm_data == 0x0badcafe and data == a + b):
        ok("RDMA_WRITE_WITH_IMM from two SGEs: RECV_RDMA_WITH_IMM, data "
           "placed")
    else:
        fail("RDMA_WRITE_WITH_IMM from two SGEs",
             "\n".join(str(w) for w in wcs) + f"\nmatch {data == a + b}")

    # (h) RDMA_READ into two SGEs
    src = os.urandom(512)
    mrs[1].write(src, 512, 6000)
    wr = SendWR(wr_id=0x57, opcode=e.IBV_WR_RDMA_READ, num_sge=2,
                sg=[SGE(mrs[0].buf + 5000, 200, mrs[0].lkey),
                    SGE(mrs[0].buf + 7000, 312, mrs[0].lkey)])
    wr.set_wr_rdma(rkey=mrs[1].rkey, addr=mrs[1].buf + 6000)
    qps[0].post_send(wr)
    wcs = poll(cq, "RDMA_READ")
    got = mrs[0].read(200, 5000) + mrs[0].read(312, 7000)
    if (wcs[0].status == e.IBV_WC_SUCCESS and
            wcs[0].opcode == e.IBV_WC_RDMA_READ and got == src):
        ok("RDMA_READ into two SGEs: byte-exact")
    else:
        fail("RDMA_READ into two SGEs", f"{wcs[0]}\nmatch {got == src}")

    # (i) a 4-entry CQ through many wraps
    rounds = 64
    try:
        for i in range(rounds):
            wr = SendWR(wr_id=1000 + i, opcode=e.IBV_WR_RDMA_WRITE,
                        num_sge=1, sg=[SGE(mrs[0].buf, 8, mrs[0].lkey)])
            wr.set_wr_rdma(rkey=mrs[1].rkey, addr=mrs[1].buf)
            qps[0].post_send(wr)
            w = poll(cq, f"write {i}")[0]
            if w.status != e.IBV_WC_SUCCESS or w.wr_id != 1000 + i:
                raise RuntimeError(f"round {i}: {w}")
        ok(f"{rounds} signaled writes through a CQ of {cq.cqe} entries "
           "(owner bit across wraps)")
    except (RuntimeError, TimeoutError, PyverbsRDMAError) as ex:
        fail("signaled writes through a small CQ", ex)

    for q in qps:
        q.close()
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as ex:  # report, do not hide
        fail("provider checks ran to the end", repr(ex))
    print(f"# {NAME}: {N - FAILED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)
