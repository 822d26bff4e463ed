#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""mkvhd.py: make Microsoft VHD test images (fixed, dynamic, differencing).

Written from the "Virtual Hard Disk Image Format Specification" alone; it
shares no code with src/format/vhd.c, so the two can check each other.
Python 3 standard library only.

  mkvhd.py create-fixed OUT [--size BYTES] [--from RAW]
  mkvhd.py create-dynamic OUT [--size BYTES] [--block-size 2M] [--from RAW]
  mkvhd.py create-diff OUT --parent P.vhd --expect-in P.raw --expect-out C.raw
           [--writes SPEC | --random-writes N --seed S] [--block-size 2M]
           [--size BYTES] [--rel-path .\\P.vhd] [--abs-path C:\\images\\P.vhd]
           [--parent-name NAME] [--no-locators] [--data-space sectors]
  mkvhd.py info FILE

A dynamic image allocates only the blocks of RAW that hold a non-zero byte.
A differencing child records the parent's unique id and time stamp (from
the parent's footer), a W2ku and a W2ru locator (UTF-16LE; data space in
bytes, as Windows writes it) and the parent's unicode name.  Its allocated
blocks hold the written sectors, marked in the sector bitmap; every other
sector of an allocated block is filled with 0xEE, so a reader that ignores
the bitmap reads poison.  --expect-out gets the parent's flat image with
the writes applied (cut or zero-extended to the child's size).

--writes SPEC: comma-separated SECTOR+COUNT[=BYTE], e.g. "3+5=0xab,130+40";
without =BYTE the sectors get pseudo-random bytes (from --seed).
--random-writes N: N writes of 1..40 sectors at random sectors, about half
of them straddling a block boundary.
"""

import argparse
import json
import os
import random
import struct
import sys
import time
import uuid

SECTOR = 512
VHD_EPOCH = 946684800           # 2000-01-01 00:00:00 UTC
UNUSED = 0xFFFFFFFF
POISON = 0xEE
TYPE_FIXED, TYPE_DYNAMIC, TYPE_DIFF = 2, 3, 4
TYPE_NAMES = {TYPE_FIXED: "fixed", TYPE_DYNAMIC: "dynamic",
              TYPE_DIFF: "differencing"}


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip()
    if text and text[-1].upper() in units:
        return int(text[:-1], 0) * units[text[-1].upper()]
    return int(text, 0)


def vhd_sum(buf, field_off):
    """One's complement of the byte sum, the 4-byte checksum field skipped."""
    total = sum(buf) - sum(buf[field_off:field_off + 4])
    return ~total & 0xFFFFFFFF


def chs_geometry(size):
    """The spec's CHS calculation (appendix: "CHS Calculation")."""
    total = size // SECTOR
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = total // spt
    else:
        spt = 17
        cyl_heads = total // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = total // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = total // spt
    return cyl_heads // heads, heads, spt


def now_stamp():
    return max(0, int(time.time()) - VHD_EPOCH) & 0xFFFFFFFF


def make_footer(disk_type, size, data_offset, unique_id, stamp):
    f = bytearray(512)
    cyl, heads, spt = chs_geometry(size)
    f[0:8] = b"conectix"
    struct.pack_into(">II", f, 8, 2, 0x00010000)    # features, version
    struct.pack_into(">QI", f, 16, data_offset, stamp)
    f[28:32] = b"mkvh"                              # creator application
    struct.pack_into(">I", f, 32, 0x00010000)       # creator version
    f[36:40] = b"Wi2k"                              # creator host OS
    struct.pack_into(">QQ", f, 40, size, size)      # original, current
    struct.pack_into(">HBBI", f, 56, cyl, heads, spt, disk_type)
    f[68:84] = unique_id
    struct.pack_into(">I", f, 64, vhd_sum(f, 64))
    return bytes(f)


def make_dyn_header(table_off, entries, block_size, parent_id=bytes(16),
                    parent_stamp=0, parent_name="", locators=()):
    h = bytearray(1024)
    h[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, table_off,
                     0x00010000, entries, block_size)
    h[40:56] = parent_id
    struct.pack_into(">I", h, 56, parent_stamp)
    name = parent_name.encode("utf-16-be")[:512]
    h[64:64 + len(name)] = name
    for i, (code, space, length, offset) in enumerate(locators):
        struct.pack_into(">4sIIIQ", h, 576 + 24 * i, code, space, length, 0,
                         offset)
    struct.pack_into(">I", h, 36, vhd_sum(h, 36))
    return bytes(h)


def round_up(v, a):
    return (v + a - 1) // a * a


def read_raw(path, size):
    data = bytearray()
    if path:
        with open(path, "rb") as fp:
            data = bytearray(fp.read())
    if size is None:
        size = len(data)
    if size % SECTOR:
        sys.exit("mkvhd: size %d is not a multiple of 512" % size)
    data = data[:size]
    data.extend(bytes(size - len(data)))
    return data, size


def write_fixed(out, data, size):
    with open(out, "wb") as fp:
        fp.write(data)
        fp.write(make_footer(TYPE_FIXED, size, 0xFFFFFFFFFFFFFFFF,
                             uuid.uuid4().bytes, now_stamp()))


def write_sparse(out, size, block_size, blocks, disk_type, parent=None):
    """blocks: {index: (bitmap bytes, block_size data bytes)}."""
    if block_size < SECTOR or block_size & (block_size - 1):
        sys.exit("mkvhd: block size %d is not a power of two >= 512"
                 % block_size)
    entries = (size + block_size - 1) // block_size
    bitmap_len = round_up((block_size // SECTOR + 7) // 8, SECTOR)
    table_off = 512 + 1024
    pos = round_up(table_off + 4 * entries, SECTOR)
    locators, loc_data = [], []
    if parent:
        for code, text in parent["paths"]:
            blob = text.encode("utf-16-le")
            space = round_up(max(len(blob), 1), SECTOR)
            # Windows writes the data space in bytes; the spec in sectors
            stored = space // SECTOR if parent["space_sectors"] else space
            locators.append((code, stored, len(blob), pos))
            loc_data.append((pos, blob))
            pos += space
    bat = [UNUSED] * entries
    placed = []
    for index in sorted(blocks):
        bat[index] = pos // SECTOR
        placed.append((pos, blocks[index]))
        pos += bitmap_len + block_size
    footer = make_footer(disk_type, size, 512, uuid.uuid4().bytes,
                         now_stamp())
    if parent:
        header = make_dyn_header(table_off, entries, block_size,
                                 parent["id"], parent["stamp"],
                                 parent["name"], locators)
    else:
        header = make_dyn_header(table_off, entries, block_size)
    with open(out, "wb") as fp:
        fp.write(footer)
        fp.write(header)
        fp.write(b"".join(struct.pack(">I", e) for e in bat))
        for off, blob in loc_data:
            fp.seek(off)
            fp.write(blob)
        for off, (bitmap, data) in placed:
            fp.seek(off)
            fp.write(bitmap.ljust(bitmap_len, b"\0"))
            fp.write(data)
        fp.seek(pos)
        fp.write(footer)


def bitmap_of(present, spb):
    bm = bytearray((spb + 7) // 8)
    for s in present:
        bm[s // 8] |= 0x80 >> (s % 8)      # sector 0 is bit 7 of byte 0
    return bytes(bm)


def cmd_create_fixed(a):
    data, size = read_raw(a.source, a.size)
    write_fixed(a.out, data, size)


def cmd_create_dynamic(a):
    data, size = read_raw(a.source, a.size)
    bs = a.block_size
    spb = bs // SECTOR
    blocks = {}
    for index in range((size + bs - 1) // bs):
        chunk = bytes(data[index * bs:(index + 1) * bs]).ljust(bs, b"\0")
        if any(chunk):
            blocks[index] = (b"\xff" * ((spb + 7) // 8), chunk)
    write_sparse(a.out, size, bs, blocks, TYPE_DYNAMIC)


def read_footer(path):
    with open(path, "rb") as fp:
        fp.seek(0, os.SEEK_END)
        end = fp.tell()
        fp.seek(end - 512)
        foot = fp.read(512)
        if foot[0:8] != b"conectix":
            fp.seek(0)
            foot = fp.read(512)
    if foot[0:8] != b"conectix":
        sys.exit("mkvhd: %s: no VHD footer" % path)
    return foot


def parse_writes(spec, rng):
    writes = []
    for item in filter(None, spec.split(",")):
        where, _, fill = item.partition("=")
        sector, _, count = where.partition("+")
        sector, count = int(sector, 0), int(count or "1", 0)
        if fill:
            data = bytes([int(fill, 0)]) * (count * SECTOR)
        else:
            data = rng.randbytes(count * SECTOR)
        writes.append((sector, count, data))
    return writes


def random_writes(n, rng, nsectors, spb):
    writes = []
    for i in range(n):
        count = rng.randint(1, min(40, nsectors))
        if i % 2 and count > 1 and nsectors > spb:
            # straddle a block boundary
            boundary = spb * rng.randint(1, (nsectors - 1) // spb)
            sector = boundary - rng.randint(1, count - 1)
            sector = max(0, min(sector, nsectors - count))
        else:
            sector = rng.randrange(0, nsectors - count + 1)
        writes.append((sector, count, rng.randbytes(count * SECTOR)))
    return writes


def cmd_create_diff(a):
    pfoot = read_footer(a.parent)
    parent_id = pfoot[68:84]
    parent_stamp = struct.unpack(">I", pfoot[24:28])[0]
    parent_size = struct.unpack(">Q", pfoot[48:56])[0]
    size = a.size if a.size is not None else parent_size
    if size % SECTOR:
        sys.exit("mkvhd: size %d is not a multiple of 512" % size)
    with open(a.expect_in, "rb") as fp:
        flat = bytearray(fp.read()[:size])
    flat.extend(bytes(size - len(flat)))

    bs = a.block_size
    spb = bs // SECTOR
    nsectors = size // SECTOR
    rng = random.Random(a.seed)
    writes = []
    if a.writes:
        writes += parse_writes(a.writes, rng)
    if a.random_writes:
        writes += random_writes(a.random_writes, rng, nsectors, spb)

    present = {}                # block -> set of sectors in the block
    blockdata = {}              # block -> bytearray of the block
    for sector, count, data in writes:
        if sector < 0 or count < 1 or sector + count > nsectors:
            sys.exit("mkvhd: write %d+%d outside the disk" % (sector, count))
        flat[sector * SECTOR:(sector + count) * SECTOR] = data
        for k in range(count):
            s = sector + k
            b, in_b = divmod(s, spb)
            if b not in blockdata:
                blockdata[b] = bytearray([POISON]) * bs
                present[b] = set()
            present[b].add(in_b)
            blockdata[b][in_b * SECTOR:(in_b + 1) * SECTOR] = \
                data[k * SECTOR:(k + 1) * SECTOR]
    blocks = {b: (bitmap_of(present[b], spb), bytes(blockdata[b]))
              for b in blockdata}

    base = os.path.basename(a.parent)
    paths = []
    if not a.no_locators:
        paths = [(b"W2ku", a.abs_path or "C:\\images\\" + base),
                 (b"W2ru", a.rel_path or ".\\" + base)]
    parent = {"id": parent_id, "stamp": parent_stamp,
              "name": a.parent_name if a.parent_name is not None else base,
              "paths": paths, "space_sectors": a.data_space == "sectors"}
    write_sparse(a.out, size, bs, blocks, TYPE_DIFF, parent)
    with open(a.expect_out, "wb") as fp:
        fp.write(flat)


def cmd_info(a):
    foot = read_footer(a.file)
    info = {
        "disk_type": TYPE_NAMES.get(struct.unpack(">I", foot[60:64])[0]),
        "size": struct.unpack(">Q", foot[48:56])[0],
        "timestamp": struct.unpack(">I", foot[24:28])[0],
        "unique_id": str(uuid.UUID(bytes=foot[68:84])),
    }
    off = struct.unpack(">Q", foot[16:24])[0]
    if info["disk_type"] != "fixed":
        with open(a.file, "rb") as fp:
            fp.seek(off)
            h = fp.read(1024)
        info["block_size"] = struct.unpack(">I", h[32:36])[0]
        if info["disk_type"] == "differencing":
            info["parent_unique_id"] = str(uuid.UUID(bytes=h[40:56]))
            info["parent_timestamp"] = struct.unpack(">I", h[56:60])[0]
    print(json.dumps(info, indent=1))


def main():
    ap = argparse.ArgumentParser(description="make VHD test images")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("create-fixed")
    p.add_argument("out")
    p.add_argument("--size", type=parse_size)
    p.add_argument("--from", dest="source")
    p.set_defaults(fn=cmd_create_fixed)

    p = sub.add_parser("create-dynamic")
    p.add_argument("out")
    p.add_argument("--size", type=parse_size)
    p.add_argument("--block-size", type=parse_size, default=2 << 20)
    p.add_argument("--from", dest="source")
    p.set_defaults(fn=cmd_create_dynamic)

    p = sub.add_parser("create-diff")
    p.add_argument("out")
    p.add_argument("--parent", required=True)
    p.add_argument("--expect-in", required=True)
    p.add_argument("--expect-out", required=True)
    p.add_argument("--writes")
    p.add_argument("--random-writes", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--block-size", type=parse_size, default=2 << 20)
    p.add_argument("--size", type=parse_size)
    p.add_argument("--rel-path")
    p.add_argument("--abs-path")
    p.add_argument("--parent-name")
    p.add_argument("--no-locators", action="store_true")
    p.add_argument("--data-space", choices=("bytes", "sectors"),
                   default="bytes")
    p.set_defaults(fn=cmd_create_diff)

    p = sub.add_parser("info")
    p.add_argument("file")
    p.set_defaults(fn=cmd_info)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
