#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0 OR Linux-OpenIB
#
# guest-driver/provider/build.sh: builds the odprnic libibverbs provider
# inside the lab root and installs it there (runs on the host, as root).
#
# Debian ships no provider headers, so the provider is built inside the
# rdma-core source tree of exactly the root's version (scripts/lab-setup
# unpacks Debian's source at $LAB/src/rdma-core-<version>):
#
#   1. the tree is copied once to $ROOT/opt/odp-rnic/rdma-core (again when
#      the root's rdma-core version changes);
#   2. odprnic.c, odprnic_dp.c, odprnic.h, CMakeLists.txt go to
#      providers/odprnic/, the kernel driver's uverbs header to
#      providers/odprnic/include/rdma/ and its ring layouts (odp_rnic_hw.h)
#      to providers/odprnic/include/, and add_subdirectory(providers/odprnic)
#      to the top CMakeLists.txt;
#   3. inside chroot $ROOT: cmake (once) and ninja odprnic-rdmav<PABI>;
#   4. libodprnic-rdmav<PABI>.so goes to /usr/lib/x86_64-linux-gnu/libibverbs/
#      and odprnic.driver to /etc/libibverbs.d/ in the root. Debian's own
#      libibverbs is not touched.
#
# Environment: ODP_RNIC_LAB (default ~/.cache/odp-rnic), ROOT (default
# $ODP_RNIC_LAB/root), RDMA_CORE_SRC (default $LAB/src/rdma-core-<version>).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB=${ODP_RNIC_LAB:-${XDG_CACHE_HOME:-$HOME/.cache}/odp-rnic}
ROOT=${ROOT:-$LAB/root}
TREE=/opt/odp-rnic/rdma-core # inside the root
ABI_HEADER=$REPO/guest-driver/include/rdma/odp_rnic-abi.h
HW_HEADER=$REPO/guest-driver/kernel/odp_rnic_hw.h
LIBDIR=/usr/lib/x86_64-linux-gnu

