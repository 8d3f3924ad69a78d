/* SPDX-License-Identifier: GPL-2.0 OR Linux-OpenIB */
/*
 * odprnic: the libibverbs provider for the odp-rnic emulated RDMA NIC
 * (kernel driver odp_rnic.ko; hardware contract docs/hardware.md).
 *
 * Matching: the kernel driver is out of tree and has no rdma_driver_id, so
 * libibverbs matches this provider by the PCI identity of the device
 * (vendor 0x1234, device 0x0db0, "PCI identity" in the contract) and checks
 * the uverbs ABI version ODPRNIC_UVERBS_ABI_VERSION.
 *
 * Memory registration modes (ibv_reg_mr):
 *
 *   - IBV_ACCESS_ON_DEMAND in the access flags: an ODP registration; the
 *     device faults pages in and the kernel invalidates them at will.
 *     addr == NULL with length == SIZE_MAX is implicit ODP (the whole
 *     address space), as for every provider (ibv_cmd_reg_mr).
 *   - otherwise the environment variable ODPRNIC_MR_MODE, read at every
 *     ibv_reg_mr call, chooses the mode of this registration:
 *       ODPRNIC_MR_MODE=pinned     long-term pin (FOLL_LONGTERM); refused
 *                                  on FS-DAX and on dirty-tracked shared
 *                                  file mappings
 *       ODPRNIC_MR_MODE=revocable  short-term pins plus an mmu notifier; the
 *                                  kernel revokes the registration when the
 *                                  memory is invalidated (truncate, CoW,
 *                                  migration) and the key stops working
 *       unset or empty             the kernel driver's default_mr_mode
 *                                  module parameter decides
 *     Any other value fails the registration with EINVAL. The variable is
 *     ignored for ODP registrations (the kernel refuses a mode flag
 *     together with IBV_ACCESS_ON_DEMAND).
 *
 * The mode the kernel chose is kept in struct odprnic_mr (field mode) and
 * logged at debug level (VERBS_LOG_LEVEL=4).
 *
 * Queue pairs, completion queues and address handles are not implemented
 * yet: their verbs fail with EOPNOTSUPP (libibverbs' defaults).
 */
#ifndef ODPRNIC_H
#define ODPRNIC_H

#include <stddef.h>
#include <stdint.h>

#include <infiniband/driver.h>
#include <infiniband/kern-abi.h>
#include <rdma/odp_rnic-abi.h>

/* "PCI identity" in docs/hardware.md. */
#define ODPRNIC_PCI_VENDOR_ID	0x1234
#define ODPRNIC_PCI_DEVICE_ID	0x0db0

/* The environment variable that selects the mode of non-ODP registrations. */
#define ODPRNIC_ENV_MR_MODE	"ODPRNIC_MR_MODE"

/*
 * The reg_mr command with its driver-specific part, laid out as
 * DECLARE_DRV_CMD would: the core request or response, then our struct, with
 * no padding between or after.
 */
struct odprnic_reg_mr_cmd {
	struct ibv_reg_mr ibv_cmd;
	struct odprnic_reg_mr_req drv_payload;
};

struct odprnic_reg_mr_cmd_resp {
	struct ib_uverbs_reg_mr_resp ibv_resp;
	struct odprnic_reg_mr_resp drv_payload;
};

static_assert(sizeof(struct odprnic_reg_mr_cmd) ==
		      sizeof(struct ibv_reg_mr) +
			      sizeof(struct odprnic_reg_mr_req),
	      "padding in the reg_mr request");
static_assert(sizeof(struct odprnic_reg_mr_cmd_resp) ==
		      sizeof(struct ib_uverbs_reg_mr_resp) +
			      sizeof(struct odprnic_reg_mr_resp),
	      "padding in the reg_mr response");

struct odprnic_device {
	struct verbs_device ibv_dev;
};

struct odprnic_context {
	struct verbs_context ibv_ctx;
};

struct odprnic_mr {
	struct verbs_mr vmr;
	uint32_t mode;		/* enum odprnic_mr_mode, as the kernel chose */
};

static inline struct odprnic_context *to_octx(struct ibv_context *ibctx)
{
	return container_of(ibctx, struct odprnic_context, ibv_ctx.context);
}

static inline struct odprnic_mr *to_omr(struct verbs_mr *vmr)
{
	return container_of(vmr, struct odprnic_mr, vmr);
}

#endif /* ODPRNIC_H */
