# SPDX-License-Identifier: LGPL-2.1-or-later
# lib.sh: sourced by every tests/integration/t-*.sh.
#
# Gives each script a private directory $T, a trap that unmounts whatever
# it mounted (fusermount3 -u) and waits for the daemons, and helpers:
#
#   require TOOL...          skip (exit 77) if a tool is missing
#   require_fuse             skip without /dev/fuse, fusermount3, $LAYERFS
#   require_vectors          skip without $LAYERFS_VECTORS
#   require_script NAME      a generator under tests/tools/ (fails if absent)
#   layerfs_mount MNT DIR [OPTION...]   "$LAYERFS -f OPTION... DIR MNT" in
#                            the background; waits until MNT is mounted;
#                            stderr to $MNT.err (and $T/layerfs.err)
#   layerfs_umount MNT       fusermount3 -u; the daemon must exit with 0
#   daemon_pid MNT           pid of the layerfs serving MNT (not our child)
#   sha_of FILE              sha256 (hex) of FILE's content
#   sparse_sha_of FILE       the same, reading only what SEEK_DATA reports
#   expect_sha FILE SHA [WHAT] / expect_same A B [WHAT]
#   expect_error ERRFILE NAME [ERE] / expect_no_error ERRFILE NAME
#   snapshot_sums DIR... / check_sums   the images must stay unchanged
#   ok MSG / fail MSG / skip MSG / finish
#
# Under CI=true a missing requirement fails the test instead of skipping
# it: CI installs everything the tests need.  LAYERFS_KEEP_FAILED=1 keeps
# the private directory of a failed test for a look.
set -euo pipefail
shopt -s nullglob

TEST_NAME=$(basename "$0" .sh)
: "${LAYERFS:?LAYERFS must name the built layerfs executable}"
SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TOOLS=$SRCDIR/tests/tools
LAYERFS_VECTORS=${LAYERFS_VECTORS:-${LAYERFS_VECTORS_DEFAULT:-$SRCDIR/../shared/vectors}}
MOUNT_TIMEOUT=${MOUNT_TIMEOUT:-30}
UMOUNT_TIMEOUT=${UMOUNT_TIMEOUT:-60}
export LC_ALL=C PYTHONDONTWRITEBYTECODE=1

T=$(mktemp -d "${TMPDIR:-/tmp}/layerfs-$TEST_NAME.XXXXXX")
declare -A _mount_pid=()	# MNT -> daemon pid (-f mounts we started)
_extra_mounts=()		# mounted by other means (mount(8), no -f)
_extra_pids=()			# other processes we started
_checks=0
_finished=0

_log() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }

