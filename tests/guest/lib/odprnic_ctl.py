# SPDX-License-Identifier: Apache-2.0 OR MIT
"""Guest-side client of the odp-rnic device's control socket.

The device's control socket (docs/control.md) speaks line-delimited JSON:
one request object per line, one reply object per line. scripts/vm wires a
virtio-serial port named ``org.odp-rnic.control`` to that socket; in the
guest it appears as ``/dev/vportNpM`` (the port whose
``/sys/class/virtio-ports/vportNpM/name`` is ``org.odp-rnic.control``; the
boot also links it as ``/dev/virtio-ports/org.odp-rnic.control`` and exports
``$ODP_RNIC_CONTROL``).

Stable API (guest tests depend on it)::

    from odprnic_ctl import Control, ControlError

    with Control.open() as ctl:           # finds the port (or Control.open(path))
        reply = ctl.request({"op": "version"})   # any request -> reply dict
        ctl.version()                      # {"op": "version"}
        ctl.counters()                     # {"op": "counters"}
        ctl.violations()                   # {"op": "violations"}
        ctl.inject_write(rkey, va, b"data", qpn=None)
                                           # {"op": "write", "rkey", "va", "data_hex"[, "qpn"]}
        ctl.inject_read(rkey, va, length, qpn=None)
                                           # {"op": "read", "rkey", "va", "length"[, "qpn"]}
                                           # reply "data_hex" is decoded to reply["data"] (bytes)
        ctl.mr(key)                        # {"op": "mr", "key"}
        ctl.set_fault_plan(rules, seed=None)
                                           # {"op": "fault_plan", "set": RULE | [RULE...][, "seed"]}
        ctl.clear_fault_plan()             # {"op": "fault_plan", "clear": true}

``request`` raises ``ControlError`` when the reply has ``"ok": false`` (the
reply's ``error`` is the message) and ``TimeoutError`` when no reply line
arrives within ``timeout`` seconds (default 10). Replies are returned as
dicts, unchanged apart from the ``data`` convenience field. The helpers only
build requests; the operation names and fields are defined by
docs/control.md, and ``request`` passes anything else through, so new
operations need no change here.

Command line, for shell tests::

    python3 -m odprnic_ctl '{"op": "version"}'   # prints the reply line
"""

import glob
import json
import os
import select
import sys

PORT_NAME = "org.odp-rnic.control"

__all__ = ["Control", "ControlError", "find_port", "PORT_NAME"]


class ControlError(Exception):
    """The device answered a request with "ok": false."""

    def __init__(self, reply):
        super().__init__(reply.get("error", json.dumps(reply)))
        self.reply = reply


def find_port():
    """Path of the control port's character device, or None."""
    env = os.environ.get("ODP_RNIC_CONTROL")
    if env and os.path.exists(env):
        return env
    for name in glob.glob("/sys/class/virtio-ports/*/name"):
        try:
            with open(name) as f:
                if f.read().strip() == PORT_NAME:
                    return "/dev/" + os.path.basename(os.path.dirname(name))
        except OSError:
            continue
    return None


class Control:
    """One open control channel. Use Control.open() to create it."""

    def __init__(self, fd, path, timeout=10.0):
        self.fd = fd
        self.path = path
        self.timeout = timeout
        self._buf = b""

    @classmethod
    def open(cls, path=None, timeout=10.0):
        path = path or find_port()
        if not path:
            raise FileNotFoundError(
                "no virtio-serial port named %s (scripts/vm wires it when "
                "the device runs with --control)" % PORT_NAME)
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        return cls(fd, path, timeout)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the generic request layer

    def _write(self, data):
        while data:
            select.select([], [self.fd], [], self.timeout)
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                continue
            data = data[n:]

    def _readline(self):
        while b"\n" not in self._buf:
            r, _, _ = select.select([self.fd], [], [], self.timeout)
            if not r:
                raise TimeoutError("no reply on %s within %ss" % (self.path, self.timeout))
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                # virtio-serial reads 0 while the host side is not connected.
                select.select([], [], [], 0.05)
                continue
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def request(self, req):
        """Sends one request (a dict) and returns the reply (a dict)."""
        self._write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
        while True:
            line = self._readline().strip()
            if line:
                break
        reply = json.loads(line)
        if isinstance(reply, dict) and reply.get("ok") is False:
            raise ControlError(reply)
        if isinstance(reply, dict) and isinstance(reply.get("data_hex"), str):
            reply["data"] = bytes.fromhex(reply["data_hex"])
        return reply

    # -- thin helpers

    def version(self):
        return self.request({"op": "version"})

    def counters(self):
        return self.request({"op": "counters"})

    def violations(self):
        return self.request({"op": "violations"})

    def inject_write(self, rkey, va, data, qpn=None):
        req = {"op": "write", "rkey": rkey, "va": va, "data_hex": bytes(data).hex()}
        if qpn is not None:
            req["qpn"] = qpn
        return self.request(req)

    def inject_read(self, rkey, va, length, qpn=None):
        req = {"op": "read", "rkey": rkey, "va": va, "length": length}
        if qpn is not None:
            req["qpn"] = qpn
        return self.request(req)

    def mr(self, key):
        return self.request({"op": "mr", "key": key})

    def set_fault_plan(self, rules, seed=None):
        """Replaces the device's fault plan: rules is a RULE or a list of them."""
        req = {"op": "fault_plan", "set": rules}
        if seed is not None:
            req["seed"] = seed
        return self.request(req)

    def clear_fault_plan(self):
        return self.request({"op": "fault_plan", "clear": True})


def main(argv):
    if len(argv) != 2:
        print("usage: python3 -m odprnic_ctl 'JSON-REQUEST'", file=sys.stderr)
        return 2
    with Control.open() as ctl:
        try:
            reply = ctl.request(json.loads(argv[1]))
        except ControlError as e:
            print(json.dumps(e.reply))
            return 1
    reply.pop("data", None)
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
