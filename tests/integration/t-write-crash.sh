#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Crash consistency: for each family of write-lib.sh, a writer loops
# (a deterministic random block of 512 B-256 KiB at a byte offset, write,
# fsync, then an ack line in a log outside the mount, fsync'ed) while the
# daemon gets SIGKILL at a random moment.  After each kill the top file
# must pass its format's checker (qemu-img check: leaks allowed, errors
# not; vhdcheck.py; 7zz for VHDX), and on the next mount every
# acknowledged write must read back: the disk must equal the base content
# with every acknowledged write replayed in order, except where the one
# write in flight at the kill may or may not have landed.  The base
# images never change.
#
# FAMILIES lists the families run; a family whose driver cannot write
# fails, it is not skipped.  ROUNDS kills per family.
FAMILIES=${LAYERFS_WRITE_FAMILIES:-"vhd vhdx qcow2raw qcow2"}
ROUNDS=${LAYERFS_CRASH_ROUNDS:-10}

. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img 7zz python3 fusermount3

MIB=16

cat >"$T/crash.py" <<'EOF'
# crash.py check DISK BASE ROUNDS SEED: the disk holds every acknowledged
#   write; ROUNDS has one line "START LAST_ACKED" per killed writer
# crash.py round DISK BASE ROUNDS SEED ACK START READY: check, create
#   READY, then write i = START, START+1, ... until the daemon is gone
import os, random, sys

MAXLEN = 256 << 10

def block(seed, i, size):
    r = random.Random("%s/%d" % (seed, i))
    n = r.randrange(512, MAXLEN + 1)
    off = r.randrange(0, size - n + 1)
    return off, r.randbytes(n)

def check(disk, base, rounds, seed):
    # The model (expected bytes, unknown mask, rounds applied, writes
    # acked) is kept next to BASE and brought up to date with ROUNDS.
    try:
        exp = bytearray(open(base + ".exp", "rb").read())
        unknown = bytearray(open(base + ".unk", "rb").read())
        done, nacked = map(int, open(base + ".n").read().split())
    except FileNotFoundError:
        exp = bytearray(open(base, "rb").read())
        unknown = bytearray(len(exp))  # 1: the write in flight may have landed
        done = nacked = 0
    lines = open(rounds).read().split("\n")[:-1]
    for line in lines[done:]:
        start, last = map(int, line.split())
        for i in range(start, last + 1):
            off, data = block(seed, i, len(exp))
            exp[off:off + len(data)] = data
            unknown[off:off + len(data)] = bytes(len(data))
            nacked += 1
        off, data = block(seed, last + 1, len(exp))
        unknown[off:off + len(data)] = b"\1" * len(data)
    open(base + ".exp", "wb").write(exp)
    open(base + ".unk", "wb").write(unknown)
    open(base + ".n", "w").write("%d %d" % (len(lines), nacked))
    got = open(disk, "rb").read()
    if len(got) != len(exp):
        sys.exit("disk size %d, expected %d" % (len(got), len(exp)))
    for i in range(0, len(exp), 4096):
        if got[i:i + 4096] == exp[i:i + 4096]:
            continue
        for j in range(i, min(i + 4096, len(exp))):
            if got[j] != exp[j] and not unknown[j]:
                sys.exit("byte %d reads %#x, expected %#x (%d acked writes)"
                         % (j, got[j], exp[j], nacked))
    return nacked

