// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the command queue ("Queues", "Command queue").
 *
 * A split virtqueue in DMA-coherent memory. Every command is a chain of
 * request, optional data buffer and response, issued from a preallocated
 * slot, so no path that issues a command allocates memory; completions
 * arrive on MSI-X vector ODPRNIC_VEC_CMD and every wait is bounded by
 * cmd_timeout_ms.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/virtio_byteorder.h>

#include "odp_rnic.h"
#include "odp_rnic_trace.h"

#define ODPRNIC_CMDQ_SIZE	64
#define ODPRNIC_DESC_PER_SLOT	3
#define ODPRNIC_DATA_SIZE	(ODPRNIC_MAP_MAX * sizeof(u64))

/* virtio 1.x rings are little-endian */
#define vq16(v)		__cpu_to_virtio16(true, v)
#define vq32(v)		__cpu_to_virtio32(true, v)
#define vq64(v)		__cpu_to_virtio64(true, v)
#define cpu16(v)	__virtio16_to_cpu(true, v)
#define cpu32(v)	__virtio32_to_cpu(true, v)

int odprnic_vq_alloc(struct odprnic_dev *dev, struct odprnic_vq *vq, u16 num)
{
	vq->num = num;
	vq->mem_size = vring_size(num, PAGE_SIZE);
	vq->mem = dma_alloc_coherent(&dev->pdev->dev, vq->mem_size,
				     &vq->mem_dma, GFP_KERNEL);
	if (!vq->mem)
		return -ENOMEM;
	vring_init(&vq->vr, num, vq->mem, PAGE_SIZE);
	vq->avail_idx = 0;
	vq->last_used = 0;
	return 0;
}

void odprnic_vq_free(struct odprnic_dev *dev, struct odprnic_vq *vq)
{
	if (vq->mem)
		dma_free_coherent(&dev->pdev->dev, vq->mem_size, vq->mem,
				  vq->mem_dma);
	vq->mem = NULL;
}

int odprnic_cmdq_init(struct odprnic_dev *dev)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	unsigned int i;
	int err;

	spin_lock_init(&q->lock);
	err = odprnic_vq_alloc(dev, &q->vq, ODPRNIC_CMDQ_SIZE);
	if (err)
		return err;
	q->nslots = ODPRNIC_CMDQ_SIZE / ODPRNIC_DESC_PER_SLOT;
	q->slots = kcalloc(q->nslots, sizeof(*q->slots), GFP_KERNEL);
	if (!q->slots) {
		err = -ENOMEM;
		goto err_vq;
	}
	/* data buffers first (page-aligned), then request/response pairs */
	q->bufs_size = q->nslots * (ODPRNIC_DATA_SIZE + ODPRNIC_CMD_SIZE +
				    ODPRNIC_RESP_SIZE);
	q->bufs = dma_alloc_coherent(&dev->pdev->dev, q->bufs_size,
				     &q->bufs_dma, GFP_KERNEL);
	if (!q->bufs) {
		err = -ENOMEM;
		goto err_slots;
	}
	for (i = 0; i < q->nslots; i++) {
		struct odprnic_cmd_slot *s = &q->slots[i];
		size_t data_off = i * ODPRNIC_DATA_SIZE;
		size_t cmd_off = q->nslots * ODPRNIC_DATA_SIZE +
				 i * (ODPRNIC_CMD_SIZE + ODPRNIC_RESP_SIZE);
		struct vring_desc *d = &q->vq.vr.desc[i * ODPRNIC_DESC_PER_SLOT];
		u16 head = i * ODPRNIC_DESC_PER_SLOT;

		s->index = i;
		s->data = q->bufs + data_off;
		s->data_dma = q->bufs_dma + data_off;
		s->cmd = q->bufs + cmd_off;
		s->cmd_dma = q->bufs_dma + cmd_off;
		s->resp = q->bufs + cmd_off + ODPRNIC_CMD_SIZE;
		s->resp_dma = q->bufs_dma + cmd_off + ODPRNIC_CMD_SIZE;
		init_completion(&s->done);

		d[0].addr = vq64(s->cmd_dma);
		d[0].len = vq32(ODPRNIC_CMD_SIZE);
		d[0].flags = vq16(VRING_DESC_F_NEXT);
		d[1].addr = vq64(s->data_dma);
		d[1].flags = vq16(VRING_DESC_F_NEXT);
		d[1].next = vq16(head + 2);
		d[2].addr = vq64(s->resp_dma);
		d[2].len = vq32(ODPRNIC_RESP_SIZE);
		d[2].flags = vq16(VRING_DESC_F_WRITE);
	}
	sema_init(&q->free_slots, q->nslots);
	return 0;

