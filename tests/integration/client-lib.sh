# SPDX-License-Identifier: LGPL-2.1-or-later
# client-lib.sh: sourced (after lib.sh and write-lib.sh) by the
# t-client-*.sh tests, which use an exposed disk and its partitions the
# way a user would: loop mounts, mkfs, mtools, ntfs-3g, qemu, fstab.
#
#   (write-lib.sh's family_from_raw FAM DIR RAW makes a family over a
#            raw base the caller prepared)
#   gpt_script               the sfdisk input of the test GPT (3 partitions);
#            GPT_MIB its disk size, GPT_NPARTS, GPT_GEOM[n-1] "START SIZE"
#            of partition n in bytes
#   make_gpt_raw OUT MIB [random]   a raw disk of MIB MiB with that GPT;
#            "random" fills it with random bytes first (stale data under
#            every file system the test makes)
#   random_file OUT MIB SEED   MIB MiB of seeded random bytes
#   part_geom FILE N         sets P_START and P_SIZE (bytes) of partition N
#            of FILE's table, as sfdisk --json reads it
#   wait_part DIR N          wait (5 s at most) for DIR/pN to appear
#   extract FILE START SIZE OUT   copy a byte range of FILE to OUT
#   loop_mount FILE MNT [OPTS]    mount -o loop[,OPTS] FILE MNT
#   loop_umount MNT          umount, and wait for the loop device to go
#   ntfs_mount FILE MNT [OPTS] / ntfs_umount MNT   ntfs-3g in the foreground
#            (no_detach), in the background; umount waits for it to end
#
# The EXIT trap first unmounts what these helpers mounted (loop mounts,
# ntfs-3g) and detaches every loop device backed by a file under $T, so
# that lib.sh's own trap can then unmount layerfs.

# shellcheck disable=SC2034  # the FAM_* and P_* variables are for the callers

_client_mounts=()	# loop and ntfs-3g mounts, in mount order
declare -A _ntfs_pid=()	# MNT -> ntfs-3g pid

