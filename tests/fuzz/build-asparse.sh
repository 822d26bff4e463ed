#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build the Android sparse libFuzzer target (outside the meson build: it
# needs clang) and, with "seed", make a small seed corpus: img2simg and
# tests/tools/mksimg.py images (every chunk type, CRC32 chunks, padded
# headers) and the small sparse vectors of ../shared/vectors.
#
#   tests/fuzz/build-asparse.sh [OUTDIR]          -> OUTDIR/fuzz-asparse
#   tests/fuzz/build-asparse.sh OUTDIR seed       -> also OUTDIR/corpus-asparse
#   OUTDIR/fuzz-asparse -max_len=262144 -timeout=10 -rss_limit_mb=2048 \
#       -max_total_time=300 OUTDIR/corpus-asparse
set -eu

. "$(dirname "$0")/build-lib.sh"
fuzz_init asparse "${1:-}"

# every file of the format's folder (codec, read side, checker, info, the
# driver struct, the writer): a new file there needs no change here
fuzz_build asparse -I"$src/src/format/asparse" "$src/src/common/log.c" \
	"$src/src/common/io.c" "$src/src/common/atomic-file.c" \
	"$src/src/format/img.c" "$src/src/format/raw.c" \
	"$src"/src/format/asparse/*.c -lz -lpthread

[ "${2:-}" = seed ] || exit 0
fuzz_seed_init asparse
mk="$src/tests/tools/mksimg.py"
# 40 KiB of 1 KiB blocks: random, zero, 0xaa, a 4-byte pattern, a pattern
# with one byte off, a short random start
python3 - "$t/s.raw" <<'PY'
import random, struct, sys
r = random.Random(1)
b = bytearray()
for k in "RRZZAAPPZZXrZR" * 3:
    if k == "R":
        b += r.randbytes(1024)
    elif k == "r":
        b += r.randbytes(40) + bytes(984)
    elif k == "A":
        b += b"\xaa" * 1024
    elif k in "PX":
        p = struct.pack("<I", 0x04030201) * 256
        b += p[:-1] + b"\x77" if k == "X" else p
    else:
        b += bytes(1024)
open(sys.argv[1], "wb").write(b)
PY
img2simg "$t/s.raw" "$c/img2simg-4096.simg"
img2simg "$t/s.raw" "$c/img2simg-1024.simg" 1024
i=0
for opts in "--block-size 1024" "--block-size 1024 --crc" \
	    "--block-size 1024 --crc --crc-every 1 --zero fill" \
	    "--block-size 1024 --zero alternate --max-chunk-blocks 2 --crc" \
	    "--block-size 512 --hdr-pad 4 --chunk-pad 8 --crc" \
	    "--block-size 2048 --bad-crc --crc"; do
	i=$((i + 1))
	python3 "$mk" "$t/s.raw" "$c/mksimg-$i.simg" $opts >/dev/null
done
vec="$src/../shared/vectors/android-sparse-rs"
if [ -d "$vec" ]; then
	for f in "$vec"/*.simg; do
		cp "$f" "$c/rs-${f##*/}"
		chmod u+w "$c/rs-${f##*/}"
	done
fi
ls -la "$c"
