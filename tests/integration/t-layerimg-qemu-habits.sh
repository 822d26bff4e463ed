#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# t-layerimg-qemu-habits.sh: a qemu-img user's habits work on layerimg
# (issues #12 item 4 and #16).
#
#   - sizes as qemu-img parses them: 1.5G, 512K, 100M, 1T, 1.5k, plain
#     bytes; "1.5" (a fraction without a unit) and "1e3" refused; checked
#     against qemu-img info's virtual-size
#   - qemu-img's spellings: --output=json|human (and --json), -f FMT (the
#     input's format; another format refused, as qemu-img does; "vpc" is
#     vhd), -F FMT (the parent's), -b, -o, -p, -q, -U
#   - one message format: every command's errors, getopt's complaints
#     included, start "layerimg: COMMAND: ", and "layerimg: " before a
#     command is known
#   - JSON results of create, commit, convert and rebase, parsed with
#     python3 and compared with qemu-img's view of the files
#   - the rebase hint names layerimg's own --allow-outside, --help points
#     at the installed JSON documentation
# (commit -d/--drop/-f/-b, check -r and convert -S have their own checks in
# t-layerimg-commit, t-layerimg-check and t-layerimg-convert.)
. "${0%/*}/lib.sh"
require qemu-img qemu-io python3
: "${LAYERIMG:?LAYERIMG must name the built layerimg executable}"

