#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg convert flattens a chain into one standalone image:
#   - a three-layer qcow2 chain (random data, fill patterns, zero writes,
#     a discard, a compressed cluster): -O raw equals `qemu-img convert -O
#     raw` and is sparse; -O sparse round-trips through simg2img and has
#     RAW, FILL and DONT_CARE chunks; -O vhd/vhdx/qcow2 (dynamic and
#     --fixed) read back the same through qemu-img;
#   - a VHD differencing chain (mkvhd.py) equals 7-Zip's extraction;
#   - a VHDX chain with 4 KiB sectors (mkvhdx.py) equals 7-Zip's
#     extraction, also after -O vhdx;
#   - -S leaves zero-filled data blocks out; an odd disk size; an Android
#     sparse input; and the errors (existing output, unknown format).
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io simg2img img2simg 7zz python3 cmp du
require_script mkvhd.py
require_script mkvhdx.py
[ -x "${LAYERIMG:-}" ] || fail "LAYERIMG must name the built layerimg"

MiB=$((1 << 20))
q=$T/q
mkdir -p "$q"

# ---- a qcow2 chain: base (random runs) <- mid <- top, 64 MiB ----
truncate -s $((64 * MiB)) "$T/base.raw"
pattern "$T/base.raw" 0 $((3 * MiB)) base1
pattern "$T/base.raw" $((20 * MiB + 4096)) $((2 * MiB + 512)) base2
pattern "$T/base.raw" $((63 * MiB)) $MiB base3
qemu-img convert -q -f raw -O qcow2 "$T/base.raw" "$q/base.qcow2"
pattern "$T/rnd1" 0 $((3 * MiB)) rnd1
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$q/mid.qcow2"
qemu-io -f qcow2 -c "write -s $T/rnd1 1M 3M" -c 'write -P 0x11 10M 2M' \
	-c 'write -c -P 0x33 30M 64k' -c 'write -z 63M 256k' \
	"$q/mid.qcow2" >/dev/null || fail "qemu-io mid"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$q/top.qcow2"
qemu-io -f qcow2 -c 'write -P 0x5a 2M 1M' -c 'write -z 10M 512k' \
	-c 'discard 20M 1M' -c 'write -P 0 40M 4M' -c 'write -P 0xc3 50M 4k' \
	"$q/top.qcow2" >/dev/null || fail "qemu-io top"
qemu-img convert -f qcow2 -O raw "$q/top.qcow2" "$T/q-expect.raw"
want=$(sha_of "$T/q-expect.raw")
size=$(stat -c %s "$T/q-expect.raw")

# allocated KiB of a file
kib() { du -k "$1" | cut -f1; }

# -O raw: same bytes, and sparse
"$LAYERIMG" convert "$q/top.qcow2" "$T/q.raw" 2>"$T/convert.err" ||
	fail "convert -O raw: $(cat "$T/convert.err")"
[ ! -s "$T/convert.err" ] || fail "convert printed: $(cat "$T/convert.err")"
expect_size "$T/q.raw" "$size"
expect_sha "$T/q.raw" "$want" "qcow2 chain -O raw = qemu-img convert"
[ "$(kib "$T/q.raw")" -lt $((24 * 1024)) ] ||
	fail "q.raw is not sparse: $(kib "$T/q.raw") KiB allocated"
ok "qcow2 chain -O raw is sparse ($(kib "$T/q.raw") KiB of 65536)"

# -S 4k (qemu-img's spelling; --sparse-zeros is the same): the 4 MiB of
# written zeros at 40M are left out too
for how in "-S 4k" "-S 4096" "--sparse-zeros"; do
	rm -f "$T/qS.raw"
	# shellcheck disable=SC2086
	"$LAYERIMG" convert $how "$q/top.qcow2" "$T/qS.raw" || fail "convert $how"
	expect_sha "$T/qS.raw" "$want" "$how output = qemu-img convert"
	[ "$(kib "$T/qS.raw")" -le $(($(kib "$T/q.raw") - 4096)) ] ||
		fail "$how kept zero blocks: $(kib "$T/qS.raw") KiB vs $(kib "$T/q.raw") KiB"
