// SPDX-License-Identifier: Apache-2.0 OR MIT
//! `odp-rnic`: the device process, and `odp-rnic ctl` for humans.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use odp_rnic::control::{self, Control};
use odp_rnic::device::{Device, DeviceConfig};
use odp_rnic::fault_plan::{FaultPlan, FaultSpec};
use odp_rnic::server;

const USAGE: &str = "\
usage: odp-rnic --socket PATH [--odp on|off] [--control PATH] [--fault-plan SPEC]... [--log-level LEVEL]
       odp-rnic ctl --control PATH OP [JSON-ARGS | KEY=VALUE...]
       odp-rnic --help

An emulated RDMA NIC with switchable On-Demand Paging, served over vfio-user.

  --socket PATH       vfio-user socket to listen on (created; must not be in use)
  --odp on|off        ODP capabilities (default on)
  --control PATH      control socket (line-delimited JSON, docs/control.md)
  --fault-plan SPEC   KIND[=ARG][,count=N][,prob=P][,seed=S]; repeatable. KIND is one of
                      delay_inv_ack=MS, never_ack, drop_fault, dup_fault, fail_resume,
                      fail_dma, device_error, reset, kill, rogue_record, rogue_write
  --log-level LEVEL   error, warn, info (default), debug, trace; RUST_LOG overrides

ctl sends {\"op\": OP, ...ARGS} to the control socket and prints the reply, e.g.
  odp-rnic ctl --control /run/odp.ctl write rkey=0x101 va=0 data_hex=abcd
  odp-rnic ctl --control /run/odp.ctl fault_plan '{\"set\": \"delay_inv_ack=200,count=3\"}'
";

struct Args {
    socket: PathBuf,
    odp: bool,
    control: Option<PathBuf>,
    plan: FaultPlan,
    log_level: String,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut socket = None;
    let mut odp = true;
    let mut control = None;
    let mut plan = FaultPlan::default();
    let mut log_level = "info".to_string();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--control" => control = Some(PathBuf::from(value()?)),
            "--odp" => {
                odp = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--odp takes on or off, not `{v}`")),
                }
            }
            "--fault-plan" => {
                let spec: FaultSpec = value()?.parse().map_err(|e| format!("--fault-plan: {e}"))?;
                if let Some(s) = spec.seed {
                    plan.seed(s);
                }
                plan.add(spec.rule);
            }
            "--log-level" => log_level = value()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        odp,
        control,
        plan,
        log_level,
    })
}

/// Binds a Unix socket only its owner can use. A stale socket file (nobody
/// listening) is replaced; anything else at `path` is an error.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let live = std::os::unix::net::UnixStream::connect(path).is_ok();
        if meta.file_type().is_socket() && !live {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
    }
    // Bound and listening under a temporary name, then renamed: whoever
    // waits for `path` to appear (scripts/vm before starting QEMU, tests)
    // can connect as soon as it does; a bind straight to `path` leaves a
    // moment in which the file exists and connect() is refused.
    let name = path
        .file_name()
        .map_or("socket".into(), |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    // SAFETY: umask only changes this process's file-creation mask; it is
    // restored right after the bind, before any other thread exists.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(&tmp);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

/// Builds a request's arguments from `ctl` words: one JSON object, or
/// `key=value` words (a value that parses as JSON is taken as such, e.g.
/// numbers; anything else is a string, so `rkey=0x101` works).
fn ctl_args(words: &[String]) -> Result<serde_json::Value, String> {
    if let [one] = words {
        if one.trim_start().starts_with('{') {
            return match serde_json::from_str(one) {
                Ok(v @ serde_json::Value::Object(_)) => Ok(v),
                _ => Err("arguments must be a JSON object".into()),
            };
        }
    }
    let mut m = serde_json::Map::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("`{w}` is neither a JSON object nor key=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        m.insert(k.to_string(), v);
    }
    Ok(serde_json::Value::Object(m))
}

fn ctl(mut it: impl Iterator<Item = String>) -> ExitCode {
    let mut path = None;
    let mut op = None;
    let mut words = Vec::new();
    while let Some(a) = it.next() {
        if a == "--control" {
            path = it.next();
        } else if let Some(p) = a.strip_prefix("--control=") {
            path = Some(p.to_string());
        } else if op.is_none() {
            op = Some(a);
        } else {
            words.push(a);
        }
    }
    let (Some(path), Some(op)) = (path, op) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut req = match ctl_args(&words) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("odp-rnic ctl: {e}");
            return ExitCode::from(2);
        }
    };
    req["op"] = serde_json::Value::String(op);
    match control::request(Path::new(&path), &req) {
        Ok(reply) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply).unwrap_or_default()
            );
            if reply["ok"] == serde_json::Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("odp-rnic ctl: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("ctl") {
        argv.next();
        return ctl(argv);
    }
    let all: Vec<String> = argv.collect();
    if all.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(all.into_iter()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("odp-rnic: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .parse_filters(&args.log_level)
        .parse_env("RUST_LOG")
        .init();
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));

    // control first: scripts start QEMU when the vfio-user socket appears
    let control = match args.control.as_deref().map(bind_private).transpose() {
        Ok(c) => c,
        Err(e) => {
            log::error!("control socket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match bind_private(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            log::error!("vfio-user socket {}: {e}", args.socket.display());
            return ExitCode::FAILURE;
        }
    };
    let dev = match Device::new(DeviceConfig { odp: args.odp }, args.plan) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot start the device: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(l) = control {
        let c = Arc::new(Control::new(dev.clone()));
        if let Err(e) = std::thread::Builder::new()
            .name("odp-rnic-control".into())
            .spawn(move || c.serve(l))
        {
            log::error!("cannot start the control thread: {e}");
            return ExitCode::FAILURE;
        }
    }
    log::info!(
        "ready: vfio-user on {}, control on {}, odp {}",
        args.socket.display(),
        args.control
            .as_deref()
            .map_or("(none)".into(), |p| p.display().to_string()),
        if args.odp { "on" } else { "off" }
    );
    let r = server::serve(listener, dev);
    let _ = std::fs::remove_file(&args.socket);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
