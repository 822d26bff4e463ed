#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Writes through a writable layerfs disk, for each family of
# write-lib.sh.  First 8 threads race interleaved 37-byte writes into the
# same fresh blocks and sectors (allocation and read-modify-write races),
# checked after a remount.  Then fio with verification: mixed sizes from
# 512 B to 1 MiB with unaligned ends through the page cache, then O_DIRECT
# libaio writes at depth 8 from two jobs on disjoint ranges; fio checks
# every block it wrote (crc32c headers).  The disk is then compared with
# the chain as an independent tool flattens it from the files, unmounted,
# mounted again read-only and read-write: the same sha256, and fio's
# verify-only pass passes again.  The base images never change.
#
# FAMILIES lists the families run; a family whose driver cannot write
# fails (its disk is not writable), it is not skipped.
FAMILIES=${LAYERFS_WRITE_FAMILIES:-"vhd vhdx qcow2raw qcow2"}

. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require fio qemu-img 7zz python3 cmp

MIB=32

# The job: [a] buffered, 0-16 MiB; [b] two O_DIRECT jobs, 16-24, 24-32 MiB
fio_job() {
	local disk=$1 seed=$2
	cat <<EOF
[global]
filename=$disk
verify=crc32c
verify_fatal=1
verify_state_save=0
do_verify=1
randseed=$seed
rw=randwrite
group_reporting=1
[a]
bsrange=512-1m
bs_unaligned
offset=0
size=16m
direct=0
ioengine=psync
[b]
stonewall
bsrange=512-1m
offset=16m
size=8m
offset_increment=8m
numjobs=2
direct=1
ioengine=libaio
iodepth=8
EOF
}

run_fio() {
	local what=$1 job=$2 log=$3
	shift 3
	timeout 120 fio --output="$log" "$@" "$job" ||
		fail "$what: fio failed: $(grep -iE 'err|verify|bad' "$log" | head -5 | tr '\n' '|')"
	grep -q 'err= 0' "$log" ||
		fail "$what: fio reports errors: $(grep 'err=' "$log" | head -3)"
}

# race.py write DISK / race.py check DISK BASE: thread t of 8 owns the
# 37-byte runs r of the first 256 KiB with r % 8 == t and writes them in
# random order, three times (bytes t + 1, t + 17, t + 33)
cat >"$T/race.py" <<'EOF'
import os, random, sys, threading
N, SPAN, RUN = 8, 256 << 10, 37
def expected(o):
    return (o // RUN) % N + 1 + 32
if sys.argv[1] == "write":
    err = []
    def run(t):
        try:
            fd = os.open(sys.argv[2], os.O_WRONLY)
            r = random.Random(t)
            runs = [o for o in range(0, SPAN, RUN) if (o // RUN) % N == t]
            for rep in range(3):
                r.shuffle(runs)
                for o in runs:
                    n = min(RUN, SPAN - o)
                    if os.pwrite(fd, bytes([t + 1 + 16 * rep]) * n, o) != n:
                        raise OSError("short write at %d" % o)
            os.fsync(fd)
            os.close(fd)
        except OSError as e:
            err.append(e)
    th = [threading.Thread(target=run, args=(t,)) for t in range(N)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    if err:
        sys.exit("write: %s" % err[0])
else:
    got = open(sys.argv[2], "rb").read()
    base = open(sys.argv[3], "rb").read()
    for o in range(SPAN):
        if got[o] != expected(o):
            sys.exit("byte %d reads %#x, expected %#x" % (o, got[o], expected(o)))
    if got[SPAN:] != base[SPAN:]:
        sys.exit("the disk past the raced range changed")
EOF

for fam in $FAMILIES; do
	d=$T/$fam m=$T/mnt-$fam
	make_family "$fam" "$d" "$MIB"
	snapshot_files "${FAM_BASES[@]}"
	layerfs_mount "$m" "$d" "${FAM_FIRST[@]}"
	disk=$m/$FAM_CHAIN/disk
	[ -f "$disk" ] || fail "$fam: no chain $FAM_CHAIN in the mount"
	[ "$(disk_mode "$disk")" = 644 ] ||
		fail "$fam: $FAM_CHAIN/disk has mode $(disk_mode "$disk"), not 644 (not writable)"
	# 8 threads write interleaved 37-byte runs into the same new blocks
	# and sectors (allocation and read-modify-write races), 3 times over
	python3 "$T/race.py" write "$disk" || fail "$fam: racing writers"
	layerfs_umount "$m"
	layerfs_mount "$m" "$d" -o rw
	python3 "$T/race.py" check "$disk" "$d.base-raw" ||
		fail "$fam: racing sub-sector writes lost data"
	ok "$fam: 8 threads' interleaved 37-byte writes all landed"
	job=$T/$fam.fio
	fio_job "$disk" $((1000 + ${#fam})) >"$job"
	run_fio "$fam: write+verify" "$job" "$T/$fam.fio.log"
	ok "$fam: fio randwrite 512 B-1 MiB (buffered, unaligned; direct libaio qd8 x2) verified"
	sum=$(sha_of "$disk")
	layerfs_umount "$m"

	# independent oracle: the files, read without layerfs
	flat_of "$fam" "$FAM_TOP" "$T/$fam.flat"
	expect_sha "$T/$fam.flat" "$sum" "$fam: ${FAM_TOP##*/} flattened by qemu-img/7zz = disk written"
	rm -f "$T/$fam.flat"
	check_top "$fam" "$FAM_TOP"

	# read-only mount: same bytes, fio verifies without writing
	layerfs_mount "$m" "$d"
	[ "$(disk_mode "$disk")" = 444 ] || fail "$fam: read-only mount gives mode $(disk_mode "$disk")"
	expect_sha "$disk" "$sum" "$fam: read-only remount"
	# fio opens its file read-write even to verify only: verify a copy
	cp "$disk" "$T/$fam.copy"
	layerfs_umount "$m"
	sed "s|^filename=.*|filename=$T/$fam.copy|" "$job" >"$job.copy"
	run_fio "$fam: verify-only (ro copy)" "$job.copy" "$T/$fam.fio2.log" --verify_only
	ok "$fam: fio verify-only passes on a copy of the read-only disk"
	rm -f "$T/$fam.copy"

	# read-write mount continues the layer
	layerfs_mount "$m" "$d" -o rw
	[ "$(disk_mode "$disk")" = 644 ] || fail "$fam: -o rw remount gives mode $(disk_mode "$disk")"
	expect_sha "$disk" "$sum" "$fam: read-write remount"
	run_fio "$fam: verify-only (rw)" "$job" "$T/$fam.fio3.log" --verify_only
	ok "$fam: fio verify-only passes on the read-write mount"
	layerfs_umount "$m"
	check_files
	forget_files
	rm -rf "$d" "$d.base-raw"
done
finish
