// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: on-demand paging ("Page faults", "Invalidation doorbell").
 *
 * An ODP MR starts with an empty device table. The device parks an access
 * that needs a missing page and posts EVENT_PAGE_FAULT; the handler here
 * faults the range in with ib_umem_odp_map_dma_and_lock(), writes the
 * translations with MAP_PAGES under umem_mutex and answers RESUME. The
 * mmu interval notifier takes pages back: doorbell, wait for the
 * acknowledgment (bounded by inv_timeout_ms), then unmap. Implicit ODP
 * (one MR over the whole address space) lives in odp_rnic_imr.c and
 * joins here in odprnic_odp_map() and the registration.
 */
#include <linux/sched/mm.h>

#include "odp_rnic.h"
#include "odp_rnic_trace.h"

#define ODPRNIC_PREFETCH_TRIES	16

/*
 * odprnic_odp_zap - the heart of an ODP notifier, under @odp's umem_mutex:
 * take [@start, @end) (user VAs inside @odp) of @mr away from the device
 * and wait, bounded, until it confirms; then unmap the pages. @mr is NULL
 * while the umem is being set up.
 */
void odprnic_odp_zap(struct odprnic_mr *mr, struct ib_umem_odp *odp,
		     unsigned long start, unsigned long end)
{
	int err;

	lockdep_assert_held(&odp->umem_mutex);
	/* nothing mapped, nothing the device can reach */
	if (!mr || !odp->npages || !test_bit(ODPRNIC_MRF_LIVE, &mr->flags))
		goto unmap;

	atomic64_inc(&mr->invalidations);
	err = odprnic_invalidate(mr->dev, mr->key,
				 mr->iova + (start - mr->start), end - start);
	if (err == -ETIMEDOUT) {
		/*
		 * The device did not confirm it stopped touching the pages,
		 * and the kernel is about to reuse them: fence all DMA.
		 */
		set_bit(ODPRNIC_MRF_DEAD, &mr->flags);
		odprnic_fence(mr->dev, "an ODP invalidation was not acknowledged");
	}
unmap:
	ib_umem_odp_unmap_dma_pages(odp, start, end);
}

static bool odprnic_odp_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	struct ib_umem_odp *odp = container_of(mni, struct ib_umem_odp,
					       notifier);

	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&odp->umem_mutex);
	mmu_interval_set_seq(mni, cur_seq);
	odprnic_odp_zap(odp->private, odp,
			max(ib_umem_start(odp), range->start),
			min(ib_umem_end(odp), range->end));
	mutex_unlock(&odp->umem_mutex);
	return true;
}

static const struct mmu_interval_notifier_ops odprnic_odp_mn_ops = {
	.invalidate = odprnic_odp_invalidate,
};

int odprnic_odp_reg(struct odprnic_dev *dev, struct odprnic_mr *mr)
{
	bool implicit = mr->mode == ODPRNIC_MR_IMPLICIT;
	struct ib_umem_odp *odp;
	int err;

	if (!(dev->caps & ODPRNIC_CAP_ODP))
		return -EOPNOTSUPP;
	if (implicit)
		odp = odprnic_imr_alloc(dev, mr);
	else
		odp = ib_umem_odp_get(mr->ibmr.device, mr->start, mr->length,
				      mr->access, &odprnic_odp_mn_ops);
	if (IS_ERR(odp))
		return PTR_ERR(odp);
	mr->odp = odp;
	mr->umem = &odp->umem;

	/* "CREATE_MR": iova and length 0 for MR_IMPLICIT */
	err = odprnic_cmd_create_mr(dev, to_opd(mr->ibmr.pd)->pdn,
				    odprnic_access_to_hw(mr->access),
				    mr->mode, implicit ? 0 : mr->iova,
				    implicit ? 0 : mr->length, &mr->key);
	if (err) {
		ib_umem_odp_release(odp);
		mr->odp = NULL;
		mr->umem = NULL;
		return err;
	}
	mutex_lock(&odp->umem_mutex);
	odp->private = mr;
	set_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	mutex_unlock(&odp->umem_mutex);
	return 0;
}

