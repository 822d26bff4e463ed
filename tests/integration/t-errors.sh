#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# One IMAGEDIR mixing good images with broken ones: a truncated VHD, a VHD
# with a bad footer checksum, a parent cycle, a missing parent, parents
# outside IMAGEDIR, a parent identity mismatch, a chain deeper than
# max_depth and a layer-rule violation.  Each problem is one error (or
# warning) line naming the file, on stderr and in .layerfs.log; the broken
# images are left out and every good one mounts with the right bytes.  A
# second mount with -o allow_outside,ignore_parent_id,strict_layers,
# max_depth=3 turns the refusals it covers into mounts (and the layer
# warning into an error).
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io python3 cmp
require_script mkvhd.py

img=$T/img out=$T/elsewhere ora=$T/oracle
mkdir -p "$img" "$out" "$ora"
q() { qemu-img "$@" >/dev/null || fail "qemu-img $*"; }
qio() { qemu-io "$@" >/dev/null || fail "qemu-io $*"; }
mkvhd() { python3 "$TOOLS/mkvhd.py" "$@" || fail "mkvhd.py $*"; }

## Good images
pattern "$img/good-base.raw" 0 $((2 << 20)) base
q create -f qcow2 -b good-base.raw -F raw "$img/good-top.qcow2" 2M
qio -f qcow2 -c 'write -P 0x61 65536 4096' -c 'write -P 0x62 1000448 70000' \
	"$img/good-top.qcow2"
q create -f qcow2 "$img/good-solo.qcow2" 1M
qio -f qcow2 -c 'write -P 0x33 0 1M' "$img/good-solo.qcow2"
pattern "$T/src.raw" 0 $((3 << 20)) vhd
q convert -f raw -O vpc -o subformat=dynamic,force_size=on "$T/src.raw" \
	"$img/good.vhd"

## A dynamic VHD cut short: its last allocated block lies past the end
truncate -s $((6 << 20)) "$T/t.raw"
pattern "$T/t.raw" $((5 << 20)) 4096 trunc
q convert -f raw -O vpc -o subformat=dynamic,force_size=on "$T/t.raw" \
	"$img/trunc.vhd"
truncate -s $(($(stat -c %s "$img/trunc.vhd") - (1 << 20))) "$img/trunc.vhd"

## A fixed VHD whose footer checksum is wrong (its only footer copy)
q convert -f raw -O vpc -o subformat=fixed,force_size=on "$T/src.raw" \
	"$img/badsum.vhd"
python3 - "$img/badsum.vhd" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(-512 + 67, 2)
    b = f.read(1)
    f.seek(-512 + 67, 2)
    f.write(bytes([b[0] ^ 0x01]))
EOF

## A parent cycle: cyc-a -> cyc-b -> cyc-a
q create -f qcow2 "$img/cyc-b.qcow2" 1M
q create -f qcow2 -b cyc-b.qcow2 -F qcow2 "$img/cyc-a.qcow2" 1M
q rebase -u -f qcow2 -b cyc-a.qcow2 -F qcow2 "$img/cyc-b.qcow2"

## A missing parent
q create -f qcow2 "$T/gone.qcow2" 1M
q create -f qcow2 -b "$T/gone.qcow2" -F qcow2 "$img/orphan.qcow2" 1M
q rebase -u -f qcow2 -b gone.qcow2 -F qcow2 "$img/orphan.qcow2"

## Parents outside IMAGEDIR: by absolute path and by ../ relative path
q create -f qcow2 "$out/obase.qcow2" 1M
qio -f qcow2 -c 'write -P 0x4f 0 512K' "$out/obase.qcow2"
q create -f qcow2 -b "$out/obase.qcow2" -F qcow2 "$img/far-abs.qcow2" 1M
qio -f qcow2 -c 'write -P 0x41 4096 512' "$img/far-abs.qcow2"
q create -f qcow2 -b ../elsewhere/obase.qcow2 -F qcow2 \
	"$img/far-rel.qcow2" 1M
qio -f qcow2 -c 'write -P 0x52 8192 512' "$img/far-rel.qcow2"

## A parent identity mismatch: idparent.vhd is made again after its child
## was made (same content, new unique id)
pattern "$T/idp.raw" 0 $((1 << 20)) idp
mkvhd create-dynamic "$img/idparent.vhd" --from "$T/idp.raw"
mkvhd create-diff "$img/idchild.vhd" --parent "$img/idparent.vhd" \
	--expect-in "$T/idp.raw" --expect-out "$ora/idchild.raw" \
	--writes "1+2,700+30" --seed 3
rm "$img/idparent.vhd"
mkvhd create-dynamic "$img/idparent.vhd" --from "$T/idp.raw"

## A chain of four (deeper than max_depth=3 in the second mount)
q create -f qcow2 "$img/deep1.qcow2" 1M
for i in 2 3 4; do
	q create -f qcow2 -b deep$((i - 1)).qcow2 -F qcow2 "$img/deep$i.qcow2" 1M
	qio -f qcow2 -c "write -P $i $((i * 65536)) 512" "$img/deep$i.qcow2"
