/* SPDX-License-Identifier: GPL-2.0 */
/*
 * odp_rnic: driver-internal objects and prototypes, one section per file.
 */
#ifndef ODP_RNIC_H
#define ODP_RNIC_H

#include <linux/completion.h>
#include <linux/idr.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/pci.h>
#include <linux/refcount.h>
#include <linux/semaphore.h>
#include <linux/spinlock.h>
#include <linux/virtio_ring.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include <rdma/ib_umem.h>
#include <rdma/ib_umem_odp.h>
#include <rdma/ib_verbs.h>

#include "odp_rnic_hw.h"
#include "odp_rnic_compat.h"

#define ODPRNIC_DRV_NAME	"odp_rnic"

/* module parameters (odp_rnic_main.c) */
extern unsigned int odprnic_cmd_timeout_ms;
extern unsigned int odprnic_inv_timeout_ms;
extern char *odprnic_default_mr_mode;
extern bool odprnic_recovery;
extern unsigned int odprnic_health_ms;
extern bool odprnic_two_pass;

/* A split virtqueue in one DMA-coherent block ("Queues"). */
struct odprnic_vq {
	void *mem;
	dma_addr_t mem_dma;
	size_t mem_size;
	struct vring vr;
	u16 num;
	u16 avail_idx;		/* next free avail slot, free running */
	u16 last_used;		/* next used entry to consume, free running */
};

/*
 * One command in flight. Each slot owns three fixed descriptors (request,
 * data, response) and a 4 KiB data buffer, so issuing a command never
 * allocates: the page-fault path issues MAP_PAGES under umem_mutex.
 */
struct odprnic_cmd_slot {
	struct odprnic_cmd *cmd;
	struct odprnic_resp *resp;
	__le64 *data;
	dma_addr_t cmd_dma;
	dma_addr_t resp_dma;
	dma_addr_t data_dma;
	struct completion done;
	u16 index;
	bool busy;
	bool abandoned;		/* timed out; the device still owns it */
	bool released;		/* abandoned and put: free on the answer */
	bool aborted;		/* woken by a fence: no answer will come */
	u32 used_len;
};

struct odprnic_cmdq {
	struct odprnic_vq vq;
	spinlock_t lock;	/* vq avail/used, slot flags */
	struct semaphore free_slots;
	unsigned int nslots;
	struct odprnic_cmd_slot *slots;
	void *bufs;
	dma_addr_t bufs_dma;
	size_t bufs_size;
	u32 next_cookie;
};

struct odprnic_eq {
	struct odprnic_vq vq;
	struct odprnic_event *bufs;
	dma_addr_t bufs_dma;
	struct work_struct work;
	u32 last_seq;
};

struct odprnic_stats {
	atomic64_t cmd_timeouts;
	atomic64_t qp_errors;
	atomic64_t cq_errors;
	atomic64_t leaked_ahs;
	atomic64_t inv_timeouts;
	atomic64_t page_faults;
	atomic64_t fault_errors;
	atomic64_t invalidations;
	atomic64_t revocations;
	atomic64_t events;
	atomic64_t recoveries;
	atomic64_t recovery_failures;
};

/* One MSI-X vector of ODPRNIC_VEC_CQ_FIRST.. and the CQs that use it. */
struct odprnic_cq_vec {
	struct odprnic_dev *dev;
	spinlock_t lock;	/* cqs */
	struct list_head cqs;
	u16 vector;
	bool irq;		/* requested */
};

#define ODPRNIC_MAX_CQ_VECS	(ODPRNIC_NUM_VECTORS - ODPRNIC_VEC_CQ_FIRST)

/*
 * The PCI function (struct odprnic_dev) outlives its ib_devices: after a
 * recovery the old ib_device is unregistered and freed, and a fresh one is
 * registered for the reset device. An ib_device cannot be registered twice.
 */
struct odprnic_ib {
	struct ib_device ibdev;
	struct odprnic_dev *dev;
};

struct odprnic_dev {
	struct ib_device *ibdev;	/* NULL while none is registered */
	struct pci_dev *pdev;
	void __iomem *regs;
	struct net_device *netdev;

	u32 version;
	u32 caps;
	u32 max_pd;
	u32 max_mr;
	u32 max_mr_pages;
	u8 mac[ETH_ALEN];

	struct odprnic_cmdq cmdq;
	struct odprnic_eq eq;
	struct workqueue_struct *wq;

