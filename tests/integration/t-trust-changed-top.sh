#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A writable top layer whose file changes behind the daemon.  For a VHD,
# a VHDX and a QCOW2 top mounted -o rw: data written and fsync'ed, then
# the file cut to 1 MiB by another process (rw_base: a standalone top).  The next write (an
# overwrite of data already there: no allocation), a new allocation and
# an fsync must all fail with EIO, reads of what lay past the cut too;
# the daemon logs "the file changed behind layerfs" naming the file, the
# file stays 1 MiB, and `layerimg check` finds it damaged.  Then a VHDX
# top replaced by `mv other.vhdx top.vhdx`: writes give EIO instead of
# going into the old, unlinked file, and the file now under the name is
# left alone.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img python3 truncate
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

MiB=$((1 << 20))

# io DISK OP OFF LEN: OP is write (pwrite of LEN bytes), read (pread of
# LEN bytes) or fsync, in a fresh open each; prints "ok" or the errno
io() {
	python3 - "$@" <<'EOF'
import os, sys
disk, op, off, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    fd = os.open(disk, os.O_RDWR)
    try:
        if op == "write":
            os.pwrite(fd, os.urandom(n), off)
        elif op == "read":
            if len(os.pread(fd, n, off)) != n:
                sys.exit("short read")
        os.fsync(fd)
    finally:
        os.close(fd)
except OSError as e:
    print(e.errno)
    sys.exit(0)
print("ok")
EOF
}

# expect_eio DISK OP OFF LEN WHAT
expect_eio() {
	local got
	got=$(io "$1" "$2" "$3" "$4") || fail "$5: the probe failed"
	[ "$got" = 5 ] || fail "$5: expected EIO (5), got $got"
	ok "$5: EIO"
}

for fmt in vhd vhdx qcow2; do
	img=$T/$fmt m=$T/mnt-$fmt
	mkdir -p "$img"
	case $fmt in
	vhd)	qemu-img create -q -f vpc -o subformat=dynamic,force_size=on \
			"$img/top.vhd" 64M ;;
	vhdx)	qemu-img create -q -f vhdx "$img/top.vhdx" 64M ;;
	qcow2)	qemu-img create -q -f qcow2 "$img/top.qcow2" 64M ;;
	esac
	top=$img/top.$fmt disk=$m/top/disk
	layerfs_mount "$m" "$img" -o rw,rw_base=top
	pattern "$disk" 0 $((4 * MiB)) "$fmt"
	[ "$(io "$disk" write $((2 * MiB)) 4096)" = ok ] ||
		fail "$fmt: a write before the damage failed"
	size=$(stat -c %s "$top")
	[ "$size" -gt $((2 * MiB)) ] || fail "$fmt: the top is only $size bytes"
	ok "$fmt: 4 MiB written and fsync'ed ($size-byte top)"

	truncate -s $MiB "$top"
	expect_eio "$disk" write $((3 * MiB)) 4096 "$fmt: overwrite after the cut"
	expect_eio "$disk" write $((40 * MiB)) 65536 "$fmt: new data after the cut"
	expect_eio "$disk" fsync 0 0 "$fmt: fsync after the cut"
	expect_eio "$disk" read $((3 * MiB)) 4096 "$fmt: read past the cut"
	expect_error "$MOUNT_ERR" "$top" "changed behind layerfs.*size $MiB"
	expect_error "$m/.layerfs.log" "$top" "changed behind layerfs"
	expect_size "$top" $MiB "$fmt: the cut top"
	layerfs_umount "$m"
	expect_size "$top" $MiB "$fmt: the cut top after unmount"
	ok "$fmt: the file was not grown past 1 MiB"
	rc=0
	"$LAYERIMG" check "$top" >"$T/check-$fmt.out" 2>&1 || rc=$?
	[ "$rc" -ne 0 ] || fail "$fmt: layerimg check calls the cut file clean:" \
		"$(tr '\n' '|' <"$T/check-$fmt.out")"
	ok "$fmt: layerimg check finds the damage (exit $rc)"
done

# A VHDX top replaced by a rename while mounted
img=$T/mv m=$T/mnt-mv
mkdir -p "$img"
qemu-img create -q -f vhdx "$img/top.vhdx" 64M
qemu-img create -q -f vhdx "$T/other.vhdx" 64M
top=$img/top.vhdx disk=$m/top/disk
layerfs_mount "$m" "$img" -o rw,rw_base=top
pattern "$disk" 0 $((2 * MiB)) mv
[ "$(io "$disk" write $MiB 4096)" = ok ] || fail "mv: a first write failed"
ok "mv: written and fsync'ed"
old_sum=$(sha_of "$T/other.vhdx")
mv "$T/other.vhdx" "$top"
expect_eio "$disk" write 0 4096 "mv: overwrite after the replacement"
expect_eio "$disk" write $((30 * MiB)) 4096 "mv: new data after the replacement"
expect_eio "$disk" fsync 0 0 "mv: fsync after the replacement"
expect_error "$MOUNT_ERR" "$top" "changed behind layerfs.*replaced or removed"
layerfs_umount "$m"
[ "$(sha_of "$top")" = "$old_sum" ] ||
	fail "mv: the file that took the name was written to"
ok "mv: the new file under the name is untouched"
finish
