/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR Linux-OpenIB) */
/*
 * odp-rnic: the uverbs ABI between the kernel driver (odp_rnic.ko) and the
 * rdma-core provider (libodprnic). Versioned by ODPRNIC_UVERBS_ABI_VERSION;
 * a change that is not a pure addition at the end of a struct bumps it.
 */
#ifndef ODP_RNIC_ABI_USER_H
#define ODP_RNIC_ABI_USER_H

#include <linux/types.h>

#define ODPRNIC_UVERBS_ABI_VERSION	1

/*
 * Registration modes requested in odprnic_reg_mr_req.flags.
 *
 * Neither flag: the module parameter default_mr_mode decides for a non-ODP
 * registration. IB_ACCESS_ON_DEMAND in the access flags always selects an
 * ODP registration; setting either flag together with it is -EINVAL, as is
 * setting both flags.
 */
#define ODPRNIC_REG_MR_REVOCABLE	0x1	/* bit 0 */
#define ODPRNIC_REG_MR_PINNED		0x2	/* bit 1 */

/* The mode the driver chose, in odprnic_reg_mr_resp.mode. */
enum odprnic_mr_mode {
	ODPRNIC_MR_MODE_PINNED = 0,
	ODPRNIC_MR_MODE_ODP = 1,
	ODPRNIC_MR_MODE_IMPLICIT = 2,
	ODPRNIC_MR_MODE_REVOCABLE = 3,
};

struct odprnic_reg_mr_req {
	__u32 flags;	/* ODPRNIC_REG_MR_* */
	__u32 reserved;	/* must be 0 */
};

struct odprnic_reg_mr_resp {
	__u32 mode;	/* enum odprnic_mr_mode */
	__u32 reserved;
};

/*
 * Interface 1.1 (docs/hardware.md, "Completion queues, queue pairs and
 * address handles"): the kernel allocates every ring (zeroed, physically
 * contiguous, page-aligned) and the provider maps it with
 * mmap(NULL, buf_size, PROT_READ | PROT_WRITE, MAP_SHARED, cmd_fd, mmap_key).
 * Ring layouts (struct odprnic_qp_hdr, odprnic_cq_hdr, odprnic_wqe,
 * odprnic_cqe) are in the kernel's odp_rnic_hw.h, which includes nothing
 * but <linux/types.h>.
 */

/*
 * The context's doorbell page in BAR 4: ODPRNIC_DB_SQ, _RQ and _CQ_ARM
 * are offsets in it. Mapped write-only and uncached with
 * mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, cmd_fd, db_mmap_key).
 */
struct odprnic_alloc_ucontext_resp {
	__u32 db_page;		/* the page number; every CQ and QP uses it */
	__u32 wqe_size;		/* ODPRNIC_WQE_SIZE */
	__u32 cqe_size;		/* ODPRNIC_CQE_SIZE */
	__u32 max_inline;	/* ODPRNIC_MAX_INLINE */
	__aligned_u64 db_mmap_key;
};

/* CQ buffer: struct odprnic_cq_hdr in the first 4096 bytes, then CQEs. */
struct odprnic_create_cq_resp {
	__aligned_u64 mmap_key;
	__u32 cqn;
	__u32 size;		/* CQEs in the ring (a power of two) */
	__u32 buf_size;		/* bytes to map */
	__u32 reserved;
};

/*
 * QP buffer: struct odprnic_qp_hdr at 0, the SQ at ODPRNIC_RING_HDR_SPACE,
 * the RQ right after sq_size WQEs.
 */
struct odprnic_create_qp_resp {
	__aligned_u64 mmap_key;
	__u32 qpn;
	__u32 sq_size;		/* WQEs (a power of two) */
	__u32 rq_size;		/* WQEs (a power of two) */
	__u32 buf_size;		/* bytes to map */
};

/* The device's AH number, for the ah field of a UD WQE. */
struct odprnic_create_ah_resp {
	__u32 ah;
	__u32 reserved;
};

#endif /* ODP_RNIC_ABI_USER_H */
