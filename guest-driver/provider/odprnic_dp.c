// SPDX-License-Identifier: GPL-2.0 OR Linux-OpenIB
/*
 * odprnic: the user-space data path (docs/hardware.md, "Completion queues,
 * queue pairs and address handles (interface 1.1)").
 *
 * The kernel driver allocates every ring and names it to the device; the
 * provider maps it and from then on posts and polls without a system call:
 *
 *   post:  write the WQE into its slot, udma_to_device_barrier(), store the
 *          producer index in the ring header, udma_to_device_barrier(),
 *          write the QPN to DB_SQ or DB_RQ of the context's doorbell page;
 *   poll:  the CQE at cons is new when its owner byte is
 *          ((cons / size) & 1) ^ 1; read it after udma_from_device_barrier(),
 *          then store cons in the CQ header so the device sees the space;
 *   arm:   write cqn (| DB_CQ_ARM_SOLICITED) to DB_CQ_ARM.
 *
 * Whatever the device would refuse (too many SGEs, inline data longer than
 * ODPRNIC_MAX_INLINE, an opcode the QP type or the device does not have, a
 * UD send without an AH) is refused here, before anything is written to the
 * ring: EINVAL, or ENOMEM for a full queue, with *bad_wr on the first work
 * request not posted.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <endian.h>

#include <util/mmio.h>
#include <util/udma_barrier.h>

#include "odprnic.h"

static inline uint32_t load_le32(const __le32 *p)
{
	return le32toh(atomic_load_explicit((_Atomic(uint32_t) *)p,
					    memory_order_relaxed));
}

static inline void store_le32(__le32 *p, uint32_t v)
{
	atomic_store_explicit((_Atomic(uint32_t) *)p, htole32(v),
			      memory_order_relaxed);
}

static void odprnic_ring_db(struct odprnic_context *ctx, unsigned int off,
			    uint32_t val)
{
	mmio_write32_le((uint8_t *)ctx->db + off, htole32(val));
}

/* ---- completion queues ---------------------------------------------- */

struct ibv_cq *odprnic_create_cq(struct ibv_context *ibctx, int cqe,
				 struct ibv_comp_channel *channel,
				 int comp_vector)
{
	struct odprnic_context *ctx = to_octx(ibctx);
	struct odprnic_create_cq_cmd_resp resp = {};
	struct ibv_create_cq cmd = {};
	struct odprnic_cq *cq;
	int ret;

	/* a kernel driver without the data path gave no doorbell page */
	if (!ctx->db) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	if (cqe < 1 || cqe > ODPRNIC_MAX_CQE) {
		errno = EINVAL;
		return NULL;
	}
	cq = calloc(1, sizeof(*cq));
	if (!cq)
		return NULL;

	ret = ibv_cmd_create_cq(ibctx, cqe, channel, comp_vector, &cq->vcq.cq,
				&cmd, sizeof(cmd), &resp.ibv_resp,
				sizeof(resp));
	if (ret) {
		free(cq);
		errno = ret;
		return NULL;
	}
	if (!resp.drv_payload.size ||
	    resp.drv_payload.size & (resp.drv_payload.size - 1) ||
	    resp.drv_payload.buf_size < ODPRNIC_RING_HDR_SPACE +
			(size_t)resp.drv_payload.size * ODPRNIC_CQE_SIZE) {
		verbs_err(verbs_get_ctx(ibctx),
			  "odprnic: create_cq: unusable response (size %u, buf_size %u)\n",
			  resp.drv_payload.size, resp.drv_payload.buf_size);
		ret = EPROTO;
		goto err_destroy;
	}
	cq->cqn = resp.drv_payload.cqn;
	cq->size = resp.drv_payload.size;
	cq->buf_size = resp.drv_payload.buf_size;
	cq->buf = mmap(NULL, cq->buf_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       ibctx->cmd_fd, resp.drv_payload.mmap_key);
	if (cq->buf == MAP_FAILED) {
		ret = errno;
		verbs_err(verbs_get_ctx(ibctx),
			  "odprnic: mapping CQ %u failed: %m\n", cq->cqn);
		goto err_destroy;
	}
	cq->hdr = cq->buf;
	cq->cqes = (struct odprnic_cqe *)((uint8_t *)cq->buf +
					  ODPRNIC_RING_HDR_SPACE);
	cq->cons = load_le32(&cq->hdr->cons);
	pthread_spin_init(&cq->lock, PTHREAD_PROCESS_PRIVATE);
	/* the kernel rounded up: report what the ring holds */
	cq->vcq.cq.cqe = cq->size;
	return &cq->vcq.cq;

err_destroy:
	ibv_cmd_destroy_cq(&cq->vcq.cq);
	free(cq);
	errno = ret;
	return NULL;
}