	/*
	 * Page faults (odp_rnic_odp.c), one work item each on fault_wq: one
	 * that waits for a page forever (a FUSE daemon that never answers)
	 * holds neither a command slot nor the event queue nor an MR. Its
	 * commands are issued under fault_gate (read) and only while
	 * fault_gen is the one it started in; recovery and removal move
	 * fault_gen under fault_gate (write) before they restart or tear
	 * down the command queue.
	 */
	struct workqueue_struct *fault_wq;
	struct rw_semaphore fault_gate;
	u32 fault_gen;
	atomic_t fault_works;		/* on fault_wq, bounded */

	/* invalidation doorbell ("Invalidation doorbell") */
	spinlock_t inv_lock;	/* one writer of the INV_* triple */
	u32 inv_seq;
	wait_queue_head_t inv_wait;

	/* MRs by index (key >> 8) for page-fault and revoke events */
	struct xarray mrs;

	/*
	 * Interface 1.1 data path: only when the device reports minor >= 1,
	 * BAR 4 exists and a CQ vector was granted.
	 */
	bool datapath;
	void __iomem *db;		/* the kernel's doorbell page (page 0) */
	resource_size_t db_phys;	/* BAR 4 start */
	struct ida db_ida;		/* user doorbell pages 1.. */
	u32 max_cq;
	u32 max_qp;
	unsigned int ncqvec;
	atomic_t next_cqvec;		/* spreads CQs over the vectors */
	struct odprnic_cq_vec cqvec[ODPRNIC_MAX_CQ_VECS];
	struct xarray cqs;		/* by cqn, for CQ_ERROR */
	struct xarray qps;		/* by qpn, for events and poll_cq */

	bool lost;		/* registers read all-ones: device gone */
	struct mutex fence_lock;	/* fenced and bus mastering together */
	bool fenced;		/* bus mastering cleared after a timeout */

	/*
	 * Recovery (odp_rnic_main.c): after a fence, a device error or a
	 * command timeout, a work item unregisters the ib_device, resets the
	 * device and registers a new one. recovery_lock orders it against
	 * remove(); removing stops it from starting again.
	 */
	struct work_struct recovery_work;
	struct delayed_work health_work;	/* STATUS every health_ms */
	struct mutex recovery_lock;	/* ibdev, the restart */
	spinlock_t recovery_why_lock;	/* recovery_why */
	char recovery_why[64];
	bool recovering;	/* a recovery runs: no new one is queued */
	bool removing;
	unsigned int recent_recoveries;
	unsigned long recovery_window;	/* jiffies the count started */
	struct odprnic_stats stats;
};

/* A ring buffer the kernel allocates ("Where rings live"). */
struct odprnic_ring {
	void *va;
	dma_addr_t dma;
	size_t size;
};

enum odprnic_mmap_type {
	ODPRNIC_MMAP_DB,	/* a doorbell page of BAR 4 */
	ODPRNIC_MMAP_RING,	/* a CQ or QP buffer */
};

/*
 * What a user mmap key names. A ring is freed, and a doorbell page given
 * back, only in mmap_free: when the object is destroyed and no mapping of
 * it is left.
 */
struct odprnic_mmap_entry {
	struct rdma_user_mmap_entry rdma;
	struct odprnic_dev *dev;
	enum odprnic_mmap_type type;
	struct odprnic_ring ring;
	u32 db_page;
};

struct odprnic_ucontext {
	struct ib_ucontext ibuc;
	u32 db_page;		/* 0: none (no data path) */
	struct odprnic_mmap_entry *db_entry;
};

enum odprnic_cq_flags {
	ODPRNIC_CQF_ARMED,	/* kernel CQ: req_notify_cq since the last call */
};

struct odprnic_cq {
	struct ib_cq ibcq;
	struct odprnic_dev *dev;
	u32 cqn;
	u32 size;		/* CQEs, a power of two */
	u16 vector;		/* MSI-X vector */
	bool user;
	struct odprnic_ring ring;	/* kernel CQ; user CQs: in mentry */
	struct odprnic_mmap_entry *mentry;
	struct odprnic_cq_hdr *hdr;
	struct odprnic_cqe *cqes;
	spinlock_t lock;	/* cons, for kernel CQs */
	u32 cons;
	u32 irq_prod;		/* user CQ: prod at the last interrupt */
	unsigned long flags;	/* enum odprnic_cq_flags bits */
	struct list_head vec_node;
};

