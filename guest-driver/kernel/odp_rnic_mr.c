// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: memory regions ("Three kinds of memory registration").
 *
 * pinned:    ib_umem with FOLL_LONGTERM, the whole table written at
 *            registration (refused by the kernel on FS-DAX).
 * revocable: short-term pins and an mmu interval notifier; an invalidation
 *            revokes the key through the doorbell and the pins are dropped
 *            by a work item, outside the notifier.
 * odp:       odp_rnic_odp.c; implicit ODP (the whole address space):
 *            odp_rnic_imr.c.
 */
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <rdma/odp_rnic-abi.h>
#include <rdma/iter.h>
#include <rdma/rdma_netlink.h>
#include <rdma/restrack.h>
#include <rdma/uverbs_ioctl.h>

#include "odp_rnic.h"
#include "odp_rnic_trace.h"

u32 odprnic_access_to_hw(int access)
{
	u32 hw = 0;

	if (access & IB_ACCESS_LOCAL_WRITE)
		hw |= ODPRNIC_ACCESS_LOCAL_WRITE;
	if (access & IB_ACCESS_REMOTE_WRITE)
		hw |= ODPRNIC_ACCESS_REMOTE_WRITE;
	if (access & IB_ACCESS_REMOTE_READ)
		hw |= ODPRNIC_ACCESS_REMOTE_READ;
	if (access & IB_ACCESS_REMOTE_ATOMIC)
		hw |= ODPRNIC_ACCESS_REMOTE_ATOMIC;
	return hw;
}

struct odprnic_mr *odprnic_mr_get(struct odprnic_dev *dev, u32 key)
{
	struct odprnic_mr *mr;
	unsigned long flags;

	xa_lock_irqsave(&dev->mrs, flags);
	mr = xa_load(&dev->mrs, key >> 8);
	if (mr && (mr->key != key || !refcount_inc_not_zero(&mr->refs)))
		mr = NULL;
	xa_unlock_irqrestore(&dev->mrs, flags);
	return mr;
}

void odprnic_mr_put(struct odprnic_mr *mr)
{
	if (refcount_dec_and_test(&mr->refs))
		complete(&mr->released);
}

struct ib_mr *odprnic_get_dma_mr(struct ib_pd *pd, int access)
{
	/* user space never names guest-physical memory ("Queues ...") */
	return ERR_PTR(-EOPNOTSUPP);
}

/*
 * Writing the translation table of a pinned or revocable MR: entries are
 * collected in a command slot's data buffer and sent with one MAP_PAGES
 * per ODPRNIC_MAP_MAX pages.
 */
struct odprnic_table_writer {
	struct odprnic_mr *mr;
	struct odprnic_cmd_slot *s;
	u64 pte_bits;
	u64 next_iova;		/* IOVA of the first entry in the buffer */
	u32 count;
};

static int odprnic_tw_begin(struct odprnic_table_writer *tw,
			    struct odprnic_mr *mr)
{
	tw->mr = mr;
	tw->count = 0;
	tw->next_iova = mr->iova & PAGE_MASK;
	tw->pte_bits = ODPRNIC_PTE_READ;
	if (mr->access & (IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE |
			  IB_ACCESS_REMOTE_ATOMIC))
		tw->pte_bits |= ODPRNIC_PTE_WRITE;
	tw->s = odprnic_cmd_get(mr->dev);
	return PTR_ERR_OR_ZERO(tw->s);
}

static int odprnic_tw_flush(struct odprnic_table_writer *tw)
{
	int err;

	if (!tw->count)
		return 0;
	err = odprnic_cmd_map_pages(tw->mr->dev, tw->s, tw->mr->key, 0,
				    tw->next_iova, tw->count);
	tw->next_iova += (u64)tw->count << PAGE_SHIFT;
	tw->count = 0;
	return err;
}

static int odprnic_tw_add(struct odprnic_table_writer *tw, u64 addr)
{
	tw->s->data[tw->count++] = cpu_to_le64((addr & PAGE_MASK) |
					       tw->pte_bits);
	if (tw->count == ODPRNIC_MAP_MAX)
		return odprnic_tw_flush(tw);
	return 0;
}

static int odprnic_tw_end(struct odprnic_table_writer *tw, int err)
{
	if (!err)
		err = odprnic_tw_flush(tw);
	odprnic_cmd_put(tw->mr->dev, tw->s);
	return err;
}