int odprnic_destroy_cq(struct ibv_cq *ibcq)
{
	struct odprnic_cq *cq = to_ocq(ibcq);
	int ret;

	ret = ibv_cmd_destroy_cq(ibcq);
	if (ret)
		return ret;
	munmap(cq->buf, cq->buf_size);
	pthread_spin_destroy(&cq->lock);
	free(cq);
	return 0;
}

static enum ibv_wc_status odprnic_wc_status(uint8_t s)
{
	/* the contract's ODPRNIC_WC_* are enum ib_wc_status values */
	switch (s) {
	case ODPRNIC_WC_SUCCESS:
		return IBV_WC_SUCCESS;
	case ODPRNIC_WC_LOC_LEN_ERR:
		return IBV_WC_LOC_LEN_ERR;
	case ODPRNIC_WC_LOC_QP_OP_ERR:
		return IBV_WC_LOC_QP_OP_ERR;
	case ODPRNIC_WC_LOC_PROT_ERR:
		return IBV_WC_LOC_PROT_ERR;
	case ODPRNIC_WC_WR_FLUSH_ERR:
		return IBV_WC_WR_FLUSH_ERR;
	case ODPRNIC_WC_BAD_RESP_ERR:
		return IBV_WC_BAD_RESP_ERR;
	case ODPRNIC_WC_LOC_ACCESS_ERR:
		return IBV_WC_LOC_ACCESS_ERR;
	case ODPRNIC_WC_REM_INV_REQ_ERR:
		return IBV_WC_REM_INV_REQ_ERR;
	case ODPRNIC_WC_REM_ACCESS_ERR:
		return IBV_WC_REM_ACCESS_ERR;
	case ODPRNIC_WC_REM_OP_ERR:
		return IBV_WC_REM_OP_ERR;
	case ODPRNIC_WC_RETRY_EXC_ERR:
		return IBV_WC_RETRY_EXC_ERR;
	case ODPRNIC_WC_RNR_RETRY_EXC_ERR:
		return IBV_WC_RNR_RETRY_EXC_ERR;
	case ODPRNIC_WC_FATAL_ERR:
		return IBV_WC_FATAL_ERR;
	default:
		return IBV_WC_GENERAL_ERR;
	}
}

static enum ibv_wc_opcode odprnic_wc_opcode(uint8_t op)
{
	switch (op) {
	case ODPRNIC_CQE_OP_SEND:
		return IBV_WC_SEND;
	case ODPRNIC_CQE_OP_RDMA_WRITE:
		return IBV_WC_RDMA_WRITE;
	case ODPRNIC_CQE_OP_RDMA_READ:
		return IBV_WC_RDMA_READ;
	case ODPRNIC_CQE_OP_COMP_SWAP:
		return IBV_WC_COMP_SWAP;
	case ODPRNIC_CQE_OP_FETCH_ADD:
		return IBV_WC_FETCH_ADD;
	case ODPRNIC_CQE_OP_RECV_RDMA_WITH_IMM:
		return IBV_WC_RECV_RDMA_WITH_IMM;
	case ODPRNIC_CQE_OP_RECV:
	default:
		return IBV_WC_RECV;
	}
}

int odprnic_poll_cq(struct ibv_cq *ibcq, int ne, struct ibv_wc *wc)
{
	struct odprnic_cq *cq = to_ocq(ibcq);
	uint32_t shift = __builtin_ctz(cq->size);
	int n;

	pthread_spin_lock(&cq->lock);
	for (n = 0; n < ne; n++) {
		const struct odprnic_cqe *cqe =
			&cq->cqes[cq->cons & (cq->size - 1)];
		uint8_t owner = ((cq->cons >> shift) & 1) ^ 1;
		struct ibv_wc *w = &wc[n];

		if (atomic_load_explicit((_Atomic(uint8_t) *)&cqe->owner,
					 memory_order_relaxed) != owner)
			break;
		/* the CQE's body after its owner byte */
		udma_from_device_barrier();

		memset(w, 0, sizeof(*w));
		w->wr_id = le64toh(cqe->wr_id);
		w->status = odprnic_wc_status(cqe->status);
		w->opcode = odprnic_wc_opcode(cqe->opcode);
		w->byte_len = le32toh(cqe->byte_len);
		w->qp_num = le32toh(cqe->qpn);
		w->src_qp = le32toh(cqe->src_qp);
		w->pkey_index = le16toh(cqe->pkey_index);
		if (cqe->flags & ODPRNIC_CQE_F_IMM) {
			w->wc_flags |= IBV_WC_WITH_IMM;
			w->imm_data = cqe->imm_data; /* big-endian both */
		}
		if (cqe->flags & ODPRNIC_CQE_F_GRH)
			w->wc_flags |= IBV_WC_GRH;
		cq->cons++;
	}
	if (n) {
		/* done reading the CQEs before the device may reuse them */
		udma_to_device_barrier();
		store_le32(&cq->hdr->cons, cq->cons);
	}
	pthread_spin_unlock(&cq->lock);
	return n;
}

