#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Benchmark: perftest on odp-rnic and on Soft-RoCE (rdma_rxe), side by side
in one guest (scripts/bench runs it and renders docs/bench-softroce.md).

    softroce.py [--reps R]

Soft-RoCE runs on a veth pair in the same guest. For each configuration
(tool, message size, with and without --odp) the two devices run one after
the other, R times, so they share the host's load; the medians and their
ratio are reported. Two processes on one device, over its loopback path.

Under TCG the comparison is between a device whose data path is native code
in the host (odp-rnic's process) and one whose data path is guest code the
host emulates instruction by instruction (rxe), so the ratio is far larger
than it would be under KVM; it is still the side-by-side measure of what a
kernel developer gets from each here.

Writes /lab/bench.json (when /lab is writable) and prints a table.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest", "lib"))

from odprnic_verbs import netup  # noqa: E402

CONFIGS = [
    ("ib_write_bw", 64), ("ib_write_bw", 4096), ("ib_write_bw", 65536),
    ("ib_read_bw", 4096), ("ib_read_bw", 65536),
    ("ib_send_bw", 4096),
    ("ib_write_lat", 64), ("ib_read_lat", 64),
]
PORT = [19000]


def rxe_up():
    """rxe0 on veth0 (10.9.0.1); its IPv4 GID is index 1."""
    cmds = [["modprobe", "rdma_rxe"],
            ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
            ["ip", "addr", "add", "10.9.0.1/24", "dev", "veth0"],
            ["ip", "link", "set", "veth0", "up"], ["ip", "link", "set", "veth1", "up"],
            ["rdma", "link", "add", "rxe0", "type", "rxe", "netdev", "veth0"]]
    for c in cmds:
        subprocess.run(c, capture_output=True)
    for _ in range(50):
        gid = "/sys/class/infiniband/rxe0/ports/1/gids/1"
        if os.path.exists(gid) and open(gid).read().strip().startswith("0000:0000:0000:0000:0000:ffff"):
            return True
        time.sleep(0.1)
    return False


def has_odp(dev):
    out = subprocess.run(["ibv_devinfo", "-d", dev, "-v"], capture_output=True,
                         text=True).stdout
    general = out.split("general_odp_caps:", 1)[-1].split("rc_odp_caps:", 1)[0]
    return "ODP_SUPPORT" in general


def run(dev, gid, tool, size, odp):
    """One perftest pair; the number it reports: MiB/s for bandwidth tools,
    typical latency in microseconds for latency tools, None on failure."""
    PORT[0] += 1
    lat = tool.endswith("_lat")
    args = ["-d", dev, "-x", str(gid), "-p", str(PORT[0]), "-F", "-s", str(size),
            "-n", "1000" if lat else "2000"] + (["--odp"] if odp else [])
    srv = subprocess.Popen([tool] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    time.sleep(0.5)
    try:
        cli = subprocess.run([tool] + args + ["localhost"], capture_output=True, text=True,
                             timeout=180)
        srv.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        srv.kill()
        return None
    if cli.returncode:
        return None
    lines = cli.stdout.splitlines()
    for i, l in enumerate(lines):
        if l.strip().startswith("#bytes") and i + 1 < len(lines):
            nums = re.findall(r"[\d.]+", lines[i + 1])
            # bw: bytes iters peak avg rate; lat: bytes iters min max typical ...
            return float(nums[4] if lat else nums[3])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    odprnic, _, _ = netup()
    if not rxe_up():
        print("Bail out! rxe0 did not come up")
        return 1
    devices = [("odp-rnic", odprnic, 0), ("Soft-RoCE", "rxe0", 1)]
    odp_support = {name: has_odp(dev) for name, dev, _ in devices}
    rows = []
    for tool, size in CONFIGS:
        for odp in (False, True):
            got = {name: [] for name, _, _ in devices}
            for _ in range(a.reps):
                for name, dev, gid in devices:
                    got[name].append(run(dev, gid, tool, size, odp))
            med = {}
            for name in got:
                ok = [v for v in got[name] if v is not None]
                med[name] = statistics.median(ok) if ok else None
            row = {"tool": tool, "size": size, "odp": odp,
                   "unit": "us" if tool.endswith("_lat") else "MiB/s",
                   "median": med, "runs": got}
            rows.append(row)
            print(f"{tool} {size} B{' --odp' if odp else ''}: " +
                  ", ".join(f"{n} {v if v is None else round(v, 2)}" for n, v in med.items()),
                  flush=True)
    if os.path.isdir("/lab") and os.access("/lab", os.W_OK):
        with open("/lab/bench.json", "w") as f:
            json.dump({"kernel": os.uname().release, "reps": a.reps,
                       "odp_support": odp_support, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
