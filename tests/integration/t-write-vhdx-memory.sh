#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue #12 item 5: the memory of a writable differencing VHDX stays
# bounded.  A 64 TiB differencing VHDX with 32 MiB blocks over a small
# base gets 9000 random 4 KiB writes (every one a new block, most in a
# new 4 GiB chunk of sector bitmaps) with an fsync every 64 writes and
# at the end; the daemon's peak RSS (VmHWM) must stay under 128 MiB (it
# went past 300 MiB when each chunk's 1 MiB bitmap stayed in memory).
# Remounted read-write the layer must open writable again (it was
# refused: "too many sector bitmaps to write") and take more writes, and
# every byte written must read back, through a read-only mount too.
. "$(dirname "$0")/lib.sh"
require_fuse
require python3
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

img=$T/img m=$T/mnt
mkdir -p "$img"
HWM_MAX_KIB=$((128 * 1024))
"$LAYERIMG" create -f vhdx "$img/base-L1.vhdx" 16M >/dev/null ||
	fail "layerimg create base"
"$LAYERIMG" create -b "$img/base-L1.vhdx" -f vhdx --block-size 32M \
	"$img/base-L2.vhdx" 64T >/dev/null || fail "layerimg create -b (64 TiB)"
ok "a 64 TiB differencing VHDX (32 MiB blocks) over a 16 MiB base"

# scribble DISK SEED N: N random 4 KiB writes (fsync every 64 and at the
# end); each one's offset and first bytes to $T/written.SEED
scribble() {
	python3 - "$1" "$2" "$3" "$T/written.$2" <<'EOF' || fail "writes (seed $2)"
import os, random, sys
disk, seed, n, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rnd = random.Random(seed)
size = os.stat(disk).st_size
fd = os.open(disk, os.O_WRONLY)
with open(log, "w") as out:
    for i in range(n):
        off = rnd.randrange(size // 4096) * 4096
        data = rnd.randbytes(4096)
        if os.pwrite(fd, data, off) != 4096:
            sys.exit("short write at %d" % off)
        out.write("%d %s\n" % (off, data.hex()))
        if i % 64 == 63:
            os.fsync(fd)
os.fsync(fd)
os.close(fd)
EOF
}
# check_written DISK SEED: every write of that seed reads back (the last
# write of an offset wins)
check_written() {
	python3 - "$1" "$T/written.$2" <<'EOF' || fail "read back (seed $2) on $1"
import os, sys
disk, log = sys.argv[1], sys.argv[2]
want = {}
for line in open(log):
    off, hexdata = line.split()
    want[int(off)] = bytes.fromhex(hexdata)
fd = os.open(disk, os.O_RDONLY)
bad = [off for off, data in want.items() if os.pread(fd, 4096, off) != data]
if bad:
    sys.exit("%d of %d writes read back wrong (first at %d)" % (len(bad), len(want), bad[0]))
EOF
}
# hwm MNT: the daemon's peak RSS in KiB
hwm() {
	local pid
	pid=${_mount_pid[$(cd "$1" && pwd -P)]}
	awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status"
}

layerfs_mount "$m" "$img" -o rw
disk=$m/base-L2/disk
[ -f "$disk" ] || disk=$(ls -d "$m"/*L2*/disk 2>/dev/null | head -n 1)
[ -n "$disk" ] && [ -f "$disk" ] || fail "no disk for base-L2 in $(ls "$m")"
[ "$(stat -c %s "$disk")" -eq $((64 << 40)) ] || fail "disk is not 64 TiB"
scribble "$disk" 1 9000
check_written "$disk" 1
h=$(hwm "$m")
[ "$h" -lt "$HWM_MAX_KIB" ] ||
	fail "peak RSS $h KiB after 9000 writes (limit $HWM_MAX_KIB KiB)"
ok "9000 random 4 KiB writes with fsync: peak RSS $h KiB < 128 MiB; all read back"
layerfs_umount "$m"

layerfs_mount "$m" "$img" -o rw
expect_no_error "$MOUNT_ERR" "remount -o rw"
check_written "$disk" 1
scribble "$disk" 2 2000
check_written "$disk" 2
h=$(hwm "$m")
[ "$h" -lt "$HWM_MAX_KIB" ] ||
	fail "peak RSS $h KiB after the remount (limit $HWM_MAX_KIB KiB)"
ok "remounted read-write: 2000 more writes, peak RSS $h KiB; all read back"
layerfs_umount "$m"

layerfs_mount "$m" "$img"
check_written "$disk" 2
ok "read-only mount: the second round reads back"
layerfs_umount "$m"
finish
