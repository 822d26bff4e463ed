#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build the qcow2/qcow libFuzzer target (outside the meson build) and,
# with "seed", make a small seed corpus with qemu-img/qemu-io.
#
#   tests/fuzz/build-qcow2.sh [OUTDIR]          -> OUTDIR/fuzz-qcow2
#   tests/fuzz/build-qcow2.sh OUTDIR seed       -> also OUTDIR/corpus-qcow2
#   OUTDIR/fuzz-qcow2 -max_len=262144 -timeout=10 -rss_limit_mb=2048 \
#       -max_total_time=300 OUTDIR/corpus-qcow2
set -eu

. "$(dirname "$0")/build-lib.sh"
fuzz_init qcow2 "${1:-}"

fuzz_build qcow2 -I"$src/src/format/qcow2" "$src/src/common/log.c" \
	"$src/src/common/io.c" "$src/src/common/atomic-file.c" \
	"$src/src/format/img.c" "$src/src/format/raw.c" \
	"$src/src/format/qcow2/codec.c" "$src/src/format/qcow2/open.c" \
	"$src/src/format/qcow2/cluster.c" "$src/src/format/qcow2/qcow.c" \
	"$src/src/format/qcow2/info.c" "$src/src/format/qcow2/refcount.c" \
	"$src/src/format/qcow2/write.c" "$src/src/format/qcow2/create.c" \
	"$src/src/format/qcow2/parent.c" "$src/src/format/qcow2/check.c" \
	"$src/src/format/qcow2/driver.c" -lz -lzstd -lpthread

[ "${2:-}" = seed ] || exit 0
fuzz_seed_init qcow2
cd "$t"
io() { qemu-io -t unsafe -f "$@" >/dev/null; }
printf 'seed data for the qcow2 fuzzer %0512d' 0 > s.raw
truncate -s 256K s.raw
for opts in compat=0.10 cluster_size=512 cluster_size=4096 \
	    extended_l2=on,cluster_size=16384 compression_type=zstd,cluster_size=4096; do
	n=$(echo "$opts" | tr ',=' '__')
	qemu-img create -q -f qcow2 -o "$opts" "$n.qcow2" 256K
	io qcow2 -c 'write -P 0x11 0 4096' -c 'write -z 8192 4096' \
		-c 'write -P 0x22 20000 3000' "$n.qcow2"
	cp "$n.qcow2" "$c/"
done
qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 256K
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 b.qcow2 256K
io qcow2 -c 'write -P 0x33 4096 4096' -c 'write -c -P 0x44 16384 8192' b.qcow2
cp b.qcow2 "$c/backing.qcow2"
qemu-img convert -t unsafe -c -O qcow2 -o cluster_size=4096 s.raw "$c/zlib.qcow2"
qemu-img convert -t unsafe -c -O qcow2 -o cluster_size=4096,compression_type=zstd s.raw "$c/zstd.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4096 sn.qcow2 256K
io qcow2 -c 'write -P 1 0 8K' sn.qcow2
qemu-img snapshot -c first sn.qcow2
cp sn.qcow2 "$c/snapshot.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4096,data_file=fuzz.qcow2 d.qcow2 256K
cp d.qcow2 "$c/datafile.qcow2"
qemu-img create -q -f qcow v1.qcow 256K
io qcow -c 'write -P 0x55 512 4096' v1.qcow
cp v1.qcow "$c/v1.qcow"
qemu-img convert -t unsafe -c -O qcow s.raw v1c.qcow 2>/dev/null || test -s v1c.qcow
cp v1c.qcow "$c/v1c.qcow"
ls -la "$c"
