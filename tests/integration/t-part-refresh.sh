#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# In a writable mount the partition files follow the partition table: a
# disk laid out with sfdisk (or fdisk, 4096-byte sectors) through the
# exposed disk file shows its partitions without a remount, a deleted or
# moved partition goes away, an open partition file keeps working while
# its window is unchanged and fails (EIO) once it changed, and writes
# through pN (also O_DIRECT) land at the partition's offset of the disk.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img sfdisk fdisk losetup blkid mkfs.ext4 cmp python3
require_script mkvhdx.py

img=$T/img
mkdir -p "$img"
MiB=1048576
qemu-img create -q -f qcow2 "$img/blank.qcow2" 64M
python3 "$TOOLS/mkvhdx.py" chain "$img" --depth 1 --lss 4096 --size 64M \
	--name 'v4k%d.vhdx' >/dev/null || fail "mkvhdx.py failed"
rm -f "$img"/*.raw

# blank.qcow2 is a standalone image: written in place only when named
layerfs_mount "$T/mnt" "$img" -o rw,rw_base=blank
m=$T/mnt
d=$m/blank

loops=()
detach_loops() {
	local l
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
	loops=()
}
exec 3<&- 4<&-
trap 'rc=$?; set +e; exec 3<&- 4<&-; detach_loops; (exit $rc); _cleanup' EXIT

files() { (cd "$1" && ls | sort -V | tr '\n' ' '); }

# N START SIZE NAME per partition (bytes) from sfdisk --json
sfdisk_parts() {
	sfdisk --json "$1" | python3 -c '
import json, re, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    n = re.search(r"(\d+)$", p["node"]).group(1)
    print(n, p["start"] * 512, p["size"] * 512, p.get("name", ""))'
}

expect_parts_like_sfdisk() {
	local dir=$1 n st sz name
	sfdisk_parts "$dir/disk" >"$T/want"
	while read -r n st sz name; do
		expect_size "$dir/p$n" "$sz" "p$n"
		grep -q "^  p$n: start=$st size=$sz " "$dir/info" ||
			fail "info: p$n is not at $st+$sz: $(cat "$dir/info")"
	done <"$T/want"
	[ "$(files "$dir")" = "$(awk '{printf "p%s ", $1}' "$T/want" |
		sed 's/^/by-name disk info /')" ] ||
	[ "$(files "$dir")" = "$(awk '{printf "p%s ", $1}' "$T/want" |
		sed 's/^/disk info /')" ] ||
		fail "files [$(files "$dir")] do not match sfdisk: $(tr '\n' '|' <"$T/want")"
}

[ "$(files "$d")" = "disk info " ] || fail "blank disk shows [$(files "$d")]"
grep -q '^writable: yes$' "$d/info" || fail "info: not writable"
grep -q '^partitions: 0$' "$d/info" || fail "info: partitions on a blank disk"
[ "$(stat -c %a "$d/disk")" = 644 ] || fail "writable disk mode $(stat -c %a "$d/disk")"
ok "a blank writable disk: disk and info only"

# sfdisk through the exposed disk: the partitions appear, no remount
printf 'label: gpt\nsize=8M, name="one"\nsize=16M, name="two"\nsize=4M, name="three"\nsize=2M, name="two"\n' |
	sfdisk -q "$d/disk" || fail "sfdisk on the exposed disk failed"
[ "$(files "$d")" = "by-name disk info p1 p2 p3 p4 " ] ||
	fail "after sfdisk: [$(files "$d")]"
expect_parts_like_sfdisk "$d"
# two partitions named "two": the lower number gets the name
[ "$(readlink "$d/by-name/two")" = ../p2 ] || fail "by-name/two"
[ "$(files "$d/by-name")" = "one three two " ] ||
	fail "by-name holds [$(files "$d/by-name")]"
[ "$(stat -c %a "$d/p1")" = 644 ] || fail "writable p1 mode $(stat -c %a "$d/p1")"
ok "GPT written by sfdisk: p1-p4 appear, as sfdisk sees them"

# Writes through p1 (buffered and O_DIRECT) land at p1's offset
st1=$(awk '$1 == 1 {print $2}' "$T/want")
pattern "$T/pat" 0 $((2 * MiB)) p1data
dd if="$T/pat" of="$d/p1" bs=1M count=1 conv=notrunc,fsync status=none ||
	fail "write to p1 failed"
dd if="$T/pat" of="$d/p1" bs=1M skip=1 seek=1 count=1 oflag=direct \
	conv=notrunc status=none || fail "O_DIRECT write to p1 failed"
python3 - "$d/disk" "$st1" "$T/pat" <<'EOF' || fail "p1's data is not at its offset"
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(int(sys.argv[2]))
    assert f.read(2 << 20) == open(sys.argv[3], "rb").read()
EOF
cmp -n $((2 * MiB)) "$d/p1" "$T/pat" || fail "p1 reads back other data"
dd if="$d/p1" of="$T/back" bs=64k count=32 iflag=direct status=none ||
	fail "O_DIRECT read of p1 failed"
cmp "$T/back" "$T/pat" || fail "O_DIRECT read of p1 differs"
ok "writes through p1 (also O_DIRECT) are at p1's offset of the disk"

# SEEK_DATA/SEEK_HOLE and hole punching, in p1's coordinates
python3 - "$d/p1" <<'EOF' || fail "p1: SEEK_DATA/SEEK_HOLE"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 << 20, os.lseek(fd, 0, os.SEEK_HOLE)
try:
    os.lseek(fd, 2 << 20, os.SEEK_DATA)
    sys.exit("data after 2 MiB")
except OSError as e:
    assert e.errno == 6    # ENXIO: only a hole up to the end of p1
EOF
fallocate --punch-hole -o $((512 * 1024)) -l $((512 * 1024)) "$d/p1" ||
	fail "punching a hole in p1 failed"
python3 - "$T/pat" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(512 << 10)
    f.write(bytes(512 << 10))
EOF
python3 - "$d/p1" "$d/disk" "$st1" "$T/pat" <<'EOF' || fail "p1: hole punched in the wrong place"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
assert os.lseek(fd, 0, os.SEEK_HOLE) == 512 << 10
assert os.lseek(fd, 512 << 10, os.SEEK_DATA) == 1 << 20
pat = open(sys.argv[4], "rb").read()
with open(sys.argv[2], "rb") as f:
    f.seek(int(sys.argv[3]))
    assert f.read(2 << 20) == pat
assert os.pread(fd, 2 << 20, 0) == pat
EOF
ok "p1: SEEK_DATA/SEEK_HOLE and a punched hole, in p1's coordinates"

# An open p1 survives a rescan that leaves it alone
exec 3<"$d/p1"
sfdisk -q --delete "$d/disk" 3 || fail "sfdisk --delete failed"
[ "$(files "$d")" = "by-name disk info p1 p2 p4 " ] ||
	fail "after deleting p3: [$(files "$d")]"
[ ! -e "$d/by-name/three" ] || fail "by-name/three is still there"
expect_parts_like_sfdisk "$d"
cmp -n $((2 * MiB)) /dev/fd/3 "$T/pat" || fail "the open p1 changed"
ok "p3 deleted: gone; an open p1 still reads its data"

# Moving p1 makes the open handle fail rather than read other bytes
printf 'label: gpt\nstart=40M, size=8M, name="moved"\n' |
	sfdisk -q "$d/disk" || fail "sfdisk (move) failed"
[ "$(files "$d")" = "by-name disk info p1 " ] ||
	fail "after the move: [$(files "$d")]"
if dd if=/dev/fd/3 of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; then
	fail "the old p1 handle still reads after p1 moved"
fi
exec 3<&-
expect_parts_like_sfdisk "$d"
[ "$(readlink "$d/by-name/moved")" = ../p1 ] || fail "by-name/moved"
ok "p1 moved: the new p1 is there, the old handle gets EIO"

# An MBR with logical partitions
printf 'label: dos\nstart=2048, size=8M, type=83\nstart=18432, size=40M, type=5\nstart=20480, size=4M, type=83\nstart=30720, size=6M, type=82\nstart=45056, size=3M, type=7\n' |
	sfdisk -q "$d/disk" || fail "sfdisk (dos) failed"
[ "$(files "$d")" = "disk info p1 p2 p5 p6 p7 " ] ||
	fail "after the MBR: [$(files "$d")]"
expect_parts_like_sfdisk "$d"
ok "MBR with three logicals: p1 p2 p5 p6 p7"

# Adding a fourth logical changes only an EBR (and the new one)
exec 4<"$d/p5"
echo 'start=53248, size=2M, type=83' | sfdisk -q --append "$d/disk" ||
	fail "sfdisk --append failed"
[ "$(files "$d")" = "disk info p1 p2 p5 p6 p7 p8 " ] ||
	fail "after appending a logical: [$(files "$d")]"
expect_parts_like_sfdisk "$d"
dd if=/dev/fd/4 of=/dev/null bs=4k count=1 status=none || fail "p5 handle broke"
exec 4<&-
ok "a logical appended: p8 appears, p5 unchanged"

# A file system made in p1 shows its label (no table change needed)
[ ! -e "$d/by-label" ] || fail "by-label before any file system"
mkfs.ext4 -q -F -L newlbl "$d/p1" >/dev/null || fail "mkfs.ext4 on p1 failed"
[ "$(readlink "$d/by-label/newlbl")" = ../p1 ] ||
	fail "by-label/newlbl -> '$(readlink "$d/by-label/newlbl")'"
grep -q '^  p1: .* fs=ext4 label="newlbl"$' "$d/info" ||
	fail "info does not show p1's new file system: $(cat "$d/info")"
[ "$(blkid -p -o value -s LABEL "$d/disk" -O 1048576)" = newlbl ] ||
	fail "blkid does not see newlbl at p1's offset"
ok "mkfs.ext4 -L newlbl on p1: by-label/newlbl -> ../p1, info shows it"

# 4096-byte sectors: a GPT made by fdisk -b 4096, written into the disk
v=$m/v4k1
grep -q '^sector_size: 4096$' "$v/info" || fail "v4k1 is not a 4096-byte sector disk"
truncate -s $((64 * MiB)) "$T/g4k.raw"
printf 'g\nn\n1\n\n+8M\nn\n2\n\n+16M\nx\nn\n1\nalpha\nn\n2\nbeta\nr\nw\n' |
	fdisk -b 4096 "$T/g4k.raw" >/dev/null || fail "fdisk -b 4096 failed"
dd if="$T/g4k.raw" of="$v/disk" bs=1M count=1 conv=notrunc,fsync status=none
dd if="$T/g4k.raw" of="$v/disk" bs=1M skip=63 seek=63 conv=notrunc,fsync status=none
[ "$(files "$v")" = "by-name disk info p1 p2 " ] ||
	fail "4096: after writing the GPT: [$(files "$v")]"
l=$(losetup -f --show -r -b 4096 "$v/disk") || fail "losetup -b 4096 failed"
loops+=("$l")
sfdisk --json "$l" | python3 -c '
import json, sys
pt = json.load(sys.stdin)["partitiontable"]
assert pt["sectorsize"] == 4096, pt
for i, p in enumerate(pt["partitions"], 1):
    print(i, p["start"] * 4096, p["size"] * 4096, p.get("name", ""))' >"$T/want4k" ||
	fail "sfdisk on the 4096-byte loop device failed"
while read -r n st sz name; do
	expect_size "$v/p$n" "$sz" "v4k1/p$n"
	grep -q "^  p$n: start=$st size=$sz .* name=\"$name\"" "$v/info" ||
		fail "v4k1 info: p$n is not at $st+$sz ($name): $(cat "$v/info")"
	cmp -n "$sz" "$v/p$n" <(dd if="$v/disk" bs=4096 skip=$((st / 4096)) \
		count=$((sz / 4096)) status=none) || fail "v4k1/p$n != disk range"
done <"$T/want4k"
[ "$(wc -l <"$T/want4k")" = 2 ] || fail "4096: sfdisk sees $(wc -l <"$T/want4k") partitions"
detach_loops
ok "4096-byte sectors: fdisk's GPT shows as p1 p2, as sfdisk sees it on a -b 4096 loop"

layerfs_umount "$m"
# and it is all still there after a remount
layerfs_mount "$m" "$img"
[ "$(files "$m/blank")" = "by-label disk info p1 p2 p5 p6 p7 p8 " ] ||
	fail "after remount: [$(files "$m/blank")]"
[ "$(files "$m/v4k1")" = "by-name disk info p1 p2 " ] ||
	fail "v4k1 after remount: [$(files "$m/v4k1")]"
ok "remounted: the same partitions"
finish
