#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vhdxcheck.py: structural check of a Microsoft VHDX file.

Written from the MS-VHDX v1.0 specification alone; it shares no code with
src/format/vhdx*.c (nor with mkvhdx.py), so it can judge what the driver
writes.  Python 3 standard library only.

  vhdxcheck.py FILE [--quiet]
  vhdxcheck.py --self-test [--keep DIR]

Checks: the file identifier; both headers (signature, CRC-32C, version 1,
log version 0, at least one valid, the current one is the valid one with
the highest sequence number, equal sequence numbers mean identical
headers); an empty log (LogGuid zero: a cleanly closed file has nothing
to replay), the log 1 MiB aligned and inside the file; both region tables
(signature, CRC-32C, entry count, identical), the BAT and metadata
regions present, 1 MiB aligned, inside the file and clear of the header
area, the log and each other; unknown regions or metadata items marked
required; the metadata table (signature, entry count, items inside the
region and not overlapping, the required items present with their sizes,
a parent locator exactly when HasParent); sane values (block size a power
of two from 1 MiB to 256 MiB, sector sizes 512 or 4096, the disk size a
multiple of the logical sector size); the BAT (large enough for the disk,
every state valid for its kind of entry, PARTIALLY_PRESENT only in a
differencing file and only under a present sector bitmap, every present
payload and sector-bitmap block 1 MiB aligned, inside the file and
overlapping nothing else); the parent locator of a differencing file
(type GUID, key/value entries inside the item, UTF-16LE, unique keys,
parent_linkage a GUID, at least one path).

Warnings (not errors): reserved BAT bits set, allocated entries past the
virtual size, SB_PRESENT in a file without a parent, unknown optional
regions.

Exit status: 0 no errors, 1 errors (one line per problem on stdout),
2 the file could not be read.  --self-test damages copies of generated
files and checks that each damage is found (needs qemu-img, mkvhdx.py).
"""

import argparse
import mmap
import os
import re
import struct
import sys
import uuid

KiB = 1024
MiB = 1024 * KiB

# ---- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) ----

_T = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _T.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    t = _T
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def crc_ok(buf, at=4):
    """The checksum stored at offset at matches buf with it zeroed."""
    stored = struct.unpack_from("<I", buf, at)[0]
    z = bytearray(buf)
    z[at:at + 4] = bytes(4)
    return stored == crc32c(z), stored


def guid(s):
    return uuid.UUID(s).bytes_le


G_BAT = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
G_META = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
ITEMS = {   # id -> (name, size)
    guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B"): ("file parameters", 8),
    guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8"): ("virtual disk size", 8),
    guid("BECA12AB-B2E6-4523-93EF-C309E000C746"): ("page 83 data", 16),
    guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F"):
        ("logical sector size", 4),
    guid("CDA348C7-445D-4471-9CC9-E9885251C556"):
        ("physical sector size", 4),
    guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"): ("parent locator", None),
}
G_LOCATOR_TYPE = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

PAYLOAD_STATES = {0: "NOT_PRESENT", 1: "UNDEFINED", 2: "ZERO",
                  3: "UNMAPPED", 6: "FULLY_PRESENT", 7: "PARTIALLY_PRESENT"}
SB_STATES = {0: "SB_NOT_PRESENT", 6: "SB_PRESENT"}
FULLY, PARTIAL, SB_PRESENT = 6, 7, 6
GUID_RE = re.compile(r"^\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}$")
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


class Checker:
    def __init__(self, path, quiet=False):
        self.path = path
        self.quiet = quiet
        self.errors = 0
        self.lines = []

    def error(self, msg):
        self.errors += 1
        self.lines.append(msg)
        print("%s: %s" % (self.path, msg))

    def warn(self, msg):
        if not self.quiet:
            print("%s: warning: %s" % (self.path, msg))


def check_headers(c, data):
    """The current header's fields, or None."""
    valid = []
    for i, off in ((1, 64 * KiB), (2, 128 * KiB)):
        h = bytes(data[off:off + 4 * KiB])
        where = "header %d" % i
        if h[0:4] != b"head":
            c.error("%s: signature %r, not \"head\"" % (where, h[0:4]))
            continue
        ok, stored = crc_ok(h)
        if not ok:
            c.error("%s: CRC-32C 0x%08x does not match the header"
                    % (where, stored))
            continue
        valid.append((struct.unpack_from("<Q", h, 8)[0], i, h))
    if not valid:
        c.error("no valid header")
        return None
    valid.sort(key=lambda v: v[0])
    if len(valid) == 2 and valid[0][0] == valid[1][0] \
            and valid[0][2] != valid[1][2]:
        c.error("both headers have sequence number %d but differ"
                % valid[0][0])
    seq, i, h = valid[-1]
    where = "header %d (current, sequence %d)" % (i, seq)
    logver, version, loglen, logoff = struct.unpack_from("<HHIQ", h, 64)
    if version != 1:
        c.error("%s: version %d, not 1" % (where, version))
    if logver != 0:
        c.error("%s: log version %d, not 0" % (where, logver))
    for s, k, hh in valid[:-1]:
        v2 = struct.unpack_from("<H", hh, 66)[0]
        if v2 != 1:
            c.error("header %d: version %d, not 1" % (k, v2))
    log_guid = h[48:64]
    if log_guid != bytes(16):
        c.error("%s: log not empty (LogGuid %s): the log must be replayed"
                % (where, uuid.UUID(bytes_le=log_guid)))
    return {"seq": seq, "loglen": loglen, "logoff": logoff,
            "log_guid": log_guid}


