#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""mkvhdx.py: write VHDX test images from the MS-VHDX v1.0 spec.

An independent writer (Python stdlib only, its own CRC-32C) for what
qemu-img cannot make: differencing chains with sector-granular partial
blocks, 4096-byte logical sectors, and files with a dirty log.  Next to
every image it writes the expected flat raw content of the chain that
ends in that image (<image>.raw), so a reader can be checked byte for
byte.

  mkvhdx.py chain DIR [--depth N] [--lss 512|4096] [--block-mib M]
                      [--size SIZE] [--seed S] [--upper-guid] [--fixed]
                      [--undefined] [--stale-log] [--name FMT] [--plain]
      DIR/<FMT % 0> is a dynamic (or --fixed) base; each next image is a
      differencing child of the one before it, with FULLY_PRESENT,
      PARTIALLY_PRESENT (writes at odd sector offsets, 0xEE poison in the
      sectors the bitmap leaves to the parent), ZERO blocks over parent
      data and NOT_PRESENT blocks.  --undefined also writes UNDEFINED and
      UNMAPPED blocks (read as zeros in a child, holes in a base).
      Disks larger than 8 MiB get their writes near the start, the end
      and each chunk boundary (every 2^23 sectors a new sector bitmap);
      the .raw files are sparse.  --plain fixes the layout for tests
      that patch fields: metadata at 2 MiB, BAT at 3 MiB, items and
      locator entries in spec order, the first header current.

  mkvhdx.py child FILE --parent-raw RAW --parent-name NAME --parent-id GUID
                      [--lss 512|4096] [--block-mib M] [--seed S]
      One differencing layer over a parent of any format (a mixed chain):
      RAW is the parent's flat content, NAME goes into the locator and
      GUID into parent_linkage.

  mkvhdx.py dirtylog FILE [--kind bat|data|extend|all] [--seed S]
                         [--wrap] [--torn none|middle|after|only]
                         [--lss 512|4096]
      FILE gets a log whose active sequence the reader must replay: a
      BAT sector update that the on-disk BAT lacks (bat), data and zero
      descriptors over payload sectors (data), a block that lies past
      the end of the file until the replay extends it (extend).  --wrap
      places the sequence across the end of the circular log; --torn
      damages it: 'middle' breaks a checksum inside the active sequence
      (a reader must refuse), 'after' adds a torn entry after the head
      and 'only' leaves only a torn entry (both: nothing more to replay).
      FILE.raw is the content after the replay ('only': before it).
