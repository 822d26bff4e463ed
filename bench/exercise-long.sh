#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# exercise-long.sh: long runs of the model-based write exerciser
# (tests/tools/exercise.py, issue #12), meant for a sanitizer build of the
# daemon.  For MINUTES per format it cycles seeds, chain depths (1-5) and
# sector sizes (512, and 4096 for VHDX), one exerciser run after another,
# and writes a summary (runs, operations, kills, clean remounts, findings)
# into RESULTS.  A finding keeps its op log and work directory under OUTDIR.
#
#   meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
#   ninja -C build-asan
#   LAYERFS=build-asan/src/layerfs MINUTES=20 bench/exercise-long.sh
#
# LAYERFS      daemon under test (default build-asan/src/layerfs, else
#              build/src/layerfs)
# LAYERIMG     layerimg (default build/src/cli/layerimg)
# FORMATS      "vhd vhdx qcow2"
# MINUTES      per format (default 8)
# OPS          operations per run (default 600)
# SEED         first seed (default: random, printed); run i uses SEED+i
# OUTDIR       default /var/tmp/layerfs-exercise; RESULTS default
#              OUTDIR/results-DATE.md
# Exit status: 0 no finding, 1 at least one finding.
set -u
shopt -s nullglob
cd "$(dirname "$0")/.." || exit 2
LAYERFS=${LAYERFS:-$([ -x build-asan/src/layerfs ] &&
	echo build-asan/src/layerfs || echo build/src/layerfs)}
LAYERIMG=${LAYERIMG:-build/src/cli/layerimg}
FORMATS=${FORMATS:-"vhd vhdx qcow2"}
MINUTES=${MINUTES:-8}
OPS=${OPS:-600}
SEED=${SEED:-$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')}
OUTDIR=${OUTDIR:-/var/tmp/layerfs-exercise}
mkdir -p "$OUTDIR"
RESULTS=${RESULTS:-$OUTDIR/results-$(date -u +%Y%m%dT%H%M%SZ).md}
LAYERFS=$(realpath "$LAYERFS")
LAYERIMG=$(realpath "$LAYERIMG")

# A sanitizer report makes the daemon exit non-zero and leaves a log
# file the exerciser watches (--asan-log).
ASANLOG=$OUTDIR/asan
export ASAN_OPTIONS=${ASAN_OPTIONS:-log_path=$ASANLOG:exitcode=86:abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-log_path=$ASANLOG:halt_on_error=1:print_stacktrace=1:exitcode=87}

echo "exercise-long: daemon $LAYERFS, $MINUTES min per format, first seed $SEED"
{
	echo "# Write exerciser long run, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "daemon: $LAYERFS; commit $(git rev-parse --short HEAD 2>/dev/null);"
	echo "$MINUTES min per format; $OPS ops per run; first seed $SEED"
	echo
	echo "| format | runs | operations | kills | clean remounts | findings |"
	echo "|---|---|---|---|---|---|"
} >"$RESULTS"

total_find=0
i=0
for fmt in $FORMATS; do
	runs=0 ops=0 kills=0 rem=0 finds=0
	end=$(($(date +%s) + MINUTES * 60))
	while [ "$(date +%s)" -lt "$end" ]; do
		seed=$((SEED + i))
		depth=$((i % 5 + 1))
		sector=512
		[ "$fmt" = vhdx ] && [ $((i % 3)) -eq 2 ] && sector=4096
		i=$((i + 1))
		rm -f "$ASANLOG".*
		wd=$OUTDIR/run-$fmt-$seed
		out=$(timeout -k 10 900 python3 tests/tools/exercise.py --layerfs "$LAYERFS" \
			--layerimg "$LAYERIMG" --format "$fmt" --depth "$depth" \
			--sector "$sector" --seed "$seed" --ops "$OPS" \
			--p-kill 0.01 --p-remount 0.005 --kill-at-end \
			--workdir "$wd" --log "$wd.ops.log" \
			--asan-log "$ASANLOG" 2>"$wd.err")
		rc=$?
		# a hung run (timeout kills the exerciser) leaves its mount
		[ "$rc" -eq 124 ] && echo "exercise: FINDING: run hung (900 s)" >>"$wd.err" &&
			fusermount3 -u -z "$wd/mnt" 2>/dev/null
		last=$(printf '%s\n' "$out" | tail -1)
		runs=$((runs + 1))
		n=$(sed -n 's/.* ops=\([0-9]*\) kills=.*/\1/p' <<<"$last")
		k=$(sed -n 's/.* kills=\([0-9]*\).*/\1/p' <<<"$last")
		m=$(sed -n 's/.* remounts=\([0-9]*\).*/\1/p' <<<"$last")
		ops=$((ops + ${n:-0})) kills=$((kills + ${k:-0}))
		rem=$((rem + ${m:-0}))
		if [ "$rc" -ne 0 ]; then
			finds=$((finds + 1))
			for f in "$ASANLOG".*; do mv "$f" "$wd.$(basename "$f")"; done
			echo "FINDING: $fmt depth $depth sector $sector seed $seed:" \
				"$(grep -m1 FINDING "$wd.err")"
			echo "- $fmt depth $depth sector $sector seed $seed ops $OPS:" \
				"$(grep -m1 FINDING "$wd.err" | cut -c1-300)" \
				"(log $wd.ops.log)" >>"$OUTDIR/findings-$$.txt"
		else
			rm -rf "$wd" "$wd.err"
		fi
	done
	total_find=$((total_find + finds))
	echo "| $fmt | $runs | $ops | $kills | $rem | $finds |" >>"$RESULTS"
	echo "exercise-long: $fmt: $runs runs, $ops ops, $kills kills," \
		"$rem clean remounts, $finds findings"
done
if [ -f "$OUTDIR/findings-$$.txt" ]; then
	{ echo; echo "Findings:"; cat "$OUTDIR/findings-$$.txt"; } >>"$RESULTS"
	rm -f "$OUTDIR/findings-$$.txt"
fi
echo "exercise-long: summary in $RESULTS"
cat "$RESULTS"
[ "$total_find" -eq 0 ]
