#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg create: base layers (dynamic and fixed) and differencing layers
# in every format, judged by tools that share no code with ours: qemu-img
# (info, check, map, convert), qemu-io (writes the base's data), 7-Zip
# (flattens VHD/VHDX chains by itself), tests/tools/vhdcheck.py and
# vhdxcheck.py; then layerfs mounts the directory and every chain must read
# as those tools read it.  Also: the layer names chosen by --next-diff,
# --next-level and the default, and the usage errors.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io 7zz python3 cmp
require_script vhdcheck.py
require_script vhdxcheck.py
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

d=$T/img
mkdir -p "$d"
MiB=1048576
SIZE=$((64 * MiB))

li() { "$LAYERIMG" "$@"; }
# expect_rc RC WHAT CMD...: CMD exits with RC; its stderr in $T/last.err
expect_rc() {
	local want=$1 what=$2 rc=0
	shift 2
	"$@" >"$T/last.out" 2>"$T/last.err" || rc=$?
	[ "$rc" -eq "$want" ] ||
		fail "$what: exit $rc, expected $want: $(tr '\n' '|' <"$T/last.err")"
}
expect_msg() {	# expect_msg ERE WHAT: the last stderr matches
	grep -Eq -- "$1" "$T/last.err" ||
		fail "$2: stderr does not match /$1/: $(tr '\n' '|' <"$T/last.err")"
}

# qemu's view of an image: vpc takes the size from the footer's current
# size (as Hyper-V) only when told to; every other format as it is
qopts() {
	case $1 in
	*.vhd) echo "driver=vpc,force_size_calc=current_size,file.filename=$1" ;;
	*.vhdx) echo "driver=vhdx,file.filename=$1" ;;
	*.qcow2) echo "driver=qcow2,file.filename=$1" ;;
	*) echo "driver=raw,file.filename=$1" ;;
	esac
}
qsize() {
	qemu-img info --output=json --image-opts "$(qopts "$1")" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}
qflat() { qemu-img convert -O raw --image-opts "$(qopts "$1")" "$2"; }
qwrite() { qemu-io --image-opts "$(qopts "$1")" -c "$2" >/dev/null; }
# the VHD footer's disk type (2 fixed, 3 dynamic, 4 differencing)
vhd_type() {
	python3 -c 'import os,sys
f=open(sys.argv[1],"rb"); f.seek(-512, os.SEEK_END); b=f.read(512)
print(int.from_bytes(b[60:64],"big"))' "$1"
}
# every byte mapped as data by qemu (a fully allocated image)
all_data() {
	qemu-img map --output=json --image-opts "$(qopts "$1")" | python3 -c '
import json, sys
m = json.load(sys.stdin)
bad = [e for e in m if not e["data"]]
sys.exit("%d unallocated runs, first at %d" % (len(bad), bad[0]["start"]) if bad else 0)'
}

truncate -s $SIZE "$T/zero.raw"
fmts=(vhd vhdx qcow2 raw)
ext() { [ "$1" = raw ] && echo img || echo "$1"; }

# ---- base layers: dynamic and fixed ----
for f in "${fmts[@]}"; do
	e=$(ext "$f")
	for kind in dyn fix; do
		img=$d/$f$kind-L0.$e
		opt=()
		[ $kind = fix ] && opt=(--fixed)
		expect_rc 0 "create -f $f $kind" li create -f "$f" "${opt[@]}" "$img" 64M
		grep -q "created $img" "$T/last.out" || fail "$f $kind: no 'created' line"
		[ "$(qsize "$img")" = $SIZE ] ||
			fail "$f $kind: qemu-img reads $(qsize "$img") bytes, not $SIZE"
		qflat "$img" "$T/flat.raw"
		expect_same "$T/flat.raw" "$T/zero.raw" "$f $kind: qemu-img reads $SIZE zero bytes"
		case $f in
		vhd)
			python3 "$TOOLS/vhdcheck.py" "$img" >"$T/chk" ||
				fail "$f $kind: vhdcheck.py: $(head -3 "$T/chk")"
			want=3; [ $kind = fix ] && want=2
			[ "$(vhd_type "$img")" = $want ] ||
				fail "$f $kind: footer disk type $(vhd_type "$img"), expected $want"
			[ $kind = dyn ] || expect_size "$img" $((SIZE + 512)) "$f fixed: data + footer"
			7zz e -so -tvhd "$img" 2>/dev/null | cmp -s - "$T/zero.raw" ||
				fail "$f $kind: 7zz does not read $SIZE zero bytes"
			;;
		vhdx)
			python3 "$TOOLS/vhdxcheck.py" "$img" >"$T/chk" ||
				fail "$f $kind: vhdxcheck.py: $(head -3 "$T/chk")"
			qemu-img check -q "$img" || fail "$f $kind: qemu-img check"
			7zz e -so -tvhdx "$img" 2>/dev/null | cmp -s - "$T/zero.raw" ||
				fail "$f $kind: 7zz does not read $SIZE zero bytes"
			;;
		qcow2)
			qemu-img check -q "$img" || fail "$f $kind: qemu-img check"
			;;
		esac
		if [ $kind = fix ] && [ $f != raw ]; then
			all_data "$img" || fail "$f fixed: not fully allocated"
		fi
		if [ $kind = dyn ] && [ $f != raw ]; then
			[ "$(stat -c %s "$img")" -lt $((8 * MiB)) ] ||
				fail "$f dynamic: $(stat -c %s "$img") bytes in the file"
		fi
		case $f in
		vhd*) by="qemu-img, 7zz, ${f}check.py" ;;
		qcow2) by="qemu-img info/check/convert" ;;
		*) by="qemu-img" ;;
		esac
		ok "$f $kind base: $by agree (64 MiB of zeros)"
	done