static int odprnic_pinned_reg(struct odprnic_mr *mr)
{
	struct odprnic_dev *dev = mr->dev;
	struct odprnic_table_writer tw;
	struct ib_block_iter biter;
	struct ib_umem *umem;
	int err;

	umem = odprnic_umem_get(mr->ibmr.device, mr->start, mr->length,
				mr->access);
	if (IS_ERR(umem))
		return PTR_ERR(umem);
	mr->umem = umem;
	err = odprnic_cmd_create_mr(dev, to_opd(mr->ibmr.pd)->pdn,
				    odprnic_access_to_hw(mr->access),
				    ODPRNIC_MR_PINNED, mr->iova, mr->length,
				    &mr->key);
	if (err)
		goto err_release;
	set_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	err = odprnic_tw_begin(&tw, mr);
	if (err)
		goto err_destroy;
	rdma_umem_for_each_dma_block(umem, &biter, PAGE_SIZE) {
		err = odprnic_tw_add(&tw, rdma_block_iter_dma_address(&biter));
		if (err)
			break;
	}
	err = odprnic_tw_end(&tw, err);
	if (err)
		goto err_destroy;
	return 0;

err_destroy:
	clear_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	if (odprnic_cmd_destroy_mr(dev, mr->key) == -ETIMEDOUT)
		odprnic_fence(dev, "DESTROY_MR of a failed registration timed out");
err_release:
	ib_umem_release(umem);
	mr->umem = NULL;
	return err;
}

static void odprnic_pinned_dereg(struct odprnic_mr *mr)
{
	ib_umem_release(mr->umem);
	mr->umem = NULL;
}

/* ---- revocable MRs ------------------------------------------------- */

/*
 * Attempts at pinning a revocable MR's range that an invalidation may
 * overtake before the registration fails with -EAGAIN. Each attempt pins
 * and DMA-maps the whole range again; a range invalidated that often (a
 * thread freeing pages in it in a loop) would be revoked at once anyway.
 */
#define ODPRNIC_REVOCABLE_PIN_TRIES	8

static bool odprnic_revocable_writable(const struct odprnic_mr *mr)
{
	return mr->access & (IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE |
			     IB_ACCESS_REMOTE_ATOMIC);
}

/*
 * Drops what odprnic_revocable_pin() took: the DMA mapping first (behind
 * swiotlb the unmap copies what the device wrote into the pages), then the
 * pins, marking the pages dirty if the device may have written them.
 */
static void odprnic_revocable_release(struct odprnic_mr *mr,
				      struct sg_append_table *pins, bool mapped,
				      bool dirty)
{
	struct scatterlist *sg;
	unsigned int i;

	if (mapped)
		ib_dma_unmap_sgtable_attrs(mr->ibmr.device, &pins->sgt,
					   DMA_BIDIRECTIONAL, 0);
	for_each_sgtable_sg(&pins->sgt, sg, i)
		unpin_user_page_range_dirty_lock(sg_page(sg),
						 DIV_ROUND_UP(sg->length,
							      PAGE_SIZE),
						 dirty);
	sg_free_append_table(pins);
	memset(pins, 0, sizeof(*pins));
}

/*
 * Pins the MR's pages into mr->pins and maps them for the device, as
 * ib_umem_get() does, but with short-term pins: without FOLL_LONGTERM,
 * FS-DAX and shared file mappings allow them. The device gets DMA
 * addresses, not physical ones: behind an IOMMU or swiotlb they differ.
 */
static int odprnic_revocable_pin(struct odprnic_mr *mr)
{
	struct ib_device *ibdev = mr->ibmr.device;
	unsigned long addr = mr->start & PAGE_MASK;
	unsigned long left = mr->npages;
	unsigned long dma_attrs = 0;
	unsigned int gup = 0;
	struct page **list;
	int n, err = 0;

	if (odprnic_revocable_writable(mr))
		gup |= FOLL_WRITE;
	list = (struct page **)__get_free_page(GFP_KERNEL);
	if (!list)
		return -ENOMEM;
	while (left) {
		cond_resched();
		n = pin_user_pages_fast(addr,
					min_t(unsigned long, left,
					      PAGE_SIZE / sizeof(*list)),
					gup, list);
		if (n <= 0) {
			err = n ? n : -EFAULT;
			break;
		}
		addr += (unsigned long)n << PAGE_SHIFT;
		left -= n;
		err = sg_alloc_append_table_from_pages(&mr->pins, list, n, 0,
						       (unsigned long)n <<
						       PAGE_SHIFT,
						       ib_dma_max_seg_size(ibdev),
						       left, GFP_KERNEL);
		if (err) {
			unpin_user_pages(list, n);
			break;
		}
	}
	free_page((unsigned long)list);
	if (!err) {
		if (mr->access & IB_ACCESS_RELAXED_ORDERING)
			dma_attrs |= DMA_ATTR_WEAK_ORDERING;
		err = ib_dma_map_sgtable_attrs(ibdev, &mr->pins.sgt,
					       DMA_BIDIRECTIONAL, dma_attrs);
		if (!err)
			return 0;
	}
	odprnic_revocable_release(mr, &mr->pins, false, false);
	return err;
}

