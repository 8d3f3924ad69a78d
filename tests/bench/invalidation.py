#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Benchmark: one munmap-like invalidation over many ODP MRs, in one pass or
two (odp_rnic's two_pass parameter; docs/driver.md, "Two-pass invalidation").

    scripts/vm --kernel backports -- python3 /opt/odp-rnic/src/tests/bench/invalidation.py [MRS] [ROUNDS]

MRS explicit ODP MRs (default 64) cover consecutive 64 KiB slices of one
shared anonymous region. Each round prefetches every MR (advise_mr with
FLUSH, so all are mapped on the device), then times one MADV_DONTNEED of
the whole region: the kernel calls every MR's notifier, and the driver must
have the device acknowledge each invalidation before the call returns. The
rounds alternate two_pass=1 and two_pass=0, so both see the same load.
Prints the median and quartiles per setting and their ratio; on kernels
without two-pass notifiers (before 7.2) both settings run the one-pass code
and the ratio shows the noise.
"""

import ctypes
import mmap
import os
import statistics
import sys
import time

sys.path.insert(0, "/opt/odp-rnic/src/tests/guest/lib")

import pyverbs.enums as e  # noqa: E402
from odprnic_app import counter, ibdev, param  # noqa: E402
from pyverbs.device import Context  # noqa: E402
from pyverbs.mr import MR  # noqa: E402
from pyverbs.pd import PD  # noqa: E402
from pyverbs.wr import SGE  # noqa: E402

SLICE = 64 * 1024
MADV_DONTNEED = 4
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
          e.IBV_ACCESS_ON_DEMAND)


def main():
    nmr = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    dev = ibdev()
    ctx = Context(name=dev)
    pd = PD(ctx)
    size = nmr * SLICE
    buf = mmap.mmap(-1, size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    mrs = [MR(pd, SLICE, ACCESS, address=addr + i * SLICE) for i in range(nmr)]
    libc = ctypes.CDLL(None, use_errno=True)
    times = {True: [], False: []}
    inv = {True: [], False: []}
    for r in range(rounds * 2):
        two = r % 2 == 0
        param("two_pass", int(two))
        buf[:] = b"\x5a" * size  # populate, so the prefetch maps real pages
        for m in mrs:
            pd.advise_mr(e._IBV_ADVISE_MR_ADVICE_PREFETCH_WRITE,
                         e._IBV_ADVISE_MR_FLAG_FLUSH, [SGE(m.buf, SLICE, m.lkey)])
        time.sleep(0.02)
        i0 = counter(dev, "invalidations")
        t = time.perf_counter()
        if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), MADV_DONTNEED):
            raise OSError(ctypes.get_errno(), "madvise")
        times[two].append((time.perf_counter() - t) * 1e6)
        time.sleep(0.02)  # hw_counters are cached for 10 ms
        inv[two].append(counter(dev, "invalidations") - i0)
    param("two_pass", 1)
    for m in mrs:
        m.close()
    pd.close()
    ctx.close()

    print(f"kernel {os.uname().release}, {nmr} ODP MRs of {SLICE >> 10} KiB, "
          f"{rounds} rounds per setting, MADV_DONTNEED of all {size >> 20} MiB")
    med = {}
    for two in (True, False):
        q = statistics.quantiles(times[two], n=4)
        med[two] = statistics.median(times[two])
        print(f"two_pass={int(two)}: median {med[two]:.0f} us (quartiles {q[0]:.0f}-{q[2]:.0f}), "
              f"device invalidations per call {statistics.median(inv[two]):.0f}")
    print(f"one pass / two passes: {med[False] / med[True]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
