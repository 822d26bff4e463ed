#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg rebase rewrites a layer's parent reference ("reconnect to
# parent").  For VHD, VHDX and QCOW2 chains (write-lib.sh's families,
# written through layerfs): the parent is moved to another directory
# under another name, so layerfs no longer resolves the chain (the mount
# reports it); rebase -b points the top at it, and the chain mounts
# (-o allow_outside) and reads the original sha256.  The parent is then
# renamed inside the image directory and the top rebased again: the
# independent readers (qemu-img for QCOW2, 7zz for VHD and VHDX, which
# follow the rewritten locators) read the original sha256 too; qemu-img
# info shows the new backing file; vhdcheck.py/vhdxcheck.py accept the
# top (with --parent: the recorded UUID and time stamp).  A parent with
# another identity (VHD UUID, VHDX linkage) is refused (exit 1, the top
# unchanged) and accepted with --unsafe, which records its identity.
# The files a crash inside a rebase can leave (rebuilt from the file
# before and after it) read as the old or the new reference, whole.
# Refusals: a base image, a layer as its own parent, a loop, bad usage.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/write-lib.sh"
require_fuse
require qemu-img 7zz python3
require_script vhdcheck.py
require_script vhdxcheck.py
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"
[ -x "$LAYERIMG" ] || fail "$LAYERIMG is not an executable"

## usage
"$LAYERIMG" rebase --help | grep -q '^Usage: layerimg rebase' ||
	fail "rebase --help"
rc=0; "$LAYERIMG" rebase "$T/x.vhd" 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "rebase without -b: exit $rc, expected 2"
rc=0; "$LAYERIMG" rebase -b "$T/x" 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "rebase without TOP: exit $rc, expected 2"
ok "rebase --help exits 0; bad usage exits 2"

# top_check FAM TOP PARENT: the format's checker accepts TOP
top_check() {
	local fam=$1 top=$2 parent=$3 out=$T/tc.out
	case $fam in
	vhd)	python3 "$TOOLS/vhdcheck.py" "$top" --parent "$parent" >"$out" 2>&1 ||
			fail "vhdcheck.py $top --parent $parent: $(head -5 "$out" | tr '\n' '|')"
		ok "vhdcheck.py ${top##*/} --parent ${parent##*/}: clean" ;;
	vhdx)	python3 "$TOOLS/vhdxcheck.py" "$top" >"$out" 2>&1 ||
			fail "vhdxcheck.py $top: $(head -5 "$out" | tr '\n' '|')"
		ok "vhdxcheck.py ${top##*/}: clean" ;;
	qcow2)	check_top qcow2 "$top" ;;
	esac
}

# imposter FAM OUT: a base image of the same size with other content
imposter() {
	local fam=$1 out=$2
	make_base_raw "$T/imp.raw" 24
	pattern "$T/imp.raw" $((5 * 1024 * 1024)) 300000 imposter
	case $fam in
	vhd)	qemu-img convert -q -f raw -O vpc \
			-o subformat=dynamic,force_size=on "$T/imp.raw" "$out" ;;
	vhdx)	qemu-img convert -q -f raw -O vhdx "$T/imp.raw" "$out" ;;
	esac || fail "qemu-img convert $out"
}

# splice DST SRC OFF LEN [SRCOFF]: LEN bytes of SRC (at SRCOFF, default
# OFF) over DST at OFF
splice() {
	python3 - "$@" <<'PY' || fail "splice $*"
import os, sys
dst, src, off, ln = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
soff = int(sys.argv[5]) if len(sys.argv) > 5 else off
with open(src, "rb") as f:
    f.seek(soff)
    b = f.read(ln)
assert len(b) == ln
fd = os.open(dst, os.O_WRONLY)
os.pwrite(fd, b, off)
os.close(fd)
PY
}

