/* SPDX-License-Identifier: GPL-2.0 OR Linux-OpenIB */
/*
 * odprnic: the libibverbs provider for the odp-rnic emulated RDMA NIC
 * (kernel driver odp_rnic.ko; hardware contract docs/hardware.md).
 *
 * Matching: the kernel driver is out of tree and has no rdma_driver_id, so
 * libibverbs matches this provider by the PCI identity of the device
 * (vendor 0x1234, device 0x0db0, "PCI identity" in the contract) and checks
 * the uverbs ABI version ODPRNIC_UVERBS_ABI_VERSION.
 *
 * Memory registration modes (ibv_reg_mr):
 *
 *   - IBV_ACCESS_ON_DEMAND in the access flags: an ODP registration; the
 *     device faults pages in and the kernel invalidates them at will.
 *     addr == NULL with length == SIZE_MAX is implicit ODP (the whole
 *     address space), as for every provider (ibv_cmd_reg_mr).
 *   - otherwise the environment variable ODPRNIC_MR_MODE, read at every
 *     ibv_reg_mr call, chooses the mode of this registration:
 *       ODPRNIC_MR_MODE=pinned     long-term pin (FOLL_LONGTERM); refused
 *                                  on FS-DAX and on dirty-tracked shared
 *                                  file mappings
 *       ODPRNIC_MR_MODE=revocable  short-term pins plus an mmu notifier; the
 *                                  kernel revokes the registration when the
 *                                  memory is invalidated (truncate, CoW,
 *                                  migration) and the key stops working
 *       unset or empty             the kernel driver's default_mr_mode
 *                                  module parameter decides
 *     Any other value fails the registration with EINVAL. The variable is
 *     ignored for ODP registrations (the kernel refuses a mode flag
 *     together with IBV_ACCESS_ON_DEMAND).
 *
 * The mode the kernel chose is kept in struct odprnic_mr (field mode) and
 * logged at debug level (VERBS_LOG_LEVEL=4).
 *
 * Data path (interface 1.1, docs/hardware.md "Completion queues, queue
 * pairs and address handles"): the kernel allocates every ring and the
 * provider maps it (mmap on the context's cmd_fd with the key of the create
 * response), together with the context's doorbell page (alloc_ucontext).
 * Posting writes WQEs into the mapped SQ/RQ, then the producer index into
 * the ring header, then the QPN into the doorbell page; polling reads CQEs
 * by their owner bit and writes the consumer index back. No system call per
 * operation. RC and UD QPs, ibv_post_send and the ibv_wr_* API
 * (ibv_create_qp_ex with send_ops_flags). SRQ, UC, XRC, MW are not there:
 * their verbs fail with EOPNOTSUPP (libibverbs' defaults).
 */
#ifndef ODPRNIC_H
#define ODPRNIC_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <infiniband/driver.h>
#include <infiniband/kern-abi.h>
#include <rdma/odp_rnic-abi.h>
/* ring layouts: the kernel driver's header, user-space clean */
#include <odp_rnic_hw.h>

/* "PCI identity" in docs/hardware.md. */
#define ODPRNIC_PCI_VENDOR_ID	0x1234
#define ODPRNIC_PCI_DEVICE_ID	0x0db0

/* The environment variable that selects the mode of non-ODP registrations. */
#define ODPRNIC_ENV_MR_MODE	"ODPRNIC_MR_MODE"

/*
 * The reg_mr command with its driver-specific part, laid out as
 * DECLARE_DRV_CMD would: the core request or response, then our struct, with
 * no padding between or after.
 */
struct odprnic_reg_mr_cmd {
	struct ibv_reg_mr ibv_cmd;
	struct odprnic_reg_mr_req drv_payload;
};

struct odprnic_reg_mr_cmd_resp {
	struct ib_uverbs_reg_mr_resp ibv_resp;
	struct odprnic_reg_mr_resp drv_payload;
};

static_assert(sizeof(struct odprnic_reg_mr_cmd) ==
		      sizeof(struct ibv_reg_mr) +
			      sizeof(struct odprnic_reg_mr_req),
	      "padding in the reg_mr request");
static_assert(sizeof(struct odprnic_reg_mr_cmd_resp) ==
		      sizeof(struct ib_uverbs_reg_mr_resp) +
			      sizeof(struct odprnic_reg_mr_resp),
	      "padding in the reg_mr response");

struct odprnic_alloc_ucontext_cmd_resp {
	struct ib_uverbs_get_context_resp ibv_resp;
	struct odprnic_alloc_ucontext_resp drv_payload;
};

struct odprnic_create_cq_cmd_resp {
	struct ib_uverbs_create_cq_resp ibv_resp;
	struct odprnic_create_cq_resp drv_payload;
};

struct odprnic_create_qp_cmd_resp {
	struct ib_uverbs_create_qp_resp ibv_resp;
	struct odprnic_create_qp_resp drv_payload;
};

struct odprnic_create_ah_cmd_resp {
	struct ib_uverbs_create_ah_resp ibv_resp;
	struct odprnic_create_ah_resp drv_payload;
};

