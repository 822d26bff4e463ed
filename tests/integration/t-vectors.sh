#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Real-world and third-party-tool images from $LAYERFS_VECTORS (see its
# INDEX.md), all mounted from one IMAGEDIR: each disk's sha256 must equal
# the flattened sha256 recorded there; the images that must be refused
# (afl5.img, bad checksums, missing parents) are left out with an error
# line naming the file, on stderr and in .layerfs.log, and the rest mounts.
. "$(dirname "$0")/lib.sh"
require_fuse
require_vectors
require xz gzip bzip2 python3 dd

# Formats under test.  A row whose format is not listed is not copied into
# IMAGEDIR, and the script says so on its output.  LAYERFS_VECTOR_FORMATS
# narrows the list by hand (while a driver is being written).
formats=${LAYERFS_VECTOR_FORMATS:-raw vhd sparse vhdx qcow2}

# format  source (under $LAYERFS_VECTORS)      name in IMAGEDIR    expected
#   expected: sha256 of the flattened disk; zero:SIZE (SIZE zero bytes, no
#   data extents: the sum of such a disk is too slow to recompute here,
#   DETAILS/zero-hashes.jsonl gives it); reject (left out with an error).
#   Chain members keep the names their children refer to.
vectors_table() {
	cat <<'EOF'
raw    qemu-iotests/grub_mbr.raw                  grub_mbr.raw                3cc502da6ecbbb8ae090212ed77ee5aadf942d2c26897753f871cdfc23e359b6
raw    android-sparse-rs/decoded.img              decoded.img                 c38a0a456019f08f0c21e72f737c8d156a4972bbb8f33c758f228e88c828df78
raw    encrypt-cloud-image/test.raw.xz            eci-gpt.raw                 74955d892f9e808dc1d2bff40c1e5a556044cb44875a0b25eb3e0f55d883a50b
raw    gen-qemu-7.2/base.raw.xz                   base.raw                    17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
vhd    qemu-iotests/hyperv2012r2-dynamic.vhd.bz2  hyperv2012r2-dynamic.vhd    zero:136365211648
vhd    qemu-iotests/virtualpc-dynamic.vhd.bz2     virtualpc-dynamic.vhd       zero:136365211648
vhd    qemu-iotests/d2v-zerofilled.vhd.bz2        d2v-zerofilled.vhd          1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143
vhd    qemu-iotests/afl5.img                      afl5.img                    reject
vhd    dissect.hypervisor/fixed.vhd.gz            dissect-fixed.vhd           459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463
vhd    dissect.hypervisor/dynamic.vhd.gz          dissect-dynamic.vhd         ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784
vhd    encrypt-cloud-image/fixed.vhd.xz           eci-fixed.vhd               b5c66da804fc7b43323f390a265a9d1c0968246229744985969eab02fad7f5fd
vhd    encrypt-cloud-image/dynamic.vhd.xz         eci-dynamic.vhd             d54b6ea49740fabc36021533e127990c801e3249025afdc499984feee2ab674c
vhd    dfvfs/ext2.vhd.xz                          dfvfs-ext2.vhd              870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99
vhd    dfvfs/fat-differential.vhd.xz              fat-differential.vhd        reject
vhd    dfvfs/image.vhd.xz                         image.vhd                   reject
vhd    dfvfs/image-differential.vhd.xz            image-differential.vhd      reject
vhd    gen-qemu-7.2/vpc-dynamic-forcesize.vhd.xz  vpc-dynamic-forcesize.vhd   17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
vhd    gen-qemu-7.2/vpc-fixed-forcesize.vhd.xz    vpc-fixed-forcesize.vhd     17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
vhd    gen-qemu-7.2/vpc-dynamic.vhd.xz            vpc-dynamic.vhd             50c4fbc8dbf920ef1fb27708321c10d83f3052626b203df6a90f3bcf2a01c351
sparse android-sparse-rs/hello.simg               hello.simg                  c38a0a456019f08f0c21e72f737c8d156a4972bbb8f33c758f228e88c828df78
sparse android-sparse-rs/crc.simg                 crc.simg                    c38a0a456019f08f0c21e72f737c8d156a4972bbb8f33c758f228e88c828df78
sparse android-sparse-rs/invalid_crc.simg         invalid_crc.simg            reject
sparse gen-img2simg-29/base-4096.simg.xz          base-4096.simg              17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
sparse gen-img2simg-29/base-1024.simg.xz          base-1024.simg              17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
sparse gen-img2simg-29/base-unaligned-4096.simg.xz base-unaligned-4096.simg   8d8f6ab0e43b04fe9303137d56fedde983f5ac111ce1800d52cc23f707c39398
sparse gen-img2simg-29/appended.simg.xz           appended.simg               76baa66d732db289714f66d77f7cac5fabb47cbe18ea264cb2a8faa2f0cb568d
vhdx   qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2 iotest-dirtylog-10G-4M.vhdx 179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f
vhdx   qemu-iotests/iotest-dynamic-1G.vhdx.bz2    iotest-dynamic-1G.vhdx      d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478
vhdx   qemu-iotests/test-disk2vhd.vhdx.bz2        test-disk2vhd.vhdx          96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a
vhdx   dissect.hypervisor/fixed.vhdx.gz           dissect-vhdx-fixed.vhdx     bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62
vhdx   dissect.hypervisor/dynamic.vhdx.gz         dissect-vhdx-dynamic.vhdx   8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac
vhdx   dissect.hypervisor/differencing.avhdx.gz   differencing.avhdx          reject
vhdx   gen-qemu-7.2/vhdx-dynamic-1M.vhdx.xz       vhdx-dynamic-1M.vhdx        17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
vhdx   gen-qemu-7.2/vhdx-dynamic-8M.vhdx.xz       vhdx-dynamic-8M.vhdx        17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
vhdx   gen-qemu-7.2/vhdx-fixed.vhdx.xz            vhdx-fixed.vhdx             17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  dissect.hypervisor/basic.qcow2.gz          basic.qcow2                 3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
qcow2  dissect.hypervisor/basic-zstd.qcow2.gz     basic-zstd.qcow2            3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
qcow2  dissect.hypervisor/data-file.qcow2.gz      data-file.qcow2             3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
qcow2  dissect.hypervisor/data-file.bin.gz        data-file.bin               3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
qcow2  dissect.hypervisor/backing-chain-1.qcow2.gz backing-chain-1.qcow2      186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074
qcow2  dissect.hypervisor/backing-chain-2.qcow2.gz backing-chain-2.qcow2      8e2e850f2a31828f6f053f70f1fbfa71a42ce0571c6d8cd2a7ca0e21e1db8341
qcow2  dissect.hypervisor/backing-chain-3.qcow2.gz backing-chain-3.qcow2      4a57a3a5c273c7c1144743ecafc7b23181f6e23c8abad104493a63a3599bd276
qcow2  dissect.hypervisor/snapshot.qcow2.gz       snapshot.qcow2              9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767
qcow2  encrypt-cloud-image/test.qcow2.xz          eci-test.qcow2              c1e139e78fe5b9eddf54b0ae9d21adf145365e8abcb8df8e575f36b8c24ec299
qcow2  dfvfs/ext2.qcow2.xz                        dfvfs-ext2-q.qcow2          a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80
qcow2  dfvfs/windows_volume.qcow2.xz              windows_volume.qcow2        44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2
qcow2  dfvfs/image.qcow2.xz                       dfvfs-image.qcow2           a9c0220b1dadd1812fc4bbe137f495d2c3b88c7b33b5a4de545d201fd31b3bc0
qcow2  dfvfs/vsstest.qcow2.xz                     vsstest.qcow2               5cba558cfac0916cae697d2231dc1e17874aa262f2890f5236fb9c90b9610d0a
qcow2  gen-qemu-7.2/plain-v3.qcow2.xz             plain-v3.qcow2              17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/plain-v2.qcow2.xz             plain-v2.qcow2              17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/comp-zlib-v2.qcow2.xz         comp-zlib-v2.qcow2          17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/comp-zlib-4k.qcow2.xz         comp-zlib-4k.qcow2          17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/comp-zlib-2M.qcow2.xz         comp-zlib-2M.qcow2          17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/comp-zstd-64k.qcow2.xz        comp-zstd-64k.qcow2         17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/chain-base.qcow2.xz           chain-base.qcow2            17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f
qcow2  gen-qemu-7.2/chain-mid.qcow2.xz            chain-mid.qcow2             8ddd17ea8c88777a69ba2b09438cd53ce5f0f8618d0f6a001d07e3d64527f793
qcow2  gen-qemu-7.2/chain-top.qcow2               chain-top.qcow2             61e6e8df271e10152acf477731c84fea9ffeb961eac8443e53532d9cfd37a0c5
qcow2  gen-qemu-7.2/overlay-on-raw.qcow2.xz       overlay-on-raw.qcow2        79b8f248c745755cb301dd304c2f82f87ec7ecf35d708b5860166c2f94acc879
qcow2  gen-qemu-7.2/overlay-grown.qcow2.xz        overlay-grown.qcow2         dea17e6e5884b2243fadd42b17667198633bd3beadc6dd96b5fe25425e8020fa
qcow2  gen-qemu-7.2/extl2.qcow2.xz                extl2.qcow2                 0a329e81bb9d42d53753e85011e80827b98dc17b1d6f33e303b7f90fb1aa1855
EOF
}