/*
 * The pins count against RLIMIT_MEMLOCK as ib_umem_get() counts a pinned
 * MR's: the process's pinned_vm grows by the MR's pages from registration
 * until the pins go (revocation or deregistration), and a process without
 * CAP_IPC_LOCK cannot pin past its limit. Short-term pins or not, they are
 * held for as long as the registration is not revoked.
 */
static int odprnic_revocable_charge(struct odprnic_mr *mr)
{
	struct mm_struct *mm = current->mm;
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;

	if ((u64)atomic64_add_return(mr->npages, &mm->pinned_vm) > limit &&
	    !capable(CAP_IPC_LOCK)) {
		atomic64_sub(mr->npages, &mm->pinned_vm);
		return -ENOMEM;
	}
	mmgrab(mm);
	mr->pin_mm = mm;
	return 0;
}

/* Drops the pins and their charge, once: revocation or deregistration. */
static void odprnic_revocable_unpin(struct odprnic_mr *mr)
{
	struct sg_append_table pins;
	struct mm_struct *mm;

	mutex_lock(&mr->revoke_lock);
	pins = mr->pins;
	memset(&mr->pins, 0, sizeof(mr->pins));
	mm = mr->pin_mm;
	mr->pin_mm = NULL;
	mutex_unlock(&mr->revoke_lock);
	if (pins.sgt.sgl)
		odprnic_revocable_release(mr, &pins, true,
					  odprnic_revocable_writable(mr));
	if (mm) {
		atomic64_sub(mr->npages, &mm->pinned_vm);
		mmdrop(mm);
	}
}

/*
 * The translation table: one entry per 4 KiB page, from the DMA segments.
 * An IOMMU maps whole pages, so every segment starts and ends on a page
 * boundary; one that did not could not be described to the device.
 */
static int odprnic_revocable_write_table(struct odprnic_mr *mr)
{
	struct odprnic_table_writer tw;
	struct scatterlist *sg;
	unsigned long n = 0;
	unsigned int i;
	int err;

	err = odprnic_tw_begin(&tw, mr);
	if (err)
		return err;
	for_each_sgtable_dma_sg(&mr->pins.sgt, sg, i) {
		dma_addr_t dma = sg_dma_address(sg);
		unsigned int len = sg_dma_len(sg);

		if ((dma | len) & ~PAGE_MASK) {
			err = -EIO;
			break;
		}
		for (; len && !err; len -= PAGE_SIZE, dma += PAGE_SIZE, n++)
			err = odprnic_tw_add(&tw, dma);
		if (err)
			break;
	}
	if (!err && n != mr->npages)
		err = -EIO;
	return odprnic_tw_end(&tw, err);
}

static void odprnic_unpin_work(struct work_struct *work)
{
	struct odprnic_mr *mr = container_of(work, struct odprnic_mr,
					     unpin_work);

	odprnic_revocable_unpin(mr);
	odprnic_mr_put(mr);
}

/*
 * Any invalidation of a revocable MR revokes it: the doorbell makes the
 * device fence the key ("Invalidation doorbell", step 3), and once it
 * acknowledged, the DMA mapping and the pins may go. A work item releases
 * them, not this: writeback and migration call notifiers with folios
 * locked, and unpin_user_page_range_dirty_lock() would take those locks
 * again.
 */
