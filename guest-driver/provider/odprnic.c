// SPDX-License-Identifier: GPL-2.0 OR Linux-OpenIB
/*
 * odprnic: the libibverbs provider for the odp-rnic emulated RDMA NIC.
 * See odprnic.h for what it covers and how registrations choose a mode.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "odprnic.h"

static void odprnic_free_context(struct ibv_context *ibctx);

static int odprnic_query_device(struct ibv_context *ibctx,
				const struct ibv_query_device_ex_input *input,
				struct ibv_device_attr_ex *attr,
				size_t attr_size)
{
	struct ib_uverbs_ex_query_device_resp resp;
	size_t resp_size = sizeof(resp);
	uint64_t fw_ver;
	int ret;

	/* The extended query carries odp_caps (general and per transport). */
	ret = ibv_cmd_query_device_any(ibctx, input, attr, attr_size, &resp,
				       &resp_size);
	if (ret)
		return ret;

	/*
	 * The driver reports the device's ODPRNIC_REG_VERSION,
	 * major << 16 | minor ("Interface version" in docs/hardware.md).
	 */
	fw_ver = resp.base.fw_ver;
	snprintf(attr->orig_attr.fw_ver, sizeof(attr->orig_attr.fw_ver),
		 "%u.%u", (unsigned int)(fw_ver >> 16) & 0xffff,
		 (unsigned int)fw_ver & 0xffff);
	return 0;
}

static int odprnic_query_port(struct ibv_context *ibctx, uint8_t port,
			      struct ibv_port_attr *attr)
{
	struct ibv_query_port cmd = {};

	return ibv_cmd_query_port(ibctx, port, attr, &cmd, sizeof(cmd));
}

static struct ibv_pd *odprnic_alloc_pd(struct ibv_context *ibctx)
{
	struct ib_uverbs_alloc_pd_resp resp = {};
	struct ibv_alloc_pd cmd = {};
	struct ibv_pd *pd;
	int ret;

	pd = calloc(1, sizeof(*pd));
	if (!pd)
		return NULL;

	ret = ibv_cmd_alloc_pd(ibctx, pd, &cmd, sizeof(cmd), &resp,
			       sizeof(resp));
	if (ret) {
		free(pd);
		errno = ret;
		return NULL;
	}
	return pd;
}

static int odprnic_dealloc_pd(struct ibv_pd *pd)
{
	int ret;

	ret = ibv_cmd_dealloc_pd(pd);
	if (ret)
		return ret;

	free(pd);
	return 0;
}

/*
 * The driver-specific mode flags of a registration: none for ODP (the kernel
 * follows IBV_ACCESS_ON_DEMAND and refuses a mode flag with it), otherwise
 * what ODPRNIC_MR_MODE says, read now so that one process can register MRs
 * of both kinds. Returns 0 or EINVAL for a value it does not know.
 */
static int odprnic_mr_mode_flags(struct ibv_context *ibctx, int access,
				 uint32_t *flags)
{
	const char *mode;

	*flags = 0;
	if (access & IBV_ACCESS_ON_DEMAND)
		return 0;

	mode = getenv(ODPRNIC_ENV_MR_MODE);
	if (!mode || !*mode)
		return 0;
	if (!strcmp(mode, "pinned")) {
		*flags = ODPRNIC_REG_MR_PINNED;
		return 0;
	}
	if (!strcmp(mode, "revocable")) {
		*flags = ODPRNIC_REG_MR_REVOCABLE;
		return 0;
	}
	verbs_err(verbs_get_ctx(ibctx),
		  "odprnic: %s=%s: expected pinned or revocable\n",
		  ODPRNIC_ENV_MR_MODE, mode);
	return EINVAL;
}

static struct ibv_mr *odprnic_reg_mr(struct ibv_pd *pd, void *addr,
				     size_t length, uint64_t hca_va,
				     int access)
{
	struct odprnic_reg_mr_cmd_resp resp = {};
	struct odprnic_reg_mr_cmd cmd = {};
	struct odprnic_mr *mr;
	int ret;

	ret = odprnic_mr_mode_flags(pd->context, access,
				    &cmd.drv_payload.flags);
	if (ret) {
		errno = ret;
		return NULL;
	}

	mr = calloc(1, sizeof(*mr));
	if (!mr)
		return NULL;

	/*
	 * ibv_cmd_reg_mr passes IBV_ACCESS_ON_DEMAND through and turns
	 * length == SIZE_MAX (with addr == NULL) into implicit ODP.
	 */
	ret = ibv_cmd_reg_mr(pd, addr, length, hca_va, access, &mr->vmr,
			     &cmd.ibv_cmd, sizeof(cmd), &resp.ibv_resp,
			     sizeof(resp));
	if (ret) {
		free(mr);
		errno = ret;
		return NULL;
	}

	mr->mode = resp.drv_payload.mode;
	verbs_debug(verbs_get_ctx(pd->context),
		    "odprnic: MR lkey 0x%x length %zu access 0x%x mode %u\n",
		    mr->vmr.ibv_mr.lkey, length, (unsigned int)access,
		    mr->mode);
	return &mr->vmr.ibv_mr;
}

static int odprnic_dereg_mr(struct verbs_mr *vmr)
{
	int ret;

	ret = ibv_cmd_dereg_mr(vmr);
	if (ret)
		return ret;

	free(to_omr(vmr));
	return 0;
}

/*
 * Verbs left out (SRQ, MW, XRC, flows, ...) keep libibverbs' defaults, which
 * fail with EOPNOTSUPP.
 */
