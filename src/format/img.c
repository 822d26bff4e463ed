// SPDX-License-Identifier: LGPL-2.1-or-later
/* img.c: opening an image by content, references, parent descriptions. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "compiler.h"
#include "img.h"
#include "imglock.h"
#include "io.h"
#include "log.h"

const struct img_driver *img_driver_find(const char *name)
{
	for (size_t i = 0; i < img_ndrivers; i++)
		if (!strcmp(img_drivers[i]->name, name))
			return img_drivers[i];
	return NULL;
}

/* Read the probe window of an open file; *head and *tail are malloc'd. */
static int probe_fd(int fd, const char *path, uint64_t size,
		    const struct img_driver **best)
{
	struct img_probe p = { .path = path, .file_size = size };
	uint8_t *head, tail[IMG_PROBE_TAIL];
	int best_score = 0, r;

	p.head_len = (size_t)MIN(size, (uint64_t)IMG_PROBE_HEAD);
	p.tail_len = (size_t)MIN(size, (uint64_t)IMG_PROBE_TAIL);
	head = malloc(p.head_len ? p.head_len : 1);
	if (!head)
		return -ENOMEM;
	r = pread_full(fd, head, p.head_len, 0);
	if (r == 0)
		r = pread_full(fd, tail, p.tail_len, size - p.tail_len);
	if (r < 0) {
		free(head);
		return r;
	}
	p.head = head;
	p.tail = tail;
	*best = NULL;
	for (size_t i = 0; i < img_ndrivers; i++) {
		int s = img_drivers[i]->probe(&p);

		if (s > best_score) {
			best_score = s;
			*best = img_drivers[i];
		}
	}
	free(head);
	return 0;
}

const struct img_driver *img_probe_fd(int fd, const char *path)
{
	const struct img_driver *drv = NULL;
	struct stat st;

	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		probe_fd(fd, path, (uint64_t)st.st_size, &drv);
	return drv;
}

const struct img_driver *img_probe_file(const char *path)
{
	const struct img_driver *drv;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	drv = img_probe_fd(fd, path);
	close(fd);
	return drv;
}

int img_open(const char *path, const struct img_driver *drv, bool writable,
	     struct img **out)
{
	/* Base layers are only ever opened read-only. */
	int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);

	if (fd < 0) {
		int r = -errno;

		log_err("%s: cannot open: %s", path, strerror(-r));
		return r;
	}
	return img_open_fd(fd, path, drv, writable, out);
}

int img_open_fd(int fd, const char *path, const struct img_driver *drv,
		bool writable, struct img **out)
{
	struct img *img;
	struct stat st;
	int r;

	img = calloc(1, sizeof(*img));
	if (!img) {
		close(fd);
		return -ENOMEM;
	}
	img->fd = fd;
	img->refcnt = 1;
	img->writable = writable;
	img->path = strdup(path);
	if (!img->path) {
		r = -ENOMEM;
		goto fail;
	}
	if (fstat(img->fd, &st) < 0) {
		r = -errno;
		log_err("%s: cannot stat: %s", path, strerror(-r));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		log_err("%s: not a regular file", path);
		goto fail;
	}
	img->dev = st.st_dev;
	img->ino = st.st_ino;
	img->file_size = (uint64_t)st.st_size;
	if (!drv) {
		r = probe_fd(img->fd, path, img->file_size, &drv);
		if (r < 0) {
			log_err("%s: cannot read: %s", path, strerror(-r));
			goto fail;
		}
		if (!drv) {
			r = -EINVAL;
			log_err("%s: not a disk image (unknown format)", path);
			goto fail;
		}
	}
	img->drv = drv;
	img->sector_size = 512;
	img->phys_sector_size = 512;
	/*
	 * A writable image is locked before the driver's open, which may
	 * already write (a repair): qemu and other layerfs see the writer.
	 * Read locks are the caller's (imglock_chainset_take, the CLI).
	 */
	r = writable ? imglock_img_take(img, IMGLOCK_WRITE) : 0;
	if (r == 0)
		r = drv->open(img);
	if (r < 0) {
		img->drv = NULL;	/* nothing for ->close to undo */
		goto fail;
	}
	if (writable && !img->writable)	/* the driver declined: read only */
		imglock_img_take(img, IMGLOCK_READ);
	if (img->writable)	/* as ->open left it (a repair may cut it) */
		img->end = fstat(img->fd, &st) == 0 ? (uint64_t)st.st_size
						    : img->file_size;
	if (!img->sector_size)
		img->sector_size = 512;
	if (!img->phys_sector_size)
		img->phys_sector_size = img->sector_size;
	DBG(FORMAT, "%s: opened as %s %s, %llu bytes", path, drv->name,
	    img->subtype, (unsigned long long)img->size);
	*out = img;
	return 0;
fail:
	img_unref(img);
	return r;
}

struct img *img_ref(struct img *img)
{
	__atomic_add_fetch(&img->refcnt, 1, __ATOMIC_RELAXED);
	return img;
}

void img_unref(struct img *img)
{
	if (!img || __atomic_sub_fetch(&img->refcnt, 1, __ATOMIC_ACQ_REL))
		return;
	if (img->drv && img->drv->close)
		img->drv->close(img);
	if (img->fd >= 0)
		close(img->fd);
	free(img->path);
	free(img);
}

int img_info_get(struct img *img, struct img_info *out)
{
	int r;

	memset(out, 0, sizeof(*out));
	if (!img->drv || !img->drv->info)
		return 0;
	r = img->drv->info(img, out);
	if (r < 0)
		img_info_clear(out);
	return r;
}