static bool odprnic_revocable_invalidate(struct mmu_interval_notifier *mni,
					 const struct mmu_notifier_range *range,
					 unsigned long cur_seq)
{
	struct odprnic_mr *mr = container_of(mni, struct odprnic_mr, notifier);
	struct odprnic_dev *dev = mr->dev;
	int err;

	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&mr->revoke_lock);
	mmu_interval_set_seq(mni, cur_seq);
	if (!test_bit(ODPRNIC_MRF_LIVE, &mr->flags) ||
	    test_and_set_bit(ODPRNIC_MRF_REVOKED, &mr->flags))
		goto out;
	err = odprnic_invalidate(dev, mr->key, mr->iova, mr->length);
	if (err == -ETIMEDOUT) {
		set_bit(ODPRNIC_MRF_DEAD, &mr->flags);
		odprnic_fence(dev, "a revocation was not acknowledged");
	}
	atomic64_inc(&mr->invalidations);
	atomic64_inc(&dev->stats.revocations);
	trace_odprnic_revoke(mr->key, range->event, range->start, range->end);
	ibdev_info_ratelimited(mr->ibmr.device,
			       "MR key %#x revoked (event %d, range %#lx-%#lx)\n",
			       mr->key, range->event, range->start,
			       range->end);
	/* the work item holds a reference until the pins are gone */
	refcount_inc(&mr->refs);
	queue_work(dev->wq, &mr->unpin_work);
out:
	mutex_unlock(&mr->revoke_lock);
	return true;
}

static const struct mmu_interval_notifier_ops odprnic_revocable_mn_ops = {
	.invalidate = odprnic_revocable_invalidate,
};

/*
 * The notifier is in place before the first pin, so any invalidation after
 * mmu_interval_read_begin() shows in mmu_interval_read_retry(): the pins
 * may then not be the pages the process maps, and they are taken again, a
 * bounded number of times. The table is written with revoke_lock held
 * after the check, so the device never holds a translation the notifier
 * has not covered: an invalidation from then on waits for the lock, finds
 * the key LIVE and revokes it.
 */
static int odprnic_revocable_reg(struct odprnic_mr *mr)
{
	struct odprnic_dev *dev = mr->dev;
	unsigned long first = mr->start & PAGE_MASK;
	unsigned int tries = 0;
	unsigned long seq;
	int err, ret;

	if (!(dev->caps & ODPRNIC_CAP_REVOCABLE))
		return -EOPNOTSUPP;
	mr->npages = (PAGE_ALIGN(mr->start + mr->length) - first) >>
		     PAGE_SHIFT;
	err = mmu_interval_notifier_insert(&mr->notifier, current->mm, first,
					   mr->npages << PAGE_SHIFT,
					   &odprnic_revocable_mn_ops);
	if (err)
		return err;
	mr->notifier_live = true;
	err = odprnic_revocable_charge(mr);
	if (err)
		goto err_remove;
	err = odprnic_cmd_create_mr(dev, to_opd(mr->ibmr.pd)->pdn,
				    odprnic_access_to_hw(mr->access),
				    ODPRNIC_MR_REVOCABLE, mr->iova,
				    mr->length, &mr->key);
	if (err)
		goto err_remove;

	for (;;) {
		seq = mmu_interval_read_begin(&mr->notifier);
		err = odprnic_revocable_pin(mr);
		if (err)
			goto err_destroy;
		mutex_lock(&mr->revoke_lock);
		if (!mmu_interval_read_retry(&mr->notifier, seq))
			break;
		mutex_unlock(&mr->revoke_lock);
		/* nothing reached the device: no DMA, nothing dirty */
		odprnic_revocable_release(mr, &mr->pins, true, false);
		if (++tries == ODPRNIC_REVOCABLE_PIN_TRIES ||
		    fatal_signal_pending(current)) {
			err = -EAGAIN;
			goto err_destroy;
		}
		ibdev_dbg(mr->ibmr.device,
			  "MR key %#x: registration raced an invalidation, pinning again (%u)\n",
			  mr->key, tries);
	}
	err = odprnic_revocable_write_table(mr);
	if (!err)
		set_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	mutex_unlock(&mr->revoke_lock);
	if (err)
		goto err_destroy;
	return 0;

err_destroy:
	/* as in dereg: unmap once the device let go of the key, or is fenced */
	ret = odprnic_cmd_destroy_mr(dev, mr->key);
	if (ret == -ETIMEDOUT || ret == -EIO)
		odprnic_fence(dev, "DESTROY_MR of a failed registration did not complete");
err_remove:
	mmu_interval_notifier_remove(&mr->notifier);
	mr->notifier_live = false;
	odprnic_revocable_unpin(mr);
	return err;
}