done

# ---- data in the dynamic bases (qemu-io), then a differencing layer ----
seed=1
for f in "${fmts[@]}"; do
	e=$(ext "$f")
	base=$d/${f}dyn-L0.$e
	qwrite "$base" "write -P 0x$((40 + seed)) 0 1M" ||
		fail "qemu-io cannot write $base"
	qwrite "$base" "write -P 0x5a 40M 3M"
	qflat "$base" "$T/$f.base.raw"
	seed=$((seed + 1))
	expect_rc 0 "create -b $f" li create -b "$base"
	want=$(ext "$f"); [ $f = raw ] && want=qcow2
	kid=$d/${f}dyn-L1.$want
	[ -f "$kid" ] || fail "create -b $base made no ${kid##*/}: $(cat "$T/last.out")"
	ok "$f: the differencing layer over L0 is named ${kid##*/}"
	case $want in
	vhd)
		python3 "$TOOLS/vhdcheck.py" "$kid" --parent "$base" >"$T/chk" ||
			fail "$kid: vhdcheck.py: $(head -3 "$T/chk")"
		[ "$(vhd_type "$kid")" = 4 ] || fail "$kid is not a differencing VHD"
		(cd "$d" && 7zz e -so -tvhd "${kid##*/}" 2>"$T/7z.err") >"$T/kid.raw" ||
			fail "7zz e ${kid##*/}: $(tail -2 "$T/7z.err")"
		expect_same "$T/kid.raw" "$T/$f.base.raw" "$f: 7zz reads the parent through ${kid##*/}"
		;;
	vhdx)
		python3 "$TOOLS/vhdxcheck.py" "$kid" >"$T/chk" ||
			fail "$kid: vhdxcheck.py: $(head -3 "$T/chk")"
		(cd "$d" && 7zz e -so -tvhdx "${kid##*/}" 2>"$T/7z.err") >"$T/kid.raw" ||
			fail "7zz e ${kid##*/}: $(tail -2 "$T/7z.err")"
		expect_same "$T/kid.raw" "$T/$f.base.raw" "$f: 7zz reads the parent through ${kid##*/}"
		;;
	qcow2)
		qemu-img check -q "$kid" || fail "$kid: qemu-img check"
		bf=$(qemu-img info --output=json "$kid" | python3 -c \
			'import json,sys; print(json.load(sys.stdin).get("backing-filename"))')
		[ "$bf" = "${base##*/}" ] ||
			fail "$kid: backing file is $bf, not ${base##*/}"
		qemu-img convert -O raw "$kid" "$T/kid.raw"
		expect_same "$T/kid.raw" "$T/$f.base.raw" "$f: qemu-img reads the parent through ${kid##*/}"
		;;
	esac
done

