#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# -o newlayer and the life of a layer, on a VHD chain made by qemu-img:
# the next free layer name (win-L301 -> win-L302, vm-L3 -> vm-L4, an
# untagged disk -> disk-L1, an explicit FILE), the new file is a valid
# image of the right format (vhdcheck.py and 7zz; qemu-img info), the
# chain it was made over turns read-only, writes, discards (punch-hole
# and zero-range, also unaligned, also over parent data) and the edge
# cases (past the end: ENOSPC, O_TRUNC and truncate refused) behave, a
# plain -o rw mount continues the layer, and deleting the layer's file
# leaves the old base read-only under -o rw (writable in place only with
# rw_base); an existing file, a path and an unknown chain are refused.  A model of the disk in a plain
# file is the oracle, with 7zz reading the files without layerfs.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img 7zz python3 fallocate cmp truncate

img=$T/img m=$T/mnt exp=$T/expect.raw
mkdir -p "$img"
MiB=$((1 << 20))
make_base_raw "$T/base.raw" 16
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$T/base.raw" "$img/win-L301.vhd" || fail "qemu-img convert -O vpc"
cp "$T/base.raw" "$exp"
snapshot_files "$img/win-L301.vhd"

# disk_write DISK OFF LEN SEED: the same bytes into DISK and the model
disk_write() {
	pattern "$1" "$2" "$3" "$4" || fail "write $3 at $2 to $1"
	pattern "$exp" "$2" "$3" "$4"
}
# disk_zero MODE(-p|-z) DISK OFF LEN: fallocate on DISK, zeros in the model
disk_zero() {
	fallocate "$1" -o "$3" -l "$4" "$2" || fail "fallocate $1 -o $3 -l $4 $2"
	python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, bytes(int(sys.argv[3])), int(sys.argv[2]))' "$exp" "$3" "$4"
}
# errno_of PYTHON-EXPR: the errno name the operation fails with, or "ok"
errno_of() {
	python3 - "$@" <<'EOF'
import errno, os, sys
disk, what = sys.argv[1], sys.argv[2]
size = os.stat(disk).st_size
try:
    if what == "past-end":
        fd = os.open(disk, os.O_WRONLY)
        n = os.pwrite(fd, b"x" * 4096, size)
        print("ok", n); sys.exit()
    if what == "across-end":
        fd = os.open(disk, os.O_WRONLY)
        n = os.pwrite(fd, b"x" * 4096, size - 1024)
        print("ok", n); sys.exit()
    if what == "trunc":
        os.close(os.open(disk, os.O_WRONLY | os.O_TRUNC))
    if what == "wronly":
        os.close(os.open(disk, os.O_WRONLY))
    if what == "shrink":
        os.truncate(disk, size - 512)
    if what == "grow":
        os.truncate(disk, size + 512)
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
EOF
}

# 1. newlayer over win-L301: win-L302.vhd
layerfs_mount "$m" "$img" -o newlayer=win-L301
[ -f "$img/win-L302.vhd" ] || fail "no win-L302.vhd: $(ls "$img" | tr '\n' ' ')"
ok "newlayer=win-L301 made win-L302.vhd"
expect_dirs "$m" win-L301 win-L302
[ "$(disk_mode "$m/win-L301/disk")" = 444 ] ||
	fail "win-L301/disk has mode $(disk_mode "$m/win-L301/disk") under a new layer"
[ "$(errno_of "$m/win-L301/disk" wronly)" = EROFS ] ||
	fail "opening win-L301/disk for writing: $(errno_of "$m/win-L301/disk" wronly), not EROFS"
ok "the chain under the new layer is read-only (0444, EROFS)"
[ "$(disk_mode "$m/win-L302/disk")" = 644 ] ||
	fail "win-L302/disk has mode $(disk_mode "$m/win-L302/disk")"
expect_same "$m/win-L302/disk" "$exp" "the new layer shows its parent"

# writes: unaligned, across the 2 MiB block boundary, over parent data
disk=$m/win-L302/disk
disk_write "$disk" 1000 3000 w1
disk_write "$disk" $((2 * MiB - 700)) 5000 w2
disk_write "$disk" $((5 * MiB)) $((MiB + 7)) w3
disk_write "$disk" $((16 * MiB - 512)) 512 w4
# discards: inside written data, over parent-only data (MiB 6 is random
# in the base), unaligned ends, a whole 2 MiB block
disk_zero -p "$disk" $((5 * MiB + 4096)) 65536
disk_zero -z "$disk" $((5 * MiB + 200000)) 12345
disk_zero -p "$disk" $((6 * MiB + 513)) 70000
disk_zero -z "$disk" $((9 * MiB + 100)) 300
disk_zero -p "$disk" $((12 * MiB)) $((2 * MiB))
expect_same "$disk" "$exp" "writes and discards read back"
ok "punch-hole and zero-range read zero, their neighbours stay"