"""

import argparse
import os
import random
import struct
import sys
import uuid

KiB = 1024
MiB = 1024 * KiB

# ---- CRC-32C (Castagnoli), bytewise table ----

_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data, crc=0):
    c = crc ^ 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def with_crc(buf, at=4):
    """Store the CRC-32C of buf (checksum field zeroed) at offset at."""
    buf = bytearray(buf)
    buf[at:at + 4] = b"\0\0\0\0"
    buf[at:at + 4] = struct.pack("<I", crc32c(buf))
    return bytes(buf)


# ---- GUIDs of the spec (text form; stored as uuid.bytes_le) ----

G_BAT = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
G_META = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
G_FILE_PARAMS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
G_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
G_PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
G_LSS = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
G_PSS = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
G_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
G_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED = 0, 1, 2, 3
FULLY_PRESENT, PARTIALLY_PRESENT = 6, 7
SB_PRESENT = 6
POISON = 0xEE


def rand_guid(rng):
    return uuid.UUID(bytes=bytes(rng.getrandbits(8) for _ in range(16)),
                     version=4)


def align_up(v, a):
    return (v + a - 1) // a * a


class Image:
    """One VHDX file: geometry, per-block states and the bytes it holds."""

    def __init__(self, rng, size, block_size, lss, pss=4096, parent=None,
                 leave_allocated=False, log_size=MiB, plain=False):
        assert size % lss == 0
        self.rng = rng
        self.plain = plain            # fixed layout and item order
        self.size = size
        self.bs = block_size
        self.lss = lss
        self.pss = pss
        self.parent = parent          # dict: linkage, names, upper
        self.leave_allocated = leave_allocated
        self.log_size = log_size
        self.nblocks = -(-size // block_size)
        self.cr = (1 << 23) * lss // block_size
        self.nchunks = -(-self.nblocks // self.cr)
        self.state = [NOT_PRESENT] * self.nblocks
        self.data = {}                # blk -> bytearray(block_size)
        self.present = {}             # blk -> set of sectors (partial)
        self.data_write_guid = rand_guid(rng)
        self.file_write_guid = rand_guid(rng)
        self.log_guid = None
        self.bat_off = {}             # blk -> file offset, set by layout
        self.sb_off = {}              # chunk -> file offset

    # -- content --

    def block_bytes(self, blk):
        if blk not in self.data:
            self.data[blk] = bytearray([POISON]) * self.bs
        return self.data[blk]

    def write(self, off, buf, partial):
        """Store buf at virtual off: whole blocks become FULLY_PRESENT
        unless partial (then the sectors are marked in the bitmap)."""
        assert off % self.lss == 0 and len(buf) % self.lss == 0
        pos = 0
        while pos < len(buf):
            blk, inb = divmod(off + pos, self.bs)
            n = min(len(buf) - pos, self.bs - inb)
            b = self.block_bytes(blk)
            b[inb:inb + n] = buf[pos:pos + n]
            if self.state[blk] == FULLY_PRESENT:
                pass
            elif not partial:
                assert inb == 0 and n == self.bs or off + pos + n == self.size
                self.state[blk] = FULLY_PRESENT
            else:
                self.state[blk] = PARTIALLY_PRESENT
                s = self.present.setdefault(blk, set())
                s.update(range(inb // self.lss, (inb + n) // self.lss))
            pos += n

    def set_state(self, blk, st):
        self.state[blk] = st
        self.data.pop(blk, None)
        self.present.pop(blk, None)

    # -- layout and serialisation --

    def bat_index(self, blk):
        return blk + blk // self.cr

    def bat_entries(self):
        if self.parent:
            return self.nchunks * (self.cr + 1)
        return self.nblocks + (self.nblocks - 1) // self.cr

    def layout(self, swap_regions=False):
        self.log_off = MiB
        meta_len = MiB
        bat_len = align_up(self.bat_entries() * 8, MiB)
        nxt = self.log_off + self.log_size
        if swap_regions:
            self.bat_region = (nxt, bat_len)
            self.meta_region = (nxt + bat_len, meta_len)
        else:
            self.meta_region = (nxt, meta_len)
            self.bat_region = (nxt + meta_len, bat_len)
        nxt = align_up(max(r[0] + r[1] for r in
                           (self.meta_region, self.bat_region)), MiB)
        for blk in range(self.nblocks):
            if self.state[blk] in (FULLY_PRESENT, PARTIALLY_PRESENT):
                self.bat_off[blk] = nxt
                nxt += self.bs
        for c in range(self.nchunks):
            blks = range(c * self.cr, min((c + 1) * self.cr, self.nblocks))
            if any(self.state[b] == PARTIALLY_PRESENT for b in blks):
                self.sb_off[c] = nxt
                nxt += MiB
        self.end = nxt

    def bat_bytes(self):
        bat = bytearray(self.bat_region[1])
        for blk in range(self.nblocks):
            st = self.state[blk]
            off = self.bat_off.get(blk, 0)
            if st in (UNDEFINED, UNMAPPED) and self.rng.random() < 0.5:
                off = self.log_off  # FileOffsetMB is don't-care here
            struct.pack_into("<Q", bat, 8 * self.bat_index(blk),
                             st | (off // MiB) << 20)
        for c, off in self.sb_off.items():
            struct.pack_into("<Q", bat, 8 * (c * (self.cr + 1) + self.cr),
                             SB_PRESENT | (off // MiB) << 20)
        return bat

    def header(self, seq, log_guid):
        h = bytearray(4096)
        h[0:4] = b"head"
        struct.pack_into("<Q", h, 8, seq)
        h[16:32] = self.file_write_guid.bytes_le
        h[32:48] = self.data_write_guid.bytes_le
        h[48:64] = log_guid.bytes_le if log_guid else bytes(16)
        struct.pack_into("<HHIQ", h, 64, 0, 1, self.log_size, self.log_off)
        return with_crc(h)

    def region_table(self):
        t = bytearray(64 * KiB)
        t[0:4] = b"regi"
        struct.pack_into("<I", t, 8, 2)
        ents = [(G_BAT, self.bat_region), (G_META, self.meta_region)]
        if not self.plain:
            self.rng.shuffle(ents)
        for i, (g, (off, ln)) in enumerate(ents):
            e = 16 + 32 * i
            t[e:e + 16] = g.bytes_le
            struct.pack_into("<QII", t, e + 16, off, ln, 1)
        return with_crc(t)

    def locator(self):
        p = self.parent
        g = "{%s}" % p["linkage"]
        if p.get("upper"):
            g = g.upper()
        kv = [("parent_linkage", g)]
        if p.get("linkage2"):
            kv.append(("parent_linkage2", "{%s}" % p["linkage2"]))
        name = p["name"]
        kv += [("relative_path", ".\\" + name),
               ("volume_path", "\\\\?\\Volume{%s}\\images\\%s"
                % (p.get("volume", uuid.UUID(int=7)), name)),
               ("absolute_win32_path", "C:\\images\\" + name)]
        if not self.plain:
            self.rng.shuffle(kv)
        hdr = bytearray(20)
        hdr[0:16] = G_LOCATOR_TYPE.bytes_le
        struct.pack_into("<HH", hdr, 16, 0, len(kv))
        ents = bytearray()
        blob = bytearray()
        base = 20 + 12 * len(kv)
        for k, v in kv:
            kb, vb = k.encode("utf-16-le"), v.encode("utf-16-le")
            ents += struct.pack("<IIHH", base + len(blob), base + len(blob)
                                + len(kb), len(kb), len(vb))
            blob += kb + vb
        return bytes(hdr + ents + blob)

    def metadata(self):
        m = bytearray(MiB)
        items = [
            (G_FILE_PARAMS, 4, struct.pack(
                "<II", self.bs, (1 if self.leave_allocated else 0)
                | (2 if self.parent else 0))),
            (G_DISK_SIZE, 6, struct.pack("<Q", self.size)),
            (G_PAGE83, 6, rand_guid(self.rng).bytes_le),
            (G_LSS, 6, struct.pack("<I", self.lss)),
            (G_PSS, 6, struct.pack("<I", self.pss)),
        ]
        if self.parent:
            items.append((G_LOCATOR, 4, self.locator()))
        if not self.plain:
            self.rng.shuffle(items)
        m[0:8] = b"metadata"
        struct.pack_into("<H", m, 10, len(items))
        pos = 64 * KiB
        for i, (g, flags, blob) in enumerate(items):
            e = 32 + 32 * i
            m[e:e + 16] = g.bytes_le
            struct.pack_into("<III", m, e + 16, pos, len(blob), flags)
            m[pos:pos + len(blob)] = blob
            pos = align_up(pos + len(blob), 8)
        return m

    def sector_bitmap(self, c):
        sb = bytearray(MiB)
        spb = self.bs // self.lss
        for blk in range(c * self.cr, min((c + 1) * self.cr, self.nblocks)):
            if self.state[blk] != PARTIALLY_PRESENT:
                continue
            base = (blk - c * self.cr) * spb
            for s in self.present[blk]:
                i = base + s
                sb[i >> 3] |= 1 << (i & 7)
        return sb

    def save(self, path, swap_regions=None, stale_log=False, seq=None):
        if swap_regions is None:
            swap_regions = not self.plain and self.rng.random() < 0.5
        self.layout(swap_regions)
        with open(path, "wb") as f:
            f.truncate(self.end)
            fid = bytearray(64 * KiB)
            fid[0:8] = b"vhdxfile"
            cre = "mkvhdx.py (layerfs tests)".encode("utf-16-le")
            fid[8:8 + len(cre)] = cre
            f.seek(0)
            f.write(fid)
            seq = seq if seq is not None else self.rng.randrange(1, 1000)
            cur, old = self.header(seq + 1, self.log_guid), self.header(
                seq, None)
            first_is_current = self.plain or self.rng.random() < 0.5
            f.seek(64 * KiB)
            f.write(cur if first_is_current else old)
            f.seek(128 * KiB)
            f.write(old if first_is_current else cur)
            rt = self.region_table()
            f.seek(192 * KiB)
            f.write(rt)
            f.write(rt)
            if stale_log:
                f.seek(self.log_off)
                f.write(stale_log_bytes(self.rng, self.log_size))
            f.seek(self.meta_region[0])
            f.write(self.metadata())
            f.seek(self.bat_region[0])
            f.write(self.bat_bytes())
            for blk, off in self.bat_off.items():
                f.seek(off)
                f.write(self.data[blk])
            for c, off in self.sb_off.items():
                f.seek(off)
                f.write(self.sector_bitmap(c))


# ---- log entries (2.3) ----

def log_entry(seq, tail, log_guid, descs, flushed, last):
    """descs: ("data", file_off, 4096 bytes) or ("zero", file_off, len).
    Returns the entry's bytes (a multiple of 4 KiB)."""
    ndesc = len(descs)
    dsec = (64 + 32 * ndesc + 4095) // 4096
    datas = [d for d in descs if d[0] == "data"]
    e = bytearray(4096 * (dsec + len(datas)))
    e[0:4] = b"loge"
    struct.pack_into("<IIQII", e, 8, len(e), tail, seq, ndesc, 0)
    e[32:48] = log_guid.bytes_le
    struct.pack_into("<QQ", e, 48, flushed, last)
    di = 0
    for j, d in enumerate(descs):
        p = 64 + 32 * j
        if d[0] == "zero":
            e[p:p + 4] = b"zero"
            struct.pack_into("<IQQQ", e, p + 4, 0, d[2], d[1], seq)
        else:
            sec = d[2]
            assert len(sec) == 4096
            e[p:p + 4] = b"desc"
            e[p + 4:p + 8] = sec[4092:4096]
            e[p + 8:p + 16] = sec[0:8]
            struct.pack_into("<QQ", e, p + 16, d[1], seq)
            q = 4096 * (dsec + di)
            e[q:q + 4] = b"data"
            struct.pack_into("<I", e, q + 4, seq >> 32)
            e[q + 8:q + 4092] = sec[8:4092]
            struct.pack_into("<I", e, q + 4092, seq & 0xFFFFFFFF)
            di += 1
    return with_crc(e)


