// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Every constant of the hardware contract (`docs/hardware.md`, interface 1.1).
//!
//! Names are the contract's C names without the `ODPRNIC_` prefix. One
//! `pub const NAME: TYPE = VALUE;` per line: `tests/contract.rs` parses this
//! file and compares it with the document and the C header.

/// incompatible changes bump it; a driver refuses a major it does not know
pub const VERSION_MAJOR: u32 = 1;
/// compatible additions
pub const VERSION_MINOR: u32 = 1;
/// experimental vendor ID, as used by QEMU's own example devices
pub const PCI_VENDOR_ID: u16 = 0x1234;
/// odp-rnic
pub const PCI_DEVICE_ID: u16 = 0x0db0;
/// `ODPRNIC_PCI_SUBSYS_VENDOR_ID` in `docs/hardware.md`.
pub const PCI_SUBSYS_VENDOR_ID: u16 = 0x1234;
/// `ODPRNIC_PCI_SUBSYS_ID` in `docs/hardware.md`.
pub const PCI_SUBSYS_ID: u16 = 0x0001;
/// network controller, Ethernet (a RoCE NIC)
pub const PCI_CLASS: u32 = 0x020000;
/// `ODPRNIC_PCI_REVISION` in `docs/hardware.md`.
pub const PCI_REVISION: u8 = 0x01;
/// registers, 32-bit memory BAR, trapped (never mmapped)
pub const BAR_REGS: u32 = 0;
/// 64 KiB
pub const BAR_REGS_SIZE: u64 = 0x10000;
/// MSI-X table and PBA
pub const BAR_MSIX: u32 = 2;
/// 4 KiB
pub const BAR_MSIX_SIZE: u64 = 0x1000;
/// table at the start of BAR 2
pub const MSIX_TABLE_OFFSET: u64 = 0x0;
/// pending-bit array
pub const MSIX_PBA_OFFSET: u64 = 0x800;
/// vectors in the table
pub const NUM_VECTORS: u32 = 16;
/// a command completed (command queue used ring advanced)
pub const VEC_CMD: u32 = 0;
/// an event was posted to the event queue
pub const VEC_EVENT: u32 = 1;
/// vectors 2..15 are for completion queues (chosen at CQ creation)
pub const VEC_CQ_FIRST: u32 = 2;
/// `ODPRNIC_MAGIC`
pub const REG_MAGIC: u64 = 0x000;
/// minor`
pub const REG_VERSION: u64 = 0x004;
/// capability bits, see "Capabilities"
pub const REG_CAPS: u64 = 0x008;
/// `ODPRNIC_STATUS_*`
pub const REG_STATUS: u64 = 0x00c;
/// `ODPRNIC_CONTROL_*`
pub const REG_CONTROL: u64 = 0x010;
/// why `STATUS_FATAL` is set (`ODPRNIC_FATAL_*`)
pub const REG_FATAL_CODE: u64 = 0x014;
/// protection domains
pub const REG_MAX_PD: u64 = 0x020;
/// memory regions
pub const REG_MAX_MR: u64 = 0x024;
/// completion queues
pub const REG_MAX_CQ: u64 = 0x028;
/// queue pairs
pub const REG_MAX_QP: u64 = 0x02c;
/// translation entries of one explicit MR
pub const REG_MAX_MR_PAGES: u64 = 0x030;
/// port MAC address bytes 0..3 (byte 0 in bits 0..7)
pub const REG_MAC_LO: u64 = 0x040;
/// port MAC address bytes 4..5
pub const REG_MAC_HI: u64 = 0x044;
/// command queue descriptor table (guest-physical)
pub const REG_CMDQ_DESC: u64 = 0x100;
/// command queue available ring
pub const REG_CMDQ_AVAIL: u64 = 0x108;
/// command queue used ring
pub const REG_CMDQ_USED: u64 = 0x110;
/// entries, a power of two ≤ `ODPRNIC_QUEUE_MAX_SIZE`
pub const REG_CMDQ_SIZE: u64 = 0x118;
/// any write: new commands are available
pub const REG_CMDQ_NOTIFY: u64 = 0x11c;
/// event queue descriptor table
pub const REG_EQ_DESC: u64 = 0x140;
/// event queue available ring
pub const REG_EQ_AVAIL: u64 = 0x148;
/// event queue used ring
pub const REG_EQ_USED: u64 = 0x150;
/// entries, a power of two ≤ `ODPRNIC_QUEUE_MAX_SIZE`
pub const REG_EQ_SIZE: u64 = 0x158;
/// any write: new empty event buffers are available
pub const REG_EQ_NOTIFY: u64 = 0x15c;
/// invalidation: MR key
pub const REG_INV_KEY: u64 = 0x200;
/// invalidation: first IOVA
pub const REG_INV_START: u64 = 0x208;
/// invalidation: length in bytes
pub const REG_INV_LENGTH: u64 = 0x210;
/// invalidation: sequence number; the write submits
pub const REG_INV_SEQ: u64 = 0x218;
/// highest acknowledged invalidation sequence
pub const REG_INV_ACK: u64 = 0x21c;
/// the bytes "ODPR"
pub const MAGIC: u32 = 0x5250444f;
/// enabled: queues valid, commands are served
pub const STATUS_READY: u32 = 0x1;
/// the device stopped; only a reset leaves this state
pub const STATUS_FATAL: u32 = 0x2;
/// Bus Master Enable is clear: no DMA happens
pub const STATUS_FENCED: u32 = 0x4;
/// set: validate the queue registers and start; clear: stop
pub const CONTROL_ENABLE: u32 = 0x1;
/// write 1: reset (see "Reset"); reads as 0
pub const CONTROL_RESET: u32 = 0x2;
/// `ODPRNIC_FATAL_NONE` in `docs/hardware.md`.
pub const FATAL_NONE: u32 = 0;
/// ENABLE with queue registers that do not describe a valid ring in DMA-mapped memory
pub const FATAL_BAD_QUEUE: u32 = 1;
/// a ring index or descriptor broke the ring rules
pub const FATAL_RING: u32 = 2;
/// a fault plan raised a device error
pub const FATAL_INJECTED: u32 = 3;
/// more than `ODPRNIC_EVENT_BACKLOG` events waited for event buffers
pub const FATAL_EVENT_OVERFLOW: u32 = 4;
/// largest command or event queue
pub const QUEUE_MAX_SIZE: u32 = 256;
/// ODP MRs (mode `ODPRNIC_MR_ODP`)
pub const CAP_ODP: u32 = 0x01;
/// implicit ODP (mode `ODPRNIC_MR_IMPLICIT`)
pub const CAP_IMPLICIT_ODP: u32 = 0x02;
/// `MAP_PAGES` with `ODPRNIC_MAP_PREFETCH` (driver-side prefetch)
pub const CAP_PREFETCH: u32 = 0x04;
/// revocable MRs (mode `ODPRNIC_MR_REVOCABLE`)
pub const CAP_REVOCABLE: u32 = 0x08;
/// 8-byte CMP_SWP and FETCH_ADD
pub const CAP_ATOMICS: u32 = 0x10;
/// UD queue pairs
pub const CAP_UD: u32 = 0x20;
/// request size
pub const CMD_SIZE: u32 = 64;
/// response size
pub const RESP_SIZE: u32 = 64;
/// `ODPRNIC_STATUS_OK` in `docs/hardware.md`.
pub const STATUS_OK: u16 = 0;
/// unknown opcode
pub const STATUS_BAD_OPCODE: u16 = 1;
/// an argument is out of range
pub const STATUS_BAD_PARAM: u16 = 2;
/// table full
pub const STATUS_NO_RESOURCES: u16 = 3;
/// no such PD, MR, token, …
pub const STATUS_BAD_HANDLE: u16 = 4;
/// capability absent (e.g. ODP with `--odp off`)
pub const STATUS_UNSUPPORTED: u16 = 5;
/// object still in use (a PD with MRs)
pub const STATUS_BUSY: u16 = 6;
/// a data buffer could not be read
pub const STATUS_DMA_ERROR: u16 = 7;
/// the descriptor chain is malformed
pub const STATUS_BAD_CHAIN: u16 = 8;
/// a fault plan failed this command
pub const STATUS_INJECTED: u16 = 9;
/// `ODPRNIC_CMD_NOP` in `docs/hardware.md`.
pub const CMD_NOP: u16 = 0x00;
/// `ODPRNIC_CMD_CREATE_PD` in `docs/hardware.md`.
pub const CMD_CREATE_PD: u16 = 0x01;
/// `ODPRNIC_CMD_DESTROY_PD` in `docs/hardware.md`.
pub const CMD_DESTROY_PD: u16 = 0x02;
/// `ODPRNIC_CMD_CREATE_MR` in `docs/hardware.md`.
pub const CMD_CREATE_MR: u16 = 0x10;
/// `ODPRNIC_CMD_DESTROY_MR` in `docs/hardware.md`.
pub const CMD_DESTROY_MR: u16 = 0x11;
/// `ODPRNIC_CMD_MAP_PAGES` in `docs/hardware.md`.
pub const CMD_MAP_PAGES: u16 = 0x12;
/// `ODPRNIC_CMD_RESUME` in `docs/hardware.md`.
pub const CMD_RESUME: u16 = 0x13;
/// `ODPRNIC_CMD_QUERY_MR` in `docs/hardware.md`.
pub const CMD_QUERY_MR: u16 = 0x14;
/// `ODPRNIC_ACCESS_LOCAL_WRITE` in `docs/hardware.md`.
pub const ACCESS_LOCAL_WRITE: u32 = 0x1;
/// `ODPRNIC_ACCESS_REMOTE_WRITE` in `docs/hardware.md`.
pub const ACCESS_REMOTE_WRITE: u32 = 0x2;
/// `ODPRNIC_ACCESS_REMOTE_READ` in `docs/hardware.md`.
pub const ACCESS_REMOTE_READ: u32 = 0x4;
/// `ODPRNIC_ACCESS_REMOTE_ATOMIC` in `docs/hardware.md`.
pub const ACCESS_REMOTE_ATOMIC: u32 = 0x8;
/// table written at registration; never faults
pub const MR_PINNED: u8 = 0;
/// empty table; faults
pub const MR_ODP: u8 = 1;
/// ODP over the whole address space
pub const MR_IMPLICIT: u8 = 2;
/// table written at registration; any invalidation revokes the key
pub const MR_REVOCABLE: u8 = 3;
/// `ODPRNIC_MR_STATE_LIVE` in `docs/hardware.md`.
pub const MR_STATE_LIVE: u32 = 0;
/// an invalidation revoked it (revocable MRs)
pub const MR_STATE_REVOKED: u32 = 1;
/// MAP_PAGES flag: the mapping is a prefetch (counted apart)
pub const MAP_PREFETCH: u32 = 0x1;
/// entries per MAP_PAGES (one 4 KiB data buffer)
pub const MAP_MAX: u32 = 512;
/// `ODPRNIC_PTE_READ` in `docs/hardware.md`.
pub const PTE_READ: u64 = 0x1;
/// `ODPRNIC_PTE_WRITE` in `docs/hardware.md`.
pub const PTE_WRITE: u64 = 0x2;
/// `ODPRNIC_PAGE_SHIFT` in `docs/hardware.md`.
pub const PAGE_SHIFT: u32 = 12;
/// explicit MRs up to 1 GiB
pub const MAX_MR_PAGES: u64 = 262144;
/// `ODPRNIC_EVENT_SIZE` in `docs/hardware.md`.
pub const EVENT_SIZE: u32 = 64;
/// `ODPRNIC_EVENT_BACKLOG` in `docs/hardware.md`.
pub const EVENT_BACKLOG: u32 = 4096;
/// `u32 token` at 0, `u32 key` at 4, `u32 qpn` at 8, `u32 flags` at 12 (`ODPRNIC_FAULT_WRITE`), `u64 iova` at 16, `u64 length` at 24
pub const EVENT_PAGE_FAULT: u16 = 1;
/// `u32 seq` at 0
pub const EVENT_INV_ACK: u16 = 2;
/// `u32 key` at 0
pub const EVENT_MR_REVOKED: u16 = 3;
/// `u32 code` at 0 (`ODPRNIC_FATAL_*`)
pub const EVENT_DEVICE_ERROR: u16 = 4;
/// the access writes
pub const FAULT_WRITE: u32 = 0x1;
/// first QPN of the wire injector
pub const QPN_INJECTOR_FIRST: u32 = 0xfff000;
/// last QPN of the wire injector
pub const QPN_INJECTOR_LAST: u32 = 0xffffff;
/// bytes 0-7 of the wire injector's GID, big-endian (`subnet_prefix`)
pub const INJECTOR_GID_PREFIX: u64 = 0x0;
/// bytes 8-15 of the wire injector's GID, big-endian (`interface_id`):
/// `::ffff:192.0.2.1`, IPv4-mapped 192.0.2.1 (TEST-NET-1)
pub const INJECTOR_GID_IID: u64 = 0x0000_ffff_c000_0201;
/// The wire injector's GID as the 16 bytes of a GRH or `ib_gid`.
pub static INJECTOR_GID: [u8; 16] = gid_bytes(INJECTOR_GID_PREFIX, INJECTOR_GID_IID);

