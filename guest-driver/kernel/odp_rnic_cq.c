// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: completion queues ("Where rings live", "Completion queue
 * entries", "Doorbell pages").
 *
 * A CQ is one DMA-coherent buffer: struct odprnic_cq_hdr, then the CQEs.
 * The device writes a CQE, then its owner byte, then hdr->prod; software
 * consumes by the owner bit and publishes hdr->cons. User CQs are mapped
 * into the process and polled there; the kernel polls its own.
 *
 * Interrupts: each CQ is given one of the MSI-X vectors
 * ODPRNIC_VEC_CQ_FIRST.. at creation. An armed CQ signals its vector once;
 * the handler calls comp_handler for every CQ of the vector that was armed
 * (kernel CQs) or has new completions (user CQs, armed by the provider
 * through its own doorbell page).
 */
#include <linux/interrupt.h>
#include <linux/log2.h>
#include <rdma/odp_rnic-abi.h>
#include <rdma/uverbs_ioctl.h>

#include "odp_rnic.h"

static irqreturn_t odprnic_cq_irq(int irq, void *data)
{
	struct odprnic_cq_vec *v = data;
	struct odprnic_cq *cq;
	unsigned long flags;

	spin_lock_irqsave(&v->lock, flags);
	list_for_each_entry(cq, &v->cqs, vec_node) {
		bool call;

		if (cq->user) {
			u32 prod = le32_to_cpu(READ_ONCE(cq->hdr->prod));

			/* an arm may fire with prod unchanged: always pass it on */
			call = true;
			cq->irq_prod = prod;
		} else {
			call = test_and_clear_bit(ODPRNIC_CQF_ARMED,
						  &cq->flags);
		}
		if (call && cq->ibcq.comp_handler)
			cq->ibcq.comp_handler(&cq->ibcq, cq->ibcq.cq_context);
	}
	spin_unlock_irqrestore(&v->lock, flags);
	return IRQ_HANDLED;
}

/*
 * odprnic_cq_vecs_init - request the CQ vectors among the @nvec granted.
 * Returns the number requested; 0 leaves the device without a data path.
 */
int odprnic_cq_vecs_init(struct odprnic_dev *dev, unsigned int nvec)
{
	struct pci_dev *pdev = dev->pdev;
	unsigned int i, n;
	int err;

	n = nvec > ODPRNIC_VEC_CQ_FIRST ? nvec - ODPRNIC_VEC_CQ_FIRST : 0;
	n = min_t(unsigned int, n, ODPRNIC_MAX_CQ_VECS);
	for (i = 0; i < n; i++) {
		struct odprnic_cq_vec *v = &dev->cqvec[i];

		v->dev = dev;
		v->vector = ODPRNIC_VEC_CQ_FIRST + i;
		spin_lock_init(&v->lock);
		INIT_LIST_HEAD(&v->cqs);
		err = request_irq(pci_irq_vector(pdev, v->vector),
				  odprnic_cq_irq, 0, "odp_rnic-cq", v);
		if (err) {
			dev_warn(&pdev->dev, "CQ vector %u: %d\n", v->vector,
				 err);
			break;
		}
		v->irq = true;
	}
	dev->ncqvec = i;
	return i;
}

void odprnic_cq_vecs_cleanup(struct odprnic_dev *dev)
{
	unsigned int i;

	for (i = 0; i < dev->ncqvec; i++) {
		struct odprnic_cq_vec *v = &dev->cqvec[i];

		if (!v->irq)
			continue;
		WARN_ON(!list_empty(&v->cqs));
		free_irq(pci_irq_vector(dev->pdev, v->vector), v);
		v->irq = false;
	}
	dev->ncqvec = 0;
}

static struct odprnic_cq_vec *odprnic_cq_vec(struct odprnic_cq *cq)
{
	return &cq->dev->cqvec[cq->vector - ODPRNIC_VEC_CQ_FIRST];
}

