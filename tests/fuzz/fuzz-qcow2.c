// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-qcow2.c: libFuzzer target for the qcow2 and qcow (v1) drivers.
 *
 * Each input is written to a file in a private directory and opened with
 * the qcow2 driver (or the qcow driver when the version field says 1).
 * If it opens, the target asks for the parent and the snapshot list, then
 * maps and reads the first few MiB and a spread of sampled offsets the way
 * the chain layer does (pread of host runs, ->read for the others).
 * Built outside meson by build-qcow2.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"
#include "registry.h"

/* The fuzzer's own registry: img.c probes only these. */
const struct img_driver *const img_drivers[] = {
	&qcow2_driver,
	&qcow_driver,
	&raw_driver,
};
const size_t img_ndrivers = sizeof(img_drivers) / sizeof(img_drivers[0]);

#define READ_HEAD (4u << 20)	/* sequential part */
#define SAMPLES 32u
#define CHUNK (256u << 10)

static char *dir;		/* private directory, removed at exit */
static char *path;		/* dir/fuzz.qcow2 */
static uint8_t *buf;

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
	free(buf);
}

static void setup(void)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	if (asprintf(&dir, "%s/fuzz-qcow2-XXXXXX", base) < 0 || !mkdtemp(dir))
		abort();
	if (asprintf(&path, "%s/fuzz.qcow2", dir) < 0)
		abort();
	buf = malloc(CHUNK);
	if (!buf)
		abort();
	atexit(cleanup);
	log_init("fuzz-qcow2");
	if (!getenv("FUZZ_VERBOSE"))
		log_set_sink(quiet_sink);
	/* a small cache so eviction runs too */
	qcow2_l2_cache_set_budget(256u << 10);
}

/* Read [off, off + n) of one image the way the chain layer does. */
static void read_range(struct img *img, uint64_t off, uint64_t n)
{
	uint64_t end;

	if (off >= img->size)
		return;
	end = off + (n < img->size - off ? n : img->size - off);
	while (off < end) {
		struct img_extent e;
		size_t c;

		if (img_map(img, off, end - off, &e) < 0)
			return;
		c = (size_t)(e.len < CHUNK ? e.len : CHUNK);
		if (e.type == IMG_EXT_DATA) {
			int r = e.host_off == IMG_HOST_NONE ?
				img->drv->read(img, buf, c, off) :
				pread_full(e.fd, buf, c, e.host_off);

			if (r < 0)
				return;
		}
		off += c;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct img_driver *drv = &qcow2_driver;
	struct img_parent parent;
	struct qcow2_snapshot *snaps;
	struct img *img;
	size_t nsnaps;
	int fd;

	if (!path)
		setup();
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	if (size && pwrite_full(fd, data, size, 0) < 0)
		abort();
	close(fd);
	if (size >= 8 && get_be32(data + 4) == 1)
		drv = &qcow_driver;
	if (img_open(path, drv, false, &img) < 0)
		return 0;
	memset(&parent, 0, sizeof(parent));
	if (img->drv->parent(img, &parent) > 0)
		img_parent_clear(&parent);
	if (qcow2_snapshot_list(img, &snaps, &nsnaps) == 0)
		qcow2_snapshot_list_free(snaps, nsnaps);
	read_range(img, 0, READ_HEAD);
	for (unsigned i = 1; i <= SAMPLES && img->size; i++) {
		uint64_t off = img->size / SAMPLES * (i - 1) +
			       (img->size / SAMPLES / 2) * (i & 1);

		read_range(img, off, 65536 + 4096 * i);
	}
	img_unref(img);
	return 0;
}
