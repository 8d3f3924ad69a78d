# SPDX-License-Identifier: Apache-2.0 OR MIT
"""The headline scenarios' results: TAP output turned into table rows and
JSON, and the table itself. Used in the guest by tests/guest/demo.sh and on
the host by scripts/demo (run inside the lab root).

  demo_report.py snapshot FILE
      writes {"version": ..., "counters": ...} from the device's control
      socket (tests/guest/lib/odprnic_ctl.py) to FILE; {"error": ...} when
      the socket does not answer
  demo_report.py parse WORKDIR SCENARIO...
      reads WORKDIR/SCENARIO.tap, .rc and the counter snapshots
      WORKDIR/counters-0.json, counters-1.json ... (one before the first
      scenario, one after each), prints one boot's JSON on stdout
  demo_report.py merge < JSON...
      stdin: scripts/vm's result.json followed by that boot's demo JSON,
      for each boot; prints the run's JSON ({"boots": [...], totals})
  demo_report.py table < JSON
      prints the table of a run's (or one boot's) JSON; exit 1 when any
      step failed or a scenario did not finish

The JSON (what later matrix tooling consumes), per boot:
  {"kernel", "odp": true|false, "scenarios": [{"name", "backing",
   "exit_status", "passed", "failed", "skipped", "bail_out",
   "counters": {"page_faults", "invalidations", "violations", ...}  (deltas),
   "steps": [{"n", "id", "mode", "backing", "event", "expected",
              "observed", "detail": [...], "result": "pass"|"fail"|"skip"}]}]}
"""

import json
import os
import re
import sys

# Counters shown in the table; the JSON keeps every counter's delta.
SHOWN = ("page_faults", "invalidations", "violations", "revocations")

BACKING = {
    "dax": "FS-DAX file, XFS on pmem",
    "pagecache": "page-cache file, XFS",
}

# The registration mode a scenario's steps use unless their description
# names another.
DEFAULT_MODE = {"odp": "odp", "revocable": "revocable"}


def scenario_backing(name):
    return BACKING["pagecache"] if name.startswith("pagecache") else BACKING["dax"]


def scenario_mode(name):
    for key, mode in DEFAULT_MODE.items():
        if key in name:
            return mode
    return "-"


def classify(desc, scenario):
    """(mode, event) of a step, from the words of its TAP description."""
    d = desc.lower()
    if "oracle" in d:
        return "-", "DMA oracle check"
    if "query_device" in d:
        return "odp", "capability query"
    if "mmapped" in d or "statx" in d:
        return "-", "file + mmap"
    mode = scenario_mode(scenario)
    if "pinned" in d:
        mode = "pinned"
    elif "odp" in d:
        mode = "odp"
    elif "revocable" in d:
        mode = "revocable"
    if "reflink" in d or "cow" in d.split():
        event = "reflink CoW"
    elif "truncate" in d:
        event = "truncate"
    elif "revoked" in d and "remote" not in d and "deregister" not in d:
        event = "truncate -> revoke"
    elif "remote write" in d:
        event = "remote write"
    elif "rdma write" in d:
        event = "QP RDMA WRITE"
    elif "application is told" in d:
        event = "QP access error"
    elif "deregister" in d:
        event = "deregistration"
    elif re.search(r"\bmr\b", d):
        event = "registration"
    else:
        event = "-"
    return mode, event


STEP_RE = re.compile(r"^(ok|not ok) (\d+) - (.*?)(?: # SKIP ?(.*))?$")
ID_RE = re.compile(r"^\(([a-z0-9]+)\) (.*)$")


def parse_tap(text, scenario):
    steps, bail = [], None
    for line in text.splitlines():
        m = STEP_RE.match(line)
        if m:
            status, n, desc, skip = m.groups()
            sid, expected = "", desc
            im = ID_RE.match(desc)
            if im:
                sid, expected = im.groups()
            mode, event = classify(desc, scenario)
            if status == "not ok":
                result = "fail"
            elif skip is not None:
                result = "skip"
            else:
                result = "pass"
            steps.append({"n": int(n), "id": sid, "mode": mode, "backing": scenario_backing(scenario),
                          "event": event, "expected": expected, "observed": "",
                          "detail": [], "result": result})
            if result == "skip":
                steps[-1]["observed"] = "skipped: " + (skip or "")
            continue
        if line.startswith("Bail out!"):
            bail = line[len("Bail out!"):].strip()
            continue
        if line.startswith("#   ") and steps:
            steps[-1]["detail"].append(line[4:])
            if not steps[-1]["observed"]:
                steps[-1]["observed"] = line[4:]
    return steps, bail


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def read_json(path):
    text = read(path)
    if text is None:
        return {"error": f"no {os.path.basename(path)}"}
    try:
        return json.loads(text)
    except ValueError as x:
        return {"error": f"{os.path.basename(path)}: {x}"}


def snapshot(path):
    try:
        import odprnic_ctl
        with odprnic_ctl.Control.open(timeout=30.0) as ctl:
            snap = {"version": ctl.version(), "counters": ctl.counters().get("counters", {})}
    except Exception as x:  # recorded: the table says the counters are missing
        snap = {"error": f"{type(x).__name__}: {x}"}
    with open(path, "w") as f:
        json.dump(snap, f)


def delta(before, after):
    a, b = after.get("counters"), before.get("counters")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    return {k: v - b.get(k, 0) for k, v in sorted(a.items()) if isinstance(v, int)}


