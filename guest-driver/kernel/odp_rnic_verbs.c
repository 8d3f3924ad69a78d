// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the ib_device. The ops table below is the driver's table of
 * contents; the functions here are the thin ones, MRs live in
 * odp_rnic_mr.c and ODP in odp_rnic_odp.c.
 */
#include <linux/dma-mapping.h>
#include <linux/etherdevice.h>
#include <net/addrconf.h>
#include <rdma/ib_addr.h>
#include <rdma/ib_cache.h>
#include <rdma/ib_mad.h>
#include <rdma/odp_rnic-abi.h>
#include <rdma/uverbs_ioctl.h>

#include "odp_rnic.h"

#define ODPRNIC_GID_TABLE_LEN	32

static int odprnic_query_device(struct ib_device *ibdev,
				struct ib_device_attr *attr,
				struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibdev);
	u32 rc = 0;

	if (udata && (udata->inlen || udata->outlen))
		return -EINVAL;

	attr->fw_ver = dev->version;
	attr->sys_image_guid = ibdev->node_guid;
	attr->max_mr_size = (u64)dev->max_mr_pages << ODPRNIC_PAGE_SHIFT;
	attr->page_size_cap = BIT(ODPRNIC_PAGE_SHIFT);
	attr->vendor_id = ODPRNIC_PCI_VENDOR_ID;
	attr->vendor_part_id = ODPRNIC_PCI_DEVICE_ID;
	attr->hw_ver = dev->pdev->revision;
	attr->max_pd = dev->max_pd;
	attr->max_mr = dev->max_mr;
	attr->max_pkeys = 1;
	attr->local_ca_ack_delay = 15;
	if (dev->datapath) {
		attr->max_qp = dev->max_qp;
		attr->max_cq = dev->max_cq;
		attr->max_qp_wr = ODPRNIC_MAX_QP_WR;
		attr->max_send_sge = ODPRNIC_MAX_SGE;
		attr->max_recv_sge = ODPRNIC_MAX_SGE;
		attr->max_sge_rd = ODPRNIC_MAX_SGE;
		attr->max_cqe = ODPRNIC_MAX_CQE;
		attr->max_qp_rd_atom = 16;
		attr->max_qp_init_rd_atom = 16;
		attr->max_res_rd_atom = 16 * dev->max_qp;
		attr->max_ah = dev->max_qp;
		attr->atomic_cap = dev->caps & ODPRNIC_CAP_ATOMICS ?
				   IB_ATOMIC_HCA : IB_ATOMIC_NONE;
		/* ODPRNIC_PHYS_LKEY on kernel QPs ("Where rings live") */
		attr->kernel_cap_flags |= IBK_LOCAL_DMA_LKEY;
	} else {
		attr->max_qp = 0;
		attr->max_cq = 0;
	}

	/* "Capabilities": the ODP switch as the kernel sees it */
	if (dev->caps & ODPRNIC_CAP_ODP) {
		attr->kernel_cap_flags |= IBK_ON_DEMAND_PAGING;
		attr->odp_caps.general_caps = IB_ODP_SUPPORT;
		rc = IB_ODP_SUPPORT_SEND | IB_ODP_SUPPORT_RECV |
		     IB_ODP_SUPPORT_WRITE | IB_ODP_SUPPORT_READ;
		if (dev->caps & ODPRNIC_CAP_ATOMICS)
			rc |= IB_ODP_SUPPORT_ATOMIC;
		attr->odp_caps.per_transport_caps.rc_odp_caps = rc;
		if (dev->caps & ODPRNIC_CAP_UD)
			attr->odp_caps.per_transport_caps.ud_odp_caps =
				IB_ODP_SUPPORT_SEND | IB_ODP_SUPPORT_RECV;
		/* "Capabilities": only what this device instance offers */
		if (dev->caps & ODPRNIC_CAP_IMPLICIT_ODP)
			attr->odp_caps.general_caps |= IB_ODP_SUPPORT_IMPLICIT;
	}
	return 0;
}

static int odprnic_query_port(struct ib_device *ibdev, u32 port,
			      struct ib_port_attr *attr)
{
	struct odprnic_dev *dev = to_odev(ibdev);
	struct net_device *ndev = dev->netdev;
	bool up = ndev && netif_running(ndev) && netif_carrier_ok(ndev);

