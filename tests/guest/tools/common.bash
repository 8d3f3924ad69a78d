# SPDX-License-Identifier: Apache-2.0 OR MIT
# shellcheck shell=bash
#
# Shared by the tests in tests/guest/tools/ (unmodified RDMA tools against
# the odprnic provider). Not a test itself (run-all runs only *.sh, *.py):
#
#   . "$(dirname "$0")/common.bash"
#
#   tools_setup      harness, device, netdev and GID (odprnic_netup); ODP
#                    setting of the device (ODP=true|false) and whether the
#                    kernel driver runs the data path (DATAPATH=1|0). On
#                    anything missing it prints one skip line and exits.
#   odprnic_netup    finds the odp-rnic RDMA device and its netdev, brings
#                    the netdev up with 192.0.2.2/24 (when it has no IPv4
#                    address yet) and waits until port 1 is ACTIVE and GID
#                    0 is set. Sets IBDEV (e.g. odprnic0), NETDEV (eth0),
#                    IPADDR and GID0; returns 1 with NETUP_ERR on failure.
#   run_pair LIMIT SERVER_CMD... -- CLIENT_CMD...
#                    runs the server in the background, waits until it
#                    listens on TCP $PORT (18515) or exits, runs the
#                    client; both bounded by `timeout LIMIT`. Sets SRV_RC, CLI_RC,
#                    SRV_OUT, CLI_OUT (output text).
#   pair_ok          true when both sides exited 0
#   pair_refused     true when both sides exited non-zero, neither by
#                    timeout (124/137): a clean refusal, no hang
#   pair_detail      the two exit codes and outputs, for t_fail
#
# RoCE GIDs come from the netdev's addresses: GID 0 is the link-local
# default GID (RoCE v1, from the MAC). The tools use GID index 0 (-g 0,
# perftest -x 0).

