#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# New files appear whole under their name or not at all (issue #12, item
# 13).  layerimg create and layerfs -o newlayer are killed before the
# rename (LAYERFS_FAULT=create-before-rename): the final name must not
# exist, only a hidden .NAME.layerfs-tmp-* temporary; the next create gets
# the same name; a read-only mount neither shows nor removes the
# temporary; layerimg create and a writable mount remove it, but not one
# whose lock another process still holds.
. "$(dirname "$0")/lib.sh"
require_fuse
require python3
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

img=$T/img m=$T/mnt
mkdir -p "$img"
li() { "$LAYERIMG" "$@"; }
tmps() { (cd "$img" && ls -1A | grep -c "^\.$1\.layerfs-tmp-......$" || true); }
killed() {	# killed WHAT CMD...: CMD must die of SIGKILL
	local rc=0
	LAYERFS_FAULT=create-before-rename "$@" >/dev/null 2>&1 || rc=$?
	[ "$rc" -eq 137 ] || fail "$1: exit $rc under the fault, not SIGKILL"
}

li create -f vhd "$img/vm-L1.vhd" 8M >/dev/null || fail "create vm-L1.vhd"

# 1. layerimg create killed before the rename
killed li create -b "$img/vm-L1.vhd" --next-level
[ ! -e "$img/vm-L2.vhd" ] || fail "vm-L2.vhd exists after a crash"
[ "$(tmps vm-L2.vhd)" = 1 ] || fail "no temporary left: $(ls -A "$img")"
ok "layerimg create killed before the rename: no vm-L2.vhd, one temporary"

# 2. a read-only mount ignores the temporary and removes nothing
layerfs_mount "$m" "$img"
[ "$(ls "$m")" = vm-L1 ] || fail "read-only mount shows: $(ls "$m" | tr '\n' ' ')"
layerfs_umount "$m"
grep -q "not a disk image" "$MOUNT_ERR" && fail "the temporary was probed"
[ "$(tmps vm-L2.vhd)" = 1 ] || fail "a read-only mount removed the temporary"
ok "read-only mount: temporary neither shown nor removed"

# 3. the next layerimg create gets the same name and removes the temporary
li create -b "$img/vm-L1.vhd" --next-level >/dev/null || fail "create L2"
[ -s "$img/vm-L2.vhd" ] || fail "the next create did not make vm-L2.vhd"
[ "$(tmps vm-L2.vhd)" = 0 ] || fail "layerimg create left the temporary"
li check "$img/vm-L2.vhd" >/dev/null || fail "layerimg check vm-L2.vhd"
ok "next layerimg create: same name vm-L2.vhd, temporary removed"

# 4. -o newlayer killed before the rename (the scan runs before mounting)
killed "$LAYERFS" -f -o newlayer=vm-L2 "$img" "$m"
grep -qs " $(cd "$m" && pwd -P) fuse" /proc/self/mounts &&
	fail "a killed daemon left a mount"
[ ! -e "$img/vm-L3.vhd" ] || fail "vm-L3.vhd exists after a crash"
[ "$(tmps vm-L3.vhd)" = 1 ] || fail "no temporary: $(ls -A "$img")"
ok "newlayer killed before the rename: no vm-L3.vhd, one temporary"

# 5. a temporary whose lock another process holds is left alone
touch "$img/.other.vhd.layerfs-tmp-abcdef"
python3 - "$img/.other.vhd.layerfs-tmp-abcdef" "$T/locked" <<'PY' &
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(120)
PY
holder=$!
track_pid "$holder"
for _ in $(seq 100); do [ -e "$T/locked" ] && break; sleep 0.1; done
[ -e "$T/locked" ] || fail "the lock holder did not start"

# 6. a writable mount removes the dead creator's temporary; newlayer gets
#    the same name
layerfs_mount "$m" "$img" -o newlayer=vm-L2
[ -s "$img/vm-L3.vhd" ] || fail "newlayer did not make vm-L3.vhd"
[ "$(tmps vm-L3.vhd)" = 0 ] || fail "a writable mount left the temporary"
[ "$(tmps other.vhd)" = 1 ] || fail "a locked temporary was removed"
layerfs_umount "$m"
ok "writable mount: stale temporary removed, locked one kept, same name vm-L3.vhd"

kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
layerfs_mount "$m" "$img" -o rw
layerfs_umount "$m"
[ "$(tmps other.vhd)" = 0 ] || fail "an unlocked temporary survived -o rw"
ok "the temporary goes once its lock is released"
finish