# edge cases
r=$(errno_of "$disk" past-end)
[ "$r" = ENOSPC ] || fail "write at the end: $r, not ENOSPC"
r=$(errno_of "$disk" across-end)
[ "$r" = ENOSPC ] || [ "$r" = "ok 1024" ] ||
	fail "write across the end: $r, not ENOSPC or 1024 bytes"
if [ "$r" = "ok 1024" ]; then
	python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"x" * 1024, 16 * 1048576 - 1024)' "$exp"
fi
ok "writes past the end fail (across: $r)"
r=$(errno_of "$disk" trunc)
[ "$r" != ok ] || fail "open with O_TRUNC succeeded"
ok "O_TRUNC open fails ($r)"
for w in shrink grow; do
	r=$(errno_of "$disk" $w)
	[ "$r" != ok ] || fail "truncate ($w) succeeded"
done
expect_size "$disk" $((16 * MiB)) "disk size after truncate attempts"
ok "truncate fails, the size stays"
expect_same "$disk" "$exp" "the disk after the edge cases"
layerfs_umount "$m"

python3 "$TOOLS/vhdcheck.py" "$img/win-L302.vhd" >"$T/vhdcheck.out" 2>&1 ||
	fail "vhdcheck.py win-L302.vhd: $(head -5 "$T/vhdcheck.out" | tr '\n' '|')"
ok "vhdcheck.py: win-L302.vhd is a clean VHD"
flat_of vhd "$img/win-L302.vhd" "$T/flat.raw"
expect_same "$T/flat.raw" "$exp" "7zz reads win-L302.vhd over its parent = model"
check_files

# 2. a plain -o rw mount continues the layer
layerfs_mount "$m" "$img" -o rw
modes="$(disk_mode "$m/win-L302/disk")/$(disk_mode "$m/win-L301/disk")"
[ "$modes" = 644/444 ] ||
	fail "-o rw: win-L302/win-L301 modes $modes, expected 644/444"
expect_same "$m/win-L302/disk" "$exp" "-o rw: the layer's data is still there"
disk_write "$m/win-L302/disk" $((3 * MiB + 11)) 100000 w5
disk_zero -p "$m/win-L302/disk" 0 4096
expect_same "$m/win-L302/disk" "$exp" "-o rw: more writes read back"
layerfs_umount "$m"
flat_of vhd "$img/win-L302.vhd" "$T/flat.raw"
expect_same "$T/flat.raw" "$exp" "7zz after the second session = model"
check_files

# 3. a read-only mount leaves everything read-only
layerfs_mount "$m" "$img"
[ "$(errno_of "$m/win-L302/disk" wronly)" = EROFS ] ||
	fail "read-only mount: win-L302/disk opens for writing"
ok "without rw every disk is read-only"
layerfs_umount "$m"

# 4. deleting the layer throws it away: win-L301 is a lone base again,
# read-only under -o rw (a base is written in place only with rw_base)
rm "$img/win-L302.vhd"
layerfs_mount "$m" "$img" -o rw
expect_dirs "$m" win-L301
[ "$(disk_mode "$m/win-L301/disk")" = 444 ] ||
	fail "win-L301/disk has mode $(disk_mode "$m/win-L301/disk"): a lone base under -o rw"
expect_same "$m/win-L301/disk" "$T/base.raw" "win-L301 without the layer = its own content"
ok "deleting the layer's file leaves win-L301 alone, a read-only base"
layerfs_umount "$m"
layerfs_mount "$m" "$img" -o rw,rw_base=win-L301
[ "$(disk_mode "$m/win-L301/disk")" = 644 ] ||
	fail "rw_base=win-L301: its disk has mode $(disk_mode "$m/win-L301/disk")"
ok "-o rw,rw_base=win-L301 makes it writable in place"
layerfs_umount "$m"
check_files
forget_files

