#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg create --layout: a Windows DeviceLayoutOEM.xml becomes L0 images
# with a GPT and formatted partitions.  The expected table is computed here
# from the XML by the documented rules (python's own XML parser); sfdisk
# and blkid read the disk as qemu-img, 7-Zip and layerfs flatten it;
# fsck.fat and ntfsfix/ntfsinfo judge the file systems.  Then 4096-byte
# sectors and two stores (through a loop device with 4 KiB sectors), and
# every malformed layout of tests/data/layouts must fail as it says.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img 7zz python3 cmp sfdisk blkid losetup fsck.fat ntfsfix \
	ntfsinfo mkfs.fat mkntfs dd
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"
[ "$(id -u)" = 0 ] || skip "losetup needs root"
# a loop device left on a mounted disk would keep it busy: detach first
loop=
trap '_rc=$?; [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null; (exit $_rc); _cleanup' EXIT

SAMPLE=$SRCDIR/examples/DeviceLayoutOEM.xml
d=$T/img
mkdir -p "$d"

li() { "$LAYERIMG" "$@"; }

# expected_table XML > JSON: what the GPT must hold (the rules of
# layerimg(1): 128 entries; each partition at the next multiple of its
# ByteAlignment (1 MiB without one); a partition without TotalBytes runs
# to the last usable LBA)
expected_table() {
	python3 - "$1" <<'PY'
import json, sys, xml.etree.ElementTree as ET
ns = {"d": "http://schemas.microsoft.com/embedded/2004/10/ImageUpdate/v2"}
root = ET.parse(sys.argv[1]).getroot()
ss = int(root.find("d:SectorSize", ns).text)
out = []
for st in root.findall("d:Stores/d:Store", ns):
    size = int(st.find("d:SizeInBytes", ns).text)
    n = size // ss
    ent = 16384 // ss
    first, last = 2 + ent, n - 2 - ent
    pos = first * ss
    parts = []
    for p in st.findall("d:Partitions/d:Partition", ns):
        al = p.find("d:ByteAlignment", ns)
        al = int(al.text) if al is not None else 1 << 20
        start = (pos + al - 1) // al * al
        tb = p.find("d:TotalBytes", ns)
        end = start + int(tb.text) if tb is not None else (last + 1) * ss
        fs = p.find("d:FileSystem", ns)
        parts.append({"start": start // ss, "size": (end - start) // ss,
                      "type": p.find("d:Type", ns).text.strip("{}").upper(),
                      "uuid": p.find("d:Id", ns).text.strip("{}").upper(),
                      "name": p.find("d:Name", ns).text,
                      "fs": fs.text if fs is not None else ""})
        pos = end
    out.append({"id": st.find("d:Id", ns).text.strip("{}").upper(),
                "type": st.find("d:StoreType", ns).text,
                "sectorsize": ss, "firstlba": first, "lastlba": last,
                "nsectors": n, "partitions": parts})
json.dump(out, sys.stdout)
PY
}

# check_table DEV EXPECTED-JSON STORE-INDEX WHAT: sfdisk reads it
check_table() {
	sfdisk --json "$1" >"$T/sfdisk.json" 2>"$T/sfdisk.err" ||
		fail "$4: sfdisk --json: $(head -2 "$T/sfdisk.err")"
	python3 - "$T/sfdisk.json" "$2" "$3" <<'PY' || fail "$4: the GPT differs from the layout"
import json, sys
got = json.load(open(sys.argv[1]))["partitiontable"]
want = json.load(open(sys.argv[2]))[int(sys.argv[3])]
err = []
def eq(what, a, b):
    if a != b:
        err.append("%s: %r, expected %r" % (what, a, b))
eq("label", got["label"], "gpt")
eq("disk id", got["id"].upper(), want["id"])
eq("sector size", got["sectorsize"], want["sectorsize"])
eq("first lba", got["firstlba"], want["firstlba"])
eq("last lba", got["lastlba"], want["lastlba"])
gp = got.get("partitions", [])
eq("partitions", len(gp), len(want["partitions"]))
for i, (g, w) in enumerate(zip(gp, want["partitions"])):
    for k in ("start", "size", "type", "uuid", "name"):
        eq("partition %d %s" % (i + 1, k),
           g.get(k).upper() if k in ("type", "uuid") else g.get(k), w[k])
if err:
    sys.exit("\n".join(err))
PY
	ok "$4: sfdisk reads the GPT the layout describes"
}

