/* SPDX-License-Identifier: GPL-2.0 */
/*
 * odp-rnic hardware contract v1.1 (docs/hardware.md): registers, queue,
 * command and event formats, and the rings of CQs and QPs. Every constant
 * carries the name and value of the contract's tables;
 * device/tests/contract.rs compares them with the document and with
 * device/src/hw.rs. Change all three together.
 *
 * The rdma-core provider includes this header too (for the ring layouts):
 * it needs nothing but <linux/types.h> and static_assert (C11's
 * <assert.h> in user space), and no layout needs packing.
 */
#ifndef ODP_RNIC_HW_H
#define ODP_RNIC_HW_H

#include <linux/types.h>
#ifdef __KERNEL__
#include <linux/build_bug.h>
#else
#include <assert.h>
#endif

/* Interface version */
#define ODPRNIC_VERSION_MAJOR	1
#define ODPRNIC_VERSION_MINOR	1

/* PCI identity */
#define ODPRNIC_PCI_VENDOR_ID	0x1234
#define ODPRNIC_PCI_DEVICE_ID	0x0db0
#define ODPRNIC_PCI_SUBSYS_VENDOR_ID	0x1234
#define ODPRNIC_PCI_SUBSYS_ID	0x0001
#define ODPRNIC_PCI_CLASS	0x020000
#define ODPRNIC_PCI_REVISION	0x01

/* BARs */
#define ODPRNIC_BAR_REGS	0
#define ODPRNIC_BAR_REGS_SIZE	0x10000
#define ODPRNIC_BAR_MSIX	2
#define ODPRNIC_BAR_MSIX_SIZE	0x1000
#define ODPRNIC_MSIX_TABLE_OFFSET	0x0
#define ODPRNIC_MSIX_PBA_OFFSET	0x800

/* MSI-X vectors */
#define ODPRNIC_NUM_VECTORS	16
#define ODPRNIC_VEC_CMD	0
#define ODPRNIC_VEC_EVENT	1
#define ODPRNIC_VEC_CQ_FIRST	2

/* Registers (BAR 0) */
#define ODPRNIC_REG_MAGIC	0x000
#define ODPRNIC_REG_VERSION	0x004
#define ODPRNIC_REG_CAPS	0x008
#define ODPRNIC_REG_STATUS	0x00c
#define ODPRNIC_REG_CONTROL	0x010
#define ODPRNIC_REG_FATAL_CODE	0x014
#define ODPRNIC_REG_MAX_PD	0x020
#define ODPRNIC_REG_MAX_MR	0x024
#define ODPRNIC_REG_MAX_CQ	0x028
#define ODPRNIC_REG_MAX_QP	0x02c
#define ODPRNIC_REG_MAX_MR_PAGES	0x030
#define ODPRNIC_REG_MAC_LO	0x040
#define ODPRNIC_REG_MAC_HI	0x044
#define ODPRNIC_REG_CMDQ_DESC	0x100
#define ODPRNIC_REG_CMDQ_AVAIL	0x108
#define ODPRNIC_REG_CMDQ_USED	0x110
#define ODPRNIC_REG_CMDQ_SIZE	0x118
#define ODPRNIC_REG_CMDQ_NOTIFY	0x11c
#define ODPRNIC_REG_EQ_DESC	0x140
#define ODPRNIC_REG_EQ_AVAIL	0x148
#define ODPRNIC_REG_EQ_USED	0x150
#define ODPRNIC_REG_EQ_SIZE	0x158
#define ODPRNIC_REG_EQ_NOTIFY	0x15c
#define ODPRNIC_REG_INV_KEY	0x200
#define ODPRNIC_REG_INV_START	0x208
#define ODPRNIC_REG_INV_LENGTH	0x210
#define ODPRNIC_REG_INV_SEQ	0x218
#define ODPRNIC_REG_INV_ACK	0x21c
#define ODPRNIC_MAGIC	0x5250444f
#define ODPRNIC_STATUS_READY	0x1
#define ODPRNIC_STATUS_FATAL	0x2
#define ODPRNIC_STATUS_FENCED	0x4
#define ODPRNIC_CONTROL_ENABLE	0x1
#define ODPRNIC_CONTROL_RESET	0x2
#define ODPRNIC_FATAL_NONE	0
#define ODPRNIC_FATAL_BAD_QUEUE	1
#define ODPRNIC_FATAL_RING	2
#define ODPRNIC_FATAL_INJECTED	3
#define ODPRNIC_FATAL_EVENT_OVERFLOW	4
#define ODPRNIC_QUEUE_MAX_SIZE	256

