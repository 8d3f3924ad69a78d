// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: implicit ODP, one MR over the whole address space
 * (ibv_reg_mr(pd, NULL, SIZE_MAX, IBV_ACCESS_ON_DEMAND | ...)).
 *
 * The device holds one MR_IMPLICIT key whose sparse table maps IOVA == user
 * VA. The kernel side cannot be one umem: a umem's page lists and its mmu
 * interval notifier cover a bounded range. So the MR keeps the core's
 * implicit umem (ib_umem_odp_alloc_implicit(), the anchor that holds the
 * mm) and, per ODPRNIC_IMR_CHILD_SIZE-aligned block of the address space
 * that the device faults on or that is prefetched, a child umem
 * (ib_umem_odp_alloc_child()) with its own notifier. A child is found by
 * VA >> ODPRNIC_IMR_CHILD_SHIFT in mr->imr.children.
 *
 * Locking: a child's umem_mutex orders its faults (MAP_PAGES) against its
 * invalidations, as for an explicit ODP MR; nothing is allocated while it
 * is held. A child is counted (refs): one for the xarray, one per user
 * (fault, prefetch, collector). The last put releases the umem, which
 * removes the notifier; it never happens in a notifier or under a
 * umem_mutex.
 *
 * Children are freed at deregistration, and earlier when an invalidation
 * took the last of their pages away (munmap, MADV_DONTNEED, truncate,
 * reclaim) or a fault found nothing to map: the notifier marks the child
 * idle and a work item (the collector) frees idle children that are still
 * empty and unused. A child the collector has condemned ("dying", under
 * its umem_mutex) maps nothing more; a fault that meets it answers
 * "retry" and the device faults again into a fresh child.
 */
#include <linux/sched/mm.h>

#include "odp_rnic.h"
#include "odp_rnic_trace.h"

#define ODPRNIC_IMR_IDLE	XA_MARK_0

struct odprnic_imr_child {
	struct ib_umem_odp *odp;
	struct odprnic_mr *mr;		/* the implicit MR */
	unsigned long idx;		/* VA >> ODPRNIC_IMR_CHILD_SHIFT */
	refcount_t refs;
	bool dying;			/* under odp->umem_mutex */
};

static u64 odprnic_imr_child_start(const struct odprnic_imr_child *c)
{
	return (u64)c->idx << ODPRNIC_IMR_CHILD_SHIFT;
}

static void odprnic_imr_child_put(struct odprnic_imr_child *c)
{
	struct odprnic_mr *mr = c->mr;

	if (!refcount_dec_and_test(&c->refs))
		return;
	trace_odprnic_imr_child(mr->key, odprnic_imr_child_start(c),
				ODPRNIC_IMR_CHILD_SIZE, false);
	ib_umem_odp_release(c->odp);
	kfree(c);
	atomic_dec(&mr->imr.nchildren);
}

/*
 * A fault or prefetch is done with @c. The collector skips children in
 * use and leaves them marked: run it again for one that is.
 */
static void odprnic_imr_child_unuse(struct odprnic_imr_child *c)
{
	struct odprnic_mr *mr = c->mr;
	bool idle = xa_get_mark(&mr->imr.children, c->idx, ODPRNIC_IMR_IDLE);

	odprnic_imr_child_put(c);
	if (idle)
		queue_work(mr->dev->wq, &mr->imr.gc_work);
}

/* Marks @c for the collector; under its umem_mutex, when it holds no page. */
static void odprnic_imr_child_idle(struct odprnic_imr_child *c)
{
	struct odprnic_imr *imr = &c->mr->imr;

	lockdep_assert_held(&c->odp->umem_mutex);
	if (c->dying)
		return;
	xa_set_mark(&imr->children, c->idx, ODPRNIC_IMR_IDLE);
	queue_work(c->mr->dev->wq, &imr->gc_work);
}

/*
 * The notifier of a child: as for an explicit ODP MR, for the part of the
 * range the child covers, through the implicit MR's key (IOVA == VA); in
 * one pass or two (see odp_rnic_odp.c). A child whose last pages went is
 * marked idle for the collector.
 */
static bool __odprnic_imr_child_invalidate(struct mmu_interval_notifier *mni,
					   const struct mmu_notifier_range *range,
					   unsigned long cur_seq,
					   struct odprnic_mni_finish **finish)
{
	struct ib_umem_odp *odp = container_of(mni, struct ib_umem_odp,
					       notifier);
	struct odprnic_imr_child *c = odp->private;
	struct odprnic_zap *z;
	int had;

	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&odp->umem_mutex);
	mmu_interval_set_seq(mni, cur_seq);
	had = odp->npages;
	/* a child being set up has nothing mapped yet */
	z = odprnic_odp_zap_start(c ? c->mr : NULL, odp,
				  max(ib_umem_start(odp), range->start),
				  min(ib_umem_end(odp), range->end), finish);
	if (z) {
		z->had = had;
		*finish = &z->base;
	} else if (c && had && !odp->npages) {
		odprnic_imr_child_idle(c);
	}
	mutex_unlock(&odp->umem_mutex);
	return true;
}

