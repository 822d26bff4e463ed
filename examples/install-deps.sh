#!/bin/bash
# install-deps.sh: every Debian 12 package layerfs needs to build, test,
# benchmark and run its examples.  Run as root (or through sudo).
set -euo pipefail

packages=(
	# build
	gcc meson ninja-build pkg-config
	libfuse3-dev fuse3 zlib1g-dev libzstd-dev libxml2-dev libblkid-dev
	libfdisk-dev uuid-dev check
	# oracles and tools the tests use
	qemu-utils android-sdk-libsparse-utils 7zip python3 xz-utils bzip2
	gzip util-linux mount fdisk e2fsprogs genisoimage mandoc dosfstools mtools ntfs-3g libvhdi-utils
	# the README's qemu-system-x86_64 lines (t-qemu-readme), UEFI guests
	qemu-system-x86 ovmf
	# packaging: bash completion's directory, the .deb (t-deb)
	bash-completion build-essential debhelper dpkg-dev
	# benchmarks
	fio qemu-system-common
)

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps.sh: run as root (sudo $0)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${packages[@]}"
