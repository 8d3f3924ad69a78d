// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the event queue ("Event queue") and the invalidation doorbell
 * ("Invalidation doorbell").
 *
 * The driver keeps every event buffer posted; the device fills them in
 * order and signals ODPRNIC_VEC_EVENT. Events are handled on the driver's
 * WQ_HIGHPRI | WQ_UNBOUND | WQ_MEM_RECLAIM workqueue (page faults may be
 * what reclaim waits for). The interrupt handler itself only wakes
 * invalidation waiters, so an acknowledgment is seen even while a page
 * fault on the workqueue waits for the umem_mutex an invalidation holds.
 */
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/virtio_byteorder.h>

#include "odp_rnic.h"
#include "odp_rnic_trace.h"

#define ODPRNIC_EQ_SIZE		64
#define ODPRNIC_EQ_BATCH	16
#define ODPRNIC_INV_POLL_MS	10

static void odprnic_eq_post(struct odprnic_vq *vq, u16 id)
{
	vq->vr.avail->ring[vq->avail_idx & (vq->num - 1)] =
		__cpu_to_virtio16(true, id);
	dma_wmb();
	vq->avail_idx++;
	WRITE_ONCE(vq->vr.avail->idx, __cpu_to_virtio16(true, vq->avail_idx));
}

/*
 * The asynchronous event an application gets when its QP went to the
 * error state, by the completion status that caused it: an access
 * violation (a bad, revoked or dead key; rights; bounds) is
 * IB_EVENT_QP_ACCESS_ERR, a malformed request IB_EVENT_QP_REQ_ERR, the
 * rest IB_EVENT_QP_FATAL. This is how the owner of a revoked MR learns
 * that a QP touched it.
 */
static enum ib_event_type odprnic_qp_error_event(u32 syndrome)
{
	switch (syndrome) {
	case ODPRNIC_WC_LOC_PROT_ERR:
	case ODPRNIC_WC_LOC_ACCESS_ERR:
	case ODPRNIC_WC_REM_ACCESS_ERR:
		return IB_EVENT_QP_ACCESS_ERR;
	case ODPRNIC_WC_LOC_QP_OP_ERR:
	case ODPRNIC_WC_LOC_LEN_ERR:
	case ODPRNIC_WC_REM_INV_REQ_ERR:
		return IB_EVENT_QP_REQ_ERR;
	default:
		return IB_EVENT_QP_FATAL;
	}
}

static void odprnic_event_handle(struct odprnic_dev *dev,
				 const struct odprnic_event *ev)
{
	u16 type = le16_to_cpu(ev->type);
	u32 seq = le32_to_cpu(ev->seq);

	if (seq != dev->eq.last_seq + 1)
		dev_warn_ratelimited(&dev->pdev->dev,
				     "event sequence jumped from %u to %u\n",
				     dev->eq.last_seq, seq);
	dev->eq.last_seq = seq;
	atomic64_inc(&dev->stats.events);

	switch (type) {
	case ODPRNIC_EVENT_PAGE_FAULT:
		odprnic_odp_fault_event(dev, ev);
		break;
	case ODPRNIC_EVENT_INV_ACK:
		wake_up_all(&dev->inv_wait);
		break;
	case ODPRNIC_EVENT_MR_REVOKED:
		odprnic_mr_revoked_event(dev, get_unaligned_le32(&ev->data[0]));
		break;
	case ODPRNIC_EVENT_QP_ERROR: {
		const struct odprnic_ev_qp_error *qe = (const void *)ev->data;

		atomic64_inc(&dev->stats.qp_errors);
		dev_dbg(&dev->pdev->dev, "QP %u: error, syndrome %u\n",
			le32_to_cpu(qe->qpn), le32_to_cpu(qe->syndrome));
		odprnic_qp_event(dev, le32_to_cpu(qe->qpn),
				 odprnic_qp_error_event(le32_to_cpu(qe->syndrome)));
		break;
	}
	case ODPRNIC_EVENT_CQ_ERROR:
		odprnic_cq_error_event(dev, get_unaligned_le32(&ev->data[0]));
		break;
	case ODPRNIC_EVENT_QP_LAST_WQE:
		odprnic_qp_event(dev, get_unaligned_le32(&ev->data[0]),
				 IB_EVENT_QP_LAST_WQE_REACHED);
		break;
	case ODPRNIC_EVENT_DEVICE_ERROR:
		dev_err(&dev->pdev->dev, "device error, code %u\n",
			get_unaligned_le32(&ev->data[0]));
		odprnic_schedule_recovery(dev, "the device reported an error");
		break;
	default:
		dev_warn_ratelimited(&dev->pdev->dev, "unknown event type %u\n",
				     type);
	}
}