	attr->state = up ? IB_PORT_ACTIVE : IB_PORT_DOWN;
	attr->phys_state = up ? IB_PORT_PHYS_STATE_LINK_UP :
				IB_PORT_PHYS_STATE_DISABLED;
	attr->max_mtu = IB_MTU_4096;
	attr->active_mtu = ndev ? iboe_get_mtu(ndev->mtu) : IB_MTU_1024;
	attr->gid_tbl_len = ODPRNIC_GID_TABLE_LEN;
	attr->port_cap_flags = IB_PORT_CM_SUP;
	attr->max_msg_sz = 1U << 31;
	attr->pkey_tbl_len = 1;
	attr->bad_pkey_cntr = 0;
	attr->qkey_viol_cntr = 0;
	attr->lid = 0;
	attr->sm_lid = 0;
	attr->lmc = 0;
	attr->max_vl_num = 1;
	attr->ip_gids = true;
	return ib_get_eth_speed(ibdev, port, &attr->active_speed,
				&attr->active_width);
}

static int odprnic_get_port_immutable(struct ib_device *ibdev, u32 port,
				      struct ib_port_immutable *immutable)
{
	struct ib_port_attr attr;
	int err;

	immutable->core_cap_flags = RDMA_CORE_PORT_IBA_ROCE_UDP_ENCAP |
				    RDMA_CORE_PORT_IBA_ROCE;
	err = ib_query_port(ibdev, port, &attr);
	if (err)
		return err;
	immutable->pkey_tbl_len = attr.pkey_tbl_len;
	immutable->gid_tbl_len = attr.gid_tbl_len;
	immutable->max_mad_size = IB_MGMT_MAD_SIZE;
	return 0;
}

static enum rdma_link_layer odprnic_get_link_layer(struct ib_device *ibdev,
						   u32 port)
{
	return IB_LINK_LAYER_ETHERNET;
}

static int odprnic_query_pkey(struct ib_device *ibdev, u32 port, u16 index,
			      u16 *pkey)
{
	if (index)
		return -EINVAL;
	*pkey = IB_DEFAULT_PKEY_FULL;
	return 0;
}

/* ---- rings and user mappings ------------------------------------- */

/* "Where rings live": zeroed, physically contiguous, page-aligned. */
int odprnic_ring_alloc(struct odprnic_dev *dev, struct odprnic_ring *ring,
		       size_t size)
{
	ring->size = PAGE_ALIGN(size);
	ring->va = dma_alloc_coherent(&dev->pdev->dev, ring->size, &ring->dma,
				      GFP_KERNEL);
	if (!ring->va)
		return -ENOMEM;
	/* mmap maps it by pfn: it must sit in the linear map */
	if (WARN_ON_ONCE(is_vmalloc_addr(ring->va))) {
		odprnic_ring_free(dev, ring);
		return -EOPNOTSUPP;
	}
	return 0;
}

void odprnic_ring_free(struct odprnic_dev *dev, struct odprnic_ring *ring)
{
	if (ring->va)
		dma_free_coherent(&dev->pdev->dev, ring->size, ring->va,
				  ring->dma);
	ring->va = NULL;
}

/*
 * A ring for a user CQ or QP, owned by its mmap entry: the object's
 * destroy removes the entry, and the ring is freed in mmap_free once the
 * process no longer maps it either.
 */
struct odprnic_mmap_entry *odprnic_mmap_ring(struct odprnic_ucontext *uc,
					     size_t size)
{
	struct odprnic_dev *dev = to_odev(uc->ibuc.device);
	struct odprnic_mmap_entry *e;
	int err;

	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e)
		return ERR_PTR(-ENOMEM);
	e->dev = dev;
	e->type = ODPRNIC_MMAP_RING;
	err = odprnic_ring_alloc(dev, &e->ring, size);
	if (err)
		goto err_free;
	err = rdma_user_mmap_entry_insert(&uc->ibuc, &e->rdma, e->ring.size);
	if (err)
		goto err_ring;
	return e;

err_ring:
	odprnic_ring_free(dev, &e->ring);
err_free:
	kfree(e);
	return ERR_PTR(err);
}

/*
 * A CQ or QP whose DESTROY the device did not confirm may still be
 * written by it: fence the device before the kernel frees the ring.
 * A device that is gone, or was reset (the object no longer exists),
 * touches nothing.
 */
