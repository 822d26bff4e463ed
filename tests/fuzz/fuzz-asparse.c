// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-asparse.c: libFuzzer target for the Android sparse driver and its
 * checker.
 *
 * Each input is written to a file in a private directory and opened with
 * the asparse driver.  If it opens, the target asks for its format facts
 * (->info), then maps and reads the first few MiB and a spread of sampled
 * offsets the way the chain layer does (pread of host runs, ->read for
 * FILL runs).  Every input, open or not, also goes through ->check, which
 * judges files open refuses.  Built outside meson by build-asparse.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img.h"
#include "io.h"
#include "log.h"
#include "registry.h"

/* The fuzzer's own registry: img.c probes only these. */
const struct img_driver *const img_drivers[] = {
	&asparse_driver,
	&raw_driver,
};
const size_t img_ndrivers = sizeof(img_drivers) / sizeof(img_drivers[0]);

#define READ_HEAD (4u << 20)	/* sequential part */
#define SAMPLES 32u
#define CHUNK (256u << 10)

static char *dir;		/* private directory, removed at exit */
static char *path;		/* dir/fuzz.simg */
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

	if (asprintf(&dir, "%s/fuzz-asparse-XXXXXX", base) < 0 || !mkdtemp(dir))
		abort();
	if (asprintf(&path, "%s/fuzz.simg", dir) < 0)
		abort();
	buf = malloc(CHUNK);
	if (!buf)
		abort();
	atexit(cleanup);
	log_init("fuzz-asparse");
	if (!getenv("FUZZ_VERBOSE"))
		log_set_sink(quiet_sink);
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

/* ->check on the file as `layerimg check` runs it: ->open never ran. */
static void run_check(size_t size)
{
	struct img_check res = { 0 };
	struct img *img = calloc(1, sizeof(*img));

	if (!img)
		abort();
	img->refcnt = 1;
	img->path = strdup(path);
	img->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (!img->path || img->fd < 0)
		abort();
	img->file_size = size;
	img->sector_size = img->phys_sector_size = 512;
	img->drv = &asparse_driver;
	(void)asparse_driver.check(img, false, &res);
	if (img->priv)		/* a checker must not leave state behind */
		abort();
	img->drv = NULL;	/* ->open never ran: nothing for ->close */
	img_unref(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_info inf;
	struct img *img;
	int fd;

	if (!path)
		setup();
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		abort();
	if (size && pwrite_full(fd, data, size, 0) < 0)
		abort();
	close(fd);
	run_check(size);
	if (img_open(path, &asparse_driver, false, &img) < 0)
		return 0;
	if (img_info_get(img, &inf) == 0)
		img_info_clear(&inf);
	read_range(img, 0, READ_HEAD);
	for (unsigned i = 1; i <= SAMPLES && img->size; i++) {
		uint64_t off = img->size / SAMPLES * (i - 1) +
			       (img->size / SAMPLES / 2) * (i & 1);

		read_range(img, off, 65536 + 4096 * i);
	}
	img_unref(img);
	return 0;
}
