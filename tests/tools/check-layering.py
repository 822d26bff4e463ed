#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""check-layering.py LIBCORE.a: the format folders' one-way dependencies.

Inside src/format/<fmt>/, dependencies point one way:
    codec <- read side (open, bat, log, cluster, info, qcow) <- write side
    (write, create, parent, check, refcount, driver).
This reads `nm` of the core library and fails, naming the objects and the
symbol, when a read-side object uses a symbol a write-side object defines,
or when a codec uses anything from the format folders but the codec itself
(a codec is pure: it may use the common helpers, never the read side)."""
import re
import subprocess
import sys

READ = {"codec", "open", "bat", "log", "cluster", "info", "qcow"}
WRITE = {"write", "create", "parent", "check", "refcount", "driver"}

out = subprocess.run(["nm", "-A", sys.argv[1]], check=True,
                     capture_output=True, text=True).stdout
defined, used = {}, {}
objs = set()
for line in out.splitlines():
    m = re.match(r"^[^:]+:(?:[^:]*/)?([^:/]+\.o):\s*(?:[0-9a-f]+)?\s+"
                 r"([A-Za-z])\s+(\S+)$", line)
    if not m:
        continue
    obj, kind, sym = m.groups()
    f = re.match(r"format_([a-z0-9]+)_([a-z0-9]+)\.c\.o$", obj)
    if not f:
        continue
    key = (f.group(1), f.group(2))
    objs.add(key)
    if kind == "U":
        used.setdefault(key, set()).add(sym)
    elif kind.isupper():
        defined[sym] = key

bad = []
for key, syms in sorted(used.items()):
    fmt, role = key
    for s in sorted(syms):
        d = defined.get(s)
        if not d:
            continue
        if role in READ and d[1] in WRITE:
            bad.append("%s/%s.c (read side) uses %s from %s/%s.c (write side)"
                       % (fmt, role, s, d[0], d[1]))
        if role == "codec" and d != key:
            bad.append("%s/codec.c (pure) uses %s from %s/%s.c"
                       % (fmt, s, d[0], d[1]))
unknown = sorted("%s/%s.c" % k for k in objs
                 if k[1] not in READ | WRITE)
for u in unknown:
    bad.append("%s: not classified as read or write side in %s"
               % (u, sys.argv[0]))
for fmt in sorted({k[0] for k in objs}):
    if (fmt, "codec") not in objs:
        bad.append("%s: no codec.c" % fmt)
for b in bad:
    print("layering: " + b)
print("layering: %d format objects checked, %d problems" % (len(objs), len(bad)))
sys.exit(1 if bad else 0)
