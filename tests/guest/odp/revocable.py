#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A revocable MR on an FS-DAX file, and truncate: the "lease break /
revoke" design for hardware without ODP.

A revocable registration holds short-term pins (allowed on FS-DAX, unlike
FOLL_LONGTERM) and an mmu interval notifier. Truncate unmaps the range
(the notifier fires) and then waits in dax_layout_busy_page() while any page
still has an extra reference: it can only complete if the driver revokes the
MR and drops its pins. Steps (TAP):

  (a) a 2 MiB file on the DAX mount, mmapped MAP_SHARED, STATX_ATTR_DAX set
  (b) a revocable MR (ODPRNIC_MR_MODE=revocable) on the mapping succeeds;
      the device reports mode revocable, state live
  (c) an injected remote write lands without page faults (the table was
      written at registration), byte-exact in the file
  (d) truncate to 1 MiB with the MR live completes (bounded)
  (e) the device reports the MR revoked
  (f) a remote write below the new EOF, through the revoked key, fails
      cleanly; the bytes of (c) are still in the file
  (g) a remote write beyond the new EOF fails cleanly
  (h) the revoked MR can be deregistered
  (i) the DMA oracle recorded no violation
"""

import os
import sys

import daxlib
from daxlib import BailOut, Failed, Tap

MIB = 1 << 20
FILE_SIZE = 2 * MIB
TRUNCATE_TO = MIB
LOW = 0x3000 - 100          # stays below the new EOF
HIGH = MIB + 0x3000 - 100   # is cut off by the truncate
LENGTH = 4096 + 200


def is_revoked(info):
    return info.get("state") in ("revoked", 1)


def is_revocable(info):
    return info.get("mode") in ("revocable", 3)


def main():
    tap = Tap("dax-revocable")
    try:
        return scenario(tap)
    except BailOut as b:
        return tap.bail(str(b))


def scenario(tap):
    env = daxlib.Env.setup(tap)
    path = os.path.join(env.mount, "dax-revocable.bin")
    if os.path.exists(path):
        os.unlink(path)
    st = {}

    def step_a():
        st["file"] = daxlib.DaxFile.create(path, FILE_SIZE)
        return f"{path}: {FILE_SIZE} bytes at 0x{st['file'].addr:x}, STATX_ATTR_DAX set"

    tap.step("(a) 2 MiB file on the DAX mount, mmapped MAP_SHARED, STATX_ATTR_DAX", step_a)

    def step_b():
        f = st["file"]
        mr = env.reg_mr(f.addr, FILE_SIZE, daxlib.ACCESS_RW, mode="revocable")
        st["mr"] = mr
        info = env.ctl.mr(mr.rkey)
        if not is_revocable(info):
            raise Failed(f"the device reports mode {info.get('mode')!r}, expected revocable: {daxlib.brief(info)}")
        if is_revoked(info):
            raise Failed(f"the MR is revoked right after registration: {daxlib.brief(info)}")
        st["live"] = True
        return f"rkey 0x{mr.rkey:x}, device MR {daxlib.brief(info)}"

    tap.step("(b) revocable MR on the DAX mapping", step_b, needs=["file"], st=st)

    def step_c():
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

    tap.step("(c) remote write lands without page faults", step_c, needs=["live"], st=st)

    def step_d():
        secs, _ = daxlib.bounded(lambda: os.truncate(path, TRUNCATE_TO), 60,
                                 "truncate with a live revocable MR (dax_layout_busy_page waits for pins)")
        size = os.stat(path).st_size
        if size != TRUNCATE_TO:
            raise Failed(f"file size {size} after truncate, expected {TRUNCATE_TO}")
        st["truncated"] = True
        return f"truncate to {TRUNCATE_TO} took {secs:.3f}s"

    tap.step("(d) truncate with the revocable MR live completes", step_d, needs=["live"], st=st)

    def step_e():
        info = env.ctl.mr(st["mr"].rkey)
        if not is_revoked(info):
            raise Failed(f"the MR is not revoked after truncate: {daxlib.brief(info)}")
        return f"device MR {daxlib.brief(info)}"

    tap.step("(e) the device reports the MR revoked", step_e, needs=["truncated"], st=st)

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

    def step_f():
        f = st["file"]
        data, resp = remote_write_fails(LOW, "remote write below the new EOF")
        got = os.pread(f.fd, LENGTH, LOW)
        if got == data:
            raise Failed("the failed remote write's bytes are in the file")
        daxlib.expect_bytes(got, st["low"], "file below the new EOF after the revoke")
        return f"status {resp.get('status')}; the bytes of (c) are intact"

    tap.step("(f) remote write below EOF through the revoked key fails cleanly", step_f,
             needs=["truncated", "low"], st=st)

    def step_g():
        _, resp = remote_write_fails(HIGH, "remote write beyond the new EOF")
        return f"status {resp.get('status')}"

    tap.step("(g) remote write beyond the new EOF fails cleanly", step_g, needs=["truncated"], st=st)

    def step_h():
        mr = st.pop("mr")
        mr.close()
        return "ibv_dereg_mr succeeded"

    tap.step("(h) the revoked MR can be deregistered", step_h, needs=["mr"], st=st)

    def step_i():
        v = env.ctl.violations()
        count = v.get("count", len(v.get("violations", [])))
        if count:
            raise Failed(f"{count} oracle violation(s): {daxlib.brief(v.get('violations', [])[:4])}")
        return "0 violations"

    tap.step("(i) DMA oracle: no violations", step_i)

    lines = [ln for ln in daxlib.run(["dmesg"], check=False).splitlines() if "odp_rnic" in ln]
    for ln in lines[-10:]:
        tap.diag(f"dmesg: {ln}")
    if "mr" in st:
        try:
            st["mr"].close()
        except Exception as x:
            tap.diag(f"dereg of the revocable MR failed: {x}")
    if "file" in st:
        st["file"].close()
    env.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