static void odprnic_revocable_dereg(struct odprnic_mr *mr)
{
	if (mr->notifier_live)
		mmu_interval_notifier_remove(&mr->notifier);
	mr->notifier_live = false;
	flush_work(&mr->unpin_work);
	odprnic_revocable_unpin(mr);
}

int odprnic_mr_revoked_event(struct odprnic_dev *dev, u32 key)
{
	dev_dbg(&dev->pdev->dev, "device revoked MR key %#x\n", key);
	return 0;
}

/* ---- restrack: rdma res show mr / rdma stat show mr ---------------- */

int odprnic_fill_res_mr_entry(struct sk_buff *msg, struct ib_mr *ibmr)
{
	struct odprnic_mr *mr = to_omr(ibmr);
	struct nlattr *table;

	table = nla_nest_start(msg, RDMA_NLDEV_ATTR_DRIVER);
	if (!table)
		return -EMSGSIZE;
	if (rdma_nl_put_driver_u32(msg, "mode", mr->mode) ||
	    rdma_nl_put_driver_u32(msg, "revoked",
				   test_bit(ODPRNIC_MRF_REVOKED, &mr->flags)) ||
	    rdma_nl_put_driver_u32(msg, "dead",
				   test_bit(ODPRNIC_MRF_DEAD, &mr->flags)) ||
	    (mr->mode == ODPRNIC_MR_IMPLICIT &&
	     rdma_nl_put_driver_u32(msg, "children",
				    atomic_read(&mr->imr.nchildren)))) {
		nla_nest_cancel(msg, table);
		return -EMSGSIZE;
	}
	nla_nest_end(msg, table);
	return 0;
}

int odprnic_fill_stat_mr_entry(struct sk_buff *msg, struct ib_mr *ibmr)
{
	struct odprnic_mr *mr = to_omr(ibmr);
	struct nlattr *table;

	table = nla_nest_start(msg, RDMA_NLDEV_ATTR_STAT_HWCOUNTERS);
	if (!table)
		return -EMSGSIZE;
	if (rdma_nl_stat_hwcounter_entry(msg, "page_faults",
					 atomic64_read(&mr->faults)) ||
	    rdma_nl_stat_hwcounter_entry(msg, "page_fault_errors",
					 atomic64_read(&mr->fault_errors)) ||
	    rdma_nl_stat_hwcounter_entry(msg, "page_invalidations",
					 atomic64_read(&mr->invalidations)) ||
	    rdma_nl_stat_hwcounter_entry(msg, "page_prefetch",
					 atomic64_read(&mr->prefetches))) {
		nla_nest_cancel(msg, table);
		return -EMSGSIZE;
	}
	nla_nest_end(msg, table);
	return 0;
}

/* ---- registration -------------------------------------------------- */

static int odprnic_choose_mode(struct odprnic_dev *dev, int access,
			       struct ib_udata *udata, u8 *mode)
{
	struct odprnic_reg_mr_req req = {};
	int err;

	if (udata && udata->inlen) {
		err = ib_copy_from_udata(&req, udata,
					 min(udata->inlen, sizeof(req)));
		if (err)
			return err;
		if (req.reserved ||
		    req.flags & ~(ODPRNIC_REG_MR_REVOCABLE |
				  ODPRNIC_REG_MR_PINNED))
			return -EINVAL;
	}
	if (access & IB_ACCESS_ON_DEMAND) {
		if (req.flags)
			return -EINVAL;
		*mode = ODPRNIC_MR_ODP;
		return 0;
	}
	switch (req.flags) {
	case ODPRNIC_REG_MR_PINNED:
		*mode = ODPRNIC_MR_PINNED;
		return 0;
	case ODPRNIC_REG_MR_REVOCABLE:
		*mode = ODPRNIC_MR_REVOCABLE;
		return 0;
	case 0:
		*mode = sysfs_streq(odprnic_default_mr_mode, "revocable") ?
			ODPRNIC_MR_REVOCABLE : ODPRNIC_MR_PINNED;
		return 0;
	default:
		return -EINVAL;
	}
}

