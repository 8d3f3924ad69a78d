// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: queue pairs and address handles ("Where rings live", "Work
 * queue entries", "Commands" of interface 1.1).
 *
 * A QP is one DMA-coherent buffer: struct odprnic_qp_hdr, the SQ at
 * ODPRNIC_RING_HDR_SPACE, the RQ after it. The kernel posts to its own QPs
 * (the GSI QP of the MAD layer, kernel ULPs) here and rings doorbell page
 * 0; user QPs are mapped into the process and posted there.
 */
#include <linux/log2.h>
#include <rdma/ib_cache.h>
#include <rdma/rdma_netlink.h>
#include <rdma/restrack.h>
#include <rdma/odp_rnic-abi.h>
#include <rdma/uverbs_ioctl.h>

#include "odp_rnic.h"

static int odprnic_qp_caps(struct odprnic_qp *qp, struct ib_qp_cap *cap)
{
	if (cap->max_send_wr > ODPRNIC_MAX_QP_WR ||
	    cap->max_recv_wr > ODPRNIC_MAX_QP_WR ||
	    cap->max_send_sge > ODPRNIC_MAX_SGE ||
	    cap->max_recv_sge > ODPRNIC_MAX_SGE ||
	    cap->max_inline_data > ODPRNIC_MAX_INLINE)
		return -EINVAL;
	qp->sq_size = roundup_pow_of_two(max(cap->max_send_wr, 1U));
	qp->rq_size = roundup_pow_of_two(max(cap->max_recv_wr, 1U));
	qp->max_send_sge = ODPRNIC_MAX_SGE;
	qp->max_recv_sge = ODPRNIC_MAX_SGE;
	qp->max_inline = ODPRNIC_MAX_INLINE;
	cap->max_send_wr = qp->sq_size;
	cap->max_recv_wr = qp->rq_size;
	cap->max_send_sge = qp->max_send_sge;
	cap->max_recv_sge = qp->max_recv_sge;
	cap->max_inline_data = qp->max_inline;
	return 0;
}

static u8 odprnic_qpt(enum ib_qp_type type)
{
	switch (type) {
	case IB_QPT_GSI:
		return ODPRNIC_QPT_GSI;
	case IB_QPT_UD:
		return ODPRNIC_QPT_UD;
	default:
		return ODPRNIC_QPT_RC;
	}
}

