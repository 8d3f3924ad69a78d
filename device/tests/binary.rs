// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The `odp-rnic` binary as scripts start it: sockets exist (owner-only)
//! when it is ready, the control socket serves several clients, bad input
//! gets error replies, and `odp-rnic ctl` works.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_odp-rnic");

struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str, extra: &[&str]) -> (Proc, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("odp-rnic-bin-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("rnic.sock");
    let ctl = dir.join("control.sock");
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .arg("--control")
        .arg(&ctl)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc { child, dir };
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // the control socket is created first
    assert!(ctl.exists());
    (p, sock, ctl)
}

fn ask(s: &mut BufReader<UnixStream>, line: &str) -> Value {
    writeln!(s.get_mut(), "{line}").unwrap();
    let mut r = String::new();
    s.read_line(&mut r).unwrap();
    serde_json::from_str(&r).unwrap()
}

fn client(p: &Path) -> BufReader<UnixStream> {
    BufReader::new(UnixStream::connect(p).unwrap())
}

#[test]
fn help() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("--socket") && s.contains("--fault-plan") && s.contains("ctl"));
    let o = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(BIN)
        .args(["--socket", "/nonexistent/x", "--fault-plan", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn sockets_and_control() {
    let (_p, sock, ctl) = start(
        "ctl",
        &["--odp", "off", "--fault-plan", "delay_inv_ack=10,count=2"],
    );
    for s in [&sock, &ctl] {
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", s.display());
    }
    let mut a = client(&ctl);
    let mut b = client(&ctl);
    let v = ask(&mut a, r#"{"op":"version","id":"x"}"#);
    assert_eq!(
        v,
        json!({"ok":true,"id":"x","protocol":1,"device":"odp-rnic","interface":"1.1","odp":false,
               "injector":{"gid":"::ffff:192.0.2.1","qpn_first":0xfff000,"qpn_last":0xffffff}})
    );
    // one bad request does not hurt the connection or the other client
    assert_eq!(ask(&mut b, "this is not json")["ok"], false);
    assert_eq!(ask(&mut b, r#"{"op":"frobnicate"}"#)["ok"], false);
    assert_eq!(ask(&mut b, r#"{"op":"write","rkey":"zz"}"#)["ok"], false);
    assert_eq!(
        ask(&mut a, r#"{"op":"counters"}"#)["counters"]["control_errors"],
        3
    );
    let plan = ask(&mut b, r#"{"op":"fault_plan"}"#);
    assert_eq!(plan["plan"]["rules"][0]["kind"], "delay_inv_ack");
    assert_eq!(plan["plan"]["rules"][0]["ms"], 10);
    let plan = ask(
        &mut b,
        r#"{"op":"fault_plan","set":"drop_fault,prob=0.5","seed":3}"#,
    );
    assert_eq!(plan["plan"]["rules"].as_array().unwrap().len(), 1);
    assert_eq!(
        ask(&mut b, r#"{"op":"fault_plan","set":{"kind":"nope"}}"#)["ok"],
        false
    );
    assert_eq!(
        ask(&mut b, r#"{"op":"fault_plan","clear":true}"#)["plan"]["rules"],
        json!([])
    );
    let r = ask(
        &mut a,
        r#"{"op":"write","rkey":"0x101","va":0,"data_hex":"00","timeout_ms":100}"#,
    );
    assert_eq!(r["status"], "fenced", "{r}");
    assert_eq!(ask(&mut a, r#"{"op":"violations"}"#)["count"], 0);
    assert!(ask(&mut a, r#"{"op":"trace","max":5}"#)["events"].is_array());
    // the CLI
    let o = Command::new(BIN)
        .args(["ctl", "--control"])
        .arg(&ctl)
        .arg("version")
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["device"], "odp-rnic");
    let o = Command::new(BIN)
        .args(["ctl", "--control"])
        .arg(&ctl)
        .args(["mr", r#"{"key": 5}"#])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let o = Command::new(BIN)
        .args(["ctl", "--control"])
        .arg(&ctl)
        .args(["fault_plan", "set=never_ack,count=2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["plan"]["rules"][0]["count"], 2);
    let o = Command::new(BIN)
        .args(["ctl", "--control"])
        .arg(&ctl)
        .args(["trace", "max=3"])
        .output()
        .unwrap();
    assert!(o.status.success());
    // a vfio-user client can connect, go away, and another one come
    for _ in 0..2 {
        let c = vfio_user::Client::new(&sock).unwrap();
        assert_eq!(c.region(0).unwrap().size, 0x10000);
        drop(c);
    }
}

#[test]
fn refuses_a_socket_in_use() {
    let (_p, sock, _ctl) = start("inuse", &[]);
    let o = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn fault_plan_kill_ends_the_process_at_an_invalidation() {
    let (mut p, sock, _ctl) = start("kill", &["--fault-plan", "kill,count=1"]);
    let mut c = vfio_user::Client::new(&sock).unwrap();
    let reg = |c: &mut vfio_user::Client, off: u64, v: u32| {
        let _ = c.region_write(0, off, &v.to_le_bytes());
    };
    reg(&mut c, 0x200, 1);
    reg(&mut c, 0x218, 1);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(137));
}
