#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerimg info on an IMAGEDIR holding:
#   - a tagged qcow2 chain win-L0 <- win-L1 <- win-L2 whose base holds a
#     GPT with an ext4 partition (checked against sfdisk --json and
#     blkid), with an internal snapshot in L1 (against qemu-img info) and
#     per-layer sizes and allocation (against qemu-img info and qemu-img
#     map of each file alone);
#   - a VHD differencing pair (parent UUID checked, locators listed);
#   - a VHDX with a dirty log (replayed in memory, reported);
#   - layer-rule violations (a parent of a higher level; an L0nn name);
#   - a qcow2 whose backing file is missing (left out, counted).
# Android sparse images (img2simg, and mksimg.py with CRC32 chunks and an
# image_checksum set here) are checked alone: their format facts against
# the file parsed with python's struct module.
# The JSON must be valid and match docs/layerimg-json.md's layout; the
# text form must show the same facts.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io sfdisk blkid mkfs.ext4 python3 img2simg
require_script mkvhd.py
require_script mkvhdx.py
[ -x "${LAYERIMG:-}" ] || fail "LAYERIMG must name the built layerimg"

d=$T/img
mkdir -p "$d"
MiB=$((1 << 20))

# ---- the qcow2 chain, base with a GPT and an ext4 partition ----
truncate -s $((32 * MiB)) "$T/base.raw"
sfdisk -q "$T/base.raw" <<'EOF' || fail "sfdisk"
label: gpt
start=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="rootfs"
start=24576, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
EOF
mkfs.ext4 -q -F -L layerroot -E offset=$((2048 * 512)) "$T/base.raw" \
	$((20480 / 2))k || fail "mkfs.ext4"
qemu-img convert -q -f raw -O qcow2 "$T/base.raw" "$d/win-L0.qcow2"
qemu-img create -q -f qcow2 -b win-L0.qcow2 -F qcow2 "$d/win-L1.qcow2"
qemu-io -f qcow2 -c 'write -P 0x11 20M 1M' -c 'write -z 30M 64k' \
	"$d/win-L1.qcow2" >/dev/null || fail "qemu-io L1"
qemu-img snapshot -c before-update "$d/win-L1.qcow2" || fail "snapshot"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b win-L1.qcow2 -F qcow2 \
	"$d/win-L2.qcow2"
qemu-io -f qcow2 -c 'write -P 0x22 22M 8k' "$d/win-L2.qcow2" >/dev/null ||
	fail "qemu-io L2"

# ---- a VHD pair ----
python3 - "$T/v.raw" <<'EOF'
import random, sys
open(sys.argv[1], "wb").write(random.Random(4).randbytes(1 << 20) + bytes(3 << 20))
EOF
python3 "$TOOLS/mkvhd.py" create-dynamic "$d/vhdbase.vhd" --from "$T/v.raw" \
	--block-size 512K >/dev/null || fail "mkvhd base"
python3 "$TOOLS/mkvhd.py" create-diff "$d/vhdchild.vhd" \
	--parent "$d/vhdbase.vhd" --expect-in "$T/v.raw" \
	--expect-out "$T/vchild.raw" --writes "10+3" --seed 1 >/dev/null ||
	fail "mkvhd diff"

# ---- a VHDX with a dirty log ----
python3 "$TOOLS/mkvhdx.py" dirtylog --kind all "$d/dirty.vhdx" >/dev/null ||
	fail "mkvhdx dirtylog"
