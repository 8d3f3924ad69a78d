// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Work queue entries and completion queue entries as laid out in
//! `docs/hardware.md` ("Work queue entries", "Completion queue entries").

use crate::hw;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

/// One scatter/gather element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address (or guest-physical with `PHYS_LKEY`).
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// Local key.
    pub lkey: u32,
}

/// A decoded WQE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wqe {
    /// Caller's id, echoed in the CQE.
    pub wr_id: u64,
    /// `ODPRNIC_WR_*` (RQ: 0).
    pub opcode: u8,
    /// `ODPRNIC_WQE_F_*`.
    pub flags: u8,
    /// Immediate data, as the 4 bytes on the wire.
    pub imm: [u8; 4],
    /// RDMA/atomic remote address.
    pub remote_addr: u64,
    /// RDMA/atomic rkey.
    pub rkey: u32,
    /// UD: address handle.
    pub ah: u32,
    /// Atomics: compare (CMP_SWP) or add (FETCH_ADD).
    pub compare_add: u64,
    /// CMP_SWP: swap.
    pub swap: u64,
    /// UD: destination QPN.
    pub remote_qpn: u32,
    /// UD: destination Q_Key.
    pub remote_qkey: u32,
    /// SGEs (`num_sge` of them); empty with `WQE_F_INLINE`.
    pub sges: Vec<Sge>,
    /// Inline data (with `WQE_F_INLINE`).
    pub inline: Vec<u8>,
}

/// Why a WQE cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WqeError {
    /// More SGEs than `MAX_SGE`.
    #[error("num_sge {0} > MAX_SGE")]
    TooManySges(u8),
    /// Inline length over `MAX_INLINE`.
    #[error("inline_len {0} > MAX_INLINE")]
    InlineTooLong(u32),
    /// The total length overflows or exceeds `MAX_MSG_SIZE`.
    #[error("message too long")]
    TooLong,
}

impl Wqe {
    /// Decodes 128 bytes.
    pub fn parse(b: &[u8; 128]) -> Result<Wqe, WqeError> {
        let flags = b[9];
        let num_sge = b[10];
        let inline_len = le32(b, 56);
        let mut sges = Vec::new();
        let mut inline = Vec::new();
        if flags & hw::WQE_F_INLINE != 0 {
            if inline_len > hw::MAX_INLINE {
                return Err(WqeError::InlineTooLong(inline_len));
            }
            inline = b[64..64 + inline_len as usize].to_vec();
        } else {
            if u32::from(num_sge) > hw::MAX_SGE {
                return Err(WqeError::TooManySges(num_sge));
            }
            for i in 0..num_sge as usize {
                let o = 64 + i * 16;
                sges.push(Sge {
                    addr: le64(b, o),
                    length: le32(b, o + 8),
                    lkey: le32(b, o + 12),
                });
            }
        }
        let w = Wqe {
            wr_id: le64(b, 0),
            opcode: b[8],
            flags,
            imm: [b[12], b[13], b[14], b[15]],
            remote_addr: le64(b, 16),
            rkey: le32(b, 24),
            ah: le32(b, 28),
            compare_add: le64(b, 32),
            swap: le64(b, 40),
            remote_qpn: le32(b, 48),
            remote_qkey: le32(b, 52),
            sges,
            inline,
        };
        if w.length().is_none_or(|l| l > u64::from(hw::MAX_MSG_SIZE)) {
            return Err(WqeError::TooLong);
        }
        Ok(w)
    }

    /// Total length of the data (SGEs or inline).
    pub fn length(&self) -> Option<u64> {
        if self.flags & hw::WQE_F_INLINE != 0 {
            return Some(self.inline.len() as u64);
        }
        self.sges
            .iter()
            .try_fold(0u64, |a, s| a.checked_add(u64::from(s.length)))
    }
}

/// A completion to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Caller's id.
    pub wr_id: u64,
    /// Bytes transferred (receives, READs, atomics).
    pub byte_len: u32,
    /// Immediate data as on the wire.
    pub imm: [u8; 4],
    /// The local QP.
    pub qpn: u32,
    /// UD/GSI: the sender's QPN.
    pub src_qp: u32,
    /// `ODPRNIC_WC_*`.
    pub status: u8,
    /// `ODPRNIC_CQE_OP_*`.
    pub opcode: u8,
    /// `ODPRNIC_CQE_F_*`.
    pub flags: u8,
}

impl Cqe {
    /// The 32 bytes, with the owner byte for producer index `prod` of a CQ
    /// of `size` entries.
    pub fn bytes(&self, prod: u32, size: u32) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.wr_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.byte_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.imm);
        b[16..20].copy_from_slice(&self.qpn.to_le_bytes());
        b[20..24].copy_from_slice(&self.src_qp.to_le_bytes());
        b[24] = self.status;
        b[25] = self.opcode;
        b[26] = self.flags;
        b[27] = owner(prod, size);
        b
    }
}

/// The owner byte for producer index `prod`: 1 on the first pass, 0 on the
/// second, …
pub fn owner(prod: u32, size: u32) -> u8 {
    (((prod / size) & 1) ^ 1) as u8
}