done

## A layer rule violation: an L3 image on an L4 parent
q create -f qcow2 "$img/sys-L4.qcow2" 1M
qio -f qcow2 -c 'write -P 0x44 0 64K' "$img/sys-L4.qcow2"
q create -f qcow2 -b sys-L4.qcow2 -F qcow2 "$img/app-L3.qcow2" 1M
qio -f qcow2 -c 'write -P 0x33 65536 64K' "$img/app-L3.qcow2"

## Oracles: qemu-img follows the backing files itself
for f in good-top.qcow2 good-solo.qcow2 far-abs.qcow2 \
	far-rel.qcow2 deep1.qcow2 deep2.qcow2 deep3.qcow2 deep4.qcow2 sys-L4.qcow2 \
	app-L3.qcow2; do
	(cd "$img" && qemu-img convert -O raw "$f" "$ora/${f%.*}.raw") ||
		fail "qemu-img convert $f"
done
qemu-img convert -f vpc -O raw "$img/good.vhd" "$ora/good.raw"
cp "$img/good-base.raw" "$ora/good-base.raw"
cp "$T/idp.raw" "$ora/idparent.raw"

check_disks() {
	local mnt=$1 n
	shift
	for n in "$@"; do
		expect_same "$mnt/$n/disk" "$ora/$n.raw" "$n: right bytes"
	done
}

snapshot_sums "$img" "$out"

### Mount 1: default options
layerfs_mount "$T/m1" "$img"
m=$T/m1
err=$MOUNT_ERR
cat "$m/.layerfs.log" >"$T/m1.log"
good=(good-base good-top good-solo good idparent deep1 deep2 deep3 deep4
	sys-L4 app-L3)
expect_dirs "$m" "${good[@]}"
for log in "$err" "$T/m1.log"; do
	expect_error "$log" trunc.vhd 'past the end|truncat|short'
	expect_error "$log" badsum.vhd 'checksum'
	expect_error "$log" cyc-a.qcow2 'loop|cycle'
	expect_error "$log" cyc-b.qcow2 'loop|cycle'
	expect_error "$log" orphan.qcow2 'not found|missing|no such'
	expect_error "$log" far-abs.qcow2 'outside|allow_outside'
	expect_error "$log" far-rel.qcow2 'outside|allow_outside'
	expect_error "$log" idchild.vhd 'identity|mismatch'
	expect_warning "$log" app-L3.qcow2 'layer'
	for f in good-base.raw good-top.qcow2 good-solo.qcow2 good.vhd \
		idparent.vhd deep1.qcow2 deep4.qcow2 sys-L4.qcow2 app-L3.qcow2; do
		expect_no_error "$log" "$f"
	done
done
ok "no error names a good image"
check_disks "$m" "${good[@]}"
layerfs_umount "$m"

### Mount 2: allow_outside, ignore_parent_id, strict_layers, max_depth=3
layerfs_mount "$T/m2" "$img" \
	-o allow_outside,ignore_parent_id,strict_layers,max_depth=3
m=$T/m2
err=$MOUNT_ERR
cat "$m/.layerfs.log" >"$T/m2.log"
good2=(good-base good-top good-solo good idparent idchild far-abs
	far-rel deep1 deep2 deep3 sys-L4)
expect_dirs "$m" "${good2[@]}"
for log in "$err" "$T/m2.log"; do
	expect_error "$log" trunc.vhd
	expect_error "$log" badsum.vhd 'checksum'
	expect_error "$log" cyc-a.qcow2 'loop|cycle'
	expect_error "$log" orphan.qcow2
	expect_error "$log" deep4.qcow2 'deep|depth'
	expect_error "$log" app-L3.qcow2 'layer'
	expect_warning "$log" idchild.vhd 'identity|mismatch'
	expect_no_error "$log" far-abs.qcow2
	expect_no_error "$log" deep3.qcow2
done
check_disks "$m" "${good2[@]}"
layerfs_umount "$m"

# A directory whose every image is refused: the warning says so (it once
# said "no disk images found") and the mount is empty
mkdir -p "$T/allbad"
cp "$img/trunc.vhd" "$img/badsum.vhd" "$T/allbad/"
layerfs_mount "$T/m3" "$T/allbad"
[ -z "$(ls "$T/m3")" ] || fail "all refused, yet the mount holds: $(ls "$T/m3")"
grep -q 'every image (2) was left out' "$T/m3.err" ||
	fail "all refused: no 'every image (2) was left out' in: $(cat "$T/m3.err")"
grep -q 'no disk images found' "$T/m3.err" &&
	fail "all refused, yet 'no disk images found'"
layerfs_umount "$T/m3"
ok "a directory of refused images: 'every image (2) was left out'"

check_sums
finish