int odprnic_create_qp(struct ib_qp *ibqp, struct ib_qp_init_attr *init,
		      struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibqp->device);
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct odprnic_ucontext *uc = NULL;
	struct odprnic_args_create_qp a = {};
	struct odprnic_create_qp_resp resp = {};
	size_t size;
	__le32 out;
	int err;

	if (!dev->datapath)
		return -EOPNOTSUPP;
	if (init->qp_type != IB_QPT_RC && init->qp_type != IB_QPT_UD &&
	    init->qp_type != IB_QPT_GSI)
		return -EOPNOTSUPP;
	if (init->qp_type == IB_QPT_UD && !(dev->caps & ODPRNIC_CAP_UD))
		return -EOPNOTSUPP;
	if (init->srq || init->create_flags || !init->send_cq ||
	    !init->recv_cq)
		return -EOPNOTSUPP;
	if (udata)
		uc = rdma_udata_to_drv_context(udata, struct odprnic_ucontext,
					       ibuc);
	if (uc && !uc->db_page)
		return -EOPNOTSUPP;
	err = odprnic_qp_caps(qp, &init->cap);
	if (err)
		return err;

	qp->dev = dev;
	qp->user = !!uc;
	qp->sig_all = init->sq_sig_type == IB_SIGNAL_ALL_WR;
	spin_lock_init(&qp->sq_lock);
	spin_lock_init(&qp->rq_lock);
	mutex_init(&qp->attr_lock);
	atomic64_set(&qp->page_faults, 0);
	size = PAGE_ALIGN(ODPRNIC_RING_HDR_SPACE +
			  (size_t)(qp->sq_size + qp->rq_size) *
			  ODPRNIC_WQE_SIZE);
	if (uc) {
		qp->mentry = odprnic_mmap_ring(uc, size);
		if (IS_ERR(qp->mentry))
			return PTR_ERR(qp->mentry);
		qp->ring = qp->mentry->ring;
	} else {
		err = odprnic_ring_alloc(dev, &qp->ring, size);
		if (err)
			return err;
	}
	qp->hdr = qp->ring.va;
	qp->sq = qp->ring.va + ODPRNIC_RING_HDR_SPACE;
	qp->rq = qp->sq + qp->sq_size;

	a.buf = cpu_to_le64(qp->ring.dma);
	a.pdn = cpu_to_le32(to_opd(ibqp->pd)->pdn);
	a.send_cqn = cpu_to_le32(to_ocq(init->send_cq)->cqn);
	a.recv_cqn = cpu_to_le32(to_ocq(init->recv_cq)->cqn);
	a.sq_size = cpu_to_le32(qp->sq_size);
	a.rq_size = cpu_to_le32(qp->rq_size);
	a.type = odprnic_qpt(init->qp_type);
	a.flags = (uc ? 0 : ODPRNIC_QP_KERNEL) |
		  (qp->sig_all ? ODPRNIC_QP_SIG_ALL : 0);
	a.db_page = cpu_to_le16(uc ? uc->db_page : 0);
	err = odprnic_cmd_simple(dev, ODPRNIC_CMD_CREATE_QP, &a, sizeof(a),
				 &out, sizeof(out), false);
	if (err)
		goto err_ring;
	qp->qpn = le32_to_cpu(out);
	ibqp->qp_num = qp->qpn;
	if (init->qp_type == IB_QPT_GSI && qp->qpn != 1) {
		dev_err(&dev->pdev->dev, "GSI QP created as QPN %u\n",
			qp->qpn);
		err = -EIO;
		goto err_destroy;
	}

	err = xa_insert(&dev->qps, qp->qpn, qp, GFP_KERNEL);
	if (err)
		goto err_destroy;

	if (uc) {
		resp.mmap_key = rdma_user_mmap_get_offset(&qp->mentry->rdma);
		resp.qpn = qp->qpn;
		resp.sq_size = qp->sq_size;
		resp.rq_size = qp->rq_size;
		resp.buf_size = size;
		err = ib_copy_to_udata(udata, &resp,
				       min(udata->outlen, sizeof(resp)));
		if (err)
			goto err_xa;
	}
	return 0;

err_xa:
	xa_erase(&dev->qps, qp->qpn);
err_destroy:
	odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_QP, qp->qpn);
err_ring:
	if (uc)
		rdma_user_mmap_entry_remove(&qp->mentry->rdma);
	else
		odprnic_ring_free(dev, &qp->ring);
	return err;
}

int odprnic_destroy_qp(struct ib_qp *ibqp, struct ib_udata *udata)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct odprnic_dev *dev = qp->dev;
	int err;

	err = odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_QP, qp->qpn);
	odprnic_destroyed(dev, "QP", qp->qpn, err);
	/* no event handler runs once the QP is out of the table */
	xa_erase(&dev->qps, qp->qpn);
	if (qp->user)
		rdma_user_mmap_entry_remove(&qp->mentry->rdma);
	else
		odprnic_ring_free(dev, &qp->ring);
	rdma_destroy_ah_attr(&qp->attr.ah_attr);
	mutex_destroy(&qp->attr_lock);
	return 0;
}

static u32 odprnic_qp_access(int access)
{
	return odprnic_access_to_hw(access) & (ODPRNIC_ACCESS_REMOTE_WRITE |
					       ODPRNIC_ACCESS_REMOTE_READ |
					       ODPRNIC_ACCESS_REMOTE_ATOMIC);
}