err_slots:
	kfree(q->slots);
	q->slots = NULL;
err_vq:
	odprnic_vq_free(dev, &q->vq);
	return err;
}

void odprnic_cmdq_cleanup(struct odprnic_dev *dev)
{
	struct odprnic_cmdq *q = &dev->cmdq;

	if (q->bufs)
		dma_free_coherent(&dev->pdev->dev, q->bufs_size, q->bufs,
				  q->bufs_dma);
	q->bufs = NULL;
	kfree(q->slots);
	q->slots = NULL;
	odprnic_vq_free(dev, &q->vq);
}

/* A device reset restarts both rings of @vq at index 0 ("Reset"). */
void odprnic_vq_restart(struct odprnic_vq *vq)
{
	vq->avail_idx = 0;
	vq->last_used = 0;
	WRITE_ONCE(vq->vr.avail->idx, 0);
	WRITE_ONCE(vq->vr.used->idx, 0);
}

/*
 * After a device reset, between odprnic_reset() and odprnic_enable(): the
 * device forgot every command, so every slot is free again, those
 * abandoned to a device that never answered included. Recovery calls it
 * only when no command can be in flight: the ib_device is unregistered
 * (no verb runs) and the driver's workqueue is flushed (no event work).
 */
void odprnic_cmdq_restart(struct odprnic_dev *dev)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&q->lock, flags);
	odprnic_vq_restart(&q->vq);
	for (i = 0; i < q->nslots; i++) {
		q->slots[i].busy = false;
		q->slots[i].abandoned = false;
		q->slots[i].released = false;
		q->slots[i].aborted = false;
	}
	spin_unlock_irqrestore(&q->lock, flags);
	sema_init(&q->free_slots, q->nslots);
}

/*
 * The device was fenced or lost: it completes no command before it is
 * reset, so wake every waiter now (-ENODEV) instead of after
 * cmd_timeout_ms. This is what lets recovery unregister the ib_device
 * without waiting for the verbs that were in flight to time out.
 */
void odprnic_cmdq_abort(struct odprnic_dev *dev)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	unsigned long flags;
	unsigned int i;

	if (!q->slots)
		return;
	spin_lock_irqsave(&q->lock, flags);
	for (i = 0; i < q->nslots; i++) {
		struct odprnic_cmd_slot *s = &q->slots[i];

		if (s->busy && !s->abandoned && !completion_done(&s->done)) {
			s->aborted = true;
			complete(&s->done);
		}
	}
	spin_unlock_irqrestore(&q->lock, flags);
}