L() { "$LAYERIMG" "$@"; }
# rc CMD...: run, print the exit status; stdout to $T/out, stderr to $T/err
rc() { set +e; "$@" >"$T/out" 2>"$T/err"; echo $?; set -e; }
vsize() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
jget() {	# jget FILE EXPR: a python expression over the document j
	python3 -c 'import json,sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# ---- sizes ----
for pair in 1.5G:1610612736 512K:524288 100M:104857600 1T:1099511627776 \
	1.5k:1536 1048576:1048576 0.5M:524288 2g:2147483648 1.25T:1374389534720; do
	s=${pair%%:*} want=${pair#*:}
	f=$T/size-$s.qcow2
	[ "$(rc L create -q -f qcow2 "$f" "$s")" = 0 ] ||
		fail "create SIZE $s: $(cat "$T/err")"
	got=$(vsize "$f")
	[ "$got" = "$want" ] || fail "SIZE $s: virtual size $got, expected $want"
	qemu-img create -q -f qcow2 "$T/q-$s.qcow2" "$s"
	[ "$(vsize "$T/q-$s.qcow2")" = "$got" ] || fail "SIZE $s: qemu-img makes $(vsize "$T/q-$s.qcow2")"
done
for s in 1.5 1e3 1.5.2 12Q 1KK "" . 0x10; do
	[ "$(rc L create -f qcow2 "$T/bad.qcow2" "$s")" = 2 ] ||
		fail "SIZE '$s' accepted"
	[ ! -e "$T/bad.qcow2" ] || fail "SIZE '$s' made a file"
	grep -q '^layerimg: create: error: bad SIZE' "$T/err" ||
		fail "SIZE '$s': $(cat "$T/err")"
done
ok "sizes as qemu-img parses them (fractions, k/K M G T), bad ones refused"

# ---- a chain: base.qcow2 <- top.qcow2, made with qemu-img's spellings ----
d=$T/c
mkdir "$d"
qemu-img create -q -f qcow2 "$d/base.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' "$d/base.qcow2" >/dev/null
[ "$(rc L create -f qcow2 -b "$d/base.qcow2" -F qcow2 -o cluster_size=64k \
	--output=json "$d/top.qcow2")" = 0 ] ||
	fail "create -b -F -o --output=json: $(cat "$T/err")"
cp "$T/out" "$T/create.json"
[ "$(jget "$T/create.json" 'j["version"], j["command"], len(j["images"])')" = "(1, 'create', 1)" ] ||
	fail "create JSON: $(cat "$T/create.json")"
[ "$(jget "$T/create.json" 'j["images"][0]["file"], j["images"][0]["format"], j["images"][0]["virtual_size"], j["images"][0]["parent_format"]')" = \
	"('$d/top.qcow2', 'qcow2', 8388608, 'qcow2')" ] || fail "create JSON: $(cat "$T/create.json")"
[ "$(jget "$T/create.json" 'j["images"][0]["parent"]')" = "$d/base.qcow2" ] ||
	fail "create JSON parent: $(cat "$T/create.json")"
qemu-img info --output=json "$d/top.qcow2" | python3 -c '
import json, sys
i = json.load(sys.stdin)
assert i["backing-filename-format"] == "qcow2", i
assert i["cluster-size"] == 65536, i' || fail "qemu-img info disagrees with create"
# -F contradicting the parent: refused, nothing made
[ "$(rc L create -f qcow2 -b "$d/base.qcow2" -F vhdx "$d/x.qcow2")" = 2 ] ||
	fail "create -F vhdx over qcow2 accepted"
[ ! -e "$d/x.qcow2" ] || fail "create -F vhdx made a file"
grep -q '^layerimg: create: error: .*base.qcow2: is a qcow2 image, not vhdx (-F' "$T/err" ||
	grep -q '^layerimg: create: error: .*base.qcow2: is a qcow2 image, not vhdx' "$T/err" ||
	fail "create -F vhdx: $(cat "$T/err")"
[ "$(rc L create -q -f vpc "$T/v.vhd" 1M)" = 0 ] || fail "create -f vpc: $(cat "$T/err")"
[ "$(qemu-img info --output=json "$T/v.vhd" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')" = vpc ] ||
	fail "create -f vpc did not make a VHD"
ok "create -b -F -o --output=json; -F of another format refused; -f vpc"

qemu-io -f qcow2 -c 'write -P 0x33 512k 1M' "$d/top.qcow2" >/dev/null

# ---- info, map, check: --output, -f, -U ----
for c in info map check; do
	for spell in "--output=json" "--output json" "--json"; do
		# shellcheck disable=SC2086
		[ "$(rc L $c $spell -U -f qcow2 "$d/top.qcow2")" = 0 ] ||
			fail "$c $spell -U -f qcow2: $(cat "$T/err")"
		python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/out" ||
			fail "$c $spell: not JSON: $(head -c 300 "$T/out")"
	done
	[ "$(rc L $c --output=human "$d/top.qcow2")" = 0 ] || fail "$c --output=human"
	python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/out" 2>/dev/null &&
		fail "$c --output=human printed JSON"
	r=$(rc L $c --output=xml "$d/top.qcow2")
	[ "$r" != 0 ] || fail "$c --output=xml accepted"
	grep -q "^layerimg: $c: error: --output must be 'human' or 'json'" "$T/err" ||
		fail "$c --output=xml: $(cat "$T/err")"
	r=$(rc L $c -f vhdx "$d/top.qcow2")
	[ "$r" != 0 ] || fail "$c -f vhdx on a qcow2 accepted"
	grep -q "^layerimg: $c: error: .*top.qcow2: is a qcow2 image, not vhdx" "$T/err" ||
		fail "$c -f vhdx: $(cat "$T/err")"
done
[ "$(rc L info --backing-chain --output=json "$d/top.qcow2")" = 0 ] ||
	fail "info --backing-chain: $(cat "$T/err")"
[ "$(jget "$T/out" 'j["chains"][0]["depth"]')" = 2 ] || fail "info --backing-chain depth"
ok "info, map, check: --output=json|human, --json, -U, -f; -f of another format refused"

# ---- convert: -f, -O vpc, -o, -p, -q, -U, --output=json ----
[ "$(rc L convert -f qcow2 -O vpc -o subformat=dynamic -p -U --output=json \
	"$d/top.qcow2" "$T/flat.vhd")" = 0 ] || fail "convert: $(cat "$T/err")"
grep -q '100%' "$T/err" || fail "convert -p drew no progress: $(cat "$T/err")"
[ "$(jget "$T/out" 'j["version"], j["command"], j["format"], j["virtual_size"], j["sparse_size"]')" = \
	"(1, 'convert', 'vhd', 8388608, None)" ] || fail "convert JSON: $(cat "$T/out")"
[ "$(jget "$T/out" 'j["source"], j["output"]')" = "('$d/top.qcow2', '$T/flat.vhd')" ] ||
	fail "convert JSON paths: $(cat "$T/out")"
[ "$(jget "$T/out" 'j["bytes_written"] >= (1536 << 10)')" = True ] ||
	fail "convert JSON bytes_written: $(cat "$T/out")"
qemu-img compare -q -f qcow2 -F vpc "$d/top.qcow2" "$T/flat.vhd" ||
	fail "convert -O vpc: data differ"
[ "$(rc L convert -q -S 4k --output=json "$d/top.qcow2" "$T/flat.raw")" = 0 ] ||
	fail "convert -q -S 4k: $(cat "$T/err")"
[ ! -s "$T/err" ] || fail "convert -q printed: $(cat "$T/err")"
[ "$(jget "$T/out" 'j["sparse_size"]')" = 4096 ] || fail "convert JSON -S: $(cat "$T/out")"
[ "$(rc L convert -f raw "$d/top.qcow2" "$T/no.raw")" = 2 ] ||
	fail "convert -f raw on a qcow2 accepted"
[ ! -e "$T/no.raw" ] || fail "convert -f raw made an output"
ok "convert -f -O vpc -o -p -q -S -U --output=json"

# ---- commit: JSON, -q ----
cp "$d/base.qcow2" "$T/base-before.qcow2"
qemu-img convert -O raw "$d/top.qcow2" "$T/chain.raw"
[ "$(rc L commit -q --output=json "$d/top.qcow2")" = 0 ] || fail "commit: $(cat "$T/err")"
[ ! -s "$T/err" ] || fail "commit -q printed: $(cat "$T/err")"
[ "$(jget "$T/out" 'j["command"], j["parent_format"], j["top_deleted"]')" = "('commit', 'qcow2', False)" ] ||
	fail "commit JSON: $(cat "$T/out")"
qemu-img compare -q -f qcow2 -F raw "$d/base.qcow2" "$T/chain.raw" ||
	fail "commit: base differs from the chain"
ok "commit -q --output=json"

# ---- rebase: -b -F -f -u -p -q -U, JSON, the --allow-outside hint ----
mkdir "$T/moved"
cp "$d/base.qcow2" "$T/moved/base.qcow2"
[ "$(rc L rebase -f qcow2 -b "$T/moved/base.qcow2" -F qcow2 -u -p -U \
	--output=json "$d/top.qcow2")" = 0 ] || fail "rebase: $(cat "$T/err")"
[ "$(jget "$T/out" 'j["command"], j["parent"], j["parent_format"], j["identity_check"]')" = \
	"('rebase', '$T/moved/base.qcow2', 'qcow2', 'not-recorded')" ] ||
	fail "rebase JSON: $(cat "$T/out")"
grep -q -- '--allow-outside' "$T/err" || fail "rebase hint: $(cat "$T/err")"
grep -q -- '-o allow_outside' "$T/err" && ! grep -q 'layerfs: -o allow_outside' "$T/err" &&
	fail "rebase tells layerimg users to use -o allow_outside"
[ "$(qemu-img info --output=json "$d/top.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = \
	"../moved/base.qcow2" ] || fail "rebase: qemu-img sees another backing file"
[ "$(rc L rebase -q -b "$d/base.qcow2" "$d/top.qcow2")" = 0 ] && [ ! -s "$T/out" ] ||
	fail "rebase -q: $(cat "$T/out" "$T/err")"
[ "$(rc L rebase -b "$d/base.qcow2" -F vhd "$d/top.qcow2")" = 2 ] ||
	fail "rebase -F vhd over qcow2 accepted"
ok "rebase -b -F -f -u -p -q -U --output=json; the hint names --allow-outside"

# ---- one message format ----
for c in info map check create commit convert rebase; do
	L "$c" --no-such-option "$d/top.qcow2" >/dev/null 2>"$T/err" && fail "$c --no-such-option accepted"
	head -1 "$T/err" | grep -q "^layerimg: $c: unrecognized option '--no-such-option'" ||
		fail "$c: bad option: $(cat "$T/err")"
	grep -q "^Try 'layerimg $c --help'" "$T/err" || fail "$c: no Try line: $(cat "$T/err")"
	case $c in
	create) set -- -f qcow2 "$T/nodir/x.qcow2" 1M ;;
	convert) set -- "$T/missing.qcow2" "$T/out.raw" ;;
	rebase) set -- -b "$d/base.qcow2" "$T/missing.qcow2" ;;
	*) set -- "$T/missing.qcow2" ;;
	esac
	L "$c" "$@" >/dev/null 2>"$T/err" && fail "$c on a missing file succeeded"
	[ -s "$T/err" ] || fail "$c: no message"
	while IFS= read -r line; do
		case $line in
		"layerimg: $c: error: "* | "layerimg: $c: warning: "*) ;;
		*) fail "$c: a line without the prefix: $line" ;;
		esac
	done <"$T/err"
done
L no-such-command >/dev/null 2>"$T/err" && fail "an unknown command succeeded"
head -1 "$T/err" | grep -q "^layerimg: error: unknown command 'no-such-command'" ||
	fail "unknown command: $(cat "$T/err")"
ok "every command's errors start 'layerimg: COMMAND: ', getopt's too"

# ---- --help points at the installed JSON documentation ----
L info --help | grep -q '/share/doc/layerfs/layerimg-json.md' ||
	fail "info --help: $(L info --help | grep -i json)"
L info --help | grep -q 'docs/layerimg-json.md' && fail "info --help names the source tree"
ok "info --help points at the installed layerimg-json.md"
finish