int odprnic_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
	struct odprnic_context *ctx = to_octx(ibcq->context);
	struct odprnic_cq *cq = to_ocq(ibcq);

	/* cons must be visible before the device looks at arming */
	udma_to_device_barrier();
	odprnic_ring_db(ctx, ODPRNIC_DB_CQ_ARM,
			cq->cqn | (solicited_only ? ODPRNIC_DB_CQ_ARM_SOLICITED :
						    0));
	return 0;
}

/* ---- queue pairs ---------------------------------------------------- */

enum {
	ODPRNIC_RC_SEND_OPS = IBV_QP_EX_WITH_SEND |
			      IBV_QP_EX_WITH_SEND_WITH_IMM |
			      IBV_QP_EX_WITH_RDMA_WRITE |
			      IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM |
			      IBV_QP_EX_WITH_RDMA_READ |
			      IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP |
			      IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD,
	ODPRNIC_UD_SEND_OPS = IBV_QP_EX_WITH_SEND |
			      IBV_QP_EX_WITH_SEND_WITH_IMM,
	ODPRNIC_QP_COMP_MASK = IBV_QP_INIT_ATTR_PD |
			       IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
};

static void odprnic_set_wr_ops(struct odprnic_qp *qp, uint64_t ops);

struct ibv_qp *odprnic_create_qp_ex(struct ibv_context *ibctx,
				    struct ibv_qp_init_attr_ex *attr)
{
	struct odprnic_context *ctx = to_octx(ibctx);
	struct odprnic_create_qp_cmd_resp resp = {};
	struct ibv_create_qp cmd = {};
	struct odprnic_create_qp_resp *d = &resp.drv_payload;
	struct odprnic_qp *qp;
	uint64_t ops = 0;
	size_t need;
	int ret;

	if (!ctx->db || attr->comp_mask & ~ODPRNIC_QP_COMP_MASK || attr->srq ||
	    (attr->qp_type != IBV_QPT_RC && attr->qp_type != IBV_QPT_UD)) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	if (attr->cap.max_send_sge > ODPRNIC_MAX_SGE ||
	    attr->cap.max_recv_sge > ODPRNIC_MAX_SGE ||
	    attr->cap.max_send_wr > ODPRNIC_MAX_QP_WR ||
	    attr->cap.max_recv_wr > ODPRNIC_MAX_QP_WR ||
	    attr->cap.max_inline_data > ctx->max_inline) {
		errno = EINVAL;
		return NULL;
	}
	if (attr->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) {
		uint64_t sup = attr->qp_type == IBV_QPT_RC ?
				       ODPRNIC_RC_SEND_OPS :
				       ODPRNIC_UD_SEND_OPS;

		ops = attr->send_ops_flags;
		if (!ctx->atomics)
			sup &= ~(uint64_t)(IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP |
					   IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD);
		if (ops & ~sup) {
			errno = EOPNOTSUPP;
			return NULL;
		}
	}

	qp = calloc(1, sizeof(*qp));
	if (!qp)
		return NULL;

	ret = ibv_cmd_create_qp_ex(ibctx, &qp->vqp, attr, &cmd, sizeof(cmd),
				   &resp.ibv_resp, sizeof(resp));
	if (ret) {
		free(qp);
		errno = ret;
		return NULL;
	}

	need = ODPRNIC_RING_HDR_SPACE +
	       ((size_t)d->sq_size + d->rq_size) * ODPRNIC_WQE_SIZE;
	if (!d->sq_size || d->sq_size & (d->sq_size - 1) ||
	    !d->rq_size || d->rq_size & (d->rq_size - 1) ||
	    d->buf_size < need || d->qpn != qp->vqp.qp.qp_num) {
		verbs_err(verbs_get_ctx(ibctx),
			  "odprnic: create_qp: unusable response (qpn %u/%u, sq %u, rq %u, buf_size %u)\n",
			  d->qpn, qp->vqp.qp.qp_num, d->sq_size, d->rq_size,
			  d->buf_size);
		ret = EPROTO;
		goto err_destroy;
	}
	qp->qpn = d->qpn;
	qp->buf_size = d->buf_size;
	qp->buf = mmap(NULL, qp->buf_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       ibctx->cmd_fd, d->mmap_key);
	if (qp->buf == MAP_FAILED) {
		ret = errno;
		verbs_err(verbs_get_ctx(ibctx),
			  "odprnic: mapping QP %u failed: %m\n", qp->qpn);
		goto err_destroy;
	}
	qp->hdr = qp->buf;
	qp->sq.wqes = (struct odprnic_wqe *)((uint8_t *)qp->buf +
					     ODPRNIC_RING_HDR_SPACE);
	qp->sq.size = d->sq_size;
	qp->sq.prod = load_le32(&qp->hdr->sq_prod);
	qp->rq.wqes = qp->sq.wqes + d->sq_size;
	qp->rq.size = d->rq_size;
	qp->rq.prod = load_le32(&qp->hdr->rq_prod);
	qp->max_inline = ctx->max_inline;
	qp->sig_all = attr->sq_sig_all;
	qp->state = IBV_QPS_RESET;
	pthread_spin_init(&qp->sq.lock, PTHREAD_PROCESS_PRIVATE);
	pthread_spin_init(&qp->rq.lock, PTHREAD_PROCESS_PRIVATE);

