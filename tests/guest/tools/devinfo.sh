#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# ibv_devinfo -v on the odp-rnic device: the device is there through the
# odprnic provider, port 1 is ACTIVE on Ethernet, and the ODP capabilities
# are exactly what the device's --odp switch says (read from the device
# over the control socket, not from the kernel):
#   on:  general ODP_SUPPORT and ODP_SUPPORT_IMPLICIT; RC SEND, RECV, WRITE,
#        READ (+ ATOMIC when the device has atomics); UD SEND, RECV when the
#        device has UD QPs
#   off: no ODP capability at all (general none, every transport NO SUPPORT)
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup ibv_devinfo

# The capability names ibv_devinfo lists under "NAME:" (one per line, five
# tabs in), sorted, on one line; "NO" for "NO SUPPORT".
caps() {
	awk -v s="$1:" '$1 == s && NF == 1 { on = 1; next }
		on && /^\t\t\t\t\t/ { print $1; next }
		{ on = 0 }' <<<"$DEVINFO" | sort | tr '\n' ' ' | sed 's/ $//'
}

if grep -q "hca_id:[[:space:]]*$IBDEV" <<<"$DEVINFO" &&
	grep -q 'vendor_id:[[:space:]]*0x1234' <<<"$DEVINFO" &&
	grep -q 'vendor_part_id:[[:space:]]*3504' <<<"$DEVINFO"; then
	t_ok "ibv_devinfo -v: $IBDEV (vendor 0x1234, part 0x0db0) through the odprnic provider"
else
	t_fail "ibv_devinfo -v: $IBDEV (vendor 0x1234, part 0x0db0)" "$DEVINFO"
fi

if grep -q 'state:[[:space:]]*PORT_ACTIVE' <<<"$DEVINFO" &&
	grep -q 'link_layer:[[:space:]]*Ethernet' <<<"$DEVINFO"; then
	t_ok "ibv_devinfo -v: port 1 PORT_ACTIVE, link layer Ethernet"
else
	t_fail "ibv_devinfo -v: port 1 PORT_ACTIVE, link layer Ethernet" "$DEVINFO"
fi

general=$(caps general_odp_caps)
rc=$(caps rc_odp_caps)
if [ "$ODP" = true ]; then
	want_rc="SUPPORT_READ SUPPORT_RECV SUPPORT_SEND SUPPORT_WRITE"
	has_atomics && want_rc="SUPPORT_ATOMIC $want_rc"
	# the device offers implicit ODP whenever its ODP is on
	# (docs/hardware.md, "Capabilities")
	want_general="ODP_SUPPORT ODP_SUPPORT_IMPLICIT"
	ud=$(caps ud_odp_caps)
	# UD QPs as the kernel and device create them (pyverbs probe)
	if [ "$(ud_probe 2>&1)" = yes ]; then
		want_ud="SUPPORT_RECV SUPPORT_SEND"
	else
		want_ud=NO
	fi
	if [ "$general" = "$want_general" ] && [ "$rc" = "$want_rc" ] && [ "$ud" = "$want_ud" ]; then
		t_ok "ibv_devinfo -v: device ODP on: general_odp_caps '$general', rc_odp_caps '$rc', ud_odp_caps '$ud'"
	else
		t_fail "ibv_devinfo -v: device ODP on: general_odp_caps '$want_general', rc_odp_caps '$want_rc', ud_odp_caps '$want_ud'" \
			"general_odp_caps: '$general'" "rc_odp_caps: '$rc'" "ud_odp_caps: '$ud'"
	fi
else
	# ibv_devinfo prints nothing under general_odp_caps without ODP_SUPPORT
	# and "NO SUPPORT" under each transport
	others="$(caps uc_odp_caps)/$(caps ud_odp_caps)/$(caps xrc_odp_caps)"
	if [ -z "$general" ] && [ "$rc" = NO ] && [ "$others" = NO/NO/NO ]; then
		t_ok "ibv_devinfo -v: device ODP off: no ODP capability (general none; rc, uc, ud, xrc NO SUPPORT)"
	else
		t_fail "ibv_devinfo -v: device ODP off: no ODP capability" \
			"general_odp_caps: '$general'" "rc_odp_caps: '$rc'" "uc/ud/xrc: '$others'"
	fi
fi
t_summary