/* Consume the used ring. Caller holds q->lock. */
static void odprnic_cmdq_reap(struct odprnic_dev *dev)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	struct odprnic_vq *vq = &q->vq;

	while (vq->last_used != cpu16(READ_ONCE(vq->vr.used->idx))) {
		struct vring_used_elem *e;
		struct odprnic_cmd_slot *s;
		u32 id;

		dma_rmb();
		e = &vq->vr.used->ring[vq->last_used & (vq->num - 1)];
		id = cpu32(e->id);
		vq->last_used++;
		if (id % ODPRNIC_DESC_PER_SLOT ||
		    id / ODPRNIC_DESC_PER_SLOT >= q->nslots) {
			dev_err_ratelimited(&dev->pdev->dev,
					    "command queue: used id %u is no chain head\n",
					    id);
			continue;
		}
		s = &q->slots[id / ODPRNIC_DESC_PER_SLOT];
		if (!s->busy) {
			dev_err_ratelimited(&dev->pdev->dev,
					    "command queue: slot %u completed twice\n",
					    s->index);
			continue;
		}
		s->used_len = cpu32(e->len);
		if (s->abandoned) {
			/*
			 * Its waiter gave up. The slot is free once both the
			 * device answered and its owner put it, whichever
			 * comes last.
			 */
			s->abandoned = false;
			if (s->released) {
				s->released = false;
				s->busy = false;
				up(&q->free_slots);
			}
			continue;
		}
		complete(&s->done);
	}
}

irqreturn_t odprnic_cmdq_irq(int irq, void *data)
{
	struct odprnic_dev *dev = data;
	unsigned long flags;

	spin_lock_irqsave(&dev->cmdq.lock, flags);
	odprnic_cmdq_reap(dev);
	spin_unlock_irqrestore(&dev->cmdq.lock, flags);
	return IRQ_HANDLED;
}

static struct odprnic_cmd_slot *
__odprnic_cmd_get(struct odprnic_dev *dev, bool atomic)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	struct odprnic_cmd_slot *s = NULL;
	unsigned long flags;
	unsigned int i;

	if (odprnic_dev_gone(dev))
		return ERR_PTR(-ENODEV);
	if (atomic) {
		if (down_trylock(&q->free_slots))
			return ERR_PTR(-EAGAIN);
	} else if (down_timeout(&q->free_slots,
				msecs_to_jiffies(odprnic_cmd_timeout_ms))) {
		dev_err_ratelimited(&dev->pdev->dev,
				    "no command slot free within %u ms\n",
				    odprnic_cmd_timeout_ms);
		return ERR_PTR(-ETIMEDOUT);
	}
	spin_lock_irqsave(&q->lock, flags);
	for (i = 0; i < q->nslots; i++) {
		if (!q->slots[i].busy) {
			s = &q->slots[i];
			s->busy = true;
			break;
		}
	}
	spin_unlock_irqrestore(&q->lock, flags);
	if (WARN_ON(!s)) {
		up(&q->free_slots);
		return ERR_PTR(-EIO);
	}
	return s;
}

struct odprnic_cmd_slot *odprnic_cmd_get(struct odprnic_dev *dev)
{
	return __odprnic_cmd_get(dev, false);
}

void odprnic_cmd_put(struct odprnic_dev *dev, struct odprnic_cmd_slot *s)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	unsigned long flags;
	bool release = false;

	spin_lock_irqsave(&q->lock, flags);
	if (s->abandoned) {
		/* the device's answer frees it (odprnic_cmdq_reap()) */
		s->released = true;
	} else {
		s->busy = false;
		release = true;
	}
	spin_unlock_irqrestore(&q->lock, flags);
	if (release)
		up(&q->free_slots);
}

static int odprnic_status_to_errno(u16 status)
{
	switch (status) {
	case ODPRNIC_STATUS_OK:
		return 0;
	case ODPRNIC_STATUS_BAD_OPCODE:
	case ODPRNIC_STATUS_UNSUPPORTED:
		return -EOPNOTSUPP;
	case ODPRNIC_STATUS_BAD_PARAM:
		return -EINVAL;
	case ODPRNIC_STATUS_NO_RESOURCES:
		return -ENOMEM;
	case ODPRNIC_STATUS_BAD_HANDLE:
		return -ENOENT;
	case ODPRNIC_STATUS_BUSY:
		return -EBUSY;
	default:
		return -EIO;
	}
}

/*
 * Issue the request in @s (args already filled) with @data_len bytes of
 * the slot's data buffer and wait for the response, at most
 * cmd_timeout_ms. On timeout the slot stays owned by the device until it
 * answers; the caller still calls odprnic_cmd_put().
 */
