#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-lock-qemu: layerfs, layerimg and qemu honour one another's image locks
# (qemu's OFD permission bytes from 100 and "shared-deny" bytes from 200).
#  (a) a -o rw mount: qemu-io cannot write its writable top nor its
#      read-only layer; qemu-img info reads the read-only layer and, as for
#      any image qemu runs, refuses the writable top unless -U
#  (b) qemu-io holding a top writable: a -o rw mount, and a read-only one,
#      leave that chain out with "is locked for writing by another process
#      (qemu-io, pid N)" in .layerfs.log; the other chains mount
#  (c) two -o rw mounts of one directory: the second leaves out the chains
#      the first writes, and serves the shared read-only layer
#  (d) layerimg commit, rebase and check --repair on a mounted chain are
#      refused and change nothing; info/check of a writable top are refused
#      without -U and work with -U and a warning; info of a read-only layer
#      works; after the unmount everything is free again
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io mkfifo
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

D=$T/img
mkdir -p "$D"
qemu-img create -q -f qcow2 "$D/base-L0.qcow2" 16M
qemu-io -f qcow2 -c 'write -P 0xa5 0 1M' "$D/base-L0.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base-L0.qcow2 -F qcow2 "$D/base-L1.qcow2"
qemu-io -f qcow2 -c 'write -P 0x5a 512k 64k' "$D/base-L1.qcow2" >/dev/null
qemu-img create -q -f qcow2 "$D/other.qcow2" 8M

# has_line FILE ERE: FILE has a line matching ERE
has_line() { grep -Eq -- "$2" "$1"; }
chains_of() { ls "$1" | tr '\n' ' '; }

# ---- (a) a writable mount against qemu -----------------------------------
M1=$T/m1
layerfs_mount "$M1" "$D" -o rw,rw_base=other
[ "$(chains_of "$M1")" = "base-L0 base-L1 other " ] ||
	fail "(a) chains: $(chains_of "$M1")"
printf 'through the mount' | dd of="$M1/base-L1/disk" bs=512 seek=10 \
	conv=notrunc status=none || fail "(a) the writable top cannot be written"
ok "(a) -o rw mounts every chain; its top takes writes"

if qemu-io -f qcow2 -c 'write 0 4k' "$D/base-L1.qcow2" >"$T/qio.err" 2>&1; then
	fail "(a) qemu-io wrote into the top a mount writes"
fi
has_line "$T/qio.err" 'Failed to get "write" lock' ||
	fail "(a) qemu-io: $(cat "$T/qio.err")"
if qemu-io -f qcow2 -c 'write 0 4k' "$D/base-L0.qcow2" >"$T/qio.err" 2>&1; then
	fail "(a) qemu-io wrote into a read-only layer of a mount"
fi
has_line "$T/qio.err" 'Failed to get "write" lock' ||
	fail "(a) qemu-io on the base: $(cat "$T/qio.err")"
ok "(a) qemu-io cannot write the top nor the base: \"write\" lock"

qemu-img info "$D/base-L0.qcow2" >"$T/info.out" 2>&1 ||
	fail "(a) qemu-img info of a read-only layer: $(cat "$T/info.out")"
if qemu-img info "$D/base-L1.qcow2" >"$T/info.out" 2>&1; then
	fail "(a) qemu-img info read a top a mount writes, without -U"
fi
has_line "$T/info.out" 'Failed to get shared "write" lock' ||
	fail "(a) qemu-img info of the top: $(cat "$T/info.out")"
qemu-img info -U "$D/base-L1.qcow2" >/dev/null ||
	fail "(a) qemu-img info -U of the top"
ok "(a) qemu-img info reads the base; the writable top only with -U"

# ---- (c) a second writable mount of the same directory ------------------
M2=$T/m2
layerfs_mount "$M2" "$D" -o rw
[ "$(chains_of "$M2")" = "base-L0 " ] ||
	fail "(c) second mount serves: $(chains_of "$M2")"
for f in base-L1 other; do
	has_line "$M2/.layerfs.log" "$f\.qcow2: is locked for writing by another process \(layerfs, pid [0-9]+\)" ||
		fail "(c) no lock message for $f: $(cat "$M2/.layerfs.log")"
done
cmp -n 1048576 "$M1/base-L0/disk" "$M2/base-L0/disk" ||
	fail "(c) the shared base reads differently"
layerfs_umount "$M2"
ok "(c) a second -o rw mount leaves out what the first writes, logged"

# ---- (d) layerimg against a mounted chain --------------------------------
snapshot_sums "$D"
sync
if "$LAYERIMG" commit "$D/base-L1.qcow2" >"$T/out" 2>"$T/err"; then
	fail "(d) commit of a mounted chain succeeded"
fi
has_line "$T/err" 'is locked (for|against) writing by another process \(layerfs, pid [0-9]+\)' ||
	fail "(d) commit: $(cat "$T/err")"
