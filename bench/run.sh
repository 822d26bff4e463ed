#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# bench/run.sh: read a 1 GiB chain of depth 1, 5 and 10 through layerfs and
# through qemu-storage-daemon's FUSE export of the same data, with fio
# (O_DIRECT on the exposed file), and print the ratios as Markdown; then
# write into fresh top layers (layerfs: qcow2, VHD, VHDX) and into a fresh
# qcow2 overlay exported writable by qemu-storage-daemon, side by side.
#
#   bench/run.sh                      # as root; ~13-14 min, plus ~2.5 min once for the images
#   RUNTIME=2 REPS=1 bench/run.sh     # quick look
#   ONLY='qcow2' bench/run.sh         # regex over row labels (reads)
#   READS=0 bench/run.sh              # the write benchmark only, ~3 min
#
# Environment:
#   LAYERFS     daemon binary (default build-bench/src/layerfs, else build/src/layerfs)
#   BENCH_ROOT  images, mounts and logs (default /var/tmp/layerfs-bench; ~7 GiB)
#   RUNTIME     seconds per fio job (default 4); REPS round-robin reps, medians (default 3)
#   ONLY        regex over row labels; VERIFY=0 skips the sha256 check through the mounts
#   REBUILD=1   rebuild the images; OUT  Markdown file (default bench/results/DATE.md)
#   READS=0     skip the read benchmark; WRITES=0 skip the write benchmark
#   RUNTIME_W   seconds per random-write job (default RUNTIME); SEQ_W_MIB MiB per
#               seq-write job (default 512); KEEP_W=1 keeps the written layers
#   WOUT        write report (default bench/results/DATE-writes.md)
#
# Images (built once, identical bytes everywhere: every chain flattens to base.raw):
#   base.raw                  1 GiB of splitmix64 output (seed 0x5eed1234, as ../shared/bench)
#   qcow2-d1.qcow2            qemu-img convert of base.raw (64 KiB clusters)
#   qcow2-dN-layerKK.qcow2    N=5,10: the 16384 64 KiB clusters split at random (seeded)
#                             into N disjoint equal groups; layer K holds group K, its
#                             backing file is layer K-1 (relative name)
#   vhd-d1.vhd                qemu-img convert -O vpc -o subformat=dynamic,force_size=on
#   vhd-dN-layerKK.vhd        the same split: layer 01 is a dynamic VHD (qemu-img) holding
#                             group 1, layers 02..N differencing VHDs (bench/mkchain-vhd.py)
#                             holding their group, 2 MiB blocks, sector bitmaps per 64 KiB;
#                             sparse: the sectors a layer does not hold are holes, else
#                             every layer of a depth-N chain takes ~1 GiB of page cache
# The names carry no L<d> layer tag, so layerfs's naming rules stay out of the way.
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
ROOT=${BENCH_ROOT:-/var/tmp/layerfs-bench}
IMG=$ROOT/img
DIR=$IMG/chains
WORK=$ROOT/work
MNTR=$ROOT/mnt
BIN=$ROOT/bin
RUNTIME=${RUNTIME:-4}
REPS=${REPS:-3}
ONLY=${ONLY:-}
VERIFY=${VERIFY:-1}
REBUILD=${REBUILD:-0}
READS=${READS:-1}
WRITES=${WRITES:-1}
RUNTIME_W=${RUNTIME_W:-$RUNTIME}
SEQ_W_MIB=${SEQ_W_MIB:-512}
KEEP_W=${KEEP_W:-0}
SEED=0x5eed1234
SIZE_MIB=1024
CHUNK=65536
if [ -z "${LAYERFS:-}" ]; then
	LAYERFS=$TOP/build-bench/src/layerfs
	[ -x "$LAYERFS" ] || LAYERFS=$TOP/build/src/layerfs
fi

TS=$(date +%Y%m%d-%H%M%S)
LOG=$ROOT/logs/$TS
mkdir -p "$IMG" "$WORK" "$MNTR" "$BIN" "$LOG"
if [ -z "${OUT:-}" ]; then
	OUT=$HERE/results/$(date +%F).md
	[ -e "$OUT" ] && OUT=$HERE/results/$(date +%F-%H%M).md
fi
if [ -z "${WOUT:-}" ]; then
	WOUT=$HERE/results/$(date +%F)-writes.md
	[ -e "$WOUT" ] && WOUT=$HERE/results/$(date +%F-%H%M)-writes.md
fi
T_START=$(date +%s)

log() { echo "[$(date +%T)] $*" >&2; }
NOTES=()
note() { NOTES+=("$*"); log "NOTE: $*"; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
for t in qemu-img qemu-storage-daemon fio fusermount3 gcc python3 sha256sum 7zz; do
	command -v $t >/dev/null ||
		die "missing $t (apt-get install qemu-utils qemu-system-common fio fuse3 libfuse3-dev gcc python3 7zip)"
done
[ -x "$LAYERFS" ] || die "no layerfs binary at $LAYERFS (set LAYERFS=)"

# ------------------------------------------------------------ bookkeeping
declare -A MOUNTED=()	# mountpoint -> daemon pid (started by this script)
declare -A MKIND=()	# mountpoint -> qsd | fuse
declare -A S=() R=() LABEL=() KIND=() ARG=() REF=() FILEOF=() PIDOF=() DATA=()
ROWS=()

umount_one() {
	local m=$1 pid=${MOUNTED[$1]:-} i
	if [ "${MKIND[$m]:-}" = qsd ] && [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null
	else
		for i in 1 2 3 4 5 6; do fusermount3 -u "$m" 2>/dev/null && break; sleep 0.5; done
	fi
	for i in $(seq 1 100); do
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if awk -v m="$m" '$2==m {f=1} END{exit !f}' /proc/mounts; then
		fusermount3 -uz "$m" 2>/dev/null
		note "had to lazy-unmount $m"
	fi
	[ -n "$pid" ] && wait "$pid" 2>/dev/null
	unset "MOUNTED[$m]" "MKIND[$m]"
}
cleanup() { local m; for m in "${!MOUNTED[@]}"; do umount_one "$m"; done; }
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

is_mounted() { awk -v m="$1" '$2==m {f=1} END{exit !f}' /proc/mounts; }
wait_mount() {
	local i
	for i in $(seq 1 200); do
		is_mounted "$1" && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

median() {
	awk '/^[0-9]/' | sort -g | awk '{a[++n]=$1} END {
		if (!n) { print "-"; exit }
		printf "%.6g\n", (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }'
}
fmt2() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.2f", v }'; }
fmt0() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.0f", v }'; }
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "-" || b == "-" || a == "" || b == "" || b == 0) print "-"
		else printf "%.2f", a / b }'
}
add() { S[$1,$2]="${S[$1,$2]:-} $3"; }
g() { local v=${R[$1,$2]:-}; echo "${v:--}"; }

