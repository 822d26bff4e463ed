#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# layerfs mounted the /etc/fstab way, and what other users may do.
#
# The image directory: data-L0.vhd (dynamic VHD, qemu-img) under
# data-L1.qcow2 (an empty qemu-img overlay): data-L0 is a read-only chain,
# data-L1 the writable one under rw.
#
# mount(8) runs mount.fuse3 with PATH removed from the environment, so
# "mount -t fuse.layerfs" finds only a layerfs installed on the default
# PATH of /bin/sh.  Part 1 runs in a private mount namespace (unshare -m)
# in which /usr/local/sbin is a bind mount of a directory holding a link to
# the built layerfs: there, as on an installed system,
#   - mount -t fuse.layerfs IMAGEDIR MNT -o ro,allow_other, and
#   - an fstab line "IMAGEDIR MNT fuse.layerfs ro,allow_other,
#     default_permissions 0 0" (README's) in a
#     file given to mount --fstab (the real /etc/fstab is not touched),
#     then "mount MNT";
# mount the directory as fuse.layerfs: the disks read as qemu-img reads the
# images, user nobody can read a disk but not open it for writing (EROFS),
# umount(8) unmounts and the daemon ends.  The same line without
# allow_other: nobody cannot even look into the mount point.
# Part 2, in the test's namespace: mount.fuse3 -t layerfs with the built
# layerfs at the front of PATH; and an fstab line in the "PROGRAM#SOURCE"
# form of type fuse, with rw,allow_other,default_permissions: data-L1/disk
# is 0644 and data-L0/disk 0444, nobody reads both and can write neither
# (EACCES), root writes data-L1 through it, and qemu-img reads root's
# write from data-L1.qcow2 after umount.  The base image never changes.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img python3 mount umount mount.fuse3 setpriv unshare cmp
id nobody >/dev/null 2>&1 || fail "there is no user nobody"
NOBODY=(setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups)
# the system python (a python3 first on root's PATH may live where nobody
# cannot go)
[ -x /usr/bin/python3 ] || skip "/usr/bin/python3 is not installed"

# as_nobody FILE read|write|list: the errno name ("OK" on success) of
# user nobody opening FILE to read it all / to write one sector, or
# listing the directory FILE
as_nobody() {
	"${NOBODY[@]}" /usr/bin/python3 - "$1" "$2" <<'EOF'
import errno, hashlib, os, sys
path, how = sys.argv[1], sys.argv[2]
try:
    if how == "read":
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        print("OK", h.hexdigest())
    elif how == "list":
        os.listdir(path)
        print("OK")
    else:
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, b"x" * 512, 0)
        os.close(fd)
        print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
EOF
}

# umount_wait MNT PID: umount(8), and the daemon must end
umount_wait() {
	local mnt=$1 pid=$2 i
	umount "$mnt" || fail "umount $mnt"
	grep -qs " $mnt " /proc/self/mounts && fail "umount $mnt: still mounted"
	[ -n "$pid" ] || return 0
	for i in $(seq $((UMOUNT_TIMEOUT * 10))); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	fail "daemon $pid still runs ${UMOUNT_TIMEOUT} s after umount $mnt"
}

# mounted_by_mount MNT HOW: MNT is a fuse.layerfs mount; sets PID
mounted_by_mount() {
	local mnt=$1 how=$2
	track_mount "$mnt"
	grep -qs " $mnt fuse.layerfs " /proc/self/mounts ||
		fail "$how: $mnt is not a fuse.layerfs mount: $(grep " $mnt " /proc/self/mounts)"
	PID=$(daemon_pid "$mnt")
	[ -z "$PID" ] || track_pid "$PID"
}

# check_ro_clients MNT HOW: the disks read right, for root and nobody;
# nobody cannot write
check_ro_clients() {
	local mnt=$1 how=$2 r
	expect_sha "$mnt/data-L1/disk" "$SUM" "$how: data-L1/disk (root)"
	r=$(as_nobody "$mnt/data-L1/disk" read)
	[ "$r" = "OK $SUM" ] || fail "$how: nobody reads data-L1/disk: $r"
	r=$(as_nobody "$mnt/data-L0/disk" read)
	[ "$r" = "OK $SUM" ] || fail "$how: nobody reads data-L0/disk: $r"
	ok "$how: user nobody reads both disks (allow_other)"
	r=$(as_nobody "$mnt/data-L1/disk" write)
	[ "$r" = EROFS ] || fail "$how: nobody opening data-L1/disk to write: $r, expected EROFS"
	ok "$how: user nobody cannot write ($r)"
}