/* Capabilities */
#define ODPRNIC_CAP_ODP	0x01
#define ODPRNIC_CAP_IMPLICIT_ODP	0x02
#define ODPRNIC_CAP_PREFETCH	0x04
#define ODPRNIC_CAP_REVOCABLE	0x08
#define ODPRNIC_CAP_ATOMICS	0x10
#define ODPRNIC_CAP_UD	0x20

/* Command queue */
#define ODPRNIC_CMD_SIZE	64
#define ODPRNIC_RESP_SIZE	64
#define ODPRNIC_STATUS_OK	0
#define ODPRNIC_STATUS_BAD_OPCODE	1
#define ODPRNIC_STATUS_BAD_PARAM	2
#define ODPRNIC_STATUS_NO_RESOURCES	3
#define ODPRNIC_STATUS_BAD_HANDLE	4
#define ODPRNIC_STATUS_UNSUPPORTED	5
#define ODPRNIC_STATUS_BUSY	6
#define ODPRNIC_STATUS_DMA_ERROR	7
#define ODPRNIC_STATUS_BAD_CHAIN	8
#define ODPRNIC_STATUS_INJECTED	9

/* Commands */
#define ODPRNIC_CMD_NOP	0x00
#define ODPRNIC_CMD_CREATE_PD	0x01
#define ODPRNIC_CMD_DESTROY_PD	0x02
#define ODPRNIC_CMD_CREATE_MR	0x10
#define ODPRNIC_CMD_DESTROY_MR	0x11
#define ODPRNIC_CMD_MAP_PAGES	0x12
#define ODPRNIC_CMD_RESUME	0x13
#define ODPRNIC_CMD_QUERY_MR	0x14
#define ODPRNIC_ACCESS_LOCAL_WRITE	0x1
#define ODPRNIC_ACCESS_REMOTE_WRITE	0x2
#define ODPRNIC_ACCESS_REMOTE_READ	0x4
#define ODPRNIC_ACCESS_REMOTE_ATOMIC	0x8
#define ODPRNIC_MR_PINNED	0
#define ODPRNIC_MR_ODP	1
#define ODPRNIC_MR_IMPLICIT	2
#define ODPRNIC_MR_REVOCABLE	3
#define ODPRNIC_MR_STATE_LIVE	0
#define ODPRNIC_MR_STATE_REVOKED	1
#define ODPRNIC_MAP_PREFETCH	0x1
#define ODPRNIC_MAP_MAX	512
#define ODPRNIC_PTE_READ	0x1
#define ODPRNIC_PTE_WRITE	0x2
#define ODPRNIC_PAGE_SHIFT	12
#define ODPRNIC_MAX_MR_PAGES	262144

