#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR MIT
#
# librpma (Debian's librpma0) writing to a file on FS-DAX through the
# device: rpma-fsdax.c, built here against librpma-dev, follows librpma's
# write-to-persistent example (a server registers its FS-DAX mapping and
# hands the descriptor to the client in the connection's private data; the
# client rpma_write()s and rpma_flush()es). On FS-DAX librpma's plain
# registration is refused (FOLL_LONGTERM) and librpma falls back to
# IBV_ACCESS_ON_DEMAND when the device offers ODP: with ODP on the bytes
# must land in the file, through device page faults; with ODP off the
# server must fail with librpma's own message, promptly.
set -uo pipefail
. "$(dirname "$0")/common.bash"
tools_setup librpma
LIMIT=${LIMIT:-60}
CM_PORT=${CM_PORT:-7175}
OFFSET=$((1024 * 1024 + 4096 - 100))
LENGTH=8292

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! out=$(gcc -Wall -Wextra -Werror -O2 -o "$work/rpma-fsdax" "$(dirname "$0")/rpma-fsdax.c" \
	-lrpma -libverbs 2>&1); then
	t_fail "build rpma-fsdax against librpma-dev" "$out"
	t_summary
	exit 1
fi
if ! mnt=$(python3 -c "import sys; sys.path.insert(0, '$(dirname "$0")/../odp')
import daxlib; daxlib.ensure_dax_mount(); print(daxlib.MOUNT)" 2>&1); then
	t_fail "XFS dax=always on pmem" "$mnt"
	t_summary
	exit 1
fi
file=$mnt/librpma.bin
rm -f "$file"
dd if=/dev/zero of="$file" bs=1M count=2 status=none
head -c "$LENGTH" /dev/urandom >"$work/src"

odp_mark
timeout -k 5 "$LIMIT" "$work/rpma-fsdax" server "$IPADDR" "$CM_PORT" "$file" >"$work/srv" 2>&1 &
spid=$!
for ((i = 0; i < 400; i++)); do
	grep -q '^listening' "$work/srv" && break
	kill -0 "$spid" 2>/dev/null || break
	sleep 0.05
done
if grep -q '^listening' "$work/srv"; then
	CLI_OUT=$(timeout -k 5 "$LIMIT" "$work/rpma-fsdax" client "$IPADDR" "$CM_PORT" "$OFFSET" "$work/src" 2>&1)
	CLI_RC=$?
else
	CLI_OUT="(not run: the server is not listening)" CLI_RC=-
fi
wait "$spid"
SRV_RC=$?
SRV_OUT=$(<"$work/srv")
odp_delta
detail() { printf '%s\n' "server exit $SRV_RC:" "$SRV_OUT" "client exit $CLI_RC:" "$CLI_OUT"; }

if [ "$ODP" = true ]; then
	desc="librpma write + flush of $LENGTH bytes into an FS-DAX file (ODP fallback)"
	if [ "$SRV_RC" != 0 ] || [ "$CLI_RC" != 0 ]; then
		t_fail "$desc" "$(detail)"
	elif ! cmp -s -n "$LENGTH" -i "0:$OFFSET" "$work/src" "$file"; then
		t_fail "$desc: the file does not hold the bytes written" \
			"$(detail; cmp -n "$LENGTH" -i "0:$OFFSET" "$work/src" "$file" 2>&1)"
	elif [ "${FAULTS:-0}" = 0 ]; then
		t_fail "$desc: no device page fault (was the FS-DAX mapping registered with ODP?)" "$(detail)"
	elif [ "${VIOLATIONS:-0}" != 0 ]; then
		t_fail "$desc: the DMA oracle recorded $VIOLATIONS violations" "$(detail)"
	else
		t_ok "$desc: byte-exact in the file, device page faults +$FAULTS, violations +$VIOLATIONS"
	fi
else
	desc="librpma on FS-DAX with the device's ODP off: refused with librpma's message"
	msg=$(grep -m1 'Peer does not support On-Demand Paging' <<<"$SRV_OUT")
	if [ "$SRV_RC" = 2 ] && [ -n "$msg" ]; then
		t_ok "$desc (${msg#*: })"
	else
		t_fail "$desc" "$(detail)"
	fi
fi
rm -f "$file"
t_summary