_client_cleanup() {
	local rc=$? i m p dev back
	set +e
	for ((i = ${#_client_mounts[@]} - 1; i >= 0; i--)); do
		m=${_client_mounts[i]}
		grep -qs " $m " /proc/self/mounts || continue
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	for p in "${_ntfs_pid[@]}"; do
		for i in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	# loop devices of ours: their backing file lies under $T
	while read -r dev back; do
		case $back in
		"$T"/*) losetup -d "$dev" 2>/dev/null ;;
		esac
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null)
	for i in $(seq 50); do
		losetup -l -n -O BACK-FILE 2>/dev/null | grep -q "^$T/" || break
		sleep 0.1
	done
	(exit "$rc")
	_cleanup
}
trap _client_cleanup EXIT

# 1 MiB aligned: p1 32 MiB (ext4), p2 40 MiB (FAT32 needs 65525
# clusters), p3 20 MiB (NTFS); 96 MiB disk
gpt_script() {
	cat <<'EOF'
label: gpt
unit: sectors
first-lba: 2048
start=2048, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="client-ext4"
start=67584, size=81920, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="client-fat32"
start=149504, size=40960, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="client-ntfs"
EOF
}
GPT_MIB=96
GPT_NPARTS=3
# "START SIZE" in bytes of p1, p2, p3
GPT_GEOM=("$((2048 * 512)) $((65536 * 512))" "$((67584 * 512)) $((81920 * 512))"
	  "$((149504 * 512)) $((40960 * 512))")

# random_file OUT MIB SEED: MIB MiB of random bytes, the same for a SEED
random_file() {
	python3 - "$1" "$2" "$3" <<'EOF'
import random, sys
r = random.Random(int(sys.argv[3]))
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2])):
        f.write(r.randbytes(1 << 20))
EOF
}

make_gpt_raw() {
	local out=$1 mib=$2 fill=${3:-}
	rm -f "$out"
	if [ "$fill" = random ]; then
		random_file "$out" "$mib" 20261203
	else
		truncate -s "${mib}M" "$out"
	fi
	gpt_script | sfdisk -q "$out" >"$out.sfdisk" 2>&1 ||
		fail "sfdisk $out: $(tail -2 "$out.sfdisk")"
}

part_geom() {
	local file=$1 n=$2 g
	g=$(sfdisk --json "$file" 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
ss = t.get("sectorsize", 512)
n = int(sys.argv[1])
for p in t["partitions"]:
    if p["node"].endswith(str(n)) and not p["node"][-len(str(n)) - 1].isdigit():
        print(p["start"] * ss, p["size"] * ss)
' "$n") || fail "sfdisk --json $file"
	[ -n "$g" ] || fail "$file has no partition $n"
	read -r P_START P_SIZE <<<"$g"
}

wait_part() {
	local dir=$1 n=$2 i
	for i in $(seq 50); do
		[ -e "$dir/p$n" ] && return 0
		sleep 0.1
	done
	fail "$dir/p$n does not exist (the chain directory holds: $(cd "$dir" && echo *))"
}

extract() {
	local file=$1 start=$2 size=$3 out=$4
	python3 - "$file" "$start" "$size" "$out" <<'EOF' || fail "extract $file"
import sys
f, start, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(f, "rb") as i, open(out, "wb") as o:
    i.seek(start)
    left = size
    while left:
        b = i.read(min(left, 1 << 20))
        if not b:
            sys.exit("%s ends before %d" % (f, start + size))
        o.write(b)
        left -= len(b)
EOF
}

loop_mount() {
	local file=$1 mnt=$2 opts=${3:-}
	mkdir -p "$mnt"
	_client_mounts+=("$mnt")
	mount -o "loop${opts:+,$opts}" "$file" "$mnt" 2>"$mnt.err" ||
		fail "mount -o loop${opts:+,$opts} $file: $(tr '\n' '|' <"$mnt.err")"
}

# loop_umount MNT: umount, then wait until its loop device is free (the
# autoclear detach ends asynchronously, and until then the device holds
# its backing file open)
loop_umount() {
	local mnt=$1 dev i
	dev=$(findmnt -n -o SOURCE --mountpoint "$mnt") ||
		fail "loop_umount: $mnt is not mounted"
	umount "$mnt" || fail "umount $mnt"
	case $dev in /dev/loop*) ;; *) return 0 ;; esac
	for i in $(seq 100); do
		[ -n "$(losetup -n -O BACK-FILE "$dev" 2>/dev/null)" ] || return 0
		sleep 0.1
	done
	fail "$dev is still bound 10 s after umount $mnt: $(losetup -n -O NAME,BACK-FILE "$dev")"
}

ntfs_mount() {
	local file=$1 mnt=$2 opts=${3:-} pid i
	mkdir -p "$mnt"
	_client_mounts+=("$mnt")
	ntfs-3g -o "no_detach${opts:+,$opts}" "$file" "$mnt" >"$mnt.err" 2>&1 &
	pid=$!
	_ntfs_pid[$mnt]=$pid
	for i in $(seq 100); do
		grep -qs " $mnt fuse" /proc/self/mounts && return 0
		kill -0 "$pid" 2>/dev/null ||
			fail "ntfs-3g $file exited: $(tr '\n' '|' <"$mnt.err")"
		sleep 0.1
	done
	fail "ntfs-3g $file: not mounted after 10 s"
}

ntfs_umount() {
	local mnt=$1 pid i rc
	pid=${_ntfs_pid[$mnt]}
	umount "$mnt" || fail "umount $mnt (ntfs-3g)"
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "ntfs-3g still runs 10 s after umount $mnt"
	wait "$pid" && rc=0 || rc=$?
	unset "_ntfs_pid[$mnt]"
	[ "$rc" -eq 0 ] || fail "ntfs-3g for $mnt exited with status $rc: $(tail -3 "$mnt.err" | tr '\n' '|')"
}
