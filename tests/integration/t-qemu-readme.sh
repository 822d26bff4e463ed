#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The README's qemu-system-x86_64 lines, as written, accept a layerfs disk.
#
# A QCOW2 chain win11-L2 <- win11-L3 is mounted -o rw: win11-L2/disk is
# read-only (L3 depends on it), win11-L3/disk writable.  Each
# "qemu-system-x86_64 ..." line of the README's code blocks runs with
# MNT replaced by the mount point, paused before the guest starts (-S,
# TCG, no display), and answers "info block" on its monitor:
#   - the drive is there, raw, on the mounted disk; read-only where the
#     line says readonly=on; a temporary overlay over the disk for
#     snapshot=on; writable otherwise;
#   - qemu exits 0 after "quit".
# The spelling the README used to give (readonly=on on the default IDE
# bus) must still be refused, so that the test shows why the README says
# if=virtio.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-system-x86_64 qemu-img timeout

mkdir "$T/img"
qemu-img create -q -f qcow2 "$T/img/win11-L2.qcow2" 32M
qemu-img create -q -f qcow2 -b win11-L2.qcow2 -F qcow2 "$T/img/win11-L3.qcow2"
layerfs_mount "$T/mnt" "$T/img" -o rw
MNT=$T/mnt

# qemu_info NAME ARGS...: run qemu paused with ARGS, "info block", quit
qemu_info() {
	local name=$1
	shift
	printf 'info block\nquit\n' |
		timeout 60 qemu-system-x86_64 -machine accel=tcg -S -nographic \
			-display none -serial none -monitor stdio "$@" \
			>"$T/$name.out" 2>"$T/$name.err"
}

lines=$(sed -n 's/^\(qemu-system-x86_64 .*\)$/\1/p' "$SRCDIR/README.md")
[ -n "$lines" ] || fail "no qemu-system-x86_64 line in README.md"
n=0
while IFS= read -r line; do
	n=$((n + 1))
	line=${line%%#*}	# the comment
	line=${line//MNT/$MNT}
	read -r -a argv <<<"$line"
	drive=
	for a in "${argv[@]}"; do
		[[ $a == file=* ]] && drive=$a
	done
	[ -n "$drive" ] || fail "README qemu line $n has no -drive file=...: $line"
	if [[ $line == *" -bios "* ]]; then
		bios=$(sed -n 's/.* -bios \([^ ]*\).*/\1/p' <<<"$line")
		[ -f "$bios" ] || skip "$bios is missing (Debian package ovmf)"
	fi
	disk=${drive#file=}
	disk=${disk%%,*}
	[ -e "$disk" ] || fail "README qemu line $n: $disk is not in the mount"
	qemu_info "line$n" "${argv[@]:1}" ||
		fail "README qemu line $n refused: ${line#"$MNT"}: $(tr '\n' '|' <"$T/line$n.err")"
	info=$(tr -d '\r' <"$T/line$n.out")
	if [[ $drive == *snapshot=on* ]]; then
		grep -q "Backing file: *$disk" <<<"$info" ||
			fail "README qemu line $n: no overlay over $disk: $(tr '\n' '|' <<<"$info")"
		what="a temporary overlay over the disk"
	elif [[ $drive == *readonly=on* ]]; then
		grep -qF "$disk (raw, read-only)" <<<"$info" ||
			fail "README qemu line $n: $disk not read-only raw: $(tr '\n' '|' <<<"$info")"
		what="read-only"
	else
		grep -qF "$disk (raw)" <<<"$info" ||
			fail "README qemu line $n: $disk not writable raw: $(tr '\n' '|' <<<"$info")"
		what="writable"
	fi
	ok "README qemu line $n starts: ${disk#"$MNT"/} $what"
done <<<"$lines"
[ "$n" -ge 3 ] || fail "README.md has $n qemu lines, expected 3 or more"

# the old spelling: a read-only disk on the default IDE bus
if qemu_info old -drive "file=$MNT/win11-L2/disk,format=raw,readonly=on,cache=none,aio=native"; then
	fail "qemu now takes a read-only IDE disk: the README can say so again"
fi
grep -qi 'read-only' "$T/old.err" ||
	fail "the old README spelling failed for another reason: $(tr '\n' '|' <"$T/old.err")"
ok "the old spelling (read-only on IDE) is still refused: $(head -1 "$T/old.err")"

layerfs_umount "$MNT"
finish
