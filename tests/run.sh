#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# tests/run.sh: the project's one test command.
#
# Configures build/ (once; later runs reconfigure it so that new
# tests/integration/t-*.sh scripts are registered), builds it, runs every
# meson test (unit and integration) and ends with the line
#   N passed, N failed[, N skipped]
# from build/meson-logs/testlog.json.  Exits non-zero if anything failed.
# Under CI=true a skipped test counts as failed: CI installs everything.
#
# Arguments go to `meson test` (e.g. --suite unit, or a test name).
# LAYERFS_BUILDDIR chooses another build directory than build/.
set -euo pipefail
cd "$(dirname "$0")/.."

builddir=${LAYERFS_BUILDDIR:-build}

if [ -f "$builddir/build.ninja" ]; then
	meson setup --reconfigure "$builddir" >/dev/null
else
	meson setup "$builddir"
fi
meson compile -C "$builddir"

log=$builddir/meson-logs/testlog.json
rm -f "$log"
meson test -C "$builddir" --print-errorlogs "$@" && rc=0 || rc=$?

if [ ! -s "$log" ]; then
	echo "tests/run.sh: meson test wrote no $log (exit $rc)" >&2
	exit "${rc/#0/1}"
fi

python3 - "$log" "$rc" <<'EOF'
import json, os, sys

log, rc = sys.argv[1], int(sys.argv[2])
ci = os.environ.get("CI") == "true"
passed, failed, skipped = [], [], []
with open(log) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        t = json.loads(line)
        r = t["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed.append(t["name"])
        elif r == "SKIP":
            skipped.append(t["name"])
        else:
            failed.append("%s (%s)" % (t["name"], r))
if ci and skipped:
    print("CI=true: skipped tests count as failed: " + ", ".join(skipped))
    failed += ["%s (SKIP)" % n for n in skipped]
    skipped = []
for n in failed:
    print("FAILED: " + n)
line = "%d passed, %d failed" % (len(passed), len(failed))
if skipped:
    line += ", %d skipped" % len(skipped)
print(line)
sys.exit(1 if failed or rc != 0 or not passed else 0)
EOF