# ------------------------------------------------------------ helpers
build_imgtool() {
	# the data generator of ../shared/bench/bench.sh (same PRNG, seed and split)
	[ -x "$BIN/imgtool" ] && [ "$BIN/imgtool" -nt "$0" ] && return
	cat > "$BIN/imgtool.c" <<'EOF'
/* imgtool base OUT MIB SEED | layers BASE PREFIX DEPTH CHUNK SEED (splitmix64) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
static uint64_t st;
static uint64_t sm(void)
{
	uint64_t z = (st += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static void die(const char *m) { perror(m); exit(2); }
static int base(const char *out, long mib)
{
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint64_t *b = malloc(1 << 20);
	if (fd < 0 || !b) die(out);
	for (long i = 0; i < mib; i++) {
		for (int j = 0; j < (1 << 17); j++) b[j] = sm();
		if (write(fd, b, 1 << 20) != 1 << 20) die("write");
	}
	if (fsync(fd)) die("fsync");
	return close(fd);
}
/* layer k (1..d) gets clusters p[n*(k-1)/d .. n*k/d) of a seeded shuffle */
static int layers(const char *bp, const char *pre, int d, long ch)
{
	int bfd = open(bp, O_RDONLY);
	struct stat s;
	if (bfd < 0 || fstat(bfd, &s)) die(bp);
	long n = s.st_size / ch, *p = malloc(n * sizeof(long));
	char *b = malloc(ch);
	for (long i = 0; i < n; i++) p[i] = i;
	for (long i = n - 1; i > 0; i--) {
		long j = sm() % (i + 1), t = p[i];
		p[i] = p[j]; p[j] = t;
	}
	for (int k = 0; k < d; k++) {
		char path[4096];
		snprintf(path, sizeof path, "%s%d.raw", pre, k + 1);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) die(path);
		if (ftruncate(fd, s.st_size)) die("truncate");
		for (long i = n * k / d; i < n * (k + 1) / d; i++) {
			off_t o = (off_t)p[i] * ch;
			if (pread(bfd, b, ch, o) != ch || pwrite(fd, b, ch, o) != ch)
				die("copy");
		}
		close(fd);
	}
	return 0;
}
int main(int c, char **v)
{
	if (c == 5 && !strcmp(v[1], "base")) {
		st = strtoull(v[4], 0, 0);
		return base(v[2], atol(v[3]));
	}
	if (c == 7 && !strcmp(v[1], "layers")) {
		st = strtoull(v[6], 0, 0);
		return layers(v[2], v[3], atoi(v[4]), atol(v[5]));
	}
	fprintf(stderr, "usage: imgtool base|layers ...\n");
	return 2;
}
EOF
	gcc -O2 -o "$BIN/imgtool" "$BIN/imgtool.c" || die "imgtool did not build"
}

# libfuse's passthrough_ll example: the FUSE ceiling on this machine.  Patched
# (as ../shared/bench does) so the client's O_DIRECT is not passed on to the
# backing file: we measure FUSE, not the virtual disk.
PT=
build_passthrough() {
	local ex=/usr/share/doc/libfuse3-dev/examples
	if [ -x "$BIN/passthrough_ll" ]; then PT=$BIN/passthrough_ll; return; fi
	[ -f "$ex/passthrough_ll.c" ] || { note "libfuse examples not installed: no passthrough_ll row"; return; }
	mkdir -p "$BIN/ptsrc"
	cp "$ex/passthrough_ll.c" "$ex/passthrough_helpers.h" "$BIN/ptsrc/"
	sed -i 's/open(buf, fi->flags & ~O_NOFOLLOW)/open(buf, fi->flags \& ~(O_NOFOLLOW | O_DIRECT))/' \
		"$BIN/ptsrc/passthrough_ll.c"
	grep -q 'O_NOFOLLOW | O_DIRECT' "$BIN/ptsrc/passthrough_ll.c" ||
		note "passthrough_ll O_DIRECT patch did not apply"
	if gcc -O2 -o "$BIN/passthrough_ll" "$BIN/ptsrc/passthrough_ll.c" \
		$(pkg-config --cflags --libs fuse3) 2>>"$LOG/build.err"; then
		PT=$BIN/passthrough_ll
	else
		note "passthrough_ll did not build ($LOG/build.err)"
	fi
}

