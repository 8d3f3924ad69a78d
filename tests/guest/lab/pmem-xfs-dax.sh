#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# The lab's pmem chain: the nvdimm as an fsdax namespace, XFS with reflink
# mounted dax=always, STATX_ATTR_DAX on files, reflinked copies sharing
# extents, MAP_SYNC mappings. Everything the registration scenarios build on.
. "$ODP_RNIC_TESTS/lib/harness.sh"
. "$ODP_RNIC_TESTS/lib/pmem.sh"

mnt=/mnt/pmem
STATX_ATTR_DAX=0x200000
FIEMAP_EXTENT_SHARED=0x2000

if ! pmem_present; then
	t_skip "nvdimm region present" "no nvdimm (scripts/vm --pmem 0?)"
	t_summary
	exit
fi
t_ok "nvdimm region present"

t_check "label area initialised" pmem_init_labels
if dev=$(pmem_create fsdax 512M) && [ -b "$dev" ]; then
	t_ok "fsdax namespace created ($dev)"
else
	t_fail "fsdax namespace created" "$(ndctl list -RNu 2>&1)"
	t_summary
	exit 1
fi
if ddev=$(pmem_create devdax) && [ -c "$ddev" ]; then
	t_ok "devdax namespace created next to it ($ddev)"
else
	t_fail "devdax namespace created next to it" "$(ndctl list -RNu 2>&1)"
fi
blk=$(basename "$dev")
t_check "$blk supports DAX" grep -qx 1 "/sys/block/$blk/queue/dax"
t_check "mkfs.xfs -m reflink=1" mkfs.xfs -q -f -m reflink=1 "$dev"
mkdir -p "$mnt"
if ! t_check "mount -o dax=always" mount -o dax=always "$dev" "$mnt"; then
	t_summary
	exit 1
fi

# statx_attr FILE: prints stat.attributes (hex) as xfs_io reports it.
statx_attr() { xfs_io -c 'statx -r' "$1" | awk '$1 == "stat.attributes" { print $3 }'; }
# shared_extents FILE: number of extents with FIEMAP_EXTENT_SHARED.
shared_extents() {
	local n=0 flags
	while read -r flags; do
		if (((flags & FIEMAP_EXTENT_SHARED) != 0)); then n=$((n + 1)); fi
	done < <(xfs_io -c 'fiemap -v' "$1" | awk 'NR > 2 && $NF ~ /^0x/ { print $NF }')
	echo "$n"
}
is_dax() {
	local a
	a=$(statx_attr "$1")
	[ -n "$a" ] && (((a & STATX_ATTR_DAX) != 0))
}

f=$mnt/data
t_check "write 8 MiB" dd if=/dev/urandom of="$f" bs=1M count=8 conv=fsync status=none
if is_dax "$f"; then
	t_ok "STATX_ATTR_DAX on a file"
else
	t_fail "STATX_ATTR_DAX on a file" "stat.attributes = $(statx_attr "$f")"
fi

t_check "cp --reflink=always" cp --reflink=always "$f" "$mnt/copy"
t_check "the copy reads back identical" cmp "$f" "$mnt/copy"
n=$(shared_extents "$mnt/copy")
if [ "$n" -gt 0 ]; then
	t_ok "reflinked copy shares extents ($n shared)"
else
	t_fail "reflinked copy shares extents" "$(xfs_io -c 'fiemap -v' "$mnt/copy")"
fi
if is_dax "$mnt/copy"; then
	t_ok "STATX_ATTR_DAX on the reflinked copy"
else
	t_fail "STATX_ATTR_DAX on the reflinked copy" "stat.attributes = $(statx_attr "$mnt/copy")"
fi

# Copy-on-write: overwriting the copy leaves the original alone.
sum=$(sha256sum <"$f")
dd if=/dev/zero of="$mnt/copy" bs=4k count=1 conv=notrunc,fsync status=none
if [ "$(sha256sum <"$f")" = "$sum" ] && ! cmp -s "$f" "$mnt/copy"; then
	t_ok "copy-on-write keeps the original intact"
else
	t_fail "copy-on-write keeps the original intact"
fi

# mmap(MAP_SHARED_VALIDATE | MAP_SYNC) is only allowed on a DAX file.
if python3 - "$f" <<'PY'
import mmap, os, sys
MAP_SHARED_VALIDATE, MAP_SYNC = 0x03, 0x80000
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4096, flags=MAP_SHARED_VALIDATE | MAP_SYNC)
m[0:4] = b"odp!"
m.close()
PY
then
	t_ok "mmap MAP_SYNC on the DAX file"
else
	t_fail "mmap MAP_SYNC on the DAX file"
fi

t_check "unmount" umount "$mnt"
t_summary
