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
 * Widen user VAs [*@start, *@end) to whole entries of @odp's page list
 * (1 << page_shift bytes, a huge page with IB_ACCESS_HUGETLB), within the
 * umem. ib_umem_odp_unmap_dma_pages() steps by an entry from where the
 * range starts, so an unaligned start could skip an entry it overlaps;
 * and what the core unmaps, the device must have given up: whole entries.
 * False when nothing is left.
 */
static bool odprnic_odp_align_range(struct ib_umem_odp *odp,
				    unsigned long *start, unsigned long *end)
{
	unsigned long size = BIT(odp->page_shift);

	*start = max_t(unsigned long, ALIGN_DOWN(*start, size),
		       ib_umem_start(odp));
	*end = min_t(unsigned long, ALIGN(*end, size), ib_umem_end(odp));
	return *start < *end;
}

/*
 * The device's IOVA range for user VAs [@start, @end) of @mr: the pages of
 * the MR in it (table entries follow the pages of the IOVA range, and IOVA
 * and VA share their offset in the page). False when it holds none.
 */
static bool odprnic_odp_dev_range(struct odprnic_mr *mr, u64 start, u64 end,
				  u64 *iova, u64 *len)
{
	u64 first = mr->start & PAGE_MASK;

	if (mr->mode != ODPRNIC_MR_IMPLICIT) {
		start = max(start, first);
		end = min(end, PAGE_ALIGN(mr->start + mr->length));
	}
	if (start >= end)
		return false;
	*iova = (mr->iova & PAGE_MASK) + (start - first);
	*len = end - start;
	return true;
}

/*
 * Whether the device may hold translations of @mr: from CREATE_MR until
 * DESTROY_MR completed (ODPRNIC_MRF_LIVE), under the umem_mutex of the
 * umem being invalidated. While DESTROY_MR runs the key is still live in
 * the device ("DESTROY_MR" in docs/hardware.md): an invalidation then must
 * still ring the doorbell and wait.
 */
static bool odprnic_odp_device_holds(struct odprnic_mr *mr,
				     struct ib_umem_odp *odp)
{
	return mr && odp->npages && test_bit(ODPRNIC_MRF_LIVE, &mr->flags);
}

/*
 * odprnic_odp_zap - the heart of an ODP notifier, under @odp's umem_mutex:
 * take [@start, @end) (user VAs inside @odp, whole page-list entries) of
 * @mr away from the device and wait, bounded, until it confirms; then
 * unmap the pages. @mr is NULL while the umem is being set up.
 */