# crash_states FAM DIR TOP PRE WANT: the files a crash inside the rebase
# of TOP (PRE: TOP before it, naming ../FAM-moved/renamed-base.EXT, which
# no longer exists) can leave, rebuilt from the two, read as the old or
# the new reference, whole (see the crash-safety notes of the drivers).
crash_states() {
	local fam=$1 dir=$2 top=$3 pre=$4 want=$5 st psize
	local old new mc=$T/mc
	psize=$(stat -c %s "$pre")
	case $fam in
	vhd)	# before the footer switch: both footers as before
		old=$dir/crash-old.vhd; cp "$top" "$old"
		splice "$old" "$pre" $(($(stat -c %s "$old") - 512)) 512 $((psize - 512))
		splice "$old" "$pre" 0 512
		python3 "$TOOLS/vhdcheck.py" "$old" >"$T/cs.out" 2>&1 ||
			fail "vhd: crash before the footer switch: vhdcheck.py: $(head -3 "$T/cs.out" | tr '\n' '|')"
		# between the two footer writes: the copy at 0 still old
		new=$dir/crash-new.vhd; cp "$top" "$new"
		splice "$new" "$pre" 0 512 ;;
	vhdx)	# before the region table switch: both tables as before
		old=$dir/crash-old.vhdx; cp "$top" "$old"
		splice "$old" "$pre" $((192 * 1024)) $((128 * 1024))
		python3 "$TOOLS/vhdxcheck.py" "$old" >"$T/cs.out" 2>&1 ||
			fail "vhdx: crash before the table switch: vhdxcheck.py: $(head -3 "$T/cs.out" | tr '\n' '|')"
		# between the two table writes: table 2 still old
		new=$dir/crash-new.vhdx; cp "$top" "$new"
		splice "$new" "$pre" $((256 * 1024)) $((64 * 1024)) ;;
	qcow2)	# before the header sector: the new name written, unused
		old=$dir/crash-old.qcow2; cp "$top" "$old"
		splice "$old" "$pre" 0 512
		qemu-img info "$old" >"$T/cs.out" 2>&1 || fail "qemu-img info $old"
		grep -q "^backing file: \.\./qcow2-moved/renamed-base\.qcow2" "$T/cs.out" ||
			fail "qcow2: crash before the header write: $(grep backing "$T/cs.out" | tr '\n' '|')"
		new= ;;
	esac
	layerfs_mount "$mc" "$dir"
	expect_error "$mc/.layerfs.log" "${old##*/}" 'parent not found.*renamed-base'
	if [ -n "$new" ]; then
		st=${new##*/}
		expect_sha "$mc/${st%.*}/disk" "$want" "$fam: crash state ${st%.*} reads the new parent"
	fi
	layerfs_umount "$mc"
	ok "$fam: crash states of the rebase hold the old or the new reference, whole"
	rm -f "$old" ${new:+"$new"}
}

