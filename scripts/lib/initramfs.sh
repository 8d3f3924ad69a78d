# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# The boot initramfs of the lab, one per kernel: busybox, the kernel modules
# the lab needs (decompressed, so busybox insmod loads them; no module is read
# over 9p at boot), scripts/guest/init as /init, scripts/guest/stage2,
# which runs in the real root after switch_root, and
# scripts/guest/kernel-log, its check of the kernel log. Built by
# scripts/lab-setup and rebuilt lazily by scripts/vm when its inputs change.
# Needs scripts/lib/common.sh.

# Modules loaded at boot, in three groups: "boot" (what mounting the root
# needs) first, then "pmem" and "rdma" in two parallel chains while the
# root is mounted. Each module's dependencies are resolved with modprobe
# inside the root (-C /dev/null: ndctl installs an "install libnvdimm"
# rule), one module at a time (modprobe treats a second name as a parameter
# of the first); a dependency of both chains is loaded with "boot". Absent
# or built-in modules are skipped.
# shellcheck disable=SC2034 # the three lists are read through a nameref
INITRAMFS_BOOT=(virtio_pci virtio_console 9pnet_virtio 9p)
INITRAMFS_PMEM=(nfit nd_pmem nd_btt dax_pmem_core dax_pmem device_dax
	crc32c_generic crc32c_intel libcrc32c xfs)
INITRAMFS_RDMA=(virtio_net ib_core ib_uverbs ib_umad iw_cm ib_cm rdma_cm rdma_ucm)

# Sections dropped from the boot modules: the ftrace call-site list
# (__mcount_loc: ftrace would patch every site at load, which is most of
# xfs.ko's 2 s under TCG; unpatched, each site stays a call to __fentry__,
# which returns at once). Cost: ftrace's function tracer cannot trace these
# modules' functions (kprobes can). The return-thunk and call-depth site
# lists (.return_sites, .call_sites) stay: since 6.9 a return left jumping
# to the unpatched return thunk reaches __warn_thunk, which WARNs and taints
# the kernel (W) at the first insmod; patching them costs a few tenths of a
# second per boot under TCG (docs/lab.md, "Booting"). BTF and ORC unwind
# data stay.
INITRAMFS_STRIP=(__mcount_loc .rela__mcount_loc)

initramfs_inputs_key() {
	cat "$REPO/scripts/guest/init" "$REPO/scripts/guest/stage2" \
		"$REPO/scripts/guest/kernel-log" "$REPO/scripts/lib/initramfs.sh" |
		sha256sum | cut -c1-16
}

# A kernel of the user's (scripts/lib/own-kernel.sh) has its image,
# config, modules and these outputs in its own directory BASE of the root
# (/opt/odp-rnic/kernels/KREL) instead of /boot, /lib/modules and $LAB:
# the functions below take BASE as an optional last argument.

# initramfs_path KVER [BASE]
initramfs_path() {
	if [ -n "${2:-}" ]; then echo "$ROOT$2/initrd.img"; else echo "$LAB/initrd-$1.img"; fi
}

# vmlinux_path KVER [BASE]: the uncompressed kernel that scripts/vm boots
# through PVH when it exists.
vmlinux_path() {
	if [ -n "${2:-}" ]; then echo "$ROOT$2/vmlinux"; else echo "$LAB/vmlinux-$1"; fi
}

# kernel_image KVER [BASE]: the kernel's bzImage.
kernel_image() {
	if [ -n "${2:-}" ]; then echo "$ROOT$2/vmlinuz"; else echo "$ROOT/boot/vmlinuz-$1"; fi
}

# kernel_config KVER [BASE]: the kernel's .config.
kernel_config() {
	if [ -n "${2:-}" ]; then echo "$ROOT$2/config"; else echo "$ROOT/boot/config-$1"; fi
}