def check_region_tables(c, data):
    """{guid: (offset, length)} of the first valid table, or None."""
    tabs = []
    for i, off in ((1, 192 * KiB), (2, 256 * KiB)):
        t = bytes(data[off:off + 64 * KiB])
        where = "region table %d" % i
        if t[0:4] != b"regi":
            c.error("%s: signature %r, not \"regi\"" % (where, t[0:4]))
            continue
        ok, stored = crc_ok(t)
        if not ok:
            c.error("%s: CRC-32C 0x%08x does not match the table"
                    % (where, stored))
            continue
        tabs.append((i, t))
    if not tabs:
        c.error("no valid region table")
        return None
    if len(tabs) == 2 and tabs[0][1] != tabs[1][1]:
        c.error("the two region tables differ")
    i, t = tabs[0]
    n = struct.unpack_from("<I", t, 8)[0]
    if n > 2047:
        c.error("region table %d: %d entries (at most 2047)" % (i, n))
        return None
    regions = {}
    for k in range(n):
        e = 16 + 32 * k
        g = t[e:e + 16]
        off, ln, req = struct.unpack_from("<QII", t, e + 16)
        if g in (G_BAT, G_META):
            name = "BAT" if g == G_BAT else "metadata"
        else:
            name = "region %s" % uuid.UUID(bytes_le=g)
            if req & 1:
                c.error("unknown %s is marked required" % name)
            else:
                c.warn("unknown optional %s" % name)
        if g in regions:
            c.error("%s region listed twice" % name)
            continue
        regions[g] = (off, ln, name)
    for g, name in ((G_BAT, "BAT"), (G_META, "metadata")):
        if g not in regions:
            c.error("no %s region" % name)
    return regions