void odprnic_destroyed(struct odprnic_dev *dev, const char *what, u32 id,
		       int err)
{
	if (!err || err == -ENODEV || err == -ENOENT)
		return;
	dev_err(&dev->pdev->dev, "destroying %s %u failed: %d\n", what, id,
		err);
	odprnic_fence(dev, "the device did not confirm a CQ or QP destroy");
}

static int odprnic_alloc_ucontext(struct ib_ucontext *ibuc,
				  struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibuc->device);
	struct odprnic_ucontext *uc = to_ouc(ibuc);
	struct odprnic_alloc_ucontext_resp resp = {};
	struct odprnic_mmap_entry *e;
	int page, err;

	if (!dev->datapath || !udata->outlen)
		return 0;	/* MRs only: nothing to map */

	page = ida_alloc_range(&dev->db_ida, 1, ODPRNIC_DB_PAGES - 1,
			       GFP_KERNEL);
	if (page < 0)
		return page;
	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e) {
		ida_free(&dev->db_ida, page);
		return -ENOMEM;
	}
	e->dev = dev;
	e->type = ODPRNIC_MMAP_DB;
	e->db_page = page;
	err = rdma_user_mmap_entry_insert(ibuc, &e->rdma, PAGE_SIZE);
	if (err) {
		kfree(e);
		ida_free(&dev->db_ida, page);
		return err;
	}
	uc->db_page = page;
	uc->db_entry = e;

	resp.db_page = page;
	resp.wqe_size = ODPRNIC_WQE_SIZE;
	resp.cqe_size = ODPRNIC_CQE_SIZE;
	resp.max_inline = ODPRNIC_MAX_INLINE;
	resp.db_mmap_key = rdma_user_mmap_get_offset(&e->rdma);
	err = ib_copy_to_udata(udata, &resp, min(udata->outlen, sizeof(resp)));
	if (err) {
		/* mmap_free gives the page back */
		rdma_user_mmap_entry_remove(&e->rdma);
		uc->db_entry = NULL;
		uc->db_page = 0;
	}
	return err;
}

static void odprnic_dealloc_ucontext(struct ib_ucontext *ibuc)
{
	struct odprnic_ucontext *uc = to_ouc(ibuc);

	if (uc->db_entry)
		rdma_user_mmap_entry_remove(&uc->db_entry->rdma);
	uc->db_entry = NULL;
}

/*
 * Everything mapped into a process goes through rdma_user_mmap_io(), so
 * the core zaps those mappings when it disassociates a context (unbind,
 * surprise removal); rings and doorbell pages are released in mmap_free.
 */
static void odprnic_disassociate_ucontext(struct ib_ucontext *ibuc)
{
}

static int odprnic_mmap(struct ib_ucontext *ibuc, struct vm_area_struct *vma)
{
	struct rdma_user_mmap_entry *re;
	struct odprnic_mmap_entry *e;
	int err;

	re = rdma_user_mmap_entry_get(ibuc, vma);
	if (!re)
		return -EINVAL;
	e = container_of(re, struct odprnic_mmap_entry, rdma);
	if (e->type == ODPRNIC_MMAP_DB)
		err = rdma_user_mmap_io(ibuc, vma,
					PHYS_PFN(e->dev->db_phys) + e->db_page,
					PAGE_SIZE,
					pgprot_noncached(vma->vm_page_prot),
					re);
	else
		err = rdma_user_mmap_io(ibuc, vma,
					PHYS_PFN(virt_to_phys(e->ring.va)),
					e->ring.size, vma->vm_page_prot, re);
	rdma_user_mmap_entry_put(re);
	return err;
}

static void odprnic_mmap_free(struct rdma_user_mmap_entry *re)
{
	struct odprnic_mmap_entry *e =
		container_of(re, struct odprnic_mmap_entry, rdma);

	if (e->type == ODPRNIC_MMAP_DB)
		ida_free(&e->dev->db_ida, e->db_page);
	else
		odprnic_ring_free(e->dev, &e->ring);
	kfree(e);
}

static int odprnic_alloc_pd(struct ib_pd *ibpd, struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibpd->device);
	struct odprnic_pd *pd = to_opd(ibpd);

	return odprnic_cmd_create_pd(dev, &pd->pdn);
}

