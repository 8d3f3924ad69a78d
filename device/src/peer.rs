// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The wire injector as a queue-pair peer ("Ports and the wire" in
//! `docs/hardware.md`): what guest QPs connected to an injector QPN send is
//! kept for the control socket to read, and their READs, WRITEs and
//! atomics are served from one buffer the control socket fills.

use std::collections::VecDeque;

use serde::Serialize;

/// Messages kept before the oldest are dropped.
pub const MAX_KEPT: usize = 4096;
/// Largest peer buffer.
pub const MAX_MEMORY: usize = 16 << 20;
/// Peer buffer size at start.
pub const DEFAULT_MEMORY: usize = 1 << 20;

/// One operation a guest QP sent to the injector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerMessage {
    /// The guest QP.
    pub src_qpn: u32,
    /// The injector QPN it was sent to.
    pub dst_qpn: u32,
    /// `send`, `send_imm`, `write`, `write_imm`.
    pub opcode: &'static str,
    /// The data, hex.
    pub data_hex: String,
    /// Immediate data, hex (4 bytes as on the wire), if any.
    pub imm_hex: Option<String>,
    /// WRITE: the remote address (offset into the peer buffer).
    pub remote_addr: Option<u64>,
}

/// Failures of peer buffer access.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// The range is not inside the buffer.
    #[error("range {0:#x}+{1:#x} is outside the peer buffer")]
    OutOfRange(u64, u64),
    /// The buffer size is over `MAX_MEMORY`.
    #[error("peer buffer larger than {MAX_MEMORY} bytes")]
    TooLarge,
}

/// The injector's state.
#[derive(Debug)]
pub struct Peer {
    kept: VecDeque<PeerMessage>,
    /// Messages dropped because `MAX_KEPT` were waiting.
    pub dropped: u64,
    memory: Vec<u8>,
}

impl Default for Peer {
    fn default() -> Self {
        Peer {
            kept: VecDeque::new(),
            dropped: 0,
            memory: vec![0; DEFAULT_MEMORY],
        }
    }
}

impl Peer {
    /// Keeps a message.
    pub fn keep(&mut self, m: PeerMessage) {
        if self.kept.len() >= MAX_KEPT {
            self.kept.pop_front();
            self.dropped += 1;
        }
        self.kept.push_back(m);
    }

    /// Takes up to `max` kept messages, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<PeerMessage> {
        let n = max.min(self.kept.len());
        self.kept.drain(..n).collect()
    }

    fn range(&self, off: u64, len: u64) -> Result<std::ops::Range<usize>, PeerError> {
        let end = off
            .checked_add(len)
            .filter(|e| *e <= self.memory.len() as u64)
            .ok_or(PeerError::OutOfRange(off, len))?;
        Ok(off as usize..end as usize)
    }

    /// Reads the buffer.
    pub fn read(&self, off: u64, len: u64) -> Result<Vec<u8>, PeerError> {
        Ok(self.memory[self.range(off, len)?].to_vec())
    }

    /// Writes the buffer.
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), PeerError> {
        let r = self.range(off, data.len() as u64)?;
        self.memory[r].copy_from_slice(data);
        Ok(())
    }

    /// An 8-byte atomic on the buffer (`off` 8-aligned); returns the
    /// original value.
    pub fn atomic(&mut self, off: u64, f: impl FnOnce(u64) -> u64) -> Result<u64, PeerError> {
        let r = self.range(off, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.memory[r.clone()]);
        let old = u64::from_le_bytes(b);
        self.memory[r].copy_from_slice(&f(old).to_le_bytes());
        Ok(old)
    }

    /// Resizes the buffer (zero-filled).
    pub fn resize(&mut self, size: usize) -> Result<(), PeerError> {
        if size > MAX_MEMORY {
            return Err(PeerError::TooLarge);
        }
        self.memory.resize(size, 0);
        Ok(())
    }

    /// The buffer size.
    pub fn size(&self) -> usize {
        self.memory.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_messages() {
        let mut p = Peer::default();
        p.write(10, b"abc").unwrap();
        assert_eq!(p.read(10, 3).unwrap(), b"abc");
        assert!(p.read(u64::MAX, 2).is_err());
        assert!(p.write(DEFAULT_MEMORY as u64 - 1, b"ab").is_err());
        assert_eq!(p.atomic(16, |v| v + 5).unwrap(), 0);
        assert_eq!(p.atomic(16, |v| v + 5).unwrap(), 5);
        assert!(p.resize(MAX_MEMORY + 1).is_err());
        for i in 0..(MAX_KEPT + 3) {
            p.keep(PeerMessage {
                src_qpn: i as u32,
                dst_qpn: 0,
                opcode: "send",
                data_hex: String::new(),
                imm_hex: None,
                remote_addr: None,
            });
        }
        assert_eq!(p.dropped, 3);
        let t = p.take(2);
        assert_eq!(t[0].src_qpn, 3);
        assert_eq!(p.take(usize::MAX).len(), MAX_KEPT - 2);
    }
}