def check_metadata(c, data, off, ln):
    """{item name: bytes}, or None."""
    if ln < 64 * KiB:
        c.error("metadata region of %d bytes is smaller than its table" % ln)
        return None
    m = data[off:off + ln]
    if m[0:8] != b"metadata":
        c.error("metadata table: signature %r, not \"metadata\"" % m[0:8])
        return None
    n = struct.unpack_from("<H", m, 10)[0]
    if n > 2047:
        c.error("metadata table: %d entries (at most 2047)" % n)
        return None
    items = {}
    spans = []
    for k in range(n):
        e = 32 + 32 * k
        g = bytes(m[e:e + 16])
        ioff, iln, flags = struct.unpack_from("<III", m, e + 16)
        name = ITEMS[g][0] if g in ITEMS else \
            "item %s" % uuid.UUID(bytes_le=g)
        if g not in ITEMS:
            if flags & 4:
                c.error("unknown metadata %s is marked required" % name)
            else:
                c.warn("unknown optional metadata %s" % name)
        if iln == 0:
            if ioff:
                c.error("metadata %s: length 0 but offset %d" % (name, ioff))
        elif ioff < 64 * KiB or ioff + iln > ln:
            c.error("metadata %s (%d bytes at %d) lies outside the "
                    "metadata region (64 KiB..%d)" % (name, iln, ioff, ln))
            continue
        else:
            spans.append((ioff, iln, name))
        if name in items:
            c.error("metadata %s listed twice" % name)
            continue
        if g in ITEMS and ITEMS[g][1] is not None and iln != ITEMS[g][1]:
            c.error("metadata %s: %d bytes, not %d"
                    % (name, iln, ITEMS[g][1]))
            continue
        items[name] = bytes(m[ioff:ioff + iln])
    spans.sort()
    for (a, al, an), (b, bl, bn) in zip(spans, spans[1:]):
        if b < a + al:
            c.error("metadata %s overlaps %s" % (an, bn))
    ok = True
    for g, (name, size) in ITEMS.items():
        if size is not None and name not in items:
            c.error("metadata: no %s item" % name)
            ok = False
    return items if ok else None


def check_locator(c, blob):
    if len(blob) < 20:
        c.error("parent locator: %d bytes, too short" % len(blob))
        return
    if blob[0:16] != G_LOCATOR_TYPE:
        c.error("parent locator: type %s is not the VHDX one"
                % uuid.UUID(bytes_le=blob[0:16]))
    n = struct.unpack_from("<H", blob, 18)[0]
    if 20 + 12 * n > len(blob):
        c.error("parent locator: %d entries do not fit in %d bytes"
                % (n, len(blob)))
        return
    kv = {}
    for k in range(n):
        ko, vo, kl, vl = struct.unpack_from("<IIHH", blob, 20 + 12 * k)
        where = "parent locator entry %d" % k
        if kl == 0 or vl == 0:
            c.error("%s: empty key or value" % where)
            continue
        if ko + kl > len(blob) or vo + vl > len(blob) \
                or ko < 20 + 12 * n or vo < 20 + 12 * n:
            c.error("%s: key or value lies outside the item" % where)
            continue
        try:
            key = blob[ko:ko + kl].decode("utf-16-le")
            val = blob[vo:vo + vl].decode("utf-16-le")
        except UnicodeDecodeError as e:
            c.error("%s: not UTF-16LE (%s)" % (where, e.reason))
            continue
        if key in kv:
            c.error("parent locator: key %r twice" % key)
        kv[key] = val
    link = kv.get("parent_linkage")
    if link is None:
        c.error("parent locator: no parent_linkage")
    elif not GUID_RE.match(link):
        c.error("parent locator: parent_linkage %r is not a GUID" % link)
    if "parent_linkage2" in kv and not GUID_RE.match(kv["parent_linkage2"]):
        c.error("parent locator: parent_linkage2 %r is not a GUID"
                % kv["parent_linkage2"])
    if not any(kv.get(k) for k in PATH_KEYS):
        c.error("parent locator: no path (%s)" % ", ".join(PATH_KEYS))