#define ODPRNIC_RETRY_MASK	(IB_QP_RETRY_CNT | IB_QP_RNR_RETRY | \
				 IB_QP_MIN_RNR_TIMER | IB_QP_TIMEOUT)
#define ODPRNIC_MODIFY_MASK	(IB_QP_STATE | IB_QP_CUR_STATE | \
				 IB_QP_ACCESS_FLAGS | IB_QP_PKEY_INDEX | \
				 IB_QP_PORT | IB_QP_QKEY | IB_QP_AV | \
				 IB_QP_PATH_MTU | IB_QP_DEST_QPN | \
				 IB_QP_SQ_PSN | IB_QP_RQ_PSN | \
				 IB_QP_MAX_QP_RD_ATOMIC | \
				 IB_QP_MAX_DEST_RD_ATOMIC | \
				 IB_QP_EN_SQD_ASYNC_NOTIFY | ODPRNIC_RETRY_MASK)

/*
 * MODIFY_QP from ib_qp_attr. The four retry/timer values share one mask
 * bit in the device, so they always go together, taken from what earlier
 * calls set where this one leaves them out.
 */
int odprnic_modify_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		      struct ib_udata *udata)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct ib_qp_attr *sh = &qp->attr;
	struct odprnic_qp_attr a = {};
	u32 hw = 0;
	int err;

	if (mask & ~ODPRNIC_MODIFY_MASK)
		return -EOPNOTSUPP;
	if ((mask & IB_QP_PORT) && attr->port_num != 1)
		return -EINVAL;
	if ((mask & IB_QP_PKEY_INDEX) && attr->pkey_index)
		return -EINVAL;
	if ((mask & IB_QP_PATH_MTU) &&
	    (attr->path_mtu < IB_MTU_256 || attr->path_mtu > IB_MTU_4096))
		return -EINVAL;

	mutex_lock(&qp->attr_lock);
	a.qpn = cpu_to_le32(qp->qpn);
	if (mask & IB_QP_STATE) {
		hw |= ODPRNIC_QP_ATTR_STATE;
		a.state = attr->qp_state;
	}
	if (mask & IB_QP_ACCESS_FLAGS) {
		hw |= ODPRNIC_QP_ATTR_ACCESS;
		a.access = cpu_to_le32(odprnic_qp_access(attr->qp_access_flags));
	}
	if (mask & IB_QP_AV) {
		hw |= ODPRNIC_QP_ATTR_PATH;
		if (rdma_ah_get_ah_flags(&attr->ah_attr) & IB_AH_GRH)
			memcpy(a.dgid, rdma_ah_read_grh(&attr->ah_attr)->dgid.raw,
			       sizeof(a.dgid));
	}
	if (mask & IB_QP_DEST_QPN) {
		hw |= ODPRNIC_QP_ATTR_DEST_QPN;
		a.dest_qpn = cpu_to_le32(attr->dest_qp_num);
	}
	if (mask & IB_QP_QKEY) {
		hw |= ODPRNIC_QP_ATTR_QKEY;
		a.qkey = cpu_to_le32(attr->qkey);
	}
	if (mask & IB_QP_SQ_PSN) {
		hw |= ODPRNIC_QP_ATTR_SQ_PSN;
		a.sq_psn = cpu_to_le32(attr->sq_psn);
	}
	if (mask & IB_QP_RQ_PSN) {
		hw |= ODPRNIC_QP_ATTR_RQ_PSN;
		a.rq_psn = cpu_to_le32(attr->rq_psn);
	}
	if (mask & IB_QP_PATH_MTU) {
		hw |= ODPRNIC_QP_ATTR_MTU;
		a.path_mtu = attr->path_mtu;
	}
	if (mask & ODPRNIC_RETRY_MASK) {
		hw |= ODPRNIC_QP_ATTR_RETRY;
		a.retry_cnt = mask & IB_QP_RETRY_CNT ? attr->retry_cnt :
						       sh->retry_cnt;
		a.rnr_retry = mask & IB_QP_RNR_RETRY ? attr->rnr_retry :
						       sh->rnr_retry;
		a.min_rnr_timer = mask & IB_QP_MIN_RNR_TIMER ?
				  attr->min_rnr_timer : sh->min_rnr_timer;
		a.timeout = mask & IB_QP_TIMEOUT ? attr->timeout : sh->timeout;
	}
	a.mask = cpu_to_le32(hw);
	err = odprnic_cmd_simple(qp->dev, ODPRNIC_CMD_MODIFY_QP, &a, sizeof(a),
				 NULL, 0, false);
	if (err)
		goto out;

	/* remember what query_qp cannot ask the device for */
	if (mask & IB_QP_STATE)
		sh->qp_state = attr->qp_state;
	if (mask & IB_QP_ACCESS_FLAGS)
		sh->qp_access_flags = attr->qp_access_flags;
	if (mask & IB_QP_QKEY)
		sh->qkey = attr->qkey;
	if (mask & IB_QP_AV) {
		rdma_destroy_ah_attr(&sh->ah_attr);
		rdma_copy_ah_attr(&sh->ah_attr, &attr->ah_attr);
	}
	if (mask & IB_QP_PATH_MTU)
		sh->path_mtu = attr->path_mtu;
	if (mask & IB_QP_DEST_QPN)
		sh->dest_qp_num = attr->dest_qp_num;
	if (mask & IB_QP_SQ_PSN)
		sh->sq_psn = attr->sq_psn;
	if (mask & IB_QP_RQ_PSN)
		sh->rq_psn = attr->rq_psn;
	if (mask & IB_QP_MAX_QP_RD_ATOMIC)
		sh->max_rd_atomic = attr->max_rd_atomic;
	if (mask & IB_QP_MAX_DEST_RD_ATOMIC)
		sh->max_dest_rd_atomic = attr->max_dest_rd_atomic;
	if (mask & ODPRNIC_RETRY_MASK) {
		sh->retry_cnt = a.retry_cnt;
		sh->rnr_retry = a.rnr_retry;
		sh->min_rnr_timer = a.min_rnr_timer;
		sh->timeout = a.timeout;
	}
