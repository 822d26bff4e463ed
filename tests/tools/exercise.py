#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""exercise.py: a model-based random write exerciser for layerfs (fsx-like).

Builds a chain of DEPTH layers (VHD, VHDX or QCOW2, 512- or 4096-byte
sectors) in a temporary image directory with layerimg, fills the lower
layers with random data through rw mounts (each layer is the writable top
while it is filled), then mounts the chain with `layerfs -f -o rw` and runs
OPS random operations on MNT/<top>/disk against an in-memory model:

  write     pwrite of random bytes at aligned or unaligned offsets/lengths
  zero      fallocate(FALLOC_FL_ZERO_RANGE)
  punch     fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
  read      pread of a random range, compared with the model
  fsync     everything written so far is durable
  truncate  ftruncate to another size must fail with EPERM (the model is
            unchanged); to the same size it must succeed
  kill      SIGKILL of the daemon, fusermount3 -u -z, format checker,
            oracle, remount: whatever an fsync acknowledged reads back;
            a 512-byte piece written after the last fsync may read as
            any value it held since that fsync (tracked per piece)
  remount   clean unmount (the daemon must exit 0), checker, oracle,
            remount: everything reads back exactly

After each kill/remount and at the end, `layerimg check` must exit 0 or 3
(leaks only) on the top, and the whole disk is compared with an
independent reader (qemu-img convert for qcow2, 7zz for VHD/VHDX).
On any mismatch it prints the seed, the configuration and the last
operations, writes the whole operation log into --log (default:
WORKDIR/ops.log, WORKDIR kept) and exits 1.  Exit 0: no finding.
The last line on stdout is a summary: "exercise: ok ... ops=N kills=K".

