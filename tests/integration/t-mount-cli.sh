#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The daemon's command line and life cycle: --help and --version exit 0;
# bad usage (a MOUNTPOINT that is a regular file too) exits 1 with a
# one-line message; -f in the background ends
# with status 0 after fusermount3 -u, and after SIGTERM (which unmounts);
# the daemonized mode (no -f) returns once mounted and ends after
# fusermount3 -u; mount.fuse3 -t layerfs, mount(8) and umount(8) work;
# O_DIRECT reads work; every kind of write fails with EROFS, also with
# -o rw, where a raw image stays read-only.
. "$(dirname "$0")/lib.sh"
require_fuse
require python3 dd cmp mount umount mount.fuse3

img=$T/img
mkdir -p "$img"
pattern "$img/plain.img" 0 $((2 * 1024 * 1024 + 3 * 512)) plain
sum=$(sha_of "$img/plain.img")
snapshot_sums "$img"

# run_cli NAME ARGS...: run layerfs, keep stdout, stderr and the status
run_cli() {
	local name=$1
	shift
	"$LAYERFS" "$@" >"$T/$name.out" 2>"$T/$name.errout" && rc=0 || rc=$?
}

## --help, --version
run_cli help --help
[ "$rc" -eq 0 ] || fail "--help exited $rc"
grep -q 'IMAGEDIR' "$T/help.out" || fail "--help does not show the usage"
for o in strict_layers allow_outside ignore_parent_id max_depth; do
	grep -q -- "$o" "$T/help.out" || fail "--help does not mention -o $o"
done
ok "--help: exit 0, usage and every -o option"
run_cli hflag -h
[ "$rc" -eq 0 ] || fail "-h exited $rc"
run_cli version --version
[ "$rc" -eq 0 ] || fail "--version exited $rc"
grep -Eq 'layerfs [0-9]+\.[0-9]+' "$T/version.out" ||
	fail "--version printed: $(head -2 "$T/version.out")"
ok "--version: exit 0, $(head -1 "$T/version.out")"

## Bad usage: status 1 and one line on stderr
mkdir -p "$T/m0"
bad_usage() {
	local what=$1
	shift
	run_cli bad "$@"
	[ "$rc" -eq 1 ] || fail "$what: exit $rc, expected 1"
	[ "$(grep -c . "$T/bad.errout")" -eq 1 ] ||
		fail "$what: stderr is not one line: $(tr '\n' '|' <"$T/bad.errout")"
	grep -qs " $T/m0 " /proc/self/mounts && fail "$what: mounted anyway"
	ok "$what: exit 1, $(cat "$T/bad.errout")"
}
bad_usage "no arguments"
bad_usage "no mount point" "$img"
bad_usage "three arguments" "$img" "$T/m0" extra
bad_usage "unknown option" --no-such-option "$img" "$T/m0"
bad_usage "max_depth=0" -o max_depth=0 "$img" "$T/m0"
bad_usage "missing IMAGEDIR" "$T/no-such-dir" "$T/m0"
bad_usage "missing mount point" "$img" "$T/no-such-mnt"
# a regular file as MOUNTPOINT: the kernel would mount over it, leaving a
# file that answers EIO; refused before anything is mounted
printf 'keep' >"$T/mfile"
run_cli bad "$img" "$T/mfile"
if grep -qs " $T/mfile " /proc/self/mounts; then
	track_mount "$T/mfile"
	pid=$(daemon_pid "$T/mfile")
	[ -z "$pid" ] || track_pid "$pid"
	fail "mount point is a regular file: mounted over it (exit $rc)"
fi
[ "$rc" -eq 1 ] || fail "mount point is a regular file: exit $rc, expected 1"
[ "$(grep -c . "$T/bad.errout")" -eq 1 ] &&
	grep -q "'$T/mfile'.*Not a directory" "$T/bad.errout" ||
	fail "mount point is a file: unclear message: $(tr '\n' '|' <"$T/bad.errout")"
[ "$(cat "$T/mfile")" = keep ] || fail "$T/mfile changed"
ok "mount point is a regular file: exit 1, not mounted, $(cat "$T/bad.errout")"

## -f in the background, fusermount3 -u: status 0 (layerfs_umount checks)
layerfs_mount "$T/m1" "$img"
grep -q " $T/m1 fuse.layerfs " /proc/self/mounts ||
	fail "mount type is not fuse.layerfs: $(grep " $T/m1 " /proc/self/mounts)"
expect_sha "$T/m1/plain/disk" "$sum" "-f mount"
layerfs_umount "$T/m1"
ok "-f, fusermount3 -u: daemon exited 0"

## A relative IMAGEDIR: the info file names layers by absolute paths, not
## paths relative to the mount's working directory
cd "$T"
layerfs_mount "$T/m-rel" img
cd - >/dev/null
grep -q "$T/img/plain" "$T/m-rel/plain/info" ||
	fail "relative IMAGEDIR: info does not name $T/img/plain: $(cat "$T/m-rel/plain/info")"
layerfs_umount "$T/m-rel"
ok "relative IMAGEDIR: info names the layers by absolute paths"

## SIGTERM unmounts and ends the daemon with status 0.  (Not SIGINT: bash
## starts background jobs with SIGINT ignored, and libfuse keeps it so.)
layerfs_mount "$T/m-term" "$img"
pid=${_mount_pid[$T/m-term]}
kill -TERM "$pid"
for i in $(seq 100); do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$pid" 2>/dev/null && fail "SIGTERM: daemon still runs after 10s"
wait "$pid" && rc=0 || rc=$?
unset "_mount_pid[$T/m-term]"
[ "$rc" -eq 0 ] || fail "SIGTERM: daemon exited $rc"
grep -qs " $T/m-term " /proc/self/mounts && fail "SIGTERM: still mounted"
ok "SIGTERM: unmounted, daemon exited 0"