if "$LAYERIMG" rebase -u -b "$D/base-L0.qcow2" "$D/base-L1.qcow2" \
	>"$T/out" 2>"$T/err"; then
	fail "(d) rebase of a mounted top succeeded"
fi
has_line "$T/err" 'base-L1\.qcow2: is locked for writing by another process' ||
	fail "(d) rebase: $(cat "$T/err")"
if "$LAYERIMG" check --repair "$D/other.qcow2" >"$T/out" 2>"$T/err"; then
	fail "(d) check --repair of a mounted top succeeded"
fi
has_line "$T/err" 'other\.qcow2: is locked for writing by another process' ||
	fail "(d) check --repair: $(cat "$T/err")"
ok "(d) commit, rebase, check --repair of a mounted chain are refused"

if "$LAYERIMG" info "$D/base-L1.qcow2" >"$T/out" 2>"$T/err"; then
	fail "(d) info of a written top succeeded without -U"
fi
has_line "$T/err" 'base-L1\.qcow2: is locked for writing by another process \(layerfs, pid [0-9]+\)' ||
	fail "(d) info: $(cat "$T/err")"
"$LAYERIMG" info -U "$D/base-L1.qcow2" >"$T/out" 2>"$T/err" ||
	fail "(d) info -U: $(cat "$T/err")"
has_line "$T/err" 'warning: .*base-L1\.qcow2: is locked for writing by another process.*--force-share' ||
	fail "(d) info -U gave no warning: $(cat "$T/err")"
has_line "$T/out" 'base-L0\.qcow2' || fail "(d) info -U shows no chain"
"$LAYERIMG" map --force-share "$D/base-L1.qcow2" >/dev/null 2>&1 ||
	fail "(d) map --force-share"
"$LAYERIMG" check -U "$D/other.qcow2" >"$T/out" 2>&1 ||
	fail "(d) check -U: $(cat "$T/out")"
if "$LAYERIMG" check "$D/other.qcow2" >"$T/out" 2>&1; then
	fail "(d) check of a written top succeeded without -U"
fi
"$LAYERIMG" info "$D/base-L0.qcow2" >"$T/out" 2>"$T/err" ||
	fail "(d) info of a read-only layer: $(cat "$T/err")"
ok "(d) info/map/check: refused on a written top, -U reads it with a warning"

check_sums
layerfs_umount "$M1"
qemu-img check "$D/base-L1.qcow2" >/dev/null ||
	fail "(d) qemu-img check after the unmount"
"$LAYERIMG" info "$D/base-L1.qcow2" >/dev/null 2>&1 ||
	fail "(d) info after the unmount"
ok "(d) the refused commands changed nothing; the locks end with the mount"

# ---- (b) qemu holds a top writable ----------------------------------------
mkfifo "$T/fifo"
qemu-io -f qcow2 "$D/base-L1.qcow2" <"$T/fifo" >"$T/qio.out" 2>&1 &
qpid=$!
track_pid "$qpid"
exec 9>"$T/fifo"
for _ in $(seq 100); do		# until it holds its write lock
	qemu-img info "$D/base-L1.qcow2" >/dev/null 2>&1 || break
	sleep 0.1
done
kill -0 "$qpid" 2>/dev/null || fail "(b) qemu-io exited: $(cat "$T/qio.out")"

M3=$T/m3
layerfs_mount "$M3" "$D" -o rw
[ "$(chains_of "$M3")" = "base-L0 other " ] ||
	fail "(b) -o rw mount serves: $(chains_of "$M3")"
has_line "$M3/.layerfs.log" "base-L1\.qcow2: is locked for writing by another process \(qemu-io, pid $qpid\)" ||
	fail "(b) .layerfs.log: $(cat "$M3/.layerfs.log")"
layerfs_umount "$M3"
M4=$T/m4
layerfs_mount "$M4" "$D"
[ "$(chains_of "$M4")" = "base-L0 other " ] ||
	fail "(b) read-only mount serves: $(chains_of "$M4")"
has_line "$M4/.layerfs.log" "base-L1\.qcow2: is locked for writing by another process \(qemu-io, pid $qpid\)" ||
	fail "(b) read-only .layerfs.log: $(cat "$M4/.layerfs.log")"
layerfs_umount "$M4"
ok "(b) a top qemu writes is left out of rw and ro mounts, holder named"

echo quit >&9
exec 9>&-
wait "$qpid" || fail "(b) qemu-io exited with $?"
M5=$T/m5
layerfs_mount "$M5" "$D" -o rw
[ "$(chains_of "$M5")" = "base-L0 base-L1 other " ] ||
	fail "(b) after qemu-io quit: $(chains_of "$M5")"
layerfs_umount "$M5"
ok "(b) once qemu-io has quit the chain mounts again"
finish