/*
 * In atomic context (create_ah without RDMA_CREATE_AH_SLEEPABLE, as ib_cm
 * calls it under a spinlock) nothing may sleep: reap the used ring by
 * polling, for at most ODPRNIC_ATOMIC_CMD_US.
 */
#define ODPRNIC_ATOMIC_CMD_US	100000

static bool odprnic_cmd_poll(struct odprnic_dev *dev,
			     struct odprnic_cmd_slot *s)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	ktime_t deadline = ktime_add_us(ktime_get(), ODPRNIC_ATOMIC_CMD_US);
	unsigned long flags;
	bool done;

	for (;;) {
		spin_lock_irqsave(&q->lock, flags);
		odprnic_cmdq_reap(dev);
		done = completion_done(&s->done);
		spin_unlock_irqrestore(&q->lock, flags);
		if (done || ktime_after(ktime_get(), deadline))
			return done;
		udelay(5);
	}
}

/*
 * Wait for @s at most cmd_timeout_ms, looking every ODPRNIC_CMD_SLICE_MS
 * whether the device is still there: a device that vanished (all-ones)
 * answers nothing, and its waiters should learn so at once. True when
 * the slot completed (or was aborted).
 */
#define ODPRNIC_CMD_SLICE_MS	100

static bool odprnic_cmd_wait(struct odprnic_dev *dev,
			     struct odprnic_cmd_slot *s)
{
	unsigned long deadline = jiffies +
				 msecs_to_jiffies(odprnic_cmd_timeout_ms);

	for (;;) {
		long left = (long)(deadline - jiffies);

		if (left <= 0)
			return completion_done(&s->done);
		if (wait_for_completion_timeout(&s->done,
						min_t(long, left,
						      msecs_to_jiffies(ODPRNIC_CMD_SLICE_MS))))
			return true;
		/* on loss this aborts every waiter, @s included */
		if (odprnic_dev_dead(dev))
			return true;
	}
}

static int __odprnic_cmd_exec(struct odprnic_dev *dev,
			      struct odprnic_cmd_slot *s, u16 opcode,
			      u32 data_len, bool atomic)
{
	struct odprnic_cmdq *q = &dev->cmdq;
	struct odprnic_vq *vq = &q->vq;
	u16 head = s->index * ODPRNIC_DESC_PER_SLOT;
	struct vring_desc *d = &vq->vr.desc[head];
	unsigned long flags;
	u32 cookie;
	u16 status;

	if (odprnic_dev_gone(dev))
		return -ENODEV;
	/*
	 * A slot whose command timed out is the device's until it answers
	 * (or is reset): its descriptors and buffers must not be reused.
	 */
	if (WARN_ON_ONCE(READ_ONCE(s->abandoned)))
		return -EIO;

	s->cmd->opcode = cpu_to_le16(opcode);
	s->cmd->flags = 0;
	memset(s->resp, 0, sizeof(*s->resp));

	spin_lock_irqsave(&q->lock, flags);
	/* a fence sets fenced before it aborts under q->lock: see it here */
	if (odprnic_dev_gone(dev)) {
		spin_unlock_irqrestore(&q->lock, flags);
		return -ENODEV;
	}
	reinit_completion(&s->done);
	s->aborted = false;
	cookie = ++q->next_cookie;
	s->cmd->cookie = cpu_to_le32(cookie);
	if (data_len) {
		d[0].next = vq16(head + 1);
		d[1].len = vq32(data_len);
	} else {
		d[0].next = vq16(head + 2);
	}
	vq->vr.avail->ring[vq->avail_idx & (vq->num - 1)] = vq16(head);
	/* descriptors and request visible before the index moves */
	dma_wmb();
	vq->avail_idx++;
	WRITE_ONCE(vq->vr.avail->idx, vq16(vq->avail_idx));
	spin_unlock_irqrestore(&q->lock, flags);

	odprnic_write32(dev, ODPRNIC_REG_CMDQ_NOTIFY, 1);

	if (atomic ? !odprnic_cmd_poll(dev, s) : !odprnic_cmd_wait(dev, s)) {
		bool late;

		/* the interrupt may be what got lost: look once more */
		spin_lock_irqsave(&q->lock, flags);
		odprnic_cmdq_reap(dev);
		late = completion_done(&s->done);
		if (!late)
			s->abandoned = true;
		spin_unlock_irqrestore(&q->lock, flags);
		if (!late) {
			atomic64_inc(&dev->stats.cmd_timeouts);
			trace_odprnic_timeout("command", opcode,
					      odprnic_cmd_timeout_ms);
			if (!odprnic_dev_dead(dev))
				dev_err_ratelimited(&dev->pdev->dev,
						    "command %#x (cookie %u) timed out after %u ms\n",
						    opcode, cookie,
						    odprnic_cmd_timeout_ms);
			/*
			 * A device that does not answer may still act on the
			 * command later, or may have reset itself: neither
			 * leaves the driver's view of it trustworthy.
			 */
			odprnic_schedule_recovery(dev, "a command timed out");
			return -ETIMEDOUT;
		}
	}
	if (READ_ONCE(s->aborted))
		return -ENODEV;
	dma_rmb();
	if (s->used_len < ODPRNIC_RESP_SIZE ||
	    le32_to_cpu(s->resp->cookie) != cookie) {
		dev_err_ratelimited(&dev->pdev->dev,
				    "command %#x: malformed completion (len %u cookie %u/%u)\n",
				    opcode, s->used_len,
				    le32_to_cpu(s->resp->cookie), cookie);
		return -EIO;
	}
	status = le16_to_cpu(s->resp->status);
	if (status)
		dev_dbg(&dev->pdev->dev, "command %#x: status %u\n", opcode,
			status);
	return odprnic_status_to_errno(status);
}

