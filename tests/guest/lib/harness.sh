# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# Guest test harness: source it from a guest test script.
#
#   . "$ODP_RNIC_TESTS/lib/harness.sh"
#   t_ok "description"                  # prints "ok N - description"
#   t_fail "description" [detail...]    # prints "not ok N - description"
#   t_skip "description" "reason"       # prints "ok N - description # SKIP reason"
#   t_check "description" CMD [ARG...]  # runs CMD: t_ok if it succeeds, else
#                                       # t_fail with its output
#   t_summary                           # prints "# NAME: P passed, F failed,
#                                       # S skipped"; returns 1 if any failed
#   t_has_device                        # true when the odp-rnic PCI function
#                                       # is present
#   t_expect_kernel_warning ERE         # declares a kernel log line (WARNING:,
#                                       # BUG:, ...) this test provokes on
#                                       # purpose: prints
#                                       # "# expect-kernel-warning: ERE"
#
# tests/guest/run-all counts the ok / not ok / SKIP lines of every test and
# fails the boot on a kernel log line that no test declared.

T_NAME=${T_NAME:-$(basename "${0%.sh}")}
T_N=0 T_PASS=0 T_FAIL=0 T_SKIP=0

t_ok() {
	T_N=$((T_N + 1)) T_PASS=$((T_PASS + 1))
	echo "ok $T_N - $1"
}

t_fail() {
	T_N=$((T_N + 1)) T_FAIL=$((T_FAIL + 1))
	echo "not ok $T_N - $1"
	shift
	local l
	for l in "$@"; do
		printf '%s\n' "$l" | sed 's/^/#   /'
	done
}

t_skip() {
	T_N=$((T_N + 1)) T_SKIP=$((T_SKIP + 1))
	echo "ok $T_N - $1 # SKIP ${2:-}"
}

t_check() {
	local desc=$1 out
	shift
	if out=$("$@" 2>&1); then
		t_ok "$desc"
	else
		t_fail "$desc" "\$ $*" "$out"
		return 1
	fi
}

t_summary() {
	echo "# $T_NAME: $T_PASS passed, $T_FAIL failed, $T_SKIP skipped"
	[ "$T_FAIL" = 0 ]
}

# The odp-rnic PCI function is found through the driver binding when the
# module is loaded, else by its ids (docs/hardware.md, "PCI identity").
t_has_device() {
	local d
	for d in /sys/bus/pci/drivers/odp_rnic/*:*; do
		[ -e "$d" ] && return 0
	done
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor" 2>/dev/null):$(cat "$d/device" 2>/dev/null)" = 0x1234:0x0db0 ] && return 0
	done
	return 1
}

# t_expect_kernel_warning ERE: the kernel log lines matching ERE (an awk
# regular expression) that the kernel logs while this test runs are
# expected (scripts/guest/kernel-log).
t_expect_kernel_warning() {
	echo "# expect-kernel-warning: $1"
}