struct odprnic_qp {
	struct ib_qp ibqp;
	struct odprnic_dev *dev;
	u32 qpn;
	bool user;
	bool sig_all;
	struct odprnic_ring ring;
	struct odprnic_mmap_entry *mentry;
	struct odprnic_qp_hdr *hdr;
	struct odprnic_wqe *sq;
	struct odprnic_wqe *rq;
	u32 sq_size;
	u32 rq_size;
	u32 max_send_sge;
	u32 max_recv_sge;
	u32 max_inline;
	spinlock_t sq_lock;	/* sq_prod */
	u32 sq_prod;
	spinlock_t rq_lock;	/* rq_prod */
	u32 rq_prod;
	/* what modify_qp was told, for query_qp and partial updates */
	struct mutex attr_lock;
	struct ib_qp_attr attr;
	atomic64_t page_faults;
};

struct odprnic_ah {
	struct ib_ah ibah;
	u32 ahn;
};

struct odprnic_pd {
	struct ib_pd ibpd;
	u32 pdn;
};

enum odprnic_mr_flags {
	ODPRNIC_MRF_DEAD,	/* an invalidation timed out: never map again */
	ODPRNIC_MRF_REVOKED,	/* revocable MR revoked by an invalidation */
	ODPRNIC_MRF_LIVE,	/* the device knows the key */
	ODPRNIC_MRF_STOPPING,	/* ODP: deregistration began, map nothing */
};

/*
 * Implicit ODP (odp_rnic_imr.c): the MR's child umems, one per
 * ODPRNIC_IMR_CHILD_SIZE-aligned block of the address space it was used in,
 * by VA >> ODPRNIC_IMR_CHILD_SHIFT.
 */
#define ODPRNIC_IMR_CHILD_SHIFT	26
#define ODPRNIC_IMR_CHILD_SIZE	BIT_ULL(ODPRNIC_IMR_CHILD_SHIFT)

struct odprnic_imr {
	struct xarray children;		/* struct odprnic_imr_child */
	struct work_struct gc_work;	/* frees children left empty */
	atomic_t nchildren;
};

struct odprnic_mr {
	struct ib_mr ibmr;
	struct odprnic_dev *dev;
	u32 key;
	u8 mode;		/* ODPRNIC_MR_* */
	unsigned long flags;	/* enum odprnic_mr_flags bits */
	u64 start;		/* user VA of the first byte */
	u64 iova;		/* IOVA of the first byte */
	u64 length;
	int access;

	struct ib_umem *umem;		/* pinned */
	struct ib_umem_odp *odp;	/* odp; implicit: the core's anchor */
	struct odprnic_imr imr;		/* implicit */

	/* revocable */
	struct mmu_interval_notifier notifier;
	struct mutex revoke_lock;	/* notifier vs. dereg */
	struct sg_append_table pins;	/* pinned, DMA-mapped pages */
	unsigned long npages;
	struct mm_struct *pin_mm;	/* charged npages of pinned_vm */
	struct work_struct unpin_work;
	bool notifier_live;

	/* page-fault events hold a reference while they use the MR */
	refcount_t refs;
	struct completion released;

	atomic64_t faults;
	atomic64_t invalidations;
	atomic64_t prefetches;
	atomic64_t fault_errors;
};

static inline struct odprnic_dev *to_odev(struct ib_device *ibdev)
{
	return container_of(ibdev, struct odprnic_ib, ibdev)->dev;
}

static inline struct odprnic_pd *to_opd(struct ib_pd *ibpd)
{
	return container_of(ibpd, struct odprnic_pd, ibpd);
}

static inline struct odprnic_mr *to_omr(struct ib_mr *ibmr)
{
	return container_of(ibmr, struct odprnic_mr, ibmr);
}

/* ODP, explicit or implicit: the device faults on it */
static inline bool odprnic_mr_is_odp(const struct odprnic_mr *mr)
{
	return mr->mode == ODPRNIC_MR_ODP || mr->mode == ODPRNIC_MR_IMPLICIT;
}

static inline struct odprnic_ucontext *to_ouc(struct ib_ucontext *ibuc)
{
	return container_of(ibuc, struct odprnic_ucontext, ibuc);
}

static inline struct odprnic_cq *to_ocq(struct ib_cq *ibcq)
{
	return container_of(ibcq, struct odprnic_cq, ibcq);
}

static inline struct odprnic_qp *to_oqp(struct ib_qp *ibqp)
{
	return container_of(ibqp, struct odprnic_qp, ibqp);
}

static inline struct odprnic_ah *to_oah(struct ib_ah *ibah)
{
	return container_of(ibah, struct odprnic_ah, ibah);
}

/* odp_rnic_main.c */
u32 odprnic_read32(struct odprnic_dev *dev, u32 reg);
void odprnic_write32(struct odprnic_dev *dev, u32 reg, u32 val);
void odprnic_write64(struct odprnic_dev *dev, u32 reg, u64 val);
bool odprnic_dev_dead(struct odprnic_dev *dev);

