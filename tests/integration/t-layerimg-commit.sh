#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg commit merges a top layer into its parent, for VHD, VHDX, QCOW2
# and raw parents (write-lib.sh's families: bases made by qemu-img, tops
# by layerfs -o newlayer or qemu-img create -b).  The top is written
# through a layerfs -o rw mount (random writes at unaligned offsets,
# punch-hole and zero-range, mirrored into a model file), plus a zeroed
# range over parent data.  After the commit the parent alone reads the
# model: through layerfs (its own chain in the mount), and through an
# independent reader (qemu-img convert, 7zz, the raw file itself); the
# format checkers accept both files, and the top still reads the model.
# Refusals: a sibling depending on the parent (exit 1, parent unchanged,
# --force overrides), --drop of a layer other images are built on, a
# base image, bad usage.  --drop deletes the top.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img qemu-io 7zz python3 cmp
require_script vhdcheck.py
require_script vhdxcheck.py
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"
[ -x "$LAYERIMG" ] || fail "$LAYERIMG is not an executable"

MiB=$((1024 * 1024))

# zero_over DISK MODEL OFF LEN MODE: fallocate (punch or zero) on DISK,
# zeros into MODEL
zero_over() {
	python3 - "$@" <<'PY' || fail "fallocate $1 $3+$4 ($5)"
import ctypes, os, sys
disk, model, off, ln, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
fd = os.open(disk, os.O_RDWR)
m = {"punch": 0x03, "zero": 0x10}[mode]
if libc.fallocate(fd, m, off, ln) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))
os.fsync(fd)
mf = os.open(model, os.O_RDWR)
os.pwrite(mf, bytes(ln), off)
PY
}

# parent_flat FAM PARENT OUT: the parent file alone, read by another tool
parent_flat() {
	local fam=$1 parent=$2 out=$3
	case $fam in
	qcow2)	qemu-img convert -f qcow2 -O raw "$parent" "$out" ||
			fail "qemu-img convert $parent" ;;
	qcow2raw) cp "$parent" "$out" ;;
	vhd)	7zz e -so -tvhd "$parent" >"$out" 2>"$out.err" ||
			fail "7zz e -tvhd $parent: $(tail -2 "$out.err")" ;;
	vhdx)	7zz e -so -tvhdx "$parent" >"$out" 2>"$out.err" ||
			fail "7zz e -tvhdx $parent: $(tail -2 "$out.err")" ;;
	esac
}

# check_parent FAM PARENT: the format's checker accepts the parent
check_parent() {
	local fam=$1 parent=$2
	case $fam in
	qcow2) check_top qcow2 "$parent" strict ;;
	qcow2raw) ;;
	vhd)	python3 "$TOOLS/vhdcheck.py" "$parent" >"$T/pc.out" 2>&1 ||
			fail "vhdcheck.py $parent: $(head -5 "$T/pc.out" | tr '\n' '|')"
		ok "vhdcheck.py ${parent##*/}: clean" ;;
	vhdx)	python3 "$TOOLS/vhdxcheck.py" "$parent" >"$T/pc.out" 2>&1 ||
			fail "vhdxcheck.py $parent: $(head -5 "$T/pc.out" | tr '\n' '|')"
		ok "vhdxcheck.py ${parent##*/}: clean" ;;
	esac
}

## usage
"$LAYERIMG" commit --help | grep -q '^Usage: layerimg commit' ||
	fail "commit --help"
rc=0; "$LAYERIMG" commit 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "commit without TOP: exit $rc, expected 2"
rc=0; "$LAYERIMG" commit --bogus x 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "commit --bogus: exit $rc, expected 2"
ok "commit --help exits 0; bad usage exits 2"

