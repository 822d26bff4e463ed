#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-trust-depth: chain depth, loops and the log's summary do not depend on
# the order of the scan.
#   - 110 qcow2 images n1 <- n2 <- ... <- n110 (qemu-img create -b): the
#     scan meets n1, n10, n100, ... first, yet every chain of depth <= 64
#     (n1..n64) mounts and reads as qemu-img reads it, and each deeper one
#     (n65..n110) is refused with a line naming it;
#   - a 3-cycle a -> b -> c -> a: each member is named, and one line names
#     all three;
#   - a directory with hundreds of refused files: .layerfs.log is cut at
#     64 KiB, but its summary still names every refused file.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img qemu-io

## 1. 110 chained images
d=$T/deep
mkdir -p "$d"
qemu-img create -q -f qcow2 "$d/n1.qcow2" 2M || fail "qemu-img create n1"
qemu-io -f qcow2 -c 'write -P 0x01 0 64k' "$d/n1.qcow2" >/dev/null
for i in $(seq 2 110); do
	(cd "$d" && qemu-img create -q -f qcow2 -b "n$((i - 1)).qcow2" -F qcow2 \
		"n$i.qcow2") || fail "qemu-img create n$i"
done
qemu-io -f qcow2 -c 'write -P 0x40 64k 4k' "$d/n40.qcow2" >/dev/null
qemu-io -f qcow2 -c 'write -P 0x64 128k 4k' "$d/n64.qcow2" >/dev/null

m=$T/m1
layerfs_mount "$m" "$d"
want=()
for i in $(seq 1 64); do
	want+=("n$i")
done
expect_dirs "$m" "${want[@]}"
for i in 36 40 64; do
	qemu-img convert -O raw "$d/n$i.qcow2" "$T/n$i.raw"
	expect_same "$m/n$i/disk" "$T/n$i.raw" "n$i (depth $i) reads as qemu-img reads it"
done
grep -q '^layers: 64 ' "$m/n64/info" ||
	fail "n64/info: $(grep '^layers' "$m/n64/info"), expected 64 layers"
for i in $(seq 65 110); do
	_lines_naming error "$m/.layerfs.log" "n$i.qcow2" |
		grep -q 'deeper than 64 layers' ||
		fail "no error naming n$i.qcow2 as deeper than 64 layers"
done
ok "n65..n110 each refused with a line naming it (deeper than 64 layers)"
for i in $(seq 1 64); do
	expect_no_error "$m/.layerfs.log" "n$i.qcow2"
done
ok "no error about n1..n64"
layerfs_umount "$m"

# the same with a smaller limit: depth is each chain's own
m=$T/m1b
layerfs_mount "$m" "$d" -o max_depth=5
expect_dirs "$m" n1 n2 n3 n4 n5
layerfs_umount "$m"

## 2. a 3-cycle
d=$T/cycle
mkdir -p "$d"
qemu-img create -q -f qcow2 "$d/ca.qcow2" 2M
(cd "$d" && qemu-img create -q -f qcow2 -b ca.qcow2 -F qcow2 cb.qcow2 &&
	qemu-img create -q -f qcow2 -b cb.qcow2 -F qcow2 cc.qcow2 &&
	qemu-img rebase -q -u -b cc.qcow2 -F qcow2 ca.qcow2) ||
	fail "cannot make the cycle"
qemu-img create -q -f qcow2 "$d/ok.qcow2" 2M
m=$T/m2
layerfs_mount "$m" "$d"
expect_dirs "$m" ok
for n in ca cb cc; do
	expect_error "$m/.layerfs.log" "$n.qcow2" "loop"
done
grep '^error: .*loop' "$m/.layerfs.log" | grep 'ca\.qcow2 .*ca\.qcow2' |
	grep 'cb\.qcow2' | grep -q 'cc\.qcow2' ||
	fail "no line names the whole cycle ca -> ... -> ca"
ok "a line names the whole cycle: $(grep -o 'ca\.qcow2 -> .*' "$m/.layerfs.log" | head -1)"
layerfs_umount "$m"

## 3. many refused files: the summary outlives the 64 KiB cut
d=$T/many
mkdir -p "$d"
long=with-a-rather-long-name-to-fill-the-log-quickly-$(printf 'x%.0s' $(seq 40))
qemu-img create -q -f qcow2 -u -b "$T/gone.qcow2" -F qcow2 \
	"$T/orphan.qcow2" 1M || fail "cannot make an orphan"
n=400
for i in $(seq -w 1 $n); do
	cp "$T/orphan.qcow2" "$d/f$i-$long.qcow2"
done
qemu-img create -q -f qcow2 "$d/fine.qcow2" 1M
m=$T/m3
layerfs_mount "$m" "$d"
expect_dirs "$m" fine
cat "$m/.layerfs.log" >"$T/many.log"
grep -q '(log truncated)' "$T/many.log" ||
	fail "the log was not cut: $(wc -c <"$T/many.log") bytes"
grep -q "^summary: $n file(s) left out" "$T/many.log" ||
	fail "no summary line for $n files: $(grep '^summary' "$T/many.log")"
for i in $(seq -w 1 $n); do
	grep -q "^left out: $d/f$i-$long.qcow2: " "$T/many.log" ||
		fail "the summary does not name f$i-...qcow2"
done
ok ".layerfs.log ($(wc -c <"$T/many.log") bytes) is cut, yet its summary names all $n refused files"
layerfs_umount "$m"

finish