/// The 40 bytes a UD/GSI receive finds in front of the data, as RoCE
/// hardware writes them for `gid_type`: for RoCE v2 over IPv4, 20 zero
/// bytes and the IPv4 header (so `ib_get_rdma_header_version` recognises
/// it); otherwise a GRH (next header 0x1b for RoCE v1, UDP for v2 over IPv6).
pub fn network_header(
    gid_type: u8,
    sgid: &[u8; 16],
    dgid: &[u8; 16],
    tclass: u8,
    flow: u32,
    hop: u8,
    paylen: u16,
) -> [u8; 40] {
    if gid_type != hw::GID_ROCE_V2_IPV4 {
        let mut g = grh(sgid, dgid, tclass, flow, hop, paylen);
        if gid_type == hw::GID_ROCE_V2_IPV6 {
            g[6] = 17;
        }
        return g;
    }
    let mut h = [0u8; 40];
    let ip = &mut h[20..40];
    ip[0] = 0x45;
    ip[1] = tclass;
    // IPv4 + UDP + BTH + DETH + payload + ICRC
    let tot = 20u16.saturating_add(8 + 12 + 8 + 4).saturating_add(paylen);
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = hop;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&sgid[12..16]);
    ip[16..20].copy_from_slice(&dgid[12..16]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

/// A 40-byte IB GRH.
pub fn grh(
    sgid: &[u8; 16],
    dgid: &[u8; 16],
    tclass: u8,
    flow: u32,
    hop: u8,
    paylen: u16,
) -> [u8; 40] {
    let mut g = [0u8; 40];
    let w0 = (6u32 << 28) | (u32::from(tclass) << 20) | (flow & 0xf_ffff);
    g[0..4].copy_from_slice(&w0.to_be_bytes());
    g[4..6].copy_from_slice(&paylen.to_be_bytes());
    g[6] = 0x1b;
    g[7] = hop;
    g[8..24].copy_from_slice(sgid);
    g[24..40].copy_from_slice(dgid);
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sges_and_inline() {
        let mut b = [0u8; 128];
        b[0..8].copy_from_slice(&7u64.to_le_bytes());
        b[8] = hw::WR_RDMA_WRITE;
        b[9] = hw::WQE_F_SIGNALED;
        b[10] = 2;
        b[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        b[24..28].copy_from_slice(&0x101u32.to_le_bytes());
        b[64..72].copy_from_slice(&0x2000u64.to_le_bytes());
        b[72..76].copy_from_slice(&100u32.to_le_bytes());
        b[76..80].copy_from_slice(&0x201u32.to_le_bytes());
        b[88..92].copy_from_slice(&28u32.to_le_bytes());
        let w = Wqe::parse(&b).unwrap();
        assert_eq!(w.wr_id, 7);
        assert_eq!(w.sges.len(), 2);
        assert_eq!(
            w.sges[0],
            Sge {
                addr: 0x2000,
                length: 100,
                lkey: 0x201
            }
        );
        assert_eq!(w.length(), Some(128));
        b[10] = 5;
        assert_eq!(Wqe::parse(&b), Err(WqeError::TooManySges(5)));
        b[9] |= hw::WQE_F_INLINE;
        b[56..60].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(Wqe::parse(&b), Err(WqeError::InlineTooLong(65)));
        b[56..60].copy_from_slice(&3u32.to_le_bytes());
        let w = Wqe::parse(&b).unwrap();
        assert_eq!(w.inline, vec![0, 0x20, 0]);
        b[9] &= !hw::WQE_F_INLINE;
        b[10] = 2;
        b[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
        b[88..92].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Wqe::parse(&b), Err(WqeError::TooLong));
    }

    #[test]
    fn ipv4_header_checksums_to_zero() {
        let mut sgid = [0u8; 16];
        sgid[10..16].copy_from_slice(&[0xff, 0xff, 10, 0, 2, 15]);
        let mut dgid = sgid;
        dgid[15] = 16;
        let h = network_header(hw::GID_ROCE_V2_IPV4, &sgid, &dgid, 0, 0, 64, 100);
        assert_eq!(&h[..20], &[0u8; 20]);
        assert_eq!(h[20], 0x45);
        let mut sum: u32 = h[20..40]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(&h[32..36], &[10, 0, 2, 15]);
        let g = network_header(hw::GID_ROCE_V1, &sgid, &dgid, 0, 0, 64, 100);
        assert_eq!((g[0] >> 4, g[6]), (6, 0x1b));
        let g = network_header(hw::GID_ROCE_V2_IPV6, &sgid, &dgid, 0, 0, 64, 100);
        assert_eq!(g[6], 17);
    }

    #[test]
    fn owner_alternates() {
        assert_eq!(owner(0, 4), 1);
        assert_eq!(owner(3, 4), 1);
        assert_eq!(owner(4, 4), 0);
        assert_eq!(owner(8, 4), 1);
        let c = Cqe {
            wr_id: 1,
            status: 4,
            ..Default::default()
        };
        assert_eq!(c.bytes(4, 4)[27], 0);
        assert_eq!(c.bytes(4, 4)[24], 4);
    }
}