# ---- SIZE, block size, cluster size, sector size ----
expect_rc 0 "create -b with SIZE" li create -b "$d/qcow2dyn-L1.qcow2" "$d/big-L2.qcow2" 96M
[ "$(qsize "$d/big-L2.qcow2")" = $((96 * MiB)) ] || fail "big-L2.qcow2 is not 96 MiB"
qemu-img check -q "$d/big-L2.qcow2" || fail "big-L2.qcow2: qemu-img check"
ok "-b PARENT NAME SIZE: a larger differencing layer"
expect_rc 0 "qcow2 cluster_size" li create -f qcow2 -o cluster_size=4k "$d/c4k.qcow2" 8M
qemu-img info "$d/c4k.qcow2" | grep -q "^cluster_size: 4096$" || fail "cluster_size=4k not used"
expect_rc 0 "qcow2 fixed 4k clusters" li create -f qcow2 -o cluster_size=4k,preallocation=metadata "$d/c4kf.qcow2" 8M
qemu-img check -q "$d/c4kf.qcow2" || fail "c4kf.qcow2: qemu-img check"
all_data "$d/c4kf.qcow2" || fail "c4kf.qcow2 is not preallocated"
expect_rc 0 "vhdx block size" li create -f vhdx --block-size 1M "$d/b1m512.vhdx" 8M
qemu-img info "$d/b1m512.vhdx" | grep -q "^cluster_size: 1048576$" || fail "vhdx --block-size 1M not used"
# qemu reads no VHDX with 4096-byte logical sectors: vhdxcheck.py, 7-Zip
# and the metadata item itself judge that one
expect_rc 0 "vhdx sector size" li create -f vhdx --block-size 1M --sector-size 4096 "$d/b1m.vhdx" 8M
7zz e -so -tvhdx "$d/b1m.vhdx" 2>/dev/null | cmp -s - <(head -c $((8 * MiB)) "$T/zero.raw") ||
	fail "7zz does not read 8 MiB of zeros from b1m.vhdx"
python3 "$TOOLS/vhdxcheck.py" "$d/b1m.vhdx" >"$T/chk" || fail "b1m.vhdx: $(head -3 "$T/chk")"
python3 - "$d/b1m.vhdx" <<'PY' || fail "b1m.vhdx: logical sector size is not 4096"
import struct, sys
f = open(sys.argv[1], "rb").read()
# MS-VHDX 2.2.3: the region table at 192 KiB names the metadata region
# (8B7CA206-4790-4B9A-B8FE-575F050F886E); 2.6.1: its table names the
# logical sector size item (8141BF1D-A96F-4709-BA47-F233A8FAAB5F)
META = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")
LSS = bytes.fromhex("1dbf41816fa90947ba47f233a8faab5f")
rt = 192 * 1024
meta = None
for i in range(struct.unpack_from("<I", f, rt + 8)[0]):
    e = rt + 16 + 32 * i
    if f[e:e + 16] == META:
        meta = struct.unpack_from("<Q", f, e + 16)[0]
assert meta is not None and f[meta:meta + 8] == b"metadata"
for i in range(struct.unpack_from("<H", f, meta + 10)[0]):
    e = meta + 32 + 32 * i
    if f[e:e + 16] == LSS:
        off = struct.unpack_from("<I", f, e + 16)[0]
        sys.exit(0 if struct.unpack_from("<I", f, meta + off)[0] == 4096 else 1)
sys.exit(1)
PY
ok "SIZE, -o cluster_size, preallocation=metadata, --block-size, --sector-size"

# ---- the names --next-diff, --next-level and the default choose ----
expect_rc 0 "next-diff over L1" li create -q -b "$d/vhddyn-L1.vhd" --next-diff
[ -f "$d/vhddyn-L101.vhd" ] || fail "--next-diff over L1 did not make L101"
expect_rc 0 "next-diff over L101" li create -q -b "$d/vhddyn-L101.vhd" --next-diff
[ -f "$d/vhddyn-L102.vhd" ] || fail "--next-diff over L101 did not make L102"
expect_rc 0 "next-level over L102" li create -q -b "$d/vhddyn-L102.vhd" --next-level
[ -f "$d/vhddyn-L2.vhd" ] || fail "--next-level over L102 did not make L2"
expect_rc 0 "default over L1 (L2 taken)" li create -q -b "$d/vhddyn-L1.vhd"
[ -f "$d/vhddyn-L103.vhd" ] || fail "the default over L1 with L2 taken did not make L103: $(ls "$d")"
expect_rc 1 "next-diff over L0" li create -b "$d/vhddyn-L0.vhd" --next-diff
expect_msg "no free layer name.*L0" "--next-diff over L0"
expect_rc 1 "next-level over L2, L3 taken" sh -c "touch '$d/vhddyn-L3.raw' && '$LAYERIMG' create -b '$d/vhddyn-L2.vhd' --next-level"
rm -f "$d/vhddyn-L3.raw"
expect_msg "no free layer name one level above L2" "--next-level with L3 taken"
mkdir "$d/sub"
expect_rc 0 "NAME as a directory" li create -q -b "$d/vhddyn-L2.vhd" "$d/sub"
[ -f "$d/sub/vhddyn-L3.vhd" ] || fail "-b PARENT DIR did not make DIR/vhddyn-L3.vhd"
python3 "$TOOLS/vhdcheck.py" "$d/sub/vhddyn-L3.vhd" --parent "$d/vhddyn-L2.vhd" >"$T/chk" ||
	fail "sub/vhddyn-L3.vhd: $(head -3 "$T/chk")"
