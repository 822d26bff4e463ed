#!/bin/bash
# make-example.sh OUTDIR: build a small layered image set to mount.
#
#   win11-L0.vhd    dynamic VHD: GPT disk, p1 "system" (ext4 with files),
#                   p2 "data" (raw)
#   win11-L1.vhd    differencing VHD over L0 (sector-granular writes in p2)
#   win11-L2.qcow2  QCOW2 overlay over the L1 VHD (cluster writes in p2)
#   vendor.simg     Android sparse image (RAW, FILL, DONT_CARE, CRC32)
#
# Each file is made by a tool other than layerfs: sfdisk, mke2fs, qemu-img
# and qemu-io, and the spec-written generators in tests/tools/.
set -euo pipefail

out=${1:?usage: make-example.sh OUTDIR}
src=$(cd "$(dirname "$0")/.." && pwd)
tools=$src/tests/tools
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# L0: a 64 MiB GPT disk with an ext4 system partition holding some files.
mkdir -p "$work/root/etc" "$work/root/apps"
echo "layerfs example, layer L0" >"$work/root/etc/motd"
echo "base OS image" >"$work/root/README"
head -c 300000 /dev/urandom >"$work/root/apps/blob.bin"
truncate -s 64M "$work/L0.raw"
sfdisk -q "$work/L0.raw" <<'PARTS'
label: gpt
start=2048, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="system"
start=67584, size=61440, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="data"
PARTS
mke2fs -q -F -t ext4 -L system -d "$work/root" -E offset=$((2048 * 512)) \
	"$work/L0.raw" 32M
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$work/L0.raw" "$out/win11-L0.vhd"

# L1: a differencing VHD that writes odd-sized runs of sectors into p2.
python3 "$tools/mkvhd.py" create-diff "$out/win11-L1.vhd" \
	--parent "$out/win11-L0.vhd" --expect-in "$work/L0.raw" \
	--expect-out "$work/L1.raw" \
	--writes "67584+8=0x4c,70001+33=0x31,100000+100,129000+23=0x7f"

# L2: a QCOW2 overlay on the VHD chain, whole 64 KiB clusters in p2.
qemu-img create -q -f qcow2 -F vpc -b win11-L1.vhd "$out/win11-L2.qcow2" 64M
qemu-io -f qcow2 -c "write -P 0x32 $((80000 * 512)) 128k" \
	"$out/win11-L2.qcow2" >/dev/null

# An Android sparse image with all four chunk types.
{
	head -c 1M /dev/urandom
	head -c 2M /dev/zero
	head -c 1M /dev/zero | tr '\0' '\252'
	head -c 512k /dev/urandom
} >"$work/vendor.raw"
python3 "$tools/mksimg.py" "$work/vendor.raw" "$out/vendor.simg" --crc \
	>/dev/null

echo "example images in $out:"
ls -l "$out"
