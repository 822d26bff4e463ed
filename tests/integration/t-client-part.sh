#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The partition files MNT/CHAIN/pN as a client sees them, against the disk
# they are windows of:
#   - a GPT (client-lib.sh's gpt_script) in a VHDX chain, and an MBR with
#     two primaries and an extended partition holding two logicals (p5,
#     p6) in a raw + QCOW2 overlay chain, both over random bytes;
#   - sfdisk --dump of the exposed disk is the dump of the raw file the
#     chain was made from, and the pN files are exactly its data
#     partitions (kernel numbering), each sized as the dump says;
#   - losetup -r -o START --sizelimit SIZE on the disk gives a block device
#     with the same size and bytes as pN (cmp), and blkid sees the same in
#     both; a loop device with --direct-io=on over pN uses O_DIRECT (DIO
#     1) and reads the same bytes;
#   - writable (-o rw): a write into pN is read at START + offset of the
#     disk, and a write into the disk is read in pN, both after the other
#     file's pages were cached by an earlier read; a write across the
#     end of p1 does not reach p2; after the unmount,
#     qemu-img finds both writes in the top file.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
. "$(dirname "$0")/client-lib.sh"
require_fuse
require qemu-img 7zz python3 sfdisk losetup blkid blockdev cmp mkfs.ext4

# dump_of FILE: sfdisk --dump without the lines and fields naming FILE
dump_of() {
	sfdisk --dump "$1" 2>/dev/null | grep -v '^device:' |
		sed -E 's|^[^ ]*[^0-9]([0-9]+) :|p\1 :|' ||
		fail "sfdisk --dump $1"
}

# data_parts FILE: "N START SIZE" in bytes of each partition of FILE that
# is not an MBR extended container (types 5, f, 85)
data_parts() {
	sfdisk --json "$1" | python3 -c '
import json, re, sys
t = json.load(sys.stdin)["partitiontable"]
ss = t.get("sectorsize", 512)
for p in t["partitions"]:
    if t["label"] == "dos" and p["type"].lower() in ("5", "f", "85"):
        continue
    n = re.search(r"([0-9]+)$", p["node"]).group(1)
    print(n, p["start"] * ss, p["size"] * ss)
' || fail "sfdisk --json $1"
}

mbr_script() {
	cat <<'EOF'
label: dos
label-id: 0x4c465331
unit: sectors
start=2048, size=30720, type=83
start=32768, size=16384, type=7
start=49152, size=73728, type=5
start=51200, size=20480, type=83
start=73728, size=47104, type=c
start=126976, size=4096, type=83
EOF
}

# ---- the two chains ---------------------------------------------------------
make_gpt_raw "$T/gpt.raw" "$GPT_MIB" random
random_file "$T/mbr.raw" 64 5
mbr_script | sfdisk -q "$T/mbr.raw" >"$T/sfdisk.out" 2>&1 ||
	fail "sfdisk (MBR) on a raw file: $(tail -2 "$T/sfdisk.out")"
# an ext4 in p5 (a logical partition), made on the raw file, for blkid
part_geom "$T/mbr.raw" 5
extract "$T/mbr.raw" "$P_START" "$P_SIZE" "$T/p5.img"
mkfs.ext4 -q -F -L logical5 "$T/p5.img" || fail "mkfs.ext4 on the p5 image"
dd if="$T/p5.img" of="$T/mbr.raw" bs=1M seek=$((P_START >> 20)) conv=notrunc,fsync \
	status=none || fail "dd p5 into mbr.raw"
rm -f "$T/p5.img"

family_from_raw vhdx "$T/g" "$T/gpt.raw"
snapshot_files "${FAM_BASES[@]}"
family_from_raw qcow2raw "$T/d" "$T/mbr.raw"
snapshot_files "${FAM_BASES[@]}"
D_CHAIN=$FAM_CHAIN D_TOP=$FAM_TOP

# blkid_of FILE: what blkid -p finds in FILE (TYPE, LABEL, UUID), or ""
blkid_of() {
	{ blkid -p -o export "$1" 2>/dev/null || true; } |
		{ grep -E '^(TYPE|LABEL|UUID)=' || true; } | sort | tr '\n' ' '
}

