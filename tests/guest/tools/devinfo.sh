#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# ibv_devinfo -v on the odp-rnic device: the device is there through the
# odprnic provider, port 1 is ACTIVE on Ethernet, and the ODP capabilities
# are exactly what the device's --odp switch says (read from the device
# over the control socket, not from the kernel):
#   on:  general ODP_SUPPORT; RC SEND, RECV, WRITE, READ (+ ATOMIC when the
#        device has atomics); implicit ODP only as the kernel advertises it
#   off: no ODP capability at all
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup ibv_devinfo

section() { sed -n "/^[[:space:]]*$1:/,/^[[:space:]]*[a-z_]*:[[:space:]]*\$/p" <<<"$DEVINFO" | sed 1d | sed '$d'; }
caps() { section "$1" | awk '{ print $1 }' | sort | tr '\n' ' ' | sed 's/ $//'; }

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
	case "$general" in
	ODP_SUPPORT | "ODP_SUPPORT ODP_SUPPORT_IMPLICIT") ok_general=1 ;;
	*) ok_general=0 ;;
	esac
	if [ "$ok_general" = 1 ] && [ "$rc" = "$want_rc" ]; then
		t_ok "ibv_devinfo -v: device ODP on: general_odp_caps '$general', rc_odp_caps '$rc'"
	else
		t_fail "ibv_devinfo -v: device ODP on: general_odp_caps ODP_SUPPORT, rc_odp_caps '$want_rc'" \
			"general_odp_caps: '$general'" "rc_odp_caps: '$rc'"
	fi
else
	if [ "$general" = "NO" ] && [ "$rc" = "NO" ]; then
		t_ok "ibv_devinfo -v: device ODP off: no ODP capability"
	else
		t_fail "ibv_devinfo -v: device ODP off: no ODP capability" \
			"general_odp_caps: '$general'" "rc_odp_caps: '$rc'"
	fi
fi
t_summary
