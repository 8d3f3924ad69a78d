#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# The guest's channel to the device's control socket: the virtio-serial
# port org.odp-rnic.control, and one JSON request/reply round trip over it
# through tests/guest/lib/odprnic_ctl.py (answered by the device, or by the
# stub listener of scripts/vm --control-stub).
. "$ODP_RNIC_TESTS/lib/harness.sh"

port=$(python3 -c 'import odprnic_ctl; print(odprnic_ctl.find_port() or "")')
if [ -z "$port" ]; then
	t_skip "control port present" "not wired (no device; scripts/vm --control-stub wires a stub)"
	t_summary
	exit
fi
t_ok "control port present ($port)"
t_check "port linked as /dev/virtio-ports/org.odp-rnic.control" \
	test "$(readlink -f /dev/virtio-ports/org.odp-rnic.control)" = "$port"
if reply=$(timeout 20 python3 -m odprnic_ctl '{"op":"version"}' 2>&1) &&
	python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert isinstance(r, dict)' "$reply"; then
	t_ok "version request answered: $reply"
else
	t_fail "version request answered" "$reply"
fi
t_summary