# check_parts WHAT CHAINDIR RAW: the pN files against sfdisk and losetup
check_parts() {
	local what=$1 cd_=$2 raw=$3 disk=$2/disk n start size got want dev
	dump_of "$disk" >"$T/disk.dump"
	dump_of "$raw" >"$T/raw.dump"
	diff -u "$T/raw.dump" "$T/disk.dump" >&2 ||
		fail "$what: sfdisk --dump of the disk differs from that of the raw file"
	ok "$what: sfdisk --dump of the disk = of the raw source ($(grep -c ' : ' "$T/disk.dump") partitions)"
	data_parts "$disk" >"$T/parts"
	[ -s "$T/parts" ] || fail "$what: sfdisk finds no partition in the disk"
	# the pN files, less an MBR extended container (which a kernel shows
	# as a 1 KiB device; layerfs may show it or not)
	want=$(cut -d' ' -f1 "$T/parts" | sed 's/^/p/' | sort | tr '\n' ' ')
	got=$(sfdisk --json "$disk" | python3 -c '
import json, os, re, sys
t = json.load(sys.stdin)["partitiontable"]
ext = {re.search(r"([0-9]+)$", p["node"]).group(1) for p in t["partitions"]
       if t["label"] == "dos" and p["type"].lower() in ("5", "f", "85")}
for f in sorted(os.listdir(sys.argv[1])):
    if re.fullmatch(r"p[0-9]+", f) and f[1:] not in ext:
        print(f)
' "$cd_" | sort | tr '\n' ' ')
	[ "$got" = "$want" ] || fail "$what: the chain shows [${got% }], sfdisk says [${want% }]"
	ok "$what: the pN files are sfdisk's data partitions [${want% }]"
	while read -r n start size; do
		expect_size "$cd_/p$n" "$size" "$what: p$n"
		dev=$(losetup -r -f --show -o "$start" --sizelimit "$size" "$disk") ||
			fail "$what: losetup -o $start --sizelimit $size"
		got=$(blockdev --getsize64 "$dev")
		[ "$got" = "$size" ] || { losetup -d "$dev"; fail "$what: $dev has $got bytes, p$n $size"; }
		cmp "$dev" "$cd_/p$n" >"$T/cmp.out" 2>&1 ||
			{ losetup -d "$dev"; fail "$what: losetup -o $start of the disk and p$n differ: $(head -1 "$T/cmp.out")"; }
		got=$(blkid_of "$dev")
		want=$(blkid_of "$cd_/p$n")
		losetup -d "$dev" || fail "losetup -d $dev"
		[ "$got" = "$want" ] || fail "$what: blkid: loop device [$got], p$n [$want]"
		ok "$what: p$n = losetup -o $start --sizelimit $size of the disk (cmp${got:+, blkid $got})"
		# pN itself behind a loop device that uses O_DIRECT
		dev=$(losetup --direct-io=on -r -f --show "$cd_/p$n") ||
			fail "$what: losetup --direct-io=on p$n"
		dio=$(losetup -n -O DIO "$dev" | tr -d ' ')
		cmp "$dev" "$cd_/p$n" >"$T/cmp.out" 2>&1 && rc=0 || rc=$?
		losetup -d "$dev" || fail "losetup -d $dev"
		[ "$rc" -eq 0 ] || fail "$what: loop device (direct-io) on p$n reads other bytes: $(head -1 "$T/cmp.out")"
		[ "$dio" = 1 ] || fail "$what: the loop device on p$n does not use direct I/O (DIO=$dio): O_DIRECT on pN refused?"
		ok "$what: losetup --direct-io=on p$n: DIO=1, same bytes"
	done <"$T/parts"
}

# ---- read-only ---------------------------------------------------------------
m=$T/mnt
layerfs_mount "$m" "$T/g"
for n in $(seq "$GPT_NPARTS"); do wait_part "$m/srv-L1" "$n"; done
check_parts "GPT in VHDX, read-only" "$m/srv-L1" "$T/gpt.raw"
[ "$(disk_mode "$m/srv-L1/p1")" = 444 ] || fail "read-only p1 has mode $(disk_mode "$m/srv-L1/p1")"
layerfs_umount "$m"

layerfs_mount "$m" "$T/d"
wait_part "$m/$D_CHAIN" 5
check_parts "MBR with logicals in raw + QCOW2" "$m/$D_CHAIN" "$T/mbr.raw"
[ "$(blkid -p -o value -s LABEL "$m/$D_CHAIN/p5")" = logical5 ] ||
	fail "p5 does not hold the ext4 labelled logical5"
ok "MBR: p5 holds the ext4 labelled logical5"
layerfs_umount "$m"

# ---- writable: a pN and the disk see each other's writes ---------------------
layerfs_mount "$m" "$T/d" -o rw
cd_=$m/$D_CHAIN
wait_part "$cd_" 6
cp "$T/mbr.raw" "$T/model"
part_geom "$cd_/disk" 1
s1=$P_START
part_geom "$cd_/disk" 6
s6=$P_START
python3 - "$cd_" "$s1" "$s6" "$T/model" <<'EOF' || fail "aliasing writes"
import os, random, sys
cd, s1, s6, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = random.Random(61)
def rd(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)
def wr(path, off, b):
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b, off)
    os.fsync(fd)
    os.close(fd)
disk, p1, p6 = cd + "/disk", cd + "/p1", cd + "/p6"
m = open(model, "r+b")
# cache both views first
rd(disk, 0, 64 << 20); rd(p1, 0, 15 << 20); rd(p6, 0, 2 << 20)
# into p1 at 4096 + 100 (unaligned), read through the disk
b = r.randbytes(70000)
wr(p1, 4196, b)
m.seek(s1 + 4196); m.write(b)
if rd(disk, s1 + 4196, len(b)) != b:
    sys.exit("a write into p1 is not read at its place in the disk")
# into the disk inside p6, read through p6
b = r.randbytes(12345)
wr(disk, s6 + 8192 + 7, b)
m.seek(s6 + 8192 + 7); m.write(b)
if rd(p6, 8192 + 7, len(b)) != b:
    sys.exit("a write into the disk is not read in p6")
# a write across the end of p1 must not reach p2 (right after it): it is
# refused, or cut at the end
fd = os.open(p1, os.O_WRONLY)
size = os.fstat(fd).st_size
try:
    n = os.pwrite(fd, b"\xee" * 8192, size - 4096)
except OSError:
    n = 0
os.close(fd)
if n not in (0, 4096):
    sys.exit("a write across the end of p1 wrote %d bytes" % n)
m.seek(s1 + size - 4096); m.write(b"\xee" * n)
print("write across the end of p1: %s" % ("cut at the end" if n else "refused"))
EOF
ok "rw: p1's write reads in the disk, the disk's write reads in p6 (after caching), a write across p1's end does not reach p2"
expect_same "$cd_/disk" "$T/model" "rw: the disk = model"
layerfs_umount "$m"
qemu-img compare -q -f raw -F qcow2 "$T/model" "$D_TOP" ||
	fail "qemu-img compare: ${D_TOP##*/} does not hold the writes"
ok "qemu-img compare: ${D_TOP##*/} = model (writes through p1, disk, p6)"
check_top qcow2raw "$D_TOP" strict
check_files
finish