wait_gone() {
	local pid=$1 i
	for i in $(seq $((UMOUNT_TIMEOUT * 10))); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	fail "daemon $pid still runs ${UMOUNT_TIMEOUT}s after unmount"
}

## Daemonized: returns once mounted
mkdir -p "$T/m2"
"$LAYERFS" "$img" "$T/m2" 2>"$T/m2.err" || fail "daemonized layerfs exited $?"
track_mount "$T/m2"
grep -qs " $T/m2 fuse" /proc/self/mounts || fail "not mounted when layerfs returned"
pid=$(daemon_pid "$T/m2")
[ -n "$pid" ] || fail "no daemon process for $T/m2"
track_pid "$pid"
expect_sha "$T/m2/plain/disk" "$sum" "daemonized mount"
fusermount3 -u "$T/m2" || fail "fusermount3 -u (daemonized)"
wait_gone "$pid"
ok "daemonized: mounted on return, gone after fusermount3 -u"

## mount.fuse3 and mount(8).  mount(8) runs helpers with a fixed PATH, so
## "mount -t fuse.layerfs" would need layerfs installed: the same path is
## taken by calling mount.fuse3 -t layerfs with the built layerfs on PATH,
## and mount(8) is given the binary's path in the "prog#source" form.
mkdir -p "$T/bin"
ln -s "$(readlink -f "$LAYERFS")" "$T/bin/layerfs"
i=0
for how in mount.fuse3 mount8; do
	i=$((i + 1))
	mkdir -p "$T/m3-$i"
	case $how in
	mount.fuse3)
		PATH=$T/bin:$PATH mount.fuse3 "$img" "$T/m3-$i" -t layerfs \
			-o ro,allow_other 2>"$T/m3-$i.err" ;;
	mount8)
		mount -t fuse "$T/bin/layerfs#$img" "$T/m3-$i" \
			-o ro,allow_other 2>"$T/m3-$i.err" ;;
	esac || fail "$how: $(cat "$T/m3-$i.err")"
	track_mount "$T/m3-$i"
	grep -qs " $T/m3-$i fuse.layerfs " /proc/self/mounts ||
		fail "$how: not mounted as fuse.layerfs"
	pid=$(daemon_pid "$T/m3-$i")
	[ -n "$pid" ] && track_pid "$pid"
	expect_sha "$T/m3-$i/plain/disk" "$sum" "$how"
	umount "$T/m3-$i" || fail "umount $T/m3-$i"
	[ -z "$pid" ] || wait_gone "$pid"
	grep -qs " $T/m3-$i " /proc/self/mounts && fail "umount: still mounted"
	ok "$how -o ro,allow_other, then umount(8)"
done

## O_DIRECT reads and refused writes, on a -o rw mount: a raw image is
## never a writable top (only differencing/dynamic/qcow2 images are)
layerfs_mount "$T/m4" "$img" -o rw
m=$T/m4
dd if="$m/plain/disk" iflag=direct bs=1M status=none >"$T/direct.out" ||
	fail "dd iflag=direct failed"
expect_same "$T/direct.out" "$img/plain.img" "O_DIRECT read (dd iflag=direct bs=1M)"
python3 - "$m/plain/disk" <<'EOF' || fail "odd O_DIRECT read"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
n = os.preadv(fd, [buf], 4096)
ref = open(sys.argv[1], "rb").read()[4096:4096 + n]
sys.exit(0 if n > 0 and buf[:n] == ref else "O_DIRECT preadv at 4096: %d bytes" % n)
EOF
ok "O_DIRECT preadv at an aligned offset"

out=$(dd if=/dev/zero of="$m/plain/disk" bs=512 count=1 conv=notrunc 2>&1) &&
	fail "dd could write to the disk"
grep -q 'Read-only file system' <<<"$out" || fail "dd write: $out"
ok "dd write: Read-only file system"
python3 - "$m" <<'EOF' || fail "a write was not refused with EROFS"
import errno, os, sys
m = sys.argv[1]
disk = os.path.join(m, "plain", "disk")
tries = {
    "open O_WRONLY": lambda: os.open(disk, os.O_WRONLY),
    "open O_RDWR": lambda: os.open(disk, os.O_RDWR),
    "open O_TRUNC": lambda: os.open(disk, os.O_WRONLY | os.O_TRUNC),
    "truncate": lambda: os.truncate(disk, 0),
    "create a file": lambda: os.open(os.path.join(m, "new"), os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": lambda: os.mkdir(os.path.join(m, "newdir")),
    "unlink": lambda: os.unlink(disk),
    "rename": lambda: os.rename(disk, os.path.join(m, "plain", "x")),
    "chmod": lambda: os.chmod(disk, 0o600),
    "write the log": lambda: os.open(os.path.join(m, ".layerfs.log"), os.O_WRONLY),
}
bad = []
for what, fn in tries.items():
    try:
        fn()
        bad.append(what + ": succeeded")
    except OSError as e:
        if e.errno != errno.EROFS:
            bad.append("%s: %s" % (what, os.strerror(e.errno)))
sys.exit("; ".join(bad) if bad else 0)
EOF
ok "open for writing, truncate, create, mkdir, unlink, rename, chmod: EROFS"
expect_sha "$m/plain/disk" "$sum" "disk unchanged after the write attempts"
layerfs_umount "$m"

check_sums
finish