struct ib_mr *odprnic_reg_user_mr(struct ib_pd *pd, u64 start, u64 len,
				  u64 iova, int access, struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(pd->device);
	struct odprnic_reg_mr_resp resp = {};
	struct odprnic_mr *mr;
	u8 mode;
	int err;

	err = odprnic_choose_mode(dev, access, udata, &mode);
	if (err)
		return ERR_PTR(err);
	/* rdma-core's ibv_reg_mr(pd, NULL, SIZE_MAX, ON_DEMAND): implicit */
	if (mode == ODPRNIC_MR_ODP && start == 0 && len == U64_MAX) {
		if (iova)
			return ERR_PTR(-EINVAL);
		mode = ODPRNIC_MR_IMPLICIT;
	} else if (!len || len > ((u64)dev->max_mr_pages << ODPRNIC_PAGE_SHIFT) -
				 (iova & ~PAGE_MASK)) {
		return ERR_PTR(-EINVAL);
	}
	/* MR table entries follow the pages of the IOVA range */
	if (offset_in_page(start) != offset_in_page(iova))
		return ERR_PTR(-EINVAL);

	mr = kzalloc(sizeof(*mr), GFP_KERNEL);
	if (!mr)
		return ERR_PTR(-ENOMEM);
	mr->dev = dev;
	mr->mode = mode;
	mr->start = start;
	mr->iova = iova;
	mr->length = len;
	mr->access = access;
	mr->ibmr.pd = pd;
	mr->ibmr.device = pd->device;
	mutex_init(&mr->revoke_lock);
	INIT_WORK(&mr->unpin_work, odprnic_unpin_work);
	refcount_set(&mr->refs, 1);
	init_completion(&mr->released);

	switch (mode) {
	case ODPRNIC_MR_PINNED:
		err = odprnic_pinned_reg(mr);
		break;
	case ODPRNIC_MR_REVOCABLE:
		err = odprnic_revocable_reg(mr);
		break;
	default:
		err = odprnic_odp_reg(dev, mr);
		break;
	}
	if (err)
		goto err_free;

	err = xa_insert_irq(&dev->mrs, mr->key >> 8, mr, GFP_KERNEL);
	if (err)
		goto err_dereg;
	mr->ibmr.lkey = mr->key;
	mr->ibmr.rkey = mr->key;

	resp.mode = mode;
	if (udata && udata->outlen) {
		err = ib_copy_to_udata(udata, &resp,
				       min(udata->outlen, sizeof(resp)));
		if (err)
			goto err_erase;
	}
	ibdev_dbg(mr->ibmr.device, "MR key %#x mode %u va %#llx len %#llx\n",
		  mr->key, mode, start, len);
	return &mr->ibmr;

err_erase:
	xa_erase_irq(&dev->mrs, mr->key >> 8);
err_dereg:
	odprnic_dereg_mr(&mr->ibmr, NULL);
	return ERR_PTR(err);
err_free:
	kfree(mr);
	return ERR_PTR(err);
}

int odprnic_dereg_mr(struct ib_mr *ibmr, struct ib_udata *udata)
{
	struct odprnic_mr *mr = to_omr(ibmr);
	struct odprnic_dev *dev = mr->dev;
	int err;

	xa_cmpxchg_irq(&dev->mrs, mr->key >> 8, mr, NULL, 0);

	/*
	 * "DESTROY_MR": the device stops and drains accesses through the key
	 * before it completes, so after it the pages may go. If it cannot
	 * say so in time, nothing but the fence makes releasing them safe.
	 */
	if (odprnic_mr_is_odp(mr)) {
		err = odprnic_odp_stop(mr);
	} else {
		bool live;

		/* the notifier takes references only while LIVE is set */
		mutex_lock(&mr->revoke_lock);
		live = test_and_clear_bit(ODPRNIC_MRF_LIVE, &mr->flags);
		mutex_unlock(&mr->revoke_lock);
		err = live ? odprnic_cmd_destroy_mr(dev, mr->key) : 0;
	}
	if (err == -ETIMEDOUT || err == -EIO)
		odprnic_fence(dev, "DESTROY_MR did not complete");

	/* page-fault events and unpin work still using the MR */
	odprnic_mr_put(mr);
	wait_for_completion(&mr->released);

	switch (mr->mode) {
	case ODPRNIC_MR_PINNED:
		odprnic_pinned_dereg(mr);
		break;
	case ODPRNIC_MR_REVOCABLE:
		odprnic_revocable_dereg(mr);
		break;
	default:
		odprnic_odp_dereg(mr);
		break;
	}
	kfree(mr);
	return 0;
}
