#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-trust-perms.sh: with allow_other, another user reads a disk, a
# partition or info only if every layer file lets them (issue #12, item 9).
# Mounted as root; the other user is nobody (setpriv, no groups).
#   a     a.raw 0600 root                    refused, shown 0400 root
#   b     b.qcow2 0644 over b0.raw 0644      readable, shown 0444
#   c     c.qcow2 0644 over c0.raw 0600      refused, shown 0400
#   d     d.raw 0600 owned by nobody         readable by nobody only
#   .layerfs.log                             0400, the mounting user's
# Then mounted rw: writing needs write access to the top file as well.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img sfdisk setpriv
[ "$(id -u)" -eq 0 ] || skip "needs root (mounts for other users)"

NOBODY=65534
as_nobody() { setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups "$@"; }
as_other() { setpriv --reuid=65533 --regid=65533 --clear-groups "$@"; }
# reads the first 4 KiB; prints "ok" or the error text
try_read() { "$1" dd if="$2" of=/dev/null bs=4096 count=1 status=none 2>&1 && echo ok; }
expect_refused() {	# WHO PATH
	local out
	out=$(try_read "$1" "$2" || true)
	case $out in
	*"Permission denied"*) ok "$1: $2 refused (EACCES)" ;;
	*) fail "$1: $2: want EACCES, got: $out" ;;
	esac
}
expect_readable() {	# WHO PATH
	local out
	out=$(try_read "$1" "$2" || true)
	[ "$out" = ok ] || fail "$1: $2: want a read, got: $out"
	ok "$1: $2 readable"
}
expect_stat() {		# PATH "UID MODE"
	local got
	got=$(stat -c '%u %a' "$1")
	[ "$got" = "$2" ] || fail "stat $1: want '$2', got '$got'"
	ok "stat $1: $got"
}

chmod 0755 "$T"		# nobody must reach the mount point
mkdir -p "$T/img" "$T/mnt"
part() { printf 'label: dos\nstart=2048, size=4096, type=83\n' | sfdisk -q "$1"; }
truncate -s 8M "$T/img/a.raw" "$T/img/b0.raw" "$T/img/c0.raw" "$T/img/d.raw"
for f in a b0 c0 d; do part "$T/img/$f.raw"; done
qemu-img create -q -f qcow2 -F raw -b b0.raw "$T/img/b.qcow2"
qemu-img create -q -f qcow2 -F raw -b c0.raw "$T/img/c.qcow2"
chmod 0600 "$T/img/a.raw" "$T/img/c0.raw" "$T/img/d.raw"
chmod 0644 "$T/img/b0.raw" "$T/img/b.qcow2" "$T/img/c.qcow2"
chown $NOBODY:$NOBODY "$T/img/d.raw"
chmod 0755 "$T/img"

layerfs_mount "$T/mnt" "$T/img" -o allow_other
M=$T/mnt
for f in a/disk a/p1 b/disk b/p1 c/disk c/p1 d/disk d/p1; do
	[ -e "$M/$f" ] || fail "$f missing"
done
ok "mounted with allow_other"

expect_stat "$M/a/disk" "0 400"
expect_stat "$M/a/p1" "0 400"
expect_stat "$M/b/disk" "0 444"
expect_stat "$M/b/p1" "0 444"
expect_stat "$M/b/info" "0 444"
expect_stat "$M/c/disk" "0 400"
expect_stat "$M/d/disk" "$NOBODY 400"
expect_stat "$M/.layerfs.log" "0 400"

for f in a/disk a/p1 a/info c/disk c/p1 c/info .layerfs.log; do
	expect_refused as_nobody "$M/$f"
done
for f in b/disk b/p1 b/info d/disk d/p1 d/info; do
	expect_readable as_nobody "$M/$f"
done
for f in d/disk d/p1; do
	expect_refused as_other "$M/$f"
done
for f in a/disk c/p1 d/disk .layerfs.log; do
	expect_readable env "$M/$f"
done
ok "root reads every file"

# the kernel's check is not all: a mode changed under the mount (the
# attributes are cached for a day) is caught by the check at open
chmod 0600 "$T/img/b0.raw"
expect_refused as_nobody "$M/b/disk"
expect_refused as_nobody "$M/b/p1"
chmod 0644 "$T/img/b0.raw"
expect_readable as_nobody "$M/b/disk"

layerfs_umount "$M"

# rw: writing needs write access to the top (and read to every layer)
try_write() { "$1" dd if=/dev/zero of="$2" bs=4096 count=1 conv=notrunc status=none 2>&1 && echo ok; }
chown $NOBODY:$NOBODY "$T/img/c.qcow2"
layerfs_mount "$M" "$T/img" -o rw,allow_other
expect_stat "$M/b/disk" "0 644"
expect_stat "$M/c/disk" "$NOBODY 200"
out=$(try_write as_nobody "$M/b/disk" || true)
case $out in *"Permission denied"*) ok "nobody cannot write b (root's top)" ;;
*) fail "nobody writing b/disk: want EACCES, got: $out" ;; esac
out=$(try_write as_nobody "$M/c/disk" || true)
case $out in *"Permission denied"*) ok "nobody cannot write c (its base is 0600)" ;;
*) fail "nobody writing c/disk: want EACCES, got: $out" ;; esac
chown $NOBODY:$NOBODY "$T/img/b.qcow2"
out=$(try_write as_nobody "$M/b/p1" || true)
[ "$out" = ok ] || fail "nobody writing b/p1 (its top now nobody's): $out"
ok "nobody writes b/p1 once its top is nobody's"
layerfs_umount "$M"
finish
