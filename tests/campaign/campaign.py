#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A fault-injection campaign in one boot (scripts/campaign runs it).

    campaign.py [--rounds N] [--seed S] [--seconds T]

Each round draws a fault plan from the seed (a kind and its parameters:
late or missing invalidation acknowledgements, dropped or duplicated page
faults, failed resumes and DMA, device errors, spontaneous resets) and runs
two workloads under it for T seconds: ib_write_bw between two processes
(--odp), and a churn of remote writes injected into an ODP MR while the
same process zaps random parts of it (MADV_DONTNEED). Then the plan is
cleared and the round checks what must hold whatever the device did:

  - the oracle recorded no access to memory the driver had given back;
  - every MADV_DONTNEED returned within inv_timeout_ms plus slack (the
    driver bounds its wait on the device);
  - within 40 s the device serves again (after a recovery if the plan
    forced one): a new context's ODP MR takes a remote write byte-exact;
  - the kernel logged no warning, oops or hung task.

Output: TAP, a line per round; with a writable /lab, the rounds as JSON in
/lab/campaign.json.
"""

import argparse
import ctypes
import json
import mmap
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest", "lib"))

import pyverbs.enums as e  # noqa: E402
from odprnic_app import (BAD_DMESG, Tap, counter, dmesg, ibdev, param,  # noqa: E402
                         tcp_listening, wait_for)
from odprnic_ctl import Control  # noqa: E402
from odprnic_verbs import netup  # noqa: E402
from pyverbs.device import Context  # noqa: E402
from pyverbs.mr import MR  # noqa: E402
from pyverbs.pd import PD  # noqa: E402

INV_TIMEOUT_MS = 1000
CMD_TIMEOUT_MS = 2000
REGION = 1 << 20
ACCESS = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE |
          e.IBV_ACCESS_ON_DEMAND)
MADV_DONTNEED = 4
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

# kind -> parameters drawn for it; kill and the rogue plans are left out:
# the first ends the device for the boot, the others break the oracle on
# purpose
KINDS = ("delay_inv_ack", "never_ack", "drop_fault", "dup_fault", "fail_resume",
         "fail_dma", "device_error", "reset")


def draw(rng):
    kind = rng.choice(KINDS)
    rule = {"kind": kind}
    if kind == "delay_inv_ack":
        rule["ms"] = rng.choice((20, 200, 800, 1500))  # some beyond the bound
    if kind in ("device_error", "reset", "never_ack"):
        rule["count"] = 1
    else:
        rule["probability"] = rng.choice((0.05, 0.2, 0.5, 1.0))
        rule["count"] = rng.choice((1, 5, 50))
    return rule


class Churn:
    """Remote writes into an ODP MR of one region, and MADV_DONTNEED of
    random parts of it, alternately, until stop."""

    def __init__(self, dev):
        self.ctx = Context(name=dev)
        self.pd = PD(self.ctx)
        self.buf = mmap.mmap(-1, REGION, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.mr = MR(self.pd, REGION, ACCESS, address=self.addr)
        self.writes = {}
        self.max_madvise = 0.0

    def run(self, ctl, rng, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            off = rng.randrange(0, REGION - 4096, 64)
            r = ctl.request({"op": "write", "rkey": self.mr.rkey, "va": self.addr + off,
                             "data_hex": os.urandom(256).hex(), "timeout_ms": 3000})
            st = r.get("status", r.get("error", "no answer"))
            self.writes[st] = self.writes.get(st, 0) + 1
            if rng.random() < 0.5:
                off = rng.randrange(0, REGION, 65536)
                t = time.monotonic()
                libc.madvise(self.addr + off, 65536, MADV_DONTNEED)
                self.max_madvise = max(self.max_madvise, time.monotonic() - t)

    def close(self):
        for o in (self.mr, self.pd, self.ctx):
            try:
                o.close()
            except Exception:  # disassociated by a recovery: freed anyway
                pass
        self.buf.close()


def perftest(dev, seconds, port):
    """An ib_write_bw pair; their output goes to files the round reads."""
    args = ["-d", dev, "-x", "0", "-p", str(port), "-F", "--odp", "-D",
            str(max(1, round(seconds)))]
    outs = [open(f"/tmp/campaign-{w}.out", "w+") for w in ("server", "client")]
    srv = subprocess.Popen(["ib_write_bw"] + args, stdout=outs[0], stderr=subprocess.STDOUT)
    # the client connects once: start it when the server listens (or died)
    wait_for(lambda: tcp_listening(port) or srv.poll() is not None, 30)
    cli = subprocess.Popen(["ib_write_bw"] + args + ["localhost"], stdout=outs[1],
                           stderr=subprocess.STDOUT)
    return srv, cli, outs


def tail(f):
    """perftest's complaint, or its last line."""
    f.seek(0)
    lines = [l.strip() for l in f.read().splitlines() if l.strip() and not l.startswith("-")]
    f.close()
    errs = [l for l in lines if any(w in l for w in ("rror", "ouldn't", "nable", "ailed"))]
    return (errs or lines or [""])[-1]


