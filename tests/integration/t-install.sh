#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# meson install --destdir from the test's build directory installs every
# file a user needs:
#   - both programs (the installed layerimg runs: --version);
#   - every page in man/, docs/*.md and the README in share/doc/layerfs;
#   - bash completion for layerfs and layerimg: sourced in a fresh bash,
#     "layerimg co<TAB>" offers commit and convert, "layerimg check -r
#     <TAB>" leaks and all, "layerimg check --repair=<TAB>" the same,
#     "layerimg info IMAGEDIR <TAB>" the chains of IMAGEDIR's mount, a
#     file inside the mount completes, and "layerfs -o newf<TAB>" gives
#     newformat=; the same again with bash-completion loaded;
#   - the systemd mount unit (Type=fuse.layerfs; systemd-analyze verify
#     finds nothing wrong with it) and the fstab example, whose options
#     mount the installed layerfs through mount.fuse3.
. "$(dirname "$0")/lib.sh"
require_fuse
require meson qemu-img mount.fuse3
: "${BUILDDIR:?BUILDDIR must name the meson build directory}"

D=$T/dest
meson install -C "$BUILDDIR" --no-rebuild --destdir "$D" >"$T/install.log" 2>&1 ||
	fail "meson install failed: $(tail -5 "$T/install.log" | tr '\n' '|')"
ok "meson install --destdir"
# what meson install says it installed: "Installing SRC to DIR" -> DIR/NAME
sed -n 's|^Installing \(.*/\)\{0,1\}\([^/]*\) to \(.*\)$|\3/\2|p' "$T/install.log" \
	>"$T/listed"

prefix=$(meson introspect "$BUILDDIR" --buildoptions |
	python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"][0])')
P=$D$prefix
doc=$P/share/doc/layerfs

want=("$P/bin/layerfs" "$P/bin/layerimg"
	"$doc/README.md" "$doc/examples/srv-images.mount" "$doc/examples/fstab.example")
for m in "$SRCDIR"/man/*.[1-9]; do
	m=${m##*/}
	want+=("$P/share/man/man${m##*.}/$m")
done
for f in "$SRCDIR"/docs/*.md; do
	want+=("$doc/${f##*/}")
done
comp=$(find "$D" -path '*/bash-completion/completions' -type d | head -1)
[ -n "$comp" ] || fail "no bash-completion/completions directory installed"
want+=("$comp/layerfs" "$comp/layerimg")
for f in "${want[@]}"; do
	[ -f "$f" ] || fail "not installed: ${f#"$D"}"
	grep -qxF -- "$f" "$T/listed" ||
		fail "meson install does not list ${f#"$D"}"
done
ok "${#want[@]} files installed and listed"
[ -x "$P/bin/layerfs" ] && [ -x "$P/bin/layerimg" ] || fail "programs not executable"
"$P/bin/layerimg" --version | grep -q '^layerimg ' || fail "installed layerimg --version"
ok "installed layerimg runs"

# A chain to complete and mount
mkdir "$T/img"
qemu-img create -q -f qcow2 "$T/img/sys-L0.qcow2" 16M
qemu-img create -q -f qcow2 -b sys-L0.qcow2 -F qcow2 "$T/img/sys-L1.qcow2"
layerfs_mount "$T/mnt" "$T/img"

