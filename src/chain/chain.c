// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * chain.c: reading and writing through the layers of a resolved chain, and
 * the chain's shape (see "Shape and locking" in chain.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "chain-priv.h"
#include "checked.h"
#include "compiler.h"
#include "io.h"
#include "log.h"

/* The shape lock and what it guards. */
struct chain_shape {
	pthread_rwlock_t lock;	/* readers: load cur; writers: swap it */
	struct chain_view *cur;	/* owned reference: the current shape */
	pthread_mutex_t change_lock;	/* one shape change at a time */
	pthread_mutex_t rmw_lock;	/* serializes sub-sector writes */
};

static void layers_free(struct chain_layer *layers, unsigned depth)
{
	for (unsigned i = 0; i < depth; i++) {
		img_unref(layers[i].img);
		free(layers[i].parent_ref);
	}
	free(layers);
}

static void view_free(struct chain_view *v)
{
	layers_free(v->layers, v->depth);
	img_unref(v->retired);
	pthread_mutex_destroy(&v->retired_lock);
	free(v);
}

/* A view with one reference, owning layers (depth of them). */
static struct chain_view *view_new(struct chain_layer *layers,
				   unsigned depth, uint64_t size)
{
	struct chain_view *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	if (pthread_mutex_init(&v->retired_lock, NULL) != 0) {
		free(v);
		return NULL;
	}
	v->layers = layers;
	v->depth = depth;
	v->size = size;
	v->refcnt = 1;
	return v;
}

