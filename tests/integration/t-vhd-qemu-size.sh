#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Every fixed and dynamic VHD that layerimg writes (create, convert -O vhd)
# reads back with exactly the size asked for and the same bytes in
# qemu-img, 7-Zip and libvhdi (vhdiinfo, vhdimount), and every
# differencing layer over them in 7-Zip and libvhdi.  qemu sizes a VHD by
# its CHS geometry unless the creator application is one it trusts for
# the footer's current size: 100 MiB read as 104761344 bytes and 256 MiB
# as 268369920 (the backup GPT, in the last 33 sectors, was lost) while
# the creator was "lyfs".
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img 7zz vhdiinfo vhdimount python3 cmp
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

img=$T/img
mkdir -p "$img"
M=1048576

# Sources for convert: data in the first and the last 64 KiB, where a GPT
# and its backup live, and across a 2 MiB block boundary.
for mb in 100 256; do
	s=$T/src$mb.raw
	truncate -s $((mb * M)) "$s"
	pattern "$s" 0 65536 "head$mb"
	pattern "$s" $((2 * M - 4096)) 8192 "mid$mb"
	pattern "$s" $((mb * M - 65536)) 65536 "tail$mb"
	truncate -s $((mb * M)) "$T/zero$mb.raw"
done

for mb in 100 256; do
	"$LAYERIMG" create -f vhd "$img/c$mb-dyn.vhd" ${mb}M >/dev/null ||
		fail "layerimg create ${mb}M"
	"$LAYERIMG" create -f vhd --fixed "$img/c$mb-fix.vhd" ${mb}M \
		>/dev/null || fail "layerimg create --fixed ${mb}M"
	"$LAYERIMG" convert --no-progress -O vhd "$T/src$mb.raw" \
		"$img/v$mb-dyn.vhd" >/dev/null || fail "layerimg convert ${mb}M"
	"$LAYERIMG" convert --no-progress -O vhd --fixed "$T/src$mb.raw" \
		"$img/v$mb-fix.vhd" >/dev/null ||
		fail "layerimg convert --fixed ${mb}M"
done

# vhdimount FILE: the mount point; its highest vhdiN is the top layer
vhdi_mount() {
	local m=$T/vhdi-${1##*/}
	mkdir -p "$m"
	vhdimount -v -X allow_root "$1" "$m" >"$m.log" 2>&1 &
	track_pid $!
	track_mount "$m"
	for _ in $(seq 100); do
		grep -qs " $m fuse" /proc/self/mounts && break
		sleep 0.1
	done
	grep -qs " $m fuse" /proc/self/mounts ||
		fail "vhdimount ${1##*/}: $(tail -3 "$m.log" | tr '\n' '|')"
	VHDI_MNT=$m
	VHDI_TOP=$m/$(cd "$m" && ls -1 vhdi* | sort -V | tail -1)
}

# vhdiinfo's media size in bytes
vhdi_size() {
	vhdiinfo "$1" | sed -n 's/.*Media size.*(\([0-9]*\) bytes).*/\1/p'
}

# check_libs FILE MODEL WHAT: 7-Zip and libvhdi read MODEL's size and bytes
check_libs() {
	local f=$1 model=$2 what=$3 size got
	size=$(stat -c %s "$model")
	7zz e -so -tvhd "$f" >"$T/out.7z" 2>"$T/7z.err" ||
		fail "$what: 7zz e: $(tail -2 "$T/7z.err" | tr '\n' '|')"
	expect_same "$T/out.7z" "$model" "$what: 7-Zip reads $size bytes, the same"
	rm -f "$T/out.7z"
	got=$(vhdi_size "$f")
	[ "$got" = "$size" ] || fail "$what: vhdiinfo media size $got, not $size"
	vhdi_mount "$f"
	expect_same "$VHDI_TOP" "$model" "$what: vhdimount reads $size bytes, the same"
	fusermount3 -u "$VHDI_MNT"
}

# check_all FILE MODEL WHAT: qemu-img too
check_all() {
	local f=$1 model=$2 what=$3 size got
	size=$(stat -c %s "$model")
	got=$(qemu-img info -f vpc --output=json "$f" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
	[ "$got" = "$size" ] ||
		fail "$what: qemu-img virtual-size $got, not $size"
	ok "$what: qemu-img virtual-size $size"
	qemu-img convert -f vpc -O raw "$f" "$T/out.qemu" ||
		fail "$what: qemu-img convert"
	expect_same "$T/out.qemu" "$model" "$what: qemu-img convert reads the same"
	rm -f "$T/out.qemu"
	check_libs "$f" "$model" "$what"
}

for mb in 100 256; do
	for t in dyn fix; do
		check_all "$img/c$mb-$t.vhd" "$T/zero$mb.raw" "create ${mb}M $t"
		check_all "$img/v$mb-$t.vhd" "$T/src$mb.raw" "convert ${mb}M $t"
	done
	# a differencing layer over the converted disks: 7-Zip and libvhdi
	for t in dyn fix; do
		"$LAYERIMG" create -b "$img/v$mb-$t.vhd" "$img/d$mb-$t.vhd" \
			>/dev/null || fail "layerimg create -b v$mb-$t.vhd"
		check_libs "$img/d$mb-$t.vhd" "$T/src$mb.raw" \
			"differencing over convert ${mb}M $t"
	done
done
finish
