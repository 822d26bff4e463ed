#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Images written through layerfs are read the same by other tools:
#   QCOW2 (over a raw base, made by qemu-img): qemu-img check finds no
#     error and no leak after a clean unmount, qemu-img compare finds the
#     file equal to the disk (against a model, and against the read-only
#     mounted disk); then qemu-io writes into the same file and layerfs
#     continues it: both sets of writes read back, still clean;
#   VHD (a differencing layer over a qemu-img dynamic VHD): vhdcheck.py
#     passes and 7zz extracts the same bytes;
#   VHDX (a differencing layer over a qemu-img VHDX): layerfs reopens it,
#     libvhdi's vhdimount (the highest vhdiN is the top) and 7zz read the
#     same bytes.
# The writes are random, at byte offsets, with punch-hole and zero-range
# (write-lib.sh's scribble), mirrored into a model file.  The base images
# never change.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img qemu-io 7zz vhdimount python3 cmp

m=$T/mnt

# ---- QCOW2 ----------------------------------------------------------------
make_family qcow2raw "$T/q" 32
snapshot_files "${FAM_BASES[@]}"
cp "$T/q.base-raw" "$T/q.model"
layerfs_mount "$m" "$T/q" -o rw
scribble "$m/top/disk" "$T/q.model" q1 80
expect_same "$m/top/disk" "$T/q.model" "qcow2: the disk = model"
layerfs_umount "$m"
check_top qcow2 "$T/q/top.qcow2" strict
qemu-img compare -q -f raw -F qcow2 "$T/q.model" "$T/q/top.qcow2" ||
	fail "qemu-img compare: top.qcow2 differs from the model"
ok "qemu-img compare: top.qcow2 = model"
layerfs_mount "$m" "$T/q"
qemu-img compare -q -f raw -F qcow2 "$m/top/disk" "$T/q/top.qcow2" ||
	fail "qemu-img compare: the read-only disk differs from top.qcow2"
ok "qemu-img compare: read-only mounted disk = top.qcow2"
layerfs_umount "$m"
# qemu writes into what layerfs wrote, layerfs continues what qemu wrote
qemu-io -f qcow2 -c 'write -P 0x5a 1000k 300k' -c 'write -z 5m 64k' \
	-c 'discard 9m 1m' "$T/q/top.qcow2" >"$T/qemu-io.out" 2>&1 ||
	fail "qemu-io: $(tail -2 "$T/qemu-io.out")"
python3 - "$T/q.model" <<'EOF'
import sys
K, M = 1024, 1 << 20
m = open(sys.argv[1], "r+b")
m.seek(1000 * K); m.write(b"\x5a" * 300 * K)
m.seek(5 * M); m.write(bytes(64 * K))
# qemu keeps the backing file hidden: a discarded cluster reads zeros
m.seek(9 * M); m.write(bytes(M))
EOF
qemu-img compare -q -f raw -F qcow2 "$T/q.model" "$T/q/top.qcow2" ||
	fail "qemu-io's writes are not what the model expects (test bug)"
layerfs_mount "$m" "$T/q" -o rw
expect_same "$m/top/disk" "$T/q.model" "qcow2: layerfs reads qemu-io's writes"
scribble "$m/top/disk" "$T/q.model" q2 40
expect_same "$m/top/disk" "$T/q.model" "qcow2: layerfs writes after qemu-io's"
layerfs_umount "$m"
check_top qcow2 "$T/q/top.qcow2" strict
qemu-img compare -q -f raw -F qcow2 "$T/q.model" "$T/q/top.qcow2" ||
	fail "qemu-img compare after the second session: differs"
ok "qemu-img compare after qemu-io and layerfs: = model"
check_files
forget_files

# ---- VHD ------------------------------------------------------------------
make_family vhd "$T/v" 32
snapshot_files "${FAM_BASES[@]}"
cp "$T/v.base-raw" "$T/v.model"
layerfs_mount "$m" "$T/v" "${FAM_FIRST[@]}"
scribble "$m/$FAM_CHAIN/disk" "$T/v.model" v1 80
expect_same "$m/$FAM_CHAIN/disk" "$T/v.model" "vhd: the disk = model"
layerfs_umount "$m"
check_top vhd "$FAM_TOP"
flat_of vhd "$FAM_TOP" "$T/v.flat"
expect_same "$T/v.flat" "$T/v.model" "vhd: 7zz e -tvhd ${FAM_TOP##*/} = model"
rm -f "$T/v.flat"
check_files
forget_files

# ---- VHDX -----------------------------------------------------------------
make_family vhdx "$T/x" 32
snapshot_files "${FAM_BASES[@]}"
cp "$T/x.base-raw" "$T/x.model"
layerfs_mount "$m" "$T/x" "${FAM_FIRST[@]}"
scribble "$m/$FAM_CHAIN/disk" "$T/x.model" x1 80
expect_same "$m/$FAM_CHAIN/disk" "$T/x.model" "vhdx: the disk = model"
layerfs_umount "$m"
layerfs_mount "$m" "$T/x"
expect_same "$m/$FAM_CHAIN/disk" "$T/x.model" "vhdx: layerfs reopens ${FAM_TOP##*/} = model"
expect_no_error "$m/.layerfs.log" "${FAM_TOP##*/}"
layerfs_umount "$m"
check_top vhdx "$FAM_TOP"
flat_of vhdx "$FAM_TOP" "$T/x.flat"
expect_same "$T/x.flat" "$T/x.model" "vhdx: 7zz e -tvhdx ${FAM_TOP##*/} = model"
rm -f "$T/x.flat"
# libvhdi: one vhdiN per layer, the highest is the top
m2=$T/vhdi
mkdir -p "$m2"
vhdimount -v -X allow_root "$FAM_TOP" "$m2" >"$T/vhdimount.err" 2>&1 &
track_pid $!
track_mount "$m2"
for i in $(seq 100); do
	grep -qs " $m2 fuse" /proc/self/mounts && break
	sleep 0.1
done
top=$(cd "$m2" && ls -1 vhdi* 2>/dev/null | sort -V | tail -1)
[ -n "$top" ] || fail "vhdimount shows nothing: $(tail -3 "$T/vhdimount.err" | tr '\n' '|')"
expect_same "$m2/$top" "$T/x.model" "vhdx: vhdimount's $top = model"
fusermount3 -u "$m2"
check_files
forget_files
finish