static bool odprnic_imr_child_invalidate(struct mmu_interval_notifier *mni,
					 const struct mmu_notifier_range *range,
					 unsigned long cur_seq)
{
	return __odprnic_imr_child_invalidate(mni, range, cur_seq, NULL);
}

static bool __maybe_unused
odprnic_imr_child_invalidate_start(struct mmu_interval_notifier *mni,
				   const struct mmu_notifier_range *range,
				   unsigned long cur_seq,
				   struct odprnic_mni_finish **finish)
{
	return __odprnic_imr_child_invalidate(mni, range, cur_seq, finish);
}

static void __maybe_unused
odprnic_imr_child_invalidate_finish(struct odprnic_mni_finish *f)
{
	struct odprnic_zap *z = container_of(f, struct odprnic_zap, base);
	struct odprnic_imr_child *c = z->odp->private;

	odprnic_odp_zap_wait(z);
	mutex_lock(&z->odp->umem_mutex);
	ib_umem_odp_unmap_dma_pages(z->odp, z->start, z->end);
	if (c && z->had && !z->odp->npages)
		odprnic_imr_child_idle(c);
	mutex_unlock(&z->odp->umem_mutex);
	kfree(z);
}

static const struct mmu_interval_notifier_ops odprnic_imr_child_mn_ops =
	ODPRNIC_MNI_OPS(odprnic_imr_child_invalidate,
			odprnic_imr_child_invalidate_start,
			odprnic_imr_child_invalidate_finish);

/* The child covering @va, made if there is none; with a reference. */
static struct odprnic_imr_child *
odprnic_imr_child_get(struct odprnic_mr *mr, u64 va)
{
	struct odprnic_imr *imr = &mr->imr;
	unsigned long idx = va >> ODPRNIC_IMR_CHILD_SHIFT;
	struct odprnic_imr_child *c, *old;
	struct ib_umem_odp *odp;

	for (;;) {
		xa_lock(&imr->children);
		c = xa_load(&imr->children, idx);
		/* the xarray's reference keeps it above zero while it is in */
		if (c)
			refcount_inc(&c->refs);
		xa_unlock(&imr->children);
		if (c)
			return c;

		if (!odprnic_odp_may_map(mr))
			return ERR_PTR(-EFAULT);
		c = kzalloc(sizeof(*c), GFP_KERNEL);
		if (!c)
			return ERR_PTR(-ENOMEM);
		odp = ib_umem_odp_alloc_child(mr->odp,
					      (u64)idx << ODPRNIC_IMR_CHILD_SHIFT,
					      ODPRNIC_IMR_CHILD_SIZE,
					      &odprnic_imr_child_mn_ops);
		if (IS_ERR(odp)) {
			kfree(c);
			return ERR_CAST(odp);
		}
		c->odp = odp;
		c->mr = mr;
		c->idx = idx;
		refcount_set(&c->refs, 2);	/* the xarray's and ours */
		mutex_lock(&odp->umem_mutex);
		odp->private = c;
		mutex_unlock(&odp->umem_mutex);

		old = xa_cmpxchg(&imr->children, idx, NULL, c, GFP_KERNEL);
		if (!old) {
			atomic_inc(&imr->nchildren);
			trace_odprnic_imr_child(mr->key, odprnic_imr_child_start(c),
						ODPRNIC_IMR_CHILD_SIZE, true);
			return c;
		}
		/* lost a race (or no memory): drop ours, look again */
		ib_umem_odp_release(odp);
		kfree(c);
		if (xa_is_err(old))
			return ERR_PTR(xa_err(old));
	}
}

/*
 * Map [@va, @va + @len) (page-aligned, inside child @c) into the device,
 * at most ODPRNIC_MAP_MAX pages per MAP_PAGES, under the child's
 * umem_mutex as for an explicit ODP MR.
 */
