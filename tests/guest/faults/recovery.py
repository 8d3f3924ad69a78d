#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Device recovery without a module reload (docs/driver.md, "Recovery").

For each way a device can fail under a running application, the driver must
take the ib_device down, tell the application, reset the device and bring a
new ib_device up by itself:

  device_error  the fault plan raises STATUS_FATAL at the next command; the
                device posts EVENT_DEVICE_ERROR
  reset         the device resets itself at the next command and forgets
                it; the driver notices when the command times out

In each scenario an application holds a context with a PD, a pinned MR, an
ODP MR, a CQ and a connected RC pair (queues and doorbells mapped into the
process), and an RDMA CM listener (rping -s) is up. Then:

  1 the verb that hit the failure returns within cmd_timeout_ms plus slack
  2 the context gets IBV_EVENT_DEVICE_FATAL; a later verb fails (ENODEV
    while the core disassociates the context, EIO once it has)
  3 a new ib_device of odp_rnic appears: recoveries +1, dmesg names the
    reason and the time the recovery took; the RDMA CM listener was told
    (rping exits)
  4 on the new ib_device an RC RDMA WRITE and an injected remote write
    into an ODP MR land byte-exact; the oracle stays clean
  5 the old objects close without hanging; dmesg has no warning or oops

Under load: ib_write_bw (with --odp when the device has ODP, for 12 s) streams
between two processes when the device reports an error (the test waits, up
to READY_S, for the server to listen and then for the device to have
written a MiB into the server's buffer; it assumes no speed): the new ib_device
comes up while they still run (recovery waits for no application), both end
by their own time limit, the oracle stays clean, and a new ib_write_bw pair
passes on the new ib_device. (An application that polls its CQ in user space
learns of the loss from IBV_EVENT_DEVICE_FATAL or a failing verb; until then
it polls a queue nothing writes, which is why the test does not ask the old
pair to end sooner.)

Then with recovery=0 the ib_device goes away and stays away, and a module
reload brings the device back; and a device that needs more than five
recoveries a minute is left down (recovery_failures +1) until a reload.

Output is TAP.
"""

import errno
import os
import subprocess
import sys
import time

import pyverbs.enums as e
from odprnic_app import (BAD_DMESG, MODULE, App, Tap, bounded, busy, counter, dmesg,
                         ibdev, param, tcp_listening, wait_for)
from odprnic_ctl import Control
from odprnic_verbs import netup
from pyverbs.device import Context
from pyverbs.pd import PD

CMD_TIMEOUT_MS = 1000
# How long a precondition may take to come about (a server listening, a pair
# streaming): nothing here assumes how fast the host is, only that it gets
# there within this bound.
READY_S = 120
tap = Tap()


def scenario(ctl, kind, ip, odp):
    dev = wait_for(ibdev, 20)
    if not dev:
        tap(False, f"{kind}: an odp_rnic ib_device is there")
        return False
    param("cmd_timeout_ms", CMD_TIMEOUT_MS)
    log0 = len(dmesg())
    rec0 = counter(dev, "recoveries")
    viol0 = ctl.request({"op": "violations"}).get("count", 0)
    app, rping, ok, detail = busy(dev, odp, ctl, ip)
    tap(ok, f"{kind}: the application's RC pair and ODP MR work, rping listens", detail)

    ctl.request({"op": "fault_plan", "set": {"kind": kind, "count": 1}})
    t = time.monotonic()
    done, r = bounded(lambda: PD(app.ctx), CMD_TIMEOUT_MS / 1000 + 10)
    took = time.monotonic() - t
    ctl.request({"op": "fault_plan", "clear": True})
    tap(done and isinstance(r, Exception),
        f"{kind}: the verb that hit the failure fails within {CMD_TIMEOUT_MS} ms plus slack",
        f"{took:.2f} s, {r!r}"[:300])

    ev = app.async_event(30)
    done, r = bounded(lambda: PD(app.ctx), 10)
    # ENODEV from the driver while the core disassociates the context
    # (the event comes first), EIO from the core once it has
    refused = done and isinstance(r, Exception) and \
        getattr(r, "error_code", None) in (errno.EIO, errno.ENODEV)
    tap(ev == e.IBV_EVENT_DEVICE_FATAL and refused,
        f"{kind}: the context gets IBV_EVENT_DEVICE_FATAL, later verbs fail (EIO or ENODEV)",
        f"event {ev} (DEVICE_FATAL {e.IBV_EVENT_DEVICE_FATAL}), then {r!r}"[:300])

    new = wait_for(lambda: (d := ibdev()) and counter(d, "recoveries") > rec0 and d, 30)
    log = dmesg()[log0:]
    said = [l.split("] ", 1)[-1] for l in log.splitlines() if "recover" in l]
    rping_gone = wait_for(lambda: rping.poll() is not None, 15)
    if not rping_gone:
        rping.kill()
    tap(bool(new) and any("recovered in" in l for l in said) and bool(rping_gone),
        f"{kind}: a new ib_device comes up by itself, dmesg says why, RDMA CM was told",
        f"{new}, recoveries {rec0} -> {counter(new, 'recoveries') if new else '?'}, "
        f"rping {'exited ' + str(rping.returncode) if rping_gone else 'still listening'}; "
        + " | ".join(said)[:400])
    if not new:
        app.close()
        return False

    fresh = App(new, odp)
    data = os.urandom(3000)
    ok, how = fresh.rdma_write(data)
    ok2, how2 = fresh.inject(ctl, os.urandom(4096))
    viol = ctl.request({"op": "violations"}).get("count", 0)
    tap(ok and ok2 and viol == viol0,
        f"{kind}: on the new ib_device an RDMA WRITE and an ODP remote write land byte-exact",
        f"write {how}, injected {how2}, violations {viol0} -> {viol}")
    closed = fresh.close() and app.close()
    bad = [l for l in dmesg()[log0:].splitlines() if any(b in l for b in BAD_DMESG)]
    tap(closed and not bad, f"{kind}: the old and new objects close; dmesg has no warning",
        "; ".join(bad)[:300] if bad else ("" if closed else "a close hung"))
    return True


def perftest_pair(dev, odp, extra, port):
    """An ib_write_bw server and, once the server listens (or has exited),
    its client."""
    args = ["-d", dev, "-x", "0", "-p", str(port), "-F"] + (["--odp"] if odp else []) + extra
    srv = subprocess.Popen(["ib_write_bw"] + args, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: tcp_listening(port) or srv.poll() is not None, READY_S)
    cli = subprocess.Popen(["ib_write_bw"] + args + ["localhost"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    return srv, cli


def written(ctl):
    """Bytes the device has written into MRs so far."""
    return ctl.counters().get("counters", {}).get("dma_bytes_written", 0)


def under_load(ctl, odp):
    """A device error while ib_write_bw streams."""
    dev = wait_for(ibdev, 20)
    param("cmd_timeout_ms", CMD_TIMEOUT_MS)
    log0 = len(dmesg())
    rec0 = counter(dev, "recoveries")
    viol0 = ctl.request({"op": "violations"}).get("count", 0)
    t0 = time.monotonic()
    base = written(ctl)
    srv, cli = perftest_pair(dev, odp, ["-D", "12"], 18601)
    # streaming: both run and the device has written a MiB into the
    # server's buffer (ib_write_bw sends 64 KiB messages)
    streaming = bool(wait_for(lambda: srv.poll() is not None or cli.poll() is not None or
                              written(ctl) - base >= 1 << 20, READY_S)) and \
        srv.poll() is None and cli.poll() is None
    ts = time.monotonic()
    moved = written(ctl) - base
    trigger(ctl, dev)
    t = time.monotonic()
    new = wait_for(lambda: (d := ibdev()) and counter(d, "recoveries") > rec0 and d, 30)
    up_after = time.monotonic() - t
    ended = wait_for(lambda: srv.poll() is not None and cli.poll() is not None,
                     max(1, 12 + 30 - (time.monotonic() - ts)))
    for p in (srv, cli):
        if p.poll() is None:
            p.kill()
        p.wait()
    viol = ctl.request({"op": "violations"}).get("count", 0)
    tap(streaming and bool(new) and bool(ended) and viol == viol0,
        f"under load: a device error under ib_write_bw{' --odp' if odp else ''}: a new "
        "ib_device comes up while it runs, it ends by its own limit, the oracle is clean",
        f"streaming before {streaming} ({moved >> 10} KiB written {ts - t0:.1f} s after "
        f"the start), {new} up {up_after:.1f} s after the error, the pair "
        f"ended {time.monotonic() - t0:.1f} s after it started (exit {srv.returncode}/"
        f"{cli.returncode}), violations {viol0} -> {viol}")
    if not new:
        return
    netup()
    srv, cli = perftest_pair(new, odp, ["-n", "200"], 18602)
    try:
        out, _ = cli.communicate(timeout=120)
        srv.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        srv.kill()
        cli.kill()
        out = "timed out"
    # the result line follows the "#bytes ..." header
    lines = out.strip().splitlines()
    hdr = [i for i, l in enumerate(lines) if l.strip().startswith("#bytes")]
    result = " ".join(lines[hdr[0] + 1].split()) if hdr and hdr[0] + 1 < len(lines) else \
        (lines[-1] if lines else "no output")
    bad = [l for l in dmesg()[log0:].splitlines() if any(b in l for b in BAD_DMESG)]
    tap(cli.returncode == 0 and srv.returncode == 0 and not bad,
        "under load: a new ib_write_bw pair passes on the new ib_device; dmesg has no warning",
        result + ("; " + "; ".join(bad)[:300] if bad else ""))


def reload():
    rm = subprocess.run(["rmmod", "odp_rnic"], capture_output=True, text=True)
    ins = subprocess.run(["insmod", MODULE], capture_output=True, text=True)
    dev = wait_for(ibdev, 20)
    return rm.returncode == 0 and ins.returncode == 0 and dev is not None, \
        f"rmmod {rm.returncode} {rm.stderr.strip()}, insmod {ins.returncode} " \
        f"{ins.stderr.strip()}, {dev}"


def trigger(ctl, dev):
    """Raise a device error under a context of dev; the context's verb result."""
    ctx = Context(name=dev)
    ctl.request({"op": "fault_plan", "set": {"kind": "device_error", "count": 1}})
    done, r = bounded(lambda: PD(ctx), CMD_TIMEOUT_MS / 1000 + 10)
    ctl.request({"op": "fault_plan", "clear": True})
    bounded(ctx.close, 10)
    return done


def stays_down(ctl):
    """recovery=0: the ib_device goes and stays gone; a reload brings it back."""
    dev = wait_for(ibdev, 20)
    param("cmd_timeout_ms", CMD_TIMEOUT_MS)
    param("recovery", 0)
    done = trigger(ctl, dev)
    gone = wait_for(lambda: ibdev() is None, 15)
    time.sleep(3)
    still = ibdev() is None
    ok, detail = reload()
    tap(done and bool(gone) and still and ok,
        "recovery=0: the ib_device goes away and stays away; a reload brings it back",
        f"gone {bool(gone)}, still gone after 3 s {still}, {detail}")


def burst(ctl):
    """Six device errors within a minute: the sixth recovery gives up."""
    param("cmd_timeout_ms", CMD_TIMEOUT_MS)
    param("recovery_burst", 5)
    t = time.monotonic()
    seen = []
    for i in range(6):
        dev = wait_for(ibdev, 20)
        if not dev:
            break
        seen.append(dev)
        if not trigger(ctl, dev):
            break
        if i < 5:
            wait_for(lambda: (d := ibdev()) and counter(d, "recoveries") >= i + 1, 20)
    gone = wait_for(lambda: ibdev() is None, 15)
    log = dmesg()
    said = "more than 5 recoveries within 60 s" in log
    ok, detail = reload()
    tap(len(seen) == 6 and bool(gone) and said and ok,
        "six device errors within a minute: five recoveries, then the device stays down until a reload",
        f"{len(seen)} triggers in {time.monotonic() - t:.1f} s, down {bool(gone)}, "
        f"dmesg says so {said}, {detail}")


def main():
    ctl = Control.open()
    try:
        _, _, ip = netup()
    except RuntimeError as x:
        print(f"not ok 1 - the device's netdev is up: {x}")
        return 1
    odp = bool(ctl.version().get("odp"))
    if not odp:
        print("# the device's ODP is off: the ODP MR is left out")
    # the tests before this one may have recovered the device already
    param("recovery_burst", 100)
    for kind in ("device_error", "reset"):
        if not scenario(ctl, kind, ip, odp):
            break
        netup()
    under_load(ctl, odp)
    stays_down(ctl)
    burst(ctl)
    netup()
    return tap.finish()


if __name__ == "__main__":
    sys.exit(main())