static void odprnic_eq_work(struct work_struct *work)
{
	struct odprnic_eq *eq = container_of(work, struct odprnic_eq, work);
	struct odprnic_dev *dev = container_of(eq, struct odprnic_dev, eq);
	struct odprnic_vq *vq = &eq->vq;
	struct odprnic_event batch[ODPRNIC_EQ_BATCH];
	unsigned int n, i;

	do {
		n = 0;
		while (n < ODPRNIC_EQ_BATCH &&
		       vq->last_used !=
		       __virtio16_to_cpu(true, READ_ONCE(vq->vr.used->idx))) {
			struct vring_used_elem *e;
			u32 id;

			dma_rmb();
			e = &vq->vr.used->ring[vq->last_used & (vq->num - 1)];
			id = __virtio32_to_cpu(true, e->id);
			vq->last_used++;
			if (id >= vq->num) {
				dev_err_ratelimited(&dev->pdev->dev,
						    "event queue: bad id %u\n",
						    id);
				continue;
			}
			batch[n++] = eq->bufs[id];
			odprnic_eq_post(vq, id);
		}
		if (!n)
			break;
		/* give the buffers back before handling: faults take time */
		if (!READ_ONCE(dev->lost))
			odprnic_write32(dev, ODPRNIC_REG_EQ_NOTIFY, 1);
		for (i = 0; i < n; i++)
			odprnic_event_handle(dev, &batch[i]);
	} while (n == ODPRNIC_EQ_BATCH);
}

irqreturn_t odprnic_eq_irq(int irq, void *data)
{
	struct odprnic_dev *dev = data;

	wake_up_all(&dev->inv_wait);
	queue_work(dev->wq, &dev->eq.work);
	return IRQ_HANDLED;
}

int odprnic_eq_init(struct odprnic_dev *dev)
{
	struct odprnic_eq *eq = &dev->eq;
	size_t size = ODPRNIC_EQ_SIZE * sizeof(*eq->bufs);
	u16 i;
	int err;

	INIT_WORK(&eq->work, odprnic_eq_work);
	eq->last_seq = 0;
	err = odprnic_vq_alloc(dev, &eq->vq, ODPRNIC_EQ_SIZE);
	if (err)
		return err;
	eq->bufs = dma_alloc_coherent(&dev->pdev->dev, size, &eq->bufs_dma,
				      GFP_KERNEL);
	if (!eq->bufs) {
		odprnic_vq_free(dev, &eq->vq);
		return -ENOMEM;
	}
	for (i = 0; i < ODPRNIC_EQ_SIZE; i++) {
		struct vring_desc *d = &eq->vq.vr.desc[i];

		d->addr = __cpu_to_virtio64(true, eq->bufs_dma +
					    i * sizeof(*eq->bufs));
		d->len = __cpu_to_virtio32(true, sizeof(*eq->bufs));
		d->flags = __cpu_to_virtio16(true, VRING_DESC_F_WRITE);
	}
	return 0;
}

/*
 * After a device reset ("Reset": the event sequence restarts at 1): every
 * event buffer is posted again. The caller flushed the event work.
 */
void odprnic_eq_restart(struct odprnic_dev *dev)
{
	struct odprnic_eq *eq = &dev->eq;
	u16 i;

	cancel_work_sync(&eq->work);
	odprnic_vq_restart(&eq->vq);
	eq->last_seq = 0;
	for (i = 0; i < ODPRNIC_EQ_SIZE; i++)
		odprnic_eq_post(&eq->vq, i);
}

