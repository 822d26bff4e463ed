#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# qemu uses the exposed disk of a writable chain as format=raw, for each
# family of write-lib.sh (VHD, VHDX, QCOW2, raw + QCOW2 overlay):
#   - a plain O_DIRECT open(2), aligned pwrite and pread;
#   - qemu-io -f raw with -t none (O_DIRECT) -i io_uring (where qemu and
#     the kernel support it; otherwise the test says so and uses
#     -i native), -t none -i native, and -t writeback -i threads: pattern
#     writes (aligned, unaligned, aio_write batches, write -z), each read
#     back with read -P in the same session and again in a new session
#     with another cache mode;
#   - every write is mirrored into a model file: the disk equals the model
#     (cmp and qemu-img compare -f raw), and after the unmount so does the
#     chain flattened from the files by qemu-img or 7zz; remounted
#     read-only, qemu-img compare -f raw finds the disk equal to that
#     flat image (and, for QCOW2, to the top file as qemu reads it), and
#     qemu-io cannot open it for writing;
#   - the base images never change.
FAMILIES=${LAYERFS_CLIENT_FAMILIES:-"vhd vhdx qcow2raw qcow2"}

. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
. "$(dirname "$0")/client-lib.sh"
require_fuse
require qemu-io qemu-img 7zz python3 cmp

MIB=64

# qio WHAT OUT ARGS...: qemu-io, which must exit 0 and report no failed
# pattern check or error
qio() {
	local what=$1 out=$2
	shift 2
	timeout 60 qemu-io "$@" >"$out" 2>&1 ||
		fail "$what: qemu-io $*: $(grep -iE 'fail|error|denied|invalid' "$out" | head -3 | tr '\n' '|')"
	! grep -qiE 'verification failed|error|failed' "$out" ||
		fail "$what: $(grep -iE 'verification failed|error|failed' "$out" | head -3 | tr '\n' '|')"
}

# mirror MODEL OP...: apply "PAT OFF LEN" (PAT a byte, or z for zeroes)
mirror() {
	python3 - "$@" <<'EOF'
import sys
m = open(sys.argv[1], "r+b")
for op in sys.argv[2:]:
    pat, off, ln = op.split()
    b = 0 if pat == "z" else int(pat, 16)
    m.seek(int(off))
    m.write(bytes([b]) * int(ln))
EOF
}

# qemu-io commands for OPS: writes, then reads with the same pattern;
# aio: the writes as one aio_write batch, then aio_flush
qio_cmds() {
	local kind=$1 op pat off len
	shift
	for op in "$@"; do
		read -r pat off len <<<"$op"
		if [ "$pat" = z ]; then
			printf '%s\n' -c "write -z $off $len"
		elif [ "$kind" = aio ]; then
			printf '%s\n' -c "aio_write -P $pat $off $len"
		else
			printf '%s\n' -c "write -P $pat $off $len"
		fi
	done
	[ "$kind" != aio ] || printf '%s\n' -c aio_flush
	printf '%s\n' -c flush
	qio_reads "$@"
}

# qemu-io commands that read OPS back
qio_reads() {
	local op pat off len
	for op in "$@"; do
		read -r pat off len <<<"$op"
		[ "$pat" = z ] && pat=0
		printf '%s\n' -c "read -P $pat $off $len"
	done
}

# ops_for MODE: the writes of a mode, "PAT OFF LEN" (disjoint ranges per
# mode; sizes and offsets aligned and not)
ops_for() {
	local MiB=1048576
	case $1 in
	uring)	printf '%s\n' "0xab $((8 * MiB)) $MiB" "0x11 $((10 * MiB + 512)) 7680" \
			"0x5c $((12 * MiB + 100)) 3000" "0xe1 $((14 * MiB)) $((2 * MiB + 4096))" \
			"z $((9 * MiB)) $((256 * 1024))" ;;
	native)	printf '%s\n' "0xcd $((20 * MiB)) $((512 * 1024))" "0x22 $((21 * MiB + 4096)) 4096" \
			"0x7f $((23 * MiB + 333)) 65000" "z $((25 * MiB)) $MiB" ;;
	wb)	printf '%s\n' "0x3c $((40 * MiB)) $MiB" "0x44 $((42 * MiB + 1)) 1" \
			"0x99 $((43 * MiB + 511)) 131074" "z $((45 * MiB + 512)) 1536" \
			"0x0f $((MIB * MiB - 4096)) 4096" ;;
	esac
}

# aio_for DISK: io_uring, unless qemu-io says it cannot use io_uring on
# DISK (qemu built without it, or the kernel refuses io_uring_setup):
# then native, and the test says so.  Any other failure is left to the
# real run to report.
aio_uring=
aio_for() {
	[ -z "$aio_uring" ] || return 0
	aio_uring=io_uring
	if ! qemu-io -f raw -r -t none -i io_uring -c 'read 0 4k' "$1" \
		>"$T/uring.out" 2>&1 && grep -qi 'uring' "$T/uring.out"; then
		echo "$TEST_NAME: NOTE: qemu-io -i io_uring is not supported here" \
			"($(head -1 "$T/uring.out")); testing -t none -i native in its place"
		aio_uring=native
	fi
}

