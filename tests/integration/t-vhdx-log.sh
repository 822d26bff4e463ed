#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VHDX files with a dirty log (tests/tools/mkvhdx.py dirtylog): the active
# log sequence is replayed in memory, the file itself is never written,
# and the disk equals mkvhdx.py's expected content after the replay.
# Kinds: a BAT update, data and zero descriptors, a block past the end of
# the file until replayed, all of these with the sequence wrapping around
# the circular log (4096-byte sectors), a torn entry after the head, and
# only a torn entry (nothing to replay).  qemu-img, after qemu-io has
# replayed a copy, is a second oracle where qemu can (512-byte sectors,
# no wrap, no extension).  A sequence torn in the middle is refused with
# an error naming the file while the others mount.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io python3 cmp
require_script mkvhdx.py

img=$T/img exp=$T/expect
mkdir -p "$img" "$exp" "$T/qemu"
log() { python3 "$TOOLS/mkvhdx.py" dirtylog "$img/$1.vhdx" "${@:2}" \
	>/dev/null || fail "mkvhdx.py dirtylog $*"; }

log bat --kind bat --seed 1
log data --kind data --seed 2
log extend --kind extend --seed 3
log wrapall --kind all --wrap --lss 4096 --seed 4
log tornafter --kind data --torn after --seed 5
log tornonly --kind all --torn only --seed 6
log tornmiddle --kind all --torn middle --seed 7
mv "$img"/*.raw "$exp/"
good=(bat data extend wrapall tornafter tornonly)

# qemu replays the log when it opens a copy read-write
for n in bat data tornafter; do
	cp "$img/$n.vhdx" "$T/qemu/$n.vhdx"
	qemu-io -f vhdx -c 'read 0 512' "$T/qemu/$n.vhdx" >/dev/null ||
		fail "qemu-io could not replay $n.vhdx"
	qemu-img convert -f vhdx -O raw "$T/qemu/$n.vhdx" "$T/qemu/$n.raw" ||
		fail "qemu-img convert $n.vhdx"
done

snapshot_sums "$img"
layerfs_mount "$T/mnt" "$img"
m=$T/mnt
expect_dirs "$m" "${good[@]}"
for n in "${good[@]}"; do
	expect_same "$m/$n/disk" "$exp/$n.vhdx.raw" "$n = mkvhdx.py expectation"
	[ ! -f "$T/qemu/$n.raw" ] ||
		expect_same "$m/$n/disk" "$T/qemu/$n.raw" "$n = qemu after replay"
done
for n in bat data extend wrapall tornafter; do
	grep -F "$n.vhdx" "$MOUNT_ERR" | grep -qi 'replay' ||
		fail "$n.vhdx: no message about the replay on stderr"
done
ok "each replay is reported on stderr"
expect_error "$MOUNT_ERR" tornmiddle.vhdx 'torn|checksum|broken|sequence'
expect_error "$m/.layerfs.log" tornmiddle.vhdx 'torn|checksum|broken|sequence'

layerfs_umount "$m"
check_sums
finish