# extract SRC OFFSET LEN DST: copy a byte range out, data runs only (the
# flattened disks are sparse; a block device has no holes to skip)
extract() {
	python3 - "$@" <<'PY'
import errno, os, sys
src, off, n, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fi = os.open(src, os.O_RDONLY)
fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fo, n)
pos, end = off, off + n
while pos < end:
    try:
        d = os.lseek(fi, pos, os.SEEK_DATA)
        h = os.lseek(fi, d, os.SEEK_HOLE)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        d, h = pos, end		# no SEEK_DATA here: copy it all
    if d >= end:
        break
    h = min(h, end)
    while d < h:
        b = os.pread(fi, min(h - d, 1 << 20), d)
        if not b:
            sys.exit("short read at %d" % d)
        os.pwrite(fo, b, d - off)
        d += len(b)
    pos = h
PY
}

# check_fs DEV EXPECTED-JSON STORE-INDEX WHAT [blkid-only]: blkid, and
# fsck.fat, ntfsfix and ntfsinfo on a copy of each partition
check_fs() {
	local dev=$1 n i start size ss fs name line
	ss=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])]["sectorsize"])' "$2" "$3")
	n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))[int(sys.argv[2])]["partitions"]))' "$2" "$3")
	for ((i = 0; i < n; i++)); do
		line=$(python3 -c 'import json,sys
p = json.load(open(sys.argv[1]))[int(sys.argv[2])]["partitions"][int(sys.argv[3])]
print(p["start"], p["size"], p["fs"] or "-", p["name"])' "$2" "$3" "$i")
		read -r start size fs name <<<"$line"
		blkid -p -o export -O $((start * ss)) -S $((size * ss)) "$dev" \
			>"$T/blkid" 2>/dev/null || true
		case $fs in
		-)
			! grep -q '^TYPE=' "$T/blkid" ||
				fail "$4: partition $name has no file system, blkid finds $(grep '^TYPE=' "$T/blkid")"
			continue ;;
		NTFS) want=ntfs ;;
		*) want=vfat ;;
		esac
		grep -qx "TYPE=$want" "$T/blkid" ||
			fail "$4: partition $name: blkid: $(tr '\n' ' ' <"$T/blkid"), expected TYPE=$want"
		grep -qx "LABEL=$name" "$T/blkid" ||
			fail "$4: partition $name: blkid label: $(grep LABEL= "$T/blkid")"
		[ "$fs" != FAT32 ] || grep -qx "VERSION=FAT32" "$T/blkid" ||
			fail "$4: partition $name is not FAT32: $(grep VERSION "$T/blkid")"
		[ "${5:-}" = blkid-only ] && { ok "$4: partition $name: blkid $want \"$name\""; continue; }
		extract "$dev" $((start * ss)) $((size * ss)) "$T/part.img" ||
			fail "$4: cannot copy partition $name out"
		if [ $want = vfat ]; then
			fsck.fat -n "$T/part.img" >"$T/fsck.out" 2>&1 ||
				fail "$4: fsck.fat -n $name: $(tail -3 "$T/fsck.out")"
		else
			ntfsfix -n "$T/part.img" >"$T/fsck.out" 2>&1 ||
				fail "$4: ntfsfix -n $name: $(tail -3 "$T/fsck.out")"
			ntfsinfo -m "$T/part.img" >"$T/ntfsinfo.out" 2>&1 ||
				fail "$4: ntfsinfo -m $name: $(tail -2 "$T/ntfsinfo.out")"
			grep -q "Volume Name: $name\$" "$T/ntfsinfo.out" ||
				fail "$4: ntfsinfo: the volume of $name is not named $name"
		fi
		[ $want = vfat ] && by="fsck.fat -n" || by="ntfsfix -n, ntfsinfo"
		ok "$4: partition $name: blkid $want \"$name\", $by clean"
	done
}

