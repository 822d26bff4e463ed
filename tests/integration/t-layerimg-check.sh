#!/bin/bash
# t-layerimg-check.sh: layerimg check finds what independent checkers find.
#
# qcow2: qemu-img check is the oracle, on clean qemu-made images and on
# copies damaged one way each (leaks, an L2 entry past the end, two guest
# clusters sharing one host cluster, a used cluster with refcount 0): both
# must classify each file the same (clean / leaks / errors), with the same
# exit codes (0 clean, 1 not checked, 2 errors, 3 leaks, 63 no checker).
# -r leaks (and -r all, --repair) of leaks leaves qemu-img check clean and
# the data unchanged; -r leaks leaves errors alone; repairing a base layer
# is refused.
# vhd, vhdx: tests/tools/vhdcheck.py and vhdxcheck.py (written from the
# specs, sharing no code with the drivers) on images from qemu-img,
# mkvhd.py and mkvhdx.py, clean and damaged in one field each: both must
# agree, and our error line must name the structure.  VHD footer repairs
# restore the original bytes.  Android sparse: img2simg and mksimg.py
# images, CRC32 chunks.  The shared vectors: clean, or the findings known
# for them (hand-edited or fuzzed files).
. "${0%/*}/lib.sh"
require qemu-img qemu-io python3 img2simg cmp
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

L() { "$LAYERIMG" "$@"; }
# our exit status for FILE (stderr kept in $T/last.err)
ours() { set +e; L check -q "$@" 2>"$T/last.err" >/dev/null; echo $?; set -e; }
# qemu-img check's status: ours is the same
qemu_mapped() {
	local r
	set +e
	(cd "$(dirname "$1")" && qemu-img check -q "$(basename "$1")" \
		>/dev/null 2>&1)
	r=$?
	set -e
	echo "$r"
}
py_check() { set +e; python3 "$TOOLS/$1" -q "$2" >/dev/null; echo $?; set -e; }
expect_line() {	# ERE in the last stderr
	grep -Eq "$1" "$T/last.err" ||
		fail "$2: no line matching '$1' in: $(cat "$T/last.err")"
}

# ---- usage ----
L check --help | grep -q '^Usage: layerimg check' || fail "check --help"
set +e; L check >/dev/null 2>&1; r=$?; set -e
[ "$r" -eq 1 ] || fail "check without IMAGE: exit $r, not 1"
[ "$(ours "$T/missing.qcow2")" -eq 1 ] || fail "missing file: not exit 1"
ok "usage and exit 1 (qemu-img check's 'not checked')"

# ---- qcow2 against qemu-img check ----
cat >"$T/q2patch.py" <<'EOF'
import struct, sys
def rd(f, off, n):
    f.seek(off)
    return f.read(n)
def hdr(f):
    h = rd(f, 0, 112)
    ver = struct.unpack('>I', h[4:8])[0]
    order = struct.unpack('>I', h[96:100])[0] if ver >= 3 else 4
    return (struct.unpack('>I', h[20:24])[0], struct.unpack('>Q', h[40:48])[0],
            struct.unpack('>Q', h[48:56])[0], order)
MASK = 0x00fffffffffffe00
def l2off(f):
    return struct.unpack('>Q', rd(f, hdr(f)[1], 8))[0] & MASK