int chain_shape_init(struct chain *c)
{
	struct chain_shape *s = calloc(1, sizeof(*s));
	pthread_rwlockattr_t attr;
	int r = -ENOMEM;

	if (!s)
		return -ENOMEM;
	if (pthread_rwlockattr_init(&attr) != 0)
		goto fail_free;
	/* a waiting shape change stops new readers: it cannot starve */
	pthread_rwlockattr_setkind_np(&attr,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (pthread_rwlock_init(&s->lock, &attr) != 0) {
		pthread_rwlockattr_destroy(&attr);
		goto fail_free;
	}
	pthread_rwlockattr_destroy(&attr);
	if (pthread_mutex_init(&s->change_lock, NULL) != 0)
		goto fail_rw;
	if (pthread_mutex_init(&s->rmw_lock, NULL) != 0)
		goto fail_change;
	s->cur = view_new(c->layers, c->depth, c->size);
	if (!s->cur)
		goto fail_rmw;
	c->shape = s;
	return 0;
fail_rmw:
	pthread_mutex_destroy(&s->rmw_lock);
fail_change:
	pthread_mutex_destroy(&s->change_lock);
fail_rw:
	pthread_rwlock_destroy(&s->lock);
fail_free:
	free(s);
	return r;
}

struct chain_view *chain_view_get(struct chain *c)
{
	struct chain_shape *s = c->shape;
	struct chain_view *v;

	pthread_rwlock_rdlock(&s->lock);
	v = s->cur;
	__atomic_add_fetch(&v->refcnt, 1, __ATOMIC_RELAXED);
	pthread_rwlock_unlock(&s->lock);
	return v;
}

void chain_view_put(struct chain_view *v)
{
	if (!v || __atomic_sub_fetch(&v->refcnt, 1, __ATOMIC_ACQ_REL))
		return;
	view_free(v);
}

/* Resolve a run through layers[first..] of v; see chain_view_map. */
static int map_from(const struct chain_view *v, unsigned first, uint64_t off,
		    uint64_t len, struct chain_extent *e)
{
	uint64_t want;

	if (off >= v->size || !len)
		return -EINVAL;
	want = MIN(len, v->size - off);
	for (unsigned i = first; i < v->depth; i++) {
		struct img *img = v->layers[i].img;
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
	e->layer = v->depth;
	e->type = CHAIN_EXT_ZERO;
	e->allocated = false;
	return 0;
}

int chain_view_map(const struct chain_view *v, uint64_t off, uint64_t len,
		   struct chain_extent *e)
{
	return map_from(v, 0, off, len, e);
}

int chain_view_read_extent(const struct chain_view *v,
			   const struct chain_extent *e, void *buf, size_t n,
			   uint64_t off)
{
	struct img *img;
	int r;

	switch (e->type) {
	case CHAIN_EXT_HOST:
		r = pread_full(e->fd, buf, n, e->host_off);
		if (r == -ENODATA) {
			img = v->layers[e->layer].img;
			log_err("%s: data at %llu lies past the end of the file",
				img->path, (unsigned long long)e->host_off);
			return -EIO;
		}
		return r;
	case CHAIN_EXT_READ:
		img = v->layers[e->layer].img;
		return img->drv->read(img, buf, n, off);
	case CHAIN_EXT_ZERO:
		memset(buf, 0, n);
		return 0;
	}
	return -EINVAL;
}

/* Read through layers[first..] of v; past the chain's end reads as zeros. */
static int pread_from(const struct chain_view *v, unsigned first, void *buf,
		      size_t n, uint64_t off)
{
	uint8_t *p = buf;

	while (n) {
		struct chain_extent e;
		size_t chunk;
		int r;

		if (off >= v->size) {
			memset(p, 0, n);
			return 0;
		}
		r = map_from(v, first, off, n, &e);
		if (r < 0)
			return r;
		chunk = (size_t)MIN((uint64_t)n, e.len);
		r = chain_view_read_extent(v, &e, p, chunk, off);
		if (r < 0)
			return r;
		p += chunk;
		n -= chunk;
		off += chunk;
	}
	return 0;
}

int chain_view_pread(const struct chain_view *v, void *buf, size_t n,
		     uint64_t off)
{
	return pread_from(v, 0, buf, n, off);
}

int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off)
{
	struct chain_view *v = chain_view_get(c);
	int r = pread_from(v, 0, buf, n, off);

	chain_view_put(v);
	return r;
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
 * Write [off, off + n) to the top image of v (the current shape: the
 * caller holds the lock shared).  Whole sectors go straight to the
 * driver; a write that starts or ends inside a sector reads the sectors it
 * touches through the chain, merges, and writes them whole, serialized by
 * rmw_lock so two such writes to one sector cannot lose each other.
 */
static int write_locked(struct chain *c, struct chain_view *v,
			const void *buf, size_t n, uint64_t off)
{
	struct img *top = v->layers[0].img;
	const struct img_below below = { .read = below_read, .ctx = v };
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
	pthread_mutex_lock(&c->shape->rmw_lock);
	r = pread_from(v, 0, bounce, a1 - a0, a0);
	if (r == 0) {
		memcpy(bounce + (off - a0), buf, n);
		r = top->drv->write(top, bounce, a1 - a0, a0, &below);
	}
	pthread_mutex_unlock(&c->shape->rmw_lock);
	free(bounce);
	return r;
}

int chain_pwrite(struct chain *c, const void *buf, size_t n, uint64_t off)
{
	struct chain_shape *s = c->shape;
	int r;

	if (!n)
		return 0;
	r = check_write(c, off, n);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&s->lock);
	r = img_health_poll(s->cur->layers[0].img);
	if (r == 0)
		r = write_locked(c, s->cur, buf, n, off);
	pthread_rwlock_unlock(&s->lock);
	return r;
}

static int zero_locked(struct chain *c, struct chain_view *v, uint64_t off,
		       uint64_t n)
{
	static const uint8_t zeros[65536];
	struct img *top = v->layers[0].img;
	const struct img_below below = { .read = below_read, .ctx = v };
	uint64_t ss = top->sector_size, a0, a1;
	int r = 0;

	a0 = (off + ss - 1) / ss * ss;		/* whole sectors inside */
	a1 = (off + n) / ss * ss;
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
		r = write_locked(c, v, zeros, (size_t)MIN(a0 - off, n), off);
	if (r == 0 && a1 < off + n && a1 >= a0)
		r = write_locked(c, v, zeros, (size_t)(off + n - a1), a1);
	return r;
}

int chain_zero(struct chain *c, uint64_t off, uint64_t n)
{
	struct chain_shape *s = c->shape;
	int r;

	if (!n)
		return 0;
	r = check_write(c, off, n);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&s->lock);
	r = img_health_poll(s->cur->layers[0].img);
	if (r == 0)
		r = zero_locked(c, s->cur, off, n);
	pthread_rwlock_unlock(&s->lock);
	return r;
}

/*
 * A writable top's flush, with its file checked before (no metadata
 * into a file that changed behind us) and after (what was synced went
 * to the file the chain reads); see img_health_check.
 */