# ------------------------------------------------------------ images
STAMP="v3 size=$SIZE_MIB seed=$SEED chunk=$CHUNK depths=1,5,10 mkchain=$(sha256sum "$HERE/mkchain-vhd.py" | cut -c1-12)"
BASE_SHA=
build_images() {
	local d k kk f t0 prev top sha
	if [ "$REBUILD" != 1 ] && [ "$(cat "$IMG/.stamp" 2>/dev/null)" = "$STAMP" ]; then
		BASE_SHA=$(cat "$IMG/base.sha256")
		log "images present in $IMG"
		return
	fi
	t0=$(date +%s)
	log "building images in $IMG (once)"
	rm -rf "${IMG:?}"/* "$IMG/.stamp" "${WORK:?}"/*
	mkdir -p "$DIR"
	nice "$BIN/imgtool" base "$IMG/base.raw" $SIZE_MIB $SEED || die "base.raw"
	BASE_SHA=$(sha256sum "$IMG/base.raw" | cut -d' ' -f1)
	echo "$BASE_SHA" > "$IMG/base.sha256"
	ln "$IMG/base.raw" "$DIR/raw.raw" 2>/dev/null || cp "$IMG/base.raw" "$DIR/raw.raw"
	nice qemu-img convert -f raw -O qcow2 "$IMG/base.raw" "$DIR/qcow2-d1.qcow2" || die qcow2-d1
	nice qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
		"$IMG/base.raw" "$DIR/vhd-d1.vhd" || die vhd-d1
	for d in 5 10; do
		nice "$BIN/imgtool" layers "$IMG/base.raw" "$WORK/d${d}-" $d $CHUNK $((SEED + d)) || die layers
		prev=
		for k in $(seq 1 $d); do
			kk=$(printf %02d "$k")
			f=$WORK/d$d-$k.raw
			nice qemu-img convert -f raw -O qcow2 "$f" "$DIR/qcow2-d$d-layer$kk.qcow2" || die qcow2
			[ -n "$prev" ] && qemu-img rebase -u -F qcow2 -b "qcow2-d$d-layer$prev.qcow2" \
				"$DIR/qcow2-d$d-layer$kk.qcow2"
			if [ -z "$prev" ]; then
				nice qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
					"$f" "$DIR/vhd-d$d-layer$kk.vhd" || die vhd
				fallocate -d "$DIR/vhd-d$d-layer$kk.vhd"	# its zeros: holes
			else
				nice python3 "$HERE/mkchain-vhd.py" "$DIR/vhd-d$d-layer$kk.vhd" \
					--parent "$DIR/vhd-d$d-layer$prev.vhd" --layer "$f" \
					--fill hole || die mkchain-vhd
			fi
			rm -f "$f"
			prev=$kk
		done
	done
	# independent checks: qemu reads the qcow2 chains and the dynamic VHD;
	# 7-Zip follows VHD differencing chains (qemu cannot)
	for f in qcow2-d1.qcow2 qcow2-d5-layer05.qcow2 qcow2-d10-layer10.qcow2; do
		qemu-img compare -q -f qcow2 -F raw "$DIR/$f" "$IMG/base.raw" || die "$f != base.raw (qemu-img)"
	done
	qemu-img compare -q -f vpc -F raw "$DIR/vhd-d1.vhd" "$IMG/base.raw" || die "vhd-d1 != base.raw"
	for top in vhd-d5-layer05.vhd vhd-d10-layer10.vhd; do
		sha=$(7zz e -so "$DIR/$top" 2>>"$LOG/7zz.err" | sha256sum | cut -d' ' -f1)
		[ "$sha" = "$BASE_SHA" ] || die "$top != base.raw (7zz)"
	done
	echo "$STAMP" > "$IMG/.stamp"
	note "images built and checked (qemu-img compare, 7zz) in $(( $(date +%s) - t0 )) s; $(du -sh "$IMG" | cut -f1) on disk"
}

# ------------------------------------------------------------ mounting
OURS_MNT=$MNTR/layerfs
OURS_PID=
mount_ours() {
	mkdir -p "$OURS_MNT"
	"$LAYERFS" -f "$DIR" "$OURS_MNT" >>"$LOG/layerfs.log" 2>&1 &
	OURS_PID=$!
	MOUNTED[$OURS_MNT]=$OURS_PID
	wait_mount "$OURS_MNT" "$OURS_PID" || { note "layerfs did not mount (see $LOG/layerfs.log)"; return 1; }
}
# mount_target id -> FILEOF[id], PIDOF[id]
mount_target() {
	local id=$1 arg=${ARG[$1]} mnt=$MNTR/$1 fmt path i
	case ${KIND[$id]} in
	ours)
		[ -n "$OURS_PID" ] || mount_ours || return 1
		FILEOF[$id]=$OURS_MNT/$arg
		PIDOF[$id]=$OURS_PID
		for i in $(seq 1 50); do [ -e "${FILEOF[$id]}" ] && break; sleep 0.1; done
		[ -e "${FILEOF[$id]}" ] || { note "${LABEL[$id]}: $arg missing in the mount"; return 1; } ;;
	pt)
		[ -n "$PT" ] || return 1
		mkdir -p "$mnt"
		"$PT" -f -o source="$(dirname "$arg")" "$mnt" >>"$LOG/pt.log" 2>&1 &
		PIDOF[$id]=$!
		MOUNTED[$mnt]=$!
		wait_mount "$mnt" "$!" || return 1
		FILEOF[$id]=$mnt/$(basename "$arg") ;;
	qsd)
		fmt=${arg%%:*}
		path=${arg#*:}
		rm -rf "$mnt"
		touch "$mnt"
		qemu-storage-daemon \
			--blockdev "{\"driver\":\"$fmt\",\"node-name\":\"n0\",\"read-only\":true,\"file\":{\"driver\":\"file\",\"filename\":\"$path\",\"read-only\":true}}" \
			--export "type=fuse,id=e0,node-name=n0,mountpoint=$mnt,writable=off" \
			>>"$LOG/qsd.log" 2>&1 &
		PIDOF[$id]=$!
		MOUNTED[$mnt]=$!
		MKIND[$mnt]=qsd
		wait_mount "$mnt" "$!" || return 1
		FILEOF[$id]=$mnt ;;
	esac
}

# the three read jobs -> "seqMB/s qd1IOPS qd16IOPS cpu", where cpu is the
# daemon's CPU time (user + system, all threads) per GiB of the seq job: a
# figure that other users' load does not inflate the way it does wall time
cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat 2>/dev/null || echo 0; }
fio_read3() {
	local f=$1 pid=$2 c0 c1 seq rnd
	local common=(--output-format=terse --terse-version=3 --filename="$f" --direct=1
		--invalidate=0 --readonly --randrepeat=1 --norandommap
		--size=${SIZE_MIB}M --runtime="$RUNTIME" --time_based)
	c0=$(cpu_ticks "$pid")
	seq=$(fio "${common[@]}" --name=seq --rw=read --bs=1M --ioengine=psync --iodepth=1 \
		2>>"$LOG/fio.err" | awk -F';' '$1 == "3" { print $6, $7 }')
	c1=$(cpu_ticks "$pid")
	rnd=$(fio "${common[@]}" \
		--name=qd1 --rw=randread --bs=4k --ioengine=psync --iodepth=1 \
		--name=qd16 --stonewall --rw=randread --bs=4k --ioengine=libaio --iodepth=16 \
		2>>"$LOG/fio.err" | awk -F';' '$1 == "3" { printf "%s ", $8 }')
	echo "$seq $rnd $((c1 - c0))" | awk -v hz="$(getconf CLK_TCK)" '
		NF == 5 && $1 > 0 { printf "%s %s %s %s\n", $2 * 1024 / 1e6, $3, $4, ($5 / hz) / ($1 / 1048576); next }
		{ print "- - - -" }'
}

# ------------------------------------------------------------ targets
# id | label | kind | arg | ratio reference (qsd qcow2, same depth) | backing files
T=(
	"pt|passthrough_ll, raw file (FUSE ceiling)|pt|$IMG/base.raw||$IMG/base.raw"
	"qr|qsd raw file|qsd|raw:$IMG/base.raw||$IMG/base.raw"
	"lr|layerfs raw file|ours|raw/disk|qr|$DIR/raw.raw"
	"q1|qsd qcow2 depth 1|qsd|qcow2:$DIR/qcow2-d1.qcow2|q1|$DIR/qcow2-d1.qcow2"
	"q5|qsd qcow2 depth 5|qsd|qcow2:$DIR/qcow2-d5-layer05.qcow2|q5|$DIR/qcow2-d5-*"
	"q10|qsd qcow2 depth 10|qsd|qcow2:$DIR/qcow2-d10-layer10.qcow2|q10|$DIR/qcow2-d10-*"
	"qv1|qsd VHD dynamic depth 1|qsd|vpc:$DIR/vhd-d1.vhd|q1|$DIR/vhd-d1.vhd"
	"lq1|layerfs qcow2 depth 1|ours|qcow2-d1/disk|q1|$DIR/qcow2-d1.qcow2"
	"lq5|layerfs qcow2 depth 5|ours|qcow2-d5-layer05/disk|q5|$DIR/qcow2-d5-*"
	"lq10|layerfs qcow2 depth 10|ours|qcow2-d10-layer10/disk|q10|$DIR/qcow2-d10-*"
	"lv1|layerfs VHD dynamic depth 1|ours|vhd-d1/disk|q1|$DIR/vhd-d1.vhd"
	"lv5|layerfs VHD diff chain depth 5|ours|vhd-d5-layer05/disk|q5|$DIR/vhd-d5-*"
	"lv10|layerfs VHD diff chain depth 10|ours|vhd-d10-layer10/disk|q10|$DIR/vhd-d10-*"
)
declare -A BACK=()
for t in "${T[@]}"; do
	IFS='|' read -r id label kind arg ref back <<<"$t"
	[ -z "$ONLY" ] || [[ "$label" =~ $ONLY ]] || continue
	ROWS+=("$id")
	LABEL[$id]=$label KIND[$id]=$kind ARG[$id]=$arg REF[$id]=$ref BACK[$id]=$back
done
[ "$READS" != 1 ] || [ ${#ROWS[@]} -gt 0 ] || die "ONLY='$ONLY' selects no row"

# ------------------------------------------------------------ writes
# Each job writes into its own fresh, empty top layer over the same 1 GiB
# base, created just before the job and deleted after it:
#   qsd:     qemu-img create -f qcow2 -b qcow2-d1.qcow2 overlay, exported by a
#            qemu-storage-daemon of its own (driver=qcow2, writable=on, the
#            default cache mode: cache.direct=off, cache.no-flush=off)
#   layerfs: -o newlayer=BASE:fresh-JOB.EXT in a scratch IMAGEDIR holding hard
#            links of the bases, over qcow2-d1, vhd-d1 and vhdx-d1
# fio --direct=1 --end_fsync=1 on the exposed file, so the final flush to the
# disk is inside every figure: seq write 1M psync QD1 (SEQ_W_MIB MiB from 0),
# randwrite 4k psync QD1 and libaio QD16 (RUNTIME_W s over the whole disk).
WDIR=$ROOT/wimg
WMNT=$MNTR/w
declare -A WS=() WR=() WLABEL=() WKIND=() WBASE=() WEXT=()
WROWS=()
WJOBS=(seq qd1 qd16)
for t in "wq|qsd, fresh qcow2 overlay on qcow2-d1|qsd|qcow2-d1.qcow2|qcow2" \
	"wlq|layerfs, fresh qcow2 layer on qcow2-d1|ours|qcow2-d1.qcow2|qcow2" \
	"wlv|layerfs, fresh VHD layer on vhd-d1|ours|vhd-d1.vhd|vhd" \
	"wlx|layerfs, fresh VHDX layer on vhdx-d1|ours|vhdx-d1.vhdx|vhdx"; do
	IFS='|' read -r id label kind base ext <<<"$t"
	WROWS+=("$id")
	WLABEL[$id]=$label WKIND[$id]=$kind WBASE[$id]=$base WEXT[$id]=$ext
done

prepare_writes() {
	mkdir -p "$WDIR" "$WMNT"
	rm -f "$WDIR"/fresh-* "$WDIR"/*.tmp
	if [ ! -s "$IMG/vhdx-d1.vhdx" ] || [ "$IMG/vhdx-d1.vhdx" -ot "$IMG/.stamp" ]; then
		nice qemu-img convert -f raw -O vhdx "$IMG/base.raw" "$IMG/vhdx-d1.vhdx.tmp" &&
			qemu-img compare -q -f vhdx -F raw "$IMG/vhdx-d1.vhdx.tmp" "$IMG/base.raw" &&
			mv "$IMG/vhdx-d1.vhdx.tmp" "$IMG/vhdx-d1.vhdx" || die "vhdx-d1"
	fi
	# hard links: the new layers name their parent by file name, and the
	# scratch directory keeps the read benchmark's directory untouched
	ln -f "$DIR/qcow2-d1.qcow2" "$DIR/vhd-d1.vhd" "$IMG/vhdx-d1.vhdx" "$WDIR/" ||
		die "cannot hard-link the bases into $WDIR"
}
base_shas() { (cd "$WDIR" && sha256sum qcow2-d1.qcow2 vhd-d1.vhd vhdx-d1.vhdx); }

# wmount id job -> WFILE, WPID (the layer file is $WDIR/fresh-JOB.EXT)
WFILE= WPID=
wmount() {
	local id=$1 job=$2 ext=${WEXT[$1]} f=fresh-$2 i
	rm -f "$WDIR/$f.$ext"
	if [ "${WKIND[$id]}" = qsd ]; then
		qemu-img create -q -f qcow2 -b "${WBASE[$id]}" -F qcow2 "$WDIR/$f.$ext" ||
			{ note "qemu-img create failed"; return 1; }
		rm -rf "$WMNT/qsd"; touch "$WMNT/qsd"
		qemu-storage-daemon \
			--blockdev "{\"driver\":\"qcow2\",\"node-name\":\"n0\",\"file\":{\"driver\":\"file\",\"filename\":\"$WDIR/$f.$ext\"}}" \
			--export "type=fuse,id=e0,node-name=n0,mountpoint=$WMNT/qsd,writable=on" \
			>>"$LOG/qsd-w.log" 2>&1 &
		WPID=$!
		MOUNTED[$WMNT/qsd]=$WPID
		MKIND[$WMNT/qsd]=qsd
		wait_mount "$WMNT/qsd" "$WPID" || return 1
		WFILE=$WMNT/qsd
	else
		mkdir -p "$WMNT/ours"
		"$LAYERFS" -f -o "newlayer=${WBASE[$id]%.*}:$f.$ext" "$WDIR" "$WMNT/ours" \
			>>"$LOG/layerfs-w.log" 2>&1 &
		WPID=$!
		MOUNTED[$WMNT/ours]=$WPID
		wait_mount "$WMNT/ours" "$WPID" || return 1
		WFILE=$WMNT/ours/$f/disk
		for i in $(seq 1 50); do [ -e "$WFILE" ] && break; sleep 0.1; done
		[ -e "$WFILE" ] || return 1
	fi
}
wumount() {
	local m=$WMNT/ours
	[ "${WKIND[$1]}" = qsd ] && m=$WMNT/qsd
	umount_one "$m"
	[ "$KEEP_W" = 1 ] || rm -f "$WDIR/fresh-$2.${WEXT[$1]}"
}

# fio_write file pid job -> "value cpu": MB/s (seq) or IOPS, and for seq the
# daemon's CPU seconds (user + system) per GiB written
fio_write() {
	local f=$1 pid=$2 job=$3 c0 c1 a out
	local common=(--output-format=terse --terse-version=3 --filename="$f" --direct=1
		--invalidate=0 --end_fsync=1 --randrepeat=1 --norandommap --size=${SIZE_MIB}M)
	case $job in
	seq)  a=(--rw=write --bs=1M --ioengine=psync --iodepth=1 --io_size=${SEQ_W_MIB}M) ;;
	qd1)  a=(--rw=randwrite --bs=4k --ioengine=psync --iodepth=1 --runtime="$RUNTIME_W" --time_based) ;;
	qd16) a=(--rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --runtime="$RUNTIME_W" --time_based) ;;
	esac
	c0=$(cpu_ticks "$pid")
	out=$(fio "${common[@]}" --name="$job" "${a[@]}" 2>>"$LOG/fio-w.err")
	c1=$(cpu_ticks "$pid")
	awk -F';' -v job="$job" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
		$1 == "3" && $48 > 0 {
			if (job == "seq") printf "%s %s\n", $48 * 1024 / 1e6, (c / hz) / ($47 / 1048576)
			else printf "%s -\n", $49
			ok = 1 }
		END { if (!ok) print "- -" }' <<<"$out"
}

# once per layerfs format, before measuring: fio writes 32 MiB with crc32c
# headers and reads them back through the mount; for qcow2, qemu-img then
# compares the whole new chain (qemu reading it) with layerfs's read-only view
verify_writes() {
	local id ext f vok
	for id in "${WROWS[@]}"; do
		[ "${WKIND[$id]}" = ours ] || continue
		ext=${WEXT[$id]}
		wmount "$id" verify || { WDATA[$id]="mount failed"; continue; }
		vok=ok
		fio --name=verify --filename="$WFILE" --direct=1 --rw=write --bs=64k \
			--ioengine=psync --size=32M --offset=64M --verify=crc32c --do_verify=1 \
			--end_fsync=1 >>"$LOG/fio-verify.log" 2>&1 || vok="fio verify FAILED"
		umount_one "$WMNT/ours"
		if [ "$vok" = ok ] && [ "$ext" = qcow2 ]; then
			"$LAYERFS" -f "$WDIR" "$WMNT/ours" >>"$LOG/layerfs-w.log" 2>&1 &
			MOUNTED[$WMNT/ours]=$!
			if wait_mount "$WMNT/ours" "$!" && qemu-img compare -q -f qcow2 -F raw \
				"$WDIR/fresh-verify.qcow2" "$WMNT/ours/fresh-verify/disk"; then
				vok="ok, qemu-img compare ok"
			else
				vok="qemu-img compare FAILED"
			fi
			umount_one "$WMNT/ours"
		fi
		rm -f "$WDIR/fresh-verify.$ext"
		WDATA[$id]=$vok
		[ "${vok%%,*}" = ok ] || note "${WLABEL[$id]}: write check: $vok"
	done
}

declare -A WDATA=()
write_phase() {
	local rep j id job n=${#WROWS[@]} v c sha0 sha1
	prepare_writes
	sha0=$(base_shas)
	verify_writes
	WTM0=$(date +%s)
	WPSI0=$(psi_cpu)
	for ((rep = 0; rep < REPS; rep++)); do
		log "write rep $((rep + 1))/$REPS over $n targets (fresh layer per job)"
		for ((j = 0; j < n; j++)); do
			id=${WROWS[$(( (j + rep) % n ))]}
			for job in "${WJOBS[@]}"; do
				if ! wmount "$id" "$job"; then
					note "${WLABEL[$id]}: mount failed (logs in $LOG)"
					wumount "$id" "$job"
					continue
				fi
				read -r v c <<<"$(fio_write "$WFILE" "$WPID" "$job")"
				WS[$id,$job]="${WS[$id,$job]:-} $v"
				[ "$job" = seq ] && WS[$id,cpu]="${WS[$id,cpu]:-} $c"
				wumount "$id" "$job"
			done
		done
	done
	WTM1=$(date +%s)
	WPSI1=$(psi_cpu)
	sha1=$(base_shas)
	if [ "$sha0" = "$sha1" ]; then
		WBASE_OK="unchanged (sha256 of qcow2-d1, vhd-d1, vhdx-d1 before and after the write phase)"
	else
		WBASE_OK="CHANGED: before $(echo $sha0) after $(echo $sha1)"
		note "a base image changed during the write phase"
	fi
	for id in "${WROWS[@]}"; do
		for k in "${WJOBS[@]}" cpu; do WR[$id,$k]=$(printf '%s\n' ${WS[$id,$k]:-} | median); done
	done
}
wg() { local v=${WR[$1,$2]:-}; echo "${v:--}"; }

write_report() {
	local id r1 r2 r3 k
	echo "## layerfs write benchmark, $(date '+%F %H:%M')"
	echo
	echo "host: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs," \
		"kernel $(uname -r); loadavg at the end $(cut -d' ' -f1-3 /proc/loadavg);" \
		"some task waited for a CPU $(awk -v a="$WPSI0" -v b="$WPSI1" -v w=$((WTM1 - WTM0 + 1)) \
			'BEGIN { printf "%.0f%%", (b - a) / 1e4 / w }') of the measuring time (PSI)  "
	echo "layerfs $git_rev ($LAYERFS), $(qemu-storage-daemon --version | head -1), $(fio --version)  "
	echo "method: every job writes into its own fresh, empty top layer over the same 1 GiB base" \
		"(base.raw's bytes), created before the job and deleted after it." \
		"qsd: \`qemu-img create -f qcow2 -b qcow2-d1.qcow2 -F qcow2\` overlay, exported by its own" \
		"qemu-storage-daemon (\`--blockdev driver=qcow2,file.driver=file\`, \`--export type=fuse,writable=on\`," \
		"qsd's default cache mode: host page cache, flushes honoured: cache.direct=off, cache.no-flush=off)." \
		"layerfs: \`-o newlayer=BASE:fresh-JOB.EXT\` in a scratch image directory holding hard links of" \
		"the bases (layerfs writes through, no cache of its own; fsync = fdatasync of the layer)." \
		"fio --direct=1 --end_fsync=1 on the exposed file (the final flush to disk is inside every figure):" \
		"seq write bs=1M psync QD1, ${SEQ_W_MIB} MiB from offset 0; randwrite 4k psync QD1 and libaio QD16," \
		"${RUNTIME_W}s each over the whole disk; median of $REPS round-robin reps" \
		"(measuring took $((WTM1 - WTM0)) s). Ratios: layerfs / qsd." \
		"Daemon CPU: user + system time of the daemon during the seq job, per GiB written.  "
	echo "base images: $WBASE_OK"
	echo
	echo "| target | data check | seq write 1M MB/s | 4k randwrite QD1 IOPS | 4k randwrite QD16 IOPS | seq vs qsd | QD1 vs qsd | QD16 vs qsd | daemon CPU s/GiB seq |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
	for id in "${WROWS[@]}"; do
		r1=-; r2=-; r3=-
		if [ "$id" != wq ]; then
			r1=$(ratio "$(wg $id seq)" "$(wg wq seq)")
			r2=$(ratio "$(wg $id qd1)" "$(wg wq qd1)")
			r3=$(ratio "$(wg $id qd16)" "$(wg wq qd16)")
		fi
		printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${WLABEL[$id]}" \
			"${WDATA[$id]:--}" "$(fmt0 "$(wg $id seq)")" "$(fmt0 "$(wg $id qd1)")" \
			"$(fmt0 "$(wg $id qd16)")" "$r1" "$r2" "$r3" "$(fmt2 "$(wg $id cpu)")"
	done
	echo
	echo "Requirement checks (medians; layerfs / qsd >= 1):"
	echo
	for id in wlq wlv wlx; do
		wcheck "${WLABEL[$id]%%,*}${WLABEL[$id]#*,}: seq write 1M" MB/s "$(wg $id seq)" "$(wg wq seq)"
		wcheck "${WLABEL[$id]%%,*}${WLABEL[$id]#*,}: 4k randwrite QD1" IOPS "$(wg $id qd1)" "$(wg wq qd1)"
		wcheck "${WLABEL[$id]%%,*}${WLABEL[$id]#*,}: 4k randwrite QD16" IOPS "$(wg $id qd16)" "$(wg wq qd16)"
	done
	if [ ${#NOTES[@]} -gt 0 ]; then
		echo
		echo "Notes:"
		echo
		for m in "${NOTES[@]}"; do echo "- $m"; done
	fi
	echo
	echo "<details><summary>all samples (per rep, in rep order)</summary>"
	echo
	echo "| target | seq write 1M MB/s | 4k QD1 IOPS | 4k QD16 IOPS | daemon CPU s/GiB seq |"
	echo "|---|---|---|---|---|"
	for id in "${WROWS[@]}"; do
		printf '| %s |%s |%s |%s |%s |\n' "${WLABEL[$id]}" \
			"$(printf ' %.0f' ${WS[$id,seq]:-})" "$(printf ' %.0f' ${WS[$id,qd1]:-})" \
			"$(printf ' %.0f' ${WS[$id,qd16]:-})" "$(printf ' %.2f' ${WS[$id,cpu]:-})"
	done
	echo
	echo "</details>"
}
wcheck() { # label unit value reference
	awk -v l="$1" -v u="$2" -v a="$3" -v b="$4" 'BEGIN {
		if (a == "-" || b == "-" || a == "" || b == "") { printf "- %s: not measured: FAIL\n", l; exit }
		printf "- %s: %.0f vs %.0f %s = %.2f (needs >= 1.00): %s\n", l, a, b, u, a / b,
			(a >= b) ? "PASS" : "FAIL" }'
}

# ------------------------------------------------------------ main
for m in $(awk -v r="$MNTR/" 'index($2, r) == 1 {print $2}' /proc/mounts); do
	note "stale mount $m from an earlier run: unmounting"
	fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"
done
build_imgtool
[ "$READS" = 1 ] && build_passthrough
build_images

psi_cpu() { awk -F'total=' '/^some/ {print $2}' /proc/pressure/cpu 2>/dev/null || echo 0; }
git_rev=$(git -C "$TOP" describe --always --dirty 2>/dev/null || echo unknown)

if [ "$READS" = 1 ]; then
	log "mounting ${#ROWS[@]} targets"
	OK=()
	for id in "${ROWS[@]}"; do
		if ! mount_target "$id"; then
			note "${LABEL[$id]}: mount failed (logs in $LOG)"
			DATA[$id]="mount failed"
			continue
		fi
		if [ "$VERIFY" = 1 ]; then
			# O_DIRECT: checks the path fio uses, leaves no page cache of the FUSE file
			sha=$(dd if="${FILEOF[$id]}" bs=4M iflag=direct status=none 2>>"$LOG/verify.err" |
				sha256sum | cut -d' ' -f1)
			if [ "$sha" != "$BASE_SHA" ]; then
				note "${LABEL[$id]}: sha256 of the exposed file differs from base.raw: not measured"
				DATA[$id]="BAD"
				continue
			fi
			DATA[$id]="ok"
		else
			DATA[$id]="not checked"
		fi
		OK+=("$id")
	done
	[ "$VERIFY" = 1 ] || cat "$IMG/base.raw" "$DIR"/* >/dev/null	# page cache warm

	LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
	PSI0=$(psi_cpu)
	TM0=$(date +%s)
	n=${#OK[@]}
	for ((rep = 0; rep < REPS; rep++)); do
		log "rep $((rep + 1))/$REPS over $n targets (fio ${RUNTIME}s x 3 jobs each)"
		for ((j = 0; j < n; j++)); do
			id=${OK[$(( (j + rep) % n ))]}	# rotate the order: load bursts hit all alike
			cat ${BACK[$id]} >/dev/null	# the image files stay in the page cache
			read -r v a b c <<<"$(fio_read3 "${FILEOF[$id]}" "${PIDOF[$id]}")"
			add "$id" seq "$v"
			add "$id" qd1 "$a"
			add "$id" qd16 "$b"
			add "$id" cpu "$c"
		done
	done
	TM1=$(date +%s)
	PSI1=$(psi_cpu)
	for id in "${OK[@]}"; do
		for k in seq qd1 qd16 cpu; do R[$id,$k]=$(printf '%s\n' ${S[$id,$k]:-} | median); done
		R[$id,rss]=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' /proc/"${PIDOF[$id]}"/status 2>/dev/null)
		R[$id,thr]=$(awk '/^Threads/ {print $2}' /proc/"${PIDOF[$id]}"/status 2>/dev/null)
	done
	cleanup

	# ------------------------------------------------------------ report
	check() { # label value reference ge|gt factor -> PASS/FAIL line
		awk -v l="$1" -v a="$2" -v b="$3" -v op="$4" -v f="$5" 'BEGIN {
			if (a == "-" || b == "-" || a == "" || b == "") { printf "- %s: not measured\n", l; exit }
			ok = (op == "gt") ? (a > f * b) : (a >= f * b)
			printf "- %s: %.0f vs %.0f MB/s = %.2f (needs %s %.2f): %s\n", l, a, b, a / b,
				(op == "gt") ? ">" : ">=", f, ok ? "PASS" : "FAIL" }'
	}
	{
		echo "## layerfs read benchmark, $(date '+%F %H:%M')"
		echo
		echo "host: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs," \
			"$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r);" \
			"loadavg start $LOAD0, end $(cut -d' ' -f1-3 /proc/loadavg);" \
			"some task waited for a CPU $(awk -v a="$PSI0" -v b="$PSI1" -v w=$((TM1 - TM0 + 1)) \
				'BEGIN { printf "%.0f%%", (b - a) / 1e4 / w }') of the measuring time (PSI)  "
		echo "layerfs $git_rev ($LAYERFS), $(qemu-storage-daemon --version | head -1), $(fio --version)  "
		echo "method: 1 GiB images, every chain's flat content sha256-checked through its mount;" \
			"fio --direct=1 on the exposed file: seq read bs=1M psync QD1, randread 4k psync QD1," \
			"randread 4k libaio QD16; ${RUNTIME}s per job, median of $REPS round-robin reps" \
			"(measuring took $((TM1 - TM0)) s); the target's image files are read into the page cache before each rep." \
			"Ratios: layerfs / qsd qcow2 of the same depth (raw row: / qsd raw)." \
			"Daemon CPU: user + system time of the daemon (all threads) during the seq job, per GiB read;" \
			"other users' load inflates wall-clock figures much more than this one."
		echo
		echo "| target | data | seq 1M MB/s | 4k QD1 IOPS | 4k QD16 IOPS | seq vs qsd | QD1 vs qsd | QD16 vs qsd | daemon CPU s/GiB seq | threads | RSS MiB |"
		echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		for id in "${ROWS[@]}"; do
			ref=${REF[$id]}
			[ "$ref" = "$id" ] && ref=
			r1=-; r2=-; r3=-
			if [ -n "$ref" ]; then
				r1=$(ratio "$(g $id seq)" "$(g $ref seq)")
				r2=$(ratio "$(g $id qd1)" "$(g $ref qd1)")
				r3=$(ratio "$(g $id qd16)" "$(g $ref qd16)")
			fi
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$id]}" \
				"${DATA[$id]:--}" "$(fmt0 "$(g $id seq)")" "$(fmt0 "$(g $id qd1)")" \
				"$(fmt0 "$(g $id qd16)")" "$r1" "$r2" "$r3" "$(fmt2 "$(g $id cpu)")" \
				"$(g $id thr)" "$(g $id rss)"
		done
		echo
		echo "Depth cost (same bytes; depth N = N layers holding 1/N of the clusters each):"
		echo
		echo "| chain | seq d5/d1 | seq d10/d1 | QD1 d10/d1 | QD16 d10/d1 |"
		echo "|---|---:|---:|---:|---:|"
		for p in "layerfs VHD|lv" "layerfs qcow2|lq" "qsd qcow2|q"; do
			IFS='|' read -r name pre <<<"$p"
			printf '| %s | %s | %s | %s | %s |\n' "$name" \
				"$(ratio "$(g ${pre}5 seq)" "$(g ${pre}1 seq)")" \
				"$(ratio "$(g ${pre}10 seq)" "$(g ${pre}1 seq)")" \
				"$(ratio "$(g ${pre}10 qd1)" "$(g ${pre}1 qd1)")" \
				"$(ratio "$(g ${pre}10 qd16)" "$(g ${pre}1 qd16)")"
		done
		echo
		echo "Done-when checks (fio seq 1M medians):"
		echo
		check "(a) layerfs VHD depth 10 vs depth 1" "$(g lv10 seq)" "$(g lv1 seq)" ge 0.85
		check "(a) layerfs VHD depth 10 vs qsd qcow2 depth 10" "$(g lv10 seq)" "$(g q10 seq)" gt 1
		check "(b) layerfs qcow2 depth 10 vs qsd qcow2 depth 10" "$(g lq10 seq)" "$(g q10 seq)" gt 1
		if [ ${#NOTES[@]} -gt 0 ]; then
			echo
			echo "Notes:"
			echo
			for m in "${NOTES[@]}"; do echo "- $m"; done
		fi
		echo
		echo "<details><summary>all samples (per rep, in rep order)</summary>"
		echo
		echo "| target | seq 1M MB/s | 4k QD1 IOPS | 4k QD16 IOPS | daemon CPU s/GiB seq |"
		echo "|---|---|---|---|---|"
		for id in "${OK[@]}"; do
			printf '| %s |%s |%s |%s |%s |\n' "${LABEL[$id]}" \
				"$(printf ' %.0f' ${S[$id,seq]:-})" "$(printf ' %.0f' ${S[$id,qd1]:-})" \
				"$(printf ' %.0f' ${S[$id,qd16]:-})" "$(printf ' %.2f' ${S[$id,cpu]:-})"
		done
		echo
		echo "</details>"
	} > "$LOG/report.md"
	mkdir -p "$(dirname "$OUT")"
	cp "$LOG/report.md" "$OUT"
	cat "$OUT"
	log "saved $OUT (logs: $LOG); total $(( $(date +%s) - T_START )) s"
fi

if [ "$WRITES" = 1 ]; then
	log "write phase: ${#WROWS[@]} targets x ${#WJOBS[@]} jobs x $REPS reps"
	write_phase
	cleanup
	write_report > "$LOG/report-writes.md"
	mkdir -p "$(dirname "$WOUT")"
	cp "$LOG/report-writes.md" "$WOUT"
	cat "$WOUT"
	log "saved $WOUT (logs: $LOG); total $(( $(date +%s) - T_START )) s"
fi
