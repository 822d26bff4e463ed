// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-common.h: the harness the libFuzzer targets share (each target is
 * one translation unit, so everything here is static): quiet logging, the
 * input written to a file in a private directory, ->check on a file that
 * ->open never saw, and reads the way the chain layer does them.
 */
#ifndef LAYERFS_FUZZ_COMMON_H
#define LAYERFS_FUZZ_COMMON_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "img.h"
#include "imglock.h"
#include "io.h"
#include "log.h"

#define FUZZ_CHUNK (256u << 10)	/* read buffer */
#define FUZZ_SAMPLES 32u		/* sampled offsets across the disk */

static char *fuzz_dir;		/* private directory, removed at exit */
static char *fuzz_path;		/* fuzz_dir/<file name> */
static uint8_t *fuzz_buf;	/* FUZZ_CHUNK bytes */

/*
 * img.c takes an image lock (src/chain/lockset.c, which needs the whole
 * chain layer); a fuzz target opens one private read-only file, so no lock.
 */
int imglock_img_take(struct img *img, enum imglock_mode mode)
{
	(void)img;
	(void)mode;
	return 0;
}

static inline void fuzz_quiet_sink(enum log_level lvl, const char *msg)
{
	(void)lvl;
	(void)msg;
}

/* Log as NAME, and only with FUZZ_VERBOSE set. */
static inline void fuzz_log_init(const char *name)
{
	log_init(name);
	if (!getenv("FUZZ_VERBOSE"))
		log_set_sink(fuzz_quiet_sink);
}

static inline void fuzz_file_cleanup(void)
{
	unlink(fuzz_path);
	rmdir(fuzz_dir);
	free(fuzz_path);
	free(fuzz_dir);
	free(fuzz_buf);
}

/*
 * Once per process: fuzz_path is FILE in a new /dev/shm (else /tmp)
 * directory named NAME-XXXXXX, fuzz_buf is allocated, both go at exit,
 * and logging is set up as NAME.
 */
static inline void fuzz_file_setup(const char *name, const char *file)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	if (asprintf(&fuzz_dir, "%s/%s-XXXXXX", base, name) < 0 ||
	    !mkdtemp(fuzz_dir))
		abort();
	if (asprintf(&fuzz_path, "%s/%s", fuzz_dir, file) < 0)
		abort();
	fuzz_buf = malloc(FUZZ_CHUNK);
	if (!fuzz_buf)
		abort();
	atexit(fuzz_file_cleanup);
	fuzz_log_init(name);
}

/* Replace fuzz_path's contents with data. */
static inline void fuzz_file_write(const uint8_t *data, size_t size)
{
	int fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0)
		abort();
	if (size && pwrite_full(fd, data, size, 0) < 0)
		abort();
	close(fd);
}

/* ->check on fuzz_path as `layerimg check` runs it: ->open never ran. */
static inline void fuzz_check_run(const struct img_driver *drv, size_t size)
{
	struct img_check res = { 0 };
	struct img *img = calloc(1, sizeof(*img));

	if (!img)
		abort();
	img->refcnt = 1;
	img->path = strdup(fuzz_path);
	img->fd = open(fuzz_path, O_RDONLY | O_CLOEXEC);
	if (!img->path || img->fd < 0)
		abort();
	img->file_size = size;
	img->sector_size = img->phys_sector_size = 512;
	img->drv = drv;
	(void)drv->check(img, false, &res);
	if (img->priv)		/* a checker must not leave state behind */
		abort();
	img->drv = NULL;	/* ->open never ran: nothing for ->close */
	img_unref(img);
}

/* Read [off, off + n) of one image the way the chain layer does. */
static inline void fuzz_read_range(struct img *img, uint64_t off, uint64_t n)
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
		c = (size_t)(e.len < FUZZ_CHUNK ? e.len : FUZZ_CHUNK);
		if (e.type == IMG_EXT_DATA) {
			int r = e.host_off == IMG_HOST_NONE ?
				img->drv->read(img, fuzz_buf, c, off) :
				pread_full(e.fd, fuzz_buf, c, e.host_off);

			if (r < 0)
				return;
		}
		off += c;
	}
}

/* The I-th (1..FUZZ_SAMPLES) sampled offset of an image, and its length. */
static inline uint64_t fuzz_sample_off(const struct img *img, unsigned i)
{
	return img->size / FUZZ_SAMPLES * (i - 1) +
	       (img->size / FUZZ_SAMPLES / 2) * (i & 1);
}

static inline uint64_t fuzz_sample_len(unsigned i)
{
	return 65536 + 4096 * i;
}

#endif