	/* what the QP really has (the kernel rounds to powers of two) */
	attr->cap.max_send_wr = d->sq_size;
	attr->cap.max_recv_wr = d->rq_size;
	attr->cap.max_send_sge = ODPRNIC_MAX_SGE;
	attr->cap.max_recv_sge = ODPRNIC_MAX_SGE;
	attr->cap.max_inline_data = qp->max_inline;

	if (attr->comp_mask & IBV_QP_INIT_ATTR_SEND_OPS_FLAGS) {
		odprnic_set_wr_ops(qp, ops);
		qp->vqp.comp_mask |= VERBS_QP_EX;
	}
	return &qp->vqp.qp;

err_destroy:
	ibv_cmd_destroy_qp(&qp->vqp.qp);
	free(qp);
	errno = ret;
	return NULL;
}

struct ibv_qp *odprnic_create_qp(struct ibv_pd *pd,
				 struct ibv_qp_init_attr *attr)
{
	struct ibv_qp_init_attr_ex ex = {};
	struct ibv_qp *qp;

	memcpy(&ex, attr, sizeof(*attr));
	ex.comp_mask = IBV_QP_INIT_ATTR_PD;
	ex.pd = pd;
	qp = odprnic_create_qp_ex(pd->context, &ex);
	if (qp)
		attr->cap = ex.cap;
	return qp;
}

int odprnic_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
		      int attr_mask)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct ibv_modify_qp cmd = {};
	int ret;

	ret = ibv_cmd_modify_qp(ibqp, attr, attr_mask, &cmd, sizeof(cmd));
	if (ret)
		return ret;
	if (attr_mask & IBV_QP_STATE)
		qp->state = attr->qp_state;
	return 0;
}

int odprnic_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr,
		     int attr_mask, struct ibv_qp_init_attr *init_attr)
{
	struct ibv_query_qp cmd = {};

	return ibv_cmd_query_qp(ibqp, attr, attr_mask, init_attr, &cmd,
				sizeof(cmd));
}

int odprnic_destroy_qp(struct ibv_qp *ibqp)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	int ret;

	ret = ibv_cmd_destroy_qp(ibqp);
	if (ret)
		return ret;
	munmap(qp->buf, qp->buf_size);
	pthread_spin_destroy(&qp->sq.lock);
	pthread_spin_destroy(&qp->rq.lock);
	free(qp);
	return 0;
}

/* True when the work queue has no free slot for WQE number prod. */
static bool odprnic_wq_full(const struct odprnic_wq *wq, uint32_t prod,
			    const __le32 *cons)
{
	return prod - load_le32(cons) >= wq->size;
}

static struct odprnic_wqe *odprnic_wq_slot(struct odprnic_wq *wq,
					   uint32_t idx)
{
	return &wq->wqes[idx & (wq->size - 1)];
}

/* The work queue entry's opcode for this QP, or -1 when it has none. */
static int odprnic_wr_opcode(struct odprnic_qp *qp, enum ibv_wr_opcode op)
{
	struct odprnic_context *ctx = to_octx(qp->vqp.qp.context);
	bool rc = qp->vqp.qp.qp_type == IBV_QPT_RC;

	switch (op) {
	case IBV_WR_SEND:
		return ODPRNIC_WR_SEND;
	case IBV_WR_SEND_WITH_IMM:
		return ODPRNIC_WR_SEND_IMM;
	case IBV_WR_RDMA_WRITE:
		return rc ? ODPRNIC_WR_RDMA_WRITE : -1;
	case IBV_WR_RDMA_WRITE_WITH_IMM:
		return rc ? ODPRNIC_WR_RDMA_WRITE_IMM : -1;
	case IBV_WR_RDMA_READ:
		return rc ? ODPRNIC_WR_RDMA_READ : -1;
	case IBV_WR_ATOMIC_CMP_AND_SWP:
		return rc && ctx->atomics ? ODPRNIC_WR_ATOMIC_CMP_SWP : -1;
	case IBV_WR_ATOMIC_FETCH_AND_ADD:
		return rc && ctx->atomics ? ODPRNIC_WR_ATOMIC_FETCH_ADD : -1;
	default:
		return -1;
	}
}

