#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/convert.sh: how fast `layerimg convert -O raw` flattens a qcow2
# chain, against `qemu-img convert -O raw` of the same chain and against
# copying the flat result with `cp --sparse=always` and `dd` (the data
# only): the disk-speed baselines.  Not a test.
#
#   bench/convert.sh                    # 4 GiB chain, ~2 GiB of data; ~10 GiB of space
#   SIZE_MIB=512 DATA_MIB=256 REPS=1 bench/convert.sh   # quick sanity run
#
# Environment:
#   LAYERIMG   binary (default build-bench/src/cli/layerimg, else build/src/cli/layerimg)
#   BENCH_ROOT work directory (default /var/tmp/layerimg-convert-bench)
#   SIZE_MIB   virtual disk size (default 4096); DATA_MIB data in the chain
#              (default 2048), spread over 3 layers: 1/2 base, 1/4 mid, 1/4 top
#   REPS       runs per tool, the median is reported (default 3)
#   COLD=1     drop the page cache before every run (root; measures the disk)
#   FORMATS    extra layerimg output formats timed too (default "sparse qcow2")
#   REBUILD=1  rebuild the chain
#
# The chain: base.qcow2 (64 KiB clusters) holds random data in 32 MiB runs
# spread over the disk; mid.qcow2 and top.qcow2 overwrite other runs with
# random data and fill patterns, and top punches zero runs.  Every output
# is compared with qemu-img's (cmp) before the timings are printed.
set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
LAYERIMG=${LAYERIMG:-}
if [ -z "$LAYERIMG" ]; then
	for b in build-bench build; do
		[ -x "$root/$b/src/cli/layerimg" ] && LAYERIMG=$root/$b/src/cli/layerimg && break
	done
fi
[ -x "${LAYERIMG:-}" ] || { echo "convert.sh: build layerimg first (or set LAYERIMG)" >&2; exit 2; }
for t in qemu-img qemu-io python3 cp dd cmp; do
	command -v $t >/dev/null || { echo "convert.sh: $t is missing" >&2; exit 2; }
done

W=${BENCH_ROOT:-/var/tmp/layerimg-convert-bench}
SIZE_MIB=${SIZE_MIB:-4096}
DATA_MIB=${DATA_MIB:-2048}
REPS=${REPS:-3}
COLD=${COLD:-0}
FORMATS=${FORMATS-sparse qcow2}
RUN=32					# MiB per written run
mkdir -p "$W"

die() { echo "convert.sh: $*" >&2; exit 1; }

