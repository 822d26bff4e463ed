#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# File systems made on the exposed partitions of a writable chain, for each
# family of write-lib.sh (VHD, VHDX, QCOW2, raw + QCOW2 overlay).
#
# The disk: 96 MiB of random bytes with a GPT of three partitions (client-
# lib.sh's gpt_script).  For VHD, VHDX and QCOW2 the table is in the base
# image (sfdisk on a raw file, converted by qemu-img); for raw + QCOW2 the
# base has no table and sfdisk writes it through the exposed disk, after
# which p1-p3 must appear.  Then, through MNT/CHAIN/pN:
#   p1: mkfs.ext4, mount -o loop, copy a tree of files in, umount;
#   p2: mkfs.fat -F 32, mcopy the tree in (the kernel has no vfat);
#   p3: mkntfs -Q, ntfs-3g, copy the tree in, umount.
# layerfs is unmounted and mounted again: blkid sees the three file
# systems, by-label/ and by-name/ link to them, e2fsck -fn and fsck.fat -n
# find them clean, and the tree reads back from each (loop mount of
# by-label/cl-ext4, mcopy, ntfs-3g).  After the last unmount the
# chain is flattened from the files by qemu-img or 7zz (an oracle that
# never went through layerfs): the partition table there is the same, the
# file systems in it are clean, and debugfs, mtools (image@@offset) and
# ntfs-3g read the same tree out of it.  The base images never change.
FAMILIES=${LAYERFS_CLIENT_FAMILIES:-"vhd vhdx qcow2raw qcow2"}

. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
. "$(dirname "$0")/client-lib.sh"
require_fuse
require qemu-img 7zz python3 sfdisk blkid losetup mount umount \
	mkfs.ext4 e2fsck debugfs mkfs.fat fsck.fat mcopy mdir mkntfs ntfs-3g diff

# The tree every file system gets
src=$T/src
mkdir -p "$src/sub/deeper"
pattern "$src/big.bin" 0 $((3 * 1024 * 1024 + 123)) big
printf 'layerfs client test\nline two\n' >"$src/notes.txt"
printf 'x' >"$src/sub/deeper/one.bin"
head -c 65536 /dev/zero >"$src/sub/zero.bin"
pattern "$src/sub/odd-size.bin" 0 1000001 odd

# same_tree WHAT DIR: DIR holds exactly the tree (lost+found aside)
same_tree() {
	# shellcheck disable=SC2016  # a literal file name
	diff -r -x lost+found -x 'System Volume Information' -x '$RECYCLE.BIN' \
		"$src" "$2" >"$T/diff.out" 2>&1 ||
		fail "$1: the files differ: $(head -5 "$T/diff.out" | tr '\n' '|')"
	ok "$1: the tree of $(find "$src" -type f | wc -l) files reads back"
}

# fs_type FILE: what blkid -p finds in FILE
fs_type() { blkid -p -o value -s TYPE "$1" 2>/dev/null || true; }

gpt=$T/gpt.raw
make_gpt_raw "$gpt" "$GPT_MIB" random