/* Stop the device using the MR: DESTROY_MR fails parked accesses too. */
int odprnic_odp_stop(struct odprnic_mr *mr)
{
	struct ib_umem_odp *odp = mr->odp;
	bool live;

	mutex_lock(&odp->umem_mutex);
	live = test_and_clear_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	mutex_unlock(&odp->umem_mutex);
	return live ? odprnic_cmd_destroy_mr(mr->dev, mr->key) : 0;
}

void odprnic_odp_dereg(struct odprnic_mr *mr)
{
	if (mr->mode == ODPRNIC_MR_IMPLICIT)
		odprnic_imr_free_children(mr);
	ib_umem_odp_release(mr->odp);
	mr->odp = NULL;
	mr->umem = NULL;
}

/*
 * The device's entries for pages @idx.. @idx + @n - 1 of @odp, under
 * umem_mutex after ib_umem_odp_map_dma_and_lock(): not present where the
 * page is not.
 */
void odprnic_odp_fill_ptes(struct ib_umem_odp *odp, size_t idx, u32 n,
			   __le64 *ptes)
{
	u32 i;

	for (i = 0; i < n; i++) {
		dma_addr_t addr;
		bool w;
		u64 pte = 0;

		if (odprnic_odp_page_addr(odp, idx + i, &addr, &w))
			pte = (addr & PAGE_MASK) | ODPRNIC_PTE_READ |
			      (w ? ODPRNIC_PTE_WRITE : 0);
		ptes[i] = cpu_to_le64(pte);
	}
}

/*
 * Map [@iova, @iova + @len) of @mr into the device: fault the pages in,
 * then MAP_PAGES under umem_mutex so that an invalidation cannot slip in
 * between (it waits for the mutex and then zaps what we wrote).
 */
static int odprnic_odp_map(struct odprnic_mr *mr, struct odprnic_cmd_slot *s,
			   u64 iova, u64 len, bool write, bool fault,
			   u32 map_flags)
{
	struct ib_umem_odp *odp = mr->odp;
	u64 mr_first = mr->iova & PAGE_MASK;
	u64 mr_end, pos, end;
	int err = 0;

	if (mr->mode == ODPRNIC_MR_IMPLICIT)
		return odprnic_imr_map(mr, s, iova, len, write, fault,
				       map_flags);
	/*
	 * The device asks for whole pages ("Page faults"), which reach past
	 * the bytes of an MR that does not start and end on page boundaries
	 * (a 1 KiB MR faults 4 KiB): bound the range by the pages the MR
	 * covers, as the umem does, not by its bytes.
	 */
	if (check_add_overflow(mr->iova, mr->length, &mr_end) ||
	    check_add_overflow(iova, len, &end) ||
	    iova < mr_first || end > PAGE_ALIGN(mr_end))
		return -EFAULT;
	pos = iova & PAGE_MASK;
	end = PAGE_ALIGN(end);

	while (pos < end) {
		u32 n = min_t(u64, (end - pos) >> PAGE_SHIFT, ODPRNIC_MAP_MAX);
		u64 va = ib_umem_start(odp) + (pos - mr_first);
		u64 bcnt = min_t(u64, (u64)n << PAGE_SHIFT,
				 ib_umem_end(odp) - va);
		size_t idx = (va - ib_umem_start(odp)) >> PAGE_SHIFT;
		int ret;

		ret = ib_umem_odp_map_dma_and_lock(odp, va, bcnt,
						   odprnic_odp_access_mask(write),
						   fault);
		if (ret < 0)
			return ret;
		/* umem_mutex is held */
		if (!test_bit(ODPRNIC_MRF_LIVE, &mr->flags) ||
		    test_bit(ODPRNIC_MRF_DEAD, &mr->flags)) {
			mutex_unlock(&odp->umem_mutex);
			return -EFAULT;
		}
		odprnic_odp_fill_ptes(odp, idx, n, s->data);
		err = odprnic_cmd_map_pages(mr->dev, s, mr->key, map_flags,
					    pos, n);
		mutex_unlock(&odp->umem_mutex);
		if (!err && (map_flags & ODPRNIC_MAP_PREFETCH))
			atomic64_add(n, &mr->prefetches);
		if (err)
			return err;
		pos += (u64)n << PAGE_SHIFT;
	}
	return 0;
}