for fam in $FAMILIES; do
	d=$T/$fam m=$T/mnt-$fam
	make_family "$fam" "$d" "$MIB"
	snapshot_files "${FAM_BASES[@]}"
	model=$T/$fam.model
	cp "$d.base-raw" "$model"
	layerfs_mount "$m" "$d" "${FAM_FIRST[@]}"
	disk=$m/$FAM_CHAIN/disk
	[ -f "$disk" ] || fail "$fam: no chain $FAM_CHAIN in the mount"
	[ "$(disk_mode "$disk")" = 644 ] || fail "$fam: $FAM_CHAIN/disk is not writable"

	# O_DIRECT open, aligned pwrite and pread (an mmap buffer is page
	# aligned)
	python3 - "$disk" "$model" <<'EOF' || fail "$fam: O_DIRECT open/write/read"
import mmap, os, random, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 192 << 10)
data = random.Random(7).randbytes(len(buf))
buf[:] = data
off = (3 << 20) + 4096
if os.pwritev(fd, [buf], off) != len(buf):
    sys.exit("short O_DIRECT write")
os.fsync(fd)
back = mmap.mmap(-1, len(buf))
if os.preadv(fd, [back], off) != len(buf) or back[:] != data:
    sys.exit("O_DIRECT read does not return the O_DIRECT write")
os.close(fd)
with open(sys.argv[2], "r+b") as m:
    m.seek(off)
    m.write(data)
EOF
	ok "$fam: open(O_DIRECT), 192 KiB pwrite and pread at 3 MiB + 4 KiB"

	aio_for "$disk"
	# mode -> qemu-io options; its writes come from ops_for
	MiB=1048576
	declare -A opts=(
		[uring]="-t none -i $aio_uring"
		[native]="-t none -i native"
		[wb]="-t writeback -i threads"
	)
	declare -A kind=([uring]=aio [native]=aio [wb]=sync)
	declare -A again=([uring]="-t writeback" [native]="-t writeback"
			  [wb]="-t none -i native")
	for mode in uring native wb; do
		mapfile -t ops < <(ops_for "$mode")
		mapfile -t cmds < <(qio_cmds "${kind[$mode]}" "${ops[@]}")
		# shellcheck disable=SC2086  # word splitting of the options
		qio "$fam/$mode" "$T/qio.out" -f raw ${opts[$mode]} "${cmds[@]}" "$disk"
		mirror "$model" "${ops[@]}"
		# read back in a new session, through the other cache mode
		mapfile -t reads < <(qio_reads "${ops[@]}")
		# shellcheck disable=SC2086
		qio "$fam/$mode reread" "$T/qio.out" -f raw -r ${again[$mode]} \
			"${reads[@]}" "$disk"
		name=${opts[$mode]}
		ok "$fam: qemu-io -f raw $name: ${#ops[@]} pattern writes read back (same session, and -r ${again[$mode]})"
	done
	unset opts kind again

	expect_same "$disk" "$model" "$fam: the disk = model of every write"
	qemu-img compare -q -f raw -F raw "$disk" "$model" ||
		fail "$fam: qemu-img compare -f raw disk model: differs"
	ok "$fam: qemu-img compare -f raw disk = model"
	layerfs_umount "$m"

	# the oracle: the chain as qemu-img / 7zz flatten it from the files
	flat=$T/$fam.flat
	flat_of "$fam" "$FAM_TOP" "$flat"
	expect_same "$flat" "$model" "$fam: ${FAM_TOP##*/} flattened by qemu-img/7zz = model"
	check_top "$fam" "$FAM_TOP"

	layerfs_mount "$m" "$d"
	[ "$(disk_mode "$disk")" = 444 ] || fail "$fam: read-only mount gives mode $(disk_mode "$disk")"
	qemu-img compare -f raw -F raw "$disk" "$flat" >"$T/cmp.out" 2>&1 ||
		fail "$fam: qemu-img compare -f raw (read-only disk) flat: $(head -2 "$T/cmp.out" | tr '\n' '|')"
	ok "$fam: qemu-img compare -f raw: read-only disk = flat oracle"
	case $fam in
	qcow2*)
		qemu-img compare -q -f raw -F qcow2 "$disk" "$FAM_TOP" ||
			fail "$fam: qemu-img compare disk ${FAM_TOP##*/}: differs"
		ok "$fam: qemu-img compare: read-only disk = ${FAM_TOP##*/} as qemu reads the chain" ;;
	esac
	qio "$fam: read-only O_DIRECT" "$T/qio.out" -f raw -r -t none -i native \
		-c "read -P 0xab $((8 * MiB)) $MiB" -c "read -P 0x3c $((40 * MiB)) $MiB" "$disk"
	ok "$fam: qemu-io -r -t none reads the patterns from the read-only mount"
	if qemu-io -f raw -c "write -P 1 0 512" "$disk" >"$T/qio.out" 2>&1 &&
	   ! grep -qiE 'read-only|denied|failed|error' "$T/qio.out"; then
		fail "$fam: qemu-io wrote to the read-only mount"
	fi
	grep -qiE 'read-only' "$T/qio.out" ||
		fail "$fam: qemu-io write on the read-only mount: $(head -2 "$T/qio.out" | tr '\n' '|')"
	ok "$fam: qemu-io cannot open the read-only disk for writing ($(head -1 "$T/qio.out"))"
	layerfs_umount "$m"
	check_files
	forget_files
	rm -rf "$d" "$d.base-raw" "$model" "$flat"
done
finish
