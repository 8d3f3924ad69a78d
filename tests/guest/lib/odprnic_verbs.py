# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Small pyverbs helpers shared by the guest tests.

    from odprnic_verbs import rc_connect

    rc_connect(qp, dest_qpn, dgid, sgid_index=0, access=...)
        moves an RC QP through INIT, RTR and RTS towards dest_qpn at dgid
        (a pyverbs GID) on port 1, with the attributes the tests use
        (MTU 1024, PSNs 0, one outstanding READ/atomic, retries 7)
    netup() -> (ibdev, netdev, ipaddr)
        tools/common.bash's odprnic_netup: the device's netdev up with an
        IPv4 address, port 1 ACTIVE, GID 0 set; RuntimeError if not
"""

import os
import subprocess

import pyverbs.enums as e
from pyverbs.addr import AHAttr, GlobalRoute
from pyverbs.qp import QPAttr

__all__ = ["rc_connect", "netup"]

COMMON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "common.bash")

DEFAULT_ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
                  e.IBV_ACCESS_REMOTE_READ)


def rc_connect(qp, dest_qpn, dgid, sgid_index=0, access=DEFAULT_ACCESS):
    a = QPAttr()
    a.qp_access_flags = access
    a.pkey_index = 0
    a.port_num = 1
    qp.to_init(a)
    a = QPAttr()
    a.path_mtu = e.IBV_MTU_1024
    a.dest_qp_num = dest_qpn
    a.rq_psn = 0
    a.max_dest_rd_atomic = 1
    a.min_rnr_timer = 12
    a.ah_attr = AHAttr(gr=GlobalRoute(dgid=dgid, sgid_index=sgid_index), is_global=1,
                       port_num=1)
    qp.to_rtr(a)
    a = QPAttr()
    a.sq_psn = 0
    a.timeout = 14
    a.retry_cnt = 7
    a.rnr_retry = 7
    a.max_rd_atomic = 1
    qp.to_rts(a)


def netup():
    p = subprocess.run(["bash", "-c", f'. "{COMMON}" && odprnic_netup && '
                        'echo "$IBDEV $NETDEV $IPADDR" || { echo "$NETUP_ERR" >&2; exit 1; }'],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise RuntimeError(f"odprnic_netup: {p.stderr.strip()}")
    return tuple(p.stdout.split())