static uint8_t odprnic_wqe_flags(struct odprnic_qp *qp, unsigned int flags)
{
	uint8_t f = 0;

	if ((flags & IBV_SEND_SIGNALED) || qp->sig_all)
		f |= ODPRNIC_WQE_F_SIGNALED;
	if (flags & IBV_SEND_SOLICITED)
		f |= ODPRNIC_WQE_F_SOLICITED;
	if (flags & IBV_SEND_FENCE)
		f |= ODPRNIC_WQE_F_FENCE;
	return f;
}

static void odprnic_wqe_sge(struct odprnic_wqe *wqe, unsigned int i,
			    uint32_t lkey, uint64_t addr, uint32_t length)
{
	wqe->sge[i].addr = htole64(addr);
	wqe->sge[i].length = htole32(length);
	wqe->sge[i].lkey = htole32(lkey);
}

/* Atomics carry exactly one 8-byte SGE and an 8-byte aligned target. */
static bool odprnic_atomic_ok(uint8_t opcode, int num_sge,
			      const struct ibv_sge *sg, uint64_t remote_addr)
{
	if (opcode != ODPRNIC_WR_ATOMIC_CMP_SWP &&
	    opcode != ODPRNIC_WR_ATOMIC_FETCH_ADD)
		return true;
	return num_sge == 1 && sg[0].length == 8 && !(remote_addr & 7);
}

/*
 * Builds the WQE of one ibv_send_wr in *wqe (a scratch copy, so that a
 * refused request leaves the ring untouched). Returns 0 or EINVAL.
 */
static int odprnic_build_send(struct odprnic_qp *qp, struct odprnic_wqe *wqe,
			      const struct ibv_send_wr *wr)
{
	bool ud = qp->vqp.qp.qp_type == IBV_QPT_UD;
	uint64_t raddr = 0;
	int opcode, i;

	opcode = odprnic_wr_opcode(qp, wr->opcode);
	if (opcode < 0 || wr->num_sge < 0 || wr->num_sge > ODPRNIC_MAX_SGE)
		return EINVAL;
	if (wr->num_sge && !wr->sg_list)
		return EINVAL;

	memset(wqe, 0, sizeof(*wqe));
	wqe->wr_id = htole64(wr->wr_id);
	wqe->opcode = opcode;
	wqe->flags = odprnic_wqe_flags(qp, wr->send_flags);
	if (wr->opcode == IBV_WR_SEND_WITH_IMM ||
	    wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
		wqe->imm_data = wr->imm_data; /* big-endian both */

	switch (opcode) {
	case ODPRNIC_WR_RDMA_WRITE:
	case ODPRNIC_WR_RDMA_WRITE_IMM:
	case ODPRNIC_WR_RDMA_READ:
		raddr = wr->wr.rdma.remote_addr;
		wqe->remote_addr = htole64(raddr);
		wqe->rkey = htole32(wr->wr.rdma.rkey);
		break;
	case ODPRNIC_WR_ATOMIC_CMP_SWP:
	case ODPRNIC_WR_ATOMIC_FETCH_ADD:
		raddr = wr->wr.atomic.remote_addr;
		wqe->remote_addr = htole64(raddr);
		wqe->rkey = htole32(wr->wr.atomic.rkey);
		wqe->compare_add = htole64(wr->wr.atomic.compare_add);
		wqe->swap = htole64(wr->wr.atomic.swap);
		break;
	default:
		break;
	}
	if (!odprnic_atomic_ok(opcode, wr->num_sge, wr->sg_list, raddr))
		return EINVAL;
	if (ud) {
		if (!wr->wr.ud.ah)
			return EINVAL;
		wqe->ah = htole32(to_oah(wr->wr.ud.ah)->ahn);
		wqe->remote_qpn = htole32(wr->wr.ud.remote_qpn);
		wqe->remote_qkey = htole32(wr->wr.ud.remote_qkey);
	}

	/* inline data: only for what carries data from the requester */
	if ((wr->send_flags & IBV_SEND_INLINE) &&
	    opcode != ODPRNIC_WR_RDMA_READ &&
	    opcode != ODPRNIC_WR_ATOMIC_CMP_SWP &&
	    opcode != ODPRNIC_WR_ATOMIC_FETCH_ADD) {
		uint32_t len = 0;

		for (i = 0; i < wr->num_sge; i++) {
			uint32_t l = wr->sg_list[i].length;

			if (l > qp->max_inline - len)
				return EINVAL;
			memcpy(wqe->inline_data + len,
			       (void *)(uintptr_t)wr->sg_list[i].addr, l);
			len += l;
		}
		wqe->flags |= ODPRNIC_WQE_F_INLINE;
		wqe->inline_len = htole32(len);
		return 0;
	}
	for (i = 0; i < wr->num_sge; i++)
		odprnic_wqe_sge(wqe, i, wr->sg_list[i].lkey,
				wr->sg_list[i].addr, wr->sg_list[i].length);
	wqe->num_sge = wr->num_sge;
	return 0;
}

/* WQEs before the index, the index before the doorbell. */
static void odprnic_publish(struct odprnic_qp *qp, __le32 *prod_field,
			    uint32_t prod, unsigned int db_off)
{
	udma_to_device_barrier();
	store_le32(prod_field, prod);
	udma_to_device_barrier();
	odprnic_ring_db(to_octx(qp->vqp.qp.context), db_off, qp->qpn);
}

int odprnic_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
		      struct ibv_send_wr **bad_wr)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct odprnic_wqe wqe;
	uint32_t start;
	int ret = 0;

	pthread_spin_lock(&qp->sq.lock);
	start = qp->sq.prod;
	if (qp->state == IBV_QPS_RESET || qp->state == IBV_QPS_INIT ||
	    qp->state == IBV_QPS_RTR)
		ret = EINVAL;
	for (; wr && !ret; wr = wr->next) {
		if (odprnic_wq_full(&qp->sq, qp->sq.prod, &qp->hdr->sq_cons)) {
			ret = ENOMEM;
			break;
		}
		ret = odprnic_build_send(qp, &wqe, wr);
		if (ret)
			break;
		memcpy(odprnic_wq_slot(&qp->sq, qp->sq.prod), &wqe,
		       sizeof(wqe));
		qp->sq.prod++;
	}
	if (qp->sq.prod != start)
		odprnic_publish(qp, &qp->hdr->sq_prod, qp->sq.prod,
				ODPRNIC_DB_SQ);
	pthread_spin_unlock(&qp->sq.lock);
	if (ret)
		*bad_wr = wr;
	return ret;
}

