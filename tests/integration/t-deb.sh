#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The Debian package: DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b
# in a copy of the source tree (the files git knows, so the real tree gets
# no build leftovers and no ../*.deb), then
#   - dpkg-deb -c lists both programs in /usr/bin, every man/ page
#     (compressed), docs/*.md uncompressed (layerimg --help names
#     layerimg-json.md), both bash completions, the systemd unit and the
#     fstab example;
#   - its Depends names fuse3 and the shared libraries;
#   - dpkg-deb -x into a temporary directory: the extracted layerimg and
#     layerfs run (--version), and layerimg's --help names the packaged
#     JSON document.
# dpkg -i into the machine itself is left out: the test must not change
# the system it runs on (dpkg -i --root is not a supported way either).
. "$(dirname "$0")/lib.sh"
require dpkg-buildpackage dpkg-deb dh git tar
command -v dpkg-checkbuilddeps >/dev/null && dpkg-checkbuilddeps -B \
	"$SRCDIR/debian/control" 2>"$T/deps.err" ||
	skip "build dependencies missing: $(tr '\n' ' ' <"$T/deps.err")"

# the tree as git has it (committed and not yet committed files, not
# ignored ones), else a copy without build directories
mkdir "$T/src"
if git -C "$SRCDIR" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$SRCDIR" && git ls-files -z --cached --others --exclude-standard |
		xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ |
		tar -c --null -T -) | tar -x -C "$T/src"
else
	(cd "$SRCDIR" && tar -c --exclude='./build*' --exclude='./obj-*' .) |
		tar -x -C "$T/src"
fi
ok "source copied"

start=$(date +%s)
(cd "$T/src" && DEB_BUILD_OPTIONS="nocheck noddebs parallel=2" \
	dpkg-buildpackage -us -uc -b) >"$T/build.err" 2>&1 ||
	fail "dpkg-buildpackage failed: $(tail -20 "$T/build.err" | tr '\n' '|')"
deb=$(ls "$T"/layerfs_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no layerfs_*.deb built"
ok "dpkg-buildpackage built ${deb##*/} in $(($(date +%s) - start)) s"

dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' >"$T/list"
want=(/usr/bin/layerfs /usr/bin/layerimg
	/usr/share/doc/layerfs/README.md
	/usr/share/doc/layerfs/examples/srv-images.mount
	/usr/share/doc/layerfs/examples/fstab.example
	/usr/share/bash-completion/completions/layerfs
	/usr/share/bash-completion/completions/layerimg)
for m in "$SRCDIR"/man/*.[1-9]; do
	m=${m##*/}
	want+=("/usr/share/man/man${m##*.}/$m.gz")
done
for f in "$SRCDIR"/docs/*.md; do
	want+=("/usr/share/doc/layerfs/${f##*/}")
done
for f in "${want[@]}"; do
	grep -qxF -- "$f" "$T/list" || fail "dpkg-deb -c does not list $f"
done
ok "dpkg-deb -c lists all ${#want[@]} files"

depends=$(dpkg-deb -f "$deb" Depends)
for d in fuse3 libfuse3-3 libc6; do
	[[ ", $depends," == *", $d "* || ", $depends," == *", $d,"* ]] ||
		fail "Depends lacks $d: $depends"
done
ok "Depends: $depends"

dpkg-deb -x "$deb" "$T/root"
out=$("$T/root/usr/bin/layerimg" --version) || fail "the packaged layerimg does not run"
[[ $out == layerimg\ * ]] || fail "packaged layerimg --version: $out"
out=$("$T/root/usr/bin/layerfs" --version 2>&1) || fail "the packaged layerfs does not run"
[[ $out == layerfs\ * ]] || fail "packaged layerfs --version: $out"
out=$("$T/root/usr/bin/layerimg" info --help)
[[ $out == *" /usr/share/doc/layerfs/layerimg-json.md"* ]] ||
	fail "the packaged layerimg does not name /usr/share/doc/layerfs/layerimg-json.md"
ok "the extracted programs run"

finish