static void odprnic_odp_zap(struct odprnic_mr *mr, struct ib_umem_odp *odp,
			    unsigned long start, unsigned long end)
{
	u64 iova, len;
	int err;

	lockdep_assert_held(&odp->umem_mutex);
	/* nothing mapped, nothing the device can reach */
	if (!odprnic_odp_device_holds(mr, odp) ||
	    !odprnic_odp_dev_range(mr, start, end, &iova, &len))
		goto unmap;

	atomic64_inc(&mr->invalidations);
	err = odprnic_invalidate(mr->dev, mr->key, iova, len);
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

/*
 * Two passes (kernels that have them, and two_pass=1): the first pass
 * rings the doorbell for every MR a range hits, the second waits for the
 * acknowledgments and unmaps. An munmap over many ODP MRs, or over many
 * children of an implicit MR, then waits for the device about once rather
 * than once per MR: acknowledgments are cumulative ("Invalidation
 * doorbell"), so the waits after the first find theirs already there.
 * umem_mutex is not held between the passes; faults cannot slip in, since
 * the first pass moved the notifier's sequence (a fault that read it
 * before retries) and the invalidation stays open until the second pass
 * returned (a fault that starts now waits in mmu_interval_read_begin()).
 */
static struct odprnic_zap *odprnic_odp_zap_alloc(struct odprnic_mr *mr,
						 struct ib_umem_odp *odp,
						 bool second_pass)
{
	/* 7.3: no allocation that may reclaim under umem_mutex */
	if (!second_pass || !READ_ONCE(odprnic_two_pass))
		return NULL;
	return kzalloc(sizeof(struct odprnic_zap), GFP_NOWAIT);
}

/*
 * odprnic_odp_zap_start - the first pass, under @odp's umem_mutex: ring
 * the doorbell for [@start, @end) of @mr and return what the second pass
 * needs, or do all of odprnic_odp_zap() and return NULL (no second pass
 * (@finish NULL), nothing to wait for, two passes off, or no memory).
 */
struct odprnic_zap *odprnic_odp_zap_start(struct odprnic_mr *mr,
					  struct ib_umem_odp *odp,
					  unsigned long start,
					  unsigned long end,
					  struct odprnic_mni_finish **finish)
{
	struct odprnic_zap *z;
	u64 iova, len;

	lockdep_assert_held(&odp->umem_mutex);
	if (!odprnic_odp_align_range(odp, &start, &end))
		return NULL;
	z = NULL;
	if (odprnic_odp_device_holds(mr, odp) &&
	    odprnic_odp_dev_range(mr, start, end, &iova, &len))
		z = odprnic_odp_zap_alloc(mr, odp, !!finish);
	if (!z) {
		odprnic_odp_zap(mr, odp, start, end);
		return NULL;
	}
	atomic64_inc(&mr->invalidations);
	z->mr = mr;
	z->odp = odp;
	z->start = start;
	z->end = end;
	z->iova = iova;
	z->len = len;
	z->t0 = ktime_get();
	z->base.notifier = &odp->notifier;
	if (odprnic_inv_submit(mr->dev, mr->key, z->iova, z->len, &z->seq)) {
		/* gone or fenced: the device reaches nothing any more */
		ib_umem_odp_unmap_dma_pages(odp, start, end);
		kfree(z);
		return NULL;
	}
	return z;
}

/*
 * odprnic_odp_zap_wait - the second pass's wait, with no lock held: as
 * odprnic_odp_zap(), a missing acknowledgment kills the MR and fences the
 * device. The caller then unmaps under umem_mutex and frees @z.
 */
void odprnic_odp_zap_wait(struct odprnic_zap *z)
{
	struct odprnic_mr *mr = z->mr;

	if (odprnic_inv_wait(mr->dev, z->seq, mr->key, z->iova, z->len,
			     z->t0) == -ETIMEDOUT) {
		set_bit(ODPRNIC_MRF_DEAD, &mr->flags);
		odprnic_fence(mr->dev, "an ODP invalidation was not acknowledged");
	}
}

/*
 * The notifier: in one pass when @finish is NULL (or two passes are off),
 * else the first of two, leaving *@finish for odprnic_odp_invalidate_finish().
 */
static bool __odprnic_odp_invalidate(struct mmu_interval_notifier *mni,
				     const struct mmu_notifier_range *range,
				     unsigned long cur_seq,
				     struct odprnic_mni_finish **finish)
{
	struct ib_umem_odp *odp = container_of(mni, struct ib_umem_odp,
					       notifier);
	struct odprnic_zap *z;

	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&odp->umem_mutex);
	mmu_interval_set_seq(mni, cur_seq);
	z = odprnic_odp_zap_start(odp->private, odp,
				  max(ib_umem_start(odp), range->start),
				  min(ib_umem_end(odp), range->end), finish);
	mutex_unlock(&odp->umem_mutex);
	if (z)
		*finish = &z->base;
	return true;
}

static bool odprnic_odp_invalidate(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	return __odprnic_odp_invalidate(mni, range, cur_seq, NULL);
}

static bool __maybe_unused
odprnic_odp_invalidate_start(struct mmu_interval_notifier *mni,
			     const struct mmu_notifier_range *range,
			     unsigned long cur_seq,
			     struct odprnic_mni_finish **finish)
{
	return __odprnic_odp_invalidate(mni, range, cur_seq, finish);
}

static void __maybe_unused
odprnic_odp_invalidate_finish(struct odprnic_mni_finish *f)
{
	struct odprnic_zap *z = container_of(f, struct odprnic_zap, base);

	odprnic_odp_zap_wait(z);
	mutex_lock(&z->odp->umem_mutex);
	ib_umem_odp_unmap_dma_pages(z->odp, z->start, z->end);
	mutex_unlock(&z->odp->umem_mutex);
	kfree(z);
}

static const struct mmu_interval_notifier_ops odprnic_odp_mn_ops =
	ODPRNIC_MNI_OPS(odprnic_odp_invalidate, odprnic_odp_invalidate_start,
			odprnic_odp_invalidate_finish);

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
				      odprnic_odp_umem_access(mr->access),
				      &odprnic_odp_mn_ops);
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

/*
 * Stop the device using the MR: DESTROY_MR fails parked accesses too.
 * Until it completed the key is live in the device, so the notifiers go
 * on invalidating through it (LIVE) while faults and prefetches map
 * nothing more (STOPPING). LIVE goes once the device dropped the key, or
 * a fence made it harmless; implicit children test it under their own
 * umem_mutex, which is enough, as the device then holds nothing of theirs.
 */