void img_info_add_fact(struct img_info *inf, const char *key, uint64_t value)
{
	if (inf->nfacts >= IMG_INFO_FACTS_MAX)
		return;
	inf->facts[inf->nfacts].key = key;
	inf->facts[inf->nfacts].value = value;
	inf->nfacts++;
}

void img_info_clear(struct img_info *inf)
{
	for (size_t i = 0; i < inf->nsnapshots; i++) {
		free(inf->snapshots[i].id);
		free(inf->snapshots[i].name);
	}
	free(inf->snapshots);
	memset(inf, 0, sizeof(*inf));
}

void img_parent_clear(struct img_parent *p)
{
	for (unsigned i = 0; i < p->nrefs; i++)
		free(p->refs[i].path);
	memset(p, 0, sizeof(*p));
}

int img_parent_add_ref(struct img_parent *p, enum img_ref_kind kind,
		       const char *what, const char *path)
{
	char *copy;

	if (p->nrefs >= IMG_PARENT_MAX_REFS)
		return -E2BIG;
	copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	p->refs[p->nrefs].kind = kind;
	p->refs[p->nrefs].what = what;
	p->refs[p->nrefs].path = copy;
	p->nrefs++;
	return 0;
}

int img_map(struct img *img, uint64_t off, uint64_t len,
	    struct img_extent *ext)
{
	int r;

	if (off >= img->size || !len)
		return -EINVAL;
	len = MIN(len, img->size - off);
	ext->fd = img->fd;
	ext->host_off = IMG_HOST_NONE;
	r = img->drv->map_extent(img, off, len, ext);
	if (r < 0)
		return r;
	if (ext->len == 0 || ext->len > len) {
		log_err("%s: %s driver returned a bad extent (%llu of %llu)",
			img->path, img->drv->name,
			(unsigned long long)ext->len, (unsigned long long)len);
		return -EIO;
	}
	return 0;
}

int img_write_sync(struct img *img, const void *buf, size_t n, uint64_t off,
		   const char *what)
{
	int r = pwrite_full(img->fd, buf, n, off);

	if (r == 0 && fdatasync(img->fd) < 0)
		r = -errno;
	if (r < 0)
		log_err("%s: %s: cannot write %s at %llu: %s", img->drv->name,
			img->path, what, (unsigned long long)off,
			strerror(-r));
	return r;
}

int img_reopen(struct img *img, const char *what)
{
	const char *name = img->drv->name;
	struct stat st;
	int r;

	img->drv->close(img);
	img->priv = NULL;
	if (fstat(img->fd, &st) < 0) {
		r = -errno;
	} else {
		img->file_size = (uint64_t)st.st_size;
		r = img->drv->open(img);
	}
	if (r == 0 && img->writable)	/* the rewrite may have cut it */
		__atomic_store_n(&img->end,
				 fstat(img->fd, &st) == 0 ? (uint64_t)st.st_size
							  : img->file_size,
				 __ATOMIC_RELEASE);
	if (r < 0) {
		log_err("%s: %s: cannot reopen after the %s change: %s", name,
			img->path, what, strerror(-r));
		img->drv = NULL;	/* unusable: only img_unref is left */
	}
	return r;
}

void img_end_grow(struct img *img, uint64_t end)
{
	uint64_t cur = __atomic_load_n(&img->end, __ATOMIC_RELAXED);

	/* release: a checker that sees the new end sees the file as long */
	while (end > cur &&
	       !__atomic_compare_exchange_n(&img->end, &cur, end, false,
					    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		;
}

bool img_broken_get(const struct img *img)
{
	return __atomic_load_n(&img->broken, __ATOMIC_ACQUIRE);
}

bool img_broken_set(struct img *img)
{
	return !__atomic_exchange_n(&img->broken, true, __ATOMIC_ACQ_REL);
}

int img_health_check(struct img *img)
{
	uint64_t end;
	struct stat st;

	if (!img->writable)
		return 0;
	if (img_broken_get(img))
		return -EIO;
	/* the end first: it is raised only after the file grew to it */
	end = __atomic_load_n(&img->end, __ATOMIC_ACQUIRE);
	if (fstat(img->fd, &st) < 0) {
		if (img_broken_set(img))
			log_err("%s: %s: cannot stat the file (%s): writes stop",
				img->drv->name, img->path, strerror(errno));
		return -EIO;
	}
	/* st_dev/st_ino of the fd never change: a replacement (rename
	 * over the name) or a removal shows as st_nlink 0 */
	if (st.st_nlink == 0) {
		if (img_broken_set(img))
			log_err("%s: %s: the file changed behind layerfs "
				"(replaced or removed): writes stop",
				img->drv->name, img->path);
		return -EIO;
	}
	if ((uint64_t)st.st_size < end) {
		if (img_broken_set(img))
			log_err("%s: %s: the file changed behind layerfs "
				"(size %llu, expected at least %llu): writes "
				"stop", img->drv->name, img->path,
				(unsigned long long)st.st_size,
				(unsigned long long)end);
		return -EIO;
	}
	return 0;
}

int img_health_poll(struct img *img)
{
	struct timespec ts;
	uint64_t now, last;

	if (img_broken_get(img))
		return -EIO;
	if (!img->writable)
		return 0;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);	/* vDSO: no syscall */
	now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	last = __atomic_load_n(&img->polled, __ATOMIC_RELAXED);
	if (now == last ||
	    !__atomic_compare_exchange_n(&img->polled, &last, now, false,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return 0;	/* checked in this tick, or another thread is */
	return img_health_check(img);
}

void img_check_report(struct img_check *res, bool error, const char *mod,
		      const char *path, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (error) {
		log_err("%s: %s: %s", mod, path, msg);
		res->errors++;
	} else {
		log_warn("%s: %s: %s", mod, path, msg);
		res->warnings++;
	}
}