# 7-Zip on Linux cannot follow "..\" locators: layerfs reads it (the
# parent lies outside the mounted directory)
layerfs_mount "$T/mnt-sub" "$d/sub" -o allow_outside
expect_same "$T/mnt-sub/vhddyn-L3/disk" "$T/vhd.base.raw" "layerfs: sub/vhddyn-L3 over ../vhddyn-L2"
layerfs_umount "$T/mnt-sub"
mv "$d/sub/vhddyn-L3.vhd" "$T/"	# out of the way of the mount below
ok "names: --next-diff L1->L101->L102, --next-level ->L2, default ->L103, DIR"

# ---- layerfs mounts every chain as the oracles read them ----
layerfs_mount "$T/mnt" "$d"
m=$T/mnt
for f in "${fmts[@]}"; do
	e=$(ext "$f")
	want=$e; [ $f = raw ] && want=qcow2
	expect_same "$m/${f}dyn-L0/disk" "$T/$f.base.raw" "layerfs: ${f}dyn-L0"
	expect_same "$m/${f}dyn-L1/disk" "$T/$f.base.raw" "layerfs: ${f}dyn-L1 (over ${f}dyn-L0)"
	expect_size "$m/${f}fix-L0/disk" $SIZE "layerfs: ${f}fix-L0"
	cmp -s "$m/${f}fix-L0/disk" "$T/zero.raw" || fail "layerfs: ${f}fix-L0 is not zeros"
done
for l in vhddyn-L101 vhddyn-L102 vhddyn-L103 vhddyn-L2; do
	expect_same "$m/$l/disk" "$T/vhd.base.raw" "layerfs: $l"
done
expect_size "$m/big-L2/disk" $((96 * MiB)) "layerfs: big-L2 is 96 MiB"
expect_no_error "$MOUNT_ERR" vhddyn-L1.vhd
layerfs_umount "$T/mnt"

# ---- usage and failures ----
expect_rc 0 "--help" li create --help
grep -q "^Usage: layerimg create" "$T/last.out" || fail "--help prints no usage"
expect_rc 2 "no SIZE" li create -f qcow2 "$d/x.qcow2"
expect_msg "needs NAME and SIZE" "no SIZE"
expect_rc 2 "no format" li create "$d/x.bin" 1M
expect_msg "no -f" "no format"
expect_rc 2 "bad format" li create -f vmdk "$d/x.vmdk" 1M
expect_msg 'unknown format .vmdk.' "bad format"
expect_rc 2 "bad -o" li create -f qcow2 -o colour=red "$d/x.qcow2" 1M
expect_msg 'unknown option .colour=red.' "bad -o"
expect_rc 2 "bad size" li create -f qcow2 "$d/x.qcow2" 12Q
expect_msg 'bad SIZE "12Q"' "bad size"
expect_rc 2 "--fixed with -b" li create --fixed -b "$d/qcow2dyn-L0.qcow2" "$d/x.qcow2"
expect_rc 2 "raw differencing" li create -f raw -b "$d/qcow2dyn-L0.qcow2" "$d/x.img"
expect_msg "raw format cannot make differencing" "raw differencing"
expect_rc 2 "missing parent" li create -b "$d/nothere.vhd"
expect_msg "nothere.vhd" "missing parent"
expect_rc 2 "vhd 4096" li create -f vhd --sector-size 4096 "$d/x.vhd" 1M
expect_rc 1 "existing NAME" li create -f qcow2 "$d/qcow2dyn-L0.qcow2" 1M
expect_msg "qcow2dyn-L0.qcow2: already exists" "existing NAME"
expect_rc 1 "vhd too big" li create -f vhd "$d/x.vhd" 3T
expect_msg "x.vhd: size must be" "vhd too big"
[ ! -e "$d/x.qcow2" ] && [ ! -e "$d/x.vhd" ] && [ ! -e "$d/x.img" ] ||
	fail "a failed create left a file behind"
ok "usage errors exit 2, failures exit 1, nothing left behind"
finish
