# SPDX-License-Identifier: LGPL-2.1-or-later
# write-lib.sh: sourced (after lib.sh) by the t-write-*.sh tests.
#
# One writable chain per "family", each in its own image directory, made
# with independent tools:
#
#   vhd       win-L301.vhd (qemu-img, VHD dynamic) + -o newlayer
#             -> win-L302.vhd (VHD differencing, made by layerfs)
#   vhdx      srv-L1.vhdx (qemu-img) + -o newlayer -> srv-L2.vhdx
#   qcow2raw  base.raw + top.qcow2 (qemu-img create -b base.raw), -o rw
#   qcow2     vm-L1.qcow2 (qemu-img) + -o newlayer -> vm-L2.qcow2
#
#   make_family FAM DIR [SIZE_MIB]   make the base images in DIR; sets
#            FAM_CHAIN (the writable chain's name in the mount), FAM_TOP
#            (the top file, which may not exist yet), FAM_BASES (array of
#            the files that must never change) and FAM_FIRST (the options
#            of the first mount)
#   family_from_raw FAM DIR RAW   the same, but the base is made from RAW
#            (a raw file the caller prepared)
#   snapshot_files FILE... / check_files   the base files stay unchanged
#   forget_files             start a new list
#   flat_of FAM TOP OUT      the chain of TOP flattened by an independent
#                            tool (qemu-img convert for qcow2, 7zz else)
#   check_top FAM TOP [strict]  the format's own checker accepts TOP
#                            (strict: no qcow2 leaks either)
#   disk_mode FILE           the octal mode bits of FILE
#   scribble DISK MODEL SEED N   random writes and discards, mirrored

# shellcheck disable=SC2034  # the FAM_* variables are for the callers

# Base content: random MiBs, zero MiBs and single random sectors, so that
# copy-on-write from the parent and sub-block merges matter.
make_base_raw() {
	local out=$1 mib=$2
	python3 - "$out" "$mib" <<'EOF'
import random, sys
out, mib = sys.argv[1], int(sys.argv[2])
r = random.Random(20261123)
MiB = 1 << 20
b = bytearray(mib * MiB)
for i in range(mib):
    if i % 3 == 0:
        b[i * MiB:(i + 1) * MiB] = r.randbytes(MiB)
    elif i % 3 == 1:
        for _ in range(5):
            s = r.randrange(MiB // 512)
            b[i * MiB + s * 512:i * MiB + s * 512 + 512] = r.randbytes(512)
open(out, "wb").write(b)
EOF
}

make_family() {
	local fam=$1 dir=$2 mib=${3:-32}
	mkdir -p "$dir"
	make_base_raw "$dir.base-raw" "$mib"
	family_from_raw "$fam" "$dir" "$dir.base-raw"
}

# family_from_raw FAM DIR RAW: make_family's images, with RAW as the base
family_from_raw() {
	local fam=$1 dir=$2 raw=$3
	mkdir -p "$dir"
	case $fam in
	vhd)
		qemu-img convert -q -f raw -O vpc \
			-o subformat=dynamic,force_size=on \
			"$raw" "$dir/win-L301.vhd" ||
			fail "qemu-img convert -O vpc"
		FAM_CHAIN=win-L302 FAM_TOP=$dir/win-L302.vhd
		FAM_BASES=("$dir/win-L301.vhd")
		FAM_FIRST=(-o newlayer=win-L301) ;;
	vhdx)
		qemu-img convert -q -f raw -O vhdx "$raw" \
			"$dir/srv-L1.vhdx" || fail "qemu-img convert -O vhdx"
		FAM_CHAIN=srv-L2 FAM_TOP=$dir/srv-L2.vhdx
		FAM_BASES=("$dir/srv-L1.vhdx")
		FAM_FIRST=(-o newlayer=srv-L1) ;;
	qcow2raw)
		cp "$raw" "$dir/base.raw"
		(cd "$dir" && qemu-img create -q -f qcow2 -b base.raw -F raw \
			top.qcow2) || fail "qemu-img create top.qcow2"
		FAM_CHAIN=top FAM_TOP=$dir/top.qcow2
		FAM_BASES=("$dir/base.raw")
		FAM_FIRST=(-o rw) ;;
	qcow2)
		qemu-img convert -q -f raw -O qcow2 "$raw" \
			"$dir/vm-L1.qcow2" || fail "qemu-img convert -O qcow2"
		FAM_CHAIN=vm-L2 FAM_TOP=$dir/vm-L2.qcow2
		FAM_BASES=("$dir/vm-L1.qcow2")
		FAM_FIRST=(-o newlayer=vm-L1) ;;
	*)
		fail "unknown family $fam" ;;
	esac
}