int odprnic_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr,
		      struct ibv_recv_wr **bad_wr)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	uint32_t start;
	int ret = 0, i;

	pthread_spin_lock(&qp->rq.lock);
	start = qp->rq.prod;
	if (qp->state == IBV_QPS_RESET)
		ret = EINVAL;
	for (; wr && !ret; wr = wr->next) {
		struct odprnic_wqe *wqe;

		if (wr->num_sge < 0 || wr->num_sge > ODPRNIC_MAX_SGE ||
		    (wr->num_sge && !wr->sg_list)) {
			ret = EINVAL;
			break;
		}
		if (odprnic_wq_full(&qp->rq, qp->rq.prod, &qp->hdr->rq_cons)) {
			ret = ENOMEM;
			break;
		}
		wqe = odprnic_wq_slot(&qp->rq, qp->rq.prod);
		memset(wqe, 0, sizeof(*wqe));
		wqe->wr_id = htole64(wr->wr_id);
		for (i = 0; i < wr->num_sge; i++)
			odprnic_wqe_sge(wqe, i, wr->sg_list[i].lkey,
					wr->sg_list[i].addr,
					wr->sg_list[i].length);
		wqe->num_sge = wr->num_sge;
		qp->rq.prod++;
	}
	if (qp->rq.prod != start)
		odprnic_publish(qp, &qp->hdr->rq_prod, qp->rq.prod,
				ODPRNIC_DB_RQ);
	pthread_spin_unlock(&qp->rq.lock);
	if (ret)
		*bad_wr = wr;
	return ret;
}

/* ---- ibv_wr_* (ibv_create_qp_ex with send_ops_flags) ------------------ */

/*
 * wr_start takes the SQ lock; every builder claims the next slot and fills
 * it, setters complete the WQE of the last builder; wr_complete publishes
 * them all with one doorbell, or none if any step failed.
 */
static void odprnic_wr_start(struct ibv_qp_ex *qpx)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);

	pthread_spin_lock(&qp->sq.lock);
	qp->wr_prod = qp->sq.prod;
	qp->wr_err = 0;
	if (qp->state == IBV_QPS_RESET || qp->state == IBV_QPS_INIT ||
	    qp->state == IBV_QPS_RTR)
		qp->wr_err = EINVAL;
}

static int odprnic_wr_complete(struct ibv_qp_ex *qpx)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);
	int ret = qp->wr_err;

	if (!ret && qp->wr_prod != qp->sq.prod) {
		qp->sq.prod = qp->wr_prod;
		odprnic_publish(qp, &qp->hdr->sq_prod, qp->sq.prod,
				ODPRNIC_DB_SQ);
	}
	pthread_spin_unlock(&qp->sq.lock);
	return ret;
}

static void odprnic_wr_abort(struct ibv_qp_ex *qpx)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);

	pthread_spin_unlock(&qp->sq.lock);
}

/* A new WQE for a builder, or NULL (and wr_err set). */
static struct odprnic_wqe *odprnic_wr_new(struct odprnic_qp *qp,
					  uint8_t opcode)
{
	struct odprnic_wqe *wqe;

	if (qp->wr_err)
		return NULL;
	if (odprnic_wq_full(&qp->sq, qp->wr_prod, &qp->hdr->sq_cons)) {
		qp->wr_err = ENOMEM;
		return NULL;
	}
	wqe = odprnic_wq_slot(&qp->sq, qp->wr_prod++);
	memset(wqe, 0, sizeof(*wqe));
	wqe->wr_id = htole64(qp->vqp.qp_ex.wr_id);
	wqe->opcode = opcode;
	wqe->flags = odprnic_wqe_flags(qp, qp->vqp.qp_ex.wr_flags);
	return wqe;
}

