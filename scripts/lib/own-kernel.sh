# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash disable=SC2034 # the OWN_ variables are for the scripts that source this
#
# A kernel that is not a Debian package of the lab: a built kernel tree
# (--kernel-tree DIR), or a prebuilt image with its modules and a build
# tree or headers to build odp_rnic.ko against (--kernel-image FILE
# --modules DIR --headers DIR). scripts/vm, build-guest, test, matrix,
# campaign and bench take these options where they take --kernel.
#
# Such a kernel lives in the lab root beside the Debian ones, never in the
# package-managed /boot and /lib/modules:
#   /opt/odp-rnic/kernels/KREL/vmlinuz        the bzImage, if one was given
#   /opt/odp-rnic/kernels/KREL/vmlinux        the ELF image booted through PVH
#   /opt/odp-rnic/kernels/KREL/config         its .config (from the headers)
#   /opt/odp-rnic/kernels/KREL/lib/modules/KREL   its modules
#   /opt/odp-rnic/kernels/KREL/modules/KREL/odp_rnic.ko   built against it
#   /opt/odp-rnic/kernels/KREL/initrd.img     its boot initramfs
# scripts/vm puts odp_rnic.kdir=/opt/odp-rnic/kernels/KREL on the kernel
# command line; the guest's /init then bind-mounts its lib/modules over
# /lib/modules and its modules/ over /opt/odp-rnic/modules, so in the
# guest everything is where it is for a Debian kernel.
# Needs scripts/lib/common.sh and scripts/lib/kernel-tree.sh.

OWN_ARGS_HELP='--kernel-tree DIR | --kernel-image FILE --modules DIR --headers DIR'

# own_kernel_base KREL: the kernel's directory inside the root.
own_kernel_base() { echo "/opt/odp-rnic/kernels/$1"; }

# image_release FILE: the release (`uname -r`) an x86 bzImage or an ELF
# vmlinux says it is, or nothing.
image_release() {
	local f=$1 off
	if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
		grep -a -o -m1 'Linux version [^ ]*' "$f" | head -n1 | awk '{ print $3 }'
		return 0
	fi
	# bzImage: "HdrS" at 0x202, the version string's offset (from 0x200)
	# at 0x20e (Documentation/arch/x86/boot.rst).
	[ "$(dd if="$f" bs=1 skip=514 count=4 2>/dev/null)" = HdrS ] || return 0
	off=$(od -An -tu2 -j 526 -N2 "$f" | tr -d ' ')
	[ -n "$off" ] && [ "$off" -gt 0 ] || return 0
	dd if="$f" bs=1 skip=$((off + 512)) count=200 2>/dev/null | tr '\0' '\n' | head -n1 | awk '{ print $1 }'
}

# is_elf FILE
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