static int odprnic_dealloc_pd(struct ib_pd *ibpd, struct ib_udata *udata)
{
	struct odprnic_dev *dev = to_odev(ibpd->device);
	int err;

	err = odprnic_cmd_destroy_pd(dev, to_opd(ibpd)->pdn);
	/* a device that is gone or was reset has no PD left to destroy */
	if (err == -ENODEV || err == -ENOENT)
		return 0;
	return err;
}

/*
 * The driver's own counters (struct odprnic_stats) as the hw_counters of
 * the one port (as rxe does): /sys/class/infiniband/DEV/ports/1/hw_counters/
 * and `rdma statistic show`. What went wrong with the device (timeouts,
 * errors) is counted there, next to the ODP work it did.
 */
static const struct rdma_stat_desc odprnic_stat_descs[] = {
	{ .name = "cmd_timeouts" },
	{ .name = "inv_timeouts" },
	{ .name = "page_faults" },
	{ .name = "page_fault_errors" },
	{ .name = "invalidations" },
	{ .name = "revocations" },
	{ .name = "qp_errors" },
	{ .name = "cq_errors" },
	{ .name = "leaked_ahs" },
	{ .name = "events" },
	{ .name = "recoveries" },
	{ .name = "recovery_failures" },
};

static const size_t odprnic_stat_offsets[] = {
	offsetof(struct odprnic_stats, cmd_timeouts),
	offsetof(struct odprnic_stats, inv_timeouts),
	offsetof(struct odprnic_stats, page_faults),
	offsetof(struct odprnic_stats, fault_errors),
	offsetof(struct odprnic_stats, invalidations),
	offsetof(struct odprnic_stats, revocations),
	offsetof(struct odprnic_stats, qp_errors),
	offsetof(struct odprnic_stats, cq_errors),
	offsetof(struct odprnic_stats, leaked_ahs),
	offsetof(struct odprnic_stats, events),
	offsetof(struct odprnic_stats, recoveries),
	offsetof(struct odprnic_stats, recovery_failures),
};

static_assert(ARRAY_SIZE(odprnic_stat_descs) ==
	      ARRAY_SIZE(odprnic_stat_offsets));

static struct rdma_hw_stats *
odprnic_alloc_hw_port_stats(struct ib_device *ibdev, u32 port_num)
{
	return rdma_alloc_hw_stats_struct(odprnic_stat_descs,
					  ARRAY_SIZE(odprnic_stat_descs),
					  RDMA_HW_STATS_DEFAULT_LIFESPAN);
}

static int odprnic_get_hw_stats(struct ib_device *ibdev,
				struct rdma_hw_stats *stats, u32 port, int index)
{
	struct odprnic_dev *dev = to_odev(ibdev);
	int i;

	for (i = 0; i < ARRAY_SIZE(odprnic_stat_offsets); i++)
		stats->value[i] = atomic64_read((atomic64_t *)((char *)&dev->stats +
						odprnic_stat_offsets[i]));
	return ARRAY_SIZE(odprnic_stat_offsets);
}

