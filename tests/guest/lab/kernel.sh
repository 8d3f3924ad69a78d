#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# The guest booted the kernel the lab meant, with the RDMA core loaded.
. "$ODP_RNIC_TESTS/lib/harness.sh"

t_ok "kernel $(uname -r)"
for m in ib_core ib_uverbs rdma_ucm xfs; do
	t_check "module $m loaded" test -d "/sys/module/$m"
done
if [ -e /proc/sys/vm/ ] && mountpoint -q /lab; then
	t_ok "results share mounted at /lab"
else
	t_fail "results share mounted at /lab"
fi
t_summary
