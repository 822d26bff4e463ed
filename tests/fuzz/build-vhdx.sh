#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# build-vhdx.sh [OUTDIR]: build the VHDX fuzz target with clang's libFuzzer,
# ASan and UBSan (kept out of the meson build: it needs clang), and make
# a seed corpus in OUTDIR/seeds from mkvhdx.py images and the shared
# vectors (as sparse descriptions: see fuzz-vhdx.c).  Only the read side
# of the driver is compiled: it must link without write.c, create.c,
# parent.c, check.c and driver.c.
#
#   tests/fuzz/build-vhdx.sh build-fuzz
#   mkdir -p build-fuzz/corpus
#   build-fuzz/fuzz-vhdx -max_len=1100000 -timeout=10 -rss_limit_mb=4096 \
#       -max_total_time=600 build-fuzz/corpus build-fuzz/seeds
set -eu
. "$(dirname "$0")/build-lib.sh"
fuzz_init vhdx "${1:-}" build-fuzz

fuzz_build vhdx -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION \
	-I"$src/src/format/vhdx" -I"$src" "$src/src/format/vhdx/codec.c" \
	"$src/src/format/vhdx/open.c" "$src/src/format/vhdx/bat.c" \
	"$src/src/format/vhdx/log.c" "$src/src/format/vhdx/info.c" \
	"$src/src/format/img.c" "$src/src/common/log.c" "$src/src/common/io.c" \
	"$src/src/common/atomic-file.c" \
	"$src/src/common/guid.c" "$src/src/common/utf16.c" \
	"$src/src/common/crc32c.c" -lpthread

# Seeds: generated chains and dirty logs, plus the real vectors.
seeds=$out/seeds
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$seeds"
py=$src/tests/tools/mkvhdx.py
python3 "$py" chain "$tmp/a" --depth 2 --seed 1 >/dev/null
python3 "$py" chain "$tmp/b" --depth 1 --lss 4096 --seed 2 --undefined \
	--stale-log >/dev/null
python3 "$py" chain "$tmp/c" --depth 1 --block-mib 2 --size 6m --fixed \
	--seed 3 --plain >/dev/null
python3 "$py" dirtylog "$tmp/dl.vhdx" --kind all --seed 4
python3 "$py" dirtylog "$tmp/dlw.vhdx" --kind data --wrap --seed 5
vec=$src/../shared/vectors
if [ -d "$vec" ]; then
	gzip -dc "$vec/dissect.hypervisor/fixed.vhdx.gz" > "$tmp/fixed.vhdx"
	gzip -dc "$vec/dissect.hypervisor/differencing.avhdx.gz" \
		> "$tmp/diff.vhdx"
	bzip2 -dc "$vec/qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2" \
		> "$tmp/dirty10g.vhdx"
	bzip2 -dc "$vec/qemu-iotests/iotest-dynamic-1G.vhdx.bz2" \
		> "$tmp/dyn1g.vhdx"
fi
rm -f "$seeds"/*.seed
for f in "$tmp"/*.vhdx "$tmp"/*/*.vhdx; do
	name=${f#"$tmp"/}
	python3 "$src/tests/fuzz/vhdx2seed.py" "$f" \
		"$seeds/$(echo "$name" | tr / -).seed"
done
ls "$seeds" | wc -l | sed 's/$/ seeds/'