_cleanup() {
	local rc=$? m p i
	set +e
	for m in "${!_mount_pid[@]}" "${_extra_mounts[@]}"; do
		if timeout 10 mountpoint -q "$m" 2>/dev/null ||
		   grep -qs " $m fuse" /proc/self/mounts; then
			fusermount3 -u "$m" 2>/dev/null ||
				fusermount3 -u -z "$m" 2>/dev/null ||
				umount -l "$m" 2>/dev/null
		fi
	done
	for p in "${_mount_pid[@]}" "${_extra_pids[@]}"; do
		for i in $(seq 50); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
		sleep 0.2
		kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ "$_finished" -eq 0 ]; then
		_log "FAIL (exit $rc, after $_checks checks)${LAYERFS_KEEP_FAILED:+; files kept in $T}"
		for m in "$T"/*.err; do
			[ -s "$m" ] && [ ! -L "$m" ] || continue
			echo "--- ${m#"$T"/} (last 20 lines)" >&2
			tail -n 20 "$m" >&2
		done
	fi
	if [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] ||
	   [ -z "${LAYERFS_KEEP_FAILED:-}" ]; then
		rm -rf "$T"
	fi
	exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
	_log "FAIL: $*"
	exit 1
}

ok() {
	_checks=$((_checks + 1))
	printf '%s: ok %d - %s\n' "$TEST_NAME" "$_checks" "$*"
}

skip() {
	if [ "${CI:-}" = true ]; then
		_log "FAIL: $* (a missing requirement is a failure under CI=true)"
		exit 1
	fi
	_log "SKIP: $*"
	exit 77
}

finish() {
	_finished=1
	printf '%s: PASS (%d checks)\n' "$TEST_NAME" "$_checks"
	exit 0
}

require() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || skip "$t is not installed"
	done
}

require_fuse() {
	[ -c /dev/fuse ] || skip "/dev/fuse is missing"
	[ -r /dev/fuse ] && [ -w /dev/fuse ] || skip "/dev/fuse is not usable"
	require fusermount3 mountpoint timeout python3
	[ -x "$LAYERFS" ] || fail "$LAYERFS is not an executable"
}

require_vectors() {
	[ -f "$LAYERFS_VECTORS/INDEX.md" ] ||
		skip "no test vectors in $LAYERFS_VECTORS"
}

# A generator that belongs to this project: its absence is a bug, not a
# missing requirement.
require_script() {
	[ -f "$TOOLS/$1" ] || fail "tests/tools/$1 is missing"
}

# layerfs_mount MNT IMAGEDIR [OPTION...]
layerfs_mount() {
	local mnt=$1 dir=$2 pid i
	shift 2
	mkdir -p "$mnt"
	mnt=$(cd "$mnt" && pwd -P)
	"$LAYERFS" -f "$@" "$dir" "$mnt" 2>"$mnt.err" &
	pid=$!
	_mount_pid[$mnt]=$pid
	ln -sfn "$mnt.err" "$T/layerfs.err"
	# shellcheck disable=SC2034  # for the scripts: the last mount's stderr
	MOUNT_ERR=$mnt.err
	for i in $(seq $((MOUNT_TIMEOUT * 10))); do
		if grep -qs " $mnt fuse" /proc/self/mounts; then
			# mounted; make sure it answers
			timeout 10 stat "$mnt/." >/dev/null ||
				fail "$mnt is mounted but does not answer"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid" && i=0 || i=$?
			unset "_mount_pid[$mnt]"
			fail "layerfs exited ($i) before mounting $mnt:" \
				"$(tr '\n' '|' <"$mnt.err")"
		fi
		sleep 0.1
	done
	fail "$mnt not mounted after ${MOUNT_TIMEOUT}s"
}

# layerfs_umount MNT: unmount, and the daemon must exit with status 0
layerfs_umount() {
	local mnt pid rc i
	mnt=$(cd "$1" && pwd -P)
	pid=${_mount_pid[$mnt]:-}
	[ -n "$pid" ] || fail "layerfs_umount: $mnt was not mounted here"
	fusermount3 -u "$mnt" || fail "fusermount3 -u $mnt failed"
	# The daemon writes its dirty metadata back and fdatasyncs at exit: on
	# a busy disk that takes seconds, so allow UMOUNT_TIMEOUT (60 s).
	for i in $(seq $((UMOUNT_TIMEOUT * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null &&
		fail "daemon $pid still runs ${UMOUNT_TIMEOUT}s after unmount"
	wait "$pid" && rc=0 || rc=$?
	unset "_mount_pid[$mnt]"
	[ "$rc" -eq 0 ] || fail "daemon for $mnt exited with status $rc"
}

# Processes started by a test that the trap must reap
track_pid() { _extra_pids+=("$1"); }
track_mount() { _extra_mounts+=("$1"); }

# daemon_pid MNT: the pid of the layerfs daemon serving MNT when it is not
# a child of ours (mount(8) or a daemonized layerfs started it), found by
# its executable and command line in /proc
daemon_pid() {
	python3 - "$1" "$(readlink -f "$LAYERFS")" <<'EOF'
import os, sys
mnt, exe = sys.argv[1], sys.argv[2]
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        args = open("/proc/%s/cmdline" % p, "rb").read().split(b"\0")
        me = os.readlink("/proc/%s/exe" % p)
    except OSError:
        continue
    if me == exe and mnt.encode() in args:
        print(p)
EOF
}

# Hashing: python's hashlib is several times faster than sha256sum here.
sha_of() {
	python3 - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb", buffering=0) as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b)
print(h.hexdigest())
EOF
}

# The sha256 of FILE, reading only the runs SEEK_DATA/SEEK_HOLE call data
# and hashing zeros for the holes.  For huge, mostly empty disks.  If the
# daemon's lseek lies, the sum is wrong, which is a failure too.
sparse_sha_of() {
	python3 - "$1" <<'EOF'
import errno, hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
h = hashlib.sha256()
zero = bytes(16 << 20)
def zeros(n):
    while n:
        k = min(n, len(zero))
        h.update(zero if k == len(zero) else zero[:k])
        n -= k
off = 0
while off < size:
    try:
        data = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        data = size
    zeros(data - off)
    if data >= size:
        break
    hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
    pos = data
    while pos < hole:
        b = os.pread(fd, min(hole - pos, 1 << 20), pos)
        if not b:
            sys.exit("short read at %d" % pos)
        h.update(b)
        pos += len(b)
    off = hole
print(h.hexdigest())
EOF
}

expect_sha() {
	local file=$1 want=$2 what=${3:-$1} got
	got=$(sha_of "$file") || fail "$what: cannot read $file"
	[ "$got" = "$want" ] || fail "$what: sha256 $got, expected $want"
	ok "$what: sha256 matches"
}

# expect_same A B [WHAT]: same size and content
expect_same() {
	local a=$1 b=$2 what=${3:-"$1 = $2"} sa sb
	sa=$(stat -L -c %s "$a") || fail "$what: cannot stat $a"
	sb=$(stat -L -c %s "$b") || fail "$what: cannot stat $b"
	[ "$sa" = "$sb" ] || fail "$what: size $sa, expected $sb"
	cmp -s "$a" "$b" || fail "$what: content differs ($(cmp "$a" "$b" 2>&1 | head -1))"
	ok "$what"
}

expect_size() {
	local file=$1 want=$2 what=${3:-$1} got
	got=$(stat -L -c %s "$file") || fail "$what: cannot stat $file"
	[ "$got" = "$want" ] || fail "$what: size $got, expected $want"
}

# expect_error LOGFILE NAME [ERE]: some line of LOGFILE is an error naming
# NAME (a file name or path, as a whole word: "crc.simg" is not named by
# ".../invalid_crc.simg") and matching ERE, case-insensitive.  Works on
# the daemon's stderr ("layerfs: error: ...") and .layerfs.log ("error: ...").
expect_error() { _expect_level error "$@"; }
expect_warning() { _expect_level warning "$@"; }

# Lines of LOGFILE at LEVEL that name NAME
_lines_naming() {
	local level=$1 log=$2 name=$3 re
	re=$(printf '%s' "$name" | sed 's/[][\\.*^$+?(){}|/]/\\&/g')
	grep -E -- "(^|[/\\ \"'(])$re([: \"'),]|\$)" "$log" |
		grep -E "(^|: )$level: " || true
}

_expect_level() {
	local level=$1 log=$2 name=$3 re=${4:-} lines
	[ -f "$log" ] || fail "no log $log"
	lines=$(_lines_naming "$level" "$log" "$name")
	if [ -n "$re" ]; then
		lines=$(printf '%s\n' "$lines" | grep -Ei -- "$re" || true)
	fi
	[ -n "$lines" ] || fail "no $level line naming $name${re:+ matching /$re/} in ${log##*/}:" \
		"$(tr '\n' '|' <"$log" | cut -c1-2000)"
	ok "${log##*/}: $level names $name${re:+ (/$re/)}"
}