log() { echo "[provider] $*"; }
die() {
	echo "provider/build.sh: error: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (chroot)"
if [ ! -x "$ROOT/usr/bin/cmake" ] || [ ! -x "$ROOT/usr/bin/ninja" ]; then
	die "no cmake/ninja in $ROOT: run scripts/lab-setup first"
fi
[ -f "$ABI_HEADER" ] || die "missing $ABI_HEADER"
[ -f "$HW_HEADER" ] || die "missing $HW_HEADER"

# One build at a time per root.
exec 9>"$ROOT/opt/odp-rnic/.provider-build.lock"
flock 9

# The root's rdma-core version: 56.1-1 -> 56.1.
# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not the shell's
deb_ver=$(chroot "$ROOT" dpkg-query -W -f '${Version}' libibverbs1) ||
	die "libibverbs1 is not installed in $ROOT"
ver=${deb_ver#*:}
ver=${ver%-*}
src=${RDMA_CORE_SRC:-$LAB/src/rdma-core-$ver}
[ -d "$src" ] || src=$ROOT/opt/odp-rnic/pkgsrc/rdma-core-$ver
[ -f "$src/CMakeLists.txt" ] ||
	die "rdma-core $ver source not found at $src (scripts/lab-setup unpacks it)"

tree=$ROOT$TREE
stamp=$tree/.odp-rnic-source
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$deb_ver" ]; then
	log "copying rdma-core $deb_ver source from $src to $TREE"
	rm -rf "$tree" "$tree.tmp"
	cp -a "$src" "$tree.tmp"
	echo "$deb_ver" >"$tree.tmp/.odp-rnic-source"
	mv "$tree.tmp" "$tree"
fi

# Copies only what changed, so ninja rebuilds only when needed.
sync_file() {
	mkdir -p "$(dirname "$2")"
	cmp -s "$1" "$2" || install -m 0644 "$1" "$2"
}
pdir=$tree/providers/odprnic
for f in odprnic.c odprnic_dp.c odprnic.h CMakeLists.txt; do
	sync_file "$HERE/$f" "$pdir/$f"
done
sync_file "$ABI_HEADER" "$pdir/include/rdma/odp_rnic-abi.h"
sync_file "$HW_HEADER" "$pdir/include/odp_rnic_hw.h"

if ! grep -q '^add_subdirectory(providers/odprnic)' "$tree/CMakeLists.txt"; then
	grep -q '^add_subdirectory(providers/siw)$' "$tree/CMakeLists.txt" ||
		die "no add_subdirectory(providers/siw) in $TREE/CMakeLists.txt to anchor on"
	sed -i 's|^add_subdirectory(providers/siw)$|&\nadd_subdirectory(providers/odprnic)|' \
		"$tree/CMakeLists.txt"
fi

pabi=$(sed -n 's/^set(IBVERBS_PABI_VERSION "\([0-9]*\)")/\1/p' "$tree/CMakeLists.txt")
[ -n "$pabi" ] || die "IBVERBS_PABI_VERSION not found in $TREE/CMakeLists.txt"
target=odprnic-rdmav$pabi
lib=lib$target.so

# /proc and /dev for the compiler, mounted only if nobody did already, and
# unmounted only by us.
mounted=()
cleanup() {
	local i
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
		umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}"
	done
}
trap cleanup EXIT
if ! mountpoint -q "$ROOT/proc"; then
	mount -t proc proc "$ROOT/proc" && mounted+=("$ROOT/proc")
fi
if ! mountpoint -q "$ROOT/dev"; then
	mount --bind /dev "$ROOT/dev" && mounted+=("$ROOT/dev")
fi

in_root() {
	chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 "$@"
}

if [ ! -f "$tree/build/build.ninja" ]; then
	log "configuring rdma-core in $TREE/build"
	mkdir -p "$tree/build"
	in_root sh -c "cd $TREE/build && cmake -GNinja -DIN_PLACE=1 -DNO_PYVERBS=1 \
		-DNO_MAN_PAGES=1 -DENABLE_RESOLVE_NEIGH=0 .." >"$tree/build/cmake.log" 2>&1 ||
		{ tail -30 "$tree/build/cmake.log" >&2; die "cmake failed (log: $TREE/build/cmake.log)"; }
fi

log "building $target (rdma-core $ver, PABI $pabi)"
in_root sh -c "cd $TREE/build && ninja $target"

built=$tree/build/lib/$lib
[ -f "$built" ] || die "$lib was not produced"

# The provider must link only against libibverbs.so.1 (and libc), and every
# private symbol it needs must be exported by the root's own libibverbs.
needed=$(in_root readelf -d "$TREE/build/lib/$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
case " $needed " in
*" libibverbs.so.1 "*) ;;
*) die "$lib does not link against libibverbs.so.1 (NEEDED: $needed)" ;;
esac
exported=$(in_root objdump -T "$LIBDIR/libibverbs.so.1" | awk 'NF >= 2 && $(NF-1) ~ /^IBVERBS_PRIVATE_/ { print $NF }')
missing=$(in_root objdump -T "$TREE/build/lib/$lib" |
	awk 'NF >= 2 && /\*UND\*/ && $(NF-1) ~ /IBVERBS_PRIVATE_/ { print $NF }' | sort -u |
	grep -vxF -f <(echo "$exported") || true)
[ -z "$missing" ] || die "the root's libibverbs lacks: $missing"

install -D -m 0644 "$built" "$ROOT$LIBDIR/libibverbs/$lib"
install -D -m 0644 "$HERE/odprnic.driver" "$ROOT/etc/libibverbs.d/odprnic.driver"
log "installed $LIBDIR/libibverbs/$lib and /etc/libibverbs.d/odprnic.driver (NEEDED: $needed)"