def check_bat(c, data, bat_off, bat_len, geo, spans):
    bs, lss, size, parent = geo
    cr = (1 << 23) * lss // bs
    nblocks = -(-size // bs)
    nsb = -(-nblocks // cr)
    if parent:
        total = nsb * (cr + 1)
    else:
        total = nblocks + (nblocks - 1) // cr
    if total * 8 > bat_len:
        c.error("BAT region (%d bytes) is too small for %d entries"
                % (bat_len, total))
        total = bat_len // 8
    bat = data[bat_off:bat_off + total * 8]
    ents = [v for (v,) in struct.iter_unpack("<Q", bat)]
    sb_state = {}
    reserved = 0
    for i in range(cr, total, cr + 1):
        chunk = i // (cr + 1)
        st = ents[i] & 7
        sb_state[chunk] = st
        if ents[i] & 0xFFFF8:
            reserved += 1
        if st not in SB_STATES:
            c.error("BAT entry %d (sector bitmap of chunk %d): state %d"
                    % (i, chunk, st))
            continue
        if st == SB_PRESENT:
            if not parent:
                c.warn("BAT entry %d: SB_PRESENT in a file without a "
                       "parent" % i)
            spans.append((ents[i] >> 20 << 20, MiB,
                          "sector bitmap of chunk %d" % chunk))
    for i, v in enumerate(ents):
        if i % (cr + 1) == cr:
            continue
        blk = i - i // (cr + 1)
        st = v & 7
        if v & 0xFFFF8:
            reserved += 1
        where = "BAT entry %d (block %d)" % (i, blk)
        if st not in PAYLOAD_STATES:
            c.error("%s: state %d" % (where, st))
            continue
        if st not in (FULLY, PARTIAL):
            continue
        if blk >= nblocks:
            c.warn("%s: %s past the virtual size"
                   % (where, PAYLOAD_STATES[st]))
        if st == PARTIAL:
            if not parent:
                c.error("%s: PARTIALLY_PRESENT in a file without a parent"
                        % where)
            elif sb_state.get(blk // cr) != SB_PRESENT:
                c.error("%s: PARTIALLY_PRESENT but the sector bitmap of "
                        "chunk %d is not present" % (where, blk // cr))
        spans.append((v >> 20 << 20, bs, "block %d" % blk))
    if reserved:
        c.warn("%d BAT entries have reserved bits set" % reserved)


def check(path, quiet=False):
    c = Checker(path, quiet)
    with open(path, "rb") as fp:
        try:    # large sparse images: map, do not read
            data = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:      # an empty file
            data = b""
    fsize = c.size = len(data)
    if data[0:8] != b"vhdxfile":
        c.error("no \"vhdxfile\" file identifier")
        return c
    if fsize < MiB:
        c.error("file of %d bytes is shorter than the 1 MiB header area"
                % fsize)
        return c
    spans = [(0, MiB, "the header area")]

    def placed(off, ln, what, align=MiB):
        if off % align or ln % align:
            c.error("%s (%d bytes at %d) is not 1 MiB aligned"
                    % (what, ln, off))
        if off + ln > fsize:
            c.error("%s (%d bytes at %d) lies past the end of the file "
                    "(%d)" % (what, ln, off, fsize))
            return False
        return True

    h = check_headers(c, data)
    if h and h["loglen"]:
        placed(h["logoff"], h["loglen"], "the log")
        spans.append((h["logoff"], h["loglen"], "the log"))
    elif h and h["logoff"] % MiB:
        c.error("log offset %d is not 1 MiB aligned" % h["logoff"])
    regions = check_region_tables(c, data)
    if regions is None:
        return finish(c, spans)
    for g, (off, ln, name) in regions.items():
        if placed(off, ln, "the %s region" % name) or g not in (G_BAT,
                                                                G_META):
            spans.append((off, ln, "the %s region" % name))
    if G_META not in regions or G_BAT not in regions:
        return finish(c, spans)
    moff, mln, _ = regions[G_META]
    if moff + mln > fsize:
        return finish(c, spans)
    items = check_metadata(c, data, moff, mln)
    if items is None:
        return finish(c, spans)
    bs, flags = struct.unpack("<II", items["file parameters"])
    size = struct.unpack("<Q", items["virtual disk size"])[0]
    lss = struct.unpack("<I", items["logical sector size"])[0]
    pss = struct.unpack("<I", items["physical sector size"])[0]
    parent = bool(flags & 2)
    bad = False
    if bs < MiB or bs > 256 * MiB or bs & (bs - 1):
        c.error("block size %d is not a power of two from 1 MiB to 256 MiB"
                % bs)
        bad = True
    if flags & ~3:
        c.error("file parameters: reserved flags 0x%x" % (flags & ~3))
    for what, v in (("logical", lss), ("physical", pss)):
        if v not in (512, 4096):
            c.error("%s sector size %d is neither 512 nor 4096" % (what, v))
            bad = bad or what == "logical"
    if not bad and size % lss:
        c.error("virtual disk size %d is not a multiple of the logical "
                "sector size %d" % (size, lss))
    if size == 0 or size > 64 * 1024 ** 4:
        c.error("virtual disk size %d is not in 1..64 TiB" % size)
        bad = True
    if parent != ("parent locator" in items):
        c.error("HasParent is %d but the parent locator is %s"
                % (parent, "present" if "parent locator" in items
                   else "missing"))
    if "parent locator" in items and parent:
        check_locator(c, items["parent locator"])
    boff, bln, _ = regions[G_BAT]
    if not bad and boff + bln <= fsize:
        check_bat(c, data, boff, bln, (bs, lss, size, parent), spans)
    return finish(c, spans)


def finish(c, spans):
    """Every block inside the file; nothing overlaps anything else."""
    spans.sort()
    end, ew = 0, None
    for off, ln, what in spans:
        if what.startswith(("block", "sector bitmap")):
            if off % MiB:
                c.error("%s at %d is not 1 MiB aligned" % (what, off))
            if off + ln > c.size:
                c.error("%s (%d..%d) lies past the end of the file (%d)"
                        % (what, off, off + ln, c.size))
        if off < end:
            c.error("%s (%d..%d) overlaps %s" % (what, off, off + ln, ew))
        if off + ln > end:
            end, ew = off + ln, "%s (..%d)" % (what, off + ln)
    return c


def run(path, quiet=False):
    return check(path, quiet)


# ---- self-test: damaged copies must be caught ----

def self_test(keep=None):
    import shutil
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    mk = os.path.join(here, "mkvhdx.py")
    d = keep or tempfile.mkdtemp(prefix="vhdxcheck.")
    os.makedirs(d, exist_ok=True)
    fails = 0

    def sh(*a):
        subprocess.run(a, check=True, stdout=subprocess.DEVNULL)

    def quiet_run(p):
        import io
        import contextlib
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            c = run(p, True)
        return c

    def expect(p, clean, what):
        nonlocal fails
        c = quiet_run(p)
        good = (c.errors == 0) == clean
        fails += not good
        print("%s %s: %s%s" % ("ok  " if good else "FAIL", what,
                               "clean" if not c.errors else
                               "%d problem(s)" % c.errors,
                               "" if not c.lines else " [" + c.lines[0]
                               + "]"))

    raw = os.path.join(d, "r.raw")
    with open(raw, "wb") as f:
        f.write(os.urandom(8 * MiB))
        f.truncate(24 * MiB)
        f.seek(20 * MiB)
        f.write(os.urandom(MiB + 512))
    sh("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", raw,
       os.path.join(d, "q-dyn.vhdx"))
    sh("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
       "subformat=fixed", raw, os.path.join(d, "q-fix.vhdx"))
    sh(sys.executable, mk, "chain", os.path.join(d, "m"), "--depth", "2",
       "--plain", "--seed", "3")
    sh(sys.executable, mk, "chain", os.path.join(d, "m4k"), "--depth", "1",
       "--lss", "4096", "--seed", "4", "--undefined", "--stale-log")
    sh(sys.executable, mk, "dirtylog", os.path.join(d, "dirty.vhdx"))
    for n in ("q-dyn.vhdx", "q-fix.vhdx", "m/d0.vhdx", "m/d1.vhdx",
              "m/d2.vhdx", "m4k/d0.vhdx", "m4k/d1.vhdx"):
        expect(os.path.join(d, n), True, n)
    expect(os.path.join(d, "dirty.vhdx"), False, "dirty.vhdx (dirty log)")

    # the plain child: metadata at 2 MiB, BAT at 3 MiB, header 1 current
    src = os.path.join(d, "m/d1.vhdx")
    with open(src, "rb") as f:
        img = bytearray(f.read())
    bat = 3 * MiB
    cr = (1 << 23) * 512 // MiB
    ents = [struct.unpack_from("<Q", img, bat + 8 * i)[0]
            for i in range(cr + 1)]
    present = [i for i in range(cr) if ents[i] & 7 in (FULLY, PARTIAL)]
    partial = [i for i in present if ents[i] & 7 == PARTIAL]
    fully = [i for i in present if ents[i] & 7 == FULLY]

    def recrc(b, at, n):
        b[at + 4:at + 8] = bytes(4)
        b[at + 4:at + 8] = struct.pack("<I", crc32c(b[at:at + n]))

    def both_regions(b, fn):
        for at in (192 * KiB, 256 * KiB):
            fn(b, at)
            recrc(b, at, 64 * KiB)

    def set_bat(b, i, v):
        struct.pack_into("<Q", b, bat + 8 * i, v)

    def region_entry(b, at, g):
        for k in range(struct.unpack_from("<I", b, at + 8)[0]):
            e = at + 16 + 32 * k
            if b[e:e + 16] == g:
                return e + 16
        raise KeyError

    damages = []

    def dmg(what):
        def deco(fn):
            damages.append((what, fn))
            return fn
        return deco

    @dmg("header 1 CRC byte flipped")
    def _(b):
        b[64 * KiB + 4] ^= 1

    @dmg("both headers' signatures broken")
    def _(b):
        b[64 * KiB] = b[128 * KiB] = 0x41

    @dmg("header version 2")
    def _(b):
        struct.pack_into("<H", b, 64 * KiB + 66, 2)
        recrc(b, 64 * KiB, 4 * KiB)

    @dmg("equal sequence numbers, different headers")
    def _(b):
        seq = struct.unpack_from("<Q", b, 64 * KiB + 8)[0]
        struct.pack_into("<Q", b, 128 * KiB + 8, seq)
        b[128 * KiB + 16] ^= 1      # another FileWriteGuid
        recrc(b, 128 * KiB, 4 * KiB)

    @dmg("log GUID set in the current header")
    def _(b):
        b[64 * KiB + 48:64 * KiB + 64] = os.urandom(16)
        recrc(b, 64 * KiB, 4 * KiB)

    @dmg("log past the end of the file")
    def _(b):
        struct.pack_into("<Q", b, 64 * KiB + 72, 1 << 40)
        recrc(b, 64 * KiB, 4 * KiB)

    @dmg("region table 2 CRC byte flipped")
    def _(b):
        b[256 * KiB + 5] ^= 0x10

    @dmg("BAT region overlaps the metadata region")
    def _(b):
        both_regions(b, lambda b, at: struct.pack_into(
            "<Q", b, region_entry(b, at, G_BAT), 2 * MiB))

    @dmg("metadata region inside the header area")
    def _(b):
        both_regions(b, lambda b, at: struct.pack_into(
            "<Q", b, region_entry(b, at, G_META), 0))

    @dmg("BAT region not 1 MiB aligned")
    def _(b):
        both_regions(b, lambda b, at: struct.pack_into(
            "<Q", b, region_entry(b, at, G_BAT), 3 * MiB + 4096))

    @dmg("no metadata region (entry count 1)")
    def _(b):
        def f(b, at):
            e = region_entry(b, at, G_META) - 16
            b[e:e + 32] = b[at + 16 + 32:at + 16 + 64] \
                if e == at + 16 else b[e:e + 32]
            struct.pack_into("<I", b, at + 8, 1)
        both_regions(b, f)

    @dmg("BAT entry pointing past the end of the file")
    def _(b):
        set_bat(b, fully[0], FULLY | (len(b) // MiB) << 20)

    @dmg("two blocks at the same offset")
    def _(b):
        set_bat(b, present[1], (ents[present[1]] & 7)
                | (ents[present[0]] >> 20) << 20)

    @dmg("block inside the BAT region")
    def _(b):
        set_bat(b, fully[0], FULLY | 3 << 20)

    @dmg("block in the log")
    def _(b):
        set_bat(b, fully[0], FULLY | 1 << 20)

    @dmg("PARTIALLY_PRESENT without the sector bitmap")
    def _(b):
        set_bat(b, cr, 0)

    @dmg("invalid payload state 4")
    def _(b):
        set_bat(b, present[0], 4 | (ents[present[0]] >> 20) << 20)

    @dmg("invalid sector bitmap state 2")
    def _(b):
        set_bat(b, cr, 2 | (ents[cr] >> 20) << 20)

    @dmg("metadata signature broken")
    def _(b):
        b[2 * MiB] = 0x4D

    @dmg("block size 3 MiB")
    def _(b):
        struct.pack_into("<I", b, 2 * MiB + 64 * KiB, 3 * MiB)

    @dmg("logical sector size 1024")
    def _(b):
        e = 2 * MiB + 32 + 32 * 3    # plain: spec order, LSS 4th
        off = struct.unpack_from("<I", b, e + 16)[0]
        struct.pack_into("<I", b, 2 * MiB + off, 1024)

    @dmg("HasParent cleared (locator without it, partial blocks)")
    def _(b):
        struct.pack_into("<I", b, 2 * MiB + 64 * KiB + 4, 0)

    @dmg("no file identifier")
    def _(b):
        b[0:8] = b"vhdxfilX"

    @dmg("parent locator: parent_linkage not a GUID")
    def _(b):
        e = 2 * MiB + 32 + 32 * 5
        off = struct.unpack_from("<I", b, e + 16)[0]
        loc = 2 * MiB + off
        ko, vo = struct.unpack_from("<II", b, loc + 20)  # first: linkage
        b[loc + vo + 2:loc + vo + 4] = "x".encode("utf-16-le")

    @dmg("parent locator: wrong type GUID")
    def _(b):
        e = 2 * MiB + 32 + 32 * 5
        off = struct.unpack_from("<I", b, e + 16)[0]
        b[2 * MiB + off] ^= 0xFF

    @dmg("metadata items overlap")
    def _(b):
        e = 2 * MiB + 32
        off = struct.unpack_from("<I", b, e + 16)[0]
        struct.pack_into("<I", b, e + 32 + 16, off + 4)

    @dmg("file truncated in the last block")
    def _(b):
        del b[len(b) - 4096:]

    for what, fn in damages:
        b = bytearray(img)
        fn(b)
        p = os.path.join(d, "damaged.vhdx")
        with open(p, "wb") as f:
            f.write(b)
        expect(p, False, "damaged: " + what)
    if not keep:
        shutil.rmtree(d)
    print("self-test: %d failure(s)" % fails)
    return 1 if fails else 0


def main():
    ap = argparse.ArgumentParser(description="check a VHDX file's structure")
    ap.add_argument("file", nargs="?")
    ap.add_argument("--quiet", "-q", action="store_true",
                    help="no warnings")
    ap.add_argument("--self-test", action="store_true",
                    help="check generated and damaged files")
    ap.add_argument("--keep", help="self-test: work in (and keep) DIR")
    a = ap.parse_args()
    if a.self_test:
        sys.exit(self_test(a.keep))
    if not a.file:
        ap.error("FILE is required")
    try:
        c = run(a.file, a.quiet)
    except OSError as e:
        print("%s: cannot read: %s" % (a.file, e.strerror))
        sys.exit(2)
    sys.exit(1 if c.errors else 0)


if __name__ == "__main__":
    main()