out:
	mutex_unlock(&qp->attr_lock);
	return err;
}

int odprnic_query_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		     struct ib_qp_init_attr *init)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct odprnic_qp_attr o;
	__le32 arg = cpu_to_le32(qp->qpn);
	int err;

	err = odprnic_cmd_simple(qp->dev, ODPRNIC_CMD_QUERY_QP, &arg,
				 sizeof(arg), &o, sizeof(o), false);
	if (err)
		return err;

	memset(attr, 0, sizeof(*attr));
	memset(init, 0, sizeof(*init));
	mutex_lock(&qp->attr_lock);
	/* no reference on the sgid attribute: callers do not drop one */
	attr->ah_attr = qp->attr.ah_attr;
	attr->ah_attr.grh.sgid_attr = NULL;
	attr->max_rd_atomic = qp->attr.max_rd_atomic;
	attr->max_dest_rd_atomic = qp->attr.max_dest_rd_atomic;
	mutex_unlock(&qp->attr_lock);
	attr->qp_state = o.state;
	attr->cur_qp_state = o.state;
	attr->path_mtu = o.path_mtu;
	attr->retry_cnt = o.retry_cnt;
	attr->rnr_retry = o.rnr_retry;
	attr->dest_qp_num = le32_to_cpu(o.dest_qpn);
	attr->qkey = le32_to_cpu(o.qkey);
	attr->sq_psn = le32_to_cpu(o.sq_psn);
	attr->rq_psn = le32_to_cpu(o.rq_psn);
	attr->min_rnr_timer = o.min_rnr_timer;
	attr->timeout = o.timeout;
	if (le32_to_cpu(o.access) & ODPRNIC_ACCESS_REMOTE_WRITE)
		attr->qp_access_flags |= IB_ACCESS_REMOTE_WRITE;
	if (le32_to_cpu(o.access) & ODPRNIC_ACCESS_REMOTE_READ)
		attr->qp_access_flags |= IB_ACCESS_REMOTE_READ;
	if (le32_to_cpu(o.access) & ODPRNIC_ACCESS_REMOTE_ATOMIC)
		attr->qp_access_flags |= IB_ACCESS_REMOTE_ATOMIC;
	attr->port_num = 1;
	attr->cap.max_send_wr = qp->sq_size;
	attr->cap.max_recv_wr = qp->rq_size;
	attr->cap.max_send_sge = qp->max_send_sge;
	attr->cap.max_recv_sge = qp->max_recv_sge;
	attr->cap.max_inline_data = qp->max_inline;

	init->qp_type = ibqp->qp_type;
	init->send_cq = ibqp->send_cq;
	init->recv_cq = ibqp->recv_cq;
	init->cap = attr->cap;
	init->sq_sig_type = qp->sig_all ? IB_SIGNAL_ALL_WR : IB_SIGNAL_REQ_WR;
	return 0;
}

