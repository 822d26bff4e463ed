#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/part.sh: reading a partition file sequentially against reading the
# same byte range of the chain's disk file.  Not a test.
#
#   bench/part.sh            # 1 GiB GPT disk, one ~1000 MiB partition, qcow2 chain
#
# The disk is a raw GPT disk (sfdisk) whose partition holds random data,
# converted with qemu-img to a qcow2 base with a qcow2 overlay holding a
# quarter of the partition.  fio reads with O_DIRECT, bs=1M, psync QD1,
# the whole partition: MNT/c-L1/p1, and MNT/c-L1/disk with --offset=START
# --size=SIZE.  Reps alternate; medians.
#
# Environment: LAYERFS (default build-bench/src/layerfs, else build/src/layerfs),
#   BENCH_ROOT (default /var/tmp/layerfs-part-bench), REPS (default 5)
set -uo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${BENCH_ROOT:-/var/tmp/layerfs-part-bench}
REPS=${REPS:-5}
LAYERFS=${LAYERFS:-}
if [ -z "$LAYERFS" ]; then
	for b in build-bench build; do
		[ -x "$root/$b/src/layerfs" ] && LAYERFS=$root/$b/src/layerfs && break
	done
fi
die() { echo "part.sh: $*" >&2; exit 1; }
[ -x "${LAYERFS:-}" ] || die "build layerfs first (or set LAYERFS)"
for t in qemu-img qemu-io sfdisk fio python3 fusermount3; do
	command -v $t >/dev/null || die "$t is missing"
done

mkdir -p "$W/img" "$W/mnt"
if [ ! -f "$W/img/c-L1.qcow2" ]; then
	truncate -s 1G "$W/disk.raw"
	printf 'label: gpt\nstart=2048, size=2048000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"\n' |
		sfdisk -q "$W/disk.raw" || die "sfdisk"
	python3 -c "
import os, random
r = random.Random(7)
fd = os.open('$W/disk.raw', os.O_WRONLY)
for i in range(1000):
    os.pwrite(fd, r.randbytes(1 << 20), (2048 << 9) + (i << 20))
os.close(fd)" || die "data"
	qemu-img convert -q -f raw -O qcow2 "$W/disk.raw" "$W/img/c-L0.qcow2" || die "convert"
	qemu-img create -q -f qcow2 -b c-L0.qcow2 -F qcow2 "$W/img/c-L1.qcow2" || die "overlay"
	qemu-io -f qcow2 -c "write -P 0x3c $((2048 * 512)) 250M" "$W/img/c-L1.qcow2" >/dev/null || die "qemu-io"
	rm -f "$W/disk.raw"
fi

"$LAYERFS" "$W/img" "$W/mnt" || die "mount"
trap 'fusermount3 -u "$W/mnt"' EXIT
d=$W/mnt/c-L1
[ -f "$d/p1" ] || die "no p1 in $d"
start=$((2048 * 512))
size=$(stat -c %s "$d/p1")
cmp <(head -c "$size" "$d/p1") <(tail -c +$((start + 1)) "$d/disk" | head -c "$size") ||
	die "p1 and the disk range differ"

# fio_seq FILE [OFFSET]: MB/s of one O_DIRECT sequential read of the partition range
fio_seq() {
	fio --name=s --filename="$1" --direct=1 --rw=read --bs=1M --ioengine=psync \
		--offset="${2:-0}" --size="$size" --output-format=terse --terse-version=3 \
		2>/dev/null | awk -F';' '$1 == "3" { printf "%.0f", $7 / 1024 }'
}
p=() k=()
for ((r = 0; r < REPS; r++)); do
	p+=("$(fio_seq "$d/p1")")
	k+=("$(fio_seq "$d/disk" "$start")")
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(med "${p[@]}") md=$(med "${k[@]}")
echo "| sequential read, 1M O_DIRECT QD1, ${size} bytes (median of $REPS) | MiB/s | samples |"
echo "|---|---:|---|"
echo "| c-L1/p1 | $mp | ${p[*]} |"
echo "| c-L1/disk, same range (--offset=$start) | $md | ${k[*]} |"
echo "| p1 / disk | $(python3 -c "print('%.2f' % ($mp / max($md, 1)))") | |"
