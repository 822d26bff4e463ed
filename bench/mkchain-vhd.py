#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""mkchain-vhd.py: write one differencing VHD layer from a sparse raw file.

  mkchain-vhd.py OUT.vhd --parent PARENT.vhd --layer LAYER.raw [--grain 64K]
                 [--block-size 2M] [--fill poison|hole]

LAYER.raw has the parent's virtual size.  Every grain (default 64 KiB) of
it that holds a non-zero byte is stored in OUT.vhd and marked present in
the sector bitmap; every other grain comes from the parent.  Sectors of
an allocated block that are not present hold 0xEE (--fill poison, the
default), so a reader that ignores the bitmap reads poison, or are left
as a hole in a sparse file (--fill hole: they read as zeros, and the file
takes only the disk and page cache its data needs; a benchmark with
scattered grains otherwise writes N full-size layers for a chain of depth
N).  Blocks are streamed (memory: one block),
so a 1 GiB layer takes a few seconds, unlike tests/tools/mkvhd.py, which
takes its data from a PRNG or a fill byte, not from a file.

Written from the VHD specification (footer, dynamic disk header, BAT,
W2ku/W2ru parent locators with the data space in bytes, as Windows writes
it; sector 0 of a block is bit 7 of bitmap byte 0).  It shares no code
with src/format/vhd.c.  Check its output with 7-Zip, which follows VHD
parent chains:  7zz e -so OUT.vhd | cmp - EXPECTED.raw
Python 3 standard library only.
"""

import argparse
import os
import struct
import sys
import uuid

# The spec's structures come from the test generator, which the tests check
# against qemu-img and 7-Zip; this script adds the streaming layer writer.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "tools"))
from mkvhd import (SECTOR, UNUSED, POISON, TYPE_DYNAMIC, TYPE_DIFF,  # noqa: E402
                   parse_size, round_up, make_footer, make_dyn_header,
                   now_stamp)


def parent_info(path):
    """(unique id, time stamp, size, block size) from the parent."""
    with open(path, "rb") as fp:
        fp.seek(-512, os.SEEK_END)
        foot = fp.read(512)
        if foot[0:8] != b"conectix":
            fp.seek(0)
            foot = fp.read(512)
        if foot[0:8] != b"conectix":
            sys.exit("mkchain-vhd: %s: not a VHD" % path)
        dtype = struct.unpack(">I", foot[60:64])[0]
        block = 2 << 20
        if dtype in (TYPE_DYNAMIC, TYPE_DIFF):
            fp.seek(struct.unpack(">Q", foot[16:24])[0])
            block = struct.unpack(">I", fp.read(1024)[32:36])[0]
    return (foot[68:84], struct.unpack(">I", foot[24:28])[0],
            struct.unpack(">Q", foot[48:56])[0], block)


def main():
    ap = argparse.ArgumentParser(
        description="write a differencing VHD layer from a sparse raw file")
    ap.add_argument("out")
    ap.add_argument("--parent", required=True)
    ap.add_argument("--layer", required=True,
                    help="raw file: non-zero grains are this layer's data")
    ap.add_argument("--grain", type=parse_size, default=64 << 10)
    ap.add_argument("--block-size", type=parse_size,
                    help="default: the parent's")
    ap.add_argument("--fill", choices=("poison", "hole"), default="poison",
                    help="sectors of an allocated block that are not present")
    a = ap.parse_args()

    pid, pstamp, size, pblock = parent_info(a.parent)
    bs = a.block_size or pblock
    if bs < SECTOR or bs & (bs - 1) or a.grain % (8 * SECTOR) or bs % a.grain:
        sys.exit("mkchain-vhd: block %d / grain %d not usable" % (bs, a.grain))
    if os.path.getsize(a.layer) != size:
        sys.exit("mkchain-vhd: %s is not %d bytes" % (a.layer, size))
    entries = (size + bs - 1) // bs
    bitmap_len = round_up(bs // SECTOR // 8, SECTOR)
    grain_bits = a.grain // SECTOR // 8         # bitmap bytes per grain
    table_off = 512 + 1024
    pos = round_up(table_off + 4 * entries, SECTOR)

    base = os.path.basename(a.parent)
    locators, loc_data = [], []
    for code, text in ((b"W2ku", "C:\\images\\" + base),
                       (b"W2ru", ".\\" + base)):
        blob = text.encode("utf-16-le")
        space = round_up(len(blob), SECTOR)
        locators.append((code, space, len(blob), pos))
        loc_data.append((pos, blob))
        pos += space

    zero = bytes(a.grain)
    bat = [UNUSED] * entries
    with open(a.layer, "rb") as src, open(a.out + ".tmp", "wb") as out:
        out.truncate(0)
        for index in range(entries):
            src.seek(index * bs)
            blk = src.read(bs).ljust(bs, b"\0")
            bitmap = bytearray(bitmap_len)
            present = []
            for g in range(0, bs, a.grain):
                if blk[g:g + a.grain] != zero:
                    present.append(g)
                    b0 = g // SECTOR // 8
                    bitmap[b0:b0 + grain_bits] = b"\xff" * grain_bits
            if not present:
                continue
            bat[index] = pos // SECTOR
            out.seek(pos)
            out.write(bitmap)
            data_off = pos + bitmap_len
            if a.fill == "poison":
                data = bytearray([POISON]) * bs
                for g in present:
                    data[g:g + a.grain] = blk[g:g + a.grain]
                out.write(data)
            else:
                for g in present:      # the gaps stay holes
                    out.seek(data_off + g)
                    out.write(blk[g:g + a.grain])
            pos = data_off + bs
        foot = make_footer(TYPE_DIFF, size, 512, uuid.uuid4().bytes,
                           now_stamp())
        out.seek(0)
        out.write(foot)
        out.write(make_dyn_header(table_off, entries, bs, pid, pstamp, base,
                             locators))
        out.write(b"".join(struct.pack(">I", e) for e in bat))
        for off, blob in loc_data:
            out.seek(off)
            out.write(blob)
        out.seek(pos)
        out.write(foot)
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
