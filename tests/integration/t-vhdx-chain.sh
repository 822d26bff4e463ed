#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VHDX differencing chains made by tests/tools/mkvhdx.py: six layers with
# 512-byte sectors and 1 MiB blocks; three layers with 4096-byte logical
# sectors and UNDEFINED/UNMAPPED blocks; a fixed base (upper-case GUID
# text in the locator, spec-order layout, stale log entries) with one
# child.  Children hold FULLY_PRESENT, PARTIALLY_PRESENT (sector bitmap,
# 0xEE poison where the parent shows through), ZERO and NOT_PRESENT
# blocks.  Every layer is the top of its own chain; each disk must equal
# mkvhdx.py's expected flat image and 7-Zip's extraction of that layer.
. "$(dirname "$0")/lib.sh"
require_fuse
require 7zz python3 cmp
require_script mkvhdx.py

img=$T/img exp=$T/expect
mkdir -p "$img" "$exp"
mkvhdx() { python3 "$TOOLS/mkvhdx.py" "$@" >/dev/null || fail "mkvhdx.py $*"; }

mkvhdx chain "$img" --depth 5 --seed 1 --size 3M --block-mib 1 --name 'a%d.vhdx'
mkvhdx chain "$img" --depth 2 --lss 4096 --undefined --seed 2 --size 3M \
	--name 'b%d.vhdx'
mkvhdx chain "$img" --depth 1 --fixed --upper-guid --plain --stale-log \
	--seed 3 --size 2M --name 'c%d.vhdx'
mv "$img"/*.raw "$exp/"
layers=(a0 a1 a2 a3 a4 a5 b0 b1 b2 c0 c1)
for l in "${layers[@]}"; do
	[ -f "$img/$l.vhdx" ] && [ -f "$exp/$l.vhdx.raw" ] ||
		fail "mkvhdx.py did not write $l.vhdx and its .raw"
done

# Second oracle: 7-Zip reads VHDX differencing chains by itself
mkdir -p "$T/7z"
for l in "${layers[@]}"; do
	(cd "$img" && 7zz e -so -tvhdx "$l.vhdx" >"$T/7z/$l.raw" 2>"$T/7z/$l.err") ||
		fail "7zz e $l.vhdx: $(tail -2 "$T/7z/$l.err")"
done

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt
expect_dirs "$m" "${layers[@]}"
for l in "${layers[@]}"; do
	expect_same "$m/$l/disk" "$exp/$l.vhdx.raw" "$l = mkvhdx.py expectation"
	expect_same "$m/$l/disk" "$T/7z/$l.raw" "$l = 7zz e -so"
done

# Unaligned reads across sectors and blocks of the 4 KiB-sector chain
python3 - "$m/b2/disk" "$exp/b2.vhdx.raw" <<'PY' || fail "b2: unaligned reads differ"
import os, random, sys
a = os.open(sys.argv[1], os.O_RDONLY)
b = open(sys.argv[2], "rb").read()
r = random.Random(11)
for _ in range(300):
    off = r.randrange(len(b))
    n = r.choice([1, 511, 4095, 4097, 65537, 1048577])
    if os.pread(a, n, off) != b[off:off + n]:
        sys.exit("offset %d length %d" % (off, n))
PY
ok "b2: 300 unaligned reads match"

[ ! -s "$m/.layerfs.log" ] || ! grep -q '^error: ' "$m/.layerfs.log" ||
	fail ".layerfs.log has errors: $(head -3 "$m/.layerfs.log")"
ok ".layerfs.log has no errors"

layerfs_umount "$m"
check_sums
finish
