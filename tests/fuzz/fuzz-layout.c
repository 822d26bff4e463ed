// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-layout.c: libFuzzer target for the Windows device layout reader
 * (src/cli/layout.c, DeviceLayoutOEM.xml for `layerimg create --layout`).
 *
 * Each input is written to a file in a private directory and loaded with
 * layout_load, as for a VHDX (sector sizes 512 and 4096) and then, when
 * the first load succeeds, for a 512-only format; a loaded layout is
 * walked (names, sizes, LBAs) and freed.  libxml2 itself is not
 * instrumented: the target measures and checks our code on what libxml2
 * hands it.  Built outside meson by build-layout.sh.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz-common.h"
#include "layout.h"
#include "log.h"

/* Touch every field a caller (layerimg create) reads. */
static void walk(const struct layout *l)
{
	volatile uint64_t sink = l->sector_size;

	for (unsigned i = 0; i < l->nstores; i++) {
		const struct layout_store *s = &l->stores[i];

		sink += s->size + (s->type ? strlen(s->type) : 0) +
			(s->device_path ? strlen(s->device_path) : 0);
		for (unsigned k = 0; k < s->nparts; k++) {
			const struct layout_part *p = &s->parts[k];

			if (p->first_lba > p->last_lba)
				abort();	/* placed backwards */
			sink += strlen(p->name) + p->total_bytes + p->align +
				strlen(layout_fs_name(p->fs));
		}
	}
	(void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t vhdx_ss[] = { 512, 4096, 0 };
	static const uint32_t vhd_ss[] = { 512, 0 };
	struct layout *l;

	if (!fuzz_path)
		fuzz_file_setup("fuzz-layout", "DeviceLayoutOEM.xml");
	fuzz_file_write(data, size);
	if (layout_load(fuzz_path, vhdx_ss, "vhdx", &l) < 0)
		return 0;
	walk(l);
	layout_free(l);
	if (layout_load(fuzz_path, vhd_ss, "vhd", &l) == 0) {
		walk(l);
		layout_free(l);
	}
	return 0;
}
