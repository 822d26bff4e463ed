#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build the partition-scan libFuzzer target (outside the meson build: it
# needs clang) and, with "seed", make a seed corpus of sfdisk-made disks
# (GPT and MBR with logical partitions, 512- and 4096-byte sectors), each
# cut down to its first and last sectors in fuzz-part.c's input format.
#
#   tests/fuzz/build-part.sh [OUTDIR]          -> OUTDIR/fuzz-part
#   tests/fuzz/build-part.sh OUTDIR seed       -> also OUTDIR/corpus-part
#   OUTDIR/fuzz-part -max_len=200000 -timeout=10 -rss_limit_mb=2048 \
#       -max_total_time=300 OUTDIR/corpus-part
set -eu

. "$(dirname "$0")/build-lib.sh"
fuzz_init part "${1:-}"

# part.c and the common helpers; fuzz-part.c stands in for chain_pread
fuzz_build part -I"$src/src/part" "$src/src/part/part.c" \
	"$src"/src/common/*.c -lblkid -lpthread

[ "${2:-}" = seed ] || exit 0
fuzz_seed_init part
# seed NAME SECTOR_SIZE SECTORS HEAD_SECTORS TAIL_SECTORS < sfdisk script
# (sfdisk writes 512-byte sectors to a file; 4096 comes from gpt4k below)
seed() {
	truncate -s $(($2 * $3)) "$t/d"
	sfdisk -q "$t/d" >/dev/null
	python3 - "$t/d" "$c/$1" "$2" "$3" "$4" "$5" <<'PY'
import struct, sys
d, o = open(sys.argv[1], "rb").read(), sys.argv[2]
ss, n, h, t = (int(x) for x in sys.argv[3:7])
head, tail = d[:h * ss], d[len(d) - t * ss:] if t else b""
hdr = struct.pack("<I", n) + struct.pack("<I", (len(head) << 8) | (ss == 4096))
open(o, "wb").write(hdr + head + tail)
PY
	rm -f "$t/d"
}
seed gpt-512 512 8192 34 33 <<'SF'
label: gpt
start=64, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
start=4096, size=4000, type=E3C9E316-0B5C-4DB8-817D-F92DF00215AE
SF
seed gpt-primary-only 512 8192 34 0 <<'SF'
label: gpt
start=64, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
SF
seed gpt-backup-only 512 8192 0 33 <<'SF'
label: gpt
start=64, size=1024, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
SF
seed mbr 512 8192 1 0 <<'SF'
label: dos
start=64, size=1000, type=83
start=2048, size=2048, type=7, bootable
start=4096, size=4000, type=c
SF
# logical partitions: the EBR chain lies inside the head (first 216 sectors)
seed mbr-logical 512 8192 216 0 <<'SF'
label: dos
start=32, size=16, type=83
start=64, size=8000, type=5
start=72, size=64, type=83
start=144, size=64, type=82
start=216, size=3000, type=83
SF
# a GPT on 4096-byte sectors (sfdisk cannot make one in a file): written
# here from the UEFI layout, 2048 sectors, two partitions
python3 - "$c/gpt-4096" <<'PY'
import struct, sys, uuid, zlib
ss, n = 4096, 2048
ents = bytearray(128 * 128)
for i, (ty, first, last, name) in enumerate([
        ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", 16, 271, "data"),
        ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", 512, 1535, "")]):
    struct.pack_into("<16s16sQQQ72s", ents, 128 * i, uuid.UUID(ty).bytes_le,
                     uuid.UUID(int=i + 1).bytes_le, first, last, 0,
                     name.encode("utf-16-le"))
def header(cur, alt, arr):
    h = bytearray(struct.pack("<8sIII4xQQQQ16sQIII", b"EFI PART", 0x10000,
                  92, 0, cur, alt, 6, n - 6, uuid.UUID(int=99).bytes_le,
                  arr, 128, 128, zlib.crc32(ents)))
    struct.pack_into("<I", h, 16, zlib.crc32(h))
    return bytes(h) + bytes(ss - len(h))
mbr = bytearray(ss)
struct.pack_into("<8BII", mbr, 446, 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, n - 1)
mbr[510:512] = b"\x55\xaa"
head = bytes(mbr) + header(1, n - 1, 2) + bytes(ents) + bytes(ss * 2)
tail = bytes(ents) + header(n - 1, 1, n - 5)
hdr = struct.pack("<I", n) + struct.pack("<I", (len(head) << 8) | 1)
open(sys.argv[1], "wb").write(hdr + head + tail)
PY
ls -la "$c"
