#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""mksimg.py: write an Android sparse image (format 1.0) from a raw file.

An independent writer for the tests, using only the Python standard library.
Unlike img2simg it emits all four chunk types:

  RAW        blocks with mixed content
  FILL       blocks that repeat one 4-byte pattern (zero or not)
  DONT_CARE  all-zero blocks (by default; see --zero)
  CRC32      with --crc: after every N chunks and at the end, the CRC-32 of
             all output so far (DONT_CARE counted as zeros, as libsparse does)

The expanded image equals the input, zero-padded to a whole block.  Header
sizes can be made larger than version 1.0's (--hdr-pad, --chunk-pad); the
padding bytes are non-zero so a reader that does not skip them fails.

usage: mksimg.py IN.raw OUT.simg [--block-size 4096] [--crc] [--crc-every N]
                 [--bad-crc] [--hdr-pad N] [--chunk-pad N]
                 [--zero dontcare|fill|alternate] [--max-chunk-blocks N]
"""

import argparse
import struct
import sys
import zlib

MAGIC = 0xED26FF3A
FILE_HDR = 28
CHUNK_HDR = 12
RAW, FILL, DONT_CARE, CRC32 = 0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4


def classify(block):
    """(kind, fill value) of one block."""
    pat = block[:4]
    if block.count(0) == len(block):
        return ("zero", 0)
    if pat * (len(block) // 4) == block:
        return ("fill", struct.unpack("<I", pat)[0])
    return ("raw", None)


def runs(data, bs, max_blocks):
    """Group consecutive blocks of one kind: [kind, value, first, count]."""
    out = []
    for i in range(len(data) // bs):
        kind, val = classify(data[i * bs:(i + 1) * bs])
        last = out[-1] if out else None
        if (last and last[0] == kind and last[1] == val
                and last[3] < max_blocks):
            last[3] += 1
        else:
            out.append([kind, val, i, 1])
    return out


class Writer:
    def __init__(self, f, bs, chunk_pad):
        self.f = f
        self.bs = bs
        self.pad = bytes([0xDD]) * chunk_pad
        self.hdr_sz = CHUNK_HDR + chunk_pad
        self.crc = 0
        self.nchunks = 0
        self.nblocks = 0

    def chunk(self, ctype, nblocks, payload):
        total = self.hdr_sz + len(payload)
        self.f.write(struct.pack("<HHII", ctype, 0, nblocks, total))
        self.f.write(self.pad)
        self.f.write(payload)
        self.nchunks += 1
        self.nblocks += nblocks

    def raw(self, data):
        self.chunk(RAW, len(data) // self.bs, data)
        self.crc = zlib.crc32(data, self.crc)

    def fill(self, value, nblocks):
        pat = struct.pack("<I", value)
        self.chunk(FILL, nblocks, pat)
        self.crc = zlib.crc32(pat * (nblocks * self.bs // 4), self.crc)

    def dont_care(self, nblocks):
        self.chunk(DONT_CARE, nblocks, b"")
        self.crc = zlib.crc32(bytes(nblocks * self.bs), self.crc)

    def crc32(self, bad=False):
        value = self.crc ^ (0x5A5A5A5A if bad else 0)
        self.chunk(CRC32, 0, struct.pack("<I", value))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--crc", action="store_true",
                    help="insert CRC32 chunks (every N chunks, and last)")
    ap.add_argument("--crc-every", type=int, default=4, metavar="N")
    ap.add_argument("--bad-crc", action="store_true",
                    help="write a wrong value in the last CRC32 chunk")
    ap.add_argument("--hdr-pad", type=int, default=0, metavar="N",
                    help="file_hdr_sz = 28 + N")
    ap.add_argument("--chunk-pad", type=int, default=0, metavar="N",
                    help="chunk_hdr_sz = 12 + N")
    ap.add_argument("--zero", choices=("dontcare", "fill", "alternate"),
                    default="dontcare",
                    help="zero runs as DONT_CARE, FILL 0, or alternating")
    ap.add_argument("--max-chunk-blocks", type=int, default=1 << 20,
                    metavar="N", help="split longer runs into chunks")
    a = ap.parse_args()

    bs = a.block_size
    if bs <= 0 or bs % 4:
        ap.error("block size must be a positive multiple of 4")
    if not (0 <= a.hdr_pad <= 65535 - FILE_HDR and
            0 <= a.chunk_pad <= 65535 - CHUNK_HDR):
        ap.error("padding out of range")
    if a.crc_every < 1 or a.max_chunk_blocks < 1:
        ap.error("N must be positive")
    crc = a.crc or a.bad_crc

    with open(a.input, "rb") as f:
        data = f.read()
    if len(data) % bs:
        data += bytes(bs - len(data) % bs)
    total_blks = len(data) // bs
    if total_blks >= 1 << 32:
        ap.error("input too large for 32-bit block counts")

    with open(a.output, "wb") as out:
        # header written last, once the chunk count is known
        out.write(bytes(FILE_HDR + a.hdr_pad))
        w = Writer(out, bs, a.chunk_pad)
        nzero = 0
        for kind, val, first, count in runs(data, bs, a.max_chunk_blocks):
            if kind == "raw":
                w.raw(data[first * bs:(first + count) * bs])
            elif kind == "fill":
                w.fill(val, count)
            else:
                as_fill = (a.zero == "fill" or
                           (a.zero == "alternate" and nzero % 2))
                nzero += 1
                if as_fill:
                    w.fill(0, count)
                else:
                    w.dont_care(count)
            if crc and w.nchunks % (a.crc_every + 1) == a.crc_every:
                w.crc32()
        if crc:
            w.crc32(bad=a.bad_crc)
        assert w.nblocks == total_blks
        out.seek(0)
        out.write(struct.pack("<IHHHHIIII", MAGIC, 1, 0, FILE_HDR + a.hdr_pad,
                              CHUNK_HDR + a.chunk_pad, bs, total_blks,
                              w.nchunks, 0))
        out.write(bytes([0xEE]) * a.hdr_pad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