/* The WQE of the last builder, for the setters, or NULL. */
static struct odprnic_wqe *odprnic_wr_cur(struct odprnic_qp *qp)
{
	if (qp->wr_err)
		return NULL;
	if (qp->wr_prod == qp->sq.prod) {
		qp->wr_err = EINVAL; /* a setter before any builder */
		return NULL;
	}
	return odprnic_wq_slot(&qp->sq, qp->wr_prod - 1);
}

static void odprnic_wr_send(struct ibv_qp_ex *qpx)
{
	odprnic_wr_new(qpx_to_oqp(qpx), ODPRNIC_WR_SEND);
}

static void odprnic_wr_send_imm(struct ibv_qp_ex *qpx, __be32 imm)
{
	struct odprnic_wqe *wqe = odprnic_wr_new(qpx_to_oqp(qpx),
						 ODPRNIC_WR_SEND_IMM);

	if (wqe)
		wqe->imm_data = imm;
}

static void odprnic_wr_rdma(struct ibv_qp_ex *qpx, uint8_t opcode,
			    uint32_t rkey, uint64_t raddr, __be32 imm)
{
	struct odprnic_wqe *wqe = odprnic_wr_new(qpx_to_oqp(qpx), opcode);

	if (!wqe)
		return;
	wqe->remote_addr = htole64(raddr);
	wqe->rkey = htole32(rkey);
	wqe->imm_data = imm;
}

static void odprnic_wr_rdma_write(struct ibv_qp_ex *qpx, uint32_t rkey,
				  uint64_t raddr)
{
	odprnic_wr_rdma(qpx, ODPRNIC_WR_RDMA_WRITE, rkey, raddr, 0);
}

static void odprnic_wr_rdma_write_imm(struct ibv_qp_ex *qpx, uint32_t rkey,
				      uint64_t raddr, __be32 imm)
{
	odprnic_wr_rdma(qpx, ODPRNIC_WR_RDMA_WRITE_IMM, rkey, raddr, imm);
}

static void odprnic_wr_rdma_read(struct ibv_qp_ex *qpx, uint32_t rkey,
				 uint64_t raddr)
{
	odprnic_wr_rdma(qpx, ODPRNIC_WR_RDMA_READ, rkey, raddr, 0);
}

static void odprnic_wr_atomic(struct ibv_qp_ex *qpx, uint8_t opcode,
			      uint32_t rkey, uint64_t raddr, uint64_t cmp_add,
			      uint64_t swap)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);
	struct odprnic_wqe *wqe;

	if (raddr & 7) {
		if (!qp->wr_err)
			qp->wr_err = EINVAL;
		return;
	}
	wqe = odprnic_wr_new(qp, opcode);
	if (!wqe)
		return;
	wqe->remote_addr = htole64(raddr);
	wqe->rkey = htole32(rkey);
	wqe->compare_add = htole64(cmp_add);
	wqe->swap = htole64(swap);
}

static void odprnic_wr_atomic_cmp_swp(struct ibv_qp_ex *qpx, uint32_t rkey,
				      uint64_t raddr, uint64_t compare,
				      uint64_t swap)
{
	odprnic_wr_atomic(qpx, ODPRNIC_WR_ATOMIC_CMP_SWP, rkey, raddr, compare,
			  swap);
}

static void odprnic_wr_atomic_fetch_add(struct ibv_qp_ex *qpx, uint32_t rkey,
					uint64_t raddr, uint64_t add)
{
	odprnic_wr_atomic(qpx, ODPRNIC_WR_ATOMIC_FETCH_ADD, rkey, raddr, add,
			  0);
}

static bool odprnic_is_atomic(const struct odprnic_wqe *wqe)
{
	return wqe->opcode == ODPRNIC_WR_ATOMIC_CMP_SWP ||
	       wqe->opcode == ODPRNIC_WR_ATOMIC_FETCH_ADD;
}

static void odprnic_wr_set_ud_addr(struct ibv_qp_ex *qpx, struct ibv_ah *ah,
				   uint32_t remote_qpn, uint32_t remote_qkey)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);
	struct odprnic_wqe *wqe = odprnic_wr_cur(qp);

	if (!wqe)
		return;
	if (qp->vqp.qp.qp_type != IBV_QPT_UD || !ah) {
		qp->wr_err = EINVAL;
		return;
	}
	wqe->ah = htole32(to_oah(ah)->ahn);
	wqe->remote_qpn = htole32(remote_qpn);
	wqe->remote_qkey = htole32(remote_qkey);
}

