#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Fixed and dynamic VHDs made by qemu-img (with and without force_size)
# read the same as `qemu-img convert -f vpc -O raw` and as 7-Zip, and the
# disk size is the footer's current_size even where qemu 7.2 goes by the
# CHS geometry instead.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img 7zz python3 cmp

img=$T/img
mkdir -p "$img"

# 5 MiB + 3 sectors: random at the start, a text sector in the middle,
# random across the 2 MiB block boundary, random in the last sectors.
src=$T/src.raw
size=$((5 * 1048576 + 1536))
truncate -s $size "$src"
pattern "$src" 0 100000 head
pattern "$src" $((2 * 1048576 - 700)) 1500 boundary
printf 'middle-of-the-disk' | dd of="$src" bs=1 seek=3000000 conv=notrunc \
	status=none
pattern "$src" $((size - 1000)) 1000 tail

for sub in fixed dynamic; do
	for fs in on off; do
		qemu-img convert -f raw -O vpc -o subformat=$sub,force_size=$fs \
			"$src" "$img/$sub-fs$fs.vhd" || fail "qemu-img $sub $fs"
	done
done

# The footer's current_size and CHS geometry of a VHD
footer_sizes() {
	python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(-512, 2)
    ft = f.read(512)
c, h, s = struct.unpack(">HBB", ft[56:60])
print(struct.unpack(">Q", ft[48:56])[0], c * h * s * 512)
EOF
}

# A VHD whose current_size is smaller than its CHS size, written by a
# creator ("qemu") for which qemu 7.2 uses CHS: patch current_size of the
# non-force_size dynamic disk (both footer copies, fixing the checksums).
cp "$img/dynamic-fsoff.vhd" "$img/dynamic-cur.vhd"
python3 - "$img/dynamic-cur.vhd" "$size" <<'EOF'
import struct, sys
path, cur = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    data = f.read()
    for o in (0, len(data) - 512):
        ft = bytearray(data[o:o + 512])
        assert ft[:8] == b"conectix"
        ft[48:56] = struct.pack(">Q", cur)
        ft[64:68] = bytes(4)
        ft[64:68] = struct.pack(">I", ~sum(ft) & 0xffffffff)
        f.seek(o)
        f.write(ft)
EOF
read -r cur chs < <(footer_sizes "$img/dynamic-cur.vhd")
[ "$cur" -eq "$size" ] && [ "$chs" -gt "$cur" ] ||
	fail "patched VHD: current_size $cur, CHS $chs"

# Oracles, outside IMAGEDIR
mkdir -p "$T/oracle"
for f in "$img"/*.vhd; do
	n=$(basename "$f" .vhd)
	qemu-img convert -f vpc -O raw "$f" "$T/oracle/$n.qemu" ||
		fail "qemu-img convert $n"
	7zz e -so -tvhd "$f" >"$T/oracle/$n.7z" 2>/dev/null || fail "7zz e $n"
done

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt
expect_dirs "$m" fixed-fson fixed-fsoff dynamic-fson dynamic-fsoff dynamic-cur

for n in fixed-fson fixed-fsoff dynamic-fson dynamic-fsoff; do
	read -r cur chs < <(footer_sizes "$img/$n.vhd")
	expect_size "$m/$n/disk" "$cur" "$n: size is current_size"
	expect_same "$m/$n/disk" "$T/oracle/$n.qemu" "$n = qemu-img convert"
	expect_same "$m/$n/disk" "$T/oracle/$n.7z" "$n = 7zz"
	# Independent of both tools: the source, zero-padded to the size
	cmp -s -n "$size" "$m/$n/disk" "$src" ||
		fail "$n: first $size bytes differ from the source"
	cmp -s -i "$size" "$m/$n/disk" /dev/zero -n $((cur - size)) ||
		fail "$n: padding after the source is not zero"
	ok "$n: equals the source, zero-padded"
done

# current_size wins over CHS: layerfs and 7-Zip give current_size bytes;
# qemu 7.2 gives CHS bytes, the first current_size of which must agree.
n=dynamic-cur
expect_size "$m/$n/disk" "$size" "$n: size is current_size ($size), not CHS ($chs)"
expect_same "$m/$n/disk" "$src" "$n = source"
expect_same "$m/$n/disk" "$T/oracle/$n.7z" "$n = 7zz"
cmp -s -n "$size" "$m/$n/disk" "$T/oracle/$n.qemu" ||
	fail "$n: differs from qemu-img's first $size bytes"
ok "$n: agrees with qemu-img's first $size bytes"

# Nothing went wrong, so nothing is reported as an error
[ ! -s "$m/.layerfs.log" ] || ! grep -q '^error: ' "$m/.layerfs.log" ||
	fail ".layerfs.log has errors: $(head -3 "$m/.layerfs.log")"
ok ".layerfs.log has no errors"

layerfs_umount "$m"
check_sums
finish