static int odprnic_wr_opcode(enum ib_wr_opcode op, enum ib_qp_type type,
			     u8 *hw)
{
	switch (op) {
	case IB_WR_SEND:
		*hw = ODPRNIC_WR_SEND;
		return 0;
	case IB_WR_SEND_WITH_IMM:
		*hw = ODPRNIC_WR_SEND_IMM;
		return 0;
	default:
		break;
	}
	if (type != IB_QPT_RC)
		return -EINVAL;
	switch (op) {
	case IB_WR_RDMA_WRITE:
		*hw = ODPRNIC_WR_RDMA_WRITE;
		return 0;
	case IB_WR_RDMA_WRITE_WITH_IMM:
		*hw = ODPRNIC_WR_RDMA_WRITE_IMM;
		return 0;
	case IB_WR_RDMA_READ:
		*hw = ODPRNIC_WR_RDMA_READ;
		return 0;
	case IB_WR_ATOMIC_CMP_AND_SWP:
		*hw = ODPRNIC_WR_ATOMIC_CMP_SWP;
		return 0;
	case IB_WR_ATOMIC_FETCH_AND_ADD:
		*hw = ODPRNIC_WR_ATOMIC_FETCH_ADD;
		return 0;
	default:
		return -EINVAL;
	}
}

/* Kernel SGEs: lkey ODPRNIC_PHYS_LKEY (a DMA address) or an MR key. */
static void odprnic_wqe_sges(struct odprnic_wqe *wqe,
			     const struct ib_sge *sg, int num)
{
	int i;

	for (i = 0; i < num; i++) {
		wqe->sge[i].addr = cpu_to_le64(sg[i].addr);
		wqe->sge[i].length = cpu_to_le32(sg[i].length);
		wqe->sge[i].lkey = cpu_to_le32(sg[i].lkey);
	}
	wqe->num_sge = num;
}

/* IB_SEND_INLINE: kernel callers pass kernel virtual addresses. */
static int odprnic_wqe_inline(struct odprnic_qp *qp, struct odprnic_wqe *wqe,
			      const struct ib_send_wr *wr)
{
	u32 len = 0;
	int i;

	for (i = 0; i < wr->num_sge; i++) {
		u32 l = wr->sg_list[i].length;

		if (l > qp->max_inline - len)
			return -EINVAL;
		memcpy(wqe->inline_data + len,
		       (void *)(uintptr_t)wr->sg_list[i].addr, l);
		len += l;
	}
	wqe->inline_len = cpu_to_le32(len);
	wqe->flags |= ODPRNIC_WQE_F_INLINE;
	return 0;
}