for fam in $FAMILIES; do
	d=$T/$fam m=$T/mnt-$fam
	if [ "$fam" = qcow2raw ]; then
		# no table in the base: sfdisk writes it through the disk
		random_file "$T/$fam.noparts" "$GPT_MIB" 99
		family_from_raw "$fam" "$d" "$T/$fam.noparts"
		rm -f "$T/$fam.noparts"
	else
		family_from_raw "$fam" "$d" "$gpt"
	fi
	snapshot_files "${FAM_BASES[@]}"
	layerfs_mount "$m" "$d" "${FAM_FIRST[@]}"
	cd_=$m/$FAM_CHAIN
	disk=$cd_/disk
	[ -f "$disk" ] || fail "$fam: no chain $FAM_CHAIN in the mount"
	[ "$(disk_mode "$disk")" = 644 ] || fail "$fam: $FAM_CHAIN/disk is not writable"
	if [ "$fam" = qcow2raw ]; then
		[ ! -e "$cd_/p1" ] || fail "$fam: p1 exists before there is a table"
		gpt_script | sfdisk -q "$disk" >"$T/sfdisk.out" 2>&1 ||
			fail "$fam: sfdisk on the exposed disk: $(tail -3 "$T/sfdisk.out" | tr '\n' '|')"
		ok "$fam: sfdisk wrote a GPT through the exposed disk"
	fi
	for n in $(seq "$GPT_NPARTS"); do
		wait_part "$cd_" "$n"
		part_geom "$disk" "$n"
		expect_size "$cd_/p$n" "$P_SIZE" "$fam: p$n"
		[ "$(disk_mode "$cd_/p$n")" = 644 ] ||
			fail "$fam: p$n has mode $(disk_mode "$cd_/p$n"), not 644 (the chain is writable)"
	done
	ok "$fam: p1-p$GPT_NPARTS exist, writable, sized as sfdisk reads the table"

	# p1: ext4 through a loop device
	mkfs.ext4 -q -F -L cl-ext4 "$cd_/p1" >"$T/mkfs.out" 2>&1 ||
		fail "$fam: mkfs.ext4 p1: $(tail -3 "$T/mkfs.out" | tr '\n' '|')"
	x=$T/x-$fam
	loop_mount "$cd_/p1" "$x"
	cp -r "$src/." "$x/"
	sync -f "$x"
	loop_umount "$x"
	ok "$fam: mkfs.ext4 on p1, mount -o loop, files copied in, umount"
	# p2: FAT32 with mtools
	mkfs.fat -F 32 -n CLFAT32 "$cd_/p2" >"$T/mkfs.out" 2>&1 ||
		fail "$fam: mkfs.fat -F 32 p2: $(tail -3 "$T/mkfs.out" | tr '\n' '|')"
	mcopy -s -i "$cd_/p2" "$src"/* ::/ >"$T/mcopy.out" 2>&1 ||
		fail "$fam: mcopy into p2: $(tail -3 "$T/mcopy.out" | tr '\n' '|')"
	ok "$fam: mkfs.fat -F 32 on p2, files copied in with mcopy"
	# p3: NTFS with ntfs-3g
	mkntfs -Q -F -L CLNTFS "$cd_/p3" >"$T/mkfs.out" 2>&1 ||
		fail "$fam: mkntfs -Q p3: $(tail -3 "$T/mkfs.out" | tr '\n' '|')"
	ntfs_mount "$cd_/p3" "$x"
	cp -r "$src/." "$x/"
	ntfs_umount "$x"
	ok "$fam: mkntfs -Q on p3, ntfs-3g, files copied in, umount"
	layerfs_umount "$m"

	# remount: everything is still there
	layerfs_mount "$m" "$d" -o rw
	for n in $(seq "$GPT_NPARTS"); do wait_part "$cd_" "$n"; done
	got="$(fs_type "$cd_/p1") $(fs_type "$cd_/p2") $(fs_type "$cd_/p3")"
	[ "$got" = "ext4 vfat ntfs" ] || fail "$fam: blkid on p1-p3 after the remount: $got"
	ok "$fam: after the remount blkid finds ext4, vfat, ntfs in p1-p3"
	e2fsck -fn "$cd_/p1" >"$T/fsck.out" 2>&1 ||
		fail "$fam: e2fsck -fn p1: $(tail -5 "$T/fsck.out" | tr '\n' '|')"
	fsck.fat -n "$cd_/p2" >"$T/fsck.out" 2>&1 ||
		fail "$fam: fsck.fat -n p2: $(tail -5 "$T/fsck.out" | tr '\n' '|')"
	ok "$fam: e2fsck -fn p1 and fsck.fat -n p2: clean"
	for l in by-label/cl-ext4:p1 by-label/CLFAT32:p2 by-label/CLNTFS:p3 \
		 by-name/client-ext4:p1 by-name/client-fat32:p2 by-name/client-ntfs:p3; do
		got=$(readlink "$cd_/${l%:*}") ||
			fail "$fam: no link ${l%:*} ($(cd "$cd_" && echo * by-*/*))"
		[ "$got" = "../${l#*:}" ] || fail "$fam: ${l%:*} -> $got, expected ../${l#*:}"
	done
	ok "$fam: by-label/ and by-name/ name p1-p3 by file-system label and GPT name"
	loop_mount "$cd_/by-label/cl-ext4" "$x" ro
	same_tree "$fam: p1 (ext4, mount -o loop,ro by-label/cl-ext4)" "$x"
	loop_umount "$x"
	rm -rf "$T/out" && mkdir -p "$T/out"
	mcopy -s -n -i "$cd_/p2" '::/*' "$T/out/" >"$T/mcopy.out" 2>&1 ||
		fail "$fam: mcopy out of p2: $(tail -3 "$T/mcopy.out" | tr '\n' '|')"
	same_tree "$fam: p2 (FAT32, mcopy)" "$T/out"
	ntfs_mount "$cd_/p3" "$x" ro
	same_tree "$fam: p3 (NTFS, ntfs-3g -o ro)" "$x"
	ntfs_umount "$x"
	layerfs_umount "$m"

	# the oracle: the chain flattened from the files, without layerfs
	flat=$T/$fam.flat
	flat_of "$fam" "$FAM_TOP" "$flat"
	for n in $(seq "$GPT_NPARTS"); do
		part_geom "$flat" "$n"
		[ "$P_START $P_SIZE" = "${GPT_GEOM[n - 1]}" ] ||
			fail "$fam: partition $n of the flat oracle is at $P_START+$P_SIZE, expected ${GPT_GEOM[n - 1]}"
		extract "$flat" "$P_START" "$P_SIZE" "$T/$fam.p$n"
	done
	rm -f "$flat"
	ok "$fam: ${FAM_TOP##*/} flattened by qemu-img/7zz holds the table"
	e2fsck -fn "$T/$fam.p1" >"$T/fsck.out" 2>&1 ||
		fail "$fam: e2fsck -fn on the oracle's p1: $(tail -5 "$T/fsck.out" | tr '\n' '|')"
	rm -rf "$T/out" && mkdir -p "$T/out"
	debugfs -R "rdump / $T/out" "$T/$fam.p1" >"$T/debugfs.out" 2>&1 ||
		fail "$fam: debugfs rdump: $(tail -3 "$T/debugfs.out" | tr '\n' '|')"
	same_tree "$fam: oracle p1 (e2fsck -fn clean, debugfs rdump)" "$T/out"
	fsck.fat -n "$T/$fam.p2" >"$T/fsck.out" 2>&1 ||
		fail "$fam: fsck.fat -n on the oracle's p2: $(tail -5 "$T/fsck.out" | tr '\n' '|')"
	rm -rf "$T/out" && mkdir -p "$T/out"
	mcopy -s -n -i "$T/$fam.p2" '::/*' "$T/out/" >"$T/mcopy.out" 2>&1 ||
		fail "$fam: mcopy out of the oracle's p2: $(tail -3 "$T/mcopy.out" | tr '\n' '|')"
	same_tree "$fam: oracle p2 (fsck.fat -n clean, mcopy)" "$T/out"
	ntfs_mount "$T/$fam.p3" "$x" ro
	same_tree "$fam: oracle p3 (ntfs-3g)" "$x"
	ntfs_umount "$x"
	rm -rf "$T/out" "$T/$fam".p[0-9]*
	check_top "$fam" "$FAM_TOP"
	check_files
	forget_files
	rm -rf "$d"
done
finish