static int flush_one(struct img *img)
{
	int r;

	if (!img->drv->flush)
		return 0;
	r = img_health_check(img);
	if (r == 0)
		r = img->drv->flush(img);
	if (r == 0)
		r = img_health_check(img);
	return r;
}

/* Flush the top v retired, once: then it is let go. */
static int retired_flush(struct chain_view *v)
{
	int r = 0;

	if (!__atomic_load_n(&v->retired, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&v->retired_lock);
	if (v->retired) {
		r = flush_one(v->retired);
		if (r == 0) {
			img_unref(v->retired);
			__atomic_store_n(&v->retired, NULL, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&v->retired_lock);
	return r;
}

int chain_flush(struct chain *c)
{
	struct chain_view *v;
	int r;

	if (!c->writable)
		return 0;
	v = chain_view_get(c);	/* a view, not the lock, across fdatasync */
	r = flush_one(v->layers[0].img);
	if (r == 0)
		r = retired_flush(v);
	chain_view_put(v);
	return r;
}

/* The new shape's layers: top, then old's from drop on (references taken). */
static struct chain_layer *layers_with_top(const struct chain_view *old,
					   struct img *top, unsigned drop)
{
	unsigned depth = 1 + old->depth - drop;
	struct chain_layer *l = calloc(depth, sizeof(*l));

	if (!l)
		return NULL;
	l[0].img = img_ref(top);	/* no tag, no parent reference */
	for (unsigned i = 1; i < depth; i++) {
		const struct chain_layer *o = &old->layers[drop + i - 1];

		l[i] = *o;
		l[i].img = img_ref(o->img);
		l[i].parent_ref = NULL;
		if (o->parent_ref && !(l[i].parent_ref = strdup(o->parent_ref))) {
			layers_free(l, i + 1);
			return NULL;
		}
	}
	return l;
}

int chain_set_top(struct chain *c, struct img *top, unsigned drop)
{
	struct chain_shape *s = c->shape;
	struct chain_view *old, *nv;
	struct chain_layer *l;
	struct img *retired;
	int r;

	if (!top || top->size != c->size || top->sector_size != c->sector_size)
		return log_err_ret(-EINVAL, "%s: %s: not a top for this chain "
				   "(size or sector size)", c->name,
				   top ? top->path : "(none)");
	if (c->writable && (!top->writable || !top->drv->write))
		return log_err_ret(-EROFS, "%s: %s: the new top is not writable",
				   c->name, top->path);
	pthread_mutex_lock(&s->change_lock);
	old = s->cur;		/* stable: only a shape change replaces it */
	if (drop > old->depth) {
		pthread_mutex_unlock(&s->change_lock);
		return log_err_ret(-EINVAL, "%s: cannot drop %u of %u layers",
				   c->name, drop, old->depth);
	}
	l = layers_with_top(old, top, drop);
	nv = l ? view_new(l, 1 + old->depth - drop, c->size) : NULL;
	if (!nv) {
		if (l)
			layers_free(l, 1 + old->depth - drop);
		pthread_mutex_unlock(&s->change_lock);
		return -ENOMEM;
	}
	retired = old->layers[0].img;
	if (c->writable && retired != top)
		nv->retired = img_ref(retired);
	/* exclusive: waits for the writes in flight, then a pointer swap */
	pthread_rwlock_wrlock(&s->lock);
	s->cur = nv;
	c->layers = nv->layers;
	c->depth = nv->depth;
	pthread_rwlock_unlock(&s->lock);
	DBG(CHAIN, "%s: new top %s over %u layer(s)", c->name, top->path,
	    nv->depth - 1);
	chain_view_put(old);	/* the chain's reference */
	/* the old top durable before the caller goes on (no lock held) */
	r = retired_flush(nv);
	if (r < 0)
		log_err("%s: %s: flush of the old top failed: %s", c->name,
			retired->path, strerror(-r));
	pthread_mutex_unlock(&s->change_lock);
	return r;
}

void chain_free(struct chain *c)
{
	if (!c)
		return;
	if (c->shape) {
		chain_view_put(c->shape->cur);
		pthread_rwlock_destroy(&c->shape->lock);
		pthread_mutex_destroy(&c->shape->change_lock);
		pthread_mutex_destroy(&c->shape->rmw_lock);
		free(c->shape);
	} else {
		layers_free(c->layers, c->depth);
	}
	free(c->name);
	free(c->top_path);
	free(c);
}
