// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Ports: how remote operations reach the device's engine and how their
//! results leave it. The engine never knows which port an operation came
//! from; it answers through the `Port` it was handed. Today there is one
//! port, the wire injector (remote operations injected through the control
//! socket, from the pseudo-peer whose QPNs are
//! `QPN_INJECTOR_FIRST..=QPN_INJECTOR_LAST`); loopback between local QPs and
//! a RoCEv2 Ethernet port will be further implementations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::EngineMsg;
use crate::hw;

/// What a remote operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteOpKind {
    /// RDMA WRITE of these bytes.
    Write(Vec<u8>),
    /// RDMA READ of this many bytes.
    Read(u64),
    /// 8-byte atomic compare and swap; the result carries the original.
    CmpSwp {
        /// Value expected.
        compare: u64,
        /// Value stored if it matched.
        swap: u64,
    },
    /// 8-byte atomic fetch and add; the result carries the original.
    FetchAdd(u64),
}

/// A remote operation arriving at the device as the responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOp {
    /// Source QPN (the wire injector's).
    pub src_qpn: u32,
    /// Destination QPN, if the sender named one (QPs are not yet modelled:
    /// the operation addresses the MR by rkey).
    pub dst_qpn: Option<u32>,
    /// Remote key.
    pub rkey: u32,
    /// Remote virtual address (IOVA).
    pub va: u64,
    /// Write or read.
    pub kind: RemoteOpKind,
}

/// Outcome of a remote operation, as the requester would see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteStatus {
    /// Done.
    Success,
    /// Key, rights, bounds, revoked MR, failed fault or failed DMA.
    RemoteAccessError,
    /// The request itself is malformed (e.g. too long).
    RemoteInvalidRequest,
    /// No answer in time (e.g. a page fault not resolved).
    Timeout,
    /// The device cannot do DMA (Bus Master Enable clear, or stopped).
    Fenced,
}

/// Result delivered back through the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteResult {
    /// Status.
    pub status: RemoteStatus,
    /// Page faults the operation raised.
    pub faults: u32,
    /// Data read (READ), or the original 8 bytes (atomics).
    pub data: Vec<u8>,
}

impl RemoteResult {
    /// A result without data.
    pub fn status(status: RemoteStatus, faults: u32) -> Self {
        RemoteResult {
            status,
            faults,
            data: Vec::new(),
        }
    }
}

/// A port the engine answers remote operations through.
pub trait Port: Send + Sync {
    /// Short name, for logs and traces.
    fn name(&self) -> &'static str;
    /// Delivers the result of operation `id`.
    fn complete(&self, id: u64, result: RemoteResult);
}

/// Largest injected operation, in bytes.
pub const MAX_INJECT_LEN: u64 = 16 << 20;

/// The wire injector: remote operations from the control socket.
#[derive(Default)]
pub struct InjectorPort {
    waiters: Mutex<HashMap<u64, SyncSender<RemoteResult>>>,
    next_id: AtomicU64,
}

impl InjectorPort {
    /// Submits `op` to the engine and waits up to `timeout` for its result.
    /// Blocks only the calling (control-socket) thread.
    pub fn submit(
        self: &Arc<Self>,
        engine: &Sender<EngineMsg>,
        mut op: RemoteOp,
        timeout: Duration,
    ) -> RemoteResult {
        if op.src_qpn < hw::QPN_INJECTOR_FIRST || op.src_qpn > hw::QPN_INJECTOR_LAST {
            op.src_qpn = hw::QPN_INJECTOR_FIRST;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let deadline = Instant::now() + timeout;
        let port: Arc<dyn Port> = self.clone();
        let sent = engine.send(EngineMsg::Remote {
            op,
            port,
            id,
            deadline,
        });
        let result = match sent {
            Ok(()) => rx
                .recv_timeout(timeout + Duration::from_millis(500))
                .unwrap_or_else(|_| RemoteResult::status(RemoteStatus::Timeout, 0)),
            Err(_) => RemoteResult::status(RemoteStatus::Fenced, 0),
        };
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }
}

impl Port for InjectorPort {
    fn name(&self) -> &'static str {
        "injector"
    }

    fn complete(&self, id: u64, result: RemoteResult) {
        let tx = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.try_send(result);
        }
    }
}
