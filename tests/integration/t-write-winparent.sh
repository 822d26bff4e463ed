#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# New layers over parents made by Windows (dissect.hypervisor's vectors:
# dynamic.vhdx with one 32 MiB block over a 10 MiB disk and 512/4096
# sectors, fixed.vhdx, dynamic.vhd and fixed.vhd): -o newlayer over each,
# random writes and discards at byte offsets (write-lib.sh's scribble,
# mirrored into a model that starts as 7-Zip's extraction of the parent),
# a read-only remount, then 7zz extracts the new layer over its parent
# (and for VHDX libvhdi's vhdimount reads it; for VHD vhdcheck.py passes)
# with the model's bytes.  The parents never change.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require_vectors
require 7zz python3 cmp gzip vhdimount

V=$LAYERFS_VECTORS/dissect.hypervisor
m=$T/mnt

for f in dynamic.vhdx fixed.vhdx dynamic.vhd fixed.vhd; do
	[ -f "$V/$f.gz" ] || fail "vector $V/$f.gz is missing"
	d=$T/${f/./-} stem=${f%.*} ext=${f##*.}
	mkdir -p "$d"
	gzip -dc "$V/$f.gz" >"$d/$f" || fail "gunzip $f.gz"
	snapshot_files "$d/$f"
	case $ext in vhd) fam=vhd ;; vhdx) fam=vhdx ;; esac
	model=$T/$stem-$ext.model
	flat_of "$fam" "$d/$f" "$model"

	layerfs_mount "$m" "$d" -o "newlayer=$stem"
	new=$stem-L1.$ext
	[ -f "$d/$new" ] || fail "newlayer=$stem over $f made no $new: $(ls "$d" | tr '\n' ' ')"
	expect_same "$m/$stem/disk" "$model" "$f: layerfs = 7zz"
	expect_same "$m/$stem-L1/disk" "$model" "$new: the empty layer shows $f"
	scribble "$m/$stem-L1/disk" "$model" "$f" 40
	expect_same "$m/$stem-L1/disk" "$model" "$new: writes and discards read back"
	layerfs_umount "$m"

	layerfs_mount "$m" "$d"
	expect_same "$m/$stem-L1/disk" "$model" "$new: read-only remount"
	expect_no_error "$m/.layerfs.log" "$new"
	layerfs_umount "$m"

	flat_of "$fam" "$d/$new" "$T/flat"
	expect_same "$T/flat" "$model" "$new: 7zz over $f = model"
	rm -f "$T/flat"
	if [ "$fam" = vhd ]; then
		check_top vhd "$d/$new"
	else
		m2=$T/vhdi-$stem
		mkdir -p "$m2"
		vhdimount -v -X allow_root "$d/$new" "$m2" >"$m2.err" 2>&1 &
		track_pid $!
		track_mount "$m2"
		for i in $(seq 100); do
			grep -qs " $m2 fuse" /proc/self/mounts && break
			sleep 0.1
		done
		top=$(cd "$m2" && ls -1 vhdi* 2>/dev/null | sort -V | tail -1)
		[ -n "$top" ] || fail "vhdimount $new shows nothing: $(tail -3 "$m2.err" | tr '\n' '|')"
		expect_same "$m2/$top" "$model" "$new: vhdimount's $top = model"
		fusermount3 -u "$m2"
	fi
	check_files
	forget_files
	rm -rf "$d"
done
finish