void odprnic_eq_cleanup(struct odprnic_dev *dev)
{
	struct odprnic_eq *eq = &dev->eq;

	cancel_work_sync(&eq->work);
	if (eq->bufs)
		dma_free_coherent(&dev->pdev->dev,
				  ODPRNIC_EQ_SIZE * sizeof(*eq->bufs),
				  eq->bufs, eq->bufs_dma);
	eq->bufs = NULL;
	odprnic_vq_free(dev, &eq->vq);
}

/* "acknowledgments are in submission order": serial number arithmetic */
static bool odprnic_inv_acked(struct odprnic_dev *dev, u32 seq, int *err)
{
	u32 ack = odprnic_read32(dev, ODPRNIC_REG_INV_ACK);

	if (ack == 0xffffffff && odprnic_dev_dead(dev)) {
		*err = -ENODEV;
		return true;
	}
	return (s32)(ack - seq) >= 0;
}

/*
 * odprnic_inv_submit - ring the invalidation doorbell for [@iova, @iova +
 * @len) of MR @key without waiting; *@seq is what odprnic_inv_wait()
 * waits for. -ENODEV: the device is gone or fenced, which also guarantees
 * no further DMA.
 */
int odprnic_inv_submit(struct odprnic_dev *dev, u32 key, u64 iova, u64 len,
		       u32 *seq)
{
	if (odprnic_dev_gone(dev))
		return -ENODEV;

	spin_lock(&dev->inv_lock);
	*seq = ++dev->inv_seq;
	odprnic_write32(dev, ODPRNIC_REG_INV_KEY, key);
	odprnic_write64(dev, ODPRNIC_REG_INV_START, iova);
	odprnic_write64(dev, ODPRNIC_REG_INV_LENGTH, len);
	odprnic_write32(dev, ODPRNIC_REG_INV_SEQ, *seq);
	spin_unlock(&dev->inv_lock);
	atomic64_inc(&dev->stats.invalidations);
	trace_odprnic_inv_start(key, iova, len, *seq);
	return 0;
}

/*
 * odprnic_inv_wait - wait, at most inv_timeout_ms from @t0 (when it was
 * submitted), until the device acknowledged invalidation @seq. -ETIMEDOUT
 * leaves the decision (kill the MR, fence the device) to the caller.
 */
int odprnic_inv_wait(struct odprnic_dev *dev, u32 seq, u32 key, u64 iova,
		     u64 len, ktime_t t0)
{
	ktime_t end = ktime_add_ms(t0, odprnic_inv_timeout_ms);
	int err = 0;

	for (;;) {
		s64 left = ktime_ms_delta(end, ktime_get());

		if (odprnic_inv_acked(dev, seq, &err)) {
			trace_odprnic_inv_ack(key, seq,
					      ktime_to_ns(ktime_sub(ktime_get(),
								    t0)),
					      err);
			return err;
		}
		if (left <= 0)
			break;
		wait_event_timeout(dev->inv_wait,
				   odprnic_inv_acked(dev, seq, &err),
				   msecs_to_jiffies(min_t(s64, left,
							  ODPRNIC_INV_POLL_MS)));
	}
	atomic64_inc(&dev->stats.inv_timeouts);
	trace_odprnic_timeout("invalidation", seq, odprnic_inv_timeout_ms);
	dev_err(&dev->pdev->dev,
		"invalidation %u (key %#x iova %#llx len %#llx) not acknowledged within %u ms\n",
		seq, key, iova, len, odprnic_inv_timeout_ms);
	return -ETIMEDOUT;
}

/*
 * odprnic_invalidate - take [@iova, @iova + @len) of MR @key away from the
 * device and wait, at most inv_timeout_ms, until it confirms that it no
 * longer touches those pages. -ETIMEDOUT leaves the decision (kill the MR,
 * fence the device) to the caller; -ENODEV means the device is gone or
 * fenced, which also guarantees no further DMA.
 */
int odprnic_invalidate(struct odprnic_dev *dev, u32 key, u64 iova, u64 len)
{
	ktime_t t0 = ktime_get();
	u32 seq;
	int err;

	err = odprnic_inv_submit(dev, key, iova, len, &seq);
	if (err)
		return err;
	return odprnic_inv_wait(dev, seq, key, iova, len, t0);
}
