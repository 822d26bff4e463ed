# SPDX-License-Identifier: LGPL-2.1-or-later
# Sourced by tests/fuzz/build-*.sh: the setup every fuzz target's build
# script shares (paths, clang and its flags, the seed corpus directory).
# shellcheck shell=sh

# fuzz_init NAME [OUTDIR] [DEFAULT_SUBDIR]: set src (the source tree), out
# (OUTDIR, else $src/DEFAULT_SUBDIR, else $src/build-fuzz-NAME; created and
# made absolute) and CC (clang unless set)
fuzz_init() {
	src=$(cd "$(dirname "$0")/../.." && pwd)
	out=${2:-"$src/${3:-build-fuzz-$1}"}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	CC=${CC:-clang}
}

# fuzz_build NAME ARGS...: compile tests/fuzz/fuzz-NAME.c with libFuzzer,
# ASan and UBSan, plus ARGS (more flags, sources, libraries), into
# $out/fuzz-NAME
fuzz_build() {
	fb_name=$1
	shift
	"$CC" -g -O1 -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
		-fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -fno-omit-frame-pointer \
		-I"$src/include" "$src/tests/fuzz/fuzz-$fb_name.c" "$@" \
		-o "$out/fuzz-$fb_name"
	echo "built $out/fuzz-$fb_name"
}

# fuzz_seed_init NAME: the corpus directory c ($out/corpus-NAME, created)
# and a temporary directory t, removed on exit
fuzz_seed_init() {
	c="$out/corpus-$1"
	t=$(mktemp -d)
	trap 'rm -rf "$t"' EXIT
	mkdir -p "$c"
}