for fam in vhd vhdx qcow2 qcow2raw; do
	dir=$T/$fam
	make_family "$fam" "$dir" 24
	parent=${FAM_BASES[0]}
	pchain=$(basename "${parent%.*}")
	model=$T/$fam.model
	cp "$dir.base-raw" "$model"

	m=$T/m-$fam
	layerfs_mount "$m" "$dir" "${FAM_FIRST[@]}"
	disk=$m/$FAM_CHAIN/disk
	scribble "$disk" "$model" "commit-$fam" 40
	# parent data (random MiB 3 and 9 of the base) zeroed in the top
	zero_over "$disk" "$model" $((3 * MiB + 1000)) $((MiB + 5000)) punch
	zero_over "$disk" "$model" $((9 * MiB)) $((MiB / 2 + 512)) zero
	want=$(sha_of "$model")
	expect_sha "$disk" "$want" "$fam: the written chain = model"
	layerfs_umount "$m"
	[ "$(sha_of "$dir.base-raw")" != "$want" ] ||
		fail "$fam: the writes changed nothing"
	flat_of "$fam" "$FAM_TOP" "$T/$fam.flat"
	expect_sha "$T/$fam.flat" "$want" "$fam: ${FAM_TOP##*/} read by an independent tool = model"
	rm -f "$T/$fam.flat"

	"$LAYERIMG" commit "$FAM_TOP" >"$T/commit.out" 2>"$T/commit.err" ||
		fail "$fam: commit failed: $(tr '\n' '|' <"$T/commit.err")"
	grep -q "committed into" "$T/commit.out" ||
		fail "$fam: commit printed: $(cat "$T/commit.out")"
	ok "$fam: layerimg commit ${FAM_TOP##*/} exits 0"

	# the parent alone, by an independent reader
	parent_flat "$fam" "$parent" "$T/$fam.pflat"
	expect_sha "$T/$fam.pflat" "$want" "$fam: ${parent##*/} alone (independent reader) = model"
	rm -f "$T/$fam.pflat"
	check_parent "$fam" "$parent"
	check_top "$fam" "$FAM_TOP"

	# the parent alone and the top, through layerfs
	layerfs_mount "$m" "$dir"
	expect_sha "$m/$pchain/disk" "$want" "$fam: layerfs $pchain/disk (the parent alone) = model"
	expect_sha "$m/$FAM_CHAIN/disk" "$want" "$fam: layerfs $FAM_CHAIN/disk still = model"
	expect_no_error "$m/.layerfs.log" "${FAM_TOP##*/}"
	layerfs_umount "$m"
done

## a sibling depends on the parent: refused, parent unchanged; --force
dir=$T/qcow2
parent=$dir/vm-L1.qcow2
(cd "$dir" && qemu-img create -q -f qcow2 -b vm-L1.qcow2 -F qcow2 vm-L101.qcow2) ||
	fail "qemu-img create sibling"
qemu-io -f qcow2 -c 'write -P 0x3c 5M 1M' -c 'write -z 12M 64k' \
	"$dir/vm-L2.qcow2" >/dev/null || fail "qemu-io write"
psum=$(sha_of "$parent")
rc=0
"$LAYERIMG" commit "$dir/vm-L2.qcow2" >/dev/null 2>"$T/refuse.err" || rc=$?
[ "$rc" = 1 ] || fail "commit with a sibling: exit $rc, expected 1"
expect_error "$T/refuse.err" vm-L1.qcow2 'depend.*vm-L101\.qcow2.*--force'
[ "$(sha_of "$parent")" = "$psum" ] || fail "refused commit changed the parent"
ok "refused commit left vm-L1.qcow2 unchanged"
qemu-img convert -f qcow2 -O raw "$dir/vm-L2.qcow2" "$T/expect.raw"
"$LAYERIMG" commit --force "$dir/vm-L2.qcow2" >/dev/null 2>"$T/force.err" ||
	fail "commit --force: $(tr '\n' '|' <"$T/force.err")"
grep -q "warning: .*vm-L101.qcow2" "$T/force.err" ||
	fail "commit --force did not warn about the sibling: $(cat "$T/force.err")"
qemu-img convert -f qcow2 -O raw "$parent" "$T/got.raw"
expect_same "$T/got.raw" "$T/expect.raw" "commit --force: vm-L1.qcow2 alone = the chain of vm-L2"
check_top qcow2 "$parent" strict
rm -f "$T/got.raw" "$T/expect.raw" "$dir/vm-L101.qcow2"

## --drop: refused while an image is built on the top, then deletes it
dir=$T/qcow2raw
(cd "$dir" && qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 child.qcow2) ||
	fail "qemu-img create child"