done
ok "-S 4k leaves the zero-filled blocks out"

# -S 0: fully allocated, as qemu-img convert -S 0
"$LAYERIMG" convert -S 0 "$q/top.qcow2" "$T/q0.raw" || fail "convert -S 0"
expect_sha "$T/q0.raw" "$want" "-S 0 output = qemu-img convert"
[ "$(kib "$T/q0.raw")" -ge $((64 * 1024)) ] ||
	fail "-S 0 is sparse: $(kib "$T/q0.raw") KiB of 65536"
"$LAYERIMG" convert -S 0 -O qcow2 "$q/top.qcow2" "$T/q0.qcow2" ||
	fail "convert -S 0 -O qcow2"
qemu-img compare -q "$T/q0.qcow2" "$T/q.raw" || fail "-S 0 -O qcow2 data"
qemu-img map --output=json "$T/q0.qcow2" | python3 -c '
import json, sys
m = json.load(sys.stdin)
assert all(e["data"] for e in m), [e for e in m if not e["data"]][:3]' ||
	fail "-S 0 -O qcow2 left clusters unallocated"
ok "-S 0 allocates everything (raw and qcow2)"

# -S SIZE is a minimum run: 8 KiB of zeros inside data is a hole with
# -S 8k and stays data with -S 16k (qemu-img convert's rule)
head -c 65536 /dev/urandom >"$T/zr.raw"
dd if=/dev/zero of="$T/zr.raw" bs=1k seek=20 count=8 conv=notrunc 2>/dev/null
qemu-img convert -q -O qcow2 -S 0 "$T/zr.raw" "$T/zr.qcow2"
"$LAYERIMG" convert -S 8k "$T/zr.qcow2" "$T/zr8.raw" || fail "-S 8k"
"$LAYERIMG" convert -S 16k "$T/zr.qcow2" "$T/zr16.raw" || fail "-S 16k"
cmp "$T/zr.raw" "$T/zr8.raw" && cmp "$T/zr.raw" "$T/zr16.raw" || fail "-S data"
holes() { python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    print(os.lseek(fd, 0, os.SEEK_HOLE) < os.fstat(fd).st_size and 1 or 0)
except OSError:
    print(0)' "$1"; }
[ "$(holes "$T/zr8.raw")" = 1 ] || fail "-S 8k: the 8 KiB zero run was written"
[ "$(holes "$T/zr16.raw")" = 0 ] || fail "-S 16k: an 8 KiB zero run became a hole"
set +e; "$LAYERIMG" convert -S 1000 "$T/zr.qcow2" "$T/zrx.raw" 2>"$T/S.err"; r=$?; set -e
[ "$r" -eq 2 ] && [ ! -e "$T/zrx.raw" ] || fail "-S 1000 (not a multiple of 512): exit $r"
grep -q "^layerimg: convert: error: bad -S size '1000'" "$T/S.err" || fail "-S 1000: $(cat "$T/S.err")"
ok "-S SIZE: zero runs of at least SIZE become holes, shorter ones stay"

# -O sparse: round trip through simg2img, all three chunk kinds
"$LAYERIMG" convert -O sparse "$q/top.qcow2" "$T/q.simg" || fail "-O sparse"
simg2img "$T/q.simg" "$T/q-simg.raw" || fail "simg2img rejects q.simg"
expect_sha "$T/q-simg.raw" "$want" "-O sparse | simg2img = qemu-img convert"
python3 - "$T/q.simg" <<'EOF' || fail "q.simg chunk check"
import struct, sys
d = open(sys.argv[1], "rb").read()
magic, major, minor, fhs, chs, bs, blks, nchunks, _ = struct.unpack_from("<IHHHHIIII", d)
assert magic == 0xED26FF3A and major == 1 and fhs == 28 and chs == 12, "header"
assert bs == 4096 and blks * bs == 64 << 20, (bs, blks)
off, seen, total = fhs, {}, 0
for _ in range(nchunks):
    ct, _, n, tot = struct.unpack_from("<HHII", d, off)
    seen[ct] = seen.get(ct, 0) + n
    total += n
    off += tot
assert off == len(d), "chunks do not end at the file end"
assert total == blks, "chunks cover %d of %d blocks" % (total, blks)
# 0x5a, 0x11, 0x33, 0xc3 patterns and the zero writes are FILL; holes are
# DONT_CARE; random data is RAW
for t in (0xCAC1, 0xCAC2, 0xCAC3):
    assert seen.get(t), "no chunk of type %#x: %s" % (t, seen)
assert len(d) < 16 << 20, "sparse file is %d bytes" % len(d)
EOF
ok "-O sparse has RAW, FILL and DONT_CARE chunks and covers every block"

# -O vhd/vhdx/qcow2, dynamic and fixed, read back by qemu-img
for fmt in vhd vhdx qcow2; do
	for fixed in "" --fixed; do
		out=$T/q${fixed:+-fixed}.$fmt
		"$LAYERIMG" convert -O $fmt $fixed "$q/top.qcow2" "$out" ||
			fail "convert -O $fmt $fixed"
		rm -f "$T/back.raw"
		if [ $fmt = vhd ]; then
			qemu-img convert --image-opts -O raw \
				"driver=vpc,force_size_calc=current_size,file.filename=$out" \
				"$T/back.raw" || fail "qemu-img reads $out"
		else
			qemu-img convert -f $fmt -O raw "$out" "$T/back.raw" ||
				fail "qemu-img reads $out"
		fi
		expect_sha "$T/back.raw" "$want" \
			"-O $fmt ${fixed:-(dynamic)}, read by qemu-img"
	done
	qemu-img info --output=json "$out" | python3 -c '
import json, sys
i = json.load(sys.stdin)
assert "backing-filename" not in i, "output has a backing file"
assert i["virtual-size"] >= int(sys.argv[1]), i["virtual-size"]' "$size" ||
		fail "$out: qemu-img info"
done
# a dynamic output stores only the data: far smaller than a fixed one
[ "$(kib "$T/q.qcow2")" -lt $((24 * 1024)) ] ||
	fail "q.qcow2 holds $(kib "$T/q.qcow2") KiB"
[ "$(kib "$T/q-fixed.vhd")" -ge $((64 * 1024)) ] ||
	fail "q-fixed.vhd holds only $(kib "$T/q-fixed.vhd") KiB"
ok "dynamic outputs are small, fixed ones fully allocated"

# ---- a VHD differencing chain, 6 MiB + 3 sectors ----
v=$T/v
mkdir -p "$v"
mkvhd() { python3 "$TOOLS/mkvhd.py" "$@" >/dev/null || fail "mkvhd.py $*"; }
python3 - "$T/v0.raw" <<'EOF'
import random, sys
r = random.Random(7)
MiB = 1 << 20
open(sys.argv[1], "wb").write(r.randbytes(MiB) + bytes(2 * MiB) +
                              r.randbytes(3 * 512) + bytes(3 * MiB))
EOF
mkvhd create-dynamic "$v/v0.vhd" --from "$T/v0.raw" --block-size 512K
mkvhd create-diff "$v/v1.vhd" --parent "$v/v0.vhd" --expect-in "$T/v0.raw" \
	--expect-out "$T/v1.raw" --random-writes 30 --seed 1
mkvhd create-diff "$v/v2.vhd" --parent "$v/v1.vhd" --expect-in "$T/v1.raw" \
	--expect-out "$T/v2.raw" --writes "0+1=0x5a,1023+3=0xab,12290+1" \
	--seed 2 --block-size 1M
7zz e -so -tvhd "$v/v2.vhd" >"$T/v2-7z.raw" 2>/dev/null || fail "7zz -tvhd"
expect_same "$T/v2-7z.raw" "$T/v2.raw" "7-Zip agrees with mkvhd.py"
"$LAYERIMG" convert -O raw "$v/v2.vhd" "$T/v.raw" || fail "convert VHD chain"
expect_same "$T/v.raw" "$T/v2-7z.raw" "VHD chain -O raw = 7zz e -tvhd"
# odd size (not a multiple of 4 KiB): sparse blocks of 512 bytes
"$LAYERIMG" convert -O sparse "$v/v2.vhd" "$T/v.simg" || fail "VHD -O sparse"
simg2img "$T/v.simg" "$T/v-simg.raw" || fail "simg2img rejects v.simg"
expect_same "$T/v-simg.raw" "$T/v2.raw" "odd-sized -O sparse round trip"
"$LAYERIMG" convert -O vhd "$v/v2.vhd" "$T/v.vhd" || fail "VHD -O vhd"
7zz e -so -tvhd "$T/v.vhd" >"$T/v-back.raw" 2>/dev/null || fail "7zz v.vhd"
expect_same "$T/v-back.raw" "$T/v2.raw" "VHD chain -O vhd, read by 7-Zip"

# ---- a VHDX chain with 4 KiB logical sectors ----
x=$T/x
mkdir -p "$x"
python3 "$TOOLS/mkvhdx.py" chain --depth 3 --lss 4096 --seed 3 "$x" \
	>/dev/null || fail "mkvhdx.py chain"
mv "$x"/*.raw "$T/"
7zz e -so -tvhdx "$x/d3.vhdx" >"$T/x-7z.raw" 2>/dev/null || fail "7zz -tvhdx"
expect_same "$T/x-7z.raw" "$T/d3.vhdx.raw" "7-Zip agrees with mkvhdx.py"
"$LAYERIMG" convert "$x/d3.vhdx" "$T/x.raw" || fail "convert VHDX chain"
expect_same "$T/x.raw" "$T/x-7z.raw" "VHDX chain -O raw = 7zz e -tvhdx"
"$LAYERIMG" convert -O vhdx "$x/d3.vhdx" "$T/x.vhdx" || fail "-O vhdx"
"$LAYERIMG" info --json --no-partitions "$T/x.vhdx" | python3 -c '
import json, sys
l = json.load(sys.stdin)["chains"][0]["layers"]
assert len(l) == 1 and l[0]["logical_sector_size"] == 4096, l' ||
	fail "x.vhdx does not keep 4 KiB sectors"
7zz e -so -tvhdx "$T/x.vhdx" >"$T/x-back.raw" 2>/dev/null || fail "7zz x.vhdx"
expect_same "$T/x-back.raw" "$T/x-7z.raw" "4K VHDX chain -O vhdx, read by 7-Zip"
# --block-size, and 512-byte-sector formats from the 4 KiB-sector chain
"$LAYERIMG" convert -O vhdx --block-size 1M "$x/d3.vhdx" "$T/x1.vhdx" ||
	fail "-O vhdx --block-size 1M"
"$LAYERIMG" info --json --no-partitions "$T/x1.vhdx" | python3 -c '
import json, sys
l = json.load(sys.stdin)["chains"][0]["layers"][0]
assert l["block_size"] == 1 << 20, l["block_size"]' ||
	fail "x1.vhdx: block size is not 1 MiB"
7zz e -so -tvhdx "$T/x1.vhdx" >"$T/x-back.raw" 2>/dev/null || fail "7zz x1"
expect_same "$T/x-back.raw" "$T/x-7z.raw" "-O vhdx --block-size 1M, read by 7-Zip"
"$LAYERIMG" convert -O qcow2 --block-size 128K "$x/d3.vhdx" "$T/x.qcow2" ||
	fail "4K chain -O qcow2"
qemu-img convert -f qcow2 -O raw "$T/x.qcow2" "$T/x-q.raw" || fail "qemu x.qcow2"
expect_same "$T/x-q.raw" "$T/x-7z.raw" "4K VHDX chain -O qcow2, read by qemu-img"
qemu-img info --output=json "$T/x.qcow2" | grep -q '"cluster-size": 131072' ||
	fail "x.qcow2: cluster size is not 128 KiB"
"$LAYERIMG" convert -O vhd "$x/d3.vhdx" "$T/x.vhd" || fail "4K chain -O vhd"
7zz e -so -tvhd "$T/x.vhd" >"$T/x-v.raw" 2>/dev/null || fail "7zz x.vhd"
expect_same "$T/x-v.raw" "$T/x-7z.raw" "4K VHDX chain -O vhd, read by 7-Zip"

# ---- an Android sparse input ----
img2simg "$T/base.raw" "$T/in.simg" >/dev/null 2>&1 || fail img2simg
"$LAYERIMG" convert "$T/in.simg" "$T/s.raw" || fail "convert sparse input"
expect_same "$T/s.raw" "$T/base.raw" "sparse input -O raw = source"

# ---- 72 MiB of random data in a row: RAW chunks are capped at 64 MiB ----
pattern "$T/long.raw" 0 $((72 * MiB)) long
truncate -s $((80 * MiB)) "$T/long.raw"
"$LAYERIMG" convert -O sparse "$T/long.raw" "$T/long.simg" || fail "long -O sparse"
simg2img "$T/long.simg" "$T/long-back.raw" || fail "simg2img long.simg"
expect_same "$T/long-back.raw" "$T/long.raw" "72 MiB data run -O sparse round trip"
python3 - "$T/long.simg" <<'EOF' || fail "long.simg chunks"
import struct, sys
d = open(sys.argv[1], "rb").read()
_, _, _, fhs, _, bs, blks, nchunks, _ = struct.unpack_from("<IHHHHIIII", d)
off, raw = fhs, []
for _ in range(nchunks):
    ct, _, n, tot = struct.unpack_from("<HHII", d, off)
    if ct == 0xCAC1:
        raw.append(n * bs)
    off += tot
assert len(raw) == 2 and max(raw) <= 64 << 20 and sum(raw) == 72 << 20, raw
EOF
ok "a long data run is split into RAW chunks of at most 64 MiB"
rm -f "$T"/long*

# ---- errors ----
cp "$T/q.raw" "$T/keep.raw"
rc=0
"$LAYERIMG" convert "$q/top.qcow2" "$T/keep.raw" 2>"$T/e1.err" || rc=$?
[ $rc -eq 2 ] || fail "existing output: exit $rc, expected 2"
grep -q "keep.raw: exists" "$T/e1.err" || fail "no message: $(cat "$T/e1.err")"
cmp -s "$T/keep.raw" "$T/q.raw" || fail "existing output was changed"
ok "an existing output is refused and left alone"
rc=0
"$LAYERIMG" convert -O vmdk "$q/top.qcow2" "$T/x.vmdk" 2>"$T/e2.err" || rc=$?
[ $rc -eq 2 ] || fail "unknown format: exit $rc, expected 2"
grep -q "unknown output format" "$T/e2.err" || fail "e2: $(cat "$T/e2.err")"
[ ! -e "$T/x.vmdk" ] || fail "x.vmdk left behind"
ok "an unknown format is refused, nothing left behind"
rc=0
"$LAYERIMG" convert "$T/missing.qcow2" "$T/m.raw" 2>"$T/e3.err" || rc=$?
[ $rc -eq 2 ] && grep -q "missing.qcow2" "$T/e3.err" ||
	fail "missing input: exit $rc: $(cat "$T/e3.err")"
[ ! -e "$T/m.raw" ] || fail "m.raw left behind"
ok "a missing input is named, exit 2"
# a layer whose data lies past its (truncated) end: exit 1, one error
# line naming it, and no half-written output, in every output format
qemu-img create -q -f qcow2 "$T/cut.qcow2" 64M
qemu-io -f qcow2 -c 'write -P 1 0 4M' "$T/cut.qcow2" >/dev/null || fail "cut"
truncate -s $((1 << 20)) "$T/cut.qcow2"
for fmt in raw sparse qcow2; do
	rc=0
	"$LAYERIMG" convert -O $fmt "$T/cut.qcow2" "$T/cut.$fmt.out" \
		2>"$T/e4.err" || rc=$?
	[ $rc -eq 1 ] || fail "-O $fmt of a truncated layer: exit $rc"
	expect_error "$T/e4.err" cut.qcow2 "past the end"
	[ ! -e "$T/cut.$fmt.out" ] || fail "-O $fmt: cut.$fmt.out left behind"
done
ok "a read error fails the conversion and removes the output"
"$LAYERIMG" convert --help | grep -q "^Usage: layerimg convert" ||
	fail "convert --help"
ok "convert --help"
finish