int odprnic_odp_stop(struct odprnic_mr *mr)
{
	struct ib_umem_odp *odp = mr->odp;
	int err = 0;

	mutex_lock(&odp->umem_mutex);
	set_bit(ODPRNIC_MRF_STOPPING, &mr->flags);
	mutex_unlock(&odp->umem_mutex);
	if (test_bit(ODPRNIC_MRF_LIVE, &mr->flags))
		err = odprnic_cmd_destroy_mr(mr->dev, mr->key);
	/* gone or reset (no such key): nothing left; else it may still be live */
	if (err && err != -ENODEV && err != -ENOENT)
		odprnic_fence(mr->dev, "DESTROY_MR did not complete");
	mutex_lock(&odp->umem_mutex);
	clear_bit(ODPRNIC_MRF_LIVE, &mr->flags);
	mutex_unlock(&odp->umem_mutex);
	return err;
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
 * The user VAs [*@va, *@va_end) of the pages [@iova, @iova + @len) of @mr
 * touches; false when they reach beyond the pages the MR covers. The
 * device asks for whole pages ("Page faults"), which reach past the bytes
 * of an MR that does not start and end on page boundaries (a 1 KiB MR
 * faults 4 KiB): the bound is the pages the MR covers, as the umem's.
 */
static bool odprnic_odp_va_range(struct odprnic_mr *mr, u64 iova, u64 len,
				 u64 *va, u64 *va_end)
{
	u64 mr_first = mr->iova & PAGE_MASK;
	u64 mr_end, end;

	if (check_add_overflow(iova, len, &end))
		return false;
	if (mr->mode == ODPRNIC_MR_IMPLICIT) {
		if (end > TASK_SIZE_MAX)
			return false;
		*va = iova & PAGE_MASK;
		*va_end = PAGE_ALIGN(end);
		return true;
	}
	if (check_add_overflow(mr->iova, mr->length, &mr_end) ||
	    iova < mr_first || end > PAGE_ALIGN(mr_end))
		return false;
	*va = (mr->start & PAGE_MASK) + ((iova & PAGE_MASK) - mr_first);
	*va_end = *va + (PAGE_ALIGN(end) - (iova & PAGE_MASK));
	return true;
}

/*
 * ib_umem_odp_map_dma_and_lock() without faulting: the pages present in
 * the page tables (faulted in before by odprnic_odp_prefault()), each
 * with the access its page table entry gives. Never a downgrade: up to
 * 6.15 the core resyncs an entry that is already mapped to that access,
 * and an entry the device may write came from a writable entry that no
 * invalidation (which would have unmapped and dirtied it) took away.
 */
int odprnic_odp_map_present(struct ib_umem_odp *odp, u64 va, u64 bcnt)
{
	return ib_umem_odp_map_dma_and_lock(odp, va, bcnt,
					    odprnic_odp_access_mask(odp),
					    false);
}

/*
 * Map [@iova, @iova + @len) of @mr into the device: what is present, then
 * MAP_PAGES under umem_mutex so that an invalidation cannot slip in
 * between (it waits for the mutex and then zaps what we wrote). A
 * MAP_PAGES that does not complete in time stays the device's (its slot
 * with it) and recovery is on its way; one that completes late cannot
 * outlive a later invalidation, since the device executes the commands
 * made available before a doorbell before it acknowledges the doorbell
 * ("Invalidation doorbell" in docs/hardware.md).
 */
static int odprnic_odp_map(struct odprnic_mr *mr, struct odprnic_cmd_slot *s,
			   u64 iova, u64 len, u32 map_flags)
{
	struct ib_umem_odp *odp = mr->odp;
	u64 va_first, va_end, pos, end;
	int err = 0;

	if (!odprnic_odp_va_range(mr, iova, len, &va_first, &va_end))
		return -EFAULT;
	if (mr->mode == ODPRNIC_MR_IMPLICIT)
		return odprnic_imr_map(mr, s, va_first, va_end, map_flags);
	pos = iova & PAGE_MASK;
	end = pos + (va_end - va_first);

	while (pos < end) {
		u32 n = min_t(u64, (end - pos) >> PAGE_SHIFT, ODPRNIC_MAP_MAX);
		u64 va = va_first + (pos - (iova & PAGE_MASK));
		u64 bcnt = min_t(u64, (u64)n << PAGE_SHIFT,
				 ib_umem_end(odp) - va);
		size_t idx = (va - ib_umem_start(odp)) >> PAGE_SHIFT;
		int ret;

		ret = odprnic_odp_map_present(odp, va, bcnt);
		if (ret < 0)
			return ret;
		/* umem_mutex is held */
		if (!odprnic_odp_may_map(mr)) {
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
 * Fault [@va, @end) into @mm's page tables, holding no lock, command slot
 * or MR reference: this is where a fault may wait for a page for long (a
 * FUSE daemon, a slow disk), and nothing the device, deregistration or
 * another process needs may wait behind it. fixup_user_fault() may drop
 * mmap_lock while it waits for I/O, so munmap() and exit do not wait
 * either. Write whenever the MR is writable (see odprnic_odp_access_mask()).
 */
static int odprnic_odp_prefault(struct mm_struct *mm, u64 va, u64 end,
				bool write)
{
	unsigned int flags = write ? FAULT_FLAG_WRITE : 0;
	int err = 0;

	if (!mmget_not_zero(mm))
		return -EFAULT;
	mmap_read_lock(mm);
	for (; va < end && !err; va += PAGE_SIZE) {
		bool unlocked = false;

		err = fixup_user_fault(mm, va, flags, &unlocked);
	}
	mmap_read_unlock(mm);
	mmput_async(mm);
	return err;
}

/*
 * Fault the pages [@iova, @iova + @len) of MR @key touches into its
 * process's page tables (odprnic_odp_prefault()), for writing if @write
 * and the MR is writable, holding only the mm: the MR may be
 * deregistered meanwhile.
 */
static int odprnic_odp_prefault_key(struct odprnic_dev *dev, u32 key,
				    u64 iova, u64 len, bool write)
{
	struct odprnic_mr *mr = odprnic_mr_get(dev, key);
	struct mm_struct *mm = NULL;
	bool writable = false;
	u64 va, va_end;
	int err = -ENOENT;

	if (mr && odprnic_mr_is_odp(mr)) {
		err = -EFAULT;
		if (odprnic_odp_va_range(mr, iova, len, &va, &va_end)) {
			mm = mr->odp->umem.owning_mm;
			mmgrab(mm);
			writable = mr->odp->umem.writable;
			err = 0;
		}
	}
	if (mr)
		odprnic_mr_put(mr);
	if (!mm)
		return err;
	err = odprnic_odp_prefault(mm, va, va_end, write && writable);
	mmdrop(mm);
	return err;
}

/*
 * EVENT_PAGE_FAULT, in its own work item: fault the pages in with no
 * resource held (odprnic_odp_prefault()), then, under fault_gate and only
 * if the device was not reset meanwhile (@gen), take a command slot, map
 * what is present under umem_mutex without faulting (MAP_PAGES) and
 * RESUME. A race with an invalidation (a page gone again, -EAGAIN, -EBUSY
 * from the core's retry bound) resumes with success so the device retries
 * and faults again; a bad address (-EFAULT, -EPERM, an unknown or dead
 * key) fails the access.
 */
static void odprnic_odp_page_fault(struct odprnic_dev *dev,
				   const struct odprnic_event *ev, u32 gen)
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
	int err;

	atomic64_inc(&dev->stats.page_faults);
	trace_odprnic_page_fault(token, key, qpn, iova, len, write);
	odprnic_qp_page_fault(dev, qpn);
	err = odprnic_odp_prefault_key(dev, key, iova, len, write);

	down_read(&dev->fault_gate);
	/* reset or removed meanwhile: the parked access went with it */
	if (READ_ONCE(dev->fault_gen) != gen)
		goto out;
	s = odprnic_cmd_get(dev);
	if (IS_ERR(s)) {
		dev_err_ratelimited(&dev->pdev->dev,
				    "page fault token %u (QP %u): no command slot (%ld)\n",
				    token, qpn, PTR_ERR(s));
		goto out;
	}
	mr = odprnic_mr_get(dev, key);
	if (mr && odprnic_mr_is_odp(mr)) {
		atomic64_inc(&mr->faults);
		if (!err)
			err = odprnic_odp_map(mr, s, iova, len, 0);
		if (err && err != -EAGAIN && err != -EBUSY)
			atomic64_inc(&mr->fault_errors);
	} else {
		err = -ENOENT;
	}
	if (mr)
		odprnic_mr_put(mr);
	if (!err || err == -EAGAIN || err == -EBUSY)
		status = 0;
	if (status)
		atomic64_inc(&dev->stats.fault_errors);
	if (READ_ONCE(s->abandoned) || odprnic_dev_gone(dev)) {
		/*
		 * A MAP_PAGES that did not complete keeps the slot the
		 * device's, and the device is fenced or about to be: the
		 * parked access stays parked until a reset drops it.
		 */
		odprnic_cmd_put(dev, s);
		goto out;
	}
	trace_odprnic_resume(token, key, status, err);
	err = odprnic_cmd_resume(dev, s, token, status);
	/* -ENOENT: the device dropped the token (the MR or QP went meanwhile) */
	if (err == -ENOENT)
		dev_dbg(&dev->pdev->dev, "RESUME token %u (QP %u): no such token\n",
			token, qpn);
	else if (err)
		dev_warn_ratelimited(&dev->pdev->dev,
				     "RESUME token %u (QP %u) failed: %d\n", token,
				     qpn, err);
	odprnic_cmd_put(dev, s);
out:
	up_read(&dev->fault_gate);
}

/*
 * Faults and asynchronous prefetches in flight on fault_wq are bounded:
 * beyond ODPRNIC_MAX_FAULT_WORKS a fault is handled on the event queue's
 * work item and a prefetch in its caller, so no flood of events or advice
 * grows the driver's memory without a limit.
 */
#define ODPRNIC_MAX_FAULT_WORKS	1024

static bool odprnic_fault_work_get(struct odprnic_dev *dev)
{
	return atomic_add_unless(&dev->fault_works, 1, ODPRNIC_MAX_FAULT_WORKS);
}

struct odprnic_fault_work {
	struct work_struct work;
	struct odprnic_dev *dev;
	struct odprnic_event ev;
	u32 gen;
};

static void odprnic_fault_work(struct work_struct *work)
{
	struct odprnic_fault_work *fw =
		container_of(work, struct odprnic_fault_work, work);

	odprnic_odp_page_fault(fw->dev, &fw->ev, fw->gen);
	atomic_dec(&fw->dev->fault_works);
	kfree(fw);
	/* remove()'s destroy_workqueue() waits for this function to return */
	module_put(THIS_MODULE);
}

/*
 * An EVENT_PAGE_FAULT from the event queue: handled on fault_wq, one work
 * item per fault, so that a fault waiting for a page holds up no other
 * event. While one runs the module is in use (rmmod says so at once
 * instead of waiting in remove() for a page that may never come).
 */
void odprnic_odp_fault_event(struct odprnic_dev *dev,
			     const struct odprnic_event *ev)
{
	u32 gen = READ_ONCE(dev->fault_gen);
	struct odprnic_fault_work *fw = NULL;

	if (odprnic_fault_work_get(dev)) {
		fw = kmalloc(sizeof(*fw), GFP_KERNEL);
		if (!fw)
			atomic_dec(&dev->fault_works);
	}
	if (!fw) {
		/* too many, or no memory: here, holding the event queue up */
		odprnic_odp_page_fault(dev, ev, gen);
		return;
	}
	INIT_WORK(&fw->work, odprnic_fault_work);
	fw->dev = dev;
	fw->ev = *ev;
	fw->gen = gen;
	__module_get(THIS_MODULE);
	queue_work(dev->fault_wq, &fw->work);
}

/* Prefetch one SGE of @mr; a racing invalidation is retried, bounded. */
static int odprnic_prefetch_one(struct odprnic_mr *mr,
				struct odprnic_cmd_slot *s, u64 addr, u32 len)
{
	int tries = ODPRNIC_PREFETCH_TRIES;
	int err;

	do {
		err = odprnic_odp_map(mr, s, addr, len, ODPRNIC_MAP_PREFETCH);
	} while (err == -EAGAIN && --tries);
	return err;
}

/*
 * Prefetch @num_sge SGEs (keys checked by the caller) as a page fault is
 * resolved: fault the pages in holding nothing (@fault), then map what is
 * present with one command slot. A prefetch is advice: the first failure
 * ends it, and only means a later fault. @gen: the device must not have
 * been reset since the advice (asynchronous prefetches).
 */
static int odprnic_prefetch(struct odprnic_dev *dev,
			    const struct ib_sge *sg, u32 num_sge, bool fault,
			    bool write, u32 gen)
{
	struct odprnic_cmd_slot *s;
	int err = 0;
	u32 i;

	for (i = 0; i < num_sge && fault && !err; i++)
		err = odprnic_odp_prefault_key(dev, sg[i].lkey, sg[i].addr,
					       sg[i].length, write);
	if (err)
		return err;
	down_read(&dev->fault_gate);
	if (READ_ONCE(dev->fault_gen) != gen) {
		err = -ENODEV;
		goto out;
	}
	s = odprnic_cmd_get(dev);
	if (IS_ERR(s)) {
		err = PTR_ERR(s);
		goto out;
	}
	for (i = 0; i < num_sge && !err; i++) {
		struct odprnic_mr *mr = odprnic_mr_get(dev, sg[i].lkey);

		err = -EINVAL;
		if (mr && odprnic_mr_is_odp(mr))
			err = odprnic_prefetch_one(mr, s, sg[i].addr,
						   sg[i].length);
		if (mr)
			odprnic_mr_put(mr);
	}
	odprnic_cmd_put(dev, s);
out:
	up_read(&dev->fault_gate);
	return err;
}

/* An asynchronous prefetch, on the fault workqueue as a page fault. */
struct odprnic_prefetch_work {
	struct work_struct work;
	struct odprnic_dev *dev;
	bool fault;
	bool write;
	u32 gen;
	u32 num_sge;
	struct ib_sge sg[];
};

static void odprnic_prefetch_work(struct work_struct *work)
{
	struct odprnic_prefetch_work *pw =
		container_of(work, struct odprnic_prefetch_work, work);
	int err;

	err = odprnic_prefetch(pw->dev, pw->sg, pw->num_sge, pw->fault,
			       pw->write, pw->gen);
	if (err)
		dev_dbg(&pw->dev->pdev->dev, "asynchronous prefetch: %d\n",
			err);
	atomic_dec(&pw->dev->fault_works);
	kfree(pw);
	/* remove()'s destroy_workqueue() waits for this function to return */
	module_put(THIS_MODULE);
}

/*
 * advise_mr: prefetch ODP ranges into the device (MAP_PAGES with
 * ODPRNIC_MAP_PREFETCH) so that the first access does not fault:
 * PREFETCH faults the pages in for reading, PREFETCH_WRITE for writing,
 * PREFETCH_NO_FAULT maps only what is present in the page tables. With
 * IB_UVERBS_ADVISE_MR_FLAG_FLUSH the work is done before returning;
 * without it the SGEs are checked here and the rest runs on the fault
 * workqueue. Either way it holds no command slot while it faults pages in
 * and no MR while it waits for them (see odprnic_odp_page_fault()).
 */
int odprnic_advise_mr(struct ib_pd *pd, enum ib_uverbs_advise_mr_advice advice,
		      u32 flags, struct ib_sge *sg_list, u32 num_sge,
		      struct uverbs_attr_bundle *attrs)
{
	struct odprnic_dev *dev = to_odev(pd->device);
	bool fault = advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT;
	bool write = advice == IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE;
	struct odprnic_prefetch_work *pw;
	u32 i;

	if (!(dev->caps & ODPRNIC_CAP_PREFETCH))
		return -EOPNOTSUPP;
	if (advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE &&
	    advice != IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT)
		return -EOPNOTSUPP;
	for (i = 0; i < num_sge; i++) {
		struct odprnic_mr *mr = odprnic_mr_get(dev, sg_list[i].lkey);
		bool ok = mr && odprnic_mr_is_odp(mr) && mr->ibmr.pd == pd;

		if (mr)
			odprnic_mr_put(mr);
		if (!ok)
			return -EINVAL;
	}
	pw = NULL;
	if (!(flags & IB_UVERBS_ADVISE_MR_FLAG_FLUSH) &&
	    odprnic_fault_work_get(dev)) {
		pw = kmalloc(struct_size(pw, sg, num_sge), GFP_KERNEL);
		if (!pw)
			atomic_dec(&dev->fault_works);
	}
	/* FLUSH, or too many in flight: in the caller */
	if (!pw)
		return odprnic_prefetch(dev, sg_list, num_sge, fault, write,
					READ_ONCE(dev->fault_gen));

	INIT_WORK(&pw->work, odprnic_prefetch_work);
	pw->dev = dev;
	pw->fault = fault;
	pw->write = write;
	pw->gen = READ_ONCE(dev->fault_gen);
	pw->num_sge = num_sge;
	memcpy(pw->sg, sg_list, flex_array_size(pw, sg, num_sge));
	__module_get(THIS_MODULE);
	queue_work(dev->fault_wq, &pw->work);
	return 0;
}