def parse(work, scenarios):
    snaps = [read_json(os.path.join(work, f"counters-{i}.json")) for i in range(len(scenarios) + 1)]
    version = snaps[0].get("version") or {}
    boot = {"kernel": os.uname().release, "odp": version.get("odp"), "device": version,
            "scenarios": []}
    for i, name in enumerate(scenarios):
        text = read(os.path.join(work, f"{name}.tap"), "")
        rc = read(os.path.join(work, f"{name}.rc"), "").strip()
        steps, bail = parse_tap(text, name)
        sc = {"name": name, "backing": scenario_backing(name),
              "exit_status": int(rc) if rc.lstrip("-").isdigit() else None,
              "passed": sum(s["result"] == "pass" for s in steps),
              "failed": sum(s["result"] == "fail" for s in steps),
              "skipped": sum(s["result"] == "skip" for s in steps),
              "bail_out": bail, "counters": delta(snaps[i], snaps[i + 1]),
              "counters_error": snaps[i].get("error") or snaps[i + 1].get("error"),
              "steps": steps}
        boot["scenarios"].append(sc)
    return boot


def objects(text):
    dec, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def merge(docs):
    boots = []
    for vm, demo in zip(docs[0::2], docs[1::2]):
        odp = demo.get("odp")
        if not isinstance(odp, bool):
            odp = {"on": True, "off": False}.get(vm.get("odp"))
        boots.append({"vm": vm, **demo, "odp": odp})
    run = {"kernel": boots[0]["vm"].get("kernel") if boots else None, "boots": boots}
    for k in ("passed", "failed", "skipped"):
        run[k] = sum(sc[k] for b in boots for sc in b.get("scenarios", []))
    run["incomplete"] = sum(incomplete(b) for b in boots)
    return run


def incomplete(boot):
    """Scenarios that did not finish (bailed out, died, or never ran)."""
    n = 0 if boot.get("scenarios") else 1
    for sc in boot.get("scenarios", []):
        if sc.get("bail_out") or (sc.get("exit_status") and not sc.get("failed")) or not sc.get("steps"):
            n += 1
    return n


def odp_word(v):
    if v in (True, "on"):
        return "on"
    if v in (False, "off"):
        return "off"
    return "?"


def cut(s, n):
    s = str(s)
    return s if len(s) <= n else s[: n - 3] + "..."


def table(doc):
    boots = doc["boots"] if "boots" in doc else [doc]
    cols = [("step", 5), ("mode", 9), ("backing", 15), ("event", 18),
            ("expected", 52), ("observed", 48), ("result", 6)]
    short = {BACKING["dax"]: "FS-DAX/XFS/pmem", BACKING["pagecache"]: "pagecache/XFS"}
    passed = failed = skipped = bad = 0
    print("  ".join(name.ljust(w) for name, w in cols).rstrip())
    print("  ".join("-" * w for _, w in cols))
    for b in boots:
        vm = b.get("vm") or {}
        odp = odp_word(b.get("odp") if b.get("odp") is not None else vm.get("odp"))
        kernel = b.get("kernel") or vm.get("kernel") or "?"
        boot_s = vm.get("boot_to_command_s")
        boot = f", boot-to-command {boot_s}s" if boot_s is not None else ""
        if b.get("error"):
            print(f"device --odp {odp}, kernel {kernel}: {b['error']}")
        bad += incomplete(b)
        for sc in b.get("scenarios", []):
            print(f"{sc['name']}: device --odp {odp}, kernel {kernel}{boot}")
            for s in sc["steps"]:
                step = f"({s['id']})" if s["id"] else str(s["n"])
                res = s["result"].upper() if s["result"] == "fail" else s["result"]
                row = [step, s["mode"], short.get(s["backing"], s["backing"]), s["event"],
                       s["expected"], s["observed"], res]
                print("  ".join(cut(v, w).ljust(w) for v, (_, w) in zip(row, cols)).rstrip())
            c = sc.get("counters")
            if c is None:
                counters = f"unavailable ({sc.get('counters_error') or 'no snapshot'})"
            else:
                counters = ", ".join(f"{k.replace('_', ' ')} {c.get(k, 0)}" for k in SHOWN)
            line = (f"      {sc['passed']} passed, {sc['failed']} failed, {sc['skipped']} skipped; "
                    f"device counters: {counters}")
            if sc.get("bail_out"):
                line += f"; BAIL OUT: {sc['bail_out']}"
            elif sc.get("exit_status") and not sc.get("failed"):
                line += f"; exited with status {sc['exit_status']}"
            print(line)
            passed += sc["passed"]
            failed += sc["failed"]
            skipped += sc["skipped"]
    print(f"demo: {passed} passed, {failed} failed, {skipped} skipped"
          + (f", {bad} scenario(s) did not finish" if bad else ""))
    return 1 if failed or bad else 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "snapshot":
        snapshot(argv[2])
        return 0
    if len(argv) >= 3 and argv[1] == "parse":
        json.dump(parse(argv[2], argv[3:]), sys.stdout, indent=1)
        print()
        return 0
    if len(argv) == 2 and argv[1] == "merge":
        json.dump(merge(objects(sys.stdin.read())), sys.stdout, indent=1)
        print()
        return 0
    if len(argv) == 2 and argv[1] == "table":
        return table(json.loads(sys.stdin.read()))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
