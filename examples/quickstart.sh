#!/bin/bash
# quickstart.sh: install what layerfs needs, build it, make an example
# layer set and mount it, then show the disks, the partitions and a file
# from inside a partition.  Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -n "${SKIP_DEPS:-}" ] || examples/install-deps.sh
[ -d build ] || meson setup build
ninja -C build

ex=$(mktemp -d /tmp/layerfs-example.XXXXXX)
mnt=$ex/mnt
cleanup() {
	[ -n "${loop:-}" ] && { umount "$ex/p1" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; }
	mountpoint -q "$mnt" && fusermount3 -u "$mnt"
	rm -rf "$ex"
}
trap cleanup EXIT
examples/make-example.sh "$ex/images"
mkdir -p "$mnt" "$ex/p1"

echo; echo "== layerimg create --layout: a GPT disk from a Windows OEM device layout"
build/src/cli/layerimg create --layout examples/DeviceLayoutOEM.xml -f vhdx \
	"$ex/images/oem-L0.vhdx"
echo; echo "== layerimg info of the win11 chain"
build/src/cli/layerimg info "$ex/images" win11-L2

echo; echo "== layerfs $ex/images $mnt"
build/src/layerfs "$ex/images" "$mnt"

echo; echo "== the chains (one directory per image, each with its flat disk)"
ls -l "$mnt" "$mnt"/*/
echo; echo "== the mount's own log"
cat "$mnt/.layerfs.log"

disk=$mnt/win11-L2/disk
echo; echo "== partitions of win11-L2 (L2.qcow2 -> L1.vhd -> L0.vhd)"
sfdisk -l "$disk"

echo; echo "== partitions as files, and the chain's info file"
ls -l "$mnt/win11-L2" "$mnt/oem-L0" "$mnt/oem-L0/by-name"
cat "$mnt/win11-L2/info"

echo; echo "== p1 of win11-L2, loop-mounted read-only"
loop=$(losetup -f --show -r "$mnt/win11-L2/p1")
mount -o ro "$loop" "$ex/p1"
ls -l "$ex/p1"
cat "$ex/p1/etc/motd"

echo; echo "== win11-L1 (a VHD differencing chain) as layerfs and as 7-Zip read it"
echo "layerfs: $(sha256sum <"$mnt/win11-L1/disk" | cut -c1-64)"
echo "7-Zip  : $(cd "$ex/images" && 7zz e -so -tvhd win11-L1.vhd 2>/dev/null | sha256sum | cut -c1-64)"