/* lost or fenced already known: no register read, for the hot paths */
static inline bool odprnic_dev_gone(struct odprnic_dev *dev)
{
	return READ_ONCE(dev->lost) || READ_ONCE(dev->fenced);
}

void odprnic_fence(struct odprnic_dev *dev, const char *why);
void odprnic_schedule_recovery(struct odprnic_dev *dev, const char *why);

/* odp_rnic_cmdq.c */
int odprnic_vq_alloc(struct odprnic_dev *dev, struct odprnic_vq *vq, u16 num);
void odprnic_vq_free(struct odprnic_dev *dev, struct odprnic_vq *vq);
int odprnic_cmdq_init(struct odprnic_dev *dev);
void odprnic_vq_restart(struct odprnic_vq *vq);
void odprnic_cmdq_restart(struct odprnic_dev *dev);
void odprnic_cmdq_abort(struct odprnic_dev *dev);
void odprnic_cmdq_cleanup(struct odprnic_dev *dev);
irqreturn_t odprnic_cmdq_irq(int irq, void *data);
struct odprnic_cmd_slot *odprnic_cmd_get(struct odprnic_dev *dev);
void odprnic_cmd_put(struct odprnic_dev *dev, struct odprnic_cmd_slot *s);
int odprnic_cmd_exec(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
		     u16 opcode, u32 data_len);
int odprnic_cmd_nop(struct odprnic_dev *dev);
int odprnic_cmd_create_pd(struct odprnic_dev *dev, u32 *pdn);
int odprnic_cmd_destroy_pd(struct odprnic_dev *dev, u32 pdn);
int odprnic_cmd_create_mr(struct odprnic_dev *dev, u32 pdn, u32 access,
			  u8 mode, u64 iova, u64 length, u32 *key);
int odprnic_cmd_destroy_mr(struct odprnic_dev *dev, u32 key);
int odprnic_cmd_map_pages(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
			  u32 key, u32 flags, u64 iova, u32 count);
int odprnic_cmd_resume(struct odprnic_dev *dev, struct odprnic_cmd_slot *s,
		       u32 token, u32 status);
int odprnic_cmd_simple(struct odprnic_dev *dev, u16 opcode, const void *args,
		       size_t args_len, void *out, size_t out_len, bool atomic);
int odprnic_cmd_handle(struct odprnic_dev *dev, u16 opcode, u32 handle);

/* odp_rnic_eq.c */
int odprnic_eq_init(struct odprnic_dev *dev);
void odprnic_eq_restart(struct odprnic_dev *dev);
void odprnic_eq_cleanup(struct odprnic_dev *dev);
irqreturn_t odprnic_eq_irq(int irq, void *data);
int odprnic_invalidate(struct odprnic_dev *dev, u32 key, u64 iova, u64 len);
int odprnic_inv_submit(struct odprnic_dev *dev, u32 key, u64 iova, u64 len,
		       u32 *seq);
int odprnic_inv_wait(struct odprnic_dev *dev, u32 seq, u32 key, u64 iova,
		     u64 len, ktime_t t0);

/* odp_rnic_verbs.c */
int odprnic_register_ibdev(struct odprnic_dev *dev);
void odprnic_unregister_ibdev(struct odprnic_dev *dev);
int odprnic_ring_alloc(struct odprnic_dev *dev, struct odprnic_ring *ring,
		       size_t size);
void odprnic_ring_free(struct odprnic_dev *dev, struct odprnic_ring *ring);
struct odprnic_mmap_entry *odprnic_mmap_ring(struct odprnic_ucontext *uc,
					     size_t size);
void odprnic_destroyed(struct odprnic_dev *dev, const char *what, u32 id,
		       int err);

/* odp_rnic_cq.c */
int odprnic_cq_vecs_init(struct odprnic_dev *dev, unsigned int nvec);
void odprnic_cq_vecs_cleanup(struct odprnic_dev *dev);
int odprnic_destroy_cq(struct ib_cq *ibcq, struct ib_udata *udata);
int odprnic_poll_cq(struct ib_cq *ibcq, int num_entries, struct ib_wc *wc);
int odprnic_req_notify_cq(struct ib_cq *ibcq, enum ib_cq_notify_flags flags);
void odprnic_cq_error_event(struct odprnic_dev *dev, u32 cqn);

/* odp_rnic_qp.c */
int odprnic_create_qp(struct ib_qp *ibqp, struct ib_qp_init_attr *init_attr,
		      struct ib_udata *udata);
