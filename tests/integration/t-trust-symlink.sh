#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-trust-symlink: files of IMAGEDIR get the same confinement as parents.
#   - a top-level symbolic link to an image outside IMAGEDIR is left out,
#     with an error naming it (stderr, .layerfs.log and its summary), even
#     under -o rw, and the outside file is neither served nor changed;
#   - links whose targets lie inside IMAGEDIR (relative or absolute) are
#     served;
#   - with -o allow_outside the outside image is served;
#   - a parent that is a link leading out of IMAGEDIR is refused.
# (That a path swapped for such a link after the checks cannot be opened
# either is shown by the unit test io_open_beneath_confines.)
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io

d=$T/img
out=$T/outside
mkdir -p "$d/sub" "$out"

mkimg() {	# mkimg FILE SEED: a 4 MiB qcow2 with a pattern at 1 MiB
	qemu-img create -q -f qcow2 "$1" 4M || fail "qemu-img create $1"
	qemu-io -f qcow2 -c "write -P $2 1M 64k" "$1" >/dev/null ||
		fail "qemu-io write $1"
}
mkimg "$out/secret.qcow2" 0x5e
mkimg "$d/plain.qcow2" 0x11
mkimg "$d/sub/inner.qcow2" 0x22
mkimg "$d/sub/inner2.qcow2" 0x33
ln -s "$out/secret.qcow2" "$d/link.qcow2"	# leads out
ln -s sub/inner.qcow2 "$d/in.qcow2"		# relative, inside
ln -s "$d/sub/inner2.qcow2" "$d/inabs.qcow2"	# absolute, inside
# a child whose parent is a link out of IMAGEDIR
ln -s "$out/secret.qcow2" "$d/sub/p.qcow2"
(cd "$d" && qemu-img create -q -f qcow2 -b sub/p.qcow2 -F qcow2 child.qcow2) ||
	fail "qemu-img create child.qcow2"
secret_sum=$(sha_of "$out/secret.qcow2")
qemu-img convert -O raw "$out/secret.qcow2" "$T/secret.raw"

## 1. -o rw: the outside link is left out and logged; inside links served
m=$T/m1
layerfs_mount "$m" "$d" -o rw
expect_dirs "$m" plain in inabs
expect_error "$MOUNT_ERR" link.qcow2 "outside"
expect_error "$m/.layerfs.log" link.qcow2 "outside"
grep -q "^left out: $d/link.qcow2: " "$m/.layerfs.log" ||
	fail "the summary does not name link.qcow2: $(tr '\n' '|' <"$m/.layerfs.log")"
ok "the summary of .layerfs.log names link.qcow2"
expect_error "$m/.layerfs.log" child.qcow2 "outside"
qemu-img convert -O raw "$d/sub/inner.qcow2" "$T/inner.raw"
qemu-img convert -O raw "$d/sub/inner2.qcow2" "$T/inner2.raw"
expect_same "$m/in/disk" "$T/inner.raw" "relative link inside IMAGEDIR is served"
expect_same "$m/inabs/disk" "$T/inner2.raw" "absolute link inside IMAGEDIR is served"
layerfs_umount "$m"
[ "$(sha_of "$out/secret.qcow2")" = "$secret_sum" ] ||
	fail "the outside image changed"
ok "the outside image is unchanged"

## 2. -o allow_outside: the outside image is served (read-only)
m=$T/m2
layerfs_mount "$m" "$d" -o allow_outside
expect_dirs "$m" plain in inabs link child
expect_same "$m/link/disk" "$T/secret.raw" "allow_outside: the link's target is served"
expect_same "$m/child/disk" "$T/secret.raw" "allow_outside: the linked parent is followed"
expect_no_error "$m/.layerfs.log" link.qcow2
layerfs_umount "$m"

finish