static_assert(sizeof(struct odprnic_alloc_ucontext_cmd_resp) ==
		      sizeof(struct ib_uverbs_get_context_resp) +
			      sizeof(struct odprnic_alloc_ucontext_resp),
	      "padding in the alloc_ucontext response");
static_assert(sizeof(struct odprnic_create_cq_cmd_resp) ==
		      sizeof(struct ib_uverbs_create_cq_resp) +
			      sizeof(struct odprnic_create_cq_resp),
	      "padding in the create_cq response");
static_assert(sizeof(struct odprnic_create_qp_cmd_resp) ==
		      sizeof(struct ib_uverbs_create_qp_resp) +
			      sizeof(struct odprnic_create_qp_resp),
	      "padding in the create_qp response");
static_assert(sizeof(struct odprnic_create_ah_cmd_resp) ==
		      sizeof(struct ib_uverbs_create_ah_resp) +
			      sizeof(struct odprnic_create_ah_resp),
	      "padding in the create_ah response");

struct odprnic_device {
	struct verbs_device ibv_dev;
};

struct odprnic_context {
	struct verbs_context ibv_ctx;
	/* the doorbell page (BAR 4 page db_page), NULL without a data path */
	void *db;
	uint32_t db_page;
	uint32_t max_inline;
	bool atomics;		/* IBV_ATOMIC_HCA: CMP_SWP and FETCH_ADD */
};

struct odprnic_cq {
	struct verbs_cq vcq;
	pthread_spinlock_t lock;
	void *buf;		/* the mapped ring: header, then CQEs */
	size_t buf_size;
	struct odprnic_cq_hdr *hdr;
	struct odprnic_cqe *cqes;
	uint32_t cqn;
	uint32_t size;		/* CQEs, a power of two */
	uint32_t cons;		/* free-running consumer index */
};

/* One work queue of a QP (SQ or RQ) inside the QP's mapped buffer. */
struct odprnic_wq {
	pthread_spinlock_t lock;
	struct odprnic_wqe *wqes;
	uint32_t size;		/* WQEs, a power of two */
	uint32_t prod;		/* free-running producer index */
};

struct odprnic_qp {
	struct verbs_qp vqp;
	void *buf;		/* header, SQ, RQ */
	size_t buf_size;
	struct odprnic_qp_hdr *hdr;
	struct odprnic_wq sq;
	struct odprnic_wq rq;
	uint32_t qpn;
	uint32_t max_inline;
	bool sig_all;
	enum ibv_qp_state state;	/* the last state modify_qp set */
	/* ibv_wr_* API: between wr_start and wr_complete/abort */
	uint32_t wr_prod;	/* producer index including the new WQEs */
	int wr_err;		/* the first error since wr_start */
};

struct odprnic_ah {
	struct ibv_ah ibv_ah;
	uint32_t ahn;		/* the device's AH number (WQE field ah) */
};

struct odprnic_mr {
	struct verbs_mr vmr;
	uint32_t mode;		/* enum odprnic_mr_mode, as the kernel chose */
};

static inline struct odprnic_context *to_octx(struct ibv_context *ibctx)
{
	return container_of(ibctx, struct odprnic_context, ibv_ctx.context);
}

static inline struct odprnic_cq *to_ocq(struct ibv_cq *ibcq)
{
	return container_of(ibcq, struct odprnic_cq, vcq.cq);
}

static inline struct odprnic_qp *to_oqp(struct ibv_qp *ibqp)
{
	return container_of(ibqp, struct odprnic_qp, vqp.qp);
}

static inline struct odprnic_qp *qpx_to_oqp(struct ibv_qp_ex *qpx)
{
	return container_of(qpx, struct odprnic_qp, vqp.qp_ex);
}

static inline struct odprnic_ah *to_oah(struct ibv_ah *ibah)
{
	return container_of(ibah, struct odprnic_ah, ibv_ah);
}

/* odprnic_dp.c: the data path */
struct ibv_cq *odprnic_create_cq(struct ibv_context *ibctx, int cqe,
				 struct ibv_comp_channel *channel,
				 int comp_vector);
int odprnic_destroy_cq(struct ibv_cq *ibcq);
int odprnic_poll_cq(struct ibv_cq *ibcq, int ne, struct ibv_wc *wc);
int odprnic_req_notify_cq(struct ibv_cq *ibcq, int solicited_only);
struct ibv_qp *odprnic_create_qp(struct ibv_pd *pd,
				 struct ibv_qp_init_attr *attr);
struct ibv_qp *odprnic_create_qp_ex(struct ibv_context *ibctx,
				    struct ibv_qp_init_attr_ex *attr);
int odprnic_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
		      int attr_mask);
int odprnic_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
		     int attr_mask, struct ibv_qp_init_attr *init_attr);
int odprnic_destroy_qp(struct ibv_qp *ibqp);
int odprnic_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
		      struct ibv_send_wr **bad_wr);
int odprnic_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr,
		      struct ibv_recv_wr **bad_wr);
struct ibv_ah *odprnic_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr);
int odprnic_destroy_ah(struct ibv_ah *ibah);

static inline struct odprnic_mr *to_omr(struct verbs_mr *vmr)
{
	return container_of(vmr, struct odprnic_mr, vmr);
}

#endif /* ODPRNIC_H */
