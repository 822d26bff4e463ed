#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/chainlock.sh: the read path of two layerfs binaries, side by side,
# on a 1 GiB depth-5 VHD chain (the "chain lock" note in bench/README.md).
#
#   bench/chainlock.sh OLD_LAYERFS NEW_LAYERFS      # as root, ~6 min
#
# The chain is built once in BENCH_ROOT (default /var/tmp/layerfs-bench-cl):
# base.raw is 1 GiB of random bytes; its 16384 grains of 64 KiB are shuffled
# (seeded) into 5 equal groups; layer 01 is a dynamic VHD (qemu-img) holding
# group 1, layers 02..05 differencing VHDs (mkchain-vhd.py --fill hole)
# holding theirs, so every read walks into up to 5 files.  Each round mounts
# OLD, then NEW (the order alternates), checks the disk's sha256 against
# base.raw once, and runs fio on it with O_DIRECT: 1 MiB sequential reads
# (MB/s), 4 KiB random reads at QD1 (psync) and QD16 (libaio) (IOPS), each
# with the daemon's CPU time (user + system, /proc/PID/stat) per GiB or per
# request: a figure that other load on the machine inflates much less than
# throughput.  RUNTIME seconds per job (default 4), REPS rounds (default 3).
set -euo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "$0")" && pwd)
OLD=$(readlink -f "$1") NEW=$(readlink -f "$2")
ROOT=${BENCH_ROOT:-/var/tmp/layerfs-bench-cl}
RUNTIME=${RUNTIME:-4}
REPS=${REPS:-3}
DIR=$ROOT/chain MNT=$ROOT/mnt
mkdir -p "$DIR" "$MNT"

build() {
	[ -f "$ROOT/.done" ] && return
	python3 - "$ROOT" <<'PY'
import os, random, sys
root = sys.argv[1]
size, grain, depth = 1 << 30, 1 << 16, 5
rng = random.Random(0x5eed1234)
with open(root + "/base.raw", "wb") as f:
    for _ in range(size >> 20):
        f.write(rng.randbytes(1 << 20))
idx = list(range(size // grain))
rng.shuffle(idx)
base = open(root + "/base.raw", "rb")
for k in range(depth):
    with open("%s/l%d.raw" % (root, k + 1), "wb") as f:
        f.truncate(size)
        n = len(idx)
        for i in sorted(idx[n * k // depth:n * (k + 1) // depth]):
            base.seek(i * grain)
            f.seek(i * grain)
            f.write(base.read(grain))
PY
	qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
		"$ROOT/l1.raw" "$DIR/vhd-d5-layer01.vhd"
	fallocate -d "$DIR/vhd-d5-layer01.vhd"
	for k in 2 3 4 5; do
		python3 "$HERE/mkchain-vhd.py" "$DIR/vhd-d5-layer0$k.vhd" \
			--parent "$DIR/vhd-d5-layer0$((k - 1)).vhd" \
			--layer "$ROOT/l$k.raw" --fill hole
	done
	rm -f "$ROOT"/l?.raw
	sha256sum <"$ROOT/base.raw" | cut -d' ' -f1 >"$ROOT/base.sha256"
	touch "$ROOT/.done"
}

run_one() {	# binary label -> one line: label, then figure and CPU per job
	local bin=$1 label=$2 pid f out i
	"$bin" -f "$DIR" "$MNT" 2>>"$ROOT/daemon.err" &
	pid=$!
	for i in $(seq 100); do
		grep -qs " $MNT fuse" /proc/self/mounts && break
		sleep 0.1
	done
	f=$MNT/vhd-d5-layer05/disk
	if [ ! -f "$ROOT/.checked-$label" ]; then
		[ "$(sha256sum <"$f" | cut -d' ' -f1)" = "$(cat "$ROOT/base.sha256")" ] ||
			{ echo "$label: the disk differs from base.raw" >&2; exit 1; }
		touch "$ROOT/.checked-$label"
	fi
	local common=(--output-format=terse --terse-version=3 --filename="$f"
		--direct=1 --invalidate=0 --readonly --randrepeat=1 --norandommap
		--size=1G --runtime="$RUNTIME" --time_based)
	# each job: its figure, then the daemon's CPU time (user + system)
	# per unit of work: ms per GiB (seq), us per request (random)
	job() {
		local c0 c1 t
		c0=$(awk '{print $14 + $15}' /proc/$pid/stat)
		t=$(fio "${common[@]}" "$@")
		c1=$(awk '{print $14 + $15}' /proc/$pid/stat)
		awk -F';' -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
			$1 == "3" && $3 == "seq" {
				printf "%.0f %.0f", $7 * 1024 / 1e6,
					c / hz * 1e3 / ($6 / 1048576) }
			$1 == "3" && $3 != "seq" {
				printf "%s %.1f", $8, c / hz * 1e6 / ($6 / 4) }' <<<"$t"
	}
	out="$(job --name=seq --rw=read --bs=1M --ioengine=psync)"
	out="$out $(job --name=qd1 --rw=randread --bs=4k --ioengine=psync)"
	out="$out $(job --name=qd16 --rw=randread --bs=4k --ioengine=libaio --iodepth=16)"
	fusermount3 -u "$MNT"
	wait "$pid"
	echo "$label $out"
}

build
rm -f "$ROOT"/.checked-*
echo "# label seq_MBps seq_cpu_ms/GiB qd1_iops qd1_cpu_us/req qd16_iops qd16_cpu_us/req"
for r in $(seq "$REPS"); do
	if [ $((r % 2)) = 1 ]; then
		run_one "$OLD" old; run_one "$NEW" new
	else
		run_one "$NEW" new; run_one "$OLD" old
	fi
done