/* Event queue */
#define ODPRNIC_EVENT_SIZE	64
#define ODPRNIC_EVENT_BACKLOG	4096
#define ODPRNIC_EVENT_PAGE_FAULT	1
#define ODPRNIC_EVENT_INV_ACK	2
#define ODPRNIC_EVENT_MR_REVOKED	3
#define ODPRNIC_EVENT_DEVICE_ERROR	4
#define ODPRNIC_FAULT_WRITE	0x1
#define ODPRNIC_QPN_INJECTOR_FIRST	0xfff000
#define ODPRNIC_QPN_INJECTOR_LAST	0xffffff
#define ODPRNIC_INJECTOR_GID_PREFIX	0x0ULL
#define ODPRNIC_INJECTOR_GID_IID	0x0000ffffc0000201ULL
/* Interface 1.1: completion queues, queue pairs, address handles, doorbells. */
#define ODPRNIC_WQE_SIZE	128
#define ODPRNIC_CQE_SIZE	32
#define ODPRNIC_RING_HDR_SPACE	4096
#define ODPRNIC_MAX_SGE	4
#define ODPRNIC_MAX_INLINE	64
#define ODPRNIC_MAX_QP_WR	4096
#define ODPRNIC_MAX_CQE	16384
#define ODPRNIC_MAX_MSG_SIZE	0x40000000
#define ODPRNIC_PHYS_LKEY	0
#define ODPRNIC_WR_SEND	0
#define ODPRNIC_WR_SEND_IMM	1
#define ODPRNIC_WR_RDMA_WRITE	2
#define ODPRNIC_WR_RDMA_WRITE_IMM	3
#define ODPRNIC_WR_RDMA_READ	4
#define ODPRNIC_WR_ATOMIC_CMP_SWP	5
#define ODPRNIC_WR_ATOMIC_FETCH_ADD	6
#define ODPRNIC_WQE_F_SIGNALED	0x1
#define ODPRNIC_WQE_F_SOLICITED	0x2
#define ODPRNIC_WQE_F_INLINE	0x4
#define ODPRNIC_WQE_F_FENCE	0x8
#define ODPRNIC_WC_SUCCESS	0
#define ODPRNIC_WC_LOC_LEN_ERR	1
#define ODPRNIC_WC_LOC_QP_OP_ERR	2
#define ODPRNIC_WC_LOC_PROT_ERR	4
#define ODPRNIC_WC_WR_FLUSH_ERR	5
#define ODPRNIC_WC_BAD_RESP_ERR	7
#define ODPRNIC_WC_LOC_ACCESS_ERR	8
#define ODPRNIC_WC_REM_INV_REQ_ERR	9
#define ODPRNIC_WC_REM_ACCESS_ERR	10
#define ODPRNIC_WC_REM_OP_ERR	11
#define ODPRNIC_WC_RETRY_EXC_ERR	12
#define ODPRNIC_WC_RNR_RETRY_EXC_ERR	13
#define ODPRNIC_WC_FATAL_ERR	19
#define ODPRNIC_CQE_OP_SEND	0
#define ODPRNIC_CQE_OP_RDMA_WRITE	1
#define ODPRNIC_CQE_OP_RDMA_READ	2
#define ODPRNIC_CQE_OP_COMP_SWAP	3
#define ODPRNIC_CQE_OP_FETCH_ADD	4
#define ODPRNIC_CQE_OP_RECV	128
#define ODPRNIC_CQE_OP_RECV_RDMA_WITH_IMM	129
#define ODPRNIC_CQE_F_IMM	0x1
#define ODPRNIC_CQE_F_GRH	0x2
#define ODPRNIC_BAR_DB	4
#define ODPRNIC_DB_PAGE_SIZE	0x1000
#define ODPRNIC_DB_PAGES	256
#define ODPRNIC_DB_SQ	0x0
#define ODPRNIC_DB_RQ	0x4
#define ODPRNIC_DB_CQ_ARM	0x8
#define ODPRNIC_DB_CQ_ARM_SOLICITED	0x80000000
#define ODPRNIC_CMD_CREATE_CQ	0x20
#define ODPRNIC_CMD_DESTROY_CQ	0x21
#define ODPRNIC_CMD_CREATE_QP	0x30
#define ODPRNIC_CMD_MODIFY_QP	0x31
#define ODPRNIC_CMD_QUERY_QP	0x32
#define ODPRNIC_CMD_DESTROY_QP	0x33
#define ODPRNIC_CMD_CREATE_AH	0x40
#define ODPRNIC_CMD_DESTROY_AH	0x41
#define ODPRNIC_GID_ROCE_V1	0
#define ODPRNIC_GID_ROCE_V2_IPV4	1
#define ODPRNIC_GID_ROCE_V2_IPV6	2
#define ODPRNIC_QPT_RC	2
#define ODPRNIC_QPT_UD	4
#define ODPRNIC_QPT_GSI	1
#define ODPRNIC_QP_KERNEL	0x1
#define ODPRNIC_QP_SIG_ALL	0x2
#define ODPRNIC_QPS_RESET	0
#define ODPRNIC_QPS_INIT	1
#define ODPRNIC_QPS_RTR	2
#define ODPRNIC_QPS_RTS	3
#define ODPRNIC_QPS_SQD	4
#define ODPRNIC_QPS_SQE	5
#define ODPRNIC_QPS_ERR	6
#define ODPRNIC_QP_ATTR_STATE	0x1
#define ODPRNIC_QP_ATTR_ACCESS	0x2
#define ODPRNIC_QP_ATTR_PATH	0x4
#define ODPRNIC_QP_ATTR_DEST_QPN	0x8
#define ODPRNIC_QP_ATTR_QKEY	0x10
#define ODPRNIC_QP_ATTR_SQ_PSN	0x20
#define ODPRNIC_QP_ATTR_RQ_PSN	0x40
#define ODPRNIC_QP_ATTR_RETRY	0x80
#define ODPRNIC_QP_ATTR_MTU	0x100
#define ODPRNIC_EVENT_QP_ERROR	5
#define ODPRNIC_EVENT_CQ_ERROR	6
#define ODPRNIC_EVENT_QP_LAST_WQE	7

