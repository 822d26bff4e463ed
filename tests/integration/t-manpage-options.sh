#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Every key of the daemon's fuse_opt tables (src/fuse/main.c) is an item
# of the OPTIONS section of man/layerfs.1: "-h" and "--help" as "Fl h"
# and "Fl \-help", "max_depth=%u" as "Cm max_depth ...", and so on.
# A key mentioned only in passing does not count: it must head an .It.
# Then the check is run once more on a copy of the page with one item
# removed, which must fail: the test cannot pass by finding nothing.
#
#   t-manpage-options.sh [MAIN_C [MAN_PAGE]]   (default: this source tree)
# Exit status: 0 every key is documented, 1 one is missing (or the check
# itself is broken).  Needs only bash, grep and sed: no FUSE, no build.
set -euo pipefail
export LC_ALL=C

TEST_NAME=t-manpage-options
SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
main_c=${1:-$SRCDIR/src/fuse/main.c}
man_page=${2:-$SRCDIR/man/layerfs.1}
checks=0

fail() {
	printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
	exit 1
}

ok() {
	checks=$((checks + 1))
	printf '%s: ok %d - %s\n' "$TEST_NAME" "$checks" "$*"
}

[ -r "$main_c" ] || fail "cannot read $main_c"
[ -r "$man_page" ] || fail "cannot read $man_page"

# The keys of every "struct fuse_opt NAME[] = { ... FUSE_OPT_END" table:
# the first string of each entry (FUSE_OPT_KEY("-h", ...), CLI_OPT(...),
# or { "key", ... }), cut at '=' or ' ' as fuse_opt templates are.
opt_keys() {
	sed -n '/struct fuse_opt [A-Za-z_0-9]*\[\] *= *{/,/FUSE_OPT_END/p' "$1" |
		grep -v 'FUSE_OPT_END' |
		sed -n 's/^[^"]*[({][[:space:]]*"\([^"]*\)".*/\1/p' |
		sed 's/[= ].*//' | sort -u
}

# The words heading the items (.It) of the OPTIONS section, one per line:
# "Fl d , Fl o Cm debug" gives -d, -o and debug; "Fl \-help" gives --help;
# "Cm max_depth Ns = Ns Ar N" gives max_depth, =, N.
man_item_words() {
	sed -n '/^\.Sh OPTIONS/,/^\.Sh /p' "$1" |
		sed -n 's/^\.It[[:space:]]\{1,\}//p' |
		sed -e 's/\\-/-/g' -e 's/"//g' \
			-e ':a' -e 's/\(^\|[[:space:]]\)Fl[[:space:]]\{1,\}\([^[:space:]]\)/\1-\2/' -e 'ta' \
			-e 's/\(^\|[[:space:]]\)\(Cm\|Ar\|Ns\|Op\|Oo\|Oc\|Li\|Ql\|Sy\|Em\|Ic\|Pa\|Ev\)\([[:space:]]\|$\)/\1\3/g' \
			-e 's/\(^\|[[:space:]]\)\(Cm\|Ar\|Ns\|Op\|Oo\|Oc\|Li\|Ql\|Sy\|Em\|Ic\|Pa\|Ev\)\([[:space:]]\|$\)/\1\3/g' |
		tr ' \t,=[]' '\n\n\n\n\n\n' | grep -v '^$' | sort -u
}

# check MAIN_C MAN_PAGE: print the undocumented keys; status 1 if any
check() {
	local keys words k missing=0
	keys=$(opt_keys "$1")
	[ -n "$keys" ] || fail "no fuse_opt keys found in $1"
	words=$(man_item_words "$2")
	[ -n "$words" ] || fail "no .It items in the OPTIONS section of $2"
	for k in $keys; do
		if ! grep -qxF -- "$k" <<<"$words"; then
			echo "$k"
			missing=1
		fi
	done
	return $missing
}

nkeys=$(opt_keys "$main_c" | wc -l)
[ "$nkeys" -gt 0 ] || fail "no fuse_opt keys found in $main_c"
if ! missing=$(check "$main_c" "$man_page"); then
	fail "${man_page##*/}: OPTIONS has no item for: $(echo $missing)" \
		"(keys of the fuse_opt table in ${main_c##*/})"
fi
ok "all $nkeys fuse_opt keys of ${main_c##*/} are items in ${man_page##*/}: $(echo $(opt_keys "$main_c"))"

# The check must notice a missing item: drop the item of one -o key.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/$TEST_NAME.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
victim=$(opt_keys "$main_c" | grep -v '^-' | head -1)
[ -n "$victim" ] || fail "no -o key to remove for the self-check"
grep -v "^\.It Cm $victim\([[:space:]]\|\$\)" "$man_page" >"$tmp/layerfs.1" || true
cmp -s "$man_page" "$tmp/layerfs.1" &&
	fail "self-check: no '.It Cm $victim' line to remove in ${man_page##*/}"
if missing=$(check "$main_c" "$tmp/layerfs.1"); then
	fail "self-check: a page without the $victim item passed"
fi
[ "$missing" = "$victim" ] ||
	fail "self-check: removing $victim reported [$(echo $missing)]"
ok "self-check: a page without the '$victim' item fails"

printf '%s: PASS (%d checks)\n' "$TEST_NAME" "$checks"