/*
 * EVENT_PAGE_FAULT: resolve and RESUME. A race with an invalidation
 * (-EAGAIN, -EBUSY from the core's retry bound) resumes with success so
 * the device retries and faults again; a bad address (-EFAULT, -EPERM, an
 * unknown or dead key) fails the access.
 */
void odprnic_odp_page_fault(struct odprnic_dev *dev,
			    const struct odprnic_event *ev)
{
	const struct odprnic_ev_page_fault *pf = (const void *)ev->data;
	u32 token = le32_to_cpu(pf->token);
	u32 key = le32_to_cpu(pf->key);
	u64 iova = le64_to_cpu(pf->iova);
	u64 len = le64_to_cpu(pf->length);
	u32 qpn = le32_to_cpu(pf->qpn);
	bool write = le32_to_cpu(pf->flags) & ODPRNIC_FAULT_WRITE;
	struct odprnic_cmd_slot *s;
	struct odprnic_mr *mr;
	u32 status = 1;
	int err = -ENOENT;

	atomic64_inc(&dev->stats.page_faults);
	trace_odprnic_page_fault(token, key, qpn, iova, len, write);
	odprnic_qp_page_fault(dev, qpn);
	s = odprnic_cmd_get(dev);
	if (IS_ERR(s)) {
		dev_err_ratelimited(&dev->pdev->dev,
				    "page fault token %u (QP %u): no command slot (%ld)\n",
				    token, qpn, PTR_ERR(s));
		return;
	}
	mr = odprnic_mr_get(dev, key);
	if (mr && odprnic_mr_is_odp(mr)) {
		atomic64_inc(&mr->faults);
		err = odprnic_odp_map(mr, s, iova, len, write, true, 0);
		if (!err || err == -EAGAIN || err == -EBUSY)
			status = 0;
		else
			atomic64_inc(&mr->fault_errors);
	}
	if (mr)
		odprnic_mr_put(mr);
	if (status)
		atomic64_inc(&dev->stats.fault_errors);
	trace_odprnic_resume(token, key, status, err);
	err = odprnic_cmd_resume(dev, s, token, status);
	if (err)
		dev_warn_ratelimited(&dev->pdev->dev,
				     "RESUME token %u (QP %u) failed: %d\n", token,
				     qpn, err);
	odprnic_cmd_put(dev, s);
}

/*
 * advise_mr: prefetch ODP ranges into the device (MAP_PAGES with
 * ODPRNIC_MAP_PREFETCH) so that the first access does not fault.
 * PREFETCH_NO_FAULT maps only what is present in the page tables. The
 * work is always done before returning, which also satisfies
 * IB_UVERBS_ADVISE_MR_FLAG_FLUSH.
 */
int odprnic_advise_mr(struct ib_pd *pd, enum ib_uverbs_advise_mr_advice advice,
		      u32 flags, struct ib_sge *sg_list, u32 num_sge,
		      struct uverbs_attr_bundle *attrs)
{
	struct odprnic_dev *dev = to_odev(pd->device);
	bool write = advice == IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE;
	bool fault = advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT;
	struct odprnic_cmd_slot *s;
	int err = 0;
	u32 i;

	if (!(dev->caps & ODPRNIC_CAP_PREFETCH))
		return -EOPNOTSUPP;
	if (advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT)
		return -EOPNOTSUPP;
	s = odprnic_cmd_get(dev);
	if (IS_ERR(s))
		return PTR_ERR(s);
	for (i = 0; i < num_sge && !err; i++) {
		struct odprnic_mr *mr = odprnic_mr_get(dev, sg_list[i].lkey);

		if (!mr || !odprnic_mr_is_odp(mr) ||
		    mr->ibmr.pd != pd) {
			err = -EINVAL;
		} else {
			int tries = ODPRNIC_PREFETCH_TRIES;

			/* a racing invalidation: try again, a bounded number */
			do {
				err = odprnic_odp_map(mr, s, sg_list[i].addr,
						      sg_list[i].length, write,
						      fault,
						      ODPRNIC_MAP_PREFETCH);
			} while (err == -EAGAIN && --tries);
		}
		if (mr)
			odprnic_mr_put(mr);
	}
	odprnic_cmd_put(dev, s);
	return err;
}
