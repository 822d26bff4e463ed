#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-manpage-layerimg: every long option that `layerimg CMD --help` prints,
# for every command `layerimg --help` lists, is documented in
# man/layerimg.1 as "Fl \-opt\-name", and every command has its own .Ss
# section.  Then the check runs again on a copy of the page with one
# option removed, which must fail: the test cannot pass by finding nothing.
set -euo pipefail
export LC_ALL=C
TEST_NAME=t-manpage-layerimg
SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"
man=$SRCDIR/man/layerimg.1
fail() { printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2; exit 1; }

cmds=$("$LAYERIMG" --help | awk '/^Commands:/ { on = 1; next } on && NF == 0 { exit } on { print $1 }')
[ "$(echo "$cmds" | wc -w)" -ge 7 ] || fail "layerimg --help lists too few commands: $cmds"

# missing PAGE: print "CMD --opt" for each undocumented option
missing() {
	local page=$1 c o e
	for c in $cmds; do
		grep -qx ".Ss $c" "$page" || echo "$c (no .Ss section)"
		"$LAYERIMG" "$c" --help >/dev/null || echo "$c --help (exit $?)"
		for o in $("$LAYERIMG" "$c" --help | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u); do
			e=$(printf '%s' "${o#--}" | sed 's/-/\\-/g')
			grep -qF -- "Fl \\-$e" "$page" || echo "$c $o"
		done
	done
}

m=$(missing "$man")
[ -z "$m" ] || fail "undocumented in man/layerimg.1: $(echo "$m" | tr '\n' ',')"
n=$(for c in $cmds; do "$LAYERIMG" "$c" --help | grep -oE -- '--[a-z][a-z0-9-]+'; done | sort -u | wc -l)
echo "$TEST_NAME: ok 1 - $n long options of $(echo "$cmds" | wc -w) commands are documented"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sed 's/Fl \\-sparse\\-zeros/Fl S/' "$man" >"$tmp"
m=$(missing "$tmp")
echo "$m" | grep -q -- "convert --sparse-zeros" ||
	fail "the check did not notice --sparse-zeros removed from a copy of the page"
echo "$TEST_NAME: ok 2 - a page without --sparse-zeros fails the check"
echo "$TEST_NAME: PASS (2 checks)"
