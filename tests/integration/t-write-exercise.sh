#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The model-based write exerciser (tests/tools/exercise.py, issue #12), a
# short run: VHD, VHDX and QCOW2 tops over chains of depth 1 and 3 with
# 512-byte sectors, and one VHDX chain with 4096-byte sectors.  Each run
# does random writes, zero-ranges, discards, reads, fsyncs, truncation
# attempts, SIGKILLs and clean remounts against an in-memory model, and
# checks the top with layerimg check and an independent reader after each
# kill/remount.  Every configuration runs with a fixed seed, and the
# VHD/VHDX/QCOW2 depth-3 ones once more with a random seed that is printed
# (EXERCISE_SEED=N fixes it).  Long runs: bench/exercise-long.sh.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img 7zz python3 fusermount3
require_script exercise.py

OPS=${EXERCISE_OPS:-150}
RSEED=${EXERCISE_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
_log "random seed: $RSEED (EXERCISE_SEED=$RSEED repeats it)"

run_one() {
	local name=$1
	shift
	python3 "$TOOLS/exercise.py" --layerfs "$LAYERFS" \
		--layerimg "$LAYERIMG" --workdir "$T/$name" \
		--log "$T/$name.ops.log" --ops "$OPS" --kill-at-end "$@" \
		>"$T/$name.out" 2>&1 || {
		cat "$T/$name.out" >&2
		fail "exerciser $name: $(grep FINDING "$T/$name.out" | head -1)"
	}
	rm -rf "${T:?}/$name"
	ok "$(tail -1 "$T/$name.out" | sed 's/^exercise: //')"
}

for fmt in vhd vhdx qcow2; do
	run_one "$fmt-d1" --format "$fmt" --depth 1 --seed 12
	run_one "$fmt-d3" --format "$fmt" --depth 3 --seed 12
	run_one "$fmt-d3-r" --format "$fmt" --depth 3 --seed "$RSEED"
done
run_one vhdx-4k --format vhdx --sector 4096 --depth 2 --seed 12
finish
