// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * raw.c: raw disk images and ISO 9660 images (read as raw).
 *
 * Raw has no magic, so it is the fallback: any file whose size is a
 * non-zero multiple of 512 bytes.  Everything in the file is data.
 *
 * Writing goes through raw_rw_driver, the same driver with ->write, ->zero
 * and ->flush, which is not in the probe registry: a program opens a raw
 * file writable on purpose (img_open(path, &raw_rw_driver, true, ...), as
 * `layerimg commit` does for a raw base), while the daemon's -o rw keeps
 * raw images read-only (raw_driver has no ->write).  The file is the disk,
 * so a write is a pwrite at the same offset and a flush is fdatasync.  ->zero punches a hole (the range
 * reads as zeros and frees its space), falls back to FALLOC_FL_ZERO_RANGE
 * and then to written zeros where the file system has neither.  The file
 * never changes size.  An ISO 9660 image stays read-only.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "img.h"
#include "io.h"
#include "log.h"

#define ISO_PVD_OFF 0x8001	/* "CD001" in the primary volume descriptor */
#define RAW_ZERO_BUF 65536

static int raw_probe(const struct img_probe *p)
{
	if (p->file_size == 0 || p->file_size % 512)
		return 0;
	if (p->head_len >= ISO_PVD_OFF + 5 &&
	    !memcmp(p->head + ISO_PVD_OFF, "CD001", 5))
		return 2;
	return 1;
}

static int raw_open(struct img *img)
{
	if (img->file_size >= ISO_PVD_OFF + 5) {
		char magic[5];

		if (pread(img->fd, magic, 5, ISO_PVD_OFF) == 5 &&
		    !memcmp(magic, "CD001", 5)) {
			strcpy(img->subtype, "iso");
			img->writable = false;
		}
	}
	if (!img->subtype[0])
		strcpy(img->subtype, "raw");
	img->size = img->file_size;
	return 0;
}

static int raw_map_extent(struct img *img __unused, uint64_t off,
			  uint64_t len, struct img_extent *ext)
{
	ext->type = IMG_EXT_DATA;
	ext->len = len;
	ext->host_off = off;
	return 0;
}

static int raw_write_check(struct img *img, uint64_t off, uint64_t n)
{
	if (!img->writable)
		return -EROFS;
	if (!n || !range_within(off, n, img->size))
		return -EINVAL;
	return 0;
}

static int raw_write(struct img *img, const void *buf, size_t n, uint64_t off,
		     const struct img_below *below __unused)
{
	int r = raw_write_check(img, off, n);

	if (r < 0)
		return r;
	r = pwrite_full(img->fd, buf, n, off);
	if (r < 0)
		log_err("raw: %s: write at %llu failed: %s", img->path,
			(unsigned long long)off, strerror(-r));
	return r;
}

static int raw_flush(struct img *img)
{
	if (!img->writable)
		return 0;
	if (fdatasync(img->fd) < 0)
		return log_err_ret(-errno, "raw: %s: fdatasync: %s", img->path,
				   strerror(errno));
	return 0;
}

/* [off, off + n) reads as zeros: a hole where the file system has them. */
static int raw_zero(struct img *img, uint64_t off, uint64_t n,
		    const struct img_below *below __unused)
{
	static const uint8_t zeros[RAW_ZERO_BUF];
	int r = raw_write_check(img, off, n);

	if (r < 0)
		return r;
	if (fallocate(img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)n) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != ENOSYS)
		return log_err_ret(-errno, "raw: %s: punching a hole at %llu: "
				   "%s", img->path, (unsigned long long)off,
				   strerror(errno));
	if (fallocate(img->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
		      (off_t)off, (off_t)n) == 0)
		return 0;
	while (n) {	/* neither: write the zeros */
		size_t k = (size_t)MIN(n, (uint64_t)sizeof(zeros));

		r = pwrite_full(img->fd, zeros, k, off);
		if (r < 0)
			return log_err_ret(r, "raw: %s: writing zeros at %llu: "
					   "%s", img->path,
					   (unsigned long long)off,
					   strerror(-r));
		off += k;
		n -= k;
	}
	return 0;
}

/* A new raw image: sparse (ftruncate), or fully allocated when fixed. */
static int raw_create(const char *path, const struct img_create_opts *o)
{
	int fd, r = 0;

	if (!o->size || o->size % 512)
		return log_err_ret(-EINVAL, "raw: %s: size must be a non-zero "
				   "multiple of 512 (%llu)", path,
				   (unsigned long long)o->size);
	if (o->size > (uint64_t)INT64_MAX)
		return log_err_ret(-EFBIG, "raw: %s: size too large (%llu)",
				   path, (unsigned long long)o->size);
	fd = file_create(path, "raw");
	if (fd < 0)
		return fd;
	if (ftruncate(fd, (off_t)o->size) < 0)
		r = -errno;
	if (r == 0 && o->fixed) {
		r = -posix_fallocate(fd, 0, (off_t)o->size);
		if (r == -EOPNOTSUPP || r == -EINVAL) {
			log_warn("raw: %s: the file system cannot preallocate; "
				 "left sparse", path);
			r = 0;
		}
	}
	return file_create_end(fd, path, r, "raw");
}

const struct img_driver raw_driver = {
	.name = "raw",
	.desc = "raw disk image (also ISO 9660, read-only)",
	.probe = raw_probe,
	.open = raw_open,
	.map_extent = raw_map_extent,
	.create = raw_create,
};

/* raw_driver with writes; never probed (see the top of this file) */
const struct img_driver raw_rw_driver = {
	.name = "raw",
	.desc = "raw disk image, opened for writing",
	.probe = raw_probe,
	.open = raw_open,
	.map_extent = raw_map_extent,
	.write = raw_write,
	.flush = raw_flush,
	.zero = raw_zero,
	.create = raw_create,
};
