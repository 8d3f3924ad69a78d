#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""ODP on an FS-DAX file: the headline scenario.

Runs in the guest as root: XFS (reflink) mounted dax=always on pmem, the
odp_rnic driver bound, the odprnic provider installed, the device's control
port at $ODP_RNIC_CONTROL. A remote peer is simulated by writes injected
through the device's control socket ("wire injector" in docs/hardware.md).

  (a) a 2 MiB file on the DAX mount, mmapped MAP_SHARED, STATX_ATTR_DAX set
  (b) a pinned MR on that mapping is refused with EOPNOTSUPP
  (i) query_device_ex's ODP caps follow the device's --odp switch
  (c) an ODP MR on the same mapping succeeds (with --odp off: EOPNOTSUPP)
  (d) an injected remote write faults and lands in the file, byte-exact
  (e) cp --reflink + a CPU write to the original (CoW) invalidate the MR
      (the range is faulted back in by a remote read in between, so the
      CoW's own invalidation is what is counted)
  (f) the next remote write faults again and lands in the original's new
      block; the copy keeps the old bytes
  (g) truncate with the ODP MR live completes; a remote write to the
      truncated range then fails cleanly
  (h) the device's DMA oracle recorded no violation

Output is TAP; the exit status is non-zero when any step failed. With the
device's ODP off, (d)-(g) are skipped.
"""

import os
import sys

import daxlib
from daxlib import BailOut, Failed, Tap

MIB = 1 << 20
FILE_SIZE = 2 * MIB
# The range the remote peer writes: unaligned, across a page boundary, in the
# second MiB so that truncating to 1 MiB removes it.
OFFSET = MIB + 0x3000 - 100
LENGTH = 4096 + 200
TRUNCATE_TO = MIB


def main():
    tap = Tap("dax-odp")
    try:
        return scenario(tap)
    except BailOut as b:
        return tap.bail(str(b))


def scenario(tap):
    env = daxlib.Env.setup(tap)  # bails out when the guest is not usable
    odp_on = env.odp_on
    path = os.path.join(env.mount, "dax-odp.bin")
    copy = os.path.join(env.mount, "dax-odp.copy")
    for p in (path, copy):
        if os.path.exists(p):
            os.unlink(p)

    st = {}

    def step_a():
        st["file"] = daxlib.DaxFile.create(path, FILE_SIZE)
        f = st["file"]
        return f"{path}: {FILE_SIZE} bytes at 0x{f.addr:x}, STATX_ATTR_DAX set"

    tap.step("(a) 2 MiB file on the DAX mount, mmapped MAP_SHARED, STATX_ATTR_DAX", step_a)

    def step_b():
        f = st["file"]
        err = env.reg_mr_errno(f.addr, FILE_SIZE, daxlib.ACCESS_RW, mode="pinned")
        if err is None:
            raise Failed("a pinned registration of an FS-DAX mapping succeeded")
        if err != daxlib.errno.EOPNOTSUPP:
            raise Failed(f"pinned registration failed with {daxlib.errname(err)}, expected EOPNOTSUPP")
        return "ibv_reg_mr(ODPRNIC_MR_MODE=pinned) failed with EOPNOTSUPP"

    tap.step("(b) pinned MR on the DAX mapping refused with EOPNOTSUPP", step_b, needs=["file"], st=st)

    def step_i():
        return env.check_odp_caps()

    tap.step(f"(i) query_device_ex ODP caps match the device (--odp {'on' if odp_on else 'off'})", step_i)

    def step_c():
        f = st["file"]
        if not odp_on:
            err = env.reg_mr_errno(f.addr, FILE_SIZE, daxlib.ACCESS_ODP_RW)
            if err is None:
                raise Failed("ODP registration succeeded on a device with --odp off")
            if err != daxlib.errno.EOPNOTSUPP:
                raise Failed(f"ODP registration failed with {daxlib.errname(err)}, expected EOPNOTSUPP")
            return "--odp off: ODP registration refused with EOPNOTSUPP"
        mr = env.reg_mr(f.addr, FILE_SIZE, daxlib.ACCESS_ODP_RW)
        st["mr"] = mr
        info = env.ctl.mr(mr.rkey)
        return f"rkey 0x{mr.rkey:x}, device MR {daxlib.brief(info)}"

    tap.step("(c) ODP MR on the DAX mapping" if odp_on else "(c) ODP MR refused with --odp off",
             step_c, needs=["file"], st=st)

    off_reason = "device --odp off"

    def step_d():
        f, mr = st["file"], st["mr"]
        old_phys = daxlib.fiemap_phys(f.fd, OFFSET)
        data = os.urandom(LENGTH)
        resp = env.ctl.remote_write(mr.rkey, f.addr + OFFSET, data)
        daxlib.expect_success(resp, "remote write")
        faults = resp.get("faults", 0)
        if faults < 1:
            raise Failed(f"remote write to a fresh ODP MR reported {faults} page faults, expected >= 1")
        got = os.pread(f.fd, LENGTH, OFFSET)
        daxlib.expect_bytes(got, data, "file after the remote write (pread)")
        got = f.read_mapped(OFFSET, LENGTH)
        daxlib.expect_bytes(got, data, "file after the remote write (through the mapping)")
        back = env.ctl.remote_read(mr.rkey, f.addr + OFFSET, LENGTH)
        daxlib.expect_bytes(back, data, "remote read of the written range")
        st["pattern_d"] = data
        st["phys_d"] = old_phys
        return f"{LENGTH} bytes at offset 0x{OFFSET:x}: status success, {faults} fault(s), pread byte-exact"

    tap.step("(d) injected remote write faults and lands in the file", step_d,
             needs=["mr"], st=st, skip=None if odp_on else off_reason)

    def step_e():
        f, mr = st["file"], st["mr"]
        inv0 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        daxlib.run(["cp", "--reflink=always", path, copy])
        inv1 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        # The reflink itself write-protects the mapping (an invalidation
        # already). Fault the range back into the device with a remote read,
        # so that the CoW's own invalidation is seen apart.
        back = env.ctl.remote_read(mr.rkey, f.addr + OFFSET, LENGTH)
        daxlib.expect_bytes(back, st["pattern_d"], "remote read after cp --reflink")
        inv1r = env.ctl.mr(mr.rkey).get("invalidations", 0)
        cpu = bytes((b ^ 0x5A) for b in st["pattern_d"])
        f.write_mapped(OFFSET, cpu)
        inv2 = env.ctl.mr(mr.rkey).get("invalidations", 0)
        got = os.pread(f.fd, LENGTH, OFFSET)
        daxlib.expect_bytes(got, cpu, "original after the CPU write")
        with open(copy, "rb") as c:
            daxlib.expect_bytes(os.pread(c.fileno(), LENGTH, OFFSET), st["pattern_d"],
                                "reflinked copy after the CPU write to the original")
        seen = (f"MR invalidations {inv0} before cp, {inv1} after cp --reflink, {inv1r} after the "
                f"remote read, {inv2} after the CPU write")
        if inv2 <= inv1r:
            raise Failed(f"the CoW of the CPU write did not invalidate the MR: {seen}")
        st["cpu"] = cpu
        return f"{seen}; original has the CPU bytes, copy the old ones"

    tap.step("(e) cp --reflink + CPU write (CoW) invalidate the ODP MR", step_e,
             needs=["pattern_d"], st=st, skip=None if odp_on else off_reason)

    def step_f():
        f, mr = st["file"], st["mr"]
        data = os.urandom(LENGTH)
        resp = env.ctl.remote_write(mr.rkey, f.addr + OFFSET, data)
        daxlib.expect_success(resp, "remote write after CoW")
        faults = resp.get("faults", 0)
        if faults < 1:
            raise Failed(f"remote write after the invalidation reported {faults} page faults, expected >= 1")
        daxlib.expect_bytes(os.pread(f.fd, LENGTH, OFFSET), data, "original after the second remote write")
        with open(copy, "rb") as c:
            daxlib.expect_bytes(os.pread(c.fileno(), LENGTH, OFFSET), st["pattern_d"],
                                "reflinked copy after the second remote write")
            copy_phys = daxlib.fiemap_phys(c.fileno(), OFFSET)
        new_phys = daxlib.fiemap_phys(f.fd, OFFSET)
        blocks = (f"block of offset 0x{OFFSET:x}: before 0x{st['phys_d']:x}, original now "
                  f"0x{new_phys:x}, copy 0x{copy_phys:x}")
        if new_phys == copy_phys:
            raise Failed(f"original and copy still share the block ({blocks})")
        return f"status success, {faults} fault(s); copy keeps the old bytes; {blocks}"

    tap.step("(f) next remote write faults again and lands in the original's new block", step_f,
             needs=["cpu"], st=st, skip=None if odp_on else off_reason)

    def step_g():
        f, mr = st["file"], st["mr"]
        secs = daxlib.bounded(lambda: os.truncate(path, TRUNCATE_TO), 60, "truncate with a live ODP MR")
        size = os.stat(path).st_size
        if size != TRUNCATE_TO:
            raise Failed(f"file size {size} after truncate, expected {TRUNCATE_TO}")
        data = os.urandom(LENGTH)
        resp = daxlib.bounded(lambda: env.ctl.remote_write(mr.rkey, f.addr + OFFSET, data, check=False),
                              60, "remote write to the truncated range")[1]
        status = resp.get("status")
        if status == "success":
            raise Failed(f"a remote write beyond EOF succeeded: {daxlib.brief(resp)}")
        if "status" not in resp:
            raise Failed(f"the control request itself failed: {daxlib.brief(resp)}")
        if status == "timeout":
            raise Failed("the page fault beyond EOF was not answered within "
                         f"{env.ctl.OP_TIMEOUT_MS} ms: {daxlib.brief(resp)}")
        # The guest is still here and the MR can still be queried.
        info = env.ctl.mr(mr.rkey)
        return (f"truncate to {TRUNCATE_TO} took {secs[0]:.3f}s; remote write beyond EOF: status {status}; "
                f"MR {daxlib.brief(info)}")

    tap.step("(g) truncate with the ODP MR live completes; a remote write there fails cleanly", step_g,
             needs=["mr"], st=st, skip=None if odp_on else off_reason)

    def step_h():
        v = env.ctl.violations()
        count = v.get("count", len(v.get("violations", [])))
        if count:
            raise Failed(f"{count} oracle violation(s): {daxlib.brief(v.get('violations', [])[:4])}")
        return "0 violations"

    tap.step("(h) DMA oracle: no violations", step_h)

    if "mr" in st:
        try:
            st["mr"].close()
        except Exception as e:  # reported, not fatal: the steps above decided
            tap.diag(f"dereg of the ODP MR failed: {e}")
    if "file" in st:
        st["file"].close()
    env.close()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