# own_kernel_resolve ARGS...: ARGS are the --kernel-tree / --kernel-image /
# --modules / --headers options (OWN_ARGS of the calling script). Checks
# them and sets
#   OWN_KREL     the kernel release
#   OWN_IMAGE    the image to boot (host path)
#   OWN_MODULES  the host directory lib/modules/KREL
#   OWN_HEADERS  the tree or headers directory odp_rnic.ko is built against
#   OWN_CONFIG   its .config
#   OWN_LABEL    KREL, and for a tree " (git describe --always --dirty)"
#   OWN_BASE     /opt/odp-rnic/kernels/KREL (in the root)
# A tree's modules not yet installed into DIR/.odprnic/modules (where
# scripts/kernel-build puts them) are installed there first.
own_kernel_resolve() {
	local tree='' image='' modules='' headers='' d krel kr2 have
	while [ $# -gt 0 ]; do
		[ $# -ge 2 ] || die "$1 needs a value"
		case "$1" in
		--kernel-tree) tree=$2 ;;
		--kernel-image) image=$2 ;;
		--modules) modules=$2 ;;
		--headers) headers=$2 ;;
		*) die "own_kernel_resolve: unknown option $1" ;;
		esac
		shift 2
	done
	OWN_LABEL=''
	if [ -n "$tree" ]; then
		[ -z "$image$modules$headers" ] ||
			die "--kernel-tree takes the image, modules and headers from the tree: not with --kernel-image, --modules or --headers"
		[ -d "$tree" ] || die "--kernel-tree $tree: no such directory"
		tree=$(realpath "$tree")
		grep -qs '^VERSION = ' "$tree/Makefile" ||
			die "--kernel-tree $tree: not a kernel source tree (no top-level Makefile with VERSION)"
		# the vmlinux (PVH: no decompressor under TCG) when it is a
		# whole kernel, else the bzImage
		krel='' d=''
		grep -qs '^CONFIG_PVH=y' "$tree/.config" && d=$tree/vmlinux
		for image in $d "$tree/arch/x86/boot/bzImage" "$tree/vmlinux"; do
			[ -f "$image" ] || continue
			krel=$(image_release "$image")
			[ -z "$krel" ] || break
		done
		[ -n "$krel" ] ||
			die "--kernel-tree $tree is not built: no arch/x86/boot/bzImage or vmlinux with a kernel release in it (build it: scripts/kernel-build $tree)"
		[ -f "$tree/Module.symvers" ] ||
			die "--kernel-tree $tree has no Module.symvers: its modules are not built (scripts/kernel-build $tree)"
		headers=$tree
		# What the tree says now must be what its image was built as
		# (built with LOCALVERSION= on the command line, as
		# scripts/kernel-build does, or without: either is right).
		kr2=$(in_root_tree "$tree" make -s LOCALVERSION= kernelrelease 2>/dev/null | tail -n1 || true)
		if [ -n "$kr2" ] && [ "$kr2" != "$krel" ]; then
			d=$(in_root_tree "$tree" make -s kernelrelease 2>/dev/null | tail -n1 || true)
			[ "$d" = "$krel" ] ||
				die "--kernel-tree $tree: its image is $krel but the tree now says $kr2 (make -s kernelrelease): rebuild it (scripts/kernel-build $tree)"
		fi
		d=$tree/.odprnic/modules
		if [ ! -f "$d/lib/modules/$krel/modules.dep" ] ||
			[ "$tree/Module.symvers" -nt "$d/lib/modules/$krel/modules.dep" ]; then
			own_kernel_modules_install "$tree" "$krel"
		fi
		modules=$d
		OWN_LABEL=$krel
		d=$(git -C "$tree" describe --always --dirty 2>/dev/null || true)
		[ -z "$d" ] || OWN_LABEL="$krel ($d)"
	else
		[ -n "$image" ] || die "a kernel of your own needs $OWN_ARGS_HELP (no --kernel-image given)"
		[ -n "$modules" ] || die "--kernel-image needs --modules DIR (a directory holding lib/modules/KREL, or lib/modules/KREL itself)"
		[ -n "$headers" ] || die "--kernel-image needs --headers DIR (the kernel's build tree or headers, to build odp_rnic.ko against)"
		[ -f "$image" ] || die "--kernel-image $image: no such file"
		image=$(realpath "$image")
		krel=$(image_release "$image")
		[ -n "$krel" ] || die "--kernel-image $image: no kernel release found in it (not an x86 bzImage or vmlinux?)"
		OWN_LABEL=$krel
	fi
	# The modules: DIR/lib/modules/KREL, or DIR = .../lib/modules/KREL.
	[ -d "$modules" ] || die "--modules $modules: no such directory"
	modules=$(realpath "$modules")
	if [ -d "$modules/lib/modules/$krel" ]; then
		OWN_MODULES=$modules/lib/modules/$krel
	elif [ "$(basename "$modules")" = "$krel" ] && [ -f "$modules/modules.order" ]; then
		OWN_MODULES=$modules
	elif [ -f "$modules/$krel/modules.order" ]; then
		OWN_MODULES=$modules/$krel # (lib/modules itself)
	elif [ -d "$modules/lib/modules" ]; then
		have=$(find "$modules/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null || true)
		die "--modules $modules has no lib/modules/$krel, the release of $image (its lib/modules has: ${have:-nothing})"
	else
		die "--modules $modules has no lib/modules/$krel, the release of $image, nor is it that directory"
	fi
	[ -f "$OWN_MODULES/modules.order" ] ||
		die "$OWN_MODULES has no modules.order: not made by make modules_install"
	# The headers: what kbuild needs for M=, for this very release.
	[ -d "$headers" ] || die "--headers $headers: no such directory"
	headers=$(realpath "$headers")
	[ -f "$headers/Makefile" ] || die "--headers $headers: no Makefile (not a kernel build tree or headers directory)"
	[ -f "$headers/.config" ] || die "--headers $headers: no .config (not a configured kernel build tree)"
	[ -f "$headers/Module.symvers" ] || die "--headers $headers: no Module.symvers (the kernel's modules were not built)"
	kr2=$(cat "$headers/include/config/kernel.release" 2>/dev/null || true)
	[ -n "$kr2" ] || die "--headers $headers: no include/config/kernel.release (not a prepared kernel build tree)"
	[ "$kr2" = "$krel" ] || die "--headers $headers are for $kr2, the image is $krel"
	OWN_KREL=$krel OWN_IMAGE=$image OWN_HEADERS=$headers OWN_CONFIG=$headers/.config
	OWN_BASE=$(own_kernel_base "$krel")
}

