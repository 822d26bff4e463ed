#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Partitions as files: for chains of every family (VHD, VHDX, QCOW2, raw +
# qcow2 overlay) holding a GPT or an MBR with logical partitions, the pN
# files agree with what sfdisk and blkid see on the exposed disk, read the
# same bytes as a loop device over the disk with an offset, have exact
# sizes, the owner and mode of the mount, work with O_DIRECT, and the
# chain's info file lists its layers and partitions.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io sfdisk blkid losetup mkfs.ext4 setpriv cmp python3

img=$T/img
mkdir -p "$img"
MiB=1048576

# GPT: three named partitions, an ext4 file system labelled in p2
truncate -s $((64 * MiB)) "$T/gpt.raw"
printf 'label: gpt\nsize=8M, name="EFI system", type=U\nsize=16M, name="root/fs"\nsize=6M, name="data"\n' |
	sfdisk -q "$T/gpt.raw" || fail "sfdisk (gpt) failed"
mkfs.ext4 -q -F -L rootlbl "$T/fs.ext4" 16M >/dev/null || fail "mkfs.ext4 failed"
dd if="$T/fs.ext4" of="$T/gpt.raw" bs=1M seek=9 conv=notrunc status=none
pattern "$T/gpt.raw" $((1 * MiB)) $((3 * MiB)) gp1
pattern "$T/gpt.raw" $((25 * MiB + 4096)) $((2 * MiB)) gp3

# MBR: a primary, an extended partition with three logicals
truncate -s $((64 * MiB)) "$T/mbr.raw"
printf 'label: dos\nstart=2048, size=8M, type=83\nstart=18432, size=40M, type=5\nstart=20480, size=4M, type=83\nstart=30720, size=6M, type=82\nstart=45056, size=3M, type=7\n' |
	sfdisk -q "$T/mbr.raw" || fail "sfdisk (dos) failed"
pattern "$T/mbr.raw" $((20480 * 512 + 512)) $((1 * MiB)) ml5
pattern "$T/mbr.raw" $((45056 * 512)) $((3 * MiB)) ml7

# One chain per family
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$T/gpt.raw" "$img/gvhd.vhd" || fail "qemu-img -O vpc failed"
qemu-img convert -f raw -O vhdx "$T/gpt.raw" "$img/gvhdx.vhdx" ||
	fail "qemu-img -O vhdx failed"
qemu-img convert -f raw -O qcow2 "$T/mbr.raw" "$img/mqcow.qcow2" ||
	fail "qemu-img -O qcow2 failed"
cp "$T/mbr.raw" "$img/m-L0.img"
qemu-img create -q -f qcow2 -b m-L0.img -F raw "$img/m-L1.qcow2"
qemu-io -f qcow2 -c "write -P 0x5c $((30720 * 512 + 8192)) 64k" \
	"$img/m-L1.qcow2" >/dev/null || fail "qemu-io failed"

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt
expect_dirs "$m" gvhd gvhdx mqcow m-L0 m-L1

loops=()
detach_loops() {
	local l
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
	loops=()
}
trap 'rc=$?; set +e; detach_loops; (exit $rc); _cleanup' EXIT

# NUMBER START SIZE TYPE NAME per partition, bytes, from sfdisk --json
sfdisk_parts() {
	sfdisk --json "$1" | python3 -c '
import json, re, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    t = p["type"].lower()
    t = t if "-" in t else "0x%02x" % int(t, 16)
    n = re.search(r"(\d+)$", p["node"]).group(1)
    print(n, p["start"] * 512, p["size"] * 512, t, p.get("name", ""))'
}

# NUMBER START SIZE TYPE NAME per partition, from the info file
info_parts() {
	python3 - "$1" <<'EOF'
import re, sys
for l in open(sys.argv[1]):
    m = re.match(r'  p(\d+): start=(\d+) size=(\d+) type=(\S+)(.*)', l)
    if m:
        n = re.search(r' name="([^"]*)"', m.group(5))
        print(m.group(1), m.group(2), m.group(3), m.group(4),
              n.group(1) if n else "")
EOF
}