static void odprnic_wr_set_sge_list(struct ibv_qp_ex *qpx, size_t num_sge,
				    const struct ibv_sge *sg)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);
	struct odprnic_wqe *wqe = odprnic_wr_cur(qp);
	size_t i;

	if (!wqe)
		return;
	if (num_sge > ODPRNIC_MAX_SGE || (num_sge && !sg) ||
	    (odprnic_is_atomic(wqe) && (num_sge != 1 || sg[0].length != 8))) {
		qp->wr_err = EINVAL;
		return;
	}
	for (i = 0; i < num_sge; i++)
		odprnic_wqe_sge(wqe, i, sg[i].lkey, sg[i].addr, sg[i].length);
	wqe->num_sge = num_sge;
	wqe->flags &= ~ODPRNIC_WQE_F_INLINE;
	wqe->inline_len = 0;
}

static void odprnic_wr_set_sge(struct ibv_qp_ex *qpx, uint32_t lkey,
			       uint64_t addr, uint32_t length)
{
	struct ibv_sge sge = { .addr = addr, .length = length, .lkey = lkey };

	odprnic_wr_set_sge_list(qpx, 1, &sge);
}

static void odprnic_wr_set_inline_data_list(struct ibv_qp_ex *qpx,
					    size_t num_buf,
					    const struct ibv_data_buf *buf)
{
	struct odprnic_qp *qp = qpx_to_oqp(qpx);
	struct odprnic_wqe *wqe = odprnic_wr_cur(qp);
	size_t i, len = 0;

	if (!wqe)
		return;
	if (wqe->opcode == ODPRNIC_WR_RDMA_READ || odprnic_is_atomic(wqe)) {
		qp->wr_err = EINVAL;
		return;
	}
	for (i = 0; i < num_buf; i++) {
		if (buf[i].length > qp->max_inline - len) {
			qp->wr_err = EINVAL;
			return;
		}
		memcpy(wqe->inline_data + len, buf[i].addr, buf[i].length);
		len += buf[i].length;
	}
	wqe->num_sge = 0;
	wqe->flags |= ODPRNIC_WQE_F_INLINE;
	wqe->inline_len = htole32(len);
}

static void odprnic_wr_set_inline_data(struct ibv_qp_ex *qpx, void *addr,
				       size_t length)
{
	struct ibv_data_buf buf = { .addr = addr, .length = length };

	odprnic_wr_set_inline_data_list(qpx, 1, &buf);
}

static void odprnic_set_wr_ops(struct odprnic_qp *qp, uint64_t ops)
{
	struct ibv_qp_ex *x = &qp->vqp.qp_ex;

	if (ops & IBV_QP_EX_WITH_SEND)
		x->wr_send = odprnic_wr_send;
	if (ops & IBV_QP_EX_WITH_SEND_WITH_IMM)
		x->wr_send_imm = odprnic_wr_send_imm;
	if (ops & IBV_QP_EX_WITH_RDMA_WRITE)
		x->wr_rdma_write = odprnic_wr_rdma_write;
	if (ops & IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM)
		x->wr_rdma_write_imm = odprnic_wr_rdma_write_imm;
	if (ops & IBV_QP_EX_WITH_RDMA_READ)
		x->wr_rdma_read = odprnic_wr_rdma_read;
	if (ops & IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP)
		x->wr_atomic_cmp_swp = odprnic_wr_atomic_cmp_swp;
	if (ops & IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD)
		x->wr_atomic_fetch_add = odprnic_wr_atomic_fetch_add;
	x->wr_set_ud_addr = odprnic_wr_set_ud_addr;
	x->wr_set_sge = odprnic_wr_set_sge;
	x->wr_set_sge_list = odprnic_wr_set_sge_list;
	x->wr_set_inline_data = odprnic_wr_set_inline_data;
	x->wr_set_inline_data_list = odprnic_wr_set_inline_data_list;
	x->wr_start = odprnic_wr_start;
	x->wr_complete = odprnic_wr_complete;
	x->wr_abort = odprnic_wr_abort;
}

/* ---- address handles ------------------------------------------------ */

struct ibv_ah *odprnic_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr)
{
	struct odprnic_create_ah_cmd_resp resp = {};
	struct odprnic_ah *ah;
	int ret;

	ah = calloc(1, sizeof(*ah));
	if (!ah)
		return NULL;
	/* the kernel resolves the destination MAC (RoCE) */
	ret = ibv_cmd_create_ah(pd, &ah->ibv_ah, attr, &resp.ibv_resp,
				sizeof(resp));
	if (ret) {
		free(ah);
		errno = ret;
		return NULL;
	}
	ah->ahn = resp.drv_payload.ah;
	return &ah->ibv_ah;
}

int odprnic_destroy_ah(struct ibv_ah *ibah)
{
	int ret;

	ret = ibv_cmd_destroy_ah(ibah);
	if (ret)
		return ret;
	free(to_oah(ibah));
	return 0;
}
