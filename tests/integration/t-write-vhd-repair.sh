#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A VHD top layer whose file does not end in a valid footer, as a power
# failure can leave it (the file grew for a new block, the footer written
# at the new end was not durable): the footer cut off, the end a hole of
# zeros, the footer torn.  A read-only mount reads the disk through the
# footer copy at offset 0 and does not change one byte of the file; a
# writable mount repairs the file before anything else (the footer copy
# written after the last block the BAT references, the file cut there),
# which gives back the file exactly as it was; vhdcheck.py accepts it, it
# takes writes again, and 7zz reads the result.  Then a daemon killed
# (SIGKILL) after writes that were never fsync'ed leaves a file that
# vhdcheck.py accepts and that holds everything fsync'ed before.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img 7zz python3 cmp truncate

img=$T/img m=$T/mnt exp=$T/expect.raw
mkdir -p "$img"
make_base_raw "$T/base.raw" 8
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$T/base.raw" "$img/win-L301.vhd" || fail "qemu-img convert -O vpc"
cp "$T/base.raw" "$exp"
top=$img/win-L302.vhd disk=$m/win-L302/disk
snapshot_files "$img/win-L301.vhd"

# disk_write DISK OFF LEN SEED: the same bytes into DISK and the model
disk_write() {
	pattern "$1" "$2" "$3" "$4" || fail "write $3 at $2 to $1"
	pattern "$exp" "$2" "$3" "$4"
}

layerfs_mount "$m" "$img" -o newlayer=win-L301
disk_write "$disk" $((1 << 20)) 300000 a
disk_write "$disk" $((5 << 20)) 4096 b
sync "$disk"
layerfs_umount "$m"
check_top vhd "$top"
cp "$top" "$T/good.vhd"
flat_of vhd "$top" "$T/flat.raw"
cmp "$T/flat.raw" "$exp" || fail "7zz reads another disk than was written"
ok "a new layer with two blocks, written and closed"

size=$(stat -c %s "$T/good.vhd")
for damage in cut hole torn; do
	cp "$T/good.vhd" "$top"
	case $damage in
	cut)	truncate -s $((size - 512)) "$top" ;;
	hole)	truncate -s $((size - 512)) "$top"
		truncate -s $((size + 65536)) "$top" ;;
	torn)	python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, os.urandom(300), os.fstat(fd).st_size - 300)' "$top" ;;
	esac
	if python3 "$TOOLS/vhdcheck.py" -q "$top" 2>/dev/null; then
		fail "$damage: vhdcheck.py accepts the damaged file"
	fi
	before=$(sha_of "$top")

	layerfs_mount "$m" "$img"		# read-only
	cmp "$disk" "$exp" || fail "$damage: read-only disk differs"
	layerfs_umount "$m"
	[ "$(sha_of "$top")" = "$before" ] ||
		fail "$damage: a read-only mount changed the file"
	ok "$damage: read-only mount reads the disk, file unchanged"

	layerfs_mount "$m" "$img" -o rw
	cmp "$top" "$T/good.vhd" ||
		fail "$damage: the writable mount did not restore the file"
	grep -q "repairing the end of the file" "$MOUNT_ERR" ||
		fail "$damage: no warning about the repair"
	cmp "$disk" "$exp" || fail "$damage: disk differs after the repair"
	ok "$damage: writable mount repaired the file exactly"
	disk_write "$disk" $((3 << 20)) 70000 "c$damage"
	layerfs_umount "$m"
	check_top vhd "$top"
	flat_of vhd "$top" "$T/flat.raw"
	cmp "$T/flat.raw" "$exp" || fail "$damage: 7zz reads another disk"
	cp "$top" "$T/good.vhd"
	size=$(stat -c %s "$T/good.vhd")
	ok "$damage: written after the repair; 7zz reads the disk"
done

# Killed with writes that were never fsync'ed: the file is valid and
# holds what was fsync'ed.
mkdir -p "$m"
"$LAYERFS" -f -o rw "$img" "$m" 2>"$T/kill.err" &
pid=$!
track_pid "$pid"
track_mount "$m"
for _ in $(seq 100); do
	grep -qs " $m fuse" /proc/self/mounts && break
	sleep 0.1
done
grep -qs " $m fuse" /proc/self/mounts || fail "not mounted for the kill"
disk_write "$disk" $((6 << 20)) 200000 d
sync "$disk"
cp "$exp" "$T/synced.raw"
# not fsync'ed, and not closed (close flushes): new blocks, and sectors
# in blocks that exist; the writer holds the file open until the kill
python3 - "$disk" "$T/written" <<'PY' &
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
for off, n, seed in ((7 << 20, 100000, "e"), (1 << 20, 4096, "f")):
    os.pwrite(fd, random.Random(seed).randbytes(n), off)
open(sys.argv[2], "w").close()
time.sleep(60)
PY
wpid=$!
track_pid "$wpid"
for _ in $(seq 100); do
	[ -e "$T/written" ] && break
	sleep 0.1
done
[ -e "$T/written" ] || fail "the unsynced writes did not finish"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
fusermount3 -u -z "$m" 2>/dev/null || true
check_top vhd "$top"
flat_of vhd "$top" "$T/flat.raw"
python3 - "$T/flat.raw" "$T/synced.raw" $((7 << 20)) 100000 \
	$((1 << 20)) 4096 <<'EOF' || fail "killed: fsync'ed data lost"
import sys
got, want = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
skip = [(int(sys.argv[i]), int(sys.argv[i + 1])) for i in (3, 5)]
assert len(got) == len(want), (len(got), len(want))
for i in range(0, len(want), 512):
    if got[i:i + 512] != want[i:i + 512] and \
            not any(o <= i < o + n for o, n in skip):
        sys.exit("sector %d differs" % (i // 512))
EOF
ok "killed before fsync: vhdcheck.py clean, fsync'ed data intact"
check_files
finish