static int odprnic_build_send(struct odprnic_qp *qp, struct odprnic_wqe *wqe,
			      const struct ib_send_wr *wr)
{
	enum ib_qp_type type = qp->ibqp.qp_type;
	u8 opcode;
	int err;

	if (wr->num_sge < 0 || wr->num_sge > qp->max_send_sge)
		return -EINVAL;
	err = odprnic_wr_opcode(wr->opcode, type, &opcode);
	if (err)
		return err;
	memset(wqe, 0, sizeof(*wqe));
	wqe->opcode = opcode;
	wqe->wr_id = cpu_to_le64(wr->wr_id);
	if ((wr->send_flags & IB_SEND_SIGNALED) || qp->sig_all)
		wqe->flags |= ODPRNIC_WQE_F_SIGNALED;
	if (wr->send_flags & IB_SEND_SOLICITED)
		wqe->flags |= ODPRNIC_WQE_F_SOLICITED;
	if (wr->send_flags & IB_SEND_FENCE)
		wqe->flags |= ODPRNIC_WQE_F_FENCE;
	if (wr->opcode == IB_WR_SEND_WITH_IMM ||
	    wr->opcode == IB_WR_RDMA_WRITE_WITH_IMM)
		wqe->imm_data = wr->ex.imm_data;

	switch (wr->opcode) {
	case IB_WR_RDMA_WRITE:
	case IB_WR_RDMA_WRITE_WITH_IMM:
	case IB_WR_RDMA_READ:
		wqe->remote_addr = cpu_to_le64(rdma_wr(wr)->remote_addr);
		wqe->rkey = cpu_to_le32(rdma_wr(wr)->rkey);
		break;
	case IB_WR_ATOMIC_CMP_AND_SWP:
	case IB_WR_ATOMIC_FETCH_AND_ADD:
		wqe->remote_addr = cpu_to_le64(atomic_wr(wr)->remote_addr);
		wqe->rkey = cpu_to_le32(atomic_wr(wr)->rkey);
		wqe->compare_add = cpu_to_le64(atomic_wr(wr)->compare_add);
		wqe->swap = cpu_to_le64(atomic_wr(wr)->swap);
		break;
	default:
		break;
	}
	if (type == IB_QPT_UD || type == IB_QPT_GSI) {
		if (!ud_wr(wr)->ah)
			return -EINVAL;
		wqe->ah = cpu_to_le32(to_oah(ud_wr(wr)->ah)->ahn);
		wqe->remote_qpn = cpu_to_le32(ud_wr(wr)->remote_qpn);
		wqe->remote_qkey = cpu_to_le32(ud_wr(wr)->remote_qkey);
	}
	if ((wr->send_flags & IB_SEND_INLINE) &&
	    wr->opcode != IB_WR_RDMA_READ &&
	    wr->opcode != IB_WR_ATOMIC_CMP_AND_SWP &&
	    wr->opcode != IB_WR_ATOMIC_FETCH_AND_ADD)
		return odprnic_wqe_inline(qp, wqe, wr);
	odprnic_wqe_sges(wqe, wr->sg_list, wr->num_sge);
	return 0;
}

int odprnic_post_send(struct ib_qp *ibqp, const struct ib_send_wr *wr,
		      const struct ib_send_wr **bad_wr)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	unsigned long flags;
	u32 start;
	int err = 0;

	if (qp->user) {
		*bad_wr = wr;
		return -EINVAL;
	}
	spin_lock_irqsave(&qp->sq_lock, flags);
	start = qp->sq_prod;
	for (; wr; wr = wr->next) {
		u32 cons = le32_to_cpu(READ_ONCE(qp->hdr->sq_cons));

		if (qp->sq_prod - cons >= qp->sq_size) {
			err = -ENOMEM;
			break;
		}
		err = odprnic_build_send(qp, &qp->sq[qp->sq_prod &
						     (qp->sq_size - 1)], wr);
		if (err)
			break;
		qp->sq_prod++;
	}
	if (qp->sq_prod != start) {
		/* WQEs before the index, the index before the doorbell */
		dma_wmb();
		WRITE_ONCE(qp->hdr->sq_prod, cpu_to_le32(qp->sq_prod));
		iowrite32(qp->qpn, qp->dev->db + ODPRNIC_DB_SQ);
	}
	spin_unlock_irqrestore(&qp->sq_lock, flags);
	if (err)
		*bad_wr = wr;
	return err;
}