static const struct verbs_context_ops odprnic_ctx_ops = {
	.advise_mr = ibv_cmd_advise_mr,
	.alloc_pd = odprnic_alloc_pd,
	.create_ah = odprnic_create_ah,
	.create_cq = odprnic_create_cq,
	.create_qp = odprnic_create_qp,
	.create_qp_ex = odprnic_create_qp_ex,
	.dealloc_pd = odprnic_dealloc_pd,
	.dereg_mr = odprnic_dereg_mr,
	.destroy_ah = odprnic_destroy_ah,
	.destroy_cq = odprnic_destroy_cq,
	.destroy_qp = odprnic_destroy_qp,
	.free_context = odprnic_free_context,
	.modify_qp = odprnic_modify_qp,
	.poll_cq = odprnic_poll_cq,
	.post_recv = odprnic_post_recv,
	.post_send = odprnic_post_send,
	.query_device_ex = odprnic_query_device,
	.query_port = odprnic_query_port,
	.query_qp = odprnic_query_qp,
	.reg_mr = odprnic_reg_mr,
	.req_notify_cq = odprnic_req_notify_cq,
};

static struct verbs_context *odprnic_alloc_context(struct ibv_device *ibdev,
						   int cmd_fd,
						   void *private_data)
{
	struct odprnic_alloc_ucontext_cmd_resp resp = {};
	struct ibv_get_context cmd = {};
	struct odprnic_context *ctx;
	struct ibv_device_attr attr;

	ctx = verbs_init_and_alloc_context(ibdev, cmd_fd, ctx, ibv_ctx,
					   RDMA_DRIVER_UNKNOWN);
	if (!ctx)
		return NULL;

	if (ibv_cmd_get_context(&ctx->ibv_ctx, &cmd, sizeof(cmd),
				&resp.ibv_resp, sizeof(resp)))
		goto err;

	/*
	 * A kernel driver without the data path (device interface 1.0)
	 * answers with db_page 0: MRs only, CQ and QP creation fail in the
	 * kernel with EOPNOTSUPP.
	 */
	if (resp.drv_payload.db_page) {
		if (resp.drv_payload.wqe_size != ODPRNIC_WQE_SIZE ||
		    resp.drv_payload.cqe_size != ODPRNIC_CQE_SIZE) {
			verbs_err(&ctx->ibv_ctx,
				  "odprnic: kernel WQE/CQE sizes %u/%u, expected %u/%u\n",
				  resp.drv_payload.wqe_size,
				  resp.drv_payload.cqe_size, ODPRNIC_WQE_SIZE,
				  ODPRNIC_CQE_SIZE);
			errno = EPROTO;
			goto err;
		}
		ctx->db = mmap(NULL, ODPRNIC_DB_PAGE_SIZE, PROT_WRITE,
			       MAP_SHARED, cmd_fd,
			       resp.drv_payload.db_mmap_key);
		if (ctx->db == MAP_FAILED) {
			verbs_err(&ctx->ibv_ctx,
				  "odprnic: mapping doorbell page %u failed: %m\n",
				  resp.drv_payload.db_page);
			ctx->db = NULL;
			goto err;
		}
		ctx->db_page = resp.drv_payload.db_page;
		ctx->max_inline = resp.drv_payload.max_inline;
		if (ctx->max_inline > ODPRNIC_MAX_INLINE)
			ctx->max_inline = ODPRNIC_MAX_INLINE;
	}

	verbs_set_ops(&ctx->ibv_ctx, &odprnic_ctx_ops);

	/* atomics are refused before posting when the device has none */
	if (!ibv_query_device(&ctx->ibv_ctx.context, &attr))
		ctx->atomics = attr.atomic_cap != IBV_ATOMIC_NONE;
	verbs_debug(&ctx->ibv_ctx,
		    "odprnic: doorbell page %u, max_inline %u, atomics %d\n",
		    ctx->db_page, ctx->max_inline, ctx->atomics);
	return &ctx->ibv_ctx;

err:
	verbs_uninit_context(&ctx->ibv_ctx);
	free(ctx);
	return NULL;
}

static void odprnic_free_context(struct ibv_context *ibctx)
{
	struct odprnic_context *ctx = to_octx(ibctx);

	if (ctx->db)
		munmap(ctx->db, ODPRNIC_DB_PAGE_SIZE);
	verbs_uninit_context(&ctx->ibv_ctx);
	free(ctx);
}

static struct verbs_device *
odprnic_alloc_device(struct verbs_sysfs_dev *sysfs_dev)
{
	struct odprnic_device *dev;

	dev = calloc(1, sizeof(*dev));
	if (!dev)
		return NULL;

	return &dev->ibv_dev;
}

static void odprnic_uninit_device(struct verbs_device *verbs_device)
{
	struct odprnic_device *dev =
		container_of(verbs_device, struct odprnic_device, ibv_dev);

	free(dev);
}

/*
 * odp_rnic.ko is out of tree and has no enum rdma_driver_id slot: match by
 * the device's PCI identity.
 */
static const struct verbs_match_ent odprnic_match_table[] = {
	VERBS_PCI_MATCH(ODPRNIC_PCI_VENDOR_ID, ODPRNIC_PCI_DEVICE_ID, NULL),
	{}
};

static const struct verbs_device_ops odprnic_dev_ops = {
	.name = "odprnic",
	.match_min_abi_version = ODPRNIC_UVERBS_ABI_VERSION,
	.match_max_abi_version = ODPRNIC_UVERBS_ABI_VERSION,
	.match_table = odprnic_match_table,
	.alloc_device = odprnic_alloc_device,
	.uninit_device = odprnic_uninit_device,
	.alloc_context = odprnic_alloc_context,
};
PROVIDER_DRIVER(odprnic, odprnic_dev_ops);
