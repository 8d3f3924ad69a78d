# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# A kernel source tree of the user's, built and used with the lab root's
# toolchain (scripts/kernel-build). The tree is seen inside the root at the
# same absolute path as on the host (bind-mounted in a private mount
# namespace, or already there when the tree lives inside the root), so
# every path kbuild records (the modules' build link, .cmd files, debug
# info) is right on both sides. What scripts/kernel-build leaves in a tree
# is under DIR/.odprnic (ignored by the kernel's .gitignore):
#   kernel.config, kernel-debug.config, local.config  the fragments merged
#   config.key     what the tree was last configured with
#   build.log      the last build's output
#   build.env      KREL, BZIMAGE, VMLINUX, MODULES (after a build)
#   modules/lib/modules/KREL  the tree's modules (make modules_install)
# Needs scripts/lib/common.sh.

# tree_id DIR: 8 hex digits naming the tree by its absolute path.
tree_id() { printf '%s' "$(realpath "$1")" | sha256sum | cut -c1-8; }

# tree_localversion DIR: the tree's CONFIG_LOCALVERSION, so that two trees
# never share a `uname -r`.
tree_localversion() { echo "-odprnic-$(tree_id "$1")"; }

# tree_state DIR: where scripts/kernel-build keeps its files for DIR.
tree_state() { echo "$(realpath "$1")/.odprnic"; }

# tree_inner DIR: DIR's path inside the root (the same path, unless DIR is
# inside the root already).
tree_inner() {
	local dir
	dir=$(realpath "$1")
	case "$dir" in
	"$ROOT"/*) echo "${dir#"$ROOT"}" ;;
	*) echo "$dir" ;;
	esac
}

# in_root_tree DIR CMD...: runs CMD inside the root, in DIR, in a private
# mount namespace with /proc, /dev and DIR mounted; the mounts vanish with
# the namespace, whatever happens. Clean environment, as in_root.
in_root_tree() {
	local dir inner
	dir=$(realpath "$1")
	inner=$(tree_inner "$dir")
	shift
	[ -d "$ROOT$inner" ] || mkdir -p "$ROOT$inner"
	# shellcheck disable=SC2016 # expanded by the inner shell
	unshare -m --propagation private sh -c 'root=$0 dir=$1 inner=$2; shift 2
		mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 125
		if [ "$dir" != "$root$inner" ]; then mount --bind "$dir" "$root$inner" || exit 125; fi
		exec chroot "$root" /usr/bin/env -i \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LANG=C.UTF-8 sh -c "cd \"\$0\" && exec \"\$@\"" "$inner" "$@"' \
		"$ROOT" "$dir" "$inner" "$@"
}
