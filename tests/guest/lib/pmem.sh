# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# pmem helpers for guest tests (scripts/vm gives the guest an nvdimm with a
# 128 KiB label area, backed by a fresh file per run):
#
#   pmem_present                  true when an nvdimm region exists
#   pmem_init_labels              initialises the label areas (all
#                                 namespaces are lost) so namespaces of any
#                                 mode and size can be created
#   pmem_create MODE [SIZE]       creates a namespace in region0 (fsdax,
#                                 devdax, sector, raw); prints its device
#                                 (/dev/pmemN or /dev/daxN.M)

pmem_present() {
	local r
	for r in /sys/bus/nd/devices/region*; do
		[ -e "$r" ] && return 0
	done
	return 1
}

pmem_init_labels() {
	ndctl disable-region all >/dev/null &&
		ndctl init-labels -f all >/dev/null &&
		ndctl enable-region all >/dev/null
}

pmem_create() {
	local mode=$1 size=${2:-} json
	json=$(ndctl create-namespace -r region0 -m "$mode" ${size:+-s "$size"}) || return 1
	python3 -c '
import json, sys
ns = json.load(sys.stdin)
if "blockdev" in ns:
    print("/dev/" + ns["blockdev"])
else:
    print("/dev/" + ns["daxregion"]["devices"][0]["chardev"])
' <<<"$json"
}