# snapshot_files FILE...: remember the sha256 of each FILE (appends)
snapshot_files() {
	local f
	for f in "$@"; do
		printf '%s  %s\n' "$(sha_of "$f")" "$f"
	done >>"$T/files.before"
}

# check_files: every file snapshot_files saw still has its sha256
check_files() {
	local sum f n=0
	while read -r sum f; do
		[ "$(sha_of "$f")" = "$sum" ] ||
			fail "base image $f changed (sha256 was $sum)"
		n=$((n + 1))
	done <"$T/files.before"
	ok "$n base image files unchanged"
}

# forget_files: start a new snapshot_files list
forget_files() { rm -f "$T/files.before"; }

# flat_of FAM TOP OUT: TOP's chain read by an independent tool
flat_of() {
	local fam=$1 top=$2 out=$3
	case $fam in
	qcow2*)	qemu-img convert -f qcow2 -O raw "$top" "$out" 2>"$out.err" ||
			fail "qemu-img convert $top: $(tail -2 "$out.err")" ;;
	vhd)	(cd "$(dirname "$top")" &&
		 7zz e -so -tvhd "$(basename "$top")") >"$out" 2>"$out.err" ||
			fail "7zz e -tvhd $top: $(tail -2 "$out.err")" ;;
	vhdx)	(cd "$(dirname "$top")" &&
		 7zz e -so -tvhdx "$(basename "$top")") >"$out" 2>"$out.err" ||
			fail "7zz e -tvhdx $top: $(tail -2 "$out.err")" ;;
	esac
}

# check_top FAM TOP [strict]: the format's checker accepts TOP
check_top() {
	local fam=$1 top=$2 strict=${3:-} out=$T/check.out rc
	case $fam in
	qcow2*)
		qemu-img check -f qcow2 --output=json "$top" >"$out" 2>&1 &&
			rc=0 || rc=$?
		# 0 clean, 3 leaks only; 2 (corruption) and 1 (cannot check) fail
		case $rc in
		0) ;;
		3) [ -z "$strict" ] ||
			fail "qemu-img check $top: leaks: $(tr -d '\n' <"$out")" ;;
		*) fail "qemu-img check $top (exit $rc): $(tr -d '\n' <"$out" | cut -c1-600)" ;;
		esac
		ok "qemu-img check ${top##*/}: no errors${strict:+, no leaks}" ;;
	vhd)
		python3 "$TOOLS/vhdcheck.py" "$top" >"$out" 2>&1 ||
			fail "vhdcheck.py $top: $(head -5 "$out" | tr '\n' '|')"
		ok "vhdcheck.py ${top##*/}: clean" ;;
	vhdx)
		# the spec-written structural checker (qemu-img check only
		# reads plain VHDX files), and 7zz must read the chain
		python3 "$TOOLS/vhdxcheck.py" "$top" >"$out" 2>&1 ||
			fail "vhdxcheck.py $top: $(head -5 "$out" | tr '\n' '|')"
		flat_of vhdx "$top" "$T/check.flat"
		rm -f "$T/check.flat"
		ok "vhdxcheck.py ${top##*/}: clean; 7zz reads it" ;;
	esac
}

disk_mode() { stat -c %a "$1"; }

# scribble DISK MODEL SEED N: N deterministic random operations on DISK,
# mirrored into MODEL (a plain file of the same size): writes of 1 B to
# 300 KiB at byte offsets (80%), punch-hole and zero-range of random
# ranges (20%).  DISK is opened once; fsync at the end.
scribble() {
	python3 - "$@" <<'PY' || fail "scribble $1 (seed $3)"
import ctypes, os, random, sys
disk, model, seed, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
PUNCH, KEEP, ZERO = 0x02, 0x01, 0x10
fd = os.open(disk, os.O_RDWR)
mf = os.open(model, os.O_RDWR)
size = os.fstat(fd).st_size
if os.fstat(mf).st_size != size:
    sys.exit("model size %d, disk %d" % (os.fstat(mf).st_size, size))
r = random.Random(seed)
for _ in range(n):
    ln = r.choice([1, 511, 512, 4096, 65536, r.randrange(1, 300 << 10)])
    off = r.randrange(0, size - ln + 1)
    if r.random() < 0.8:
        b = r.randbytes(ln)
        if os.pwrite(fd, b, off) != ln:
            sys.exit("short write at %d" % off)
    else:
        mode = r.choice([PUNCH | KEEP, ZERO])
        if libc.fallocate(fd, mode, off, ln) != 0:
            e = ctypes.get_errno()
            sys.exit("fallocate(%#x, %d, %d): %s" % (mode, off, ln, os.strerror(e)))
        b = bytes(ln)
    os.pwrite(mf, b, off)
os.fsync(fd)
PY
}
