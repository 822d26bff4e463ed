#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A VHD differencing chain six layers deep, made by tests/tools/mkvhd.py
# with sector-granular writes (odd sectors, runs across block boundaries,
# block sizes from 4 KiB to 2 MiB, an odd disk size, every parent-locator
# variant), plus side branches: a child smaller than its parent, a child
# larger than its parent, and a differencing child of a fixed disk.  Every
# layer is the top of its own chain; each disk must equal mkvhd.py's
# expected flat image and 7-Zip's extraction of that layer.  Unwritten
# sectors of allocated child blocks hold 0xEE poison, so a reader that
# ignores the sector bitmap fails.
. "$(dirname "$0")/lib.sh"
require_fuse
require 7zz python3 cmp
require_script mkvhd.py

img=$T/img exp=$T/expect
mkdir -p "$img" "$exp"
mkvhd() { python3 "$TOOLS/mkvhd.py" "$@" || fail "mkvhd.py $*"; }

# Base content, 6 MiB + 3 sectors: random, zeros, random sectors, zeros.
python3 - "$exp/c0.raw" <<'EOF'
import random, sys
r = random.Random(5)
MiB = 1 << 20
open(sys.argv[1], "wb").write(r.randbytes(MiB) + bytes(2 * MiB) +
                              r.randbytes(3 * 512) + bytes(3 * MiB))
EOF
mkvhd create-dynamic "$img/c0.vhd" --from "$exp/c0.raw" --block-size 512K

# diff NAME PARENT [mkvhd create-diff options]
diff_layer() {
	local name=$1 parent=$2
	shift 2
	mkvhd create-diff "$img/$name.vhd" --parent "$img/$parent.vhd" \
		--expect-in "$exp/$parent.raw" --expect-out "$exp/$name.raw" "$@"
}
# explicit writes: single sectors, a run across the 512 KiB block boundary
# (sector 1023-1025), the first and the last sector of the disk
diff_layer c1 c0 --writes "0+1=0x5a,1+1,1023+3=0xab,2047+2,4000+100,12290+1" \
	--seed 1
diff_layer c2 c1 --random-writes 30 --seed 2 --block-size 1M
diff_layer c3 c2 --random-writes 20 --seed 3 --no-locators
diff_layer c4 c3 --random-writes 20 --seed 4 --data-space sectors \
	--abs-path 'C:\images\elsewhere\c3.vhd' --rel-path '.\c3.vhd'
diff_layer c5 c4 --random-writes 40 --seed 5 --block-size 4096 \
	--abs-path 'D:\VMs\c4.vhd'
# branches off c2: smaller and larger than their parent
diff_layer small c2 --writes "5+3,6147+4" --size $(((3 << 20) + 7 * 512))
diff_layer grown c2 --writes "12290+9,14338+3=0x11" \
	--size $(((7 << 20) + 5 * 512))
# a differencing child of a fixed disk
pattern "$exp/fx.raw" 0 $((1 << 20)) fixed
mkvhd create-fixed "$img/fx.vhd" --from "$exp/fx.raw"
diff_layer fxchild fx --writes "0+2,100+900,2047+1=0x00" --seed 9

layers=(c0 c1 c2 c3 c4 c5 small grown fx fxchild)

# mkvhd.py's view of depth: c5 must really sit on five parents
for l in c1 c2 c3 c4 c5; do
	info=$(python3 "$TOOLS/mkvhd.py" info "$img/$l.vhd") ||
		fail "mkvhd.py info $l.vhd"
	grep -q '"disk_type": "differencing"' <<<"$info" ||
		fail "$l is no differencing VHD"
done

# Second oracle: 7-Zip follows the parent chain by itself.  It cannot
# extract a child larger than its parent ("Data Error" past the parent's
# end), so `grown` has mkvhd.py's expectation only.
mkdir -p "$T/7z"
for l in "${layers[@]}"; do
	[ "$l" = grown ] && continue
	(cd "$img" && 7zz e -so -tvhd "$l.vhd" >"$T/7z/$l.raw" 2>"$T/7z/$l.err") ||
		fail "7zz e $l.vhd: $(tail -2 "$T/7z/$l.err")"
done

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt
expect_dirs "$m" "${layers[@]}"

for l in "${layers[@]}"; do
	expect_same "$m/$l/disk" "$exp/$l.raw" "$l = mkvhd.py expectation"
	[ "$l" = grown ] ||
		expect_same "$m/$l/disk" "$T/7z/$l.raw" "$l = 7zz e -so"
done

# Reads that start and end inside sectors and cross block boundaries
python3 - "$m/c5/disk" "$exp/c5.raw" <<'EOF' || fail "c5: unaligned reads differ"
import os, random, sys
a = os.open(sys.argv[1], os.O_RDONLY)
b = open(sys.argv[2], "rb").read()
r = random.Random(7)
for _ in range(300):
    off = r.randrange(len(b))
    n = r.choice([1, 7, 511, 513, 4095, 4097, 70000, 600000])
    if os.pread(a, n, off) != b[off:off + n]:
        sys.exit("offset %d length %d" % (off, n))
EOF
ok "c5: 300 unaligned reads match"

[ ! -s "$m/.layerfs.log" ] || ! grep -q '^error: ' "$m/.layerfs.log" ||
	fail ".layerfs.log has errors: $(head -3 "$m/.layerfs.log")"
ok ".layerfs.log has no errors"

layerfs_umount "$m"
check_sums
finish
