#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A writable qcow2 layer keeps new metadata (L2 entries and tables,
# refcounts, L1 entries) in memory and writes it back at a flush:
#   1. a fresh layer (-o newlayer: extended L2) written with some fsyncs
#      and closed, then unmounted: qemu-img check finds neither errors nor
#      leaks, and qemu-img compare (qemu reading the file) finds every
#      write, including those after the last fsync (the close flushes);
#   2. writes, fsync, more writes without fsync, then SIGKILL of the
#      daemon while the writer still holds the file open (no close, no
#      flush): qemu-img check finds no errors, and what qemu reads from
#      the top is every fsync'd write exactly; the bytes written after the
#      last fsync read as before or as written;
#   3. the next mount reads what qemu read, takes more writes, and a clean
#      unmount leaves a file qemu reads exactly as written.
# The base never changes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img python3 fusermount3

MIB=24
D=$T/img
M=$T/mnt
TOP=$D/vm-L2.qcow2
mkdir -p "$D"
make_base_raw "$T/base.raw" "$MIB"
qemu-img convert -q -f raw -O qcow2 "$T/base.raw" "$D/vm-L1.qcow2" ||
	fail "qemu-img convert -O qcow2"
cp "$T/base.raw" "$T/model"
snapshot_files "$D/vm-L1.qcow2"

cat >"$T/w.py" <<'EOF'
# w.py write DISK MODEL SEED NSYNCED NLOOSE [READY]: check DISK against
#   MODEL (and MODEL.unk: bytes that may read either way; those are then
#   taken from DISK), write NSYNCED random blocks with an fsync after
#   every 5th and the last, save MODEL, then NLOOSE more without fsync.
#   With READY: mark those unknown in MODEL.unk, create READY and wait to
#   be killed with the file still open; without: apply them to MODEL and
#   close the file (its flush makes them durable).
# w.py check RAW MODEL: RAW holds MODEL (unknown bytes: either way)
import os, random, sys, time

def load(model):
    exp = bytearray(open(model, "rb").read())
    try:
        unk = bytearray(open(model + ".unk", "rb").read())
    except FileNotFoundError:
        unk = bytearray(len(exp))
    return exp, unk

def compare(got, exp, unk, what):
    if len(got) != len(exp):
        sys.exit("%s: %d bytes, expected %d" % (what, len(got), len(exp)))
    for i in range(0, len(exp), 65536):
        if got[i:i + 65536] == exp[i:i + 65536]:
            continue
        for j in range(i, min(i + 65536, len(exp))):
            if got[j] != exp[j] and not unk[j]:
                sys.exit("%s: byte %d reads %#x, expected %#x"
                         % (what, j, got[j], exp[j]))

def block(r, size):
    n = r.choice([512, 4096, 4096, 65536, 1 << 20, r.randrange(1, 300 << 10)])
    if r.random() < 0.5:
        off = r.randrange(0, (size - n) // 4096 + 1) * 4096
    else:
        off = r.randrange(0, size - n + 1)
    return off, r.randbytes(n)

a = sys.argv
if a[1] == "check":
    exp, unk = load(a[3])
    compare(open(a[2], "rb").read(), exp, unk, a[2])
    sys.exit(0)
disk, model, seed, nsync, nloose = a[2], a[3], a[4], int(a[5]), int(a[6])
ready = a[7] if len(a) > 7 else None
exp, unk = load(model)
fd = os.open(disk, os.O_RDWR)
size = os.fstat(fd).st_size
got = os.pread(fd, size, 0)
compare(got, exp, unk, disk)
exp = bytearray(got)
unk = bytearray(len(exp))
r = random.Random(seed)
for i in range(nsync):
    off, data = block(r, size)
    if os.pwrite(fd, data, off) != len(data):
        sys.exit("short write at %d" % off)
    exp[off:off + len(data)] = data
    if i % 5 == 4 or i == nsync - 1:
        os.fsync(fd)
open(model, "wb").write(exp)
for i in range(nloose):
    off, data = block(r, size)
    if os.pwrite(fd, data, off) != len(data):
        sys.exit("short write at %d" % off)
    if ready:
        unk[off:off + len(data)] = b"\1" * len(data)
    else:
        exp[off:off + len(data)] = data
if not ready:
    os.close(fd)
    open(model, "wb").write(exp)
    try:
        os.unlink(model + ".unk")
    except FileNotFoundError:
        pass
    sys.exit(0)
open(model + ".unk", "wb").write(unk)
open(ready, "w").close()
time.sleep(600)
EOF

# qemu's view of the top: every byte as the model says
qemu_reads_model() {
	qemu-img convert -f qcow2 -O raw "$TOP" "$T/flat.raw" 2>"$T/flat.err" ||
		fail "qemu-img convert $TOP: $(tail -2 "$T/flat.err")"
	python3 "$T/w.py" check "$T/flat.raw" "$T/model" ||
		fail "$1: qemu reads something else from ${TOP##*/}"
	rm -f "$T/flat.raw"
	ok "$1: qemu-img reads ${TOP##*/} as written"
}

# 1. a fresh layer, closed and unmounted
layerfs_mount "$M" "$D" -o newlayer=vm-L1
[ -f "$TOP" ] || fail "-o newlayer made no ${TOP##*/}"
python3 "$T/w.py" write "$M/vm-L2/disk" "$T/model" one 40 12 ||
	fail "round 1: the writer failed"
layerfs_umount "$M"
qemu-img info "$TOP" | grep -q "extended l2: true" ||
	fail "the new layer does not use extended L2 entries"
ok "the new layer uses extended L2 entries"
check_top qcow2 "$TOP" strict
qemu_reads_model "clean unmount after writes without fsync"

# 2. SIGKILL with writes after the last fsync, the file still open
mkdir -p "$M"
"$LAYERFS" -f -o rw "$D" "$M" 2>"$M.err" &
pid=$!
_extra_pids=("$pid")
track_mount "$M"
for i in $(seq $((MOUNT_TIMEOUT * 10))); do
	grep -qs " $M fuse" /proc/self/mounts && break
	kill -0 "$pid" 2>/dev/null || fail "layerfs exited before mounting"
	sleep 0.1
done
python3 "$T/w.py" write "$M/vm-L2/disk" "$T/model" two 30 25 "$T/ready" \
	2>"$T/writer.err" &
wpid=$!
_extra_pids+=("$wpid")
for i in $(seq 600); do
	[ -e "$T/ready" ] && break
	kill -0 "$wpid" 2>/dev/null ||
		fail "round 2: the writer failed: $(tail -2 "$T/writer.err")"
	sleep 0.1
done
[ -e "$T/ready" ] || fail "round 2: the writer did not finish"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
kill -KILL "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
_extra_pids=()
fusermount3 -u -z "$M" 2>/dev/null || true
check_top qcow2 "$TOP"
qemu_reads_model "SIGKILL after fsync and more writes"

# 3. the next mount: what qemu read, more writes, a clean unmount
layerfs_mount "$M" "$D" -o rw
python3 "$T/w.py" write "$M/vm-L2/disk" "$T/model" three 20 10 ||
	fail "round 3: the writer failed (or read something else than qemu)"
ok "the next mount reads what qemu read"
layerfs_umount "$M"
check_top qcow2 "$TOP"
qemu_reads_model "writes after the crash, clean unmount"
check_files
finish