int odprnic_post_recv(struct ib_qp *ibqp, const struct ib_recv_wr *wr,
		      const struct ib_recv_wr **bad_wr)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	unsigned long flags;
	u32 start;
	int err = 0;

	if (qp->user) {
		*bad_wr = wr;
		return -EINVAL;
	}
	spin_lock_irqsave(&qp->rq_lock, flags);
	start = qp->rq_prod;
	for (; wr; wr = wr->next) {
		u32 cons = le32_to_cpu(READ_ONCE(qp->hdr->rq_cons));
		struct odprnic_wqe *wqe;

		if (qp->rq_prod - cons >= qp->rq_size) {
			err = -ENOMEM;
			break;
		}
		if (wr->num_sge < 0 || wr->num_sge > qp->max_recv_sge) {
			err = -EINVAL;
			break;
		}
		wqe = &qp->rq[qp->rq_prod & (qp->rq_size - 1)];
		memset(wqe, 0, sizeof(*wqe));
		wqe->wr_id = cpu_to_le64(wr->wr_id);
		odprnic_wqe_sges(wqe, wr->sg_list, wr->num_sge);
		qp->rq_prod++;
	}
	if (qp->rq_prod != start) {
		dma_wmb();
		WRITE_ONCE(qp->hdr->rq_prod, cpu_to_le32(qp->rq_prod));
		iowrite32(qp->qpn, qp->dev->db + ODPRNIC_DB_RQ);
	}
	spin_unlock_irqrestore(&qp->rq_lock, flags);
	if (err)
		*bad_wr = wr;
	return err;
}

/* EVENT_QP_ERROR, EVENT_QP_LAST_WQE: to the QP's owner. */
void odprnic_qp_event(struct odprnic_dev *dev, u32 qpn,
		      enum ib_event_type type)
{
	struct odprnic_qp *qp;
	struct ib_event ev;

	xa_lock(&dev->qps);
	qp = xa_load(&dev->qps, qpn);
	if (qp && qp->ibqp.event_handler) {
		ev.device = qp->ibqp.device;
		ev.element.qp = &qp->ibqp;
		ev.event = type;
		qp->ibqp.event_handler(&ev, qp->ibqp.qp_context);
	}
	xa_unlock(&dev->qps);
}

/* EVENT_PAGE_FAULT names the QP that stalls: count it there. */
void odprnic_qp_page_fault(struct odprnic_dev *dev, u32 qpn)
{
	struct odprnic_qp *qp;

	xa_lock(&dev->qps);
	qp = xa_load(&dev->qps, qpn);
	if (qp)
		atomic64_inc(&qp->page_faults);
	xa_unlock(&dev->qps);
}

/* restrack: rdma res show qp -dd shows the ODP faults a QP stalled on */
int odprnic_fill_res_qp_entry(struct sk_buff *msg, struct ib_qp *ibqp)
{
	struct odprnic_qp *qp = to_oqp(ibqp);
	struct nlattr *table;

	table = nla_nest_start(msg, RDMA_NLDEV_ATTR_DRIVER);
	if (!table)
		return -EMSGSIZE;
	if (rdma_nl_put_driver_u64(msg, "page_faults",
				   atomic64_read(&qp->page_faults)) ||
	    rdma_nl_put_driver_u32(msg, "sq_size", qp->sq_size) ||
	    rdma_nl_put_driver_u32(msg, "rq_size", qp->rq_size)) {
		nla_nest_cancel(msg, table);
		return -EMSGSIZE;
	}
	nla_nest_end(msg, table);
	return 0;
}

