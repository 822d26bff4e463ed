#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Build the device layout (DeviceLayoutOEM.xml) libFuzzer target (outside
# the meson build: it needs clang) and, with "seed", make a seed corpus
# from examples/*.xml and tests/data/layouts/*.xml and a dictionary of the
# schema's element names.
#
#   tests/fuzz/build-layout.sh [OUTDIR]          -> OUTDIR/fuzz-layout
#   tests/fuzz/build-layout.sh OUTDIR seed       -> also OUTDIR/corpus-layout
#                                                   and OUTDIR/layout.dict
#   OUTDIR/fuzz-layout -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
#       -dict=OUTDIR/layout.dict -max_total_time=300 OUTDIR/corpus-layout
set -eu

. "$(dirname "$0")/build-lib.sh"
fuzz_init layout "${1:-}"

# layout.c and the GPT geometry it places partitions with (gpt.c), on the
# common helpers; libxml2 is the layout reader's only library
fuzz_build layout -I"$src/src/cli" $(pkg-config --cflags libxml-2.0) \
	"$src/src/cli/layout.c" "$src/src/cli/gpt.c" "$src"/src/common/*.c \
	$(pkg-config --libs libxml-2.0) -lz -lpthread

[ "${2:-}" = seed ] || exit 0
c="$out/corpus-layout"
mkdir -p "$c"
for f in "$src"/examples/*.xml "$src"/tests/data/layouts/*.xml; do
	n=${f#"$src"/}
	cp "$f" "$c/$(echo "$n" | tr '/' '-')"
done
# the element names of all seeds, and a few values the rules care about
{
	cat "$src"/examples/*.xml "$src"/tests/data/layouts/*.xml |
		grep -o '<[A-Za-z][A-Za-z]*' | sort -u |
		sed 's/^<\(.*\)/"<\1>"\n"<\/\1>"/'
	printf '%s\n' '"NTFS"' '"FAT"' '"FAT32"' '"131072"' '"4096"' '"512"' \
		'"{00000000-0000-0000-0000-000000000000}"' '"0x"' \
		'"xmlns=\"http://schemas.microsoft.com/embedded/2004/10/ImageUpdate/v2\""'
} >"$out/layout.dict"
ls -la "$c"