const fn gid_bytes(prefix: u64, iid: u64) -> [u8; 16] {
    let (p, i) = (prefix.to_be_bytes(), iid.to_be_bytes());
    let mut g = [0u8; 16];
    let mut k = 0;
    while k < 8 {
        g[k] = p[k];
        g[k + 8] = i[k];
        k += 1;
    }
    g
}

// Interface 1.1: completion queues, queue pairs, address handles, doorbells.
/// `ODPRNIC_WQE_SIZE` in `docs/hardware.md`.
pub const WQE_SIZE: u64 = 128;
/// `ODPRNIC_CQE_SIZE` in `docs/hardware.md`.
pub const CQE_SIZE: u64 = 32;
/// `ODPRNIC_RING_HDR_SPACE` in `docs/hardware.md`.
pub const RING_HDR_SPACE: u64 = 4096;
/// `ODPRNIC_MAX_SGE` in `docs/hardware.md`.
pub const MAX_SGE: u32 = 4;
/// `ODPRNIC_MAX_INLINE` in `docs/hardware.md`.
pub const MAX_INLINE: u32 = 64;
/// `ODPRNIC_MAX_QP_WR` in `docs/hardware.md`.
pub const MAX_QP_WR: u32 = 4096;
/// `ODPRNIC_MAX_CQE` in `docs/hardware.md`.
pub const MAX_CQE: u32 = 16384;
/// `ODPRNIC_MAX_MSG_SIZE` in `docs/hardware.md`.
pub const MAX_MSG_SIZE: u32 = 0x40000000;
/// `ODPRNIC_PHYS_LKEY` in `docs/hardware.md`.
pub const PHYS_LKEY: u32 = 0;
/// `ODPRNIC_WR_SEND` in `docs/hardware.md`.
pub const WR_SEND: u8 = 0;
/// `ODPRNIC_WR_SEND_IMM` in `docs/hardware.md`.
pub const WR_SEND_IMM: u8 = 1;
/// `ODPRNIC_WR_RDMA_WRITE` in `docs/hardware.md`.
pub const WR_RDMA_WRITE: u8 = 2;
/// `ODPRNIC_WR_RDMA_WRITE_IMM` in `docs/hardware.md`.
pub const WR_RDMA_WRITE_IMM: u8 = 3;
/// `ODPRNIC_WR_RDMA_READ` in `docs/hardware.md`.
pub const WR_RDMA_READ: u8 = 4;
/// `ODPRNIC_WR_ATOMIC_CMP_SWP` in `docs/hardware.md`.
pub const WR_ATOMIC_CMP_SWP: u8 = 5;
/// `ODPRNIC_WR_ATOMIC_FETCH_ADD` in `docs/hardware.md`.
pub const WR_ATOMIC_FETCH_ADD: u8 = 6;
/// `ODPRNIC_WQE_F_SIGNALED` in `docs/hardware.md`.
pub const WQE_F_SIGNALED: u8 = 0x1;
/// `ODPRNIC_WQE_F_SOLICITED` in `docs/hardware.md`.
pub const WQE_F_SOLICITED: u8 = 0x2;
/// `ODPRNIC_WQE_F_INLINE` in `docs/hardware.md`.
pub const WQE_F_INLINE: u8 = 0x4;
/// `ODPRNIC_WQE_F_FENCE` in `docs/hardware.md`.
pub const WQE_F_FENCE: u8 = 0x8;
/// IB_WC_SUCCESS
pub const WC_SUCCESS: u8 = 0;
/// IB_WC_LOC_LEN_ERR
pub const WC_LOC_LEN_ERR: u8 = 1;
/// IB_WC_LOC_QP_OP_ERR
pub const WC_LOC_QP_OP_ERR: u8 = 2;
/// IB_WC_LOC_PROT_ERR
pub const WC_LOC_PROT_ERR: u8 = 4;
/// IB_WC_WR_FLUSH_ERR
pub const WC_WR_FLUSH_ERR: u8 = 5;
/// IB_WC_BAD_RESP_ERR
pub const WC_BAD_RESP_ERR: u8 = 7;
/// IB_WC_LOC_ACCESS_ERR
pub const WC_LOC_ACCESS_ERR: u8 = 8;
/// IB_WC_REM_INV_REQ_ERR
pub const WC_REM_INV_REQ_ERR: u8 = 9;
/// IB_WC_REM_ACCESS_ERR
pub const WC_REM_ACCESS_ERR: u8 = 10;
/// IB_WC_REM_OP_ERR
pub const WC_REM_OP_ERR: u8 = 11;
/// IB_WC_RETRY_EXC_ERR
pub const WC_RETRY_EXC_ERR: u8 = 12;
/// IB_WC_RNR_RETRY_EXC_ERR
pub const WC_RNR_RETRY_EXC_ERR: u8 = 13;
/// IB_WC_FATAL_ERR
pub const WC_FATAL_ERR: u8 = 19;
/// IB_WC_SEND
pub const CQE_OP_SEND: u8 = 0;
/// IB_WC_RDMA_WRITE
pub const CQE_OP_RDMA_WRITE: u8 = 1;
/// IB_WC_RDMA_READ
pub const CQE_OP_RDMA_READ: u8 = 2;
/// IB_WC_COMP_SWAP
pub const CQE_OP_COMP_SWAP: u8 = 3;
/// IB_WC_FETCH_ADD
pub const CQE_OP_FETCH_ADD: u8 = 4;
/// IB_WC_RECV
pub const CQE_OP_RECV: u8 = 128;
/// IB_WC_RECV_RDMA_WITH_IMM
pub const CQE_OP_RECV_RDMA_WITH_IMM: u8 = 129;
/// IB_WC_WITH_IMM
pub const CQE_F_IMM: u8 = 0x1;
/// IB_WC_GRH (UD/GSI receive: the first 40 bytes of the receive buffer hold a GRH)
pub const CQE_F_GRH: u8 = 0x2;
/// doorbell pages, 32-bit memory BAR, trapped
pub const BAR_DB: u32 = 4;
/// one page per doorbell owner
pub const DB_PAGE_SIZE: u64 = 0x1000;
/// page 0 belongs to the kernel, pages 1..255 to user contexts
pub const DB_PAGES: u32 = 256;
/// write a QPN: its `sq_prod` moved
pub const DB_SQ: u64 = 0x0;
/// write a QPN: its `rq_prod` moved
pub const DB_RQ: u64 = 0x4;
/// write `cqn`, or `cqn \
pub const DB_CQ_ARM: u64 = 0x8;
/// `ODPRNIC_DB_CQ_ARM_SOLICITED` in `docs/hardware.md`.
pub const DB_CQ_ARM_SOLICITED: u32 = 0x80000000;
/// `ODPRNIC_CMD_CREATE_CQ` in `docs/hardware.md`.
pub const CMD_CREATE_CQ: u16 = 0x20;
/// `ODPRNIC_CMD_DESTROY_CQ` in `docs/hardware.md`.
pub const CMD_DESTROY_CQ: u16 = 0x21;
/// `ODPRNIC_CMD_CREATE_QP` in `docs/hardware.md`.
pub const CMD_CREATE_QP: u16 = 0x30;
/// `ODPRNIC_CMD_MODIFY_QP` in `docs/hardware.md`.
pub const CMD_MODIFY_QP: u16 = 0x31;
/// `ODPRNIC_CMD_QUERY_QP` in `docs/hardware.md`.
pub const CMD_QUERY_QP: u16 = 0x32;
/// `ODPRNIC_CMD_DESTROY_QP` in `docs/hardware.md`.
pub const CMD_DESTROY_QP: u16 = 0x33;
/// `ODPRNIC_CMD_CREATE_AH` in `docs/hardware.md`.
pub const CMD_CREATE_AH: u16 = 0x40;
/// `ODPRNIC_CMD_DESTROY_AH` in `docs/hardware.md`.
pub const CMD_DESTROY_AH: u16 = 0x41;
/// `ODPRNIC_GID_ROCE_V1` in `docs/hardware.md`.
pub const GID_ROCE_V1: u8 = 0;
/// `ODPRNIC_GID_ROCE_V2_IPV4` in `docs/hardware.md`.
pub const GID_ROCE_V2_IPV4: u8 = 1;
/// `ODPRNIC_GID_ROCE_V2_IPV6` in `docs/hardware.md`.
pub const GID_ROCE_V2_IPV6: u8 = 2;
/// `ODPRNIC_QPT_RC` in `docs/hardware.md`.
pub const QPT_RC: u8 = 2;
/// `ODPRNIC_QPT_UD` in `docs/hardware.md`.
pub const QPT_UD: u8 = 4;
/// `ODPRNIC_QPT_GSI` in `docs/hardware.md`.
pub const QPT_GSI: u8 = 1;
/// `ODPRNIC_QP_KERNEL` in `docs/hardware.md`.
pub const QP_KERNEL: u8 = 0x1;
/// `ODPRNIC_QP_SIG_ALL` in `docs/hardware.md`.
pub const QP_SIG_ALL: u8 = 0x2;
/// `ODPRNIC_QPS_RESET` in `docs/hardware.md`.
pub const QPS_RESET: u8 = 0;
/// `ODPRNIC_QPS_INIT` in `docs/hardware.md`.
pub const QPS_INIT: u8 = 1;
/// `ODPRNIC_QPS_RTR` in `docs/hardware.md`.
pub const QPS_RTR: u8 = 2;
/// `ODPRNIC_QPS_RTS` in `docs/hardware.md`.
pub const QPS_RTS: u8 = 3;
/// `ODPRNIC_QPS_SQD` in `docs/hardware.md`.
pub const QPS_SQD: u8 = 4;
/// `ODPRNIC_QPS_SQE` in `docs/hardware.md`.
pub const QPS_SQE: u8 = 5;
/// `ODPRNIC_QPS_ERR` in `docs/hardware.md`.
pub const QPS_ERR: u8 = 6;
/// `ODPRNIC_QP_ATTR_STATE` in `docs/hardware.md`.
pub const QP_ATTR_STATE: u32 = 0x1;
/// `ODPRNIC_QP_ATTR_ACCESS` in `docs/hardware.md`.
pub const QP_ATTR_ACCESS: u32 = 0x2;
/// `ODPRNIC_QP_ATTR_PATH` in `docs/hardware.md`.
pub const QP_ATTR_PATH: u32 = 0x4;
/// `ODPRNIC_QP_ATTR_DEST_QPN` in `docs/hardware.md`.
pub const QP_ATTR_DEST_QPN: u32 = 0x8;
/// `ODPRNIC_QP_ATTR_QKEY` in `docs/hardware.md`.
pub const QP_ATTR_QKEY: u32 = 0x10;
/// `ODPRNIC_QP_ATTR_SQ_PSN` in `docs/hardware.md`.
pub const QP_ATTR_SQ_PSN: u32 = 0x20;
/// `ODPRNIC_QP_ATTR_RQ_PSN` in `docs/hardware.md`.
pub const QP_ATTR_RQ_PSN: u32 = 0x40;
/// `ODPRNIC_QP_ATTR_RETRY` in `docs/hardware.md`.
pub const QP_ATTR_RETRY: u32 = 0x80;
/// `ODPRNIC_QP_ATTR_MTU` in `docs/hardware.md`.
pub const QP_ATTR_MTU: u32 = 0x100;
/// `u32 qpn` at 0, `u32 syndrome` at 4 (`ODPRNIC_WC_*` that caused it)
pub const EVENT_QP_ERROR: u16 = 5;
/// `u32 cqn` at 0
pub const EVENT_CQ_ERROR: u16 = 6;
/// `u32 qpn` at 0
pub const EVENT_QP_LAST_WQE: u16 = 7;