static u8 odprnic_gid_type(const struct ib_gid_attr *sgid_attr)
{
	switch (rdma_gid_attr_network_type(sgid_attr)) {
	case RDMA_NETWORK_IPV4:
		return ODPRNIC_GID_ROCE_V2_IPV4;
	case RDMA_NETWORK_IPV6:
		return ODPRNIC_GID_ROCE_V2_IPV6;
	default:
		return ODPRNIC_GID_ROCE_V1;
	}
}

int odprnic_create_ah(struct ib_ah *ibah, struct rdma_ah_init_attr *init,
		      struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibah->device);
	struct rdma_ah_attr *ah_attr = init->ah_attr;
	const struct ib_global_route *grh;
	struct odprnic_args_create_ah a = {};
	struct odprnic_create_ah_resp resp = {};
	struct odprnic_ah *ah = to_oah(ibah);
	__le32 out;
	int err;

	if (!dev->datapath)
		return -EOPNOTSUPP;
	if (ah_attr->type != RDMA_AH_ATTR_TYPE_ROCE ||
	    !(rdma_ah_get_ah_flags(ah_attr) & IB_AH_GRH))
		return -EINVAL;
	grh = rdma_ah_read_grh(ah_attr);
	a.pdn = cpu_to_le32(to_opd(ibah->pd)->pdn);
	memcpy(a.dgid, grh->dgid.raw, sizeof(a.dgid));
	memcpy(a.dmac, ah_attr->roce.dmac, sizeof(a.dmac));
	a.hop_limit = grh->hop_limit;
	a.traffic_class = grh->traffic_class;
	a.flow_label = cpu_to_le32(grh->flow_label);
	if (grh->sgid_attr) {
		memcpy(a.sgid, grh->sgid_attr->gid.raw, sizeof(a.sgid));
		a.gid_type = odprnic_gid_type(grh->sgid_attr);
	}
	err = odprnic_cmd_simple(dev, ODPRNIC_CMD_CREATE_AH, &a, sizeof(a),
				 &out, sizeof(out),
				 !(init->flags & RDMA_CREATE_AH_SLEEPABLE));
	if (err)
		return err;
	ah->ahn = le32_to_cpu(out);
	if (udata && udata->outlen) {
		resp.ah = ah->ahn;
		err = ib_copy_to_udata(udata, &resp,
				       min(udata->outlen, sizeof(resp)));
		if (err) {
			odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_AH, ah->ahn);
			return err;
		}
	}
	return 0;
}

struct odprnic_ah_work {
	struct work_struct work;
	struct odprnic_dev *dev;
	u32 ahn;
};

static void odprnic_destroy_ah_work(struct work_struct *work)
{
	struct odprnic_ah_work *w = container_of(work, struct odprnic_ah_work,
						 work);

	odprnic_cmd_handle(w->dev, ODPRNIC_CMD_DESTROY_AH, w->ahn);
	kfree(w);
}

/*
 * Without RDMA_DESTROY_AH_SLEEPABLE the command goes to the workqueue:
 * the device's AH outlives the ib_ah briefly, which is harmless because
 * nothing can name it any more.
 */
int odprnic_destroy_ah(struct ib_ah *ibah, u32 flags)
{
	struct odprnic_dev *dev = to_odev(ibah->device);
	struct odprnic_ah_work *w;

	if (flags & RDMA_DESTROY_AH_SLEEPABLE) {
		odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_AH,
				   to_oah(ibah)->ahn);
		return 0;
	}
	w = kzalloc(sizeof(*w), GFP_ATOMIC);
	if (!w) {
		atomic64_inc(&dev->stats.leaked_ahs);
		return 0;
	}
	INIT_WORK(&w->work, odprnic_destroy_ah_work);
	w->dev = dev;
	w->ahn = to_oah(ibah)->ahn;
	queue_work(dev->wq, &w->work);
	return 0;
}