The daemon's sanitizer reports: pass --asan-log PREFIX (the log_path of
ASAN_OPTIONS/UBSAN_OPTIONS); any PREFIX.* file appearing is a finding,
as is a non-zero exit of the daemon at a clean unmount.
"""
import argparse
import ctypes
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PIECE = 512  # granularity of the "either old or new" model after a kill
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
EXT = {"vhd": "vhd", "vhdx": "vhdx", "qcow2": "qcow2"}

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long,
                           ctypes.c_long]


class Finding(Exception):
    pass


def fallocate(fd, mode, off, ln):
    if libc.fallocate(fd, mode, off, ln) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Exerciser:
    def __init__(self, a):
        self.a = a
        self.r = random.Random(a.seed)
        self.ops = []          # the operation log
        self.nops = self.nkills = self.nremounts = 0
        self.size = a.size_mib << 20
        self.model = bytearray(self.size)
        self.dirty = {}        # piece -> candidate values since the last fsync
        self.work = a.workdir or tempfile.mkdtemp(prefix="layerfs-exercise.")
        os.makedirs(self.work, exist_ok=True)
        self.img = os.path.join(self.work, "img")
        self.mnt = os.path.join(self.work, "mnt")
        os.makedirs(self.img, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = None
        self.fd = -1
        self.nmount = 0
        self.top = None

    # -- logging and failure -------------------------------------------
    def log(self, s):
        self.ops.append(s)

    def fail(self, why):
        raise Finding(why)

    def run(self, argv, ok=(0,), **kw):
        p = subprocess.run(argv, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, **kw)
        if p.returncode not in ok:
            self.fail("%s exited %d: %s" % (" ".join(argv), p.returncode,
                      p.stderr.decode(errors="replace")[-800:]))
        return p

    # -- mounting --------------------------------------------------------
    def mounted(self):
        try:
            with open("/proc/self/mounts") as f:
                return any(" %s fuse" % self.mnt in ln for ln in f)
        except OSError:
            return False

    def asan_check(self, when):
        if self.a.asan_log:
            logs = glob.glob(self.a.asan_log + ".*")
            if logs:
                head = open(logs[0], errors="replace").read()[:1500]
                self.fail("sanitizer report %s: %s (%s)" % (when, logs[0],
                                                           head))

    def mount(self):
        self.nmount += 1
        err = open(os.path.join(self.work, "layerfs.%d.err" % self.nmount),
                   "wb")
        # ex-L1 is a standalone base: written in place only when named
        self.proc = subprocess.Popen([self.a.layerfs, "-f", "-o",
                                      "rw,rw_base=ex-L1",
                                      self.img, self.mnt], stderr=err,
                                     stdin=subprocess.DEVNULL)
        err.close()
        for _ in range(300):
            if self.mounted():
                os.stat(self.mnt)
                return
            if self.proc.poll() is not None:
                self.fail("layerfs exited %d before mounting (see %s)" %
                          (self.proc.returncode, err.name))
            time.sleep(0.05)
        self.fail("not mounted after 15 s")

    def disk(self, chain):
        return os.path.join(self.mnt, chain, "disk")

    def umount(self):
        """Clean unmount: the daemon must exit with status 0."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.run(["fusermount3", "-u", self.mnt])
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.fail("daemon still runs 60 s after the unmount")
        self.proc = None
        self.asan_check("at a clean unmount")
        if rc != 0:
            self.fail("daemon exited %d at a clean unmount (see %s)" %
                      (rc, os.path.join(self.work,
                                        "layerfs.%d.err" % self.nmount)))

    def kill(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", self.mnt],
                       stderr=subprocess.DEVNULL)
        for _ in range(100):
            if not self.mounted():
                break
            time.sleep(0.05)
        self.asan_check("before a SIGKILL")

    def cleanup(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", self.mnt],
                           stderr=subprocess.DEVNULL)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- the chain -------------------------------------------------------
    def layer(self, i):
        return "ex-L%d.%s" % (i, EXT[self.a.format])

    def create(self, i):
        a = self.a
        argv = [a.layerimg, "create", "-q"]
        if i == 1:
            argv += ["-f", a.format]
            if a.sector == 4096:
                argv += ["--sector-size=4096"]
        else:
            argv += ["-b", self.layer(i - 1)]
        bs = self.r.choice({"vhd": [None, "512K"],
                            "vhdx": [None, "1M"],
                            "qcow2": [None, "4K", "16K"]}[a.format])
        if bs:
            argv += ["--block-size=" + bs]
        argv += [self.layer(i)]
        if i == 1:
            argv += [str(self.size)]
        self.log("create %s%s" % (self.layer(i),
                                  " block=" + bs if bs else ""))
        self.run(argv, cwd=self.img)

    def fill(self, chain):
        """Random data, zeros and single sectors into a lower layer."""
        fd = os.open(self.disk(chain), os.O_RDWR)
        r = self.r
        for _ in range(r.randrange(4, 16)):
            ln = r.choice([self.a.sector, 65536, r.randrange(1, 1 << 20)])
            off = r.randrange(0, self.size - ln + 1)
            if r.random() < 0.8:
                b = r.randbytes(ln)
                os.pwrite(fd, b, off)
                self.model[off:off + ln] = b
                self.log("fill %s write %d+%d" % (chain, off, ln))
            else:
                fallocate(fd, FALLOC_FL_ZERO_RANGE, off, ln)
                self.model[off:off + ln] = bytes(ln)
                self.log("fill %s zero %d+%d" % (chain, off, ln))
        os.fsync(fd)
        os.close(fd)

    def build(self):
        for i in range(1, self.a.depth + 1):
            self.create(i)
            if i < self.a.depth:
                self.mount()
                self.fill("ex-L%d" % i)
                self.umount()
        self.top = "ex-L%d" % self.a.depth
        self.mount()
        self.open_disk()
        self.verify_all("after the build")

    def open_disk(self):
        self.fd = os.open(self.disk(self.top), os.O_RDWR)
        st = os.fstat(self.fd)
        if st.st_size != self.size:
            self.fail("disk size %d, expected %d" % (st.st_size, self.size))

    # -- the model -------------------------------------------------------
    def touch(self, off, data):
        """Apply DATA at OFF to the model, tracking the pieces since fsync."""
        end = off + len(data)
        p0, p1 = off // PIECE, (end + PIECE - 1) // PIECE
        for p in range(p0, p1):
            if p not in self.dirty:
                self.dirty[p] = [bytes(self.model[p * PIECE:(p + 1) * PIECE])]
        self.model[off:end] = data
        for p in range(p0, p1):
            v = bytes(self.model[p * PIECE:(p + 1) * PIECE])
            if v not in self.dirty[p]:
                self.dirty[p].append(v)

    def compare(self, got, off, what, either=None):
        exp = self.model[off:off + len(got)]
        if got == exp:
            return
        for i in range(0, len(got), PIECE):
            g, e = got[i:i + PIECE], exp[i:i + PIECE]
            if g == e:
                continue
            p = (off + i) // PIECE
            if either is not None and p in either and g in either[p]:
                continue
            j = next(k for k in range(len(g)) if g[k] != e[k])
            cand = ""
            if either is not None and p in either:
                cand = " (%d candidate values since the last fsync)" % \
                    len(either[p])
            self.fail("%s: byte %d reads %#04x, model has %#04x%s" %
                      (what, off + i + j, g[j], e[j], cand))

    def read_all(self, path):
        with open(path, "rb") as f:
            return f.read()

    def verify_all(self, what, either=None):
        got = self.read_all(self.disk(self.top))
        if len(got) != self.size:
            self.fail("%s: read %d bytes, disk is %d" % (what, len(got),
                                                         self.size))
        self.compare(got, 0, what, either)
        if either is not None:
            # the disk decides which candidate landed
            for p in either:
                self.model[p * PIECE:(p + 1) * PIECE] = \
                    got[p * PIECE:(p + 1) * PIECE]

    def check_offline(self, what):
        """Unmounted: the checker and the oracle on the top."""
        top = os.path.join(self.img, self.layer(self.a.depth))
        p = self.run([self.a.layerimg, "check", "-q", top], ok=(0, 2, 3))
        if p.returncode == 2:
            self.fail("%s: layerimg check %s found errors: %s" %
                      (what, top, p.stderr.decode(errors="replace")[-800:]))
        if self.a.no_oracle:
            return None
        out = os.path.join(self.work, "oracle.raw")
        if self.a.format == "qcow2":
            self.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                      top, out])
        else:
            with open(out, "wb") as f:
                p = subprocess.run(["7zz", "e", "-so", "-t" + self.a.format,
                                    os.path.basename(top)], cwd=self.img,
                                   stdout=f, stderr=subprocess.PIPE)
            if p.returncode != 0:
                self.fail("%s: 7zz e -t%s %s exited %d: %s" %
                          (what, self.a.format, top, p.returncode,
                           p.stderr.decode(errors="replace")[-400:]))
        got = self.read_all(out)
        os.unlink(out)
        if len(got) != self.size:
            self.fail("%s: the oracle reads %d bytes, disk is %d" %
                      (what, len(got), self.size))
        return got

    # -- operations ------------------------------------------------------
    def pick_range(self, maxlen=256 << 10):
        r, s = self.r, self.a.sector
        if r.random() < 0.5:     # aligned to the sector
            n = r.randrange(1, maxlen // s + 1) * s
            off = r.randrange(0, (self.size - n) // s + 1) * s
        else:
            n = r.choice([1, 7, 511, 513, 4095, r.randrange(1, maxlen + 1)])
            off = r.randrange(0, self.size - n + 1)
        return off, n

    def op_write(self):
        off, n = self.pick_range()
        b = self.r.randbytes(n)
        self.log("write %d+%d" % (off, n))
        if os.pwrite(self.fd, b, off) != n:
            self.fail("short write at %d+%d" % (off, n))
        self.touch(off, b)

    def op_fallocate(self, mode, name):
        off, n = self.pick_range(1 << 20)
        self.log("%s %d+%d" % (name, off, n))
        try:
            fallocate(self.fd, mode, off, n)
        except OSError as e:
            self.fail("%s %d+%d: %s" % (name, off, n, e))
        self.touch(off, bytes(n))

    def op_read(self):
        off, n = self.pick_range(1 << 20)
        self.log("read %d+%d" % (off, n))
        got = os.pread(self.fd, n, off)
        if len(got) != n:
            self.fail("short read at %d+%d: %d" % (off, n, len(got)))
        self.compare(got, off, "read %d+%d" % (off, n))

    def op_fsync(self):
        self.log("fsync")
        os.fsync(self.fd)
        self.dirty = {}

    def op_truncate(self):
        r = self.r
        n = r.choice([0, self.size - self.a.sector, self.size + 4096,
                      self.size])
        self.log("ftruncate %d" % n)
        try:
            os.ftruncate(self.fd, n)
        except OSError as e:
            if n == self.size:
                self.fail("ftruncate to the same size: %s" % e)
            if e.errno != 1:  # EPERM: a disk keeps its size
                self.fail("ftruncate %d: %s, expected EPERM" % (n, e))
            return
        if n != self.size:
            self.fail("ftruncate %d succeeded; a disk keeps its size" % n)

    def op_kill(self):
        self.nkills += 1
        self.log("SIGKILL (%d pieces written since the last fsync)" %
                 len(self.dirty))
        either = self.dirty
        self.dirty = {}
        self.kill()
        oracle = self.check_offline("after SIGKILL")
        self.mount()
        self.verify_all("after SIGKILL and remount", either)
        if oracle is not None:
            self.compare(oracle, 0, "oracle after SIGKILL")
        self.open_disk()

    def op_remount(self):
        self.nremounts += 1
        self.log("clean remount")
        self.dirty = {}    # an unmount flushes everything
        self.umount()
        oracle = self.check_offline("after a clean unmount")
        if oracle is not None:
            self.compare(oracle, 0, "oracle after a clean unmount")
        self.mount()
        self.verify_all("after a clean remount")
        self.open_disk()

    def step(self):
        x = self.r.random()
        a = self.a
        if x < a.p_kill:
            self.op_kill()
        elif x < a.p_kill + a.p_remount:
            self.op_remount()
        elif x < 0.05:
            self.op_fsync()
        elif x < 0.07:
            self.op_truncate()
        elif x < 0.20:
            self.op_fallocate(FALLOC_FL_ZERO_RANGE, "zero")
        elif x < 0.30:
            self.op_fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              "punch")
        elif x < 0.50:
            self.op_read()
        else:
            self.op_write()
        self.nops += 1

    def main(self):
        self.build()
        for _ in range(self.a.ops):
            self.step()
        if self.a.kill_at_end:
            self.op_kill()
        self.op_remount()
        self.log("end")
        self.umount()
        self.check_offline("at the end")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", choices=["vhd", "vhdx", "qcow2"],
                   required=True)
    p.add_argument("--depth", type=int, default=1, choices=range(1, 6))
    p.add_argument("--sector", type=int, default=512, choices=[512, 4096])
    p.add_argument("--seed", default=None,
                   help="RNG seed (default: a random one, printed)")
    p.add_argument("--ops", type=int, default=300)
    p.add_argument("--size-mib", type=int, default=16)
    p.add_argument("--p-kill", type=float, default=0.01)
    p.add_argument("--p-remount", type=float, default=0.01)
    p.add_argument("--kill-at-end", action="store_true",
                   help="end with one SIGKILL (so every run has one)")
    p.add_argument("--no-oracle", action="store_true")
    p.add_argument("--layerfs", default=os.environ.get("LAYERFS",
                   "build/src/layerfs"))
    p.add_argument("--layerimg", default=os.environ.get("LAYERIMG",
                   "build/src/cli/layerimg"))
    p.add_argument("--workdir", help="default: a new temporary directory, "
                   "removed unless something was found")
    p.add_argument("--log", help="where the whole op log goes on a finding")
    p.add_argument("--asan-log", help="sanitizer log_path prefix to watch")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    if a.sector == 4096 and a.format != "vhdx":
        p.error("4096-byte sectors: vhdx only")
    if a.seed is None:
        a.seed = str(random.SystemRandom().randrange(1 << 32))
    a.layerfs = os.path.abspath(a.layerfs)
    a.layerimg = os.path.abspath(a.layerimg)
    conf = "format=%s depth=%d sector=%d seed=%s ops=%d size=%dMiB" % (
        a.format, a.depth, a.sector, a.seed, a.ops, a.size_mib)
    print("exercise: " + conf, flush=True)
    x = Exerciser(a)
    try:
        x.main()
    except (Finding, OSError) as e:
        x.cleanup()
        logf = a.log or os.path.join(x.work, "ops.log")
        with open(logf, "w") as f:
            f.write("# %s\n" % conf)
            f.write("\n".join(x.ops) + "\n")
            f.write("# FINDING: %s\n" % e)
        print("exercise: FINDING: %s" % e, file=sys.stderr)
        print("exercise: %s" % conf, file=sys.stderr)
        print("exercise: reproduce: %s --format %s --depth %d --sector %d "
              "--seed %s --ops %d --size-mib %d%s" %
              (sys.argv[0], a.format, a.depth, a.sector, a.seed, a.ops,
               a.size_mib, " --kill-at-end" if a.kill_at_end else ""),
              file=sys.stderr)
        print("exercise: last operations (all %d in %s):" %
              (len(x.ops), logf), file=sys.stderr)
        for ln in x.ops[-25:]:
            print("  " + ln, file=sys.stderr)
        print("exercise: FAIL %s ops=%d kills=%d remounts=%d work=%s" %
              (conf, x.nops, x.nkills, x.nremounts, x.work), flush=True)
        return 1
    x.cleanup()
    if not a.keep and not a.workdir:
        shutil.rmtree(x.work, ignore_errors=True)
    print("exercise: ok %s ops=%d kills=%d remounts=%d" %
          (conf, x.nops, x.nkills, x.nremounts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
