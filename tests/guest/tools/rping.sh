#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# rping (rdmacm-utils) between two processes in the guest over the device's
# IP address: RDMA CM resolves the address and route, connects an RC QP
# pair through the kernel's CM (MADs on QP1), and every ping is a SEND of
# the buffer advertisement, an RDMA READ by the server, a SEND, an RDMA
# WRITE back. -V makes the client check each ping's bytes; both sides must
# print every ping in order.
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup rping
LIMIT=${LIMIT:-60}
COUNT=${COUNT:-20}
SIZE=${SIZE:-128}
CM_PORT=${CM_PORT:-7174}

# rping listens on the RDMA CM port space, which ss does not show
wait_cm_listen() {
	local i
	for ((i = 0; i < 200; i++)); do
		rdma resource show cm_id 2>/dev/null | grep -q "state LISTEN.*:$CM_PORT\b" && return 0
		kill -0 "$1" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# pings_in OUT PREFIX: true when OUT holds PREFIX rdma-ping-0 .. COUNT-1, in order
pings_in() {
	local want got
	want=$(seq 0 $((COUNT - 1)) | sed "s/^/$2rdma-ping-/")
	got=$(sed -n "s/^\($2rdma-ping-[0-9]*\): .*/\1/p" <<<"$1")
	[ "$got" = "$want" ]
}

sf=$(mktemp)
timeout -k 5 "$LIMIT" rping -s -a "$IPADDR" -p "$CM_PORT" -C "$COUNT" -S "$SIZE" -v >"$sf" 2>&1 &
spid=$!
wait_cm_listen "$spid" || echo "(the server never listened on RDMA CM port $CM_PORT)" >>"$sf"
CLI_OUT=$(timeout -k 5 "$LIMIT" rping -c -a "$IPADDR" -p "$CM_PORT" -C "$COUNT" -S "$SIZE" -v -V 2>&1)
# shellcheck disable=SC2034 # CLI_RC, SRV_RC, PAIR_CMD: read by pair_ok, pair_detail
CLI_RC=$?
wait "$spid"
# shellcheck disable=SC2034
SRV_RC=$?
SRV_OUT=$(<"$sf")
rm -f "$sf"
# shellcheck disable=SC2034
PAIR_CMD="rping -s/-c -a $IPADDR -p $CM_PORT -C $COUNT -S $SIZE -v (client -V)"
desc="rping -a $IPADDR -C $COUNT -S $SIZE -V"
if ! pair_ok; then
	t_fail "$desc" "$(pair_detail)"
elif ! pings_in "$CLI_OUT" "ping data: " || ! pings_in "$SRV_OUT" "server ping data: "; then
	t_fail "$desc: not every ping was seen, in order, on both sides" "$(pair_detail)"
else
	t_ok "$desc: $COUNT pings verified over RDMA CM ($IBDEV, $NETDEV)"
fi
t_summary
