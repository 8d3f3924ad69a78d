/* SPDX-License-Identifier: GPL-2.0 */
/*
 * odp-rnic hardware contract v1.0 (docs/hardware.md): registers, queue,
 * command and event formats. Every constant carries the name and value of
 * the contract's tables; device/tests/contract.rs compares them with the
 * document and with device/src/hw.rs. Change all three together.
 */
#ifndef ODP_RNIC_HW_H
#define ODP_RNIC_HW_H

#include <linux/build_bug.h>
#include <linux/types.h>

/* Interface version */
#define ODPRNIC_VERSION_MAJOR	1
#define ODPRNIC_VERSION_MINOR	0

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

/* Command queue: one request, optional data buffers, one response. */
struct odprnic_cmd {
	__le16 opcode;		/* ODPRNIC_CMD_* */
	__le16 flags;		/* per opcode, 0 otherwise */
	__le32 cookie;		/* echoed in the response */
	u8 args[56];		/* per opcode */
} __packed;

struct odprnic_resp {
	__le16 opcode;		/* copied from the request */
	__le16 status;		/* ODPRNIC_STATUS_* */
	__le32 cookie;
	u8 out[56];		/* per opcode */
} __packed;

/* Event queue: one 64-byte buffer per event. */
struct odprnic_event {
	__le16 type;		/* ODPRNIC_EVENT_* */
	__le16 flags;
	__le32 seq;		/* +1 per event since reset */
	u8 data[56];
} __packed;

/* Argument layouts within args/out ("Commands"). */
struct odprnic_args_create_mr {
	__le32 pdn;
	__le32 access;		/* ODPRNIC_ACCESS_* */
	u8 mode;		/* ODPRNIC_MR_* */
	u8 page_shift;
	u8 rsvd[6];
	__le64 iova;
	__le64 length;
} __packed;

struct odprnic_args_map_pages {
	__le32 key;
	__le32 flags;		/* ODPRNIC_MAP_* */
	__le64 iova;
	__le32 count;
} __packed;

struct odprnic_args_resume {
	__le32 token;
	__le32 status;
} __packed;

struct odprnic_out_query_mr {
	__le32 state;		/* ODPRNIC_MR_STATE_* */
	__le32 mode;
	__le64 faults;
	__le64 invalidations;
	__le64 prefetched_pages;
	__le64 mapped_pages;
} __packed;

/* Event data layouts ("Event queue"). */
struct odprnic_ev_page_fault {
	__le32 token;
	__le32 key;
	__le32 qpn;
	__le32 flags;		/* ODPRNIC_FAULT_* */
	__le64 iova;
	__le64 length;
} __packed;

static_assert(sizeof(struct odprnic_cmd) == ODPRNIC_CMD_SIZE);
static_assert(sizeof(struct odprnic_resp) == ODPRNIC_RESP_SIZE);
static_assert(sizeof(struct odprnic_event) == ODPRNIC_EVENT_SIZE);
static_assert(sizeof(struct odprnic_args_create_mr) == 32);
static_assert(sizeof(struct odprnic_args_map_pages) == 20);
static_assert(sizeof(struct odprnic_out_query_mr) == 40);
static_assert(sizeof(struct odprnic_ev_page_fault) == 32);
static_assert(ODPRNIC_MAP_MAX * sizeof(u64) == 4096);

#endif /* ODP_RNIC_HW_H */