# ---- the sample layout, in every format ----
expected_table "$SAMPLE" >"$T/sample.json" || fail "cannot read $SAMPLE"
for f in vhdx vhd qcow2 raw; do
	e=$f; [ $f = raw ] && e=img
	out=$d/sample$f-L0.$e
	li create --layout "$SAMPLE" -f $f "$out" >"$T/out" 2>"$T/err" ||
		fail "create --layout -f $f: $(tr '\n' '|' <"$T/err")"
	grep -q "created $out: $f, 402653184 bytes, 4 partitions (store MainOSStore)" "$T/out" ||
		fail "create --layout -f $f printed: $(cat "$T/out")"
	case $f in
	vhd) qemu-img convert -O raw --image-opts \
		"driver=vpc,force_size_calc=current_size,file.filename=$out" "$T/$f.raw" ;;
	raw) cp --sparse=always "$out" "$T/$f.raw" ;;
	*) qemu-img convert -O raw "$out" "$T/$f.raw" ;;
	esac
	expect_size "$T/$f.raw" 402653184 "$f: the store's SizeInBytes"
	check_table "$T/$f.raw" "$T/sample.json" 0 "sample -f $f"
	# the file systems are the same mkfs runs in every format: checked
	# in full once
	check_fs "$T/$f.raw" "$T/sample.json" 0 "sample -f $f" \
		"$([ $f = vhdx ] || echo blkid-only)"
done
# the backup GPT alone holds the same table; sfdisk --verify is content
sfdisk --verify "$T/vhdx.raw" >"$T/verify" 2>&1 && grep -q "No errors detected" "$T/verify" ||
	fail "sfdisk --verify: $(tr '\n' '|' <"$T/verify")"
cp --sparse=always "$T/vhdx.raw" "$T/backup.raw"
dd if=/dev/zero of="$T/backup.raw" bs=512 seek=1 count=33 conv=notrunc status=none
check_table "$T/backup.raw" "$T/sample.json" 0 "sample, primary GPT wiped: the backup"
rm -f "$T/backup.raw"

7zz e -so -tvhdx "$d/samplevhdx-L0.vhdx" 2>/dev/null >"$T/7z.raw" ||
	fail "7zz cannot read samplevhdx-L0.vhdx"
expect_same "$T/7z.raw" "$T/vhdx.raw" "7zz and qemu-img read samplevhdx-L0.vhdx alike"
7zz e -so -tvhd "$d/samplevhd-L0.vhd" 2>/dev/null >"$T/7z.raw" ||
	fail "7zz cannot read samplevhd-L0.vhd"
expect_same "$T/7z.raw" "$T/vhd.raw" "7zz and qemu-img read samplevhd-L0.vhd alike"

layerfs_mount "$T/mnt" "$d"
for f in vhdx vhd qcow2 raw; do
	expect_size "$T/mnt/sample$f-L0/disk" 402653184 "layerfs: sample$f-L0"
	[ "$(sparse_sha_of "$T/mnt/sample$f-L0/disk")" = "$(sparse_sha_of "$T/$f.raw")" ] ||
		fail "layerfs: sample$f-L0 differs from qemu-img's reading"
	ok "layerfs: sample$f-L0 = qemu-img's reading"
done
layerfs_umount "$T/mnt"
rc=0
li create --layout "$SAMPLE" "$d/samplevhdx-L0.vhdx" >/dev/null 2>"$T/err" || rc=$?
[ $rc = 1 ] && grep -q "samplevhdx-L0.vhdx: already exists" "$T/err" ||
	fail "an existing OUT: exit $rc, $(cat "$T/err")"
ok "an existing OUT is refused (exit 1)"

# ---- 4096-byte sectors, two stores, ids left to chance ----
cat >"$T/two.xml" <<'EOF'
<?xml version="1.0" encoding="utf-8"?>
<DeviceLayout xmlns="http://schemas.microsoft.com/embedded/2004/10/ImageUpdate/v2">
  <SectorSize>4096</SectorSize>
  <Stores>
    <Store>
      <Id>{11111111-2222-4333-8444-555555555555}</Id>
      <StoreType>MainOSStore</StoreType>
      <SizeInBytes>134217728</SizeInBytes>
      <Partitions>
        <Partition>
          <Name>ESP</Name>
          <Type>{c12a7328-f81f-11d2-ba4b-00a0c93ec93b}</Type>
          <FileSystem>FAT</FileSystem>
          <Id>{11111111-2222-4333-8444-000000000001}</Id>
          <TotalBytes>33554432</TotalBytes>
        </Partition>
        <Partition>
          <Name>MainOS</Name>
          <Type>{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}</Type>
          <FileSystem>NTFS</FileSystem>
          <Id>{11111111-2222-4333-8444-000000000002}</Id>
        </Partition>
      </Partitions>
    </Store>
    <Store>
      <Id>{11111111-2222-4333-8444-666666666666}</Id>
      <StoreType>DataStore</StoreType>
      <SizeInBytes>67108864</SizeInBytes>
      <Partitions>
        <Partition>
          <Name>Data</Name>
          <Type>{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}</Type>
          <FileSystem>NTFS</FileSystem>
          <Id>{11111111-2222-4333-8444-000000000003}</Id>
          <TotalBytes>33554432</TotalBytes>
          <ByteAlignment>4194304</ByteAlignment>
        </Partition>
      </Partitions>
    </Store>
  </Stores>
