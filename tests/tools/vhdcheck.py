#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vhdcheck.py: structural check of a Microsoft VHD file.

Written from the "Virtual Hard Disk Image Format Specification" alone; it
shares no code with src/format/vhd.c (nor with mkvhd.py), so it can judge
what the driver writes.  Python 3 standard library only.

  vhdcheck.py FILE [--parent PARENT] [--quiet]

Checks: the footer at the end (cookie, checksum, version, disk type, the
reserved feature bit) and, for dynamic and differencing disks, that the
copy at offset 0 is identical to it; the dynamic header (cookie, checksum,
version, block size, table size for the virtual size); every BAT entry's
block (sector bitmap and data) inside the file before the footer; that no
two structures overlap (footer copy, header, BAT, locator data, blocks);
the parent locators (known platform code, data inside the file, data space
large enough, read either as sectors (the spec) or as bytes (Windows),
text that decodes); for a differencing disk a parent unicode name that
decodes and at least one way to find the parent.  With --parent, the
parent's unique id and time stamp must match a VHD parent's footer.

An all-zero parent unique id is legal (nothing to check the parent against)
and is reported as a warning.  Warnings do not change the exit status.

Exit status: 0 no errors, 1 errors (one line per problem on stdout),
2 the file could not be read.
"""

import argparse
import mmap
import struct
import sys

SECTOR = 512
UNUSED = 0xFFFFFFFF
TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
CODES = {b"\0\0\0\0": "none", b"Wi2r": "Wi2r", b"Wi2k": "Wi2k",
         b"W2ru": "W2ru", b"W2ku": "W2ku", b"Mac ": "Mac", b"MacX": "MacX"}


def checksum(buf, field):
    """One's complement of the sum of all bytes but the 4 at field."""
    return ~(sum(buf) - sum(buf[field:field + 4])) & 0xFFFFFFFF


class Checker:
    def __init__(self, path, quiet=False):
        self.path = path
        self.quiet = quiet
        self.errors = 0

    def error(self, msg):
        self.errors += 1
        print("%s: %s" % (self.path, msg))

    def warn(self, msg):
        if not self.quiet:
            print("%s: warning: %s" % (self.path, msg))


def read_footer(data):
    """(footer bytes, footer offset) of the end of the file, or None."""
    if len(data) >= 512 and data[-512:-504] == b"conectix":
        return data[-512:], len(data) - 512
    if len(data) >= 511 and data[-511:-503] == b"conectix":
        return data[-511:] + b"\0", len(data) - 511   # before 2004
    return None


def check_footer(c, f, where):
    ok = True
    if f[0:8] != b"conectix":
        c.error("%s: no \"conectix\" cookie" % where)
        return False
    stored = struct.unpack(">I", f[64:68])[0]
    if stored != checksum(f, 64):
        c.error("%s: checksum 0x%08x, computed 0x%08x"
                % (where, stored, checksum(f, 64)))
        ok = False
    features, version = struct.unpack(">II", f[8:16])
    if not features & 2:
        c.error("%s: reserved feature bit 0x2 not set (0x%08x)"
                % (where, features))
    if version >> 16 != 1:
        c.error("%s: version 0x%08x" % (where, version))
        ok = False
    dtype = struct.unpack(">I", f[60:64])[0]
    if dtype not in TYPES:
        c.error("%s: disk type %d" % (where, dtype))
        ok = False
    if f[84] > 1:
        c.error("%s: saved state %d is neither 0 nor 1" % (where, f[84]))
    return ok


def decode_text(c, what, blob, codec):
    try:
        text = blob.decode(codec)
    except UnicodeDecodeError as e:
        c.error("%s does not decode as %s (%s)" % (what, codec, e.reason))
        return None
    return text.split("\0", 1)[0]