check_chain() {
	local c=$1 files=$2 n st sz ty name l got want layer
	local d=$m/$c
	sfdisk_parts "$d/disk" >"$T/$c.want" || fail "$c: sfdisk --json failed"
	[ -s "$T/$c.want" ] || fail "$c: sfdisk sees no partitions"
	info_parts "$d/info" >"$T/$c.info"
	diff -u "$T/$c.want" "$T/$c.info" >&2 ||
		fail "$c: info partitions differ from sfdisk --json"
	ok "$c: info lists the partitions sfdisk sees ($(wc -l <"$T/$c.want"))"
	for layer in $files; do
		grep -q "^  [0-9]*: $img/$layer format=" "$d/info" ||
			fail "$c: info does not list layer $layer: $(cat "$d/info")"
	done
	ok "$c: info lists its layers ($files)"
	got=$(cd "$d" && ls -d p* | sort -V | tr '\n' ' ')
	want=$(awk '{printf "p%s ", $1}' "$T/$c.want")
	[ "$got" = "$want" ] || fail "$c: files [$got], expected [$want]"
	ok "$c: partition files [${got% }]"
	while read -r n st sz ty name; do
		expect_size "$d/p$n" "$sz" "$c/p$n"
		[ "$(stat -c %u:%g:%a "$d/p$n")" = "$(id -u):$(id -g):444" ] ||
			fail "$c/p$n: owner/mode $(stat -c %u:%g:%a "$d/p$n")"
		l=$(losetup -f --show -r -o "$st" --sizelimit "$sz" "$d/disk") ||
			fail "$c: losetup failed"
		loops+=("$l")
		cmp "$l" "$d/p$n" || fail "$c/p$n differs from $l"
		# O_DIRECT from the partition, and from the disk at its offset
		dd if="$d/p$n" of="$T/direct" bs=64k iflag=direct status=none ||
			fail "$c/p$n: O_DIRECT read failed"
		cmp "$l" "$T/direct" || fail "$c/p$n: O_DIRECT read differs"
		dd if="$d/disk" of="$T/direct" bs=4096 skip=$((st / 4096)) \
			count=$((sz / 4096)) iflag=direct status=none ||
			fail "$c/disk: O_DIRECT read failed"
		cmp "$l" "$T/direct" || fail "$c/disk: O_DIRECT read differs"
		# blkid -p on the partition file and on the loop device agree
		[ "$(blkid -p -o export "$d/p$n" | grep -E '^(TYPE|LABEL)=' || true)" = \
		  "$(blkid -p -o export "$l" | grep -E '^(TYPE|LABEL)=' || true)" ] ||
			fail "$c/p$n: blkid differs from the loop device"
		detach_loops
	done <"$T/$c.want"
	ok "$c: every pN = the loop device over disk (also O_DIRECT), same blkid"
}

check_chain gvhd gvhd.vhd
check_chain gvhdx gvhdx.vhdx
check_chain mqcow mqcow.qcow2
check_chain m-L0 m-L0.img
check_chain m-L1 "m-L1.qcow2 m-L0.img"

# The layers in info: top first, with format, tag, size and sector size
python3 - "$m/m-L1/info" "$img" <<'EOF' || fail "m-L1/info: layers"
import re, sys
t = open(sys.argv[1]).read()
img = sys.argv[2]
assert "chain: m-L1\nsize: 67108864\nsector_size: 512\nwritable: no\n" \
       "layers: 2 (top first)\n" in t, t
assert re.search(r"^  0: %s/m-L1.qcow2 format=qcow2 subtype=\S+ level=L1 "
                 r"virtual_size=67108864 sector_size=512$" % re.escape(img), t, re.M), t
assert re.search(r"^  1: %s/m-L0.img format=raw subtype=\S+ level=L0 "
                 r"virtual_size=67108864 sector_size=512$" % re.escape(img), t, re.M), t
EOF
ok "m-L1/info: both layers, top first, with format and level tag"