static const struct ib_device_ops odprnic_dev_ops = {
	.owner = THIS_MODULE,
	.driver_id = RDMA_DRIVER_UNKNOWN,
	.uverbs_abi_ver = ODPRNIC_UVERBS_ABI_VERSION,

	/* device and port */
	.query_device = odprnic_query_device,
	.query_port = odprnic_query_port,
	.get_port_immutable = odprnic_get_port_immutable,
	.get_link_layer = odprnic_get_link_layer,
	.query_pkey = odprnic_query_pkey,
	.alloc_hw_port_stats = odprnic_alloc_hw_port_stats,
	.get_hw_stats = odprnic_get_hw_stats,

	/* user contexts */
	.alloc_ucontext = odprnic_alloc_ucontext,
	.dealloc_ucontext = odprnic_dealloc_ucontext,
	.disassociate_ucontext = odprnic_disassociate_ucontext,
	.mmap = odprnic_mmap,
	.mmap_free = odprnic_mmap_free,

	/* protection domains */
	.alloc_pd = odprnic_alloc_pd,
	.dealloc_pd = odprnic_dealloc_pd,

	/* memory regions: odp_rnic_mr.c, ODP in odp_rnic_odp.c */
	.get_dma_mr = odprnic_get_dma_mr,
	.reg_user_mr = odprnic_compat_reg_user_mr,
	.dereg_mr = odprnic_dereg_mr,
	.advise_mr = odprnic_advise_mr,
	.fill_res_mr_entry = odprnic_fill_res_mr_entry,
	.fill_stat_mr_entry = odprnic_fill_stat_mr_entry,

	/* interface 1.1: odp_rnic_cq.c, odp_rnic_qp.c */
	.create_cq = odprnic_create_cq_op,
	.destroy_cq = odprnic_destroy_cq,
	.poll_cq = odprnic_poll_cq,
	.req_notify_cq = odprnic_req_notify_cq,
	.create_qp = odprnic_create_qp,
	.modify_qp = odprnic_modify_qp,
	.query_qp = odprnic_query_qp,
	.destroy_qp = odprnic_destroy_qp,
	.post_send = odprnic_post_send,
	.post_recv = odprnic_post_recv,
	.create_ah = odprnic_create_ah,
	.create_user_ah = odprnic_create_ah,
	.destroy_ah = odprnic_destroy_ah,
	.fill_res_qp_entry = odprnic_fill_res_qp_entry,

	INIT_RDMA_OBJ_SIZE(ib_ah, odprnic_ah, ibah),
	INIT_RDMA_OBJ_SIZE(ib_ucontext, odprnic_ucontext, ibuc),
	INIT_RDMA_OBJ_SIZE(ib_pd, odprnic_pd, ibpd),
	INIT_RDMA_OBJ_SIZE(ib_cq, odprnic_cq, ibcq),
	INIT_RDMA_OBJ_SIZE(ib_qp, odprnic_qp, ibqp),
};

/*
 * Allocate and register an ib_device for @dev: at probe, and after each
 * recovery (an ib_device that was unregistered cannot be registered again).
 */
int odprnic_register_ibdev(struct odprnic_dev *dev)
{
	struct odprnic_ib *oib;
	struct ib_device *ibdev;
	int err;

	oib = ib_alloc_device(odprnic_ib, ibdev);
	if (!oib)
		return -ENOMEM;
	oib->dev = dev;
	ibdev = &oib->ibdev;

	ibdev->node_type = RDMA_NODE_IB_CA;
	ibdev->phys_port_cnt = 1;
	ibdev->num_comp_vectors = max(dev->ncqvec, 1U);
	ibdev->local_dma_lkey = ODPRNIC_PHYS_LKEY;
	ibdev->dev.parent = &dev->pdev->dev;
	strscpy(ibdev->node_desc, "odp-rnic", sizeof(ibdev->node_desc));
	addrconf_addr_eui48((unsigned char *)&ibdev->node_guid,
			    dev->netdev->dev_addr);
	ib_set_device_ops(ibdev, &odprnic_dev_ops);
	odprnic_compat_set_ops(ibdev);

	err = ib_device_set_netdev(ibdev, dev->netdev, 1);
	if (err)
		goto err_dealloc;
	err = ib_register_device(ibdev, "odprnic%d", &dev->pdev->dev);
	if (err) {
		dev_err(&dev->pdev->dev, "ib_register_device: %d\n", err);
		goto err_dealloc;
	}
	dev->ibdev = ibdev;
	ibdev_info(ibdev, "registered on %s, ODP %s, data path %s\n",
		   netdev_name(dev->netdev),
		   dev->caps & ODPRNIC_CAP_ODP ? "on" : "off",
		   dev->datapath ? "on" : "off");
	return 0;

err_dealloc:
	ib_dealloc_device(ibdev);
	return err;
}

/*
 * Unregister and free @dev's ib_device. The core disassociates every user
 * context first (odprnic_disassociate_ucontext: their mappings are zapped,
 * their processes get IBV_EVENT_DEVICE_FATAL and EIO from later verbs) and
 * destroys every object through the driver's destroy verbs, so on return
 * nothing of the ib_device is left on the device.
 */
void odprnic_unregister_ibdev(struct odprnic_dev *dev)
{
	struct ib_device *ibdev = dev->ibdev;

	if (!ibdev)
		return;
	ib_unregister_device(ibdev);
	dev->ibdev = NULL;
	ib_dealloc_device(ibdev);
}