def rc_pos(f, cluster):
    cb, _, rt, order = hdr(f)
    assert order == 4, 'patcher handles 16-bit refcounts only'
    per = (1 << cb) // 2
    blk = struct.unpack('>Q', rd(f, rt + 8 * (cluster // per), 8))[0]
    return blk + 2 * (cluster % per)
def put(f, off, fmt, v):
    f.seek(off)
    f.write(struct.pack(fmt, v))
p, what = sys.argv[1], sys.argv[2]
with open(p, 'r+b') as f:
    cb = hdr(f)[0]
    f.seek(0, 2)
    end = f.tell()
    e0 = struct.unpack('>Q', rd(f, l2off(f), 8))[0]
    if what == 'leak-hdr':        # header cluster: refcount 2, 1 reference
        put(f, rc_pos(f, 0), '>H', 2)
    elif what == 'leak-tail':     # a cluster appended with refcount 1, unused
        n = (end + (1 << cb) - 1) >> cb
        f.truncate((n + 1) << cb)
        put(f, rc_pos(f, n), '>H', 1)
    elif what == 'leak-l2':       # L2 table refcount 2: a leak, and COPIED wrong
        put(f, rc_pos(f, l2off(f) >> cb), '>H', 2)
    elif what == 'l2-past-eof':   # guest cluster 0's data far past the end
        new = (e0 & ~MASK) | ((end + (100 << cb)) & ~((1 << cb) - 1))
        put(f, l2off(f), '>Q', new)
    elif what == 'overlap':       # guest cluster 1 shares cluster 0's data
        put(f, l2off(f) + 8, '>Q', e0)
    elif what == 'rc-zero':       # a used data cluster with refcount 0
        put(f, rc_pos(f, (e0 & MASK) >> cb), '>H', 0)
    elif what == 'l1-reserved':   # L1 entry 0 with a reserved bit set
        put(f, hdr(f)[1], '>Q', struct.unpack('>Q', rd(f, hdr(f)[1], 8))[0] | 2)
    else:
        sys.exit('unknown damage ' + what)
EOF

head -c 4M /dev/urandom >"$T/r.raw"
truncate -s 24M "$T/r.raw"
dd if=/dev/urandom of="$T/r.raw" bs=64k seek=200 count=3 conv=notrunc 2>/dev/null
Q=$T/q
mkdir "$Q"
qemu-img convert -q -O qcow2 "$T/r.raw" "$Q/plain.qcow2"
qemu-img convert -q -O qcow2 -o compat=0.10 "$T/r.raw" "$Q/v2.qcow2"
qemu-img convert -q -O qcow2 -c "$T/r.raw" "$Q/zlib.qcow2"
qemu-img convert -q -O qcow2 -c -o compression_type=zstd "$T/r.raw" "$Q/zstd.qcow2"
qemu-img convert -q -O qcow2 -o extended_l2=on,cluster_size=128k "$T/r.raw" "$Q/extl2.qcow2"
qemu-img convert -q -O qcow2 -o refcount_bits=1 "$T/r.raw" "$Q/rc1.qcow2"
qemu-img convert -q -O qcow2 -o refcount_bits=64,cluster_size=4k "$T/r.raw" "$Q/rc64.qcow2"
qemu-img convert -q -O qcow2 -o cluster_size=2M "$T/r.raw" "$Q/c2m.qcow2"
qemu-img convert -q -O qcow2 -o cluster_size=512 "$T/r.raw" "$Q/c512.qcow2"
qemu-img convert -q -O qcow2 -o preallocation=metadata "$T/r.raw" "$Q/prealloc.qcow2"
cp "$Q/plain.qcow2" "$Q/snap.qcow2"
qemu-img snapshot -c s1 "$Q/snap.qcow2"
qemu-io -c 'write -P 7 0 1M' -c 'write -z 4M 1M' "$Q/snap.qcow2" >/dev/null
qemu-img snapshot -c s2 "$Q/snap.qcow2"
qemu-io -c 'write -P 8 512k 1M' -c 'discard 12M 64k' "$Q/snap.qcow2" >/dev/null
cp "$Q/plain.qcow2" "$Q/bitmaps.qcow2"
qemu-img bitmap --add "$Q/bitmaps.qcow2" b0
qemu-img bitmap --add -g 64k "$Q/bitmaps.qcow2" b1
qemu-io -c 'write -P 9 0 64k' "$Q/bitmaps.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b plain.qcow2 -F qcow2 "$Q/child.qcow2"
qemu-io -c 'write -P 3 100k 300k' "$Q/child.qcow2" >/dev/null
for f in "$Q"/*.qcow2; do
	n=${f##*/}
	q=$(qemu_mapped "$f")
	o=$(ours "$f")
	[ "$q" -eq 0 ] || fail "$n: qemu-img check does not find it clean ($q)"
	[ "$o" -eq 0 ] || fail "$n: exit $o, qemu-img check: clean: $(cat "$T/last.err")"
done
ok "qcow2: $(ls "$Q" | wc -l) qemu-made images clean for both checkers"

# damaged copies: same classification as qemu-img check
declare -A want_q2=([leak-hdr]=3 [leak-tail]=3 [leak-l2]=2 [l2-past-eof]=2
	[overlap]=2 [rc-zero]=2 [l1-reserved]=2)
declare -A line_q2=([leak-hdr]='cluster 0 .*leaked: refcount 2 but 1'
	[leak-tail]='leaked: refcount 1 but 0 references'
	[leak-l2]='L1 entry 0: COPIED flag set but the L2 table'
	[l2-past-eof]='data cluster of guest cluster 0 .* lies past the end of the file'
	[overlap]='refcount [12] but [23] references'
	[rc-zero]='refcount 0 but [0-9]+ references'
	[l1-reserved]='L1 entry 0: reserved bits set')
for base in plain v2 snap; do
	for d in "${!want_q2[@]}"; do
		f=$T/$base-$d.qcow2
		cp "$Q/$base.qcow2" "$f"
		python3 "$T/q2patch.py" "$f" "$d"
		q=$(qemu_mapped "$f")
		o=$(ours "$f")
		[ "$o" -eq "$q" ] || fail "$base/$d: ours $o, qemu-img check (mapped) $q: $(cat "$T/last.err")"
		[ "$o" -eq "${want_q2[$d]}" ] || fail "$base/$d: exit $o, not ${want_q2[$d]}"
		expect_line "qcow2: $f: .*${line_q2[$d]}" "$base/$d"
	done
done
ok "qcow2: ${#want_q2[@]} damages x 3 images classified as qemu-img check does"

# --json: the same verdict, machine-readable
set +e
L check --json "$T/plain-leak-tail.qcow2" 2>/dev/null >"$T/j.json"
r=$?
set -e
[ "$r" -eq 3 ] || fail "--json: exit $r"
python3 - "$T/j.json" <<'EOF' || fail "--json output"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["format"] == "qcow2" and j["result"] == "leaks", j
assert j["leaks"] == 1 and j["corruptions"] == 0 and j["exit-status"] == 3, j
assert any("leaked" in f["message"] for f in j["findings"]), j
EOF
ok "--json reports the leak"

# -r leaks, -r all, --repair: leaks fixed, qemu-img check clean, data
# unchanged (each spelling on its own copy)
for d in leak-hdr leak-tail; do
    for how in "-r leaks" "-r all" "--repair"; do
	f=$T/plain-$d-${how//[ -]/}.qcow2
	cp "$T/plain-$d.qcow2" "$f"
	# shellcheck disable=SC2086
	set +e; L check -q $how "$f" 2>"$T/last.err"; r=$?; set -e
	[ "$r" -eq 0 ] || fail "repair $d: exit $r: $(cat "$T/last.err")"
	[ "$(qemu_mapped "$f")" -eq 0 ] || fail "repair $d: qemu-img check not clean"
	[ "$(ours "$f")" -eq 0 ] || fail "repair $d: our check not clean"
	qemu-img compare -q "$Q/plain.qcow2" "$f" || fail "repair $d: data changed"
    done
done
# errors: -r leaks and -r all touch nothing
f=$T/plain-overlap.qcow2
sum=$(sha_of "$f")
for how in "-r leaks" "-r all"; do
	# shellcheck disable=SC2086
	set +e; L check -q $how "$f" 2>"$T/last.err"; r=$?; set -e
	[ "$r" -eq 2 ] || fail "$how of an image with errors: exit $r"
	[ "$(sha_of "$f")" = "$sum" ] || fail "$how wrote into an image with errors"
	if [ "$how" = "-r leaks" ]; then
		expect_line "errors found: not repaired \(-r leaks" "-r leaks with errors"
	fi
done
# -r takes qemu-img's values only: a bare -r is a usage error (exit 1)
set +e; L check -r "$f" >/dev/null 2>"$T/last.err"; r=$?; set -e
[ "$r" -eq 1 ] || fail "-r without leaks|all: exit $r"
expect_line "^layerimg: check: error: -r takes 'leaks' or 'all'" "bare -r"
ok "qcow2 -r leaks|all and --repair fix leaks only"

# --repair refused on a base layer (another image names it as parent)
mkdir "$T/dir"
cp "$Q/plain.qcow2" "$T/dir/base.qcow2"
python3 "$T/q2patch.py" "$T/dir/base.qcow2" leak-hdr
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/dir/top.qcow2"
sum=$(sha_of "$T/dir/base.qcow2")
set +e; L check --repair "$T/dir/base.qcow2" 2>"$T/last.err" >/dev/null; r=$?; set -e
[ "$r" -eq 1 ] || fail "repair of a base layer: exit $r, not 1"
expect_line "base.qcow2: is the parent of .*top.qcow2" "repair refusal"
[ "$(sha_of "$T/dir/base.qcow2")" = "$sum" ] || fail "refused repair wrote"
[ "$(ours "$T/dir/base.qcow2")" -eq 3 ] || fail "base: leak not reported"
set +e; L check -q --repair "$T/dir/top.qcow2" 2>/dev/null; r=$?; set -e
[ "$r" -eq 0 ] || fail "repair of the (clean) top layer: exit $r"
ok "--repair refused for a parent, allowed for the top"

# ---- VHD against vhdcheck.py ----
cat >"$T/vhdpatch.py" <<'EOF'
import struct, sys
def csum(b, at):
    return (~(sum(b) - sum(b[at:at + 4]))) & 0xFFFFFFFF
p, what = sys.argv[1], sys.argv[2]
d = bytearray(open(p, 'rb').read())
n = len(d)
hoff = struct.unpack('>Q', d[n - 512 + 16:n - 512 + 24])[0]
def fix_hdr():
    d[hoff + 36:hoff + 40] = struct.pack('>I', csum(d[hoff:hoff + 1024], 36))
def bat():
    return struct.unpack('>Q', d[hoff + 16:hoff + 24])[0]
if what == 'footer-byte':       # end footer: time stamp changed, checksum stale
    d[n - 512 + 24] ^= 0xff
elif what == 'footer-cookie':   # end footer: cookie broken
    d[n - 512] = ord('X')
elif what == 'copy-byte':       # footer copy at 0: a field changed
    d[24] ^= 0xff
elif what == 'no-footer':       # the footer at the end is gone
    del d[n - 512:]
elif what == 'hdr-csum':        # dynamic header: checksum field wrong
    d[hoff + 36] ^= 0xff
elif what == 'hdr-cookie':      # dynamic header: cookie broken
    d[hoff] = ord('X')
elif what == 'bat-past-eof':    # BAT entry 0 far past the end
    d[bat():bat() + 4] = struct.pack('>I', n // 512 + 1000)
elif what == 'bat-overlap':     # the first two allocated blocks coincide
    t = bat()
    ent = struct.unpack('>8I', d[t:t + 32])
    used = [i for i, e in enumerate(ent) if e != 0xFFFFFFFF]
    d[t + 4 * used[1]:t + 4 * used[1] + 4] = d[t + 4 * used[0]:t + 4 * used[0] + 4]
elif what == 'bat-on-header':   # block 0 placed on the dynamic header
    d[bat():bat() + 4] = struct.pack('>I', hoff // 512)
elif what == 'bat-small':       # max table entries below what the size needs
    d[hoff + 28:hoff + 32] = struct.pack('>I', 1)
    fix_hdr()
elif what == 'loc-past-eof':    # parent locator 0's data past the end
    d[hoff + 576 + 16:hoff + 576 + 24] = struct.pack('>Q', n + 4096)
    fix_hdr()
elif what == 'loc-code':        # parent locator 0: unknown platform code
    d[hoff + 576:hoff + 580] = b'Zzzz'
    fix_hdr()
elif what == 'fixed-short':     # fixed disk: size larger than the data
    f = n - 512
    d[f + 48:f + 56] = struct.pack('>Q', struct.unpack('>Q', d[f + 48:f + 56])[0] + (1 << 20))
    d[f + 64:f + 68] = struct.pack('>I', csum(d[f:f + 512], 64))
else:
    sys.exit('unknown damage ' + what)
open(p, 'wb').write(d)
EOF
V=$T/v
mkdir "$V"
qemu-img convert -q -O vpc "$T/r.raw" "$V/q-dyn.vhd"
qemu-img convert -q -O vpc -o subformat=fixed "$T/r.raw" "$V/q-fix.vhd"
python3 "$TOOLS/mkvhd.py" create-dynamic "$V/m-dyn.vhd" --from "$T/r.raw" >/dev/null
python3 "$TOOLS/mkvhd.py" create-fixed "$V/m-fix.vhd" --from "$T/r.raw" >/dev/null
python3 "$TOOLS/mkvhd.py" create-diff "$V/m-diff.vhd" --parent "$V/m-dyn.vhd" \
	--expect-in "$T/r.raw" --expect-out "$T/o.raw" --random-writes 20 \
	--seed 3 >/dev/null
for f in "$V"/*.vhd; do
	[ "$(py_check vhdcheck.py "$f")" -eq 0 ] || fail "${f##*/}: vhdcheck.py finds errors"
	[ "$(ours "$f")" -eq 0 ] || fail "${f##*/}: not clean: $(cat "$T/last.err")"
done
ok "vhd: 5 images clean for both checkers"

vhd_damage() {	# SRC DAMAGE ERE
	local f=$T/vd-$1-$2.vhd
	cp "$V/$1.vhd" "$f"
	python3 "$T/vhdpatch.py" "$f" "$2"
	[ "$(py_check vhdcheck.py "$f")" -eq 1 ] || fail "$1/$2: vhdcheck.py finds no error"
	[ "$(ours "$f")" -eq 2 ] || fail "$1/$2: exit not 2: $(cat "$T/last.err")"
	expect_line "vhd: $f: $3" "$1/$2"
}
vhd_damage q-dyn footer-byte 'footer at the end: checksum mismatch'
vhd_damage q-dyn footer-cookie 'no footer at the end of the file \(no "conectix" cookie at offset'
vhd_damage q-dyn copy-byte 'footer copy at offset 0: checksum mismatch'
vhd_damage m-dyn no-footer 'no footer at the end of the file'
vhd_damage q-fix footer-byte 'footer at the end: checksum mismatch'
vhd_damage m-dyn hdr-csum 'dynamic header \(offset 512\): checksum mismatch'
vhd_damage m-dyn hdr-cookie 'dynamic header \(offset 512\): no "cxsparse" cookie'
vhd_damage m-dyn bat-past-eof 'block 0 \(BAT entry, sector [0-9]+\): bitmap and data lie past the footer'
vhd_damage q-dyn bat-overlap 'block [0-9]+ .* overlaps block [0-9]+'
vhd_damage m-dyn bat-on-header 'block 0 \(offset 512, [0-9]+ bytes\) overlaps the dynamic header'
vhd_damage m-dyn bat-small 'BAT has 1 entries, the virtual size [0-9]+ needs'
vhd_damage m-diff loc-past-eof 'parent locator 0 \(W2ku\): data .* lies past the footer'
vhd_damage m-diff loc-code 'parent locator 0: unknown platform code'
vhd_damage m-fix fixed-short 'fixed disk: [0-9]+ bytes of data for a'
ok "vhd: 14 damages found by both checkers, each named"

# VHD repairs: the footer back from its copy (and the reverse)
for c in "q-dyn footer-byte" "q-dyn footer-cookie" "q-dyn copy-byte" \
	 "m-dyn no-footer" "m-diff footer-byte"; do
	set -- $c
	f=$T/vr-$1-$2.vhd
	cp "$V/$1.vhd" "$f"
	python3 "$T/vhdpatch.py" "$f" "$2"
	set +e; L check -q --repair "$f" 2>"$T/last.err"; r=$?; set -e
	[ "$r" -eq 0 ] || fail "repair $1/$2: exit $r: $(cat "$T/last.err")"
	cmp -s "$V/$1.vhd" "$f" || fail "repair $1/$2: not the original bytes"
done
f=$T/vr-fix.vhd
cp "$V/q-fix.vhd" "$f"
python3 "$T/vhdpatch.py" "$f" footer-byte
set +e; L check -q --repair "$f" 2>/dev/null; r=$?; set -e
[ "$r" -eq 0 ] || fail "repair of a fixed footer's checksum: exit $r"
[ "$(py_check vhdcheck.py "$f")" -eq 0 ] || fail "repaired fixed footer: vhdcheck.py"
qemu-img compare -q -f vpc -F vpc "$V/q-fix.vhd" "$f" || fail "fixed repair: data"
f=$T/vd-m-dyn-bat-overlap.vhd
cp "$V/q-dyn.vhd" "$f"
python3 "$T/vhdpatch.py" "$f" bat-overlap
sum=$(sha_of "$f")
set +e; L check -q --repair "$f" 2>/dev/null; r=$?; set -e
[ "$r" -eq 2 ] && [ "$(sha_of "$f")" = "$sum" ] || fail "vhd: repair touched a BAT error"
ok "vhd --repair restores the footers, and only them"

# ---- VHDX against vhdxcheck.py ----
cat >"$T/vhdxpatch.py" <<'EOF'
import struct, sys, uuid, zlib
KiB, MiB = 1024, 1 << 20
T = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def crc32c(d):
    c = 0xFFFFFFFF
    for x in d:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
def recrc(b, at, n):
    b[at + 4:at + 8] = bytes(4)
    b[at + 4:at + 8] = struct.pack("<I", crc32c(b[at:at + n]))
G_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
G_META = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
def region_entry(b, at, g):
    for k in range(struct.unpack_from("<I", b, at + 8)[0]):
        e = at + 16 + 32 * k
        if b[e:e + 16] == g:
            return e + 16
def both_regions(b, fn):
    for at in (192 * KiB, 256 * KiB):
        fn(b, at)
        recrc(b, at, 64 * KiB)
p, what = sys.argv[1], sys.argv[2]
b = bytearray(open(p, 'rb').read())
bat = struct.unpack_from("<Q", b, region_entry(b, 192 * KiB, G_BAT))[0]
meta = struct.unpack_from("<Q", b, region_entry(b, 192 * KiB, G_META))[0]
cr = (1 << 23) * 512 // MiB
ents = [struct.unpack_from("<Q", b, bat + 8 * i)[0] for i in range(cr + 1)]
present = [i for i in range(cr) if ents[i] & 7 in (6, 7)]
def set_bat(i, v):
    struct.pack_into("<Q", b, bat + 8 * i, v)
if what == 'hdr1-crc': b[64 * KiB + 4] ^= 1
elif what == 'hdr-sigs': b[64 * KiB] = b[128 * KiB] = 0x41
elif what == 'hdr-same-seq':
    seq = struct.unpack_from("<Q", b, 64 * KiB + 8)[0]
    struct.pack_into("<Q", b, 128 * KiB + 8, seq)
    b[128 * KiB + 16] ^= 1
    recrc(b, 128 * KiB, 4 * KiB)
elif what == 'region2-crc': b[256 * KiB + 5] ^= 0x10
elif what == 'bat-on-meta':
    both_regions(b, lambda b, at: struct.pack_into("<Q", b, region_entry(b, at, G_BAT), meta))
elif what == 'block-past-eof': set_bat(present[0], 6 | (len(b) // MiB + 4) << 20)
elif what == 'block-twice':
    set_bat(present[1], (ents[present[1]] & 7) | (ents[present[0]] >> 20) << 20)
elif what == 'block-on-bat': set_bat(present[0], 6 | (bat >> 20) << 20)
elif what == 'block-unaligned': set_bat(present[0], 6 | ((ents[present[0]] >> 20) << 20) | 1 << 19)
elif what == 'partial-no-sb': set_bat(cr, 0)
elif what == 'state-4': set_bat(present[0], 4 | (ents[present[0]] >> 20) << 20)
elif what == 'sb-state-2': set_bat(cr, 2 | (ents[cr] >> 20) << 20)
elif what == 'meta-sig': b[meta] = 0x4D
elif what == 'truncated': del b[len(b) - 4096:]
elif what == 'no-file-id': b[0:8] = b'vhdxfilX'
else: sys.exit('unknown damage ' + what)
open(p, 'wb').write(b)
EOF
X=$T/x
mkdir "$X"
qemu-img convert -q -O vhdx "$T/r.raw" "$X/q-dyn.vhdx"
qemu-img convert -q -O vhdx -o subformat=fixed "$T/r.raw" "$X/q-fix.vhdx"
python3 "$TOOLS/mkvhdx.py" chain "$X/p" --depth 2 --plain --seed 3 >/dev/null
python3 "$TOOLS/mkvhdx.py" chain "$X/k" --depth 1 --lss 4096 --seed 4 \
	--undefined --stale-log >/dev/null
n=0
for f in "$X"/*.vhdx "$X"/p/*.vhdx "$X"/k/*.vhdx; do
	[ "$(py_check vhdxcheck.py "$f")" -eq 0 ] || fail "${f#"$X"/}: vhdxcheck.py finds errors"
	[ "$(ours "$f")" -eq 0 ] || fail "${f#"$X"/}: not clean: $(cat "$T/last.err")"
	n=$((n + 1))
done
ok "vhdx: $n images clean for both checkers"

vhdx_damage() {	# DAMAGE ERE
	local f=$T/xd-$1.vhdx
	cp "$X/p/d1.vhdx" "$f"
	python3 "$T/vhdxpatch.py" "$f" "$1"
	[ "$(py_check vhdxcheck.py "$f")" -eq 1 ] || fail "$1: vhdxcheck.py finds no error"
	[ "$(ours "$f")" -eq 2 ] || fail "$1: exit not 2: $(cat "$T/last.err")"
	expect_line "vhdx: $f: .*$2" "vhdx $1"
}
vhdx_damage hdr1-crc 'header 1 \(offset 65536\): CRC-32C mismatch'
vhdx_damage hdr-sigs 'header 2 \(offset 131072\): no "head" signature'
vhdx_damage hdr-same-seq 'both headers have sequence number [0-9]+ but differ'
vhdx_damage region2-crc 'region table 2 \(offset 262144\): CRC-32C mismatch'
vhdx_damage bat-on-meta 'BAT and metadata regions overlap'
vhdx_damage block-past-eof 'block 0 .* lies past the end of the file'
vhdx_damage block-twice 'block 1 \(offset [0-9]+\) overlaps block 0'
vhdx_damage block-on-bat 'block 0 \(offset [0-9]+\) overlaps the BAT region'
vhdx_damage partial-no-sb 'PARTIALLY_PRESENT but the sector bitmap of chunk 0 is not present'
vhdx_damage state-4 'BAT entry 0 \(block 0\): invalid state 4'
vhdx_damage sb-state-2 'BAT entry 4096 \(sector bitmap of chunk 0\): invalid state 2'
vhdx_damage meta-sig 'no metadata table signature'
vhdx_damage truncated 'lies past the end of the file'
ok "vhdx: 13 damages found by both checkers, each named"

# no file identifier: not recognised as VHDX (raw), unless -f vhdx says so
f=$T/xd-noid.vhdx
cp "$X/p/d1.vhdx" "$f"
python3 "$T/vhdxpatch.py" "$f" no-file-id
[ "$(py_check vhdxcheck.py "$f")" -eq 1 ] || fail "no-file-id: vhdxcheck.py"
[ "$(ours "$f")" -eq 63 ] || fail "no-file-id: not raw (63)"
expect_line "^layerimg: check: error: .*: the raw format has no structural check" "no-file-id"
[ "$(ours -f vhdx "$f")" -eq 2 ] || fail "no-file-id with -f vhdx: not an error"
expect_line "vhdx: $f: no \"vhdxfile\" file identifier" "-f vhdx"
set +e; L check -f nosuch "$f" 2>/dev/null; r=$?; set -e
[ "$r" -eq 1 ] || fail "-f nosuch: exit $r"
# -f names a format the content contradicts: refused, as qemu-img does
[ "$(ours -f qcow2 "$X/p/d1.vhdx")" -eq 1 ] || fail "-f qcow2 on a vhdx: not refused"
expect_line "^layerimg: check: error: .*d1.vhdx: is a vhdx image, not qcow2" "-f qcow2 on vhdx"
[ "$(ours -f vpc "$V/q-dyn.vhd")" -eq 0 ] || fail "-f vpc (qemu's name for vhd): $(cat "$T/last.err")"
ok "vhdx: -f vhdx checks a file whose identifier is gone"

f=$T/xd-state-4.vhdx
sum=$(sha_of "$f")
set +e; L check -q --repair "$f" 2>/dev/null; r=$?; set -e
[ "$r" -eq 2 ] && [ "$(sha_of "$f")" = "$sum" ] || fail "vhdx --repair wrote"
python3 "$TOOLS/mkvhdx.py" dirtylog "$T/dirty.vhdx" >/dev/null
[ "$(ours "$T/dirty.vhdx")" -eq 0 ] || fail "dirty log: $(cat "$T/last.err")"
expect_line "warning: vhdx: .*dirty.vhdx: the log is not empty" "dirty log"
ok "vhdx: --repair changes nothing; a valid dirty log is a warning"

# ---- Android sparse ----
S=$T/s
mkdir "$S"
img2simg "$T/r.raw" "$S/a.simg"
python3 "$TOOLS/mksimg.py" "$T/r.raw" "$S/crc.simg" --crc >/dev/null
python3 "$TOOLS/mksimg.py" "$T/r.raw" "$S/pad.simg" --crc --hdr-pad 4 \
	--chunk-pad 8 --zero fill >/dev/null
for f in "$S"/*.simg; do
	[ "$(ours "$f")" -eq 0 ] || fail "${f##*/}: not clean: $(cat "$T/last.err")"
done
python3 "$TOOLS/mksimg.py" "$T/r.raw" "$T/badcrc.simg" --crc --bad-crc >/dev/null
[ "$(ours "$T/badcrc.simg")" -eq 2 ] || fail "bad CRC32 chunk not found"
expect_line "asparse: .*badcrc.simg: chunk [0-9]+: CRC32 mismatch" "bad crc"
python3 - "$S/a.simg" "$T/blks.simg" "$T/short.simg" "$T/csz.simg" <<'EOF'
import struct, sys
d = bytearray(open(sys.argv[1], 'rb').read())
b = bytearray(d)
struct.pack_into('<I', b, 16, struct.unpack_from('<I', b, 16)[0] + 1)
open(sys.argv[2], 'wb').write(b)             # total_blks one too many
open(sys.argv[3], 'wb').write(d[:len(d) - 100])   # truncated in the last chunk
b = bytearray(d)
struct.pack_into('<I', b, 28 + 8, struct.unpack_from('<I', b, 28 + 8)[0] + 4)
open(sys.argv[4], 'wb').write(b)             # chunk 0 total_sz inconsistent
EOF
[ "$(ours "$T/blks.simg")" -eq 2 ] || fail "total_blks mismatch not found"
expect_line "the chunks cover [0-9]+ blocks, total_blks is" "total_blks"
[ "$(ours "$T/short.simg")" -eq 2 ] || fail "truncated sparse file"
expect_line "chunk [0-9]+ .* lies past the end of the file" "truncated simg"
[ "$(ours "$T/csz.simg")" -eq 2 ] || fail "chunk total_sz"
expect_line "chunk 0 \(offset 28\): RAW chunk total_sz does not match" "total_sz"
[ "$(ours "$T/r.raw")" -eq 63 ] || fail "raw: not 63 (no checker)"
ok "asparse: clean images, CRC32, block count, truncation, chunk size; raw 63"

# ---- the shared vectors ----
if [ -f "$LAYERFS_VECTORS/INDEX.md" ]; then
	# known real findings: hand-edited (bad checksums), fuzzed, bad CRC
	# (exit 2: errors; 1: not a disk image at all; raw and qcow files,
	# which have no checker, 63)
	declare -A known=([dfvfs/image.vhd]=2 [dfvfs/image-differential.vhd]=2
		[qemu-iotests/afl5.img]=2 [android-sparse-rs/invalid_crc.simg]=2
		[android-sparse-rs/hello.img]=1
		[qemu-iotests/out-of-scope/simple-dmg.dmg]=1
		[qemu-iotests/out-of-scope/simple-pattern.cloop]=1)
	W=$T/vec
	n=0
	while IFS= read -r rel; do
		out=$W/$rel
		mkdir -p "$(dirname "$out")"
		case $rel in
		*.xz) out=${out%.xz}; xz -dc "$LAYERFS_VECTORS/$rel" >"$out" ;;
		*.gz) out=${out%.gz}; gzip -dc "$LAYERFS_VECTORS/$rel" >"$out" ;;
		*.bz2) out=${out%.bz2}; bzip2 -dc "$LAYERFS_VECTORS/$rel" >"$out" ;;
		*) cp "$LAYERFS_VECTORS/$rel" "$out" ;;
		esac
	done < <(cd "$LAYERFS_VECTORS" && find . -type f ! -name '*.md' \
		! -name '*.txt' ! -name '*.json*' ! -name SHA256SUMS \
		! -name 'README*' ! -name 'COPYING*' ! -name '*.sh' \
		! -name '*.py' ! -path './tools/*' \
		! -path './DETAILS/*' ! -path './libvhdi-structs/*' |
		sed 's|^\./||' | sort)	# libvhdi-structs: fragments, no images
	while IFS= read -r rel; do
		f=$W/$rel
		want=${known[$rel]:-0}
		o=$(ours "$f")
		if [ "$o" -eq 63 ] && [ "$want" -eq 0 ]; then
			fmt=$(L info --output=json --no-partitions "$f" 2>/dev/null |
				python3 -c 'import json,sys; print(json.load(sys.stdin)["chains"][0]["layers"][0]["format"])')
			case $fmt in raw | qcow) want=63 ;; esac
		fi
		[ "$o" -eq "$want" ] || fail "vector $rel: exit $o, expected $want: $(cat "$T/last.err")"
		if [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' ')" = 514649fb ]; then
			q=$(qemu_mapped "$f")
			[ "$q" -eq "$o" ] || fail "vector $rel: qemu-img check (mapped) $q, ours $o"
		fi
		n=$((n + 1))
	done < <(cd "$W" && find . -type f | sed 's|^\./||' | sort)
	ok "vectors: $n files checked (qcow2 ones against qemu-img check)"
else
	_log "note: no vectors in $LAYERFS_VECTORS, that part not run"
fi
finish
