#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vhdx2seed.py IN OUT: a VHDX file as a fuzz-vhdx sparse description.

Keeps the non-zero 4 KiB pages of the header section and of the log, BAT
and metadata regions (found through the first region table), and only
the first non-zero page of every other MiB (a taste of each block and
sector bitmap), as records { u16 page, u16 len, bytes } and a last empty
record for the file's size (see fuzz-vhdx.c).  Pages past 256 MiB are
dropped.
"""
import struct
import sys

PAGE = 4096
MiB = 1 << 20


def regions(f):
    """(offset, length) of the log and of each region table entry."""
    out = []
    f.seek(64 * 1024)
    h = f.read(80)
    if h[:4] == b"head":
        length, off = struct.unpack_from("<IQ", h, 68)
        out.append((off, length))
    f.seek(192 * 1024)
    t = f.read(64 * 1024)
    if t[:4] == b"regi":
        n = min(struct.unpack_from("<I", t, 8)[0], 2047)
        for i in range(n):
            off, length = struct.unpack_from("<QI", t, 16 + 32 * i + 16)
            out.append((off, length))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    out = bytearray()
    with open(src, "rb") as f:
        keep = [(0, MiB)] + regions(f)
        size = f.seek(0, 2)
        f.seek(0)
        seen_mib = set()
        for page in range(min(65536, -(-size // PAGE))):
            buf = f.read(PAGE)
            off = page * PAGE
            if not buf.strip(b"\0"):
                continue
            inside = any(o <= off < o + n for o, n in keep)
            if inside or off // MiB not in seen_mib:
                seen_mib.add(off // MiB)
                out += struct.pack("<HH", page, len(buf)) + buf
    if size // PAGE < 65536:
        out += struct.pack("<HH", size // PAGE, 0)   # the file's size
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    sys.exit(main())
