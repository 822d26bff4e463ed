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

#include "io.h"
#include "layout.h"
#include "log.h"

static char *dir;		/* private directory, removed at exit */
static char *path;		/* dir/DeviceLayoutOEM.xml */

static void quiet_sink(enum log_level lvl, const char *msg)
{
	(void)lvl;
	(void)msg;
}

static void cleanup(void)
{
	unlink(path);
	rmdir(dir);
	free(path);
	free(dir);
}

static void setup(void)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	if (asprintf(&dir, "%s/fuzz-layout-XXXXXX", base) < 0 || !mkdtemp(dir))
		abort();
	if (asprintf(&path, "%s/DeviceLayoutOEM.xml", dir) < 0)
		abort();
	atexit(cleanup);
	log_init("fuzz-layout");
	if (!getenv("FUZZ_VERBOSE"))
		log_set_sink(quiet_sink);
}

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
	int fd;

	if (!path)
		setup();
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	if (size && pwrite_full(fd, data, size, 0) < 0)
		abort();
	close(fd);
	if (layout_load(path, vhdx_ss, "vhdx", &l) < 0)
		return 0;
	walk(l);
	layout_free(l);
	if (layout_load(path, vhd_ss, "vhd", &l) == 0) {
		walk(l);
		layout_free(l);
	}
	return 0;
}
