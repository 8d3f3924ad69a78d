# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Revocable MRs versus truncate, on an FS-DAX file and on a page-cache
file: the "lease break / revoke" design for hardware without ODP.

A revocable registration holds short-term pins (allowed on FS-DAX and on
shared file mappings, unlike FOLL_LONGTERM) and an mmu interval notifier.
On FS-DAX, truncate unmaps the range (the notifier fires) and then waits in
dax_layout_busy_page() while any page still has an extra reference: it can
only complete if the driver revokes the MR and drops its pins. In the page
cache truncate does not wait for pins; what happens there is recorded the
same way. Steps (TAP), run by dax-revocable.py and pagecache-revocable.py:

  (a) a 2 MiB file mmapped MAP_SHARED (STATX_ATTR_DAX set on FS-DAX, clear
      in the page cache)
  (b) a pinned MR on the mapping is refused: EOPNOTSUPP on FS-DAX; EFAULT
      in the page cache (writable long-term pin of a dirty-tracked shared
      file mapping, 6.5+; allowed before)
  (c) a revocable MR (ODPRNIC_MR_MODE=revocable) on the mapping succeeds;
      the device reports mode revocable, state live
  (d) an injected remote write lands without page faults (the table was
      written at registration), byte-exact in the file; so does an RDMA
      WRITE from one of the application's own QPs (a loopback RC pair)
  (e) truncate to 1 MiB with the MR live completes (bounded)
  (f) the device reports the MR revoked; the driver counted one
      revocation (hw_counters/revocations)
  (g) a remote write below the new EOF, through the revoked key, fails
      cleanly; the bytes of (d) are still in the file
  (h) a remote write beyond the new EOF fails cleanly
  (h2) the application is told: its own RDMA WRITE through the revoked key
       completes with IBV_WC_REM_ACCESS_ERR and its context gets
       IBV_EVENT_QP_ACCESS_ERR (uverbs has no per-MR event: the QPs that
       touch a revoked key are where the owner learns of it)
  (i) the revoked MR can be deregistered
  (j) the DMA oracle recorded no violation
