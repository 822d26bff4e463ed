// SPDX-License-Identifier: LGPL-2.1-or-later
/* chain.c: reading through the layers of a resolved chain. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "compiler.h"
#include "io.h"
#include "log.h"

int chain_map(struct chain *c, uint64_t off, uint64_t len,
	      struct chain_extent *e)
{
	uint64_t want;

	if (off >= c->size || !len)
		return -EINVAL;
	want = MIN(len, c->size - off);
	for (unsigned i = 0; i < c->depth; i++) {
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

int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off)
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
		r = chain_map(c, off, n, &e);
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
	free(c);
}
