#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# SEEK_DATA/SEEK_HOLE on the exposed disks.  Two chains with holes at
# known places: qcow2 (64 KiB clusters) over qcow2, and a sector-granular
# VHD differencing child (mkvhd.py) over a dynamic VHD.  Checked with
# os.lseek at exact offsets, with `qemu-img map -f raw` of the disk (qemu
# asks lseek) against `qemu-img map` of the chain itself, and by copying
# with `qemu-img convert -O qcow2` and `cp --sparse=always` (small copies,
# same content).
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io python3 cmp du
require_script mkvhd.py

img=$T/img
mkdir -p "$img"
K=1024 M=$((1024 * 1024))
size=$((4 * M))

# qcow2: base data in [1M, 1M+64K) and in the last cluster; the top adds
# [3M, 3M+128K) (a 70000-byte write from 3M+1000 spans two clusters).
qemu-img create -q -f qcow2 "$img/qbase.qcow2" $size
qemu-io -f qcow2 -c "write -P 0x11 $((M + 100)) 4096" \
	-c "write -P 0x12 $((size - 512)) 512" "$img/qbase.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b qbase.qcow2 -F qcow2 "$img/qtop.qcow2" $size
qemu-io -f qcow2 -c "write -P 0x13 $((3 * M + 1000)) 70000" \
	"$img/qtop.qcow2" >/dev/null

# VHD: base with data only in its second 512K block; the child writes
# sectors 3000-3004 (in a block the parent has not allocated) and 100-101
# (inside the parent's hole too), so the holes are sector-granular.
truncate -s $size "$T/vbase.raw"
pattern "$T/vbase.raw" $((512 * K)) 1000 vb
python3 "$TOOLS/mkvhd.py" create-dynamic "$img/vbase.vhd" \
	--from "$T/vbase.raw" --block-size 512K || fail "mkvhd.py create-dynamic"
python3 "$TOOLS/mkvhd.py" create-diff "$img/vtop.vhd" --parent "$img/vbase.vhd" \
	--expect-in "$T/vbase.raw" --expect-out "$T/vtop.raw" \
	--writes "100+2,3000+5" --seed 4 || fail "mkvhd.py create-diff"

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt

# check_seeks DISK "whence:offset:expected" ...  (expected ENXIO or a number)
check_seeks() {
	python3 - "$@" <<'EOF'
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
bad = []
for spec in sys.argv[2:]:
    w, off, want = spec.split(":")
    whence = {"D": os.SEEK_DATA, "H": os.SEEK_HOLE}[w]
    try:
        got = str(os.lseek(fd, int(off), whence))
    except OSError as e:
        got = errno.errorcode.get(e.errno, str(e.errno))
    if got != want:
        bad.append("SEEK_%s(%s) = %s, expected %s" %
                   ({"D": "DATA", "H": "HOLE"}[w], off, got, want))
sys.exit("; ".join(bad) if bad else 0)
EOF
}

q=$m/qtop/disk
check_seeks "$q" \
	D:0:$M H:0:0 H:$M:$((M + 64 * K)) D:$((M + 5)):$((M + 5)) \
	D:$((M + 64 * K)):$((3 * M)) H:$((3 * M)):$((3 * M + 128 * K)) \
	D:$((3 * M + 128 * K)):$((size - 64 * K)) \
	H:$((3 * M + 200 * K)):$((3 * M + 200 * K)) \
	H:$((size - 64 * K)):$size D:$((size - 1)):$((size - 1)) \
	D:$size:ENXIO H:$size:ENXIO || fail "qtop: lseek"
ok "qtop: SEEK_DATA/SEEK_HOLE at exact cluster offsets"
check_seeks "$m/qbase/disk" D:0:$M H:$M:$((M + 64 * K)) \
	D:$((M + 64 * K)):$((size - 64 * K)) || fail "qbase: lseek"
ok "qbase: SEEK_DATA/SEEK_HOLE"

v=$m/vtop/disk
check_seeks "$v" \
	D:0:$((100 * 512)) H:$((100 * 512)):$((102 * 512)) \
	D:$((102 * 512)):$((512 * K)) H:$((512 * K)):$M \
	D:$M:$((3000 * 512)) H:$((3000 * 512 + 7)):$((3005 * 512)) \
	D:$((3005 * 512)):ENXIO H:$((3005 * 512)):$((3005 * 512)) \
	H:$((size - 1)):$((size - 1)) || fail "vtop: lseek"
ok "vtop: SEEK_DATA/SEEK_HOLE at exact sector offsets"
expect_same "$v" "$T/vtop.raw" "vtop: content"

# The data ranges qemu-img map finds in the exposed disk (through lseek)
# equal those it finds in the qcow2 chain itself.
data_ranges() {
	python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    if e["data"]:
        if out and out[-1][1] == e["start"]:
            out[-1][1] = e["start"] + e["length"]
        else:
            out.append([e["start"], e["start"] + e["length"]])
print(" ".join("%d-%d" % tuple(r) for r in out))'
}
chain=$(cd "$img" && qemu-img map -f qcow2 --output=json qtop.qcow2 | data_ranges)
disk=$(qemu-img map -f raw --output=json "$q" | data_ranges)
[ -n "$chain" ] && [ "$chain" = "$disk" ] ||
	fail "qemu-img map: chain has [$chain], exposed disk has [$disk]"
ok "qemu-img map of the disk matches the chain: $disk"

# qemu-img convert: a small copy with the chain's content
qemu-img convert -f raw -O qcow2 "$q" "$T/copy.qcow2" ||
	fail "qemu-img convert of the disk"
csize=$(stat -c %s "$T/copy.qcow2")
[ "$csize" -lt $((1 * M)) ] ||
	fail "qemu-img convert wrote $csize bytes for a 4 MiB disk with 256 KiB of data"
(cd "$img" && qemu-img convert -O raw qtop.qcow2 "$T/qtop.raw")
qemu-img convert -O raw "$T/copy.qcow2" "$T/copy.raw"
expect_same "$T/copy.raw" "$T/qtop.raw" "qemu-img convert -O qcow2: small ($csize bytes) and equal"

# cp --sparse=always keeps the holes and the bytes
for d in qtop vtop; do
	cp --sparse=always "$m/$d/disk" "$T/$d.cp"
	used=$(du -k "$T/$d.cp" | cut -f1)
	[ "$used" -le 512 ] || fail "$d: cp --sparse=always copy uses ${used} KiB"
	cmp -s "$T/$d.cp" "$m/$d/disk" || fail "$d: cp copy differs"
	ok "$d: cp --sparse=always copy is sparse (${used} KiB) and equal"
done
expect_same "$T/qtop.cp" "$T/qtop.raw" "qtop: = qemu-img convert of the chain"

layerfs_umount "$m"
check_sums
finish