int odprnic_cmd_exec(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
		     u16 opcode, u32 data_len)
{
	return __odprnic_cmd_exec(dev, s, opcode, data_len, false);
}

static struct odprnic_cmd_slot *odprnic_cmd_begin(struct odprnic_dev *dev)
{
	struct odprnic_cmd_slot *s = odprnic_cmd_get(dev);

	if (!IS_ERR(s))
		memset(s->cmd->args, 0, sizeof(s->cmd->args));
	return s;
}

int odprnic_cmd_nop(struct odprnic_dev *dev)
{
	struct odprnic_cmd_slot *s = odprnic_cmd_begin(dev);
	int err;

	if (IS_ERR(s))
		return PTR_ERR(s);
	err = odprnic_cmd_exec(dev, s, ODPRNIC_CMD_NOP, 0);
	odprnic_cmd_put(dev, s);
	return err;
}

int odprnic_cmd_create_pd(struct odprnic_dev *dev, u32 *pdn)
{
	struct odprnic_cmd_slot *s = odprnic_cmd_begin(dev);
	int err;

	if (IS_ERR(s))
		return PTR_ERR(s);
	err = odprnic_cmd_exec(dev, s, ODPRNIC_CMD_CREATE_PD, 0);
	if (!err)
		*pdn = get_unaligned_le32(&s->resp->out[0]);
	odprnic_cmd_put(dev, s);
	return err;
}

static int odprnic_cmd_key(struct odprnic_dev *dev, u16 opcode, u32 arg)
{
	struct odprnic_cmd_slot *s = odprnic_cmd_begin(dev);
	int err;

	if (IS_ERR(s))
		return PTR_ERR(s);
	put_unaligned_le32(arg, &s->cmd->args[0]);
	err = odprnic_cmd_exec(dev, s, opcode, 0);
	odprnic_cmd_put(dev, s);
	return err;
}

int odprnic_cmd_destroy_pd(struct odprnic_dev *dev, u32 pdn)
{
	return odprnic_cmd_key(dev, ODPRNIC_CMD_DESTROY_PD, pdn);
}