int odprnic_modify_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		      struct ib_udata *udata);
int odprnic_query_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr, int mask,
		     struct ib_qp_init_attr *init_attr);
int odprnic_destroy_qp(struct ib_qp *ibqp, struct ib_udata *udata);
int odprnic_post_send(struct ib_qp *ibqp, const struct ib_send_wr *wr,
		      const struct ib_send_wr **bad_wr);
int odprnic_post_recv(struct ib_qp *ibqp, const struct ib_recv_wr *wr,
		      const struct ib_recv_wr **bad_wr);
int odprnic_create_ah(struct ib_ah *ibah, struct rdma_ah_init_attr *init_attr,
		      struct ib_udata *udata);
int odprnic_destroy_ah(struct ib_ah *ibah, u32 flags);
void odprnic_qp_event(struct odprnic_dev *dev, u32 qpn,
		      enum ib_event_type type);
void odprnic_qp_page_fault(struct odprnic_dev *dev, u32 qpn);
int odprnic_fill_res_qp_entry(struct sk_buff *msg, struct ib_qp *ibqp);

/* odp_rnic_netdev.c */
int odprnic_netdev_init(struct odprnic_dev *dev);
void odprnic_netdev_cleanup(struct odprnic_dev *dev);

/* odp_rnic_mr.c */
int odprnic_dereg_mr(struct ib_mr *ibmr, struct ib_udata *udata);
struct ib_mr *odprnic_get_dma_mr(struct ib_pd *pd, int access);
struct odprnic_mr *odprnic_mr_get(struct odprnic_dev *dev, u32 key);
void odprnic_mr_put(struct odprnic_mr *mr);
u32 odprnic_access_to_hw(int access);
int odprnic_mr_revoked_event(struct odprnic_dev *dev, u32 key);
int odprnic_fill_res_mr_entry(struct sk_buff *msg, struct ib_mr *ibmr);
int odprnic_fill_stat_mr_entry(struct sk_buff *msg, struct ib_mr *ibmr);

/* odp_rnic_odp.c */

/* Between the two passes of an ODP notifier (odprnic_odp_zap_start()). */
struct odprnic_zap {
	struct odprnic_mni_finish base;
	struct odprnic_mr *mr;
	struct ib_umem_odp *odp;
	unsigned long start;
	unsigned long end;
	u64 iova;		/* the device's range */
	u64 len;
	u32 seq;
	ktime_t t0;
	int had;		/* implicit children: pages mapped before */
};

int odprnic_odp_reg(struct odprnic_dev *dev, struct odprnic_mr *mr);
int odprnic_odp_stop(struct odprnic_mr *mr);
void odprnic_odp_dereg(struct odprnic_mr *mr);
void odprnic_faults_cut_off(struct odprnic_dev *dev);
void odprnic_odp_fault_event(struct odprnic_dev *dev,
			     const struct odprnic_event *ev);
struct odprnic_zap *odprnic_odp_zap_start(struct odprnic_mr *mr,
					  struct ib_umem_odp *odp,
					  unsigned long start,
					  unsigned long end,
					  struct odprnic_mni_finish **finish);
void odprnic_odp_zap_wait(struct odprnic_zap *z);
int odprnic_odp_map_present(struct ib_umem_odp *odp, u64 va, u64 bcnt);

/*
 * Whether a fault or prefetch may still map pages of @mr: not once
 * deregistration began (ODPRNIC_MRF_STOPPING) or an invalidation timed
 * out. Final under the umem_mutex of the umem it maps.
 */
static inline bool odprnic_odp_may_map(struct odprnic_mr *mr)
{
	return test_bit(ODPRNIC_MRF_LIVE, &mr->flags) &&
	       !test_bit(ODPRNIC_MRF_STOPPING, &mr->flags) &&
	       !test_bit(ODPRNIC_MRF_DEAD, &mr->flags);
}

void odprnic_odp_fill_ptes(struct ib_umem_odp *odp, size_t idx, u32 n,
			   __le64 *ptes);
int odprnic_advise_mr(struct ib_pd *pd, enum ib_uverbs_advise_mr_advice advice,
		      u32 flags, struct ib_sge *sg_list, u32 num_sge,
		      struct uverbs_attr_bundle *attrs);

/* odp_rnic_imr.c */
struct ib_umem_odp *odprnic_imr_alloc(struct odprnic_dev *dev,
				      struct odprnic_mr *mr);
int odprnic_imr_map(struct odprnic_mr *mr, struct odprnic_cmd_slot *s,
		    u64 pos, u64 end, u32 map_flags);
void odprnic_imr_free_children(struct odprnic_mr *mr);

#endif /* ODP_RNIC_H */
