# SPDX-License-Identifier: Apache-2.0 OR MIT
"""A stand-in for the device's control socket, for runs without the device.

Listens on a unix socket (argv[1]); for every line-delimited JSON request it
answers one JSON line: {"ok": true, "op": ..., "stub": true} plus, for
{"op": "version"}, a "version" field. Lets the guest control channel be
tested before (or without) the device.
"""
import json
import os
import socket
import sys


def serve(conn):
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                reply = {"ok": True, "op": req.get("op"), "stub": True}
                if req.get("op") == "version":
                    reply["version"] = "control-stub"
            except ValueError as e:
                reply = {"ok": False, "error": "bad request: %s" % e, "stub": True}
            conn.sendall(json.dumps(reply).encode() + b"\n")


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        with conn:
            serve(conn)


if __name__ == "__main__":
    main()
