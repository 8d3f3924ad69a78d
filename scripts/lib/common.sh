# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
#
# Shared by scripts/lab-setup, scripts/vm, scripts/build-guest, scripts/test:
# where the lab lives, the lockfile, bind mounts into the root, timing.

# Repository top (scripts/lib/ is two levels below it).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The lab cache: everything built once lives here, outside the git tree.
LAB=${ODP_RNIC_LAB:-${XDG_CACHE_HOME:-$HOME/.cache}/odp-rnic}
ROOT=$LAB/root
LOCK=$LAB/lock.env
STAMPS=$LAB/stamps
# Debian mirror used for the root (the root's sources point at it too).
MIRROR=${ODP_RNIC_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${ODP_RNIC_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=trixie
# Kernel tracks the lab knows. oldstable (bookworm's 6.1) is built only by
# scripts/lab-setup --oldstable; a track missing from the lockfile is skipped.
TRACKS=(stable backports oldstable)

die() {
	echo "${PROG:-odp-rnic}: error: $*" >&2
	exit 1
}

need_root() {
	[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot and bind mounts need it)"
}

# now: seconds since the epoch with microseconds (bash 5).
now() { echo "$EPOCHREALTIME"; }

# elapsed START: seconds since START, one decimal.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# load_lock: reads $LOCK into KERNEL_stable, KERNEL_backports, ... (no-op if absent).
load_lock() {
	[ -f "$LOCK" ] || return 1
	# shellcheck source=/dev/null
	. "$LOCK"
}

# kernel_for SPEC: prints the locked kernel release for a track name
# (stable, backports) or for a version prefix such as 7.3 or 6.12.5.
kernel_for() {
	local spec=$1 t v
	load_lock || die "no lockfile at $LOCK: run scripts/lab-setup"
	for t in "${TRACKS[@]}"; do
		if [ "$spec" = "$t" ]; then
			v="KERNEL_$t"
			[ -n "${!v:-}" ] || die "track $t not in $LOCK (oldstable: scripts/lab-setup --oldstable)"
			echo "${!v}"
			return 0
		fi
	done
	for t in "${TRACKS[@]}"; do
		v="KERNEL_$t"
		case "${!v:-}" in
		"$spec"*) echo "${!v}"; return 0 ;;
		esac
	done
	# Any other installed kernel in the root matching the prefix.
	for v in "$ROOT"/boot/vmlinuz-"$spec"*; do
		[ -e "$v" ] && { basename "$v" | sed 's/^vmlinuz-//'; return 0; }
	done
	die "no kernel matches '$spec' (tracks: ${TRACKS[*]}; see $LOCK)"
}

# locked_kernels: every kernel release in the lockfile, one per line.
locked_kernels() {
	local t v
	load_lock || die "no lockfile at $LOCK: run scripts/lab-setup"
	for t in "${TRACKS[@]}"; do
		v="KERNEL_$t"
		[ -n "${!v:-}" ] && echo "${!v}"
	done
}

# unmount_all_under DIR: unmounts every mount point at or below DIR,
# deepest first. Safe to call when nothing is mounted.
unmount_all_under() {
	local dir=$1 m
	dir=$(realpath -m "$dir")
	awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
		sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m"
	done
}

# bind_root: makes proc, sys, dev and dev/pts available inside the root
# (for apt and chroot builds). Pair with unbind_root (from a trap).
bind_root() {
	mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
	mountpoint -q "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys"
	mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
	mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
}

unbind_root() {
	[ -d "$ROOT" ] || return 0
	local m
	for m in dev/pts dev sys proc; do
		if mountpoint -q "$ROOT/$m"; then
			umount "$ROOT/$m" 2>/dev/null || umount -l "$ROOT/$m"
		fi
	done
}

# in_root CMD...: runs CMD inside the root, with a clean environment.
in_root() {
	chroot "$ROOT" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

# in_root_ns CMD...: like in_root, in a private mount namespace with /proc
# and /dev mounted in the root (objtool, for one, needs /proc); the mounts
# vanish with the namespace, whatever happens.
in_root_ns() {
	# shellcheck disable=SC2016
	unshare -m --propagation private sh -c 'mount -t proc proc "$0/proc" &&
		mount --rbind /dev "$0/dev" && exec chroot "$0" /usr/bin/env -i \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		HOME=/root LANG=C.UTF-8 "$@"' "$ROOT" "$@"
}

# detect_accel: prints kvm when the host's KVM can run an unmodified guest
# (kvm_intel or kvm_amd), tcg otherwise. kvm_pvm provides /dev/kvm too but
# cannot boot stock kernels, so it counts as no KVM.
detect_accel() {
	if [ -e /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] &&
		{ [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; }; then
		echo kvm
	else
		echo tcg
	fi
}

# render_in_root RENDERER OUT JSON...: runs the guest-side renderer
# RENDERER (a path under /opt/odp-rnic/src) with the lab root's python3
# (the host may have none) over the JSON files, each named after its
# directory (the kernel), and writes its output to OUT.
render_in_root() {
	local renderer=$1 out=$2 tmp j d
	shift 2
	tmp=$(mktemp -d "$ROOT/tmp/render.XXXXXX")
	local rel=()
	for j in "$@"; do
		d=$(basename "$(dirname "$j")")
		cp "$j" "$tmp/$d.json"
		rel+=("/tmp/${tmp##*/}/$d.json")
	done
	chroot "$ROOT" python3 "$renderer" "${rel[@]}" >"$out"
	rm -rf "$tmp"
}
