#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Android sparse images, from tests/tools/mksimg.py (all four chunk types,
# larger header sizes, 1 KiB and 4 KiB blocks) and from AOSP img2simg,
# read the same as simg2img's output and as the source.  An image with a
# wrong CRC32 chunk is left out with one error line naming it, in stderr
# and in .layerfs.log, while the others mount.
. "$(dirname "$0")/lib.sh"
require_fuse
require simg2img img2simg python3 cmp
require_script mksimg.py

img=$T/img
mkdir -p "$img" "$T/oracle"

# 1 MiB + 5000 bytes (not a whole block): random blocks, FILL patterns, a
# zero run, random again, a short zero run, and a text tail.
src=$T/src.raw
size=$((1048576 + 5000))
truncate -s $size "$src"
pattern "$src" 0 10000 a			# RAW (blocks 0-2)
python3 - "$src" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(16384); f.write(b"\xef\xbe\xad\xde" * (3 * 4096 // 4))   # FILL
    f.seek(40960); f.write(b"\x01\x00\x00\x00" * (4096 // 4))       # FILL 1
    f.seek(45056); f.write(b"\xff" * 4096)                          # FILL ~0
EOF
pattern "$src" 600000 70000 b			# RAW, zero run before it
pattern "$src" 700000 3000 c			# RAW, after a short zero run
printf 'TAIL-OF-SOURCE' | dd of="$src" bs=1 seek=$((size - 14)) \
	conv=notrunc status=none

mk() { python3 "$TOOLS/mksimg.py" "$src" "$img/$1.simg" "${@:2}" ||
	fail "mksimg.py $*"; }
mk ms-dontcare
mk ms-fill --zero fill
mk ms-alternate --zero alternate --max-chunk-blocks 3
mk ms-crc --crc --crc-every 2
mk ms-pad --hdr-pad 4 --chunk-pad 8 --crc
mk ms-1k --block-size 1024 --zero alternate --crc --crc-every 5
mk ms-badcrc --crc --bad-crc
img2simg "$src" "$img/aosp-4k.simg" >/dev/null 2>&1 || fail "img2simg"
img2simg "$src" "$img/aosp-1k.simg" 1024 >/dev/null 2>&1 ||
	fail "img2simg 1024"

# Check that the generator did its job: all four chunk types are there.
python3 - "$img/ms-alternate.simg" "$img/ms-crc.simg" <<'EOF' ||
import struct, sys
seen = set()
for p in sys.argv[1:]:
    d = open(p, "rb").read()
    magic, _, _, fhs, chs, bs, blks, nchunks, _ = struct.unpack_from("<IHHHHIIII", d)
    off = fhs
    for _ in range(nchunks):
        ct, _, n, tot = struct.unpack_from("<HHII", d, off)
        seen.add(ct)
        off += tot
need = {0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4}
sys.exit(0 if need <= seen else "chunk types seen: %s" % sorted(map(hex, seen)))
EOF
	fail "mksimg.py did not write all four chunk types"
ok "generated images hold RAW, FILL, DONT_CARE and CRC32 chunks"

good=(ms-dontcare ms-fill ms-alternate ms-crc ms-pad ms-1k aosp-4k aosp-1k)
for n in "${good[@]}"; do
	simg2img "$img/$n.simg" "$T/oracle/$n.raw" || fail "simg2img $n"
done

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt

expect_dirs "$m" "${good[@]}"
for n in "${good[@]}"; do
	expect_same "$m/$n/disk" "$T/oracle/$n.raw" "$n = simg2img"
	osize=$(stat -c %s "$T/oracle/$n.raw")
	[ "$osize" -ge "$size" ] || fail "$n: simg2img gave $osize bytes"
	cmp -s -n "$size" "$m/$n/disk" "$src" || fail "$n: differs from source"
	cmp -s -i "$size" -n $((osize - size)) "$m/$n/disk" /dev/zero ||
		fail "$n: block padding is not zero"
	ok "$n = source, zero-padded to a whole block"
done

expect_error "$MOUNT_ERR" ms-badcrc.simg 'crc|checksum'
expect_error "$m/.layerfs.log" ms-badcrc.simg 'crc|checksum'
for n in "${good[@]}"; do
	expect_no_error "$MOUNT_ERR" "$n.simg"
done

layerfs_umount "$m"
check_sums
finish