# 5. naming: L3 -> L4, an explicit FILE, untagged -> -L1, QCOW2 over raw
n=$T/names
mkdir -p "$n"
head -c $((4 * MiB)) "$T/base.raw" >"$T/small.raw"
qemu-img convert -q -f raw -O qcow2 "$T/small.raw" "$n/vm-L3.qcow2"
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$T/small.raw" "$n/disk.vhd"
cp "$T/small.raw" "$n/plain.img"
snapshot_files "$n/vm-L3.qcow2" "$n/disk.vhd" "$n/plain.img"
newlayer() {	# newlayer ARG EXPECTED-FILE CHAIN
	layerfs_mount "$m" "$n" -o "newlayer=$1"
	[ -f "$n/$2" ] || fail "newlayer=$1 did not make $2: $(ls "$n" | tr '\n' ' ')"
	[ "$(disk_mode "$m/$3/disk")" = 644 ] ||
		fail "newlayer=$1: $3/disk has mode $(disk_mode "$m/$3/disk")"
	pattern "$m/$3/disk" 4096 8192 "$1"
	layerfs_umount "$m"
	ok "newlayer=$1 made $2, writable as $3"
}
qinfo() {	# qinfo FILE BACKING BACKING-FORMAT
	qemu-img info --output=json "$n/$1" >"$T/info.json" 2>&1 ||
		fail "qemu-img info $1: $(head -3 "$T/info.json")"
	python3 - "$T/info.json" "$2" "$3" <<'EOF' || fail "qemu-img info $1"
import json, sys
i = json.load(open(sys.argv[1]))
want = ("qcow2", sys.argv[2], sys.argv[3])
got = (i.get("format"), i.get("backing-filename"), i.get("backing-filename-format"))
if got != want:
    sys.exit("qemu-img info: %r, expected %r" % (got, want))
EOF
	ok "qemu-img info $1: qcow2 over $2 ($3)"
}
newlayer vm-L3 vm-L4.qcow2 vm-L4
qinfo vm-L4.qcow2 vm-L3.qcow2 qcow2
newlayer vm-L4:branch.qcow2 branch.qcow2 branch
qinfo branch.qcow2 vm-L4.qcow2 qcow2
newlayer disk disk-L1.vhd disk-L1
python3 "$TOOLS/vhdcheck.py" "$n/disk-L1.vhd" >"$T/vhdcheck.out" 2>&1 ||
	fail "vhdcheck.py disk-L1.vhd: $(head -5 "$T/vhdcheck.out" | tr '\n' '|')"
ok "vhdcheck.py: disk-L1.vhd is clean"
newlayer plain plain-L1.qcow2 plain-L1
qinfo plain-L1.qcow2 plain.img raw
# the oracle: qemu-img reads the qcow2 chain vm-L3 <- vm-L4 <- branch
cp "$T/small.raw" "$T/model4.raw"
pattern "$T/model4.raw" 4096 8192 vm-L4:branch.qcow2
qemu-img convert -f qcow2 -O raw "$n/branch.qcow2" "$T/branch.raw" ||
	fail "qemu-img convert branch.qcow2"
expect_same "$T/branch.raw" "$T/model4.raw" "qemu-img reads branch.qcow2 = model"
for f in vm-L4.qcow2 branch.qcow2 plain-L1.qcow2; do
	check_top qcow2 "$n/$f" strict
done

# 6. refused: an existing FILE (never overwritten), a name with a slash,
# an unknown chain; layerfs exits with 1 without mounting
refused() {	# refused NEWLAYER-ARG ERE
	local rc=0
	timeout 20 "$LAYERFS" -f -o "newlayer=$1" "$n" "$m" 2>"$T/refused.err" ||
		rc=$?
	[ "$rc" = 1 ] || fail "newlayer=$1: exit $rc, expected 1"
	! grep -qs " $m fuse" /proc/self/mounts || fail "newlayer=$1 mounted"
	grep -Eqi -- "$2" "$T/refused.err" ||
		fail "newlayer=$1: no /$2/ in: $(tr '\n' '|' <"$T/refused.err")"
	ok "newlayer=$1 is refused ($(head -1 "$T/refused.err" | sed "s/.*: //"))"
}
snapshot_files "$n/vm-L4.qcow2" "$n/branch.qcow2"
ls -1 "$n" >"$T/names.before"
refused vm-L4:branch.qcow2 'exists'
refused vm-L4:vm-L4.qcow2 'exists'
refused vm-L4:../escape.qcow2 'name'
refused nosuch 'no chain'
ls -1 "$n" | cmp -s - "$T/names.before" ||
	fail "a refused newlayer left files: $(ls "$n" | tr '\n' ' ')"
[ ! -e "$T/escape.qcow2" ] || fail "newlayer wrote outside IMAGEDIR"
check_files
finish
