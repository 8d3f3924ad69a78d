/* SPDX-License-Identifier: GPL-2.0 */
/*
 * odp_rnic: every difference between the kernels the driver builds for
 * (Debian 6.1, 6.12 and 7.3) lives here, decided by feature checks: a macro the
 * kernel header defines where there is one, otherwise a probe of the
 * headers in Kbuild (ODPRNIC_HAVE_*). The rest of the driver calls only
 * the odprnic_* wrappers below and never names a kernel symbol that is not
 * there on every supported kernel.
 */
#ifndef ODP_RNIC_COMPAT_H
#define ODP_RNIC_COMPAT_H

#include <linux/llist.h>
#include <linux/mmu_notifier.h>
#include <rdma/ib_umem.h>
#include <rdma/ib_umem_odp.h>
#include <rdma/ib_verbs.h>
#include <rdma/uverbs_ioctl.h>

#ifndef ODPRNIC_FEATURES
#error "build with guest-driver/kernel/Kbuild: it probes the kernel headers"
#endif

/*
 * The unaligned accessors moved from <asm/> to <linux/> in 6.12; Kbuild
 * looks for the header (ODPRNIC_HAVE_LINUX_UNALIGNED).
 */
#ifdef ODPRNIC_HAVE_LINUX_UNALIGNED
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

/*
 * ib_umem_get() (pins with FOLL_LONGTERM) was renamed ib_umem_get_va() in
 * 7.2, when the descriptor/attribute variants arrived. Neither is a macro,
 * so Kbuild probes the header (ODPRNIC_HAVE_UMEM_GET_VA).
 */
static inline struct ib_umem *odprnic_umem_get(struct ib_device *ibdev,
					       unsigned long addr, size_t size,
					       int access)
{
#ifdef ODPRNIC_HAVE_UMEM_GET_VA
	return ib_umem_get_va(ibdev, addr, size, access);
#else
	return ib_umem_get(ibdev, addr, size, access);
#endif
}

/*
 * reg_user_mr gained a DMA handle argument (struct ib_dmah) before udata
 * in 6.17; Kbuild probes the op's prototype (ODPRNIC_HAVE_REG_MR_DMAH).
 * The driver has no DMA handles (no alloc_dmah), so the core passes NULL.
 */
struct ib_mr *odprnic_reg_user_mr(struct ib_pd *pd, u64 start, u64 len,
				  u64 iova, int access, struct ib_udata *udata);

#ifdef ODPRNIC_HAVE_REG_MR_DMAH
static inline struct ib_mr *
odprnic_compat_reg_user_mr(struct ib_pd *pd, u64 start, u64 len, u64 iova,
			   int access, struct ib_dmah *dmah,
			   struct ib_udata *udata)
{
	return odprnic_reg_user_mr(pd, start, len, iova, access, udata);
}
#else
static inline struct ib_mr *
odprnic_compat_reg_user_mr(struct ib_pd *pd, u64 start, u64 len, u64 iova,
			   int access, struct ib_udata *udata)
{
	return odprnic_reg_user_mr(pd, start, len, iova, access, udata);
}
#endif

/*
 * The ib_umem_odp page list. Up to 6.15 the core DMA-maps every faulted
 * page itself and keeps dma_list[] with ODP_READ/WRITE_ALLOWED_BIT in the
 * low bits; from 6.16 (the hmm_dma_map rework) it only fills
 * map.pfn_list[] and the driver DMA-maps each entry under umem_mutex with
 * hmm_dma_map_pfn(), accounting odp->npages itself.
 */
#ifdef ODP_READ_ALLOWED_BIT
#define ODPRNIC_ODP_DMA_LIST 1
#else
#define ODPRNIC_ODP_DMA_LIST 0
#include <linux/hmm.h>
#include <linux/hmm-dma.h>
#endif

/*
 * The access flags for ib_umem_odp_get(). IB_ACCESS_HUGETLB makes the
 * core's dma_list[] hold one entry per 1 << page_shift bytes
 * (HPAGE_SHIFT); up to 6.15 the driver honours that. From 6.16 the core
 * fills map.pfn_list[] per PAGE_SIZE but unmaps it per 1 << page_shift
 * (ib_umem_odp_unmap_dma_pages()), which no driver can keep consistent:
 * there the MR gets PAGE_SIZE entries (the application's promise that the
 * memory is huge pages still holds; nothing depends on it).
 */
static inline int odprnic_odp_umem_access(int access)
{
#if ODPRNIC_ODP_DMA_LIST
	return access;
#else
	return access & ~IB_ACCESS_HUGETLB;
#endif
}

/*
 * access_mask for ib_umem_odp_map_dma_and_lock(): what the umem allows.
 * The driver maps without faulting (odprnic_odp_map_present()), where
 * each page gets the access its page table entry gives instead.
 */