V=$LAYERFS_VECTORS
img=$T/img
mkdir -p "$img"
: >"$T/sums.expected"

# Expand one stored file into IMAGEDIR, sparsely (some are hundreds of MiB
# of zeros).  Its SHA256SUMS line, if any, is checked after snapshot_sums.
expand() {
	local src=$1 dst=$2 key
	case $src in
	*.xz) xz -dc "$V/$src" ;;
	*.gz) gzip -dc "$V/$src" ;;
	*.bz2) bzip2 -dc "$V/$src" ;;
	*) cat "$V/$src" ;;
	esac | dd of="$dst" bs=64K iflag=fullblock conv=sparse status=none ||
		fail "cannot expand $src"
	key=./${src%.xz}
	key=${key%.gz}
	key=${key%.bz2}
	awk -v k="$key" -v d="$dst" '$NF == k { print $1 "  " d; exit }' \
		"$V/SHA256SUMS" >>"$T/sums.expected"
}

declare -A expect=() dir=()
names=() mounted=() excluded=()
while read -r fmt src name want; do
	[ -n "$fmt" ] || continue
	case " $formats " in
	*" $fmt "*) ;;
	*) excluded+=("$name($fmt)"); continue ;;
	esac
	[ -f "$V/$src" ] || fail "$V/$src is missing (listed in the table)"
	expand "$src" "$img/$name"
	expect[$name]=$want
	names+=("$name")
	[ "$want" = reject ] || mounted+=("$name")
