#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 overlays made by qemu-img over bases of other formats read as qemu
# reads them: over a dynamic VHD (-F vpc), over a VHDX (-F vhdx), and over
# an Android sparse image.  qemu cannot read sparse images, so its overlay
# can only record "raw"; layerfs reads the parent as the sparse image it is,
# and the oracle is the same overlay rebased onto simg2img's output.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io simg2img img2simg python3 cmp
require_script mksimg.py

img=$T/img
mkdir -p "$img" "$T/oracle"
base=$T/base.raw
truncate -s 24M "$base"
pattern "$base" 0 3000000 a
pattern "$base" 9000000 777777 b
pattern "$base" $((24 * 1048576 - 5000)) 5000 c

qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$base" "$img/b-vhd.vhd"
qemu-img convert -q -f raw -O vhdx "$base" "$img/b-vhdx.vhdx"
python3 "$SRCDIR/tests/tools/mksimg.py" "$base" "$img/b-simg.simg" --crc \
	>/dev/null

# writes at odd offsets over the vpc and vhdx bases (qemu copies on write
# from bases it reads correctly); whole aligned clusters over the sparse
# base, where qemu's own copy-on-write would read the container as raw
qemu-img create -q -f qcow2 -F vpc -b b-vhd.vhd "$img/o-vhd.qcow2" 24M
qemu-img create -q -f qcow2 -F vhdx -b b-vhdx.vhdx "$img/o-vhdx.qcow2" 24M
qemu-img create -q -f qcow2 -F raw -b b-simg.simg "$img/o-simg.qcow2" 24M
for o in o-vhd o-vhdx; do
	qemu-io -f qcow2 -c 'write -P 0x5a 12345 70001' \
		-c 'write -z 5000000 300000' "$img/$o.qcow2" >/dev/null
	qemu-img convert -f qcow2 -O raw "$img/$o.qcow2" "$T/oracle/$o.raw"
done
qemu-io -f qcow2 -c 'write -P 0x6b 1048576 131072' \
	-c 'write -z 8388608 65536' "$img/o-simg.qcow2" >/dev/null
simg2img "$img/b-simg.simg" "$T/oracle/b-simg.raw"
cp "$img/o-simg.qcow2" "$T/oracle/o-simg.qcow2"
qemu-img rebase -u -f qcow2 -F raw -b "$T/oracle/b-simg.raw" \
	"$T/oracle/o-simg.qcow2"
qemu-img convert -f qcow2 -O raw "$T/oracle/o-simg.qcow2" "$T/oracle/o-simg.raw"
cmp -s "$T/oracle/b-simg.raw" "$base" || fail "mksimg/simg2img round trip"

snapshot_sums "$img"
layerfs_mount "$T/m" "$img"
for o in o-vhd o-vhdx o-simg; do
	expect_same "$T/m/$o/disk" "$T/oracle/$o.raw" "qcow2 over ${o#o-}"
done
grep -q "b-simg.simg recorded as raw is an Android sparse image" \
	"$MOUNT_ERR" || fail "no note that the raw parent is a sparse image"
ok "the sparse parent recorded as raw is read as a sparse image"
layerfs_umount "$T/m"
check_sums
finish