def stale_log_bytes(rng, log_size):
    """Entries of an old, flushed log (another LogGuid): to be ignored."""
    g = rand_guid(rng)
    out = bytearray(log_size)
    pos = 0
    for seq in range(1, 4):
        sec = bytes([rng.getrandbits(8)]) * 4096
        e = log_entry(seq, 0, g, [("data", 3 * MiB, sec)], 0, 0)
        out[pos:pos + len(e)] = e
        pos += len(e)
    return out


def put_log(f, img, entries, start):
    """Write entries one after the other from log offset start, wrapping
    around the end of the circular log sector by sector."""
    pos = start
    for e in entries:
        for k in range(0, len(e), 4096):
            f.seek(img.log_off + pos)
            f.write(e[k:k + 4096])
            pos = (pos + 4096) % img.log_size
    return pos


# ---- scenarios ----

def rand_bytes(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


class Model:
    """The expected flat content: 1 MiB pieces, zeros where none."""

    def __init__(self, size):
        self.size = size
        self.p = {}

    def write(self, off, buf):
        pos = 0
        while pos < len(buf):
            i, o = divmod(off + pos, MiB)
            n = min(len(buf) - pos, MiB - o)
            piece = self.p.get(i)
            if piece is None and any(buf[pos:pos + n]):
                piece = self.p[i] = bytearray(MiB)
            if piece is not None:
                piece[o:o + n] = buf[pos:pos + n]
            pos += n

    def zero(self, off, n):
        for i in range(off // MiB, -(-(off + n) // MiB)):
            if i in self.p:
                a = max(off, i * MiB) - i * MiB
                b = min(off + n, (i + 1) * MiB) - i * MiB
                self.p[i][a:b] = bytes(b - a)

    def nonzero(self, off, n):
        return any(i in self.p and any(self.p[i])
                   for i in range(off // MiB, -(-(off + n) // MiB)))

    def save(self, path):
        with open(path, "wb") as f:
            f.truncate(self.size)
            for i in sorted(self.p):
                f.seek(i * MiB)
                f.write(self.p[i][:min(MiB, self.size - i * MiB)])


def hot_zones(size, lss):
    """Where a chain's writes go: the start, each chunk boundary (the
    sector bitmap of the next chunk) and the end; all of a small disk."""
    zones = [(0, min(size, 8 * MiB))]
    chunk = (1 << 23) * lss
    for c in range(chunk, size, chunk):
        lo = max(0, c - 2 * MiB)
        zones.append((lo, min(size, c + 8 * MiB) - lo))
    zones.append((max(0, size - 4 * MiB), min(size, 4 * MiB)))
    return zones


def base_layer(rng, img, model, hot, fixed, undefined):
    bs, size = img.bs, img.size
    for blk in range(img.nblocks):
        r = rng.random()
        start = blk * bs
        n = min(bs, size - start)
        if fixed or (r < 0.5 and hot(blk)):
            buf = rand_bytes(rng, n) if rng.random() < 0.7 \
                else bytes([0x41]) * n
            if rng.random() < 0.2:
                buf = bytes(n)      # present, but zero bytes
            img.write(start, buf, False)
            model.write(start, buf)
        elif r < 0.65:
            img.set_state(blk, ZERO)
        elif undefined and r < 0.75:
            img.set_state(blk, rng.choice([UNDEFINED, UNMAPPED]))
        # else NOT_PRESENT: zeros at the bottom of the chain


def diff_layer(rng, img, model, zones, hot, level, undefined):
    bs, size, lss, nb = img.bs, img.size, img.lss, img.nblocks
    spb = bs // lss
    # sector-granular writes at odd offsets
    for _ in range(rng.randrange(4, 12) * len(zones)):
        z, zn = rng.choice(zones)
        sec = rng.randrange(z // lss, (z + zn) // lss) | 1
        cnt = min(rng.randrange(1, 3 * spb // 4 + 2), (z + zn) // lss - sec)
        if cnt <= 0:
            continue
        buf = rand_bytes(rng, cnt * lss)
        img.write(sec * lss, buf, True)
        model.write(sec * lss, buf)
    # one write across a block boundary
    if nb > 1:
        b = rng.choice([b for b in range(1, nb) if hot(b)] or [1])
        sec = b * spb - 3
        buf = rand_bytes(rng, 7 * lss)
        if sec * lss + len(buf) <= size:
            img.write(sec * lss, buf, True)
            model.write(sec * lss, buf)
    free = [b for b in range(nb) if img.state[b] == NOT_PRESENT and hot(b)]
    rng.shuffle(free)
    # a whole block written: FULLY_PRESENT
    if free:
        b = free.pop()
        n = min(bs, size - b * bs)
        buf = rand_bytes(rng, n)
        img.write(b * bs, buf, False)
        model.write(b * bs, buf)
    # a whole block through the bitmap: partial, all bits set
    if free:
        b = free.pop()
        n = min(bs, size - b * bs)
        buf = bytes([0x30 + level]) * n
        img.write(b * bs, buf, True)
        model.write(b * bs, buf)
    # zeros over what the parent has (data, when it has some);
    # "undefined" over parent data reads as zeros too
    free.sort(key=lambda b: model.nonzero(b * bs, bs))
    states = [ZERO, ZERO]
    if undefined:
        states.insert(rng.randrange(3), rng.choice([UNDEFINED, UNMAPPED]))
    for st in states:
        if free:
            b = free.pop()
            img.set_state(b, st)
            model.zero(b * bs, min(bs, size - b * bs))


def make_chain(a):
    rng = random.Random(a.seed)
    size = a.size
    bs = a.block_mib * MiB
    os.makedirs(a.dir, exist_ok=True)
    model = Model(size)
    zones = hot_zones(size, a.lss)
    parent = None
    names = []

    def hot(blk):
        return any(blk * bs < z + n and z < (blk + 1) * bs for z, n in zones)

    for level in range(a.depth + 1):
        name = a.name % level
        img = Image(rng, size, bs, a.lss, parent=parent,
                    leave_allocated=a.fixed and level == 0, plain=a.plain)
        if level == 0:
            base_layer(rng, img, model, hot, a.fixed, a.undefined)
        else:
            diff_layer(rng, img, model, zones, hot, level, a.undefined)
        path = os.path.join(a.dir, name)
        img.save(path, stale_log=a.stale_log and rng.random() < 0.5)
        model.save(path + ".raw")
        names.append(name)
        parent = {"linkage": img.data_write_guid, "name": name,
                  "upper": a.upper_guid,
                  "linkage2": rand_guid(rng) if rng.random() < 0.3
                  else None}
    print(" ".join(names))


def make_child(a):
    """One differencing VHDX over a parent of any format, given as its
    flat content and its identity (for mixed chains)."""
    rng = random.Random(a.seed)
    size = os.path.getsize(a.parent_raw)
    if size % a.lss:
        sys.exit("parent size %d is not a multiple of %d" % (size, a.lss))
    bs = a.block_mib * MiB
    model = Model(size)
    with open(a.parent_raw, "rb") as f:
        for i in range(-(-size // MiB)):
            model.write(i * MiB, f.read(MiB))
    zones = hot_zones(size, a.lss)

    def hot(blk):
        return any(blk * bs < z + n and z < (blk + 1) * bs for z, n in zones)

    img = Image(rng, size, bs, a.lss, parent={
        "linkage": uuid.UUID(a.parent_id), "name": a.parent_name})
    diff_layer(rng, img, model, zones, hot, 1, False)
    img.save(a.file)
    model.save(a.file + ".raw")


def make_dirtylog(a):
    rng = random.Random(a.seed)
    lss = a.lss
    bs = MiB
    size = 16 * MiB
    img = Image(rng, size, bs, lss)
    model = bytearray(size)
    for blk in (0, 1, 2, 5):
        buf = rand_bytes(rng, bs)
        img.write(blk * bs, buf, False)
        model[blk * bs:(blk + 1) * bs] = buf
    kinds = ["bat", "data", "extend"] if a.kind == "all" else [a.kind]
    img.log_guid = rand_guid(rng)
    hidden_blk = 7
    hidden = rand_bytes(rng, bs)
    # the payload of a block the on-disk BAT does not know yet
    img.write(hidden_blk * bs, hidden, False)
    img.layout(swap_regions=False)
    on_disk_bat = img.bat_bytes()
    hidden_off = img.bat_off[hidden_blk]
    ext_blk, ext_off = 9, align_up(img.end, MiB) + 2 * MiB
    flushed = img.end
    last = img.end
    # entries of the active sequence, in order
    entries_descs = []
    new_bat = bytearray(on_disk_bat)
    i = img.bat_index(hidden_blk)
    struct.pack_into("<Q", on_disk_bat, 8 * i, NOT_PRESENT)
    if "bat" in kinds:
        sec = (8 * i) // 4096 * 4096
        entries_descs.append([("data", img.bat_region[0] + sec,
                               bytes(new_bat[sec:sec + 4096]))])
        model[hidden_blk * bs:(hidden_blk + 1) * bs] = hidden
    if "data" in kinds:
        d = []
        for blk, inb in ((1, 8192), (5, 0)):
            page = rand_bytes(rng, 4096)
            d.append(("data", img.bat_off[blk] + inb, page))
            model[blk * bs + inb:blk * bs + inb + 4096] = page
        z = img.bat_off[2] + 65536
        d.append(("zero", z, 3 * 4096))
        model[2 * bs + 65536:2 * bs + 65536 + 3 * 4096] = bytes(3 * 4096)
        # a later entry rewrites one of the zeroed sectors
        page = rand_bytes(rng, 4096)
        entries_descs.append(d)
        entries_descs.append([("data", z + 4096, page)])
        model[2 * bs + 65536 + 4096:2 * bs + 65536 + 8192] = page
    if "extend" in kinds:
        # block ext_blk lives past the end of the file: the replay makes
        # the file longer (LastFileOffset) and writes one sector into it
        i2 = img.bat_index(ext_blk)
        sec = (8 * i2) // 4096 * 4096
        nb = bytearray(new_bat if "bat" in kinds else on_disk_bat)
        struct.pack_into("<Q", nb, 8 * i2,
                         FULLY_PRESENT | (ext_off // MiB) << 20)
        page = rand_bytes(rng, 4096)
        entries_descs.append([("data", img.bat_region[0] + sec,
                               bytes(nb[sec:sec + 4096])),
                              ("data", ext_off + 12288, page)])
        model[ext_blk * bs:(ext_blk + 1) * bs] = bytes(bs)
        model[ext_blk * bs + 12288:ext_blk * bs + 16384] = page
        last = ext_off + bs
    if a.torn == "only":
        model = None    # computed below: nothing is replayed
    img.save(a.file, swap_regions=False)
    with open(a.file, "r+b") as f:
        f.seek(img.bat_region[0])
        f.write(on_disk_bat)
        # stale entries of an older log with higher sequence numbers
        g_old = rand_guid(rng)
        stale = [log_entry(900 + k, 0, g_old,
                           [("zero", img.bat_off[0], 4096)], 0, 0)
                 for k in range(2)]
        put_log(f, img, stale, img.log_size - 2 * 4096 * 2)
        seq0 = rng.randrange(10, 1 << 40)
        start = img.log_size - 4096 if a.wrap else 3 * 4096
        ents = []
        pos = start
        for k, d in enumerate(entries_descs):
            e = log_entry(seq0 + k, start, img.log_guid, d, flushed, last)
            ents.append(e)
            pos = (pos + len(e)) % img.log_size
        if a.torn == "middle":
            assert len(ents) >= 2
            b = bytearray(ents[0])
            b[len(b) - 100] ^= 0x5A      # inside the tail entry
            ents[0] = bytes(b)
        elif a.torn == "after":
            b = bytearray(log_entry(seq0 + len(ents), start, img.log_guid,
                                    [("zero", img.bat_off[0], 4096)],
                                    flushed, last))
            b[200] ^= 1
            ents.append(bytes(b))
        elif a.torn == "only":
            b = bytearray(ents[0])
            b[4096 - 1] ^= 1
            ents = [bytes(b)]
        put_log(f, img, ents, start)
    if model is None:
        model = bytearray(size)
        for blk in (0, 1, 2, 5):
            model[blk * bs:(blk + 1) * bs] = img.data[blk][:bs]
    with open(a.file + ".raw", "wb") as f:
        f.write(model)


def size_arg(s):
    mult = {"k": KiB, "m": MiB, "g": MiB * 1024}
    if s[-1].lower() in mult:
        return int(s[:-1]) * mult[s[-1].lower()]
    return int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chain")
    c.add_argument("dir")
    c.add_argument("--depth", type=int, default=2)
    c.add_argument("--lss", type=int, default=512, choices=(512, 4096))
    c.add_argument("--block-mib", type=int, default=1)
    c.add_argument("--size", type=size_arg, default=8 * MiB + 2 * 4096)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--upper-guid", action="store_true")
    c.add_argument("--fixed", action="store_true")
    c.add_argument("--undefined", action="store_true")
    c.add_argument("--stale-log", action="store_true")
    c.add_argument("--name", default="d%d.vhdx")
    c.add_argument("--plain", action="store_true",
                   help="fixed layout: metadata at 2 MiB, BAT at 3 MiB, "
                   "items in spec order, header 1 current")
    c = sub.add_parser("child")
    c.add_argument("file")
    c.add_argument("--parent-raw", required=True)
    c.add_argument("--parent-name", required=True)
    c.add_argument("--parent-id", required=True)
    c.add_argument("--lss", type=int, default=512, choices=(512, 4096))
    c.add_argument("--block-mib", type=int, default=2)
    c.add_argument("--seed", type=int, default=1)
    d = sub.add_parser("dirtylog")
    d.add_argument("file")
    d.add_argument("--kind", default="all",
                   choices=("bat", "data", "extend", "all"))
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--wrap", action="store_true")
    d.add_argument("--torn", default="none",
                   choices=("none", "middle", "after", "only"))
    d.add_argument("--lss", type=int, default=512, choices=(512, 4096))
    a = ap.parse_args()
    if a.cmd == "chain":
        if a.size % a.lss:
            ap.error("--size must be a multiple of --lss")
        if a.fixed and a.size > 512 * MiB:
            ap.error("--fixed writes every block: keep --size small")
        make_chain(a)
    elif a.cmd == "child":
        make_child(a)
    else:
        make_dirtylog(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