# expect_no_error LOGFILE NAME: no error line is about NAME (has it as its
# subject, "error: [driver: ]PATH/NAME: ..."; a line about another image
# that mentions NAME as its parent does not count)
expect_no_error() {
	local log=$1 name=$2 re lines
	re=$(printf '%s' "$name" | sed 's/[][\\.*^$+?(){}|/]/\\&/g')
	lines=$(grep -E -- "(^|: )error: ([a-z0-9]+: )?([^ ]*/)?$re: " "$log" || true)
	[ -z "$lines" ] || fail "unexpected error about $name in ${log##*/}: $(printf '%s' "$lines" | head -3 | tr '\n' '|')"
}

# expect_dirs MNT NAME...: the mount root holds exactly these chain
# directories (besides .layerfs.log)
expect_dirs() {
	local mnt=$1 got want
	shift
	got=$(cd "$mnt" && for f in * .[!.]*; do
		[ "$f" = .layerfs.log ] || echo "$f"
	done | sort | tr '\n' ' ')
	want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
	[ "$got" = "$want" ] || fail "mount holds [${got% }], expected [${want% }]"
	[ -f "$mnt/.layerfs.log" ] || fail "$mnt/.layerfs.log is missing"
	ok "mount holds exactly [${want% }]"
}

# snapshot_sums DIR...: remember the sha256 of every file under DIR
snapshot_sums() {
	_sum_dirs=("$@")
	_sums "$@" >"$T/sums.before"
}

# check_sums: every file is still there, with the same content
check_sums() {
	_sums "${_sum_dirs[@]}" >"$T/sums.after"
	diff -u "$T/sums.before" "$T/sums.after" >&2 ||
		fail "image files changed while mounted"
	ok "$(wc -l <"$T/sums.before") image files unchanged"
}

_sums() {
	python3 - "$@" <<'PY'
import hashlib, os, sys
out = []
for top in sys.argv[1:]:
    for root, dirs, files in os.walk(top):
        for n in files:
            p = os.path.join(root, n)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            h = hashlib.sha256()
            with open(p, "rb", buffering=0) as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            out.append("%s  %s" % (h.hexdigest(), p))
print("\n".join(sorted(out, key=lambda l: l[66:])))
PY
}

# Write N bytes of deterministic pseudo-random data (seeded) to FILE
# at OFFSET (default 0), without truncating it.
pattern() {
	local file=$1 off=$2 len=$3 seed=${4:-1}
	python3 - "$file" "$off" "$len" "$seed" <<'EOF'
import os, random, sys
path, off, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = random.Random(seed)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
os.pwrite(fd, r.randbytes(n), off)
os.close(fd)
EOF
}