# extract_vmlinux KVER [BASE]: writes vmlinux_path, the ELF image inside the
# kernel's bzImage (what the kernel's scripts/extract-vmlinux does, for the
# zstd, xz and gzip payloads), if the kernel can boot through PVH (QEMU then
# loads the ELF directly: no decompressor run under TCG). Otherwise, or if
# the extraction fails, removes it and scripts/vm boots the bzImage.
extract_vmlinux() {
	local kver=$1 out img
	out=$(vmlinux_path "$kver" "${2:-}")
	img=$(kernel_image "$kver" "${2:-}")
	# (a kernel of the user's given as a vmlinux has no bzImage: kept)
	[ -f "$img" ] || [ -z "${2:-}" ] || return 0
	rm -f "$out"
	grep -q '^CONFIG_PVH=y' "$(kernel_config "$kver" "${2:-}")" 2>/dev/null || return 0
	# shellcheck disable=SC2016
	in_root python3 -c '
import subprocess, sys
img = sys.stdin.buffer.read()
for magic, cmd in ((b"\x28\xb5\x2f\xfd", ["zstd", "-qdc"]), (b"\xfd7zXZ\x00", ["xz", "-qdc"]),
                   (b"\x1f\x8b\x08", ["gzip", "-qdc"])):
    at = img.find(magic)
    while at >= 0:
        p = subprocess.run(cmd, input=img[at:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if p.stdout[:4] == b"\x7fELF":
            sys.stdout.buffer.write(p.stdout)
            sys.exit(0)
        at = img.find(magic, at + 1)
sys.exit(1)' <"$img" >"$out.new" 2>/dev/null || { rm -f "$out.new"; return 0; }
	mv "$out.new" "$out"
}

# build_initramfs KVER [--if-stale] [--base BASE]: writes initramfs_path
# (and vmlinux_path, see extract_vmlinux). With BASE, the modules are those
# of BASE/lib/modules/KVER (a kernel of the user's).
build_initramfs() {
	local kver=$1 out key tmp m path name stale=0 base='' stamp mp=() missing=()
	shift
	while [ $# -gt 0 ]; do
		case "$1" in
		--if-stale) stale=1 ;;
		--base) base=$2; shift ;;
		esac
		shift
	done
	out=$(initramfs_path "$kver" "$base")
	key="$kver-$(initramfs_inputs_key)"
	stamp=$STAMPS/initramfs-$kver
	if [ -n "$base" ]; then
		stamp=$STAMPS/initramfs-own-$kver
		mp=(-d "$base")
		# the user's kernel changes under the same name: its image and
		# modules are part of the key
		key+="-$(stat -c '%s %Y' "$ROOT$base/lib/modules/$kver/modules.dep" \
			"$ROOT$base"/vmlinu[xz] 2>/dev/null | sha256sum | cut -c1-16)"
	fi
	if [ "$stale" = 1 ] && [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
		return 0
	fi
	[ -d "$ROOT$base/lib/modules/$kver" ] || die "kernel $kver is not installed in $ROOT$base"
	# What mounting the root and odp_rnic.ko need must be there, as modules
	# or built in (modprobe answers "builtin NAME" from modules.builtin).
	for m in "${INITRAMFS_BOOT[@]}" ib_core ib_uverbs; do
		in_root modprobe -C /dev/null "${mp[@]}" -S "$kver" --show-depends "$m" >/dev/null 2>&1 ||
			missing+=("$m")
	done
	[ ${#missing[@]} = 0 ] ||
		die "kernel $kver has neither a module nor a built-in driver for: ${missing[*]} (the guest mounts its root over virtio 9p and reaches the device's control port over virtio-console; odp_rnic.ko needs the RDMA core: CONFIG_VIRTIO_PCI, CONFIG_VIRTIO_CONSOLE, CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS, CONFIG_INFINIBAND, CONFIG_INFINIBAND_USER_ACCESS)"
	# Built in the root: cpio and the decompressors are the root's.
	mkdir -p "$ROOT/var/tmp"
	tmp=$(mktemp -d "$ROOT/var/tmp/initramfs.XXXXXX")
	mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,modules}
	cp "$ROOT/usr/bin/busybox" "$tmp/bin/busybox"
	for m in sh mount umount insmod switch_root mkdir cat echo sleep poweroff \
		grep cp ls mknod ln chmod hostname ip uname; do
		ln -s busybox "$tmp/bin/$m"
	done
	# (--strip-debug: a kernel of the user's may come with debug
	# information in its modules; Debian's have none)
	local g strip=(--strip-debug)
	for m in "${INITRAMFS_STRIP[@]}"; do strip+=(-R "$m"); done
	for g in boot pmem rdma; do
		local -n mods="INITRAMFS_${g^^}"
		for m in "${mods[@]}"; do
			in_root modprobe -C /dev/null "${mp[@]}" -S "$kver" --show-depends "$m" 2>/dev/null |
				awk -v g="$g" '$1 == "insmod" { print g, $2 }' || true
		done
	done | awk '
		!seen[$1, $2]++ { n++; grp[n] = $1; path[n] = $2; in_grp[$2] = in_grp[$2] " " $1 }
		END {
			for (i = 1; i <= n; i++) {
				p = path[i]
				if (done[p]++) continue
				g = grp[i]
				if (in_grp[p] ~ / boot/ || (in_grp[p] ~ / pmem/ && in_grp[p] ~ / rdma/)) g = "boot"
				print g, p
			}
		}' >"$tmp/modules/paths"
	: >"$tmp/modules/boot.order"
	: >"$tmp/modules/pmem.order"
	: >"$tmp/modules/rdma.order"
	# (boot first: a shared dependency moved to boot must precede the chains.)
	for g in boot pmem rdma; do
		awk -v g="$g" '$1 == g { print $2 }' "$tmp/modules/paths"
	done >"$tmp/modules/ordered"
	while read -r path; do
		name=$(basename "$path")
		g=$(awk -v p="$path" '$2 == p { print $1; exit }' "$tmp/modules/paths")
		case "$name" in
		*.ko.xz) name=${name%.xz}; in_root xz -dc "$path" >"$tmp/modules/$name" ;;
		*.ko.zst) name=${name%.zst}; in_root zstd -qdc "$path" >"$tmp/modules/$name" ;;
		*.ko.gz) name=${name%.gz}; in_root gzip -dc "$path" >"$tmp/modules/$name" ;;
		*.ko) cp "$ROOT$path" "$tmp/modules/$name" ;;
		*) continue ;;
		esac
		if [ -x "$ROOT/usr/bin/objcopy" ]; then
			in_root objcopy "${strip[@]}" "${tmp#"$ROOT"}/modules/$name"
		fi
		echo "$name" >>"$tmp/modules/$g.order"
	done <"$tmp/modules/ordered"
	rm -f "$tmp/modules/paths" "$tmp/modules/ordered"
	# (no module at all is right for a kernel with all of them built in)
	install -m 0755 "$REPO/scripts/guest/init" "$tmp/init"
	install -m 0755 "$REPO/scripts/guest/stage2" "$tmp/stage2"
	install -m 0755 "$REPO/scripts/guest/kernel-log" "$tmp/kernel-log"
	# Uncompressed: the kernel unpacks it without a decompressor (faster
	# under TCG than gunzip; QEMU loads it by DMA).
	in_root sh -c "cd ${tmp#"$ROOT"} && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet" >"$out.new"
	mv "$out.new" "$out"
	rm -rf "$tmp"
	extract_vmlinux "$kver" "$base"
	mkdir -p "$STAMPS"
	echo "$key" >"$stamp"
}