# own_kernel_modules_install TREE KREL: make modules_install of a built tree
# into TREE/.odprnic/modules (as scripts/kernel-build does), in the root.
own_kernel_modules_install() {
	local tree=$1 krel=$2 state log
	state=$(tree_state "$tree")
	mkdir -p "$state"
	log=$state/modules-install.log
	echo "[${PROG:-odp-rnic}] installing the modules of $tree into $state/modules" >&2
	(
		flock 9
		rm -rf "${state:?}/modules/lib/modules/$krel"
		in_root_tree "$tree" make INSTALL_MOD_PATH="$(tree_inner "$tree")/.odprnic/modules" \
			INSTALL_MOD_STRIP=1 modules_install >"$log" 2>&1
	) 9>"$state/lock" || {
		tail -n 20 "$log" >&2
		die "make modules_install failed in $tree (log: $log)"
	}
	[ -f "$state/modules/lib/modules/$krel/modules.dep" ] ||
		die "make modules_install in $tree made no lib/modules/$krel (log: $log)"
}

# own_kernel_install: puts the resolved kernel (own_kernel_resolve) into
# the root at $OWN_BASE: image, config and modules (hard links when the
# root shares their file system; depmod when they come without
# modules.dep). Incremental.
own_kernel_install() {
	local base=$ROOT$OWN_BASE src img link=()
	mkdir -p "$base/lib/modules/$OWN_KREL" "$base/modules/$OWN_KREL"
	src=$OWN_MODULES
	[ "$(stat -c %d "$src")" = "$(stat -c %d "$base")" ] && link=(--link-dest="$src/")
	rsync -a --delete --exclude /build --exclude /source "${link[@]}" \
		"$src/" "$base/lib/modules/$OWN_KREL/"
	if [ ! -f "$base/lib/modules/$OWN_KREL/modules.dep" ]; then
		in_root depmod -b "$OWN_BASE" "$OWN_KREL" || die "depmod failed for $OWN_MODULES"
	fi
	cmp -s "$OWN_CONFIG" "$base/config" || cp "$OWN_CONFIG" "$base/config"
	if is_elf "$OWN_IMAGE"; then
		grep -q '^CONFIG_PVH=y' "$OWN_CONFIG" ||
			die "$OWN_IMAGE is a vmlinux, which boots through PVH only, and $OWN_CONFIG has no CONFIG_PVH=y: give the bzImage"
		rm -f "$base/vmlinuz"
		img=$base/vmlinux
		if [ ! -f "$img" ] || [ "$OWN_IMAGE" -nt "$img" ]; then
			# without its debug information: QEMU loads only the
			# segments, but reads the whole file
			in_root_tree "$(dirname "$OWN_IMAGE")" objcopy --strip-debug \
				"$(tree_inner "$OWN_IMAGE")" "$OWN_BASE/vmlinux.new" ||
				die "objcopy --strip-debug $OWN_IMAGE failed"
			mv "$img.new" "$img"
		fi
	else
		cmp -s "$OWN_IMAGE" "$base/vmlinuz" || cp "$OWN_IMAGE" "$base/vmlinuz"
	fi
}

# own_vm_args K: sets VM_KERNEL_ARGS to scripts/vm's options for K, a lab
# kernel (stable, 7.3...) or "own", the kernel of the calling script's
# OWN_ARGS (scripts/test, matrix, campaign, bench list it as "own").
own_vm_args() {
	if [ "$1" = own ]; then
		VM_KERNEL_ARGS=("${OWN_ARGS[@]}")
	else
		VM_KERNEL_ARGS=(--kernel "$1")
	fi
}