def healthy(ctl):
    """The device serves: a new context's ODP MR takes a remote write."""
    dev = ibdev()
    if not dev:
        return False
    try:
        ctx = Context(name=dev)
        pd = PD(ctx)
        buf = mmap.mmap(-1, 65536, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        mr = MR(pd, 65536, ACCESS, address=addr)
        data = os.urandom(512)
        r = ctl.request({"op": "write", "rkey": mr.rkey, "va": addr + 4096,
                         "data_hex": data.hex(), "timeout_ms": 5000})
        ok = r.get("status") == "success" and buf[4096:4096 + 512] == data
        mr.close()
        pd.close()
        ctx.close()
        buf.close()
        return ok
    except Exception:  # a device between two lives
        return False


def one_round(ctl, plans, rng, i, seconds):
    rule = draw(plans)
    r = {"round": i, "rule": rule}
    dev = wait_for(ibdev, 30)
    if not dev:
        r["error"] = "no ib_device at the start of the round"
        return r
    log0 = len(dmesg())
    viol0 = ctl.request({"op": "violations"}).get("count", 0)
    rec0 = counter(dev, "recoveries")
    srv, cli, outs = perftest(dev, seconds, 18700 + i % 100)
    churn = Churn(dev)
    plan = ctl.request({"op": "fault_plan", "set": rule})
    if not plan.get("ok", True):
        r["error"] = f"fault plan refused: {plan}"
    churn.run(ctl, rng, seconds)
    plan = ctl.request({"op": "fault_plan", "clear": True}).get("plan", {})
    churn.close()
    for p in (srv, cli):
        try:
            p.wait(timeout=seconds + 15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    t = time.monotonic()
    ok = wait_for(lambda: healthy(ctl), 40)
    r["healthy_after_s"] = round(time.monotonic() - t, 2) if ok else None
    r["writes"] = churn.writes
    r["max_madvise_s"] = round(churn.max_madvise, 3)
    r["perftest_exit"] = [srv.returncode, cli.returncode]
    r["perftest_tail"] = [tail(f) for f in outs]
    r["violations"] = ctl.request({"op": "violations"}).get("count", 0) - viol0
    d = ibdev()
    r["recoveries"] = (counter(d, "recoveries") - rec0) if d and counter(d, "recoveries") >= 0 \
        else None
    r["bad_dmesg"] = [l for l in dmesg()[log0:].splitlines() if any(b in l for b in BAD_DMESG)]
    problems = []
    if r.get("error"):
        problems.append(r["error"])
    if r["violations"]:
        problems.append(f"{r['violations']} oracle violations")
    if churn.max_madvise > INV_TIMEOUT_MS / 1000 + 3:
        problems.append(f"a MADV_DONTNEED took {churn.max_madvise:.1f} s")
    if not ok:
        problems.append("the device did not serve again within 40 s")
    if r["bad_dmesg"]:
        problems.append("kernel: " + "; ".join(r["bad_dmesg"])[:200])
    r["problems"] = problems
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    tap = Tap()
    ctl = Control.open(timeout=30.0)
    if not ctl.version().get("odp"):
        print("Bail out! the campaign needs the device's ODP on")
        return 1
    netup()
    param("inv_timeout_ms", INV_TIMEOUT_MS)
    param("cmd_timeout_ms", CMD_TIMEOUT_MS)
    # a campaign recovers the device on purpose, round after round
    param("recovery_burst", 1000)
    # the plans depend on the seed alone; the churn's draws on timing too
    plans = random.Random(a.seed)
    rng = random.Random(a.seed + 1)
    rounds = []
    for i in range(1, a.rounds + 1):
        try:
            r = one_round(ctl, plans, rng, i, a.seconds)
        except Exception as x:  # the round itself broke: a failure, and go on
            r = {"round": i, "problems": [f"{type(x).__name__}: {x}"]}
        rounds.append(r)
        rule = r.get("rule", {})
        desc = ", ".join(f"{k}={v}" for k, v in rule.items())
        pt = r.get("perftest_exit")
        pt = f"{pt}" + (f" ({r['perftest_tail'][1]})" if pt and any(pt) else "")
        detail = (f"writes {r.get('writes')}, max madvise {r.get('max_madvise_s')} s, "
                  f"perftest exit {pt}, recoveries {r.get('recoveries')}, "
                  f"serving again after {r.get('healthy_after_s')} s, violations "
                  f"{r.get('violations')}")
        tap(not r.get("problems"), f"round {i}: {desc}",
            "; ".join(r.get("problems", [])) or detail)
        try:
            netup()  # a recovered device's netdev keeps its address; make sure
        except RuntimeError:
            pass
    if os.path.isdir("/lab") and os.access("/lab", os.W_OK):
        with open("/lab/campaign.json", "w") as f:
            json.dump({"kernel": os.uname().release, "seed": a.seed, "seconds": a.seconds,
                       "rounds": rounds}, f, indent=1)
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