</DeviceLayout>
EOF
expected_table "$T/two.xml" >"$T/two.json"
li create --layout "$T/two.xml" -f vhdx "$T/two" >"$T/out" 2>"$T/err" ||
	fail "create --layout two stores: $(tr '\n' '|' <"$T/err")"
[ -f "$T/two/MainOSStore-L0.vhdx" ] && [ -f "$T/two/DataStore-L0.vhdx" ] ||
	fail "two stores: $(ls "$T/two")"
ok "two stores: OUT became a directory with MainOSStore-L0.vhdx and DataStore-L0.vhdx"
layerfs_mount "$T/mnt2" "$T/two"
i=0
for s in MainOSStore DataStore; do
	expect_size "$T/mnt2/$s-L0/disk" "$([ $s = DataStore ] && echo 67108864 || echo 134217728)" "$s"
	loop=$(losetup -f --show -r -b 4096 "$T/mnt2/$s-L0/disk") ||
		fail "losetup -b 4096 $s"
	check_table "$loop" "$T/two.json" $i "4K $s"
	check_fs "$loop" "$T/two.json" $i "4K $s"
	losetup -d "$loop"
	loop=
	i=$((i + 1))
done
layerfs_umount "$T/mnt2"
rc=0
li create --layout "$T/two.xml" -f vhd "$T/two-vhd" 2>"$T/err" || rc=$?
[ $rc = 2 ] && grep -q "two.xml:3: SectorSize 4096 is not supported by the vhd format" "$T/err" ||
	fail "SectorSize 4096 with -f vhd: exit $rc, $(cat "$T/err")"
ok "SectorSize 4096 with -f vhd is refused, naming the line"

# ---- without mkfs.fat and mkntfs: a warning, the partitions stay blank ----
mkdir -p "$T/nobin"
PATH=$T/nobin "$LAYERIMG" create --layout "$SAMPLE" -f raw "$T/blank-L0.img" \
	>/dev/null 2>"$T/err" || fail "create without mkfs tools: $(cat "$T/err")"
grep -q "blank-L0.img: partition MainOS (NTFS): mkntfs is not installed; left unformatted" "$T/err" &&
	grep -q "partition EFIESP (FAT32): mkfs.fat is not installed" "$T/err" ||
	fail "no warning about the missing tools: $(cat "$T/err")"
check_table "$T/blank-L0.img" "$T/sample.json" 0 "sample without mkfs tools"
[ "$(blkid -p -o value -s TYPE -O $((305152 * 512)) "$T/blank-L0.img" || true)" = "" ] ||
	fail "a partition got a file system without mkntfs"
ok "without mkfs.fat/mkntfs: one warning per partition, the GPT alone"

# ---- malformed layouts ----
n=0
for x in "$SRCDIR"/tests/data/layouts/*.xml; do
	exp=$(sed -n 's/^<!-- expect: \(.*\) -->$/\1/p' "$x")
	[ -n "$exp" ] || fail "${x##*/} has no expect: line"
	want_rc=${exp%% *}; rest=${exp#* }; line=${rest%% *}; ere=${rest#* }
	rc=0
	li create --layout "$x" -f vhdx "$T/bad-L0.vhdx" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" = "$want_rc" ] || fail "${x##*/}: exit $rc, expected $want_rc: $(cat "$T/err")"
	grep -Eq -- "^layerimg: create: error: $x:$line: $ere" "$T/err" ||
		fail "${x##*/}: expected \"$x:$line: $ere\", got: $(cat "$T/err")"
	[ "$(grep -c 'error:' "$T/err")" = 1 ] ||
		fail "${x##*/}: more than one error line: $(cat "$T/err")"
	[ ! -e "$T/bad-L0.vhdx" ] || fail "${x##*/}: an image was left behind"
	n=$((n + 1))
done
[ $n -ge 12 ] || fail "only $n malformed layouts"
ok "$n malformed layouts: each exits as expected with one error naming its line"
finish