build_chain() {
	local nruns stride i off seed layer
	rm -f "$W"/*.qcow2 "$W"/rnd-*.bin
	nruns=$((DATA_MIB / RUN))
	[ "$nruns" -ge 4 ] || die "DATA_MIB must be at least $((4 * RUN))"
	stride=$((SIZE_MIB / nruns))
	[ "$stride" -ge "$RUN" ] || die "DATA_MIB larger than SIZE_MIB"
	for seed in 1 2 3; do		# 32 MiB of random bytes per layer
		python3 -c "import random,sys; sys.stdout.buffer.write(random.Random($seed).randbytes($RUN << 20))" \
			>"$W/rnd-$seed.bin"
	done
	qemu-img create -q -f qcow2 "$W/base.qcow2" "${SIZE_MIB}M"
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$W/mid.qcow2"
	qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$W/top.qcow2"
	# run i goes to base (i%4 in 0,1), mid (2) or top (3); the top also
	# gets fill patterns and zero runs over some base runs
	for ((i = 0; i < nruns; i++)); do
		off=$((i * stride))
		case $((i % 4)) in
		0 | 1) layer=base seed=1 ;;
		2) layer=mid seed=2 ;;
		3) layer=top seed=3 ;;
		esac
		echo "write -s $W/rnd-$seed.bin ${off}M ${RUN}M"
		if [ $((i % 8)) -eq 3 ]; then
			echo "write -P 0x5a $((off + RUN))M 1M" >>"$W/top.cmds"
		fi
		if [ $((i % 16)) -eq 1 ]; then
			echo "write -z ${off}M 4M" >>"$W/top.cmds.z"
		fi
	done >"$W/all.cmds"
	for layer in base mid top; do
		local args=()
		case $layer in
		base) mapfile -t cmds < <(awk 'NR % 4 == 1 || NR % 4 == 2' "$W/all.cmds") ;;
		mid) mapfile -t cmds < <(awk 'NR % 4 == 3' "$W/all.cmds") ;;
		top) mapfile -t cmds < <(awk 'NR % 4 == 0' "$W/all.cmds"
					 cat "$W/top.cmds" "$W/top.cmds.z" 2>/dev/null) ;;
		esac
		for c in "${cmds[@]}"; do args+=(-c "$c"); done
		qemu-io -f qcow2 "${args[@]}" "$W/$layer.qcow2" >/dev/null ||
			die "qemu-io $layer"
	done
	rm -f "$W"/*.cmds "$W"/*.cmds.z "$W"/rnd-*.bin
}

if [ "${REBUILD:-0}" = 1 ] || [ ! -f "$W/top.qcow2" ]; then
	echo "building a ${SIZE_MIB} MiB chain with ~${DATA_MIB} MiB of data in $W ..." >&2
	build_chain
fi
rm -f "$W"/out-*
qemu-img convert -f qcow2 -O raw "$W/top.qcow2" "$W/ref.raw" || die "qemu-img convert"
data_mib=$(($(du -k "$W/ref.raw" | cut -f1) / 1024))

drop() {
	sync
	if [ "$COLD" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches || die "drop_caches"; fi
}

# time_cmd LABEL OUTFILE CMD...: median wall seconds (with the final sync)
# of REPS runs
declare -A secs
time_cmd() {
	local label=$1 out=$2 r t0 t1 all=()
	shift 2
	for ((r = 0; r < REPS; r++)); do
		rm -f "$out"
		drop
		t0=$(date +%s.%N)
		"$@" >/dev/null || die "$label failed"
		sync
		t1=$(date +%s.%N)
		all+=("$(python3 -c "print($t1 - $t0)")")
	done
	secs[$label]=$(printf '%s\n' "${all[@]}" | sort -n |
		awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}')
}

time_cmd "layerimg convert -O raw" "$W/out-l.raw" \
	"$LAYERIMG" convert --no-progress "$W/top.qcow2" "$W/out-l.raw"
cmp "$W/out-l.raw" "$W/ref.raw" || die "layerimg's raw output differs from qemu-img's"
time_cmd "qemu-img convert -O raw" "$W/out-q.raw" \
	qemu-img convert -f qcow2 -O raw "$W/top.qcow2" "$W/out-q.raw"
time_cmd "cp --sparse=always (flat raw)" "$W/out-cp.raw" \
	cp --sparse=always "$W/ref.raw" "$W/out-cp.raw"
time_cmd "dd of the data (flat raw, ${data_mib} MiB)" "$W/out-dd.raw" \
	dd if="$W/ref.raw" of="$W/out-dd.raw" bs=8M count=$((data_mib / 8)) status=none
for f in $FORMATS; do
	time_cmd "layerimg convert -O $f" "$W/out-l.$f" \
		"$LAYERIMG" convert --no-progress -O "$f" "$W/top.qcow2" "$W/out-l.$f"
	case $f in
	sparse) command -v simg2img >/dev/null &&
		{ simg2img "$W/out-l.sparse" "$W/chk.raw" && cmp "$W/chk.raw" "$W/ref.raw" ||
		  die "-O sparse differs"; } ;;
	qcow2|vhdx) qemu-img convert -f "$f" -O raw "$W/out-l.$f" "$W/chk.raw" &&
		cmp "$W/chk.raw" "$W/ref.raw" || die "-O $f differs" ;;
	esac
	rm -f "$W/chk.raw"
done

# commit: top.qcow2 merged into a fresh copy of mid.qcow2 (base hard
# linked), by layerimg and by qemu-img; the copies are made outside the
# timing; the result (mid's chain) must equal qemu-img's flat mid+top.
top_mib=$(($(qemu-img map -f qcow2 --output=json "$W/top.qcow2" |
	python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]))') >> 20))
commit_bench() {
	local label=$1 r t0 t1 all=() c=$W/commit
	shift
	for ((r = 0; r < REPS; r++)); do
		rm -rf "$c" && mkdir -p "$c"
		ln "$W/base.qcow2" "$c/base.qcow2"
		cp "$W/mid.qcow2" "$W/top.qcow2" "$c/"
		drop
		t0=$(date +%s.%N)
		"$@" "$c/top.qcow2" >/dev/null 2>&1 || die "$label failed"
		sync
		t1=$(date +%s.%N)
		all+=("$(python3 -c "print($t1 - $t0)")")
		qemu-img convert -f qcow2 -O raw "$c/mid.qcow2" "$W/chk.raw" &&
			cmp "$W/chk.raw" "$W/ref.raw" || die "$label: mid does not read the chain"
		rm -f "$W/chk.raw"
	done
	rm -rf "$c"
	secs[$label]=$(printf '%s\n' "${all[@]}" | sort -n |
		awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}')
}
commit_bench "layerimg commit" "$LAYERIMG" commit
commit_bench "qemu-img commit" qemu-img commit -q -f qcow2
time_cmd "dd of top's data (${top_mib} MiB)" "$W/out-dd2.raw" \
	dd if="$W/ref.raw" of="$W/out-dd2.raw" bs=8M count=$((top_mib / 8)) status=none

echo
cache=warm
[ "$COLD" = 1 ] && cache=cold
echo "| convert of a ${SIZE_MIB} MiB chain, ${data_mib} MiB of data (median of $REPS, $cache cache) | s | MiB/s of data |"
echo "|---|---:|---:|"
for label in "layerimg convert -O raw" "qemu-img convert -O raw" \
	"cp --sparse=always (flat raw)" "dd of the data (flat raw, ${data_mib} MiB)"; do
	printf '| %s | %s | %s |\n' "$label" "${secs[$label]}" \
		"$(python3 -c "print('%.0f' % ($data_mib / max(${secs[$label]}, 0.001)))")"
done
for f in $FORMATS; do
	label="layerimg convert -O $f"
	printf '| %s | %s | %s |\n' "$label" "${secs[$label]}" \
		"$(python3 -c "print('%.0f' % ($data_mib / max(${secs[$label]}, 0.001)))")"
done
echo
echo "| commit of top.qcow2 (${top_mib} MiB of data) into mid.qcow2 (median of $REPS, $cache cache) | s | MiB/s of data |"
echo "|---|---:|---:|"
for label in "layerimg commit" "qemu-img commit" "dd of top's data (${top_mib} MiB)"; do
	printf '| %s | %s | %s |\n' "$label" "${secs[$label]}" \
		"$(python3 -c "print('%.0f' % ($top_mib / max(${secs[$label]}, 0.001)))")"
done
rm -f "$W"/out-*
