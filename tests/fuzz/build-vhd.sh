#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build the VHD libFuzzer target (outside the meson build: it needs clang)
# and, with "seed", make a small seed corpus: fixed, dynamic and
# differencing images from tests/tools/mkvhd.py, and the small VHD vectors
# of ../shared/vectors (dfvfs, gen-qemu-7.2, qemu-iotests, ...).
#
#   tests/fuzz/build-vhd.sh [OUTDIR]          -> OUTDIR/fuzz-vhd
#   tests/fuzz/build-vhd.sh OUTDIR seed       -> also OUTDIR/corpus-vhd
#   OUTDIR/fuzz-vhd -max_len=300000 -timeout=10 -rss_limit_mb=2048 \
#       -max_total_time=300 OUTDIR/corpus-vhd
set -eu

. "$(dirname "$0")/build-lib.sh"
fuzz_init vhd "${1:-}"

# Every file of the format's folder (a glob: the folder is being split
# into codec/open/write/... files) and the common helpers they use.
fuzz_build vhd -I"$src/src/format/vhd" "$src"/src/common/*.c \
	"$src/src/format/img.c" "$src/src/format/raw.c" \
	"$src"/src/format/vhd/*.c -lpthread

[ "${2:-}" = seed ] || exit 0
fuzz_seed_init vhd
mk="$src/tests/tools/mkvhd.py"
python3 - "$t/s.raw" <<'PY'
import random, sys
r = random.Random(3)
open(sys.argv[1], "wb").write(r.randbytes(24576) + bytes(16384) +
                              r.randbytes(8192) + bytes(16384))
PY
python3 "$mk" create-fixed "$c/fixed.vhd" --from "$t/s.raw" >/dev/null
for bs in 512 4K 16K; do
	python3 "$mk" create-dynamic "$c/dynamic-$bs.vhd" --from "$t/s.raw" \
		--block-size "$bs" >/dev/null
done
python3 "$mk" create-dynamic "$t/base.vhd" --from "$t/s.raw" \
	--block-size 4K >/dev/null
python3 "$mk" create-diff "$c/diff-4K.vhd" --parent "$t/base.vhd" \
	--expect-in "$t/s.raw" --expect-out "$t/o.raw" --block-size 4K \
	--random-writes 6 --seed 2 >/dev/null
python3 "$mk" create-diff "$c/diff-abs.vhd" --parent "$t/base.vhd" \
	--expect-in "$t/s.raw" --expect-out "$t/o.raw" --block-size 16K \
	--writes "0+3" --rel-path '.\base.vhd' \
	--abs-path 'C:\images\base.vhd' >/dev/null
vec="$src/../shared/vectors"
if [ -d "$vec" ]; then
	# every VHD vector: whole when it fits -max_len (300000), else its
	# first 256 KiB (footer copy, header, BAT, the first blocks; the
	# end-of-file footer is lost, which is a case of its own)
	find "$vec" \( -name '*.vhd' -o -name '*.vhd.[gx]z' \
		-o -name '*.vhd.bz2' -o -name 'afl*.img' \) | sort |
	while read -r f; do
		n=$(echo "${f#"$vec"/}" | tr '/' '-')
		n=${n%.gz}; n=${n%.xz}; n=${n%.bz2}
		case $f in
		*.gz) gzip -dc "$f" ;;
		*.xz) xz -dc "$f" ;;
		*.bz2) bzip2 -dc "$f" ;;
		*) cat "$f" ;;
		esac >"$t/v"
		if [ "$(stat -c %s "$t/v")" -le 300000 ]; then
			cp "$t/v" "$c/vec-$n"
		else
			head -c 262144 "$t/v" >"$c/vec-head-$n"
		fi
	done
fi
ls -la "$c"
