#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Files with a known magic but a version this code does not read: QCOW2
# version 4 (and 0), a VHD footer and a VHD dynamic header of version 2.0,
# a VHDX header of version 2 and one of log version 1, an Android sparse
# image of major version 2.  Each is recognised by its magic and refused
# with one error naming the file and the version (qemu: "Unsupported
# qcow2 version 4"); none is served as a raw disk, so no chain directory
# appears for them, and the good image next to them mounts.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img python3

img=$T/img
mkdir -p "$img"
q() { qemu-img "$@" >/dev/null || fail "qemu-img $*"; }

q create -f qcow2 "$img/good.qcow2" 1M
q create -f qcow2 "$img/qcow2-v4.qcow2" 1M
q create -f qcow2 "$img/qcow2-v0.qcow2" 1M
# whole sectors: the size alone would let the raw driver take them
truncate -s 256K "$img/qcow2-v4.qcow2" "$img/qcow2-v0.qcow2"
q create -f vpc -o subformat=fixed "$img/vhd-footer.vhd" 1M
q create -f vpc -o subformat=dynamic "$img/vhd-dynhdr.vhd" 1M
q create -f vhdx "$img/vhdx-version.vhdx" 1M
q create -f vhdx "$img/vhdx-logversion.vhdx" 1M

python3 - "$img" <<'EOF' || fail "patching the versions"
import os, struct, sys

d = sys.argv[1]

def patch(name, off, data):
    with open(os.path.join(d, name), "r+b") as f:
        f.seek(off)
        f.write(data)

def vhd_sum(b, at):
    b = bytearray(b)
    b[at:at + 4] = b"\0\0\0\0"
    return struct.pack(">I", ~sum(b) & 0xffffffff)

def crc32c(b):
    crc = 0xffffffff
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff

# QCOW2: the version field follows the magic
patch("qcow2-v4.qcow2", 4, struct.pack(">I", 4))
patch("qcow2-v0.qcow2", 4, struct.pack(">I", 0))

# VHD footer (the copy at the end of a fixed disk): version at 12,
# checksum at 64
p = os.path.join(d, "vhd-footer.vhd")
with open(p, "r+b") as f:
    f.seek(-512, 2)
    ft = bytearray(f.read(512))
    ft[12:16] = struct.pack(">I", 0x00020000)
    ft[64:68] = vhd_sum(ft, 64)
    f.seek(-512, 2)
    f.write(ft)

# VHD dynamic header (at the footer's data_offset): version at 24,
# checksum at 36 over its 1024 bytes
p = os.path.join(d, "vhd-dynhdr.vhd")
with open(p, "r+b") as f:
    ft = f.read(512)
    off = struct.unpack(">Q", ft[16:24])[0]
    f.seek(off)
    h = bytearray(f.read(1024))
    h[24:28] = struct.pack(">I", 0x00020000)
    h[36:40] = vhd_sum(h, 36)
    f.seek(off)
    f.write(h)

# VHDX: both headers (64 KiB, 128 KiB), log_version at 64, version at
# 66, CRC-32C at 4 over the 4 KiB header
for name, at, val in (("vhdx-version.vhdx", 66, 2),
                      ("vhdx-logversion.vhdx", 64, 1)):
    p = os.path.join(d, name)
    with open(p, "r+b") as f:
        for off in (64 << 10, 128 << 10):
            f.seek(off)
            h = bytearray(f.read(4096))
            h[at:at + 2] = struct.pack("<H", val)
            h[4:8] = b"\0\0\0\0"
            h[4:8] = struct.pack("<I", crc32c(h))
            f.seek(off)
            f.write(h)

# Android sparse, major version 2: header (28 bytes), one DONT_CARE chunk
with open(os.path.join(d, "simg-major.simg"), "wb") as f:
    f.write(struct.pack("<IHHHHIIII", 0xed26ff3a, 2, 0, 28, 12, 4096, 1, 1,
                        0))
    f.write(struct.pack("<HHII", 0xcac3, 0, 1, 12))
EOF

layerfs_mount "$T/m" "$img"
m=$T/m
cat "$m/.layerfs.log" >"$T/m.log"
expect_dirs "$m" good
for log in "$MOUNT_ERR" "$T/m.log"; do
	expect_error "$log" qcow2-v4.qcow2 'unsupported qcow2 version 4'
	expect_error "$log" qcow2-v0.qcow2 'unsupported qcow2 version 0'
	expect_error "$log" vhd-footer.vhd 'footer: unsupported version'
	expect_error "$log" vhd-dynhdr.vhd 'dynamic header: unsupported version'
	expect_error "$log" vhdx-version.vhdx 'unsupported version'
	expect_error "$log" vhdx-logversion.vhdx 'unsupported log version'
	expect_error "$log" simg-major.simg 'unsupported major version'
	expect_no_error "$log" good.qcow2
done
layerfs_umount "$m"
finish
