# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# The boot initramfs of the lab, one per kernel: busybox, the kernel modules
# the lab needs (decompressed, so busybox insmod loads them; no module is read
# over 9p at boot), scripts/guest/init as /init and scripts/guest/stage2,
# which runs in the real root after switch_root. Built by scripts/lab-setup
# and rebuilt lazily by scripts/vm when its inputs change.
# Needs scripts/lib/common.sh.

# Modules loaded at boot, in this order; each one's dependencies are resolved
# with modprobe inside the root (-C /dev/null: ndctl installs an
# "install libnvdimm" rule), one module at a time (modprobe treats a
# second name as a parameter of the first). Absent or built-in ones are skipped.
INITRAMFS_MODULES=(
	virtio_pci virtio_console virtio_net
	9pnet_virtio 9p
	nfit nd_pmem nd_btt dax_pmem_core dax_pmem device_dax
	crc32c_generic crc32c_intel libcrc32c xfs
	ib_core ib_uverbs ib_umad iw_cm ib_cm rdma_cm rdma_ucm
)

initramfs_inputs_key() {
	cat "$REPO/scripts/guest/init" "$REPO/scripts/guest/stage2" \
		"$REPO/scripts/lib/initramfs.sh" | sha256sum | cut -c1-16
}

# initramfs_path KVER
initramfs_path() { echo "$LAB/initrd-$1.img"; }

# build_initramfs KVER [--if-stale]: writes $LAB/initrd-KVER.img.
build_initramfs() {
	local kver=$1 out key tmp m line path name
	out=$(initramfs_path "$kver")
	key="$kver-$(initramfs_inputs_key)"
	if [ "${2:-}" = --if-stale ] && [ -f "$out" ] && [ -f "$STAMPS/initramfs-$kver" ] &&
		[ "$(cat "$STAMPS/initramfs-$kver")" = "$key" ]; then
		return 0
	fi
	[ -d "$ROOT/lib/modules/$kver" ] || die "kernel $kver is not installed in $ROOT"
	# Built in the root: cpio and the decompressors are the root's.
	mkdir -p "$ROOT/var/tmp"
	tmp=$(mktemp -d "$ROOT/var/tmp/initramfs.XXXXXX")
	mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,modules}
	cp "$ROOT/usr/bin/busybox" "$tmp/bin/busybox"
	for m in sh mount umount insmod switch_root mkdir cat echo sleep poweroff \
		grep cp ls mknod ln; do
		ln -s busybox "$tmp/bin/$m"
	done
	: >"$tmp/modules/order"
	for m in "${INITRAMFS_MODULES[@]}"; do
		in_root modprobe -C /dev/null -S "$kver" --show-depends "$m" 2>/dev/null || true
	done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' >"$tmp/modules/paths"
	while read -r path; do
		name=$(basename "$path")
		case "$name" in
		*.ko.xz) name=${name%.xz}; in_root xz -dc "$path" >"$tmp/modules/$name" ;;
		*.ko.zst) name=${name%.zst}; in_root zstd -qdc "$path" >"$tmp/modules/$name" ;;
		*.ko.gz) name=${name%.gz}; in_root gzip -dc "$path" >"$tmp/modules/$name" ;;
		*.ko) cp "$ROOT$path" "$tmp/modules/$name" ;;
		*) continue ;;
		esac
		echo "$name" >>"$tmp/modules/order"
	done <"$tmp/modules/paths"
	line=$(wc -l <"$tmp/modules/order")
	[ "$line" -gt 0 ] || die "no modules found for $kver"
	install -m 0755 "$REPO/scripts/guest/init" "$tmp/init"
	install -m 0755 "$REPO/scripts/guest/stage2" "$tmp/stage2"
	# Uncompressed: the kernel unpacks it without a decompressor (faster
	# under TCG than gunzip; QEMU loads it by DMA).
	in_root sh -c "cd ${tmp#"$ROOT"} && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet" >"$out.new"
	mv "$out.new" "$out"
	rm -rf "$tmp"
	mkdir -p "$STAMPS"
	echo "$key" >"$STAMPS/initramfs-$kver"
}