int odprnic_create_cq(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
		      struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibcq->device);
	struct odprnic_cq *cq = to_ocq(ibcq);
	struct odprnic_ucontext *uc = NULL;
	struct odprnic_args_create_cq a = {};
	struct odprnic_create_cq_resp resp = {};
	struct odprnic_cq_vec *v;
	unsigned long flags;
	size_t size;
	__le32 out;
	int err;

	if (!dev->datapath)
		return -EOPNOTSUPP;
	if (attr->flags)
		return -EOPNOTSUPP;
	if (attr->cqe < 1 || attr->cqe > ODPRNIC_MAX_CQE)
		return -EINVAL;
	if (udata)
		uc = rdma_udata_to_drv_context(udata, struct odprnic_ucontext,
					       ibuc);
	if (uc && !uc->db_page)
		return -EOPNOTSUPP;

	cq->dev = dev;
	cq->user = !!uc;
	cq->size = roundup_pow_of_two(attr->cqe);
	/*
	 * The device does not say which CQ of a vector completed, so every
	 * CQ sharing a vector is looked at on its interrupt: spread them,
	 * starting from the comp_vector asked for.
	 */
	cq->vector = ODPRNIC_VEC_CQ_FIRST +
		     (attr->comp_vector +
		      (u32)atomic_inc_return(&dev->next_cqvec)) % dev->ncqvec;
	spin_lock_init(&cq->lock);
	INIT_LIST_HEAD(&cq->vec_node);
	size = PAGE_ALIGN(ODPRNIC_RING_HDR_SPACE +
			  (size_t)cq->size * ODPRNIC_CQE_SIZE);

	if (uc) {
		cq->mentry = odprnic_mmap_ring(uc, size);
		if (IS_ERR(cq->mentry))
			return PTR_ERR(cq->mentry);
		cq->ring = cq->mentry->ring;
	} else {
		err = odprnic_ring_alloc(dev, &cq->ring, size);
		if (err)
			return err;
	}
	cq->hdr = cq->ring.va;
	cq->cqes = cq->ring.va + ODPRNIC_RING_HDR_SPACE;

	a.buf = cpu_to_le64(cq->ring.dma);
	a.size = cpu_to_le32(cq->size);
	a.vector = cpu_to_le16(cq->vector);
	a.db_page = cpu_to_le16(uc ? uc->db_page : 0);
	err = odprnic_cmd_simple(dev, ODPRNIC_CMD_CREATE_CQ, &a, sizeof(a),
				 &out, sizeof(out), false);
	if (err)
		goto err_ring;
	cq->cqn = le32_to_cpu(out);

	err = xa_insert(&dev->cqs, cq->cqn, cq, GFP_KERNEL);
	if (err)
		goto err_destroy;

	if (uc) {
		resp.mmap_key = rdma_user_mmap_get_offset(&cq->mentry->rdma);
		resp.cqn = cq->cqn;
		resp.size = cq->size;
		resp.buf_size = size;
		err = ib_copy_to_udata(udata, &resp,
				       min(udata->outlen, sizeof(resp)));
		if (err)
			goto err_xa;
	}
	ibcq->cqe = cq->size;

	v = odprnic_cq_vec(cq);
	spin_lock_irqsave(&v->lock, flags);
	list_add_tail(&cq->vec_node, &v->cqs);
	spin_unlock_irqrestore(&v->lock, flags);
	return 0;

err_xa:
	xa_erase(&dev->cqs, cq->cqn);
err_destroy:
	odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_CQ, cq->cqn);
err_ring:
	if (uc)
		rdma_user_mmap_entry_remove(&cq->mentry->rdma);
	else
		odprnic_ring_free(dev, &cq->ring);
	return err;
}

int odprnic_destroy_cq(struct ib_cq *ibcq, struct ib_udata *udata)
{
	struct odprnic_cq *cq = to_ocq(ibcq);
	struct odprnic_dev *dev = cq->dev;
	struct odprnic_cq_vec *v = odprnic_cq_vec(cq);
	unsigned long flags;
	int err;

	err = odprnic_cmd_handle(dev, ODPRNIC_CMD_DESTROY_CQ, cq->cqn);
	if (err == -EBUSY)
		return err;	/* a QP still uses it: the core keeps it */
	odprnic_destroyed(dev, "CQ", cq->cqn, err);

	spin_lock_irqsave(&v->lock, flags);
	list_del(&cq->vec_node);
	spin_unlock_irqrestore(&v->lock, flags);
	xa_erase(&dev->cqs, cq->cqn);

	if (cq->user)
		rdma_user_mmap_entry_remove(&cq->mentry->rdma);
	else
		odprnic_ring_free(dev, &cq->ring);
	return 0;
}

static enum ib_wc_opcode odprnic_wc_opcode(u8 op)
{
	switch (op) {
	case ODPRNIC_CQE_OP_RDMA_WRITE:
		return IB_WC_RDMA_WRITE;
	case ODPRNIC_CQE_OP_RDMA_READ:
		return IB_WC_RDMA_READ;
	case ODPRNIC_CQE_OP_COMP_SWAP:
		return IB_WC_COMP_SWAP;
	case ODPRNIC_CQE_OP_FETCH_ADD:
		return IB_WC_FETCH_ADD;
	case ODPRNIC_CQE_OP_RECV:
		return IB_WC_RECV;
	case ODPRNIC_CQE_OP_RECV_RDMA_WITH_IMM:
		return IB_WC_RECV_RDMA_WITH_IMM;
	default:
		return IB_WC_SEND;
	}
}