static inline u64 odprnic_odp_access_mask(struct ib_umem_odp *odp)
{
	bool write = odp->umem.writable;

#if ODPRNIC_ODP_DMA_LIST
	return ODP_READ_ALLOWED_BIT | (write ? ODP_WRITE_ALLOWED_BIT : 0);
#else
	return HMM_PFN_REQ_FAULT | (write ? HMM_PFN_WRITE : 0);
#endif
}

/*
 * odprnic_odp_page_addr - DMA address of PAGE_SIZE page @idx (counted from
 * ib_umem_start()) and whether the device may write it, under umem_mutex
 * after ib_umem_odp_map_dma_and_lock(). Returns false when the page is not
 * present (or cannot be DMA-mapped).
 */
static inline bool odprnic_odp_page_addr(struct ib_umem_odp *odp, size_t idx,
					 dma_addr_t *addr, bool *writable)
{
#if ODPRNIC_ODP_DMA_LIST
	/* one dma_list[] entry maps 1 << page_shift bytes */
	unsigned int order = odp->page_shift - PAGE_SHIFT;
	dma_addr_t d = odp->dma_list[idx >> order];

	if (!(d & ODP_READ_ALLOWED_BIT))
		return false;
	*addr = (d & ODP_DMA_ADDR_MASK) +
		((dma_addr_t)(idx & (BIT(order) - 1)) << PAGE_SHIFT);
	*writable = d & ODP_WRITE_ALLOWED_BIT;
	return true;
#else
	struct ib_device *ibdev = odp->umem.ibdev;
	unsigned long pfn = odp->map.pfn_list[idx];
	bool was_mapped = pfn & HMM_PFN_DMA_MAPPED;
	dma_addr_t d;

	if (!(pfn & HMM_PFN_VALID))
		return false;
	d = hmm_dma_map_pfn(ibdev->dma_device, &odp->map, idx, NULL);
	if (ib_dma_mapping_error(ibdev, d))
		return false;
	if (!was_mapped)
		odp->npages++;
	*addr = d;
	*writable = pfn & HMM_PFN_WRITE;
	return true;
#endif
}

/*
 * create_cq received the ib_udata until 6.11 and the uverbs_attr_bundle
 * holding it (driver_udata) since; Kbuild probes the op's prototype
 * (ODPRNIC_HAVE_CREATE_CQ_ATTRS). The driver's create_cq takes the udata
 * (NULL for kernel CQs) and odprnic_create_cq_op adapts it to the op.
 */
int odprnic_create_cq(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
		      struct ib_udata *udata);

#ifdef ODPRNIC_HAVE_CREATE_CQ_ATTRS
static inline int odprnic_create_cq_op(struct ib_cq *ibcq,
				       const struct ib_cq_init_attr *attr,
				       struct uverbs_attr_bundle *attrs)
{
	return odprnic_create_cq(ibcq, attr, attrs ? &attrs->driver_udata : NULL);
}
#else
#define odprnic_create_cq_op odprnic_create_cq
#endif

/*
 * 7.x adds create_user_cq next to create_cq, and once the transition is
 * over uverbs calls it unconditionally. Kbuild probes for the member
 * (ODPRNIC_HAVE_CREATE_USER_CQ); where it exists the driver fills it with
 * the same function as create_cq.
 */
static inline void odprnic_compat_set_ops(struct ib_device *ibdev)
{
#ifdef ODPRNIC_HAVE_CREATE_USER_CQ
	static const struct ib_device_ops ops = {
		.create_user_cq = odprnic_create_cq_op,
	};

	ib_set_device_ops(ibdev, &ops);
#endif
}

/*
 * 7.2 lets an mmu interval notifier work in two passes: invalidate_start
 * for every notifier a range hits, then invalidate_finish for those that
 * asked for one (Kbuild probes the member: ODPRNIC_HAVE_MNI_TWO_PASS).
 * The driver writes both passes on every kernel, on the structure below
 * where the kernel has none, and ODPRNIC_MNI_OPS() hands them to the
 * kernels that call them; the others get .invalidate alone.
 */
#ifdef ODPRNIC_HAVE_MNI_TWO_PASS
#define odprnic_mni_finish mmu_interval_notifier_finish
#define ODPRNIC_MNI_OPS(one_pass, start, finish) {			\
	.invalidate = one_pass,						\
	.invalidate_start = start,					\
	.invalidate_finish = finish,					\
}
#else
struct odprnic_mni_finish {
	struct llist_node link;
	struct mmu_interval_notifier *notifier;
};

/* start and finish are named (and type-checked) but not used here */
#define ODPRNIC_MNI_OPS(one_pass, start, finish) {			\
	.invalidate = __builtin_choose_expr(0, finish,			\
			__builtin_choose_expr(0, start, one_pass)),	\
}
#endif

#endif /* ODP_RNIC_COMPAT_H */