# The GPT names and the ext4 label, through blkid and the by-* links
for c in gvhd gvhdx; do
	d=$m/$c
	[ "$(blkid -p -o value -s TYPE "$d/p2")" = ext4 ] || fail "$c/p2: not ext4"
	[ "$(blkid -p -o value -s LABEL "$d/p2")" = rootlbl ] || fail "$c/p2: label"
	[ "$(readlink "$d/by-label/rootlbl")" = ../p2 ] ||
		fail "$c: by-label/rootlbl -> $(readlink "$d/by-label/rootlbl")"
	cmp "$d/by-label/rootlbl" "$d/p2" || fail "$c: by-label/rootlbl != p2"
	[ "$(readlink "$d/by-name/EFI system")" = ../p1 ] || fail "$c: by-name/EFI system"
	[ "$(readlink "$d/by-name/root_fs")" = ../p2 ] || fail "$c: by-name/root_fs"
	[ "$(readlink "$d/by-name/data")" = ../p3 ] || fail "$c: by-name/data"
	grep -q '^  p2: .* fs=ext4 label="rootlbl"$' "$d/info" ||
		fail "$c: info lacks p2's file system: $(cat "$d/info")"
	ok "$c: names and label as links, blkid agrees"
done
[ ! -e "$m/mqcow/by-name" ] || fail "mqcow: an MBR has no partition names"
grep -q '^  p2: start=9437184 size=41943040 type=0x05 extended' "$m/mqcow/info" ||
	fail "mqcow: info does not show the extended partition"
want=$(sfdisk --json "$m/mqcow/disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["id"][2:])')
grep -q "^partition_table: dos id=$want\$" "$m/mqcow/info" || fail "mqcow: table type, id $want"
want=$(sfdisk --json "$m/gvhdx/disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["id"].lower())')
grep -q "^partition_table: gpt id=$want\$" "$m/gvhdx/info" || fail "gvhdx: table type, id $want"
ok "MBR: no names, the extended partition marked; table types shown"

# The overlay's write into p6 shows in p6 (and only in the overlay chain)
python3 - "$m/m-L1/p6" "$m/m-L0/p6" <<'EOF' || fail "m-L1/p6: overlay data not seen"
import sys
a = open(sys.argv[1], "rb").read()
b = open(sys.argv[2], "rb").read()
assert a[8192:8192 + 65536] == b"\x5c" * 65536, "overlay data"
assert a[:8192] == b[:8192] and a[8192 + 65536:] == b[8192 + 65536:]
EOF
ok "m-L1/p6 shows the overlay's write"

# Read-only: a partition cannot be opened for writing
if (exec 3>>"$m/gvhd/p1") 2>/dev/null; then fail "gvhd/p1 opened for writing"; fi
ok "a read-only partition refuses writers"

# A sequential read of pN goes the same way as a read of the disk range
python3 - "$m/gvhdx/p2" "$m/gvhdx/disk" $((9 * MiB)) <<'EOF' || fail "p2 != disk range"
import sys
p = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "rb") as f:
    f.seek(int(sys.argv[3]))
    d = f.read(len(p))
assert p == d
EOF
ok "gvhdx/p2 = disk at its offset"

# Permissions: without allow_other, other users cannot even look; with
# allow_other,default_permissions they read but cannot write (mode 0444)
chmod 755 "$T"
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
if as_nobody stat "$m/gvhd/p1" >/dev/null 2>&1; then
	fail "another user sees the mount without allow_other"
fi
layerfs_umount "$m"
layerfs_mount "$m" "$img" -o allow_other,default_permissions
as_nobody cmp "$m/gvhd/p1" "$m/gvhdx/p1" || fail "nobody cannot read p1 with allow_other"
if as_nobody dd if=/dev/zero of="$m/gvhd/p1" bs=512 count=1 conv=notrunc \
	status=none 2>/dev/null; then
	fail "nobody could open p1 for writing"
fi
ok "allow_other lets other users read; without it they are shut out"

layerfs_umount "$m"
check_sums
finish
