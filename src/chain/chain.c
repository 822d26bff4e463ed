// SPDX-License-Identifier: LGPL-2.1-or-later
/* chain.c: reading through the layers of a resolved chain. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "checked.h"
#include "compiler.h"
#include "io.h"
#include "log.h"

/* Resolve a run through layers[first..]; see chain_map. */
static int map_from(struct chain *c, unsigned first, uint64_t off,
		    uint64_t len, struct chain_extent *e)
{
	uint64_t want;

	if (off >= c->size || !len)
		return -EINVAL;
	want = MIN(len, c->size - off);
	for (unsigned i = first; i < c->depth; i++) {
		struct img *img = c->layers[i].img;
		struct img_extent ext;
		int r;

		if (off >= img->size)
			break;	/* a smaller parent reads as zeros */
		want = MIN(want, img->size - off);
		r = img_map(img, off, want, &ext);
		if (r < 0)
			return r;
		switch (ext.type) {
		case IMG_EXT_DATA:
			e->len = ext.len;
			e->layer = i;
			e->allocated = true;
			if (ext.host_off == IMG_HOST_NONE) {
				e->type = CHAIN_EXT_READ;
				e->fd = -1;
				e->host_off = 0;
			} else {
				e->type = CHAIN_EXT_HOST;
				e->fd = ext.fd;
				e->host_off = ext.host_off;
			}
			return 0;
		case IMG_EXT_ZERO:
			e->len = ext.len;
			e->layer = i;
			e->type = CHAIN_EXT_ZERO;
			e->allocated = true;
			return 0;
		case IMG_EXT_UNALLOC:
			want = ext.len;	/* ask the layer below for this run */
			break;
		}
	}
	e->len = want;
	e->layer = c->depth;
	e->type = CHAIN_EXT_ZERO;
	e->allocated = false;
	return 0;
}

int chain_map(struct chain *c, uint64_t off, uint64_t len,
	      struct chain_extent *e)
{
	return map_from(c, 0, off, len, e);
}

int chain_read_extent(struct chain *c, const struct chain_extent *e,
		      void *buf, size_t n, uint64_t off)
{
	struct img *img;
	int r;

	switch (e->type) {
	case CHAIN_EXT_HOST:
		r = pread_full(e->fd, buf, n, e->host_off);
		if (r == -ENODATA) {
			img = c->layers[e->layer].img;
			log_err("%s: data at %llu lies past the end of the file",
				img->path, (unsigned long long)e->host_off);
			return -EIO;
		}
		return r;
	case CHAIN_EXT_READ:
		img = c->layers[e->layer].img;
		return img->drv->read(img, buf, n, off);
	case CHAIN_EXT_ZERO:
		memset(buf, 0, n);
		return 0;
	}
	return -EINVAL;
}

/* Read through layers[first..]; past the chain's end reads as zeros. */
static int pread_from(struct chain *c, unsigned first, void *buf, size_t n,
		      uint64_t off)
{
	uint8_t *p = buf;

	while (n) {
		struct chain_extent e;
		size_t chunk;
		int r;

		if (off >= c->size) {
			memset(p, 0, n);
			return 0;
		}
		r = map_from(c, first, off, n, &e);
		if (r < 0)
			return r;
		chunk = (size_t)MIN((uint64_t)n, e.len);
		r = chain_read_extent(c, &e, p, chunk, off);
		if (r < 0)
			return r;
		p += chunk;
		n -= chunk;
		off += chunk;
	}
	return 0;
}

int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off)
{
	return pread_from(c, 0, buf, n, off);
}

/* The layers below the top, for the top driver's copy-on-write. */
static int below_read(void *ctx, void *buf, size_t n, uint64_t off)
{
	return pread_from(ctx, 1, buf, n, off);
}

static int check_write(struct chain *c, uint64_t off, uint64_t n)
{
	if (!c->writable)
		return -EROFS;
	if (!range_within(off, n, c->size))
		return -ENOSPC;
	return 0;
}

/*
 * Write [off, off + n) to the top image.  Whole sectors go straight to the
 * driver; a write that starts or ends inside a sector reads the sectors it
 * touches through the chain, merges, and writes them whole, serialized by
 * rmw_lock so two such writes to one sector cannot lose each other.
 */
static int write_locked(struct chain *c, const void *buf, size_t n,
			uint64_t off)
{
	struct img *top = c->layers[0].img;
	const struct img_below below = { .read = below_read, .ctx = c };
	uint64_t ss = top->sector_size, a0, a1;
	uint8_t *bounce;
	int r;

	if (off % ss == 0 && n % ss == 0)
		return top->drv->write(top, buf, n, off, &below);
	a0 = off - off % ss;
	a1 = MIN(c->size, (off + n + ss - 1) / ss * ss);
	bounce = malloc(a1 - a0);
	if (!bounce)
		return -ENOMEM;
	pthread_mutex_lock(&c->rmw_lock);
	r = chain_pread(c, bounce, a1 - a0, a0);
	if (r == 0) {
		memcpy(bounce + (off - a0), buf, n);
		r = top->drv->write(top, bounce, a1 - a0, a0, &below);
	}
	pthread_mutex_unlock(&c->rmw_lock);
	free(bounce);
	return r;
}

int chain_pwrite(struct chain *c, const void *buf, size_t n, uint64_t off)
{
	int r;

	if (!n)
		return 0;
	r = check_write(c, off, n);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&c->lock);
	r = write_locked(c, buf, n, off);
	pthread_rwlock_unlock(&c->lock);
	return r;
}

int chain_zero(struct chain *c, uint64_t off, uint64_t n)
{
	static const uint8_t zeros[65536];
	struct img *top;
	const struct img_below below = { .read = below_read, .ctx = c };
	uint64_t ss, a0, a1;
	int r;

	if (!n)
		return 0;
	r = check_write(c, off, n);
	if (r < 0)
		return r;
	top = c->layers[0].img;
	ss = top->sector_size;
	a0 = (off + ss - 1) / ss * ss;		/* whole sectors inside */
	a1 = (off + n) / ss * ss;
	pthread_rwlock_rdlock(&c->lock);
	if (a0 >= a1) {				/* inside one sector */
		a0 = a1 = off + n;
	} else if (top->drv->zero) {
		r = top->drv->zero(top, a0, a1 - a0, &below);
	} else {
		for (uint64_t p = a0; p < a1 && r == 0;) {
			size_t k = (size_t)MIN((uint64_t)sizeof(zeros), a1 - p);

			r = top->drv->write(top, zeros, k, p, &below);
			p += k;
		}
	}
	/* the partial sectors at either end */
	if (r == 0 && off < a0)
		r = write_locked(c, zeros, (size_t)MIN(a0 - off, n), off);
	if (r == 0 && a1 < off + n && a1 >= a0)
		r = write_locked(c, zeros, (size_t)(off + n - a1), a1);
	pthread_rwlock_unlock(&c->lock);
	return r;
}

int chain_flush(struct chain *c)
{
	struct img *top = c->layers[0].img;
	int r = 0;

	if (!c->writable)
		return 0;
	pthread_rwlock_rdlock(&c->lock);
	if (top->drv->flush)
		r = top->drv->flush(top);
	pthread_rwlock_unlock(&c->lock);
	return r;
}

void chain_free(struct chain *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->depth; i++) {
		img_unref(c->layers[i].img);
		free(c->layers[i].parent_ref);
	}
	free(c->layers);
	free(c->name);
	free(c->top_path);
	pthread_rwlock_destroy(&c->lock);
	pthread_mutex_destroy(&c->rmw_lock);
	free(c);
}
