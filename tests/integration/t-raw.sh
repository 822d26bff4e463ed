#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Raw disks and an ISO 9660 image are exposed byte for byte; chain
# directories are named by the file's stem, or by the full name where two
# stems clash; files that are no disk image are left out.
. "$(dirname "$0")/lib.sh"
require_fuse
require genisoimage python3 cmp

img=$T/img
mkdir -p "$img" "$T/isoroot/sub"

# A raw disk with random, zero and text parts (3 MiB + 7 sectors)
truncate -s $((3 * 1048576 + 7 * 512)) "$img/alpha.img"
pattern "$img/alpha.img" 0 65536 alpha
pattern "$img/alpha.img" $((1048576 + 512)) 1000 alpha2
printf 'LAST-SECTOR' | dd of="$img/alpha.img" bs=1 \
	seek=$((3 * 1048576 + 6 * 512)) conv=notrunc status=none

# One sector exactly, and two raw files whose stems clash
pattern "$img/one.raw" 0 512 one
pattern "$img/dup.img" 0 8192 dup1
pattern "$img/dup.raw" 0 4096 dup2

# An ISO made by genisoimage
pattern "$T/isoroot/random.bin" 0 200000 iso
echo "hello from layerfs" >"$T/isoroot/sub/readme.txt"
genisoimage -quiet -R -J -V LAYERFS_T -o "$img/cd.iso" "$T/isoroot" ||
	fail "genisoimage failed"

# Not disk images: size not a multiple of 512, and a hidden file
printf 'not an image\n' >"$img/notes.txt"
pattern "$img/.hidden.img" 0 4096 hidden

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt

expect_dirs "$m" alpha one dup.img dup.raw cd
for pair in alpha:alpha.img one:one.raw dup.img:dup.img dup.raw:dup.raw \
	cd:cd.iso; do
	d=${pair%%:*} f=${pair#*:}
	[ "$(ls -1A "$m/$d" | tr '\n' ' ')" = "disk info " ] ||
		fail "$d/ holds $(ls -1A "$m/$d" | tr '\n' ' ')"
	expect_same "$m/$d/disk" "$img/$f" "$d/disk equals $f"
	expect_sha "$m/$d/disk" "$(sha_of "$img/$f")" "$d/disk"
done

# Reads at odd offsets and across the end
python3 - "$m/alpha/disk" "$img/alpha.img" <<'EOF' || fail "odd-offset reads differ"
import os, sys
a = os.open(sys.argv[1], os.O_RDONLY)
b = os.open(sys.argv[2], os.O_RDONLY)
size = os.fstat(b).st_size
for off, n in [(1, 1), (511, 2), (4095, 8193), (1048575, 70000),
               (size - 3, 10), (size, 10), (size + 4096, 1)]:
    x, y = os.pread(a, n, off), os.pread(b, n, off)
    if x != y:
        sys.exit("offset %d len %d: %d bytes, expected %d" % (off, n, len(x), len(y)))
EOF
ok "reads at odd offsets and past the end match"

# The ISO's files are visible in the exposed disk
grep -q "hello from layerfs" "$m/cd/disk" || fail "ISO content not found"
ok "ISO content readable"

grep -F "notes.txt" "$MOUNT_ERR" | grep -q . ||
	fail "notes.txt not reported as skipped"
ok "notes.txt reported on stderr"

layerfs_umount "$m"
check_sums
finish