NETUP_ADDR=${NETUP_ADDR:-192.0.2.2/24}
PORT=${PORT:-18515}
ODP_RNIC_TESTS=${ODP_RNIC_TESTS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PYTHONPATH=$ODP_RNIC_TESTS/lib${PYTHONPATH:+:$PYTHONPATH}
# shellcheck source=../lib/harness.sh
. "$ODP_RNIC_TESTS/lib/harness.sh"

# The RDMA device whose PCI function is odp-rnic (docs/hardware.md, "PCI
# identity").
odprnic_ibdev() {
	local d
	for d in /sys/class/infiniband/*; do
		[ -e "$d/device/vendor" ] || continue
		if [ "$(cat "$d/device/vendor"):$(cat "$d/device/device")" = 0x1234:0x0db0 ]; then
			basename "$d"
			return 0
		fi
	done
	return 1
}

odprnic_netup() {
	local i n st
	NETUP_ERR=''
	if ! IBDEV=$(odprnic_ibdev); then
		NETUP_ERR="no RDMA device on the odp-rnic PCI function (is odp_rnic.ko loaded?)"
		return 1
	fi
	NETDEV=''
	# the driver's netdev: the PCI function's, else port 1's GID 0 netdev
	for n in "/sys/class/infiniband/$IBDEV/device/net/"*; do
		[ -e "$n" ] && NETDEV=$(basename "$n") && break
	done
	if [ -z "$NETDEV" ]; then
		NETDEV=$(cat "/sys/class/infiniband/$IBDEV/ports/1/gid_attrs/ndevs/0" 2>/dev/null || true)
	fi
	if [ -z "$NETDEV" ]; then
		NETUP_ERR="$IBDEV has no netdev"
		return 1
	fi
	ip link set "$NETDEV" up || { NETUP_ERR="ip link set $NETDEV up failed"; return 1; }
	if ! ip -4 -o addr show dev "$NETDEV" | grep -q ' inet '; then
		ip addr add "$NETUP_ADDR" dev "$NETDEV" ||
			{ NETUP_ERR="ip addr add $NETUP_ADDR dev $NETDEV failed"; return 1; }
	fi
	IPADDR=$(ip -4 -o addr show dev "$NETDEV" | awk '{ print $4; exit }')
	IPADDR=${IPADDR%/*}
	# the GID cache follows netdev events asynchronously
	GID0=''
	for ((i = 0; i < 100; i++)); do
		GID0=$(cat "/sys/class/infiniband/$IBDEV/ports/1/gids/0" 2>/dev/null || true)
		st=$(cat "/sys/class/infiniband/$IBDEV/ports/1/state" 2>/dev/null || true)
		case "$st:$GID0" in
		*ACTIVE*:0000:0000:0000:0000:0000:0000:0000:0000) ;;
		*ACTIVE*:?*) return 0 ;;
		esac
		sleep 0.1
	done
	NETUP_ERR="$IBDEV port 1: state '$st', GID 0 '$GID0' after 10 s"
	return 1
}

# The device's ODP switch, from the device itself (control socket).
device_odp() {
	python3 -c 'from odprnic_ctl import Control
with Control.open() as c:
    print("true" if c.version()["odp"] else "false")'
}

# "PAGE_FAULTS VIOLATIONS": the device's cumulative counters.
dev_counters() {
	python3 -c 'from odprnic_ctl import Control
with Control.open() as c:
    n = c.counters()["counters"]
    print(n["page_faults"], n["violations"])'
}

# ODP bookkeeping around a run: odp_mark before, odp_delta after sets
# FAULTS and VIOLATIONS to what the run added (empty when unreadable).
odp_mark() { read -r M_FAULTS M_VIOL < <(dev_counters 2>/dev/null || echo "- -"); }
odp_delta() {
	local f v
	read -r f v < <(dev_counters 2>/dev/null || echo "- -")
	FAULTS='' VIOLATIONS=''
	case "$f$v$M_FAULTS$M_VIOL" in *-*) return ;; esac
	# shellcheck disable=SC2034 # for the tests that source this
	FAULTS=$((f - M_FAULTS)) VIOLATIONS=$((v - M_VIOL))
}

tools_setup() {
	local what=${1:-tools}
	if ! t_has_device; then
		t_skip "$what" "no odp-rnic device"
		t_summary
		exit 0
	fi
	if ! odprnic_netup; then
		t_fail "$what: device, netdev and GID 0" "$NETUP_ERR"
		t_summary
		exit 1
	fi
	if ! ODP=$(device_odp 2>&1); then
		t_fail "$what: the device's ODP setting over the control socket" "$ODP"
		t_summary
		exit 1
	fi
	DEVINFO=$(ibv_devinfo -v -d "$IBDEV" 2>&1) || true
	# max_qp is 0 while the kernel driver runs without the data path
	# (device interface 1.0 and no force_datapath)
	if [ "$(awk '$1 == "max_qp:" { print $2; exit }' <<<"$DEVINFO")" -gt 0 ] 2>/dev/null; then
		DATAPATH=1
	else
		DATAPATH=0
		# fw_ver is the device's interface version (0.MAJOR.MINOR):
		# from 1.1 on the device has the data path, so running
		# without it is the driver's failure, not a skip
		local fw
		fw=$(awk '$1 == "fw_ver:" { print $2; exit }' <<<"$DEVINFO")
		if [ "${fw##*.}" -ge 1 ] 2>/dev/null; then
			t_fail "$what: device interface $fw has the data path, the driver runs without it (max_qp 0)" \
				"$(dmesg | grep -i odp_rnic | tail -5)"
			t_summary
			exit 1
		fi
	fi
	echo "# $IBDEV on $NETDEV ($IPADDR), GID 0 $GID0, device ODP $ODP, data path $DATAPATH, kernel $(uname -r)"
}

# Whether the kernel and device create UD QPs: probed with pyverbs
# (python3-pyverbs) the standard way; EOPNOTSUPP means no. Prints "yes",
# "no", or the error.
ud_probe() {
	python3 - "$IBDEV" <<'PY'
import errno, sys
import pyverbs.enums as e
from pyverbs.device import Context
from pyverbs.pd import PD
from pyverbs.cq import CQ
from pyverbs.qp import QP, QPCap, QPInitAttr
from pyverbs.pyverbs_error import PyverbsRDMAError
with Context(name=sys.argv[1]) as ctx:
    pd = PD(ctx)
    cq = CQ(ctx, 16)
    cap = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1, max_recv_sge=1)
    try:
        QP(pd, QPInitAttr(qp_type=e.IBV_QPT_UD, scq=cq, rcq=cq, cap=cap)).close()
        print("yes")
    except PyverbsRDMAError as ex:
        print("no" if ex.error_code == errno.EOPNOTSUPP else ex)
PY
}

# Implicit ODP as the kernel advertises it (general_odp_caps).
has_implicit_odp() {
	sed -n '/general_odp_caps:/,/rc_odp_caps:/p' <<<"$DEVINFO" | grep -q ODP_SUPPORT_IMPLICIT
}

has_atomics() {
	! grep -q 'atomic_cap:.*ATOMIC_NONE' <<<"$DEVINFO"
}

# Waits until something listens on TCP $PORT (the server is ready).
wait_listen() {
	local i
	for ((i = 0; i < 200; i++)); do
		ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . && return 0
		kill -0 "$1" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

run_pair() {
	local limit=$1 srv=() cli=() sf cf spid
	shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do srv+=("$1"); shift; done
	shift
	cli=("$@")
	sf=$(mktemp) cf=$(mktemp)
	timeout -k 5 "$limit" "${srv[@]}" >"$sf" 2>&1 &
	spid=$!
	# a server that refused at start-up does not listen: the client runs
	# anyway, to see that it refuses too
	wait_listen "$spid" || echo "(the server never listened on TCP $PORT)" >>"$sf"
	timeout -k 5 "$limit" "${cli[@]}" >"$cf" 2>&1
	CLI_RC=$?
	wait "$spid"
	SRV_RC=$?
	SRV_OUT=$(<"$sf") CLI_OUT=$(<"$cf")
	rm -f "$sf" "$cf"
	PAIR_CMD="server: ${srv[*]}; client: ${cli[*]}"
}

pair_ok() { [ "$SRV_RC" = 0 ] && [ "$CLI_RC" = 0 ]; }

pair_refused() {
	case "$SRV_RC:$CLI_RC" in
	0:* | *:0 | 124:* | *:124 | 137:* | *:137) return 1 ;;
	esac
	return 0
}

pair_detail() {
	printf '%s\n' "$PAIR_CMD" "server exit $SRV_RC:" "$SRV_OUT" "client exit $CLI_RC:" "$CLI_OUT"
}