# ---- part 1: inside a private mount namespace ------------------------------
if [ "${1:-}" = inner ]; then
	TEST_NAME="${TEST_NAME}[mount-ns]"
	img=$2 SUM=$3
	mkdir -p "$T/sbin"
	[ -d /usr/local/sbin ] || fail "/usr/local/sbin does not exist"
	ln -s "$(readlink -f "$LAYERFS")" "$T/sbin/layerfs"
	mount --bind "$T/sbin" /usr/local/sbin || fail "bind mount on /usr/local/sbin"
	_extra_mounts+=(/usr/local/sbin)
	chmod 711 "$T"
	"${NOBODY[@]}" test -x "$T" ||
		fail "user nobody cannot reach $T: TMPDIR must be a directory everyone may search"

	m=$T/m-type
	mkdir -p "$m"
	mount -t fuse.layerfs "$img" "$m" -o ro,allow_other 2>"$m.err" ||
		fail "mount -t fuse.layerfs: $(tr '\n' '|' <"$m.err")"
	mounted_by_mount "$m" "mount -t fuse.layerfs"
	ok "mount -t fuse.layerfs IMAGEDIR MNT -o ro,allow_other: mounted"
	check_ro_clients "$m" "mount -t fuse.layerfs"
	umount_wait "$m" "$PID"
	ok "umount: unmounted, the daemon ended"

	m=$T/m-fstab
	mkdir -p "$m"
	printf '# a test fstab\n%s\t%s\tfuse.layerfs\tro,allow_other,default_permissions\t0 0\n' \
		"$img" "$m" >"$T/fstab"
	mount --fstab "$T/fstab" "$m" 2>"$m.err" ||
		fail "mount --fstab $T/fstab $m: $(tr '\n' '|' <"$m.err")"
	mounted_by_mount "$m" "fstab line"
	findmnt -n -o OPTIONS "$m" | grep -qE '(^|,)ro(,|$)' ||
		fail "fstab line: the mount is not ro: $(findmnt -n -o OPTIONS "$m")"
	ok "fstab line 'IMAGEDIR MNT fuse.layerfs ro,allow_other,default_permissions 0 0', mount MNT: mounted ro"
	check_ro_clients "$m" "fstab line"
	umount_wait "$m" "$PID"
	ok "fstab line: umount MNT ends the daemon"

	m=$T/m-private
	mkdir -p "$m"
	printf '%s\t%s\tfuse.layerfs\tro\t0 0\n' "$img" "$m" >"$T/fstab2"
	mount --fstab "$T/fstab2" "$m" 2>"$m.err" ||
		fail "mount --fstab (no allow_other): $(tr '\n' '|' <"$m.err")"
	mounted_by_mount "$m" "fstab line without allow_other"
	expect_sha "$m/data-L0/disk" "$SUM" "without allow_other: root reads data-L0/disk"
	r=$(as_nobody "$m" list)
	[ "$r" = EACCES ] || fail "without allow_other: nobody lists the mount: $r, expected EACCES"
	r=$(as_nobody "$m/data-L0/disk" read)
	[ "$r" = EACCES ] || fail "without allow_other: nobody reads a disk: $r, expected EACCES"
	ok "without allow_other: user nobody cannot list the mount nor read a disk (EACCES)"
	umount_wait "$m" "$PID"
	umount /usr/local/sbin || fail "umount /usr/local/sbin (the bind mount)"
	finish
fi

img=$T/img
mkdir -p "$img"
pattern "$T/src.raw" 0 $((16 << 20)) fstab
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on \
	"$T/src.raw" "$img/data-L0.vhd" || fail "qemu-img convert -O vpc"
(cd "$img" && qemu-img create -q -f qcow2 -b data-L0.vhd -F vpc data-L1.qcow2) ||
	fail "qemu-img create data-L1.qcow2"
SUM=$(sha_of "$T/src.raw")
base_sum=$(sha_of "$img/data-L0.vhd")

unshare -m --propagation private bash "$0" inner "$img" "$SUM" ||
	fail "part 1 (in a private mount namespace) failed"
ok "part 1: mount -t fuse.layerfs and the fstab line, in a private namespace"

# ---- part 2: in the test's own namespace ------------------------------------
chmod 711 "$T"
"${NOBODY[@]}" test -x "$T" ||
	fail "user nobody cannot reach $T: TMPDIR must be a directory everyone may search"
