#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg map shows which layer provides each extent of a chain's flat
# disk.  On a three-layer qcow2 chain (data in each layer, zero writes, a
# discard, a compressed cluster, extended L2 subclusters in the top,
# parents smaller than their children) its --json output must agree with
# `qemu-img map --output=json` byte range by byte range on depth,
# present, zero, data and offset (extent splitting may differ).  On a VHD
# differencing chain, every range it calls a hole or zero must read as
# zeros in 7-Zip's extraction, and the extents must tile the disk.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io 7zz python3
require_script mkvhd.py
[ -x "${LAYERIMG:-}" ] || fail "LAYERIMG must name the built layerimg"

q=$T/q
mkdir -p "$q"
qemu-img create -q -f qcow2 "$q/base.qcow2" 32M
qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -z 8M 1M' \
	-c 'write -c -P 7 12M 64k' -c 'write -P 9 31M 1M' "$q/base.qcow2" \
	>/dev/null || fail "qemu-io base"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$q/mid.qcow2" 48M
qemu-io -f qcow2 -c 'write -P 2 1M 512k' -c 'discard 2M 64k' \
	-c 'write -P 3 40M 1M' -c 'write -z 47M 512k' "$q/mid.qcow2" \
	>/dev/null || fail "qemu-io mid"
qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 \
	"$q/top.qcow2" 64M
qemu-io -f qcow2 -c 'write -P 4 4k 8k' -c 'write -z 8M 4k' \
	-c 'write -P 5 60M 64k' -c 'write -P 6 31M 12k' "$q/top.qcow2" \
	>/dev/null || fail "qemu-io top"

qemu-img map --output=json "$q/top.qcow2" >"$T/qemu.json" ||
	fail "qemu-img map"
"$LAYERIMG" map --json "$q/top.qcow2" >"$T/map.json" 2>"$T/map.err" ||
	fail "layerimg map --json: $(cat "$T/map.err")"
python3 -m json.tool "$T/map.json" >/dev/null || fail "map.json is not JSON"
ok "map --json is valid JSON"

# Normalise both: one entry per maximal byte range with the same
# (depth, present, zero, data) and the same offset - start.
python3 - "$T/qemu.json" "$T/map.json" "$q" <<'EOF' || fail "maps differ"
import json, os, sys

def norm(path, with_file=False):
    out, pos = [], 0
    for e in json.load(open(path)):
        assert e["start"] == pos, "%s: gap or overlap at %d" % (path, pos)
        assert e["length"] > 0
        d = e.get("offset")
        k = (e["depth"], e["present"], e["zero"], e["data"],
             None if d is None else d - e["start"])
        if with_file:
            assert ("file" in e) == e["present"], e
        if out and out[-1][1] == pos and out[-1][2] == k:
            out[-1][1] += e["length"]
        else:
            out.append([pos, pos + e["length"], k])
        pos += e["length"]
    return out, pos

qm, qend = norm(sys.argv[1])
lm, lend = norm(sys.argv[2], True)
assert qend == lend == 64 << 20, (qend, lend)
if qm != lm:
    for a, b in zip(qm, lm):
        if a != b:
            sys.exit("first difference: qemu %s, layerimg %s" % (a, b))
    sys.exit("different number of ranges: %d vs %d" % (len(qm), len(lm)))
# the file names the layer at that depth
names = ["top.qcow2", "mid.qcow2", "base.qcow2"]
for e in json.load(open(sys.argv[2])):
    if e["present"]:
        assert os.path.basename(e["file"]) == names[e["depth"]], e
kinds = {(k[1], k[2], k[3]) for _, _, k in lm}
assert {(True, False, True), (True, True, False), (False, True, False)} <= kinds, kinds
print("%d ranges agree" % len(lm))
EOF
ok "map --json agrees with qemu-img map on every byte range"

# the text form: a header and one line per extent, holes marked
"$LAYERIMG" map "$q/top.qcow2" >"$T/map.txt" || fail "layerimg map"
head -1 "$T/map.txt" | grep -q "^Start  *Length  *Layer  *Kind  *Offset  *File" ||
	fail "map header: $(head -1 "$T/map.txt")"
[ "$(($(wc -l <"$T/map.txt") - 1))" -eq "$(python3 -c '
import json, sys; print(len(json.load(open(sys.argv[1]))))' "$T/map.json")" ] ||
	fail "text and JSON have different extent counts"
grep -Eq "^0x[0-9a-f]+ +0x[0-9a-f]+ +- +hole +- +-$" "$T/map.txt" ||
	fail "no hole line in the text map"
grep -Eq " zero +- +.*top.qcow2$" "$T/map.txt" || fail "no zero line for top"
ok "map text form"

# ---- a VHD differencing chain: holes read as zeros in 7-Zip's output ----
v=$T/v
mkdir -p "$v"
mkvhd() { python3 "$TOOLS/mkvhd.py" "$@" >/dev/null || fail "mkvhd.py $*"; }
python3 - "$T/v0.raw" <<'EOF'
import random, sys
r = random.Random(11)
MiB = 1 << 20
open(sys.argv[1], "wb").write(r.randbytes(MiB) + bytes(3 * MiB) +
                              r.randbytes(5 * 512) + bytes(2 * MiB - 2560))
EOF
mkvhd create-dynamic "$v/v0.vhd" --from "$T/v0.raw" --block-size 512K
mkvhd create-diff "$v/v1.vhd" --parent "$v/v0.vhd" --expect-in "$T/v0.raw" \
	--expect-out "$T/v1.raw" --writes "3000+5,5000+1=0x00,9000+30" --seed 3
7zz e -so -tvhd "$v/v1.vhd" >"$T/v1-7z.raw" 2>/dev/null || fail "7zz -tvhd"
cmp -s "$T/v1-7z.raw" "$T/v1.raw" || fail "7-Zip and mkvhd.py disagree"
"$LAYERIMG" map --json "$v/v1.vhd" >"$T/vmap.json" || fail "map v1.vhd"
python3 - "$T/vmap.json" "$T/v1-7z.raw" <<'EOF' || fail "VHD map check"
import json, sys
m = json.load(open(sys.argv[1]))
disk = open(sys.argv[2], "rb").read()
pos, layers = 0, set()
for e in m:
    assert e["start"] == pos, "gap at %d" % pos
    if not e["data"]:
        chunk = disk[e["start"]:e["start"] + e["length"]]
        assert chunk.count(0) == len(chunk), "non-zero bytes in %s" % e
    else:
        layers.add(e["depth"])
    pos += e["length"]
assert pos == len(disk), (pos, len(disk))
assert layers == {0, 1}, layers
EOF
ok "VHD chain: extents tile the disk, holes read as zeros, both layers provide data"

# errors and help
rc=0
"$LAYERIMG" map "$T/nope.qcow2" 2>"$T/e.err" || rc=$?
[ $rc -eq 2 ] && grep -q "nope.qcow2" "$T/e.err" ||
	fail "missing image: exit $rc: $(cat "$T/e.err")"
"$LAYERIMG" map --help | grep -q "^Usage: layerimg map" || fail "map --help"
rc=0
"$LAYERIMG" map --bogus "$q/top.qcow2" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "unknown option: exit $rc"
ok "map errors and --help"
finish