int odprnic_cmd_destroy_mr(struct odprnic_dev *dev, u32 key)
{
	return odprnic_cmd_key(dev, ODPRNIC_CMD_DESTROY_MR, key);
}

int odprnic_cmd_create_mr(struct odprnic_dev *dev, u32 pdn, u32 access,
			  u8 mode, u64 iova, u64 length, u32 *key)
{
	struct odprnic_cmd_slot *s = odprnic_cmd_begin(dev);
	struct odprnic_args_create_mr *a;
	int err;

	if (IS_ERR(s))
		return PTR_ERR(s);
	a = (struct odprnic_args_create_mr *)s->cmd->args;
	a->pdn = cpu_to_le32(pdn);
	a->access = cpu_to_le32(access);
	a->mode = mode;
	a->page_shift = ODPRNIC_PAGE_SHIFT;
	a->iova = cpu_to_le64(iova);
	a->length = cpu_to_le64(length);
	err = odprnic_cmd_exec(dev, s, ODPRNIC_CMD_CREATE_MR, 0);
	if (!err)
		*key = get_unaligned_le32(&s->resp->out[0]);
	odprnic_cmd_put(dev, s);
	return err;
}

/* MAP_PAGES with the @count entries the caller wrote into s->data. */
int odprnic_cmd_map_pages(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
			  u32 key, u32 flags, u64 iova, u32 count)
{
	struct odprnic_args_map_pages *a;

	if (WARN_ON(!count || count > ODPRNIC_MAP_MAX))
		return -EINVAL;
	memset(s->cmd->args, 0, sizeof(s->cmd->args));
	a = (struct odprnic_args_map_pages *)s->cmd->args;
	a->key = cpu_to_le32(key);
	a->flags = cpu_to_le32(flags);
	a->iova = cpu_to_le64(iova);
	a->count = cpu_to_le32(count);
	return odprnic_cmd_exec(dev, s, ODPRNIC_CMD_MAP_PAGES,
				count * sizeof(u64));
}

int odprnic_cmd_resume(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
		       u32 token, u32 status)
{
	struct odprnic_args_resume *a;

	memset(s->cmd->args, 0, sizeof(s->cmd->args));
	a = (struct odprnic_args_resume *)s->cmd->args;
	a->token = cpu_to_le32(token);
	a->status = cpu_to_le32(status);
	return odprnic_cmd_exec(dev, s, ODPRNIC_CMD_RESUME, 0);
}

/*
 * odprnic_cmd_simple - one command without data buffer: @args_len bytes of
 * @args, up to @out_len bytes of the response's out into @out. @atomic: the
 * caller may not sleep (see odprnic_cmd_poll()).
 */
int odprnic_cmd_simple(struct odprnic_dev *dev, u16 opcode, const void *args,
		       size_t args_len, void *out, size_t out_len, bool atomic)
{
	struct odprnic_cmd_slot *s = __odprnic_cmd_get(dev, atomic);
	int err;

	if (IS_ERR(s))
		return PTR_ERR(s);
	if (WARN_ON(args_len > sizeof(s->cmd->args) ||
		    out_len > sizeof(s->resp->out))) {
		odprnic_cmd_put(dev, s);
		return -EINVAL;
	}
	memset(s->cmd->args, 0, sizeof(s->cmd->args));
	memcpy(s->cmd->args, args, args_len);
	err = __odprnic_cmd_exec(dev, s, opcode, 0, atomic);
	if (!err && out_len)
		memcpy(out, s->resp->out, out_len);
	odprnic_cmd_put(dev, s);
	return err;
}

/* A command whose only argument is a u32 handle and whose answer is one. */
int odprnic_cmd_handle(struct odprnic_dev *dev, u16 opcode, u32 handle)
{
	__le32 arg = cpu_to_le32(handle);

	return odprnic_cmd_simple(dev, opcode, &arg, sizeof(arg), NULL, 0,
				  false);
}