static int odprnic_imr_child_map(struct odprnic_imr_child *c,
				 struct odprnic_cmd_slot *s, u64 va, u64 len,
				 u32 map_flags)
{
	struct ib_umem_odp *odp = c->odp;
	struct odprnic_mr *mr = c->mr;
	u64 end = va + len;
	int err = 0;

	while (va < end) {
		u32 n = min_t(u64, (end - va) >> PAGE_SHIFT, ODPRNIC_MAP_MAX);
		size_t idx = (va - ib_umem_start(odp)) >> PAGE_SHIFT;
		int ret;

		ret = odprnic_odp_map_present(odp, va, (u64)n << PAGE_SHIFT);
		if (ret < 0) {
			/* nothing there (yet): do not keep an empty child */
			mutex_lock(&odp->umem_mutex);
			if (!odp->npages)
				odprnic_imr_child_idle(c);
			mutex_unlock(&odp->umem_mutex);
			return ret;
		}
		/* umem_mutex is held */
		if (c->dying) {
			mutex_unlock(&odp->umem_mutex);
			return -EAGAIN;
		}
		if (!odprnic_odp_may_map(mr)) {
			mutex_unlock(&odp->umem_mutex);
			return -EFAULT;
		}
		odprnic_odp_fill_ptes(odp, idx, n, s->data);
		err = odprnic_cmd_map_pages(mr->dev, s, mr->key, map_flags, va,
					    n);
		/* the pages may have gone again since they were faulted in */
		if (!odp->npages)
			odprnic_imr_child_idle(c);
		mutex_unlock(&odp->umem_mutex);
		if (err)
			return err;
		if (map_flags & ODPRNIC_MAP_PREFETCH)
			atomic64_add(n, &mr->prefetches);
		va += (u64)n << PAGE_SHIFT;
	}
	return 0;
}

/*
 * odprnic_imr_map - map the pages [@pos, @end) (page-aligned user VAs,
 * within the process's address space: odprnic_odp_va_range()) of implicit
 * MR @mr for a page fault or a prefetch, child by child, making the
 * children it needs.
 */
int odprnic_imr_map(struct odprnic_mr *mr, struct odprnic_cmd_slot *s,
		    u64 pos, u64 end, u32 map_flags)
{
	int err;

	while (pos < end) {
		u64 next = min(end, (pos | (ODPRNIC_IMR_CHILD_SIZE - 1)) + 1);
		struct odprnic_imr_child *c = odprnic_imr_child_get(mr, pos);

		if (IS_ERR(c))
			return PTR_ERR(c);
		err = odprnic_imr_child_map(c, s, pos, next - pos, map_flags);
		odprnic_imr_child_unuse(c);
		if (err)
			return err;
		pos = next;
	}
	return 0;
}

/*
 * The collector: frees the children marked idle that hold no page and that
 * nobody is using. One still in use stays (a later invalidation that
 * empties it marks it again); deregistration frees whatever is left.
 */
static void odprnic_imr_gc(struct work_struct *work)
{
	struct odprnic_imr *imr = container_of(work, struct odprnic_imr,
					       gc_work);
	struct odprnic_imr_child *c;
	unsigned long idx = 0;

	for (;;) {
		bool drop = false, busy = false;

		xa_lock(&imr->children);
		c = xa_find(&imr->children, &idx, ULONG_MAX, ODPRNIC_IMR_IDLE);
		if (c)
			refcount_inc(&c->refs);
		xa_unlock(&imr->children);
		if (!c)
			return;

		mutex_lock(&c->odp->umem_mutex);
		/* ours and the xarray's: nobody else is mapping through it */
		if (refcount_read(&c->refs) > 2)
			busy = true;
		else if (!c->odp->npages && !c->dying)
			drop = true;
		c->dying |= drop;
		/* a busy child keeps its mark: odprnic_imr_child_unuse() */
		if (!busy)
			xa_clear_mark(&imr->children, idx, ODPRNIC_IMR_IDLE);
		mutex_unlock(&c->odp->umem_mutex);
		if (drop && xa_cmpxchg(&imr->children, idx, c, NULL, 0) == c)
			odprnic_imr_child_put(c);
		odprnic_imr_child_put(c);
		idx++;
	}
}

/* The core's implicit umem, the anchor of @mr's children. */
struct ib_umem_odp *odprnic_imr_alloc(struct odprnic_dev *dev,
				      struct odprnic_mr *mr)
{
	if (!(dev->caps & ODPRNIC_CAP_IMPLICIT_ODP))
		return ERR_PTR(-EOPNOTSUPP);
	xa_init(&mr->imr.children);
	INIT_WORK(&mr->imr.gc_work, odprnic_imr_gc);
	atomic_set(&mr->imr.nchildren, 0);
	return ib_umem_odp_alloc_implicit(mr->ibmr.device, mr->access);
}

/*
 * Deregistration, after the device dropped the key (odprnic_odp_stop()) and
 * every fault and prefetch let go of the MR: free the children. The
 * collector may run meanwhile; whoever takes a child out of the xarray
 * drops its reference.
 */
void odprnic_imr_free_children(struct odprnic_mr *mr)
{
	struct odprnic_imr *imr = &mr->imr;
	struct odprnic_imr_child *c;
	unsigned long idx;

	xa_for_each(&imr->children, idx, c) {
		if (xa_cmpxchg(&imr->children, idx, c, NULL, 0) == c)
			odprnic_imr_child_put(c);
	}
	/* no notifier is left to queue it again */
	cancel_work_sync(&imr->gc_work);
	WARN_ON(atomic_read(&imr->nchildren));
	xa_destroy(&imr->children);
}