rm -f "$d"/*.raw

# ---- layer rules: a higher-level parent, and an L0nn name ----
qemu-img create -q -f qcow2 "$d/app-L5.qcow2" 8M
qemu-img create -q -f qcow2 -b app-L5.qcow2 -F qcow2 "$d/app-L3.qcow2"
qemu-img create -q -f qcow2 "$d/bad-L001.qcow2" 8M

# ---- a broken one ----
qemu-img create -q -f qcow2 "$T/gone.qcow2" 8M
qemu-img create -q -f qcow2 -b "$T/gone.qcow2" -F qcow2 "$d/orphan.qcow2"
rm "$T/gone.qcow2"

"$LAYERIMG" info --json "$d" >"$T/info.json" 2>"$T/info.err" ||
	fail "info --json: $(cat "$T/info.err")"
python3 -m json.tool "$T/info.json" >/dev/null || fail "info.json is not JSON"
grep -q "orphan.qcow2" "$T/info.err" || fail "no message about orphan.qcow2"
ok "info --json on a directory: valid JSON, the orphan named on stderr"

# the oracles, per qcow2 file
for f in win-L0 win-L1 win-L2; do
	qemu-img info --output=json "$d/$f.qcow2" >"$T/$f.qinfo"
	qemu-img map --output=json \
		"json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$d/$f.qcow2\"},\"backing\":null}" \
		>"$T/$f.qmap" || fail "qemu-img map $f"
done
sfdisk --json "$T/base.raw" >"$T/sfdisk.json" || fail "sfdisk --json"
blkid -p -O $((2048 * 512)) -o export "$T/base.raw" >"$T/blkid.txt" ||
	fail "blkid"

python3 - "$T" "$d" <<'EOF' || fail "info.json content"
import json, os, sys
T, D = sys.argv[1], sys.argv[2]
info = json.load(open(os.path.join(T, "info.json")))
assert info["version"] == 1 and info["path"] == D, info["path"]
chains = {c["name"]: c for c in info["chains"]}
want = {"win-L0", "win-L1", "win-L2", "vhdbase", "vhdchild", "dirty",
        "app-L5", "app-L3", "bad-L001"}
assert set(chains) == want, sorted(chains)
assert info["failed"] == 1, info["failed"]
LAYER_KEYS = {"index", "file", "format", "subtype", "layer", "virtual_size",
              "logical_sector_size", "physical_sector_size", "block_size",
              "file_size", "allocated_bytes", "zero_bytes", "identity",
              "parent"}
CHAIN_KEYS = {"name", "top", "virtual_size", "sector_size", "depth",
              "is_parent", "layers", "warnings", "partitions"}
for c in info["chains"]:
    assert set(c) == CHAIN_KEYS, sorted(c)
    assert c["depth"] == len(c["layers"])
    for i, l in enumerate(c["layers"]):
        assert LAYER_KEYS <= set(l), sorted(l)
        assert l["index"] == i

# the qcow2 chain against qemu-img
c = chains["win-L2"]
assert [os.path.basename(l["file"]) for l in c["layers"]] == \
    ["win-L2.qcow2", "win-L1.qcow2", "win-L0.qcow2"]
assert [l["layer"] for l in c["layers"]] == ["L2", "L1", "L0"]
assert c["virtual_size"] == 32 << 20 and c["sector_size"] == 512
assert not c["is_parent"] and chains["win-L1"]["is_parent"]
assert c["warnings"] == [], c["warnings"]
for l in c["layers"]:
    name = os.path.basename(l["file"])[:-6]
    qi = json.load(open(os.path.join(T, name + ".qinfo")))
    qm = json.load(open(os.path.join(T, name + ".qmap")))
    assert l["format"] == "qcow2"
    assert l["virtual_size"] == qi["virtual-size"], name
    assert l["block_size"] == qi["cluster-size"], name
    assert l["file_size"] == os.path.getsize(l["file"]), name
    data = sum(e["length"] for e in qm if e["present"] and e["data"])
    zero = sum(e["length"] for e in qm if e["present"] and e["zero"])
    assert l["allocated_bytes"] == data, (name, l["allocated_bytes"], data)
    assert l["zero_bytes"] == zero, (name, l["zero_bytes"], zero)
    p = l["parent"]
    if "backing-filename" in qi:
        assert p["reference"] == qi["backing-filename"], (p, qi)
        assert p["resolved"] == c["layers"][l["index"] + 1]["file"]
        assert p["identity_check"] == "not-recorded"
        assert p["recorded_format"] == "qcow2"
        assert [r["path"] for r in p["references"]] == [qi["backing-filename"]]
    else:
        assert p is None, p
    qs = qi.get("snapshots", [])
    assert len(l["snapshots"]) == len(qs), name
    for a, b in zip(l["snapshots"], qs):
        assert a["id"] == b["id"] and a["name"] == b["name"], (a, b)
        assert a["date_sec"] == b["date-sec"], (a, b)
        assert a["vm_state_size"] == b["vm-state-size"], (a, b)
assert [s["name"] for s in c["layers"][1]["snapshots"]] == ["before-update"]

# partitions against sfdisk and blkid
pt = c["partitions"]
sf = json.load(open(os.path.join(T, "sfdisk.json")))["partitiontable"]
assert pt["table"] == "gpt", pt
assert pt["id"].lower() == sf["id"].lower(), (pt["id"], sf["id"])
assert len(pt["entries"]) == len(sf["partitions"]), pt
for a, b in zip(pt["entries"], sf["partitions"]):
    assert a["start"] == b["start"] * 512 and a["size"] == b["size"] * 512, (a, b)
    assert a["type"].lower() == b["type"].lower(), (a, b)
    assert a["uuid"].lower() == b["uuid"].lower(), (a, b)
    assert a["name"] == b["name"], (a, b)
blk = dict(l.split("=", 1) for l in open(os.path.join(T, "blkid.txt")).read().split())
p1 = pt["entries"][0]
assert p1["fstype"] == blk["TYPE"] == "ext4" and p1["label"] == blk["LABEL"], (p1, blk)
assert pt["entries"][1]["fstype"] is None

# the VHD pair: the parent UUID was checked
c = chains["vhdchild"]
top, base = c["layers"]
assert top["format"] == "vhd" and top["subtype"] == "differencing"
assert base["subtype"] == "dynamic" and base["block_size"] == 512 << 10
p = top["parent"]
assert p["identity_check"] == "matched", p
assert p["identity_kind"] == "vhd-uuid"
assert p["expected_identity"] == base["identity"] is not None, (p, base)
assert p["resolved"] == base["file"] and p["reference"] and p["locator"], p
assert len(p["references"]) >= 1 and all(r["kind"] in ("relative", "absolute", "name") for r in p["references"])
assert top["allocated_bytes"] > 0

# the dirty VHDX
l = chains["dirty"]["layers"][0]
assert l["format"] == "vhdx" and l["log"]["dirty"], l.get("log")
assert l["log"]["entries_replayed"] >= 1 and l["log"]["guid"], l["log"]
assert chains["vhdbase"]["layers"][0].get("log") is None

# the layer rules
w = chains["app-L3"]["warnings"]
assert len(w) == 1 and "app-L3.qcow2: layer rule:" in w[0] and "L5" in w[0], w
w = chains["bad-L001"]["warnings"]
assert len(w) == 1 and "bad-L001.qcow2: layer rule:" in w[0], w
EOF
ok "info --json matches qemu-img, sfdisk, blkid and the files"

# one chain of the directory, and a single file: the same facts
# (scanning the directory again repeats its messages: kept in scan.err)
"$LAYERIMG" info --json "$d" win-L2 >"$T/one.json" 2>>"$T/scan.err" ||
	fail "info DIR CHAIN"
"$LAYERIMG" info --json "$d/win-L2.qcow2" >"$T/file.json" || fail "info FILE"
python3 - "$T/info.json" "$T/one.json" "$T/file.json" <<'EOF' || fail "info subsets"
import json, os, sys
full = {c["name"]: c for c in json.load(open(sys.argv[1]))["chains"]}
one = json.load(open(sys.argv[2]))
assert len(one["chains"]) == 1 and one["chains"][0] == full["win-L2"]
f = json.load(open(sys.argv[3]))["chains"][0]
a, b = f["layers"], full["win-L2"]["layers"]
assert [os.path.basename(x["file"]) for x in a] == [os.path.basename(x["file"]) for x in b]
for x, y in zip(a, b):
    for k in ("allocated_bytes", "zero_bytes", "virtual_size", "layer"):
        assert x[k] == y[k], (k, x[k], y[k])
assert f["partitions"] == full["win-L2"]["partitions"]
EOF
ok "info DIR CHAIN and info FILE show the same chain"

# the text form
"$LAYERIMG" info "$d" win-L2 >"$T/info.txt" 2>>"$T/scan.err" ||
	fail "info text"
for re in '^chain win-L2: 32 MiB \(33554432 bytes\), 512-byte sectors, 3 layers$' \
	'layer tag: +L1$' 'format: +qcow2' 'block size: +4 KiB$' \
	'parent: +"win-L1.qcow2" \(backing file\) -> .*win-L1.qcow2$' \
	'before-update' 'partitions: +gpt' ' ext4 +rootfs / layerroot$' \
	'warnings: +none$'; do
	grep -Eq -- "$re" "$T/info.txt" || fail "info text lacks /$re/: $(cat "$T/info.txt")"
done
"$LAYERIMG" info "$d" app-L3 2>>"$T/scan.err" | grep -q "layer rule" ||
	fail "text warnings"
"$LAYERIMG" info "$d/dirty.vhdx" 2>/dev/null | grep -Eq "log: +dirty, [0-9]+ entr" ||
	fail "text: dirty log"
"$LAYERIMG" info "$d/vhdchild.vhd" | grep -Eq "parent id: +matched" ||
	fail "text: parent id"
ok "info text form"

# JSON string escaping: a file name with a quote, a backslash, a tab, a
# control character, valid UTF-8 and an invalid byte
w=$T/weird
mkdir -p "$w"
name=$(printf 'we"ird\\na\tme\001-\303\251-\377.qcow2')
qemu-img create -q -f qcow2 "$w/$name" 1M
"$LAYERIMG" info --json "$w" >"$T/weird.json" || fail "info on the weird name"
qemu-io -f qcow2 -c 'write 0 4k' "$w/$name" >/dev/null || fail "qemu-io weird"
"$LAYERIMG" map --json "$w/$name" >"$T/weird-map.json" || fail "map weird"
python3 - "$T/weird.json" "$T/weird-map.json" <<'EOF' || fail "escaping"
import json, os, sys
raw = open(sys.argv[1], "rb").read()
assert b"\xff" not in raw and b"\x01" not in raw and b"\t" not in raw.split(b'"file"')[1][:40]
info = json.loads(raw.decode("utf-8"))
want = 'we"ird\\na\tme\x01-\u00e9-\ufffd.qcow2'
got = os.path.basename(info["chains"][0]["layers"][0]["file"])
assert got == want, (got, want)
m = json.loads(open(sys.argv[2], "rb").read().decode("utf-8"))
assert os.path.basename(m[0]["file"]) == want, m[0]
EOF
ok "JSON escapes quotes, backslashes, control bytes and invalid UTF-8"

# Android sparse: the format facts against the file read with struct
sp=$T/sparse
mkdir -p "$sp"
python3 - "$sp/s.raw" <<'EOF'
import random, struct, sys
r = random.Random(7)
b = bytearray()
for kind in "RRZZFFRZZZFRZ":	# random, zero, fill blocks of 4 KiB
    if kind == "R":
        b += r.randbytes(4096)
    elif kind == "F":
        b += struct.pack("<I", 0xa5b6c7d8) * 1024
    else:
        b += bytes(4096)
open(sys.argv[1], "wb").write(b)
EOF
img2simg "$sp/s.raw" "$sp/i2s.simg" || fail "img2simg"
python3 "$TOOLS/mksimg.py" "$sp/s.raw" "$sp/mk.simg" --crc --crc-every 2 \
	--block-size 1024 >/dev/null || fail "mksimg"
python3 - "$sp/s.raw" "$sp/mk.simg" <<'EOF' || fail "image_checksum"
import struct, sys, zlib
f = bytearray(open(sys.argv[2], "rb").read())
struct.pack_into("<I", f, 24, zlib.crc32(open(sys.argv[1], "rb").read()))
open(sys.argv[2], "wb").write(f)
EOF
for s in i2s mk; do
	"$LAYERIMG" info --json "$sp/$s.simg" >"$sp/$s.json" ||
		fail "info $s.simg"
	"$LAYERIMG" info "$sp/$s.simg" >"$sp/$s.txt" || fail "info text $s.simg"
	python3 - "$sp/$s.simg" "$sp/$s.json" "$sp/$s.txt" <<'EOF' ||
import json, struct, sys
d = open(sys.argv[1], "rb").read()
(magic, major, minor, fhs, chs, bs, blks, nchunks,
 csum) = struct.unpack_from("<IHHHHIIII", d, 0)
assert magic == 0xED26FF3A
want = {"major_version": major, "minor_version": minor, "block_size": bs,
        "total_blocks": blks, "total_chunks": nchunks}
names = {0xCAC1: "raw_chunks", 0xCAC2: "fill_chunks",
         0xCAC3: "dont_care_chunks", 0xCAC4: "crc32_chunks"}
for n in names.values():
    want[n] = 0
pos = fhs
for _ in range(nchunks):
    t, _, sz, total = struct.unpack_from("<HHII", d, pos)
    want[names[t]] += 1
    pos += total
assert pos == len(d), (pos, len(d))
if csum:
    want["image_checksum"] = csum
j = json.load(open(sys.argv[2]))["chains"][0]["layers"][0]
assert j["format"] == "asparse", j["format"]
assert j["format_specific"] == want, (j["format_specific"], want)
assert list(j["format_specific"]) == list(want), "fact order"
text = "format facts:  " + ", ".join("%s=%d" % kv for kv in want.items())
assert text in open(sys.argv[3]).read(), text
EOF
		fail "$s.simg: format facts differ: $(cat "$sp/$s.json")"
done
grep -q "crc32_chunks=[1-9]" "$sp/mk.txt" || fail "mk.simg: no CRC32 chunks"
grep -q "image_checksum=" "$sp/mk.txt" || fail "mk.simg: no image_checksum"
grep -q "fill_chunks=[1-9]" "$sp/mk.txt" || fail "mk.simg: no FILL chunks"
grep -q "dont_care_chunks=[1-9]" "$sp/mk.txt" || fail "mk.simg: no DONT_CARE"
ok "Android sparse format facts match the files (img2simg, mksimg.py)"

# errors and help
rc=0
"$LAYERIMG" info "$d" nosuchchain >/dev/null 2>"$T/e.err" || rc=$?
[ $rc -eq 2 ] && grep -q "nosuchchain" "$T/e.err" ||
	fail "unknown chain: exit $rc: $(cat "$T/e.err")"
rc=0
"$LAYERIMG" info "$d/orphan.qcow2" >/dev/null 2>"$T/e2.err" || rc=$?
[ $rc -eq 2 ] && grep -q "orphan.qcow2" "$T/e2.err" ||
	fail "orphan: exit $rc: $(cat "$T/e2.err")"
"$LAYERIMG" info --help | grep -q "^Usage: layerimg info" || fail "info --help"
ok "info errors and --help"
finish