for fam in vhd vhdx qcow2; do
	dir=$T/$fam
	make_family "$fam" "$dir" 24
	parent=${FAM_BASES[0]}
	ext=${parent##*.}
	top=$FAM_TOP
	tname=${top##*/}
	model=$T/$fam.model
	cp "$dir.base-raw" "$model"

	m=$T/m-$fam
	layerfs_mount "$m" "$dir" "${FAM_FIRST[@]}"
	scribble "$m/$FAM_CHAIN/disk" "$model" "rebase-$fam" 30
	want=$(sha_of "$model")
	expect_sha "$m/$FAM_CHAIN/disk" "$want" "$fam: the written chain = model"
	layerfs_umount "$m"

	# the parent moves away: the chain no longer resolves
	mkdir -p "$T/$fam-moved"
	moved=$T/$fam-moved/renamed-base.$ext
	mv "$parent" "$moved"
	layerfs_mount "$m" "$dir"
	[ ! -e "$m/$FAM_CHAIN" ] || fail "$fam: $FAM_CHAIN mounted without its parent"
	expect_error "$m/.layerfs.log" "$tname" 'parent not found'
	layerfs_umount "$m"

	# reconnect: another directory, another name
	"$LAYERIMG" rebase -b "$moved" "$top" >"$T/rb.out" 2>"$T/rb.err" ||
		fail "$fam: rebase -b $moved: $(tr '\n' '|' <"$T/rb.err")"
	grep -q "parent is now" "$T/rb.out" || fail "$fam: rebase printed: $(cat "$T/rb.out")"
	ok "$fam: rebase -b ../$fam-moved/${moved##*/} $tname exits 0"
	layerfs_mount "$m" "$dir" -o allow_outside
	expect_sha "$m/$FAM_CHAIN/disk" "$want" "$fam: after the rebase, layerfs $FAM_CHAIN/disk"
	expect_no_error "$m/.layerfs.log" "$tname"
	layerfs_umount "$m"
	top_check "$fam" "$top" "$moved"
	if [ "$fam" = qcow2 ]; then
		qemu-img info "$top" >"$T/info.out" 2>&1 || fail "qemu-img info $top"
		grep -q "^backing file: \.\./qcow2-moved/renamed-base\.qcow2\( \|$\)" "$T/info.out" ||
			fail "qemu-img info: $(grep -i backing "$T/info.out" | tr '\n' '|')"
		grep -qx "backing file format: qcow2" "$T/info.out" ||
			fail "qemu-img info: no backing format qcow2"
		ok "qemu-img info: backing file ../qcow2-moved/renamed-base.qcow2, format qcow2"
		flat_of qcow2 "$top" "$T/flat"
		expect_sha "$T/flat" "$want" "$fam: qemu-img convert $tname (new backing file)"
	fi

	# back into the image directory under a third name: the independent
	# readers follow the rewritten references
	back=$dir/moved-back.$ext
	mv "$moved" "$back"
	cp "$top" "$T/pre.$ext"
	"$LAYERIMG" rebase -b "$back" "$top" >/dev/null 2>"$T/rb.err" ||
		fail "$fam: rebase -b $back: $(tr '\n' '|' <"$T/rb.err")"
	crash_states "$fam" "$dir" "$top" "$T/pre.$ext" "$want"
	flat_of "$fam" "$top" "$T/flat"
	expect_sha "$T/flat" "$want" "$fam: after the second rebase, ${FAM_TOP##*/} read by qemu-img/7zz"
	top_check "$fam" "$top" "$back"
	layerfs_mount "$m" "$dir"
	expect_sha "$m/$FAM_CHAIN/disk" "$want" "$fam: layerfs $FAM_CHAIN/disk (parent in the directory)"
	layerfs_umount "$m"

	# a layer cannot become its own parent; a base has no parent to change
	rc=0
	"$LAYERIMG" rebase -b "$top" "$top" >/dev/null 2>"$T/self.err" || rc=$?
	[ "$rc" = 1 ] || fail "$fam: rebase onto itself: exit $rc, expected 1"
	expect_error "$T/self.err" "$tname" 'own parent'
	rc=0
	"$LAYERIMG" rebase -b "$top" "$back" >/dev/null 2>"$T/base.err" || rc=$?
	[ "$rc" = 1 ] || fail "$fam: rebase of a base image: exit $rc, expected 1"
	expect_error "$T/base.err" "${back##*/}" 'not a differencing image'

	[ "$fam" = qcow2 ] && continue	# QCOW2 records no parent identity

	# another parent identity: refused, then --unsafe
	imp=$dir/imposter.$ext
	imposter "$fam" "$imp"
	tsum=$(sha_of "$top")
	rc=0
	"$LAYERIMG" rebase -b "$imp" "$top" >/dev/null 2>"$T/imp.err" || rc=$?
	[ "$rc" = 1 ] || fail "$fam: rebase onto an imposter: exit $rc, expected 1"
	expect_error "$T/imp.err" "$tname" 'not the parent it was made over.*--unsafe'
	[ "$(sha_of "$top")" = "$tsum" ] || fail "$fam: refused rebase changed $tname"
	ok "$fam: refused rebase left $tname unchanged"
	"$LAYERIMG" rebase --unsafe -b "$imp" "$top" >/dev/null 2>"$T/imp.err" ||
		fail "$fam: rebase --unsafe: $(tr '\n' '|' <"$T/imp.err")"
	expect_warning "$T/imp.err" "$tname" 'unsafe'
	top_check "$fam" "$top" "$imp"
	flat_of "$fam" "$top" "$T/flat"
	isum=$(sha_of "$T/flat")
	[ "$isum" != "$want" ] || fail "$fam: the imposter changed nothing"
	layerfs_mount "$m" "$dir"
	expect_sha "$m/$FAM_CHAIN/disk" "$isum" "$fam: --unsafe: layerfs reads $tname over the imposter as 7zz does"
	expect_no_error "$m/.layerfs.log" "$tname"
	layerfs_umount "$m"
	rm -f "$T/flat" "$T/imp.raw"
done

## a loop: rebase a layer onto its own child
dir=$T/qcow2
(cd "$dir" && qemu-img create -q -f qcow2 -b vm-L2.qcow2 -F qcow2 vm-L3.qcow2) ||
	fail "qemu-img create vm-L3.qcow2"
rc=0
"$LAYERIMG" rebase -u -b "$dir/vm-L3.qcow2" "$dir/vm-L2.qcow2" >/dev/null 2>"$T/loop.err" || rc=$?
[ "$rc" = 1 ] || fail "rebase onto its own child: exit $rc, expected 1"
expect_error "$T/loop.err" vm-L2.qcow2 'loop'

finish
