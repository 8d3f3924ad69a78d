/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR Linux-OpenIB) */
/*
 * odp-rnic: the uverbs ABI between the kernel driver (odp_rnic.ko) and the
 * rdma-core provider (libodprnic). Versioned by ODPRNIC_UVERBS_ABI_VERSION;
 * a change that is not a pure addition at the end of a struct bumps it.
 */
#ifndef ODP_RNIC_ABI_USER_H
#define ODP_RNIC_ABI_USER_H

#include <linux/types.h>

#define ODPRNIC_UVERBS_ABI_VERSION	1

/*
 * Registration modes requested in odprnic_reg_mr_req.flags.
 *
 * Neither flag: the module parameter default_mr_mode decides for a non-ODP
 * registration. IB_ACCESS_ON_DEMAND in the access flags always selects an
 * ODP registration; setting either flag together with it is -EINVAL, as is
 * setting both flags.
 */
#define ODPRNIC_REG_MR_REVOCABLE	0x1	/* bit 0 */
#define ODPRNIC_REG_MR_PINNED		0x2	/* bit 1 */

/* The mode the driver chose, in odprnic_reg_mr_resp.mode. */
enum odprnic_mr_mode {
	ODPRNIC_MR_MODE_PINNED = 0,
	ODPRNIC_MR_MODE_ODP = 1,
	ODPRNIC_MR_MODE_IMPLICIT = 2,
	ODPRNIC_MR_MODE_REVOCABLE = 3,
};

struct odprnic_reg_mr_req {
	__u32 flags;	/* ODPRNIC_REG_MR_* */
	__u32 reserved;	/* must be 0 */
};

struct odprnic_reg_mr_resp {
	__u32 mode;	/* enum odprnic_mr_mode */
	__u32 reserved;
};

#endif /* ODP_RNIC_ABI_USER_H */