static void odprnic_cqe_to_wc(struct odprnic_cq *cq,
			      const struct odprnic_cqe *cqe, struct ib_wc *wc)
{
	u32 qpn = le32_to_cpu(cqe->qpn);
	struct odprnic_qp *qp;

	memset(wc, 0, sizeof(*wc));
	wc->wr_id = le64_to_cpu(cqe->wr_id);
	/* "The status values are those of enum ib_wc_status" */
	wc->status = cqe->status;
	wc->opcode = odprnic_wc_opcode(cqe->opcode);
	wc->byte_len = le32_to_cpu(cqe->byte_len);
	wc->src_qp = le32_to_cpu(cqe->src_qp);
	wc->pkey_index = le16_to_cpu(cqe->pkey_index);
	wc->port_num = 1;
	if (cqe->flags & ODPRNIC_CQE_F_IMM) {
		wc->ex.imm_data = cqe->imm_data;
		wc->wc_flags |= IB_WC_WITH_IMM;
	}
	if (cqe->flags & ODPRNIC_CQE_F_GRH)
		wc->wc_flags |= IB_WC_GRH;
	qp = xa_load(&cq->dev->qps, qpn);
	wc->qp = qp ? &qp->ibqp : NULL;
}

int odprnic_poll_cq(struct ib_cq *ibcq, int num_entries, struct ib_wc *wc)
{
	struct odprnic_cq *cq = to_ocq(ibcq);
	u32 shift = ilog2(cq->size);
	unsigned long flags;
	int n = 0;

	if (cq->user)
		return -EINVAL;
	spin_lock_irqsave(&cq->lock, flags);
	while (n < num_entries) {
		const struct odprnic_cqe *cqe =
			&cq->cqes[cq->cons & (cq->size - 1)];
		u8 owner = ((cq->cons >> shift) & 1) ^ 1;

		if (READ_ONCE(cqe->owner) != owner)
			break;
		/* the owner byte is written last: read the rest after it */
		dma_rmb();
		odprnic_cqe_to_wc(cq, cqe, &wc[n++]);
		cq->cons++;
	}
	if (n)
		WRITE_ONCE(cq->hdr->cons, cpu_to_le32(cq->cons));
	spin_unlock_irqrestore(&cq->lock, flags);
	return n;
}

int odprnic_req_notify_cq(struct ib_cq *ibcq, enum ib_cq_notify_flags flags)
{
	struct odprnic_cq *cq = to_ocq(ibcq);
	u32 val = cq->cqn;
	unsigned long irqflags;
	bool missed = false;

	if (cq->user)
		return -EINVAL;
	if ((flags & IB_CQ_SOLICITED_MASK) == IB_CQ_SOLICITED)
		val |= ODPRNIC_DB_CQ_ARM_SOLICITED;
	set_bit(ODPRNIC_CQF_ARMED, &cq->flags);
	iowrite32(val, cq->dev->db + ODPRNIC_DB_CQ_ARM);

	if (flags & IB_CQ_REPORT_MISSED_EVENTS) {
		/*
		 * The arm is a posted write: a CQE written before the device
		 * sees it raises no interrupt. A register read returns only
		 * after the device handled the write, so a CQE not seen
		 * below comes after the arm and will interrupt.
		 */
		odprnic_read32(cq->dev, ODPRNIC_REG_STATUS);
		spin_lock_irqsave(&cq->lock, irqflags);
		missed = READ_ONCE(cq->cqes[cq->cons & (cq->size - 1)].owner) ==
			 (((cq->cons >> ilog2(cq->size)) & 1) ^ 1);
		spin_unlock_irqrestore(&cq->lock, irqflags);
	}
	return missed;
}

/* EVENT_CQ_ERROR: the CQ overflowed; its QPs went to error. */
void odprnic_cq_error_event(struct odprnic_dev *dev, u32 cqn)
{
	struct odprnic_cq *cq;
	struct ib_event ev;

	atomic64_inc(&dev->stats.cq_errors);
	xa_lock(&dev->cqs);
	cq = xa_load(&dev->cqs, cqn);
	if (cq && cq->ibcq.event_handler) {
		ev.device = cq->ibcq.device;
		ev.element.cq = &cq->ibcq;
		ev.event = IB_EVENT_CQ_ERR;
		cq->ibcq.event_handler(&ev, cq->ibcq.cq_context);
	}
	xa_unlock(&dev->cqs);
	dev_warn_ratelimited(&dev->pdev->dev, "CQ %u: error (overflow)\n",
			     cqn);
}