mkdir -p "$T/bin"
ln -s "$(readlink -f "$LAYERFS")" "$T/bin/layerfs"

m=$T/m-helper
mkdir -p "$m"
PATH=$T/bin:$PATH mount.fuse3 "$img" "$m" -t layerfs -o ro,allow_other \
	2>"$m.err" || fail "mount.fuse3 -t layerfs: $(tr '\n' '|' <"$m.err")"
mounted_by_mount "$m" "mount.fuse3"
check_ro_clients "$m" "mount.fuse3 -t layerfs -o ro,allow_other"
umount_wait "$m" "$PID"
ok "mount.fuse3 mount: umount ends the daemon"

m=$T/m-rw
mkdir -p "$m"
printf '%s#%s\t%s\tfuse\trw,allow_other,default_permissions\t0 0\n' \
	"$T/bin/layerfs" "$img" "$m" >"$T/fstab"
mount --fstab "$T/fstab" "$m" 2>"$m.err" ||
	fail "mount --fstab (PROGRAM#SOURCE, fuse): $(tr '\n' '|' <"$m.err")"
mounted_by_mount "$m" "fstab PROGRAM#SOURCE line"
[ "$(stat -c %a "$m/data-L1/disk")" = 644 ] ||
	fail "rw fstab mount: data-L1/disk has mode $(stat -c %a "$m/data-L1/disk"), not 644"
[ "$(stat -c %a "$m/data-L0/disk")" = 444 ] ||
	fail "rw fstab mount: data-L0/disk has mode $(stat -c %a "$m/data-L0/disk"), not 444"
ok "fstab 'layerfs#IMAGEDIR MNT fuse rw,...': data-L1/disk 0644, data-L0/disk 0444"
for c in data-L1 data-L0; do
	r=$(as_nobody "$m/$c/disk" read)
	[ "$r" = "OK $SUM" ] || fail "rw fstab mount: nobody reads $c/disk: $r"
	r=$(as_nobody "$m/$c/disk" write)
	[ "$r" = EACCES ] ||
		fail "rw fstab mount: nobody opening $c/disk to write: $r, expected EACCES (default_permissions)"
done
ok "default_permissions: nobody reads both disks, writes neither (EACCES)"
# root may write the writable chain
cp "$T/src.raw" "$T/model.raw"
pattern "$m/data-L1/disk" $((5 << 20)) 70000 rootwrite
pattern "$T/model.raw" $((5 << 20)) 70000 rootwrite
r=$(as_nobody "$m/data-L1/disk" read)
[ "$r" = "OK $(sha_of "$T/model.raw")" ] || fail "nobody does not read root's write: $r"
ok "root writes data-L1/disk; nobody reads the new content"
umount_wait "$m" "$PID"
qemu-img compare -q -f raw -F qcow2 "$T/model.raw" "$img/data-L1.qcow2" ||
	fail "qemu-img: data-L1.qcow2 does not hold root's write"
ok "qemu-img compare: data-L1.qcow2 = what root wrote through the fstab mount"
# allow_other alone: layerfs adds default_permissions itself (it checks no
# permissions of its own), so nobody still cannot write a writable disk.
m=$T/m-rw-noperm
mkdir -p "$m"
PATH=$T/bin:$PATH mount.fuse3 "$img" "$m" -t layerfs -o rw,allow_other \
	2>"$m.err" || fail "mount.fuse3 -o rw,allow_other: $(tr '\n' '|' <"$m.err")"
mounted_by_mount "$m" "mount.fuse3 -o rw,allow_other"
grep " $m " /proc/self/mountinfo | grep -q default_permissions ||
	fail "rw,allow_other mount: default_permissions not in the mount options"
r=$(as_nobody "$m/data-L1/disk" write)
[ "$r" = EACCES ] ||
	fail "rw,allow_other (no default_permissions given): nobody opening data-L1/disk to write: $r, expected EACCES"
r=$(as_nobody "$m/data-L1/disk" read)
case $r in "OK "*) ;; *) fail "rw,allow_other: nobody cannot read data-L1/disk: $r" ;; esac
umount_wait "$m" "$PID"
ok "-o rw,allow_other without default_permissions: still mounted with it; nobody reads, cannot write (EACCES)"

[ "$(sha_of "$img/data-L0.vhd")" = "$base_sum" ] || fail "data-L0.vhd changed"
ok "data-L0.vhd unchanged"
finish
