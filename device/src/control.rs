// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The control socket (`docs/control.md`, protocol 1): line-delimited JSON
//! over a Unix socket (mode 0600), several clients at once. One bad request
//! gets `{"ok":false,"error":...}` and never takes the device down.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::counters::Counters;
use crate::datapath::{PeerReply, PeerRequest, SendOutcome};
use crate::device::Device;
use crate::engine::EngineMsg;
use crate::fault_plan::{FaultRule, FaultSpec};
use crate::hw;
use crate::port::{InjectorPort, RemoteOp, RemoteOpKind, RemoteStatus, MAX_INJECT_LEN};

/// Control protocol version.
pub const PROTOCOL: u32 = 1;
/// Longest request line accepted, in bytes.
pub const MAX_LINE: u64 = 64 << 20;
/// Default `timeout_ms` of injected operations.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// Why a request failed; the message goes into the error reply.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not JSON, or not an object.
    #[error("request is not a JSON object: {0}")]
    BadJson(String),
    /// No `op` or an unknown one.
    #[error("unknown op `{0}`")]
    UnknownOp(String),
    /// A field is missing or has the wrong type.
    #[error("bad or missing field `{0}`")]
    BadField(&'static str),
    /// The request was valid but cannot be served.
    #[error("{0}")]
    Failed(String),
}

/// The control server.
pub struct Control {
    dev: Arc<Device>,
    injector: Arc<InjectorPort>,
}

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

fn field_u64(req: &Map<String, Value>, name: &'static str) -> Result<u64, ControlError> {
    req.get(name)
        .and_then(num)
        .ok_or(ControlError::BadField(name))
}

fn field_u32(req: &Map<String, Value>, name: &'static str) -> Result<u32, ControlError> {
    u32::try_from(field_u64(req, name)?).map_err(|_| ControlError::BadField(name))
}

fn opt_u64(req: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, ControlError> {
    match req.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => num(v).map(Some).ok_or(ControlError::BadField(name)),
    }
}

/// The bytes of a `data_hex` or `pattern` field.
fn payload(req: &Map<String, Value>) -> Result<Vec<u8>, ControlError> {
    let data = if let Some(h) = req.get("data_hex") {
        h.as_str()
            .and_then(from_hex)
            .ok_or(ControlError::BadField("data_hex"))?
    } else if let Some(Value::Object(p)) = req.get("pattern") {
        let byte = p
            .get("byte")
            .and_then(num)
            .and_then(|b| u8::try_from(b).ok())
            .ok_or(ControlError::BadField("pattern.byte"))?;
        let len = p
            .get("length")
            .and_then(num)
            .filter(|l| *l <= MAX_INJECT_LEN)
            .ok_or(ControlError::BadField("pattern.length"))?;
        vec![byte; len as usize]
    } else {
        return Err(ControlError::BadField("data_hex"));
    };
    if data.len() as u64 > MAX_INJECT_LEN {
        return Err(ControlError::BadField("data_hex"));
    }
    Ok(data)
}

/// Decodes a hex string (whitespace ignored).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let h = (p[0] as char).to_digit(16)?;
            let l = (p[1] as char).to_digit(16)?;
            Some((h * 16 + l) as u8)
        })
        .collect()
}

