#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-log-readers.sh: .layerfs.log and info, opened, read and closed in a loop
# by several readers at once for a few seconds.  A reply to the last READ
# of a file races with its RELEASE on another worker thread: the text the
# reply points to must outlive the reply (a sanitizer build of the daemon
# caught writev reading it after RELEASE freed it).  The daemon must stay
# up, every read must give the same text, and it must exit with 0.
# LAYERFS=build-asan/src/layerfs runs it against a sanitizer build.
. "$(dirname "$0")/lib.sh"
require_fuse
require qemu-img

SECS=${LOG_READERS_SECS:-4}
mkdir -p "$T/img"
truncate -s 64M "$T/img/a.raw"
truncate -s 16M "$T/img/b.raw"
# a chain left out (its parent is missing): a line in .layerfs.log
qemu-img create -q -f qcow2 -u -F raw -b gone.raw "$T/img/c.qcow2" 16M
layerfs_mount "$T/mnt" "$T/img"
for f in .layerfs.log a/info b/info; do
	[ -s "$T/mnt/$f" ] || fail "$f is empty"
done
ok "mounted; the log and info files have text"

python3 - "$T/mnt" "$SECS" <<'PY' || fail "a reader failed (see above)"
import os, sys, time
from multiprocessing import Process, Queue

mnt, secs = sys.argv[1], float(sys.argv[2])
files = [".layerfs.log", "a/info", "b/info"]

def slurp(path, bs):
    fd = os.open(path, os.O_RDONLY)
    try:
        out = b""
        while True:
            b = os.read(fd, bs)
            if not b:
                return out
            out += b
    finally:
        os.close(fd)

def reader(i, q):
    path = os.path.join(mnt, files[i % len(files)])
    want = slurp(path, 65536) if "info" in path else None
    n, end = 0, time.monotonic() + secs
    try:
        while time.monotonic() < end:
            got = slurp(path, (64, 4096, 65536)[n % 3])
            if want is not None and got != want:
                q.put("%s: text changed" % path)
                return
            if not got:
                q.put("%s: empty read" % path)
                return
            n += 1
    except OSError as e:
        q.put("%s: %s after %d rounds" % (path, e, n))
        return
    q.put(n)

q = Queue()
ps = [Process(target=reader, args=(i, q)) for i in range(6)]
for p in ps:
    p.start()
res = [q.get() for _ in ps]
for p in ps:
    p.join()
bad = [r for r in res if not isinstance(r, int)]
for r in bad:
    print("reader: " + r, file=sys.stderr)
print("rounds: %d" % sum(r for r in res if isinstance(r, int)))
sys.exit(1 if bad else 0)
PY
ok "6 readers opened, read and closed the files for ${SECS}s"
timeout 10 stat "$T/mnt/a/disk" >/dev/null || fail "the mount stopped answering"
layerfs_umount "$T/mnt"
ok "the daemon exited with 0"
finish
