#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-layerimg-flow: the life of a layer, end to end, for VHD, VHDX and QCOW2:
#   layerimg create (base) -> layerfs -o rw writes into it
#   -> layerimg create -b (next layer) -> layerfs -o rw random writes,
#      punch-hole and zero-range into the new layer, mirrored in a model
#   -> layerimg check: both files clean
#   -> layerimg commit: the parent alone now reads what the chain read
#      (through layerfs, and through an independent reader: qemu-img for
#      qcow2, 7-Zip for VHD/VHDX)
#   -> layerimg convert -O raw of the chain equals the same oracle.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img 7zz python3 cmp
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

# oracle FMT FILE OUT: FILE's chain flattened by a reader that is not ours
oracle() {
	case $1 in
	qcow2) flat_of qcow2 "$2" "$3" ;;
	vhd) flat_of vhd "$2" "$3" ;;
	vhdx) flat_of vhdx "$2" "$3" ;;
	esac
}

for fmt in vhd vhdx qcow2; do
	d=$T/$fmt
	m=$T/mnt-$fmt
	mkdir -p "$d" "$m"
	base=$d/os-L0.$fmt

	"$LAYERIMG" create -q -f "$fmt" "$base" 24M ||
		fail "$fmt: layerimg create -f $fmt os-L0.$fmt 24M"
	# put data into the base through layerfs: a standalone image is
	# written in place only when rw_base names it
	layerfs_mount "$m" "$d" -o rw,rw_base=os-L0
	pattern "$m/os-L0/disk" 0 $((3 << 20)) "$fmt-base-a"
	pattern "$m/os-L0/disk" $((10 << 20)) 777777 "$fmt-base-b"
	layerfs_umount "$m"

	"$LAYERIMG" create -q -b "$base" ||
		fail "$fmt: layerimg create -b os-L0.$fmt"
	top=$d/os-L1.$fmt
	[ -f "$top" ] || fail "$fmt: create -b did not make os-L1.$fmt: $(ls "$d")"
	ok "$fmt: layerimg create made os-L0.$fmt and, over it, os-L1.$fmt"

	snapshot_files "$base"
	layerfs_mount "$m" "$d" -o rw
	cp "$m/os-L0/disk" "$T/model-$fmt"
	cmp -s "$m/os-L1/disk" "$T/model-$fmt" ||
		fail "$fmt: the new layer does not read its parent's data"
	scribble "$m/os-L1/disk" "$T/model-$fmt" "flow-$fmt" 120
	cmp "$m/os-L1/disk" "$T/model-$fmt" || fail "$fmt: disk != model after writes"
	layerfs_umount "$m"
	check_files
	forget_files
	want=$(sha_of "$T/model-$fmt")

	for f in "$top" "$base"; do
		"$LAYERIMG" check -q "$f" >"$T/check.out" 2>&1 && rc=0 || rc=$?
		[ "$rc" = 0 ] || fail "$fmt: layerimg check ${f##*/}: exit $rc: $(head -3 "$T/check.out" | tr '\n' '|')"
	done
	ok "$fmt: layerimg check: os-L1 and os-L0 clean after the writes"

	oracle "$fmt" "$top" "$T/chain-$fmt.raw"
	expect_sha "$T/chain-$fmt.raw" "$want" "$fmt: the chain read by an independent reader"

	"$LAYERIMG" commit "$top" </dev/null >"$T/commit.out" 2>&1 ||
		fail "$fmt: layerimg commit: $(tail -3 "$T/commit.out" | tr '\n' '|')"
	oracle "$fmt" "$base" "$T/base-$fmt.raw"
	expect_sha "$T/base-$fmt.raw" "$want" "$fmt: after commit, os-L0 alone (independent reader)"
	layerfs_mount "$m" "$d"
	expect_sha "$m/os-L0/disk" "$want" "$fmt: after commit, os-L0 through layerfs"
	expect_sha "$m/os-L1/disk" "$want" "$fmt: after commit, os-L1 still reads the chain"
	layerfs_umount "$m"
	"$LAYERIMG" check -q "$base" >"$T/check.out" 2>&1 && rc=0 || rc=$?
	[ "$rc" = 0 ] || fail "$fmt: layerimg check os-L0 after commit: exit $rc: $(head -3 "$T/check.out" | tr '\n' '|')"
	ok "$fmt: layerimg check: os-L0 clean after commit"

	"$LAYERIMG" convert -O raw "$top" "$T/conv-$fmt.raw" </dev/null >"$T/conv.out" 2>&1 ||
		fail "$fmt: layerimg convert: $(tail -3 "$T/conv.out" | tr '\n' '|')"
	expect_sha "$T/conv-$fmt.raw" "$want" "$fmt: layerimg convert -O raw of the chain"
	cmp -s "$T/conv-$fmt.raw" "$T/chain-$fmt.raw" ||
		fail "$fmt: convert output differs from the independent reader's"
	rm -f "$T"/*-"$fmt".raw "$T/model-$fmt"
done
finish