/// Encodes bytes as lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Control {
    /// A control server for `dev`.
    pub fn new(dev: Arc<Device>) -> Self {
        Control {
            dev,
            injector: Arc::new(InjectorPort::default()),
        }
    }

    /// Accepts clients forever, one thread each.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("odp-rnic-control".into())
                        .spawn(move || me.client(stream));
                    if let Err(e) = spawned {
                        log::error!("control: cannot start a client thread: {e}");
                    }
                }
                Err(e) => {
                    log::error!("control accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn client(&self, stream: UnixStream) {
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = Vec::new();
            match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE {
                let _ = writeln!(out, "{}", json!({"ok": false, "error": "request too long"}));
                return;
            }
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            let reply = self.handle_line(&text);
            if writeln!(out, "{reply}").is_err() {
                return;
            }
        }
    }

    /// Handles one request line; returns the reply object.
    pub fn handle_line(&self, line: &str) -> Value {
        let counters = &self.dev.shared.counters;
        Counters::inc(&counters.control_requests);
        let parsed: Result<Map<String, Value>, ControlError> = serde_json::from_str::<Value>(line)
            .map_err(|e| ControlError::BadJson(e.to_string()))
            .and_then(|v| match v {
                Value::Object(m) => Ok(m),
                _ => Err(ControlError::BadJson("not an object".into())),
            });
        let id = parsed.as_ref().ok().and_then(|m| m.get("id").cloned());
        let result = parsed.and_then(|req| self.handle(&req));
        let mut reply = match result {
            Ok(mut m) => {
                m.insert("ok".into(), Value::Bool(true));
                m
            }
            Err(e) => {
                Counters::inc(&counters.control_errors);
                let mut m = Map::new();
                m.insert("ok".into(), Value::Bool(false));
                m.insert("error".into(), Value::String(e.to_string()));
                m
            }
        };
        if let Some(id) = id {
            reply.insert("id".into(), id);
        }
        Value::Object(reply)
    }

    fn handle(&self, req: &Map<String, Value>) -> Result<Map<String, Value>, ControlError> {
        let op = req
            .get("op")
            .and_then(Value::as_str)
            .ok_or(ControlError::BadField("op"))?;
        let sh = &self.dev.shared;
        let v = match op {
            "version" => json!({
                "protocol": PROTOCOL,
                "device": "odp-rnic",
                "interface": format!("{}.{}", crate::hw::VERSION_MAJOR, crate::hw::VERSION_MINOR),
                "odp": sh.config.odp,
                "injector": {
                    "gid": std::net::Ipv6Addr::from(crate::hw::INJECTOR_GID).to_string(),
                    "qpn_first": crate::hw::QPN_INJECTOR_FIRST,
                    "qpn_last": crate::hw::QPN_INJECTOR_LAST,
                },
            }),
            "counters" => {
                let m: Map<String, Value> = sh
                    .counters
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({ "counters": m })
            }
            "violations" => {
                let o = sh.oracle.lock().unwrap_or_else(|e| e.into_inner());
                json!({ "count": o.count(), "violations": o.records() })
            }
            "write" | "read" | "cmp_swp" | "fetch_add" => return self.inject(op, req),
            "mr" => {
                let key = field_u32(req, "key")?;
                let (tx, rx) = sync_channel(1);
                self.dev
                    .engine_tx
                    .send(EngineMsg::QueryMr { key, reply: tx })
                    .map_err(|_| ControlError::Failed("engine is gone".into()))?;
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(Some(info)) => serde_json::to_value(info)
                        .map_err(|e| ControlError::Failed(e.to_string()))?,
                    Ok(None) => {
                        return Err(ControlError::Failed(format!("no MR with key {key:#x}")))
                    }
                    Err(_) => return Err(ControlError::Failed("engine did not answer".into())),
                }
            }
            "fault_plan" => self.fault_plan(req)?,
            "send" => return self.peer_send(req),
            "peer_sent" => {
                let max = opt_u64(req, "max")?.unwrap_or(u64::MAX);
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                match self.peer(PeerRequest::Take(max))? {
                    PeerReply::Messages(m, dropped) => json!({ "messages": m, "dropped": dropped }),
                    _ => return Err(ControlError::Failed("unexpected reply".into())),
                }
            }
            "peer_memory" => {
                let r = if let Some(size) = opt_u64(req, "size")? {
                    let size = usize::try_from(size).map_err(|_| ControlError::BadField("size"))?;
                    self.peer(PeerRequest::Resize(size))?
                } else if let Some(h) = req.get("data_hex") {
                    let d = h
                        .as_str()
                        .and_then(from_hex)
                        .ok_or(ControlError::BadField("data_hex"))?;
                    self.peer(PeerRequest::Write(field_u64(req, "offset")?, d))?
                } else {
                    let len = field_u64(req, "length")?;
                    self.peer(PeerRequest::Read(field_u64(req, "offset")?, len))?
                };
                match r {
                    PeerReply::Data(Ok(d)) => json!({ "data_hex": to_hex(&d) }),
                    PeerReply::Data(Err(e)) => return Err(ControlError::Failed(e)),
                    _ => return Err(ControlError::Failed("unexpected reply".into())),
                }
            }
            "trace" => {
                let max = opt_u64(req, "max")?.unwrap_or(100);
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                json!({ "events": sh.trace.recent(max) })
            }
            other => return Err(ControlError::UnknownOp(other.to_string())),
        };
        match v {
            Value::Object(m) => Ok(m),
            _ => Ok(Map::new()),
        }
    }

    fn fault_plan(&self, req: &Map<String, Value>) -> Result<Value, ControlError> {
        let sh = &self.dev.shared;
        let mut rules = Vec::new();
        let parse_one = |v: &Value| -> Result<FaultRule, ControlError> {
            let rule = match v {
                Value::String(s) => {
                    s.parse::<FaultSpec>()
                        .map_err(|e| ControlError::Failed(e.to_string()))?
                        .rule
                }
                other => serde_json::from_value::<FaultRule>(other.clone())
                    .map_err(|e| ControlError::Failed(format!("bad fault rule: {e}")))?,
            };
            rule.validate()
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            Ok(rule)
        };
        // "plan" is the guest client's spelling of "set"
        for name in ["set", "plan", "add"] {
            match req.get(name) {
                None => {}
                Some(Value::Array(a)) => {
                    for v in a {
                        rules.push((name, parse_one(v)?));
                    }
                }
                Some(v) => rules.push((name, parse_one(v)?)),
            }
        }
        let seed = opt_u64(req, "seed")?;
        let clear = req.get("clear").and_then(Value::as_bool).unwrap_or(false);
        let mut plan = sh.faults.lock().unwrap_or_else(|e| e.into_inner());
        if clear || req.contains_key("set") || req.contains_key("plan") {
            plan.clear();
        }
        if let Some(s) = seed {
            plan.seed(s);
        }
        for (_, r) in rules {
            log::info!("fault plan: {:?}", r);
            plan.add(r);
        }
        let v = json!({ "plan": &*plan });
        drop(plan);
        let _ = self.dev.engine_tx.send(EngineMsg::Wake);
        Ok(v)
    }

    fn peer(&self, req: PeerRequest) -> Result<PeerReply, ControlError> {
        let (tx, rx) = sync_channel(1);
        self.dev
            .engine_tx
            .send(EngineMsg::Peer { req, reply: tx })
            .map_err(|_| ControlError::Failed("engine is gone".into()))?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| ControlError::Failed("engine did not answer".into()))
    }

    fn src_qpn(req: &Map<String, Value>) -> Result<u32, ControlError> {
        let q = opt_u64(req, "src_qpn")?.unwrap_or(u64::from(hw::QPN_INJECTOR_FIRST));
        u32::try_from(q)
            .ok()
            .filter(|q| (hw::QPN_INJECTOR_FIRST..=hw::QPN_INJECTOR_LAST).contains(q))
            .ok_or(ControlError::BadField("src_qpn"))
    }

    /// A SEND from the injector to a guest QP; waits (bounded) while the
    /// QP has no receive buffer or a page fault is being resolved.
    fn peer_send(&self, req: &Map<String, Value>) -> Result<Map<String, Value>, ControlError> {
        let dst = field_u32(req, "qpn")?;
        let src = Self::src_qpn(req)?;
        let data = payload(req)?;
        let imm = match req.get("imm_hex") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(from_hex)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .ok_or(ControlError::BadField("imm_hex"))?,
            ),
        };
        let qkey = opt_u64(req, "qkey")?
            .map(|q| u32::try_from(q).map_err(|_| ControlError::BadField("qkey")))
            .transpose()?;
        let timeout = Duration::from_millis(
            opt_u64(req, "timeout_ms")?
                .unwrap_or(DEFAULT_TIMEOUT_MS)
                .min(3_600_000),
        );
        let start = std::time::Instant::now();
        let mut pause = Duration::from_micros(100);
        let status = loop {
            let r = self.peer(PeerRequest::Send {
                src,
                dst,
                data: data.clone(),
                imm,
                qkey,
            })?;
            let PeerReply::Send(o) = r else {
                return Err(ControlError::Failed("unexpected reply".into()));
            };
            match o {
                SendOutcome::Delivered => break ("success", true),
                SendOutcome::Dropped => break ("success", false),
                SendOutcome::Invalid => break ("remote_invalid_request", false),
                SendOutcome::AccessError => break ("remote_access_error", false),
                SendOutcome::Wait | SendOutcome::Fenced if start.elapsed() < timeout => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                SendOutcome::Fenced => break ("fenced", false),
                SendOutcome::Wait => break ("timeout", false),
            }
        };
        let mut m = Map::new();
        m.insert("status".into(), json!(status.0));
        m.insert("delivered".into(), json!(status.1));
        Ok(m)
    }

    fn inject(
        &self,
        op: &str,
        req: &Map<String, Value>,
    ) -> Result<Map<String, Value>, ControlError> {
        let rkey = field_u32(req, "rkey")?;
        let va = field_u64(req, "va")?;
        let dst_qpn = opt_u64(req, "qpn")?
            .map(|q| u32::try_from(q).map_err(|_| ControlError::BadField("qpn")))
            .transpose()?;
        let timeout_ms = opt_u64(req, "timeout_ms")?.unwrap_or(DEFAULT_TIMEOUT_MS);
        let src_qpn = Self::src_qpn(req)?;
        let kind = if op == "write" {
            RemoteOpKind::Write(payload(req)?)
        } else if op == "cmp_swp" {
            RemoteOpKind::CmpSwp {
                compare: field_u64(req, "compare")?,
                swap: field_u64(req, "swap")?,
            }
        } else if op == "fetch_add" {
            RemoteOpKind::FetchAdd(field_u64(req, "add")?)
        } else {
            let len = field_u64(req, "length")?;
            if len > MAX_INJECT_LEN {
                return Err(ControlError::BadField("length"));
            }
            RemoteOpKind::Read(len)
        };
        let rop = RemoteOp {
            src_qpn,
            dst_qpn,
            rkey,
            va,
            kind,
        };
        let r = self.injector.submit(
            &self.dev.engine_tx,
            rop,
            Duration::from_millis(timeout_ms.min(3_600_000)),
        );
        let mut m = Map::new();
        m.insert(
            "status".into(),
            serde_json::to_value(r.status).unwrap_or(Value::Null),
        );
        m.insert("faults".into(), json!(r.faults));
        if op == "read" {
            let data = if r.status == RemoteStatus::Success {
                to_hex(&r.data)
            } else {
                String::new()
            };
            m.insert("data_hex".into(), Value::String(data));
        }
        if op == "cmp_swp" || op == "fetch_add" {
            let original = <[u8; 8]>::try_from(r.data.as_slice())
                .ok()
                .filter(|_| r.status == RemoteStatus::Success)
                .map(u64::from_le_bytes);
            m.insert("original".into(), json!(original));
        }
        Ok(m)
    }
}

/// Sends one request to a control socket and returns the reply line.
pub fn request(path: &std::path::Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(from_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(to_hex(&[1, 0xab]), "01ab");
    }

    #[test]
    fn numbers() {
        assert_eq!(num(&json!(5)), Some(5));
        assert_eq!(num(&json!("0x10")), Some(16));
        assert_eq!(num(&json!("17")), Some(17));
        assert_eq!(num(&json!(-1)), None);
        assert_eq!(num(&json!([1])), None);
    }
}
