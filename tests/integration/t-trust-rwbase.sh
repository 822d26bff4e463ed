#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-trust-rwbase: -o rw never writes a base image in place.
#   - lone VHD, VHDX and QCOW2 images (no parent) under -o rw: their disks
#     are mode 0444, writes fail with EROFS, the files stay byte-identical;
#   - a differencing top (QCOW2 over a QCOW2 base) is still writable;
#   - -o rw_base=NAME[:NAME] makes exactly the named standalone images
#     writable in place (by file name or chain name), and a name that
#     matches no standalone image, or one another image depends on, gets a
#     warning.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io

d=$T/img
mkdir -p "$d"
qemu-img create -q -f vpc -o subformat=dynamic "$d/v-L0.vhd" 8M ||
	fail "qemu-img create vpc"
qemu-img create -q -f vhdx "$d/hv-L0.vhdx" 8M || fail "qemu-img create vhdx"
qemu-img create -q -f qcow2 "$d/q-L0.qcow2" 8M || fail "qemu-img create qcow2"
qemu-img create -q -f qcow2 "$d/base-L0.qcow2" 8M || fail "qemu-img create base"
for f in v-L0.vhd:vpc hv-L0.vhdx:vhdx q-L0.qcow2:qcow2 base-L0.qcow2:qcow2; do
	qemu-io -f "${f#*:}" -c 'write -P 0x42 0 64k' "$d/${f%%:*}" >/dev/null ||
		fail "qemu-io write ${f%%:*}"
done
(cd "$d" && qemu-img create -q -f qcow2 -b base-L0.qcow2 -F qcow2 top-L1.qcow2) ||
	fail "qemu-img create top-L1.qcow2"
bases=(v-L0.vhd hv-L0.vhdx q-L0.qcow2 base-L0.qcow2)
declare -A sum0=()
for f in "${bases[@]}"; do
	sum0[$f]=$(sha_of "$d/$f")
done

# try_write DISK: "EROFS" if opening or writing fails so, "OK" if it works
try_write() {
	python3 - "$1" <<'EOF'
import errno, os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY)
    os.pwrite(fd, b"\xab" * 4096, 65536)
    os.fsync(fd)
    os.close(fd)
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
EOF
}

disk_mode() { stat -c %a "$1"; }

## 1. -o rw: the lone images are read-only; the differencing top is not
m=$T/m1
layerfs_mount "$m" "$d" -o rw
expect_dirs "$m" v-L0 hv-L0 q-L0 base-L0 top-L1
for c in v-L0 hv-L0 q-L0 base-L0; do
	[ "$(disk_mode "$m/$c/disk")" = 444 ] ||
		fail "-o rw: $c/disk has mode $(disk_mode "$m/$c/disk"), expected 444"
	r=$(try_write "$m/$c/disk")
	[ "$r" = EROFS ] || fail "-o rw: writing $c/disk gave $r, expected EROFS"
	grep -q '^writable: no' "$m/$c/info" || fail "-o rw: $c/info says writable"
done
ok "-o rw: every base's disk is 0444 and a write gives EROFS"
[ "$(disk_mode "$m/top-L1/disk")" = 644 ] ||
	fail "-o rw: top-L1/disk has mode $(disk_mode "$m/top-L1/disk")"
[ "$(try_write "$m/top-L1/disk")" = OK ] || fail "-o rw: top-L1 write failed"
ok "-o rw: the differencing top is 0644 and takes a write"
layerfs_umount "$m"
for f in "${bases[@]}"; do
	[ "$(sha_of "$d/$f")" = "${sum0[$f]}" ] || fail "-o rw: $f changed"
done
ok "-o rw: ${#bases[@]} base files byte-identical"
qemu-io -f qcow2 -c 'read -P 0xab 64k 4k' "$d/top-L1.qcow2" | grep -q 'read 4096' ||
	fail "the write into top-L1 is not in the file"
ok "the write went into top-L1.qcow2"

## 2. -o rw_base: the named images are written in place, no others
m=$T/m2
layerfs_mount "$m" "$d" -o rw,rw_base=q-L0:v-L0.vhd:nothere:base-L0
for c in q-L0 v-L0; do
	[ "$(disk_mode "$m/$c/disk")" = 644 ] ||
		fail "rw_base: $c/disk has mode $(disk_mode "$m/$c/disk")"
	[ "$(try_write "$m/$c/disk")" = OK ] || fail "rw_base: $c write failed"
done
ok "rw_base=q-L0:v-L0.vhd: both are 0644 and take writes"
for c in hv-L0 base-L0; do
	[ "$(disk_mode "$m/$c/disk")" = 444 ] ||
		fail "rw_base: $c/disk has mode $(disk_mode "$m/$c/disk")"
	[ "$(try_write "$m/$c/disk")" = EROFS ] || fail "rw_base: $c is writable"
done
ok "rw_base: hv-L0 (not named) and base-L0 (a parent) stay read-only"
expect_warning "$MOUNT_ERR" nothere "rw_base"
expect_warning "$MOUNT_ERR" base-L0.qcow2 "rw_base: another image depends on it"
layerfs_umount "$m"
for f in hv-L0.vhdx base-L0.qcow2; do
	[ "$(sha_of "$d/$f")" = "${sum0[$f]}" ] || fail "rw_base: $f changed"
done
qemu-io -f qcow2 -c 'read -P 0xab 64k 4k' "$d/q-L0.qcow2" | grep -q 'read 4096' ||
	fail "rw_base: the write is not in q-L0.qcow2"
qemu-img convert -f vpc -O raw "$d/v-L0.vhd" "$T/v.raw"
python3 - "$T/v.raw" <<'EOF' || fail "rw_base: the write is not in v-L0.vhd"
import sys
b = open(sys.argv[1], "rb").read()
sys.exit(0 if b[65536:69632] == b"\xab" * 4096 and b[:4096] == b"\x42" * 4096 else 1)
EOF
ok "rw_base: the writes are in q-L0.qcow2 and v-L0.vhd (qemu reads them)"

finish
