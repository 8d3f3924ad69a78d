// SPDX-License-Identifier: GPL-2.0
/*
 * odp_rnic: the ib_device. The ops table below is the driver's table of
 * contents; the functions here are the thin ones, MRs live in
 * odp_rnic_mr.c and ODP in odp_rnic_odp.c.
 */
#include <linux/etherdevice.h>
#include <net/addrconf.h>
#include <rdma/ib_addr.h>
#include <rdma/ib_cache.h>
#include <rdma/ib_mad.h>
#include <rdma/odp_rnic-abi.h>

#include "odp_rnic.h"

#define ODPRNIC_GID_TABLE_LEN	32

struct odprnic_cq {
	struct ib_cq ibcq;
};

struct odprnic_qp {
	struct ib_qp ibqp;
};

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
	attr->max_qp = odprnic_read32(dev, ODPRNIC_REG_MAX_QP);
	attr->max_cq = odprnic_read32(dev, ODPRNIC_REG_MAX_CQ);
	attr->max_pkeys = 1;
	attr->local_ca_ack_delay = 15;

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
		/* implicit ODP is refused until the driver implements it */
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

static int odprnic_alloc_ucontext(struct ib_ucontext *ibuc,
				  struct ib_udata *udata)
{
	return 0;
}

static void odprnic_dealloc_ucontext(struct ib_ucontext *ibuc)
{
}

/*
 * Nothing of a user context lives in the device or is mapped into the
 * process, so the core may disassociate it at any time: that is what makes
 * unbinding (and surprise removal) possible while applications still hold
 * the device open.
 */
static void odprnic_disassociate_ucontext(struct ib_ucontext *ibuc)
{
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

/* CQs and QPs: the v1.0 device has none yet; the ops stay in the table. */
int odprnic_create_cq(struct ib_cq *ibcq, const struct ib_cq_init_attr *attr,
		      struct uverbs_attr_bundle *attrs)
{
	return -EOPNOTSUPP;
}

static int odprnic_destroy_cq(struct ib_cq *ibcq, struct ib_udata *udata)
{
	return 0;
}

static int odprnic_poll_cq(struct ib_cq *ibcq, int num_entries,
			   struct ib_wc *wc)
{
	return 0;
}

static int odprnic_req_notify_cq(struct ib_cq *ibcq,
				 enum ib_cq_notify_flags flags)
{
	return -EOPNOTSUPP;
}

static int odprnic_create_qp(struct ib_qp *ibqp,
			     struct ib_qp_init_attr *init_attr,
			     struct ib_udata *udata)
{
	return -EOPNOTSUPP;
}

static int odprnic_modify_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr,
			     int mask, struct ib_udata *udata)
{
	return -EOPNOTSUPP;
}

static int odprnic_query_qp(struct ib_qp *ibqp, struct ib_qp_attr *attr,
			    int mask, struct ib_qp_init_attr *init_attr)
{
	return -EOPNOTSUPP;
}

static int odprnic_destroy_qp(struct ib_qp *ibqp, struct ib_udata *udata)
{
	return 0;
}

static int odprnic_post_send(struct ib_qp *ibqp, const struct ib_send_wr *wr,
			     const struct ib_send_wr **bad_wr)
{
	*bad_wr = wr;
	return -EOPNOTSUPP;
}

static int odprnic_post_recv(struct ib_qp *ibqp, const struct ib_recv_wr *wr,
			     const struct ib_recv_wr **bad_wr)
{
	*bad_wr = wr;
	return -EOPNOTSUPP;
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

	/* user contexts */
	.alloc_ucontext = odprnic_alloc_ucontext,
	.dealloc_ucontext = odprnic_dealloc_ucontext,
	.disassociate_ucontext = odprnic_disassociate_ucontext,

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

	/* completion queues and queue pairs: not in device v1.0 */
	.create_cq = odprnic_create_cq,
	.destroy_cq = odprnic_destroy_cq,
	.poll_cq = odprnic_poll_cq,
	.req_notify_cq = odprnic_req_notify_cq,
	.create_qp = odprnic_create_qp,
	.modify_qp = odprnic_modify_qp,
	.query_qp = odprnic_query_qp,
	.destroy_qp = odprnic_destroy_qp,
	.post_send = odprnic_post_send,
	.post_recv = odprnic_post_recv,

	INIT_RDMA_OBJ_SIZE(ib_ucontext, odprnic_ucontext, ibuc),
	INIT_RDMA_OBJ_SIZE(ib_pd, odprnic_pd, ibpd),
	INIT_RDMA_OBJ_SIZE(ib_cq, odprnic_cq, ibcq),
	INIT_RDMA_OBJ_SIZE(ib_qp, odprnic_qp, ibqp),
};

int odprnic_register_ibdev(struct odprnic_dev *dev)
{
	struct ib_device *ibdev = &dev->ibdev;
	int err;

	ibdev->node_type = RDMA_NODE_IB_CA;
	ibdev->phys_port_cnt = 1;
	ibdev->num_comp_vectors = 1;
	ibdev->dev.parent = &dev->pdev->dev;
	strscpy(ibdev->node_desc, "odp-rnic", sizeof(ibdev->node_desc));
	addrconf_addr_eui48((unsigned char *)&ibdev->node_guid,
			    dev->netdev->dev_addr);
	ib_set_device_ops(ibdev, &odprnic_dev_ops);
	odprnic_compat_set_ops(ibdev);

	err = ib_device_set_netdev(ibdev, dev->netdev, 1);
	if (err)
		return err;
	err = ib_register_device(ibdev, "odprnic%d", &dev->pdev->dev);
	if (err) {
		dev_err(&dev->pdev->dev, "ib_register_device: %d\n", err);
		return err;
	}
	dev->ib_registered = true;
	ibdev_info(ibdev, "registered on %s, ODP %s\n", netdev_name(dev->netdev),
		   dev->caps & ODPRNIC_CAP_ODP ? "on" : "off");
	return 0;
}

void odprnic_unregister_ibdev(struct odprnic_dev *dev)
{
	if (!dev->ib_registered)
		return;
	ib_unregister_device(&dev->ibdev);
	dev->ib_registered = false;
}