def check_sparse(c, data, foot, foot_off, regions):
    dtype = struct.unpack(">I", foot[60:64])[0]
    size = struct.unpack(">Q", foot[48:56])[0]
    hoff = struct.unpack(">Q", foot[16:24])[0]
    if data[0:512] != foot:
        c.error("the footer copy at offset 0 differs from the footer at "
                "the end")
    if len(data) % SECTOR:
        c.error("file size %d is not a multiple of 512" % len(data))
    if hoff + 1024 > foot_off:
        c.error("dynamic header at %d lies past the footer" % hoff)
        return None
    h = data[hoff:hoff + 1024]
    regions.append((hoff, 1024, "the dynamic header"))
    if h[0:8] != b"cxsparse":
        c.error("dynamic header: no \"cxsparse\" cookie")
        return None
    stored = struct.unpack(">I", h[36:40])[0]
    if stored != checksum(h, 36):
        c.error("dynamic header: checksum 0x%08x, computed 0x%08x"
                % (stored, checksum(h, 36)))
    nxt, table, version, entries, bs = struct.unpack(">QQIII", h[8:36])
    if nxt != 0xFFFFFFFFFFFFFFFF:
        c.error("dynamic header: data offset 0x%x, not all ones" % nxt)
    if version >> 16 != 1:
        c.error("dynamic header: version 0x%08x" % version)
    if bs < SECTOR or bs & (bs - 1):
        c.error("block size %d is not a power of two >= 512" % bs)
        return None
    need = (size + bs - 1) // bs
    if entries < need:
        c.error("BAT has %d entries, the size needs %d" % (entries, need))
    if table + 4 * entries > foot_off:
        c.error("BAT (%d entries at %d) lies past the footer"
                % (entries, table))
        return None
    regions.append((table, 4 * entries, "the BAT"))
    bitmap = ((bs // SECTOR + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
    nalloc = 0
    for i in range(entries):
        e = struct.unpack(">I", data[table + 4 * i:table + 4 * i + 4])[0]
        if e == UNUSED:
            continue
        nalloc += 1
        start = e * SECTOR
        if start + bitmap + bs > foot_off:
            c.error("block %d (sector %d): bitmap and data lie past the "
                    "footer (%d > %d)" % (i, e, start + bitmap + bs,
                                           foot_off))
            continue
        if i >= need:
            c.warn("BAT entry %d is past the virtual size but allocated" % i)
        regions.append((start, bitmap + bs, "block %d" % i))
    return {"type": dtype, "header": h, "block_size": bs,
            "allocated": nalloc}


def check_parent(c, data, h, foot_off, regions):
    puuid = h[40:56]
    if puuid == bytes(16):
        c.warn("parent unique id is all zeros (not recorded)")
    name = decode_text(c, "parent unicode name", h[64:576], "utf-16-be")
    found = bool(name)
    for i in range(8):
        e = h[576 + 24 * i:600 + 24 * i]
        code = e[0:4]
        space, length, reserved, off = struct.unpack(">IIIQ", e[4:24])
        what = "parent locator %d" % i
        if code not in CODES:
            c.error("%s: unknown platform code %r" % (what, code))
            continue
        if code == b"\0\0\0\0":
            continue
        what += " (%s)" % CODES[code]
        if reserved:
            c.error("%s: reserved field is %d" % (what, reserved))
        if length == 0:
            c.warn("%s: empty" % what)
            continue
        if off + length > foot_off:
            c.error("%s: data (%d bytes at %d) lies past the footer"
                    % (what, length, off))
            continue
        if space * SECTOR < length and space < length:
            c.error("%s: data space %d holds neither %d bytes as sectors "
                    "(spec) nor as bytes (Windows)" % (what, space, length))
        regions.append((off, length, what))
        blob = data[off:off + length]
        if code in (b"W2ru", b"W2ku"):
            if length % 2:
                c.error("%s: odd length %d for UTF-16" % (what, length))
                continue
            text = decode_text(c, what, blob, "utf-16-le")
        elif code == b"MacX":
            text = decode_text(c, what, blob, "utf-8")
        else:
            text = "?"
        found = found or bool(text)
    if not found:
        c.error("differencing disk names no parent (no name, no locator)")


def check_against_parent(c, h, parent_path):
    try:
        with open(parent_path, "rb") as fp:
            pdata = fp.read()
    except OSError as e:
        c.error("cannot read the parent %s: %s" % (parent_path, e.strerror))
        return
    pf = read_footer(pdata)
    if pf is None:
        if pdata[0:8] == b"conectix":
            pf = (pdata[0:512], None)
        else:
            return      # not a VHD: nothing in the child to compare
    pid, pstamp = pf[0][68:84], struct.unpack(">I", pf[0][24:28])[0]
    if h[40:56] != bytes(16) and h[40:56] != pid:
        c.error("parent unique id %s is not the parent's %s"
                % (h[40:56].hex(), pid.hex()))
    stamp = struct.unpack(">I", h[56:60])[0]
    if stamp != pstamp:
        c.error("parent time stamp %d is not the parent's %d"
                % (stamp, pstamp))


def check(path, parent=None, quiet=False):
    c = Checker(path, quiet)
    with open(path, "rb") as fp:
        try:    # large sparse images: map, do not read
            data = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:      # an empty file
            data = b""
    got = read_footer(data)
    if got is None:
        c.error("no footer at the end of the file")
        return c
    foot, foot_off = got
    if not check_footer(c, foot, "footer"):
        return c
    dtype = struct.unpack(">I", foot[60:64])[0]
    size = struct.unpack(">Q", foot[48:56])[0]
    if dtype == 2:
        if struct.unpack(">Q", foot[16:24])[0] != 0xFFFFFFFFFFFFFFFF:
            c.error("fixed disk: data offset is not all ones")
        if foot_off < size:
            c.error("fixed disk: %d bytes of data for a %d-byte disk"
                    % (foot_off, size))
        return c
    if foot_off != len(data) - 512:
        c.error("511-byte footer on a dynamic disk")
    regions = [(0, 512, "the footer copy")]
    info = check_sparse(c, data, foot, foot_off, regions)
    if info is None:
        return c
    if dtype == 4:
        check_parent(c, data, info["header"], foot_off, regions)
        if parent:
            check_against_parent(c, info["header"], parent)
    regions.sort()
    for (a, alen, aw), (b, blen, bw) in zip(regions, regions[1:]):
        if b < a + alen:
            c.error("%s (%d..%d) overlaps %s (%d..%d)"
                    % (aw, a, a + alen, bw, b, b + blen))
    return c


def main():
    ap = argparse.ArgumentParser(description="check a VHD file's structure")
    ap.add_argument("file")
    ap.add_argument("--parent", help="the parent file, to compare ids")
    ap.add_argument("--quiet", "-q", action="store_true",
                    help="no warnings")
    a = ap.parse_args()
    try:
        c = check(a.file, a.parent, a.quiet)
    except OSError as e:
        print("%s: cannot read: %s" % (a.file, e.strerror))
        sys.exit(2)
    sys.exit(1 if c.errors else 0)


if __name__ == "__main__":
    main()