qemu-io -f qcow2 -c 'write -P 0x6b 2M 700k' "$dir/top.qcow2" >/dev/null ||
	fail "qemu-io write"
rc=0
"$LAYERIMG" commit --drop "$dir/top.qcow2" >/dev/null 2>"$T/drop.err" || rc=$?
[ "$rc" = 1 ] || fail "commit --drop with a child: exit $rc, expected 1"
expect_error "$T/drop.err" top.qcow2 'child\.qcow2'
[ -f "$dir/top.qcow2" ] || fail "refused --drop deleted top.qcow2"
rm -f "$dir/child.qcow2"
qemu-img convert -f qcow2 -O raw "$dir/top.qcow2" "$T/expect.raw"
## qemu-img's letters: -d keeps the top (it never deletes anything), -f is
## TOP's format, -b names the parent, -p draws progress, --output=json
"$LAYERIMG" commit -d -f qcow2 -b "$dir/base.raw" -p --output=json \
	"$dir/top.qcow2" >"$T/keep.json" 2>"$T/keep.err" ||
	fail "commit -d -f qcow2 -b: $(tr '\n' '|' <"$T/keep.err")"
[ -f "$dir/top.qcow2" ] || fail "commit -d deleted top.qcow2 (qemu-img's -d keeps it)"
grep -q '100%' "$T/keep.err" || fail "commit -p drew no progress: $(cat "$T/keep.err")"
python3 - "$T/keep.json" "$dir" <<'EOF' || fail "commit --output=json: $(cat "$T/keep.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["version"] == 1 and j["command"] == "commit", j
assert j["top"] == sys.argv[2] + "/top.qcow2", j
assert j["parent"].endswith("/base.raw") and j["parent_format"] == "raw", j
assert j["bytes_committed"] >= 700 * 1024 and j["top_deleted"] is False, j
assert isinstance(j["parent_identity_updated"], bool), j
EOF
expect_same "$dir/base.raw" "$T/expect.raw" "commit -d: base.raw = the chain of top.qcow2"
ok "commit -d -f qcow2 -b BASE -p --output=json: top kept, JSON result"
sum=$(sha256sum <"$dir/base.raw")
for bad in "-f vhdx" "-f vpc" "-b $dir/top.qcow2" "-f"; do
	rc=0
	# shellcheck disable=SC2086
	"$LAYERIMG" commit $bad "$dir/top.qcow2" >/dev/null 2>"$T/bad.err" || rc=$?
	[ "$rc" = 2 ] || fail "commit $bad: exit $rc, expected 2"
	head -1 "$T/bad.err" | grep -q '^layerimg: commit: error: ' ||
		fail "commit $bad: $(cat "$T/bad.err")"
done
grep -q 'expected one TOP' "$T/bad.err" || fail "commit -f TOP: $(cat "$T/bad.err")"
[ "$(sha256sum <"$dir/base.raw")" = "$sum" ] && [ -f "$dir/top.qcow2" ] ||
	fail "a refused commit wrote or deleted"
ok "commit -f FMT (another format), -b not the parent, -f without FMT: refused"

"$LAYERIMG" commit --drop --no-progress "$dir/top.qcow2" >"$T/drop.out" 2>"$T/drop.err" ||
	fail "commit --drop: $(tr '\n' '|' <"$T/drop.err")"
[ ! -s "$T/drop.err" ] || fail "commit --no-progress printed: $(cat "$T/drop.err")"
[ ! -e "$dir/top.qcow2" ] || fail "commit --drop left top.qcow2"
expect_same "$dir/base.raw" "$T/expect.raw" "commit --drop: base.raw = the chain of top.qcow2, which is gone"

## nothing to commit into
rc=0
"$LAYERIMG" commit "$dir/base.raw" >/dev/null 2>"$T/base.err" || rc=$?
[ "$rc" = 1 ] || fail "commit of a base image: exit $rc, expected 1"
expect_error "$T/base.err" base.raw 'no parent'
rc=0
"$LAYERIMG" commit "$T/missing.qcow2" >/dev/null 2>"$T/missing.err" || rc=$?
[ "$rc" = 2 ] || fail "commit of a missing file: exit $rc, expected 2"
expect_error "$T/missing.err" missing.qcow2

finish