/* Command queue: one request, optional data buffers, one response. */
struct odprnic_cmd {
	__le16 opcode;		/* ODPRNIC_CMD_* */
	__le16 flags;		/* per opcode, 0 otherwise */
	__le32 cookie;		/* echoed in the response */
	__u8 args[56];		/* per opcode */
};

struct odprnic_resp {
	__le16 opcode;		/* copied from the request */
	__le16 status;		/* ODPRNIC_STATUS_* */
	__le32 cookie;
	__u8 out[56];		/* per opcode */
};

/* Event queue: one 64-byte buffer per event. */
struct odprnic_event {
	__le16 type;		/* ODPRNIC_EVENT_* */
	__le16 flags;
	__le32 seq;		/* +1 per event since reset */
	__u8 data[56];
};

/* Argument layouts within args/out ("Commands"). */
struct odprnic_args_create_mr {
	__le32 pdn;
	__le32 access;		/* ODPRNIC_ACCESS_* */
	__u8 mode;		/* ODPRNIC_MR_* */
	__u8 page_shift;
	__u8 rsvd[6];
	__le64 iova;
	__le64 length;
};

struct odprnic_args_map_pages {
	__le32 key;
	__le32 flags;		/* ODPRNIC_MAP_* */
	__le64 iova;
	__le32 count;
	__le32 rsvd;
};

struct odprnic_args_resume {
	__le32 token;
	__le32 status;
};

struct odprnic_out_query_mr {
	__le32 state;		/* ODPRNIC_MR_STATE_* */
	__le32 mode;
	__le64 faults;
	__le64 invalidations;
	__le64 prefetched_pages;
	__le64 mapped_pages;
};

/* Event data layouts ("Event queue"). */
struct odprnic_ev_page_fault {
	__le32 token;
	__le32 key;
	__le32 qpn;
	__le32 flags;		/* ODPRNIC_FAULT_* */
	__le64 iova;
	__le64 length;
};

/* Interface 1.1 argument layouts ("Completion queues, queue pairs ..."). */
struct odprnic_args_create_cq {
	__le64 buf;		/* guest-physical, page-aligned */
	__le32 size;		/* CQEs */
	__le16 vector;
	__le16 db_page;
};

struct odprnic_args_create_qp {
	__le64 buf;
	__le32 pdn;
	__le32 send_cqn;
	__le32 recv_cqn;
	__le32 sq_size;
	__le32 rq_size;
	__u8 type;		/* ODPRNIC_QPT_* */
	__u8 flags;		/* ODPRNIC_QP_KERNEL, ODPRNIC_QP_SIG_ALL */
	__le16 db_page;
};

/* MODIFY_QP args; QUERY_QP returns the same layout in out. */
struct odprnic_qp_attr {
	__le32 qpn;
	__le32 mask;		/* ODPRNIC_QP_ATTR_* */
	__u8 state;		/* ODPRNIC_QPS_* */
	__u8 path_mtu;		/* enum ib_mtu */
	__u8 retry_cnt;
	__u8 rnr_retry;
	__le32 dest_qpn;
	__le32 qkey;
	__le32 access;		/* ODPRNIC_ACCESS_REMOTE_* */
	__le32 sq_psn;
	__le32 rq_psn;
	__u8 dgid[16];
	__u8 min_rnr_timer;
	__u8 timeout;
	__u8 rsvd[6];
};