# comp BASH-SETUP LINE: the candidates, one a line, for LINE with the
# cursor at its end, in a new bash that ran BASH-SETUP
comp() {
	bash --norc --noprofile -c "$1"'
		COMP_LINE=$1; COMP_POINT=${#COMP_LINE}
		read -r -a w <<<"$COMP_LINE"
		[[ $COMP_LINE == *" " ]] && w+=("")
		COMP_WORDS=("${w[@]}")
		COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
		fn=$(complete -p "${COMP_WORDS[0]}" | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
		[ -n "$fn" ] || { echo "no completion for ${COMP_WORDS[0]}" >&2; exit 1; }
		"$fn" "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
		printf "%s\n" "${COMPREPLY[@]}" | LC_ALL=C sort' _ "$2"
}

# expect_comp SETUP LINE WANT...: exactly these candidates
expect_comp() {
	local setup=$1 line=$2 got want
	shift 2
	got=$(comp "$setup" "$line" | tr '\n' ' ') || fail "completing [$line] failed"
	want=$(printf '%s\n' "$@" | LC_ALL=C sort | tr '\n' ' ')
	[ "$got" = "$want" ] || fail "completing [$line]: [${got% }], expected [${want% }]"
	ok "completion: [$line] -> [${want% }]"
}

check_completion() {
	local setup=$1
	expect_comp "$setup" "layerimg co" commit convert
	expect_comp "$setup" "layerimg check -r " leaks all
	expect_comp "$setup" "layerimg check --repair=" leaks all
	expect_comp "$setup" "layerimg convert -O q" qcow2
	expect_comp "$setup" "layerimg info --output=" human json
	expect_comp "$setup" "layerimg info $T/img " sys-L0 sys-L1
	expect_comp "$setup" "layerimg map $T/mnt/sys-L1/d" "$T/mnt/sys-L1/disk"
	expect_comp "$setup" "layerfs -o ro,newf" ro,newformat=
	expect_comp "$setup" "layerfs $T/img -o newlayer=sys-L" sys-L0 sys-L1
}

check_completion ". '$comp/layerimg'; . '$comp/layerfs'"
if [ -f /usr/share/bash-completion/bash_completion ]; then
	check_completion ". /usr/share/bash-completion/bash_completion
		. '$comp/layerimg'; . '$comp/layerfs'"
fi
# layerfs's file alone (as bash-completion loads it) brings its helpers
expect_comp ". '$comp/layerfs'" "layerfs -o newformat=vhd" vhd vhdx
layerfs_umount "$T/mnt"

# The systemd unit
unit=$doc/examples/srv-images.mount
grep -qx 'Type=fuse.layerfs' "$unit" || fail "srv-images.mount: no Type=fuse.layerfs"
if command -v systemd-analyze >/dev/null; then
	cp "$unit" "$T/srv-images.mount"
	(cd "$T" && systemd-analyze verify --man=no ./srv-images.mount) \
		>"$T/verify.err" 2>&1 || fail "systemd-analyze verify: $(tr '\n' '|' <"$T/verify.err")"
	[ ! -s "$T/verify.err" ] || fail "systemd-analyze verify: $(tr '\n' '|' <"$T/verify.err")"
	ok "systemd-analyze verify srv-images.mount: clean"
fi

# The unit's and the fstab example's options mount the installed layerfs
# (mount.fuse3 -t layerfs, as mount -t fuse.layerfs runs it)
mount_with() {
	local what=$1 opts=$2 m=$T/m-$3
	mkdir -p "$m"
	PATH=$P/bin:$PATH mount.fuse3 "$what" "$m" -t layerfs -o "$opts" \
		2>"$T/$3.err" || fail "$3: mount.fuse3 -o $opts: $(tr '\n' '|' <"$T/$3.err")"
	track_mount "$m"
	expect_size "$m/sys-L1/disk" 16777216 "$3: sys-L1/disk"
	[ -n "$(daemon_pid_of "$m")" ] ||
		fail "$3: the mount is not served by the installed layerfs"
	if [[ ,$opts, == *,ro,* ]]; then
		! : 2>/dev/null >>"$m/sys-L1/disk" || fail "$3: a ro mount took a write"
	fi
	fusermount3 -u "$m" || fail "$3: fusermount3 -u"
	ok "$3: mount.fuse3 -o $opts serves the chain"
}

daemon_pid_of() {
	local LAYERFS=$P/bin/layerfs
	daemon_pid "$1" | head -1
}

opts=$(sed -n 's/^Options=//p' "$unit")
mount_with "$T/img" "$opts" unit
line=$(grep -m1 '^/srv/layers' "$doc/examples/fstab.example")
read -r _ _ type opts _ <<<"$line"
[ "$type" = fuse.layerfs ] || fail "fstab.example: type $type"
mount_with "$T/img" "$opts" fstab

finish