def write(disk, ack, seed, i):
    try:
        fd = os.open(disk, os.O_RDWR)
    except OSError:
        return  # killed before the first write
    size = os.fstat(fd).st_size
    afd = os.open(ack, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        off, data = block(seed, i, size)
        try:
            # a write the kernel split can end short when the daemon dies
            if os.pwrite(fd, data, off) != len(data):
                return
            os.fsync(fd)
        except OSError:
            return  # the daemon is gone
        os.write(afd, b"%d\n" % i)
        os.fsync(afd)
        i += 1

a = sys.argv
if a[1] == "check":
    print(check(*a[2:6]))
else:
    check(*a[2:6])
    open(a[8], "w").close()
    write(a[2], a[6], a[5], int(a[7]))
EOF

# start_daemon MNT DIR OPTION...: like layerfs_mount, but the daemon is
# ours to kill; sets PID
start_daemon() {
	local mnt=$1 dir=$2 i
	shift 2
	mkdir -p "$mnt"
	"$LAYERFS" -f "$@" "$dir" "$mnt" 2>>"$mnt.err" &
	PID=$!
	# lib.sh's trap reaps it if the test fails before the kill
	_extra_pids=("$PID")
	# shellcheck disable=SC2154  # lib.sh's
	[[ " ${_extra_mounts[*]} " = *" $mnt "* ]] || track_mount "$mnt"
	for i in $(seq $((MOUNT_TIMEOUT * 10))); do
		grep -qs " $mnt fuse" /proc/self/mounts && return 0
		kill -0 "$PID" 2>/dev/null ||
			fail "layerfs exited before mounting: $(tail -3 "$mnt.err" | tr '\n' '|')"
		sleep 0.1
	done
	fail "$mnt not mounted after ${MOUNT_TIMEOUT}s"
}

for fam in $FAMILIES; do
	d=$T/$fam m=$T/mnt-$fam
	make_family "$fam" "$d" "$MIB"
	snapshot_files "${FAM_BASES[@]}"
	seed=crash-$fam ack=$T/$fam.ack rounds=$T/$fam.rounds
	: >"$ack"
	: >"$rounds"
	next=0 opts=("${FAM_FIRST[@]}") total=0
	RANDOM=${#fam}	# the same kill times on every run
	for r in $(seq "$ROUNDS"); do
		start_daemon "$m" "$d" "${opts[@]}"
		opts=(-o rw)
		disk=$m/$FAM_CHAIN/disk
		[ "$(disk_mode "$disk")" = 644 ] ||
			fail "$fam: $FAM_CHAIN/disk is not writable (mode $(disk_mode "$disk"))"
		# what the earlier rounds acknowledged reads back, then write
		rm -f "$T/ready"
		python3 "$T/crash.py" round "$disk" "$d.base-raw" "$rounds" \
			"$seed" "$ack" "$next" "$T/ready" 2>"$T/writer.err" &
		wpid=$!
		while [ ! -e "$T/ready" ]; do
			if kill -0 "$wpid" 2>/dev/null; then
				sleep 0.02
				continue
			fi
			[ -e "$T/ready" ] && break
			wait "$wpid" || true
			fail "$fam round $r: acknowledged data lost: $(tail -1 "$T/writer.err")"
		done
		sleep "0.$(printf %03d $((50 + RANDOM % 450)))"
		kill -KILL "$PID"
		wait "$PID" 2>/dev/null || true
		_extra_pids=()
		timeout 20 tail --pid="$wpid" -s 0.02 -f /dev/null ||
			fail "$fam round $r: the writer hangs after the kill"
		wait "$wpid" || fail "$fam round $r: writer: $(tail -2 "$T/writer.err")"
		fusermount3 -u -z "$m" 2>/dev/null || true
		last=$(tail -n 1 "$ack")
		# nothing acknowledged in this round: the log ends at an older i
		[ -n "$last" ] && [ "$last" -ge "$next" ] || last=$((next - 1))
		echo "$next $last" >>"$rounds"
		total=$((total + last - next + 1))
		next=$((last + 2))
		check_top "$fam" "$FAM_TOP" >/dev/null
	done
	ok "$fam: $ROUNDS kills, the top passes its checker after each"
	# a clean mount: everything acknowledged is there
	layerfs_mount "$m" "$d" -o rw
	n=$(python3 "$T/crash.py" check "$m/$FAM_CHAIN/disk" "$d.base-raw" \
		"$rounds" "$seed" 2>&1) || fail "$fam: acknowledged data lost: $n"
	[ "$n" -eq "$total" ] || fail "$fam: replayed $n writes, $total acked"
	[ "$total" -ge "$ROUNDS" ] ||
		fail "$fam: only $total writes acknowledged in $ROUNDS rounds"
	ok "$fam: all $total acknowledged writes read back"
	sum=$(sha_of "$m/$FAM_CHAIN/disk")
	layerfs_umount "$m"
	check_top "$fam" "$FAM_TOP"
	flat_of "$fam" "$FAM_TOP" "$T/$fam.flat"
	expect_sha "$T/$fam.flat" "$sum" "$fam: ${FAM_TOP##*/} flattened by qemu-img/7zz = disk"
	rm -f "$T/$fam.flat"
	check_files
	forget_files
	rm -rf "$d" "$d.base-raw"
done
finish