struct odprnic_args_create_ah {
	__le32 pdn;
	__u8 rsvd0[4];
	__u8 dgid[16];
	__u8 dmac[6];
	__u8 hop_limit;
	__u8 traffic_class;
	__le32 flow_label;
	__u8 sgid[16];
	__u8 gid_type;		/* ODPRNIC_GID_* */
	__u8 rsvd1[3];
};

struct odprnic_ev_qp_error {
	__le32 qpn;
	__le32 syndrome;	/* ODPRNIC_WC_* */
};

/* Rings ("Where rings live", "Work queue entries", "Completion ..."). */
struct odprnic_qp_hdr {
	__le32 sq_prod;		/* software: WQEs posted to the SQ */
	__le32 sq_cons;		/* device: SQ WQEs consumed */
	__le32 rq_prod;		/* software: WQEs posted to the RQ */
	__le32 rq_cons;		/* device: RQ WQEs consumed */
	__u8 reserved[48];
};

struct odprnic_cq_hdr {
	__le32 cons;		/* software: CQEs consumed */
	__le32 prod;		/* device: CQEs written */
	__u8 reserved[56];
};

struct odprnic_sge {
	__le64 addr;
	__le32 length;
	__le32 lkey;
};

struct odprnic_wqe {
	__le64 wr_id;
	__u8 opcode;		/* ODPRNIC_WR_*; RQ: 0 */
	__u8 flags;		/* ODPRNIC_WQE_F_* */
	__u8 num_sge;
	__u8 reserved0;
	__be32 imm_data;	/* as on the wire */
	__le64 remote_addr;
	__le32 rkey;
	__le32 ah;		/* UD */
	__le64 compare_add;
	__le64 swap;
	__le32 remote_qpn;	/* UD */
	__le32 remote_qkey;	/* UD */
	__le32 inline_len;	/* with ODPRNIC_WQE_F_INLINE */
	__le32 reserved1;
	union {
		struct odprnic_sge sge[ODPRNIC_MAX_SGE];
		__u8 inline_data[ODPRNIC_MAX_INLINE];
	};
};

struct odprnic_cqe {
	__le64 wr_id;
	__le32 byte_len;
	__be32 imm_data;
	__le32 qpn;		/* the local QP */
	__le32 src_qp;		/* UD and GSI */
	__u8 status;		/* ODPRNIC_WC_* */
	__u8 opcode;		/* ODPRNIC_CQE_OP_* */
	__u8 flags;		/* ODPRNIC_CQE_F_* */
	__u8 owner;
	__le16 pkey_index;
	__le16 reserved;
};

static_assert(sizeof(struct odprnic_cmd) == ODPRNIC_CMD_SIZE, "cmd");
static_assert(sizeof(struct odprnic_resp) == ODPRNIC_RESP_SIZE, "resp");
static_assert(sizeof(struct odprnic_event) == ODPRNIC_EVENT_SIZE, "event");
static_assert(sizeof(struct odprnic_args_create_mr) == 32, "create_mr");
static_assert(sizeof(struct odprnic_args_map_pages) == 24, "map_pages");
static_assert(sizeof(struct odprnic_out_query_mr) == 40, "query_mr");
static_assert(sizeof(struct odprnic_ev_page_fault) == 32, "page_fault");
static_assert(ODPRNIC_MAP_MAX * sizeof(__u64) == 4096, "map_max");
static_assert(sizeof(struct odprnic_args_create_cq) == 16, "create_cq");
static_assert(sizeof(struct odprnic_args_create_qp) == 32, "create_qp");
static_assert(sizeof(struct odprnic_qp_attr) == 56, "qp_attr");
static_assert(sizeof(struct odprnic_args_create_ah) == 56, "create_ah");
static_assert(sizeof(struct odprnic_qp_hdr) == 64, "qp_hdr");
static_assert(sizeof(struct odprnic_cq_hdr) == 64, "cq_hdr");
static_assert(sizeof(struct odprnic_sge) == 16, "sge");
static_assert(sizeof(struct odprnic_wqe) == ODPRNIC_WQE_SIZE, "wqe");
static_assert(sizeof(struct odprnic_cqe) == ODPRNIC_CQE_SIZE, "cqe");

#endif /* ODP_RNIC_HW_H */