done < <(vectors_table)
[ "${#excluded[@]}" -eq 0 ] ||
	echo "$TEST_NAME: NOT TESTED (format not enabled): ${excluded[*]}"

# Directory names: the stem, or the whole name where stems clash
declare -A nstem=()
for name in "${mounted[@]}"; do
	nstem[${name%.*}]=$((${nstem[${name%.*}]:-0} + 1))
done
dirs=()
for name in "${mounted[@]}"; do
	if [ "${nstem[${name%.*}]}" -gt 1 ]; then
		dir[$name]=$name
	else
		dir[$name]=${name%.*}
	fi
	dirs+=("${dir[$name]}")
done

snapshot_sums "$img"
n=0
while read -r want path; do
	got=$(awk -v p="$path" '$2 == p { print $1 }' "$T/sums.before")
	[ "$got" = "$want" ] || fail "${path##*/} expands to sha256 $got, SHA256SUMS says $want"
	n=$((n + 1))
done <"$T/sums.expected"
ok "${#names[@]} vector files expanded ($n checked against SHA256SUMS)"

MOUNT_TIMEOUT=120 layerfs_mount "$T/mnt" "$img"
m=$T/mnt
cat "$m/.layerfs.log" >"$T/layerfs.log" || fail "cannot read .layerfs.log"
expect_dirs "$m" "${dirs[@]}"

for name in "${names[@]}"; do
	want=${expect[$name]}
	d=$m/${dir[$name]:-}
	case $want in
	reject)
		expect_error "$MOUNT_ERR" "$name"
		expect_error "$T/layerfs.log" "$name"
		;;
	zero:*)
		expect_size "$d/disk" "${want#zero:}" "$name"
		python3 - "$d/disk" <<'EOF' || fail "$name: not an empty disk"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
try:
    off = os.lseek(fd, 0, os.SEEK_DATA)
    sys.exit("SEEK_DATA finds data at %d" % off)
except OSError as e:
    if e.errno != errno.ENXIO:
        raise
MiB = 1 << 20
for off in (0, size // 2 // MiB * MiB, size - MiB):
    if os.pread(fd, MiB, off) != bytes(MiB):
        sys.exit("non-zero bytes in the MiB at %d" % off)
if os.pread(fd, 1, size) != b"":
    sys.exit("data past the end")
EOF
		ok "$name: ${want#zero:} bytes, no data extent, reads zero"
		;;
	*)
		got=$(sparse_sha_of "$d/disk") || fail "$name: read failed"
		[ "$got" = "$want" ] || fail "$name: sha256 $got, expected $want"
		ok "$name: flattened sha256 matches"
		expect_no_error "$MOUNT_ERR" "$name"
		;;
	esac
done

layerfs_umount "$m"
check_sums
finish