"""

import errno
import os

import daxlib
import pyverbs.enums as e
from daxlib import BailOut, Failed, Tap

MIB = 1 << 20
FILE_SIZE = 2 * MIB
TRUNCATE_TO = MIB
LOW = 0x3000 - 100          # stays below the new EOF
HIGH = MIB + 0x3000 - 100   # is cut off by the truncate
QP_LOW = 0x6000 - 100       # the application's own RDMA WRITE, below EOF
LENGTH = 4096 + 200


def kernel_at_least(major, minor):
    rel = os.uname().release.split("-")[0].split(".")
    return (int(rel[0]), int(rel[1])) >= (major, minor)


def oracle_clean(ctl):
    """"0 violations" when the device's DMA oracle recorded none, else
    Failed with the first few."""
    v = ctl.violations()
    count = v.get("count", len(v.get("violations", [])))
    if count:
        raise Failed(f"{count} oracle violation(s): {daxlib.brief(v.get('violations', [])[:4])}")
    return "0 violations"


def is_revoked(info):
    return info.get("state") == "revoked"


def is_revocable(info):
    return info.get("mode") == "revocable"


def main(backing):
    """backing: "dax" or "pagecache". Returns the exit status."""
    tap = Tap(f"{backing}-revocable")
    try:
        return scenario(tap, backing)
    except BailOut as b:
        return tap.bail(str(b))


def scenario(tap, backing):
    dax = backing == "dax"
    env = daxlib.Env.setup(tap, backing)
    path = os.path.join(env.mount, f"{backing}-revocable.bin")
    if os.path.exists(path):
        os.unlink(path)
    st = {}

    def step_a():
        st["file"] = daxlib.DaxFile.create(path, FILE_SIZE, dax=dax)
        return (f"{path}: {FILE_SIZE} bytes at 0x{st['file'].addr:x}, "
                f"STATX_ATTR_DAX {'set' if dax else 'clear'}")

    tap.step(f"(a) 2 MiB {'FS-DAX' if dax else 'page-cache'} file mmapped MAP_SHARED", step_a)

    if dax:
        want, why = errno.EOPNOTSUPP, "FOLL_LONGTERM on FS-DAX"
    elif kernel_at_least(6, 5):
        want, why = errno.EFAULT, "writable long-term pin of a dirty-tracked shared file mapping"
    else:
        want, why = None, "kernels before 6.5 allow it"

    def step_b():
        err = env.reg_mr_errno(st["file"].addr, FILE_SIZE, daxlib.ACCESS_RW, mode="pinned")
        got = "success" if err is None else daxlib.errname(err)
        if err != want:
            raise Failed(f"pinned registration: {got}, expected "
                         f"{'success' if want is None else daxlib.errname(want)} ({why})")
        return f"ODPRNIC_MR_MODE=pinned: {got} ({why})"

    tap.step("(b) pinned MR on the mapping " + ("allowed (kernel < 6.5)" if want is None else
                                                 f"refused with {daxlib.errno_name(want)}"),
             step_b, needs=["file"], st=st)

    def step_c():
        f = st["file"]
        mr = env.reg_mr(f.addr, FILE_SIZE, daxlib.ACCESS_RW, mode="revocable")
        st["mr"] = mr
        info = env.ctl.mr(mr.rkey)
        if not is_revocable(info):
            raise Failed(f"the device reports mode {info.get('mode')!r}, expected revocable: "
                         f"{daxlib.brief(info)}")
        if is_revoked(info):
            raise Failed(f"the MR is revoked right after registration: {daxlib.brief(info)}")
        st["live"] = True
        st["revocations"] = daxlib.hw_counter(env.ibdev, "revocations")
        return f"rkey 0x{mr.rkey:x}, device MR {daxlib.brief(info)}"

    tap.step("(c) revocable MR on the mapping", step_c, needs=["file"], st=st)

    def step_d():
        f, mr = st["file"], st["mr"]
        data = os.urandom(LENGTH)
        resp = env.ctl.remote_write(mr.rkey, f.addr + LOW, data)
        daxlib.expect_success(resp, "remote write")
        daxlib.expect_bytes(os.pread(f.fd, LENGTH, LOW), data, "file after the remote write")
        st["low"] = data
        faults = resp.get("faults", 0)
        if faults:
            raise Failed(f"a revocable MR took {faults} page fault(s); its table is written at registration")
        return f"{LENGTH} bytes at offset 0x{LOW:x}: status success, 0 faults, pread byte-exact"

    tap.step("(d) remote write lands without page faults", step_d, needs=["live"], st=st)

    def step_d2():
        f, mr = st["file"], st["mr"]
        st["pair"] = pair = daxlib.LoopbackPair(env)
        data = os.urandom(LENGTH)
        status = pair.rdma_write(mr.rkey, f.addr + QP_LOW, data)
        if status != e.IBV_WC_SUCCESS:
            raise Failed(f"RDMA WRITE through the live key completed with status {status}")
        daxlib.expect_bytes(os.pread(f.fd, LENGTH, QP_LOW), data, "file after the RDMA WRITE")
        st["qp_low"] = data
        return (f"QP {pair.requester.qp_num} -> QP {pair.responder.qp_num}: {LENGTH} bytes at "
                f"offset 0x{QP_LOW:x}, success, pread byte-exact")

    tap.step("(d2) the application's own RDMA WRITE lands in the file", step_d2,
             needs=["live"], st=st)

    def step_e():
        what = "truncate with a live revocable MR"
        if dax:
            what += " (dax_layout_busy_page waits for pins)"
        secs, _ = daxlib.bounded(lambda: os.truncate(path, TRUNCATE_TO), 60, what)
        size = os.stat(path).st_size
        if size != TRUNCATE_TO:
            raise Failed(f"file size {size} after truncate, expected {TRUNCATE_TO}")
        st["truncated"] = True
        return f"truncate to {TRUNCATE_TO} took {secs:.3f}s"

    tap.step("(e) truncate with the revocable MR live completes", step_e, needs=["live"], st=st)

    def step_f():
        info = env.ctl.mr(st["mr"].rkey)
        if not is_revoked(info):
            raise Failed(f"the MR is not revoked after truncate: {daxlib.brief(info)}")
        n = daxlib.hw_counter(env.ibdev, "revocations") - st["revocations"]
        if n != 1:
            raise Failed(f"the driver's revocations counter moved by {n}, expected 1")
        return f"device MR {daxlib.brief(info)}; driver hw_counters/revocations +1"

    tap.step("(f) the device reports the MR revoked, the driver counts it", step_f, needs=["truncated"], st=st)

    def remote_write_fails(off, what):
        f, mr = st["file"], st["mr"]
        data = os.urandom(LENGTH)
        _, resp = daxlib.bounded(lambda: env.ctl.remote_write(mr.rkey, f.addr + off, data, check=False),
                                 60, what)
        if resp.get("status") == "success":
            raise Failed(f"{what} succeeded through a revoked key: {daxlib.brief(resp)}")
        if "status" not in resp:
            raise Failed(f"{what}: the control request itself failed: {daxlib.brief(resp)}")
        if resp.get("status") == "timeout":
            raise Failed(f"{what}: no answer within {env.ctl.OP_TIMEOUT_MS} ms: {daxlib.brief(resp)}")
        return data, resp

    def step_g():
        f = st["file"]
        data, resp = remote_write_fails(LOW, "remote write below the new EOF")
        got = os.pread(f.fd, LENGTH, LOW)
        if got == data:
            raise Failed("the failed remote write's bytes are in the file")
        daxlib.expect_bytes(got, st["low"], "file below the new EOF after the revoke")
        return f"status {resp.get('status')}; the bytes of (d) are intact"

    tap.step("(g) remote write below EOF through the revoked key fails cleanly", step_g,
             needs=["truncated", "low"], st=st)

    def step_h():
        _, resp = remote_write_fails(HIGH, "remote write beyond the new EOF")
        return f"status {resp.get('status')}"

    tap.step("(h) remote write beyond the new EOF fails cleanly", step_h, needs=["truncated"], st=st)

    def step_k():
        f, mr, pair = st["file"], st["mr"], st["pair"]
        data = os.urandom(LENGTH)
        status = pair.rdma_write(mr.rkey, f.addr + QP_LOW, data)
        if status != e.IBV_WC_REM_ACCESS_ERR:
            raise Failed(f"RDMA WRITE through the revoked key completed with status {status}, "
                         f"expected IBV_WC_REM_ACCESS_ERR ({e.IBV_WC_REM_ACCESS_ERR})")
        kind = pair.async_event()
        if kind != e.IBV_EVENT_QP_ACCESS_ERR:
            raise Failed(f"async event {kind}, expected IBV_EVENT_QP_ACCESS_ERR "
                         f"({e.IBV_EVENT_QP_ACCESS_ERR})")
        daxlib.expect_bytes(os.pread(f.fd, LENGTH, QP_LOW), st["qp_low"],
                            "file after the refused RDMA WRITE")
        return "completion IBV_WC_REM_ACCESS_ERR, async event IBV_EVENT_QP_ACCESS_ERR, file intact"

    tap.step("(h2) the application is told: completion error and QP access-error event", step_k,
             needs=["truncated", "pair", "qp_low"], st=st)

    def step_i():
        mr = st.pop("mr")
        mr.close()
        return "ibv_dereg_mr succeeded"

    tap.step("(i) the revoked MR can be deregistered", step_i, needs=["mr"], st=st)

    tap.step("(j) DMA oracle: no violations", lambda: oracle_clean(env.ctl))

    lines = [ln for ln in daxlib.run(["dmesg"], check=False).splitlines()
             if "odp_rnic" in ln and ("revok" in ln or "MR" in ln)]
    for ln in lines[-10:]:
        tap.diag(f"dmesg: {ln}")
    if "pair" in st:
        st.pop("pair").close()
    if "mr" in st:
        try:
            st["mr"].close()
        except Exception as x:
            tap.diag(f"dereg of the revocable MR failed: {x}")
    if "file" in st:
        st["file"].close()
    env.close()
    return tap.finish()
