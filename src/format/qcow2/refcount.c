// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/refcount.c: host cluster allocation for a writable qcow2 image.
 *
 * Facts are from qemu's docs/interop/qcow2.txt ("Host cluster
 * management"): a two-level table, a refcount table (contiguous, in the
 * header) of refcount blocks (one cluster each, 1 << refcount_order bits
 * per entry; sub-byte entries start at the least significant bit).  Every
 * order 0..6 is supported.
 *
 * Allocation only ever appends.  open() finds the high-water mark hw: the
 * end of the file, or past the last cluster that any refcount block counts
 * if that is further (a crash can leave counted clusters past the end).
 * Every cluster at or past hw is unused, so a fresh cluster's refcount is
 * set from 0 to 1 without looking at anything else, and a released
 * cluster is never handed out again: a reader that mapped it a moment ago
 * still finds the old bytes there.
 *
 * A step that needs n clusters reserves [hw, hw + n) plus a refcount block
 * for every refcount table entry in the range that has none (placed after
 * the range, and covered by the range, so the loop that places them also
 * covers them).  If the refcount table itself is too small it is replaced
 * by a bigger copy first, in a step of its own after a flush: reserve
 * says so, write.c flushes and calls qcow2_rc_grow.  Nothing here calls
 * back into write.c.  Refcount entries are read and set by codec.c.
 *
 * The refcount table and the refcount blocks a step touches are kept in
 * memory (w->rt, w->rb): a block is read once, changed there, and written
 * back by qcow2_rc_flush at the next flush (write.c gives the
 * order); a new block lives only in memory until then, and so does the
 * table entry naming it.  Blocks are dropped from memory once written.
 * Everything here runs under w->lock.
 */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))

int qcow2_file_sync(struct img *img)
{
	if (fdatasync(img->fd) < 0) {
		int r = -errno;

		return log_err_ret(r, "qcow2: %s: fdatasync failed (%s)",
				   img->path, strerror(-r));
	}
	return 0;
}

/* ---- the refcount blocks in memory (under w->lock) ---- */

bool qcow2_rc_dirty(const struct qcow2_w *w)
{
	for (size_t i = 0; i < w->nrb; i++)
		if (w->rb[i].dirty)
			return true;
	return w->rt_dlo < w->rt_dhi;
}

/* The cached block of refcount table entry t (at rt[t]), loaded on a miss;
 * a fresh one (not on disk yet) is all zeros. */
static int rc_block_get(struct img *img, struct qcow2 *s, const uint64_t *rt,
			uint64_t t, bool fresh, struct qcow2_rblock **out)
{
	struct qcow2_w *w = s->w;
	struct qcow2_rblock *b;
	int r;

	for (size_t i = w->nrb; i-- > 0;) {
		if (w->rb[i].t == t) {
			*out = &w->rb[i];
			return 0;
		}
	}
	if (w->nrb == w->rb_cap) {
		size_t cap = w->rb_cap ? w->rb_cap * 2 : 8;

		b = realloc(w->rb, cap * sizeof(*b));
		if (!b)
			return -ENOMEM;
		w->rb = b;
		w->rb_cap = cap;
	}
	b = &w->rb[w->nrb];
	memset(b, 0, sizeof(*b));
	b->raw = fresh ? calloc(1, s->cluster_size) : malloc(s->cluster_size);
	if (!b->raw)
		return -ENOMEM;
	b->t = t;
	b->off = rt[t];
	b->fresh = b->dirty = fresh;
	if (!fresh) {
		r = pread_full(img->fd, b->raw, s->cluster_size, b->off);
		if (r < 0) {
			free(b->raw);
			return log_err_ret(r == -ENODATA ? -EUCLEAN : r, "qcow2: %s: cannot read refcount block at %llu (%s)",
					   img->path,
					   (unsigned long long)b->off,
					   strerror(-r));
		}
	}
	w->nrb++;
	*out = b;
	return 0;
}

/*
 * Add +1 (fresh: the entries must be 0) or -1 (release: they must not be)
 * to entries [i0, i1) of the refcount block of table entry t, in memory.
 */
static int rc_block_add(struct img *img, struct qcow2 *s, const uint64_t *rt,
			uint64_t t, uint64_t i0, uint64_t i1, bool fresh)
{
	struct qcow2_w *w = s->w;
	unsigned order = w->rc_order;
	struct qcow2_rblock *b;
	int r;

	r = rc_block_get(img, s, rt, t, false, &b);
	if (r < 0)
		return r;
	for (uint64_t i = i0; i < i1; i++) {
		uint64_t v = qcow2_rc_get(b->raw, order, i);

		if (fresh && v != 0)
			return log_err_ret(-EUCLEAN, "qcow2: %s: refcount of an unused cluster is %llu (block %llu, entry %llu)",
					   img->path, (unsigned long long)v,
					   (unsigned long long)b->off,
					   (unsigned long long)i);
		if (!fresh && v == 0)
			return log_err_ret(-EUCLEAN, "qcow2: %s: refcount of a cluster in use is 0 (block %llu, entry %llu)",
					   img->path, (unsigned long long)b->off,
					   (unsigned long long)i);
		qcow2_rc_set(b->raw, order, i, fresh ? v + 1 : v - 1);
	}
	if (i1 > i0)
		b->dirty = true;
	return 0;
}

/* Write the dirty blocks: fresh ones only, or the others only. */
static int rc_write_blocks(struct img *img, struct qcow2 *s, bool fresh)
{
	struct qcow2_w *w = s->w;
	int r;

	for (size_t i = 0; i < w->nrb; i++) {
		struct qcow2_rblock *b = &w->rb[i];

		if (!b->dirty || b->fresh != fresh)
			continue;
		r = pwrite_full(img->fd, b->raw, s->cluster_size, b->off);
		if (r < 0)
			return log_err_ret(r, "qcow2: %s: cannot write refcount block at %llu (%s)",
					   img->path,
					   (unsigned long long)b->off,
					   strerror(-r));
		b->dirty = false;
	}
	return 0;
}

/* Forget the clean blocks (they are on disk as they are in memory). */
static void rc_drop_clean(struct qcow2_w *w)
{
	size_t k = 0;

	for (size_t i = 0; i < w->nrb; i++) {
		if (w->rb[i].dirty) {
			w->rb[k++] = w->rb[i];
			continue;
		}
		free(w->rb[i].raw);
	}
	w->nrb = k;
}

int qcow2_rc_flush(struct img *img, struct qcow2 *s)
{
	struct qcow2_w *w = s->w;
	uint64_t lo = w->rt_dlo, hi = w->rt_dhi;
	bool linked = lo < hi;
	uint8_t *raw;
	int r;

	/* a new block is complete on disk before the table names it */
	r = rc_write_blocks(img, s, true);
	if (r == 0 && linked)
		r = qcow2_file_sync(img);
	if (r < 0)
		return r;
	for (size_t i = 0; i < w->nrb; i++)
		w->rb[i].fresh = false;
	if (linked) {
		raw = malloc((hi - lo) * 8);
		if (!raw)
			return -ENOMEM;
		for (uint64_t t = lo; t < hi; t++)
			put_be64(raw + (t - lo) * 8, w->rt[t]);
		r = pwrite_full(img->fd, raw, (hi - lo) * 8,
				s->h.refcount_table_offset + lo * 8);
		free(raw);
		if (r < 0)
			return log_err_ret(r, "qcow2: %s: cannot write the refcount table (%s)",
					   img->path, strerror(-r));
		w->rt_dlo = w->rt_dhi = 0;
	}
	r = rc_write_blocks(img, s, false);
	if (r == 0)
		rc_drop_clean(w);
	return r;
}

/*
 * Count fresh clusters [p->start, p->end) in the refcount blocks that
 * cover them: with new_blocks, write the plan's new blocks straight to the
 * file (the refcount table grows); without, count them in memory in the
 * blocks that exist (new blocks of the plan are made fresh in memory when
 * fresh_mem, else skipped).  rt is the table the plan was made against.
 */
static int rc_fresh(struct img *img, struct qcow2 *s,
		    const struct qcow2_rc_plan *p, uint64_t *rt,
		    bool new_blocks, bool fresh_mem)
{
	struct qcow2_w *w = s->w;
	uint64_t rbe = w->rb_entries, cs = s->cluster_size, k = 0;
	struct qcow2_rblock *b;
	int r;

	for (uint64_t t = p->start / rbe; t <= (p->end - 1) / rbe; t++) {
		uint64_t lo = MAX(p->start, t * rbe) - t * rbe;
		uint64_t hi = MIN(p->end, (t + 1) * rbe) - t * rbe;

		if (k < p->nblk && p->blk_ti[k] == t) {
			uint64_t at = (p->start + p->nuser + k) * cs;

			k++;
			if (fresh_mem) {
				rt[t] = at;
				w->rt_dlo = w->rt_dlo < w->rt_dhi ?
					MIN(w->rt_dlo, t) : t;
				w->rt_dhi = MAX(w->rt_dhi, t + 1);
				r = rc_block_get(img, s, rt, t, true, &b);
				if (r < 0)
					return r;
				for (uint64_t i = lo; i < hi; i++)
					qcow2_rc_set(b->raw, w->rc_order, i,
						     1);
				continue;
			}
			if (!new_blocks)
				continue;
			memset(w->buf, 0, cs);
			for (uint64_t i = lo; i < hi; i++)
				qcow2_rc_set(w->buf, w->rc_order, i, 1);
			r = pwrite_full(img->fd, w->buf, cs, at);
			if (r < 0)
				return log_err_ret(r, "qcow2: %s: cannot write refcount block at %llu (%s)",
						   img->path,
						   (unsigned long long)at,
						   strerror(-r));
			continue;
		}
		if (new_blocks)
			continue;
		assert(rt[t]);
		r = rc_block_add(img, s, rt, t, lo, hi, true);
		if (r < 0)
			return r;
	}
	return 0;
}

/*
 * Place refcount blocks for [p->start, p->start + p->nuser) against table
 * rt of n entries: one after the range for each entry that has none.
 * 0, 1 if the table is too small, or -ENOMEM.
 */
static int rc_plan(const struct qcow2_w *w, const uint64_t *rt, uint64_t n,
		   struct qcow2_rc_plan *p)
{
	uint64_t rbe = w->rb_entries, t = p->start / rbe, cap = 0;

	assert(p->nuser > 0);
	free(p->blk_ti);
	p->blk_ti = NULL;
	p->nblk = 0;
	p->end = p->start + p->nuser;
	/* end grows as blocks are placed; they are covered in turn */
	for (; t <= (p->end - 1) / rbe; t++) {
		if (t >= n)
			return 1;
		if (rt[t])
			continue;
		if (p->nblk == cap) {
			uint64_t *nb;

			cap = cap ? cap * 2 : 4;
			nb = realloc(p->blk_ti, cap * sizeof(*nb));
			if (!nb)
				return -ENOMEM;
			p->blk_ti = nb;
		}
		p->blk_ti[p->nblk++] = t;
		p->end++;
	}
	return 0;
}

void qcow2_rc_plan_free(struct qcow2_rc_plan *p)
{
	free(p->blk_ti);
	p->blk_ti = NULL;
	p->nblk = 0;
}

/*
 * Replace the refcount table by one of at least min_entries entries,
 * starting from a flushed state (the caller flushed: nothing pending in
 * memory):
 *   new refcount blocks + the new table (its entries name them) + counts
 *   for the new clusters in existing blocks -> barrier -> the header's
 *   two refcount table fields (one 12-byte write inside the first sector)
 *   -> barrier -> release the old table's clusters.
 * A crash before the header write leaks the new clusters; after it, the
 * old table's clusters (still counted) at worst.
 */
int qcow2_rc_grow(struct img *img, struct qcow2 *s, uint64_t min_entries)
{
	struct qcow2_w *w = s->w;
	uint64_t cs = s->cluster_size, per = cs / 8, n, tc = 0;
	uint64_t old_off = s->h.refcount_table_offset;
	uint64_t old_bytes = (uint64_t)s->h.refcount_table_clusters * cs;
	struct qcow2_rc_plan p = { 0 };
	uint64_t *nt = NULL;
	uint8_t *raw = NULL, hdr[sizeof(struct qcow2_header_raw)];
	struct qcow2_header nh;
	int r;

	/* a clean state: every count in memory is on disk */
	assert(!qcow2_rc_dirty(w));
	n = MAX(w->rt_entries * 2, min_entries);
	for (;;) {
		tc = DIV_ROUND_UP(n, per);
		n = tc * per;
		if (tc * cs > QCOW2_MAX_REFTABLE_BYTES) {
			r = log_err_ret(-EFBIG, "qcow2: %s: the refcount table would exceed %u bytes",
					img->path, QCOW2_MAX_REFTABLE_BYTES);
			goto out;
		}
		nt = calloc(n, sizeof(*nt));
		if (!nt) {
			r = -ENOMEM;
			goto out;
		}
		memcpy(nt, w->rt, w->rt_entries * sizeof(*nt));
		p.start = w->hw;
		p.nuser = tc;		/* the table's own clusters */
		r = rc_plan(w, nt, n, &p);
		if (r < 0)
			goto out;
		if (r == 0)
			break;
		free(nt);
		nt = NULL;
		n *= 2;
	}
	if ((p.end << s->cluster_bits) > QCOW2_L2E_OFFSET_MASK) {
		r = log_err_ret(-EFBIG, "qcow2: %s: the image file would exceed 64 PiB",
				img->path);
		goto out;
	}
	DBG(FORMAT, "qcow2: %s: refcount table grows to %llu clusters at %llu",
	    img->path, (unsigned long long)tc,
	    (unsigned long long)(p.start * cs));
	for (uint64_t k = 0; k < p.nblk; k++)
		nt[p.blk_ti[k]] = (p.start + p.nuser + k) * cs;
	raw = malloc(tc * cs);
	if (!raw) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < n; i++)
		put_be64(raw + i * 8, nt[i]);
	w->hw = p.end;		/* whatever happens, never hand these out */
	r = rc_fresh(img, s, &p, nt, true, false);
	if (r == 0) {
		r = pwrite_full(img->fd, raw, tc * cs, p.start * cs);
		if (r < 0)
			log_err("qcow2: %s: cannot write the refcount table (%s)",
				img->path, strerror(-r));
	}
	if (r == 0)
		r = rc_fresh(img, s, &p, nt, false, false);
	if (r == 0)
		r = rc_write_blocks(img, s, false);
	if (r == 0)
		r = qcow2_file_sync(img);
	if (r < 0)
		goto out;
	/* the two refcount table fields: 12 bytes inside the first sector */
	nh = s->h;
	nh.refcount_table_offset = p.start * cs;
	nh.refcount_table_clusters = (uint32_t)tc;
	qcow2_header_encode(&nh, hdr);
	r = pwrite_full(img->fd,
			hdr + offsetof(struct qcow2_header_raw,
				       refcount_table_offset), 12,
			offsetof(struct qcow2_header_raw,
				 refcount_table_offset));
	if (r < 0) {
		w->broken = true;	/* the header may be half written */
		log_err("qcow2: %s: cannot write the header (%s)", img->path,
			strerror(-r));
		goto out;
	}
	free(w->rt);
	w->rt = nt;
	nt = NULL;
	w->rt_entries = n;
	s->h.refcount_table_offset = p.start * cs;
	s->h.refcount_table_clusters = (uint32_t)tc;
	r = qcow2_file_sync(img);
	if (r == 0)
		r = qcow2_rc_release(img, s, old_off, old_bytes);
	if (r == 0)	/* no barrier needed: nothing refers to it */
		r = rc_write_blocks(img, s, false);
	if (r == 0)
		rc_drop_clean(w);
	if (r < 0)
		w->broken = true;
out:
	qcow2_rc_plan_free(&p);
	free(raw);
	free(nt);
	return r;
}

int qcow2_rc_reserve(struct img *img, struct qcow2 *s, uint64_t nuser,
		     struct qcow2_rc_plan *p, uint64_t *grow_to)
{
	struct qcow2_w *w = s->w;
	uint64_t rbe = w->rb_entries;
	int r;

	memset(p, 0, sizeof(*p));
	p->start = w->hw;
	p->nuser = nuser;
	r = rc_plan(w, w->rt, w->rt_entries, p);
	if (r < 0)
		goto fail;
	if (r == 1) {
		/* room for this step's blocks, then some */
		*grow_to = (p->start + nuser + nuser / (rbe - 1) + 3) / rbe + 1;
		qcow2_rc_plan_free(p);
		return 1;
	}
	if ((p->end << s->cluster_bits) > QCOW2_L2E_OFFSET_MASK) {
		r = log_err_ret(-EFBIG, "qcow2: %s: the image file would exceed 64 PiB",
				img->path);
		goto fail;
	}
	w->hw = p->end;
	return 0;
fail:
	qcow2_rc_plan_free(p);
	return r;
}

int qcow2_rc_take(struct img *img, struct qcow2 *s,
		  const struct qcow2_rc_plan *p)
{
	return rc_fresh(img, s, p, s->w->rt, false, true);
}

int qcow2_rc_release(struct img *img, struct qcow2 *s, uint64_t off,
		     uint64_t len)
{
	struct qcow2_w *w = s->w;
	uint64_t rbe = w->rb_entries, cs = s->cluster_size;
	uint64_t c = off / cs, end = DIV_ROUND_UP(off + len, cs);
	int r;

	while (c < end) {
		uint64_t t = c / rbe, stop = MIN(end, (t + 1) * rbe);

		if (t >= w->rt_entries || !w->rt[t])
			return log_err_ret(-EUCLEAN, "qcow2: %s: cluster in use has no refcount block (%llu)",
					   img->path,
					   (unsigned long long)(c * cs));
		r = rc_block_add(img, s, w->rt, t, c - t * rbe, stop - t * rbe,
				 false);
		if (r < 0)
			return r;
		c = stop;
	}
	return 0;
}

/* Writes are refused for this image: say why, once. */
static int rc_refuse(struct img *img, const char *why, uint64_t value)
{
	log_warn("qcow2: %s: writes are not supported: %s (%llu); the image stays read-only",
		 img->path, why, (unsigned long long)value);
	return -EROFS;
}

int qcow2_rc_open(struct img *img, struct qcow2 *s)
{
	struct qcow2_w *w = s->w;
	uint64_t cs = s->cluster_size, rt_off = s->h.refcount_table_offset;
	uint64_t rt_bytes = (uint64_t)s->h.refcount_table_clusters * cs;
	uint64_t rbe, hw;
	int r;

	w->rc_order = s->h.refcount_order;
	w->rb_entries = rbe = (cs * 8) >> w->rc_order;
	if (!rt_bytes)
		return rc_refuse(img, "no refcount table", 0);
	/* open checked the size cap and the alignment */
	if (!range_within(rt_off, rt_bytes, img->file_size))
		return rc_refuse(img, "refcount table lies past the end of the file",
				 rt_off);
	w->rt_entries = rt_bytes / 8;
	w->rt = malloc(rt_bytes);
	if (!w->rt)
		return -ENOMEM;
	r = pread_full(img->fd, w->rt, rt_bytes, rt_off);
	if (r < 0)
		return rc_refuse(img, "cannot read the refcount table", rt_off);
	for (uint64_t t = 0; t < w->rt_entries; t++) {
		uint64_t blk = be64toh(w->rt[t]) & QCOW2_RTE_OFFSET_MASK;

		w->rt[t] = blk;
		if (!blk)
			continue;
		if (blk & (cs - 1))
			return rc_refuse(img, "refcount block offset misaligned",
					 blk);
		if (!range_within(blk, cs, img->file_size))
			return rc_refuse(img, "refcount block lies past the end of the file",
					 blk);
	}
	/* hw: past the file, and past every cluster a block counts */
	hw = DIV_ROUND_UP(img->file_size, cs);
	for (uint64_t t = hw / rbe; t < w->rt_entries; t++) {
		uint64_t lo = hw > t * rbe ? hw - t * rbe : 0;

		if (!w->rt[t])
			continue;
		r = pread_full(img->fd, w->rbuf, cs, w->rt[t]);
		if (r < 0)
			return rc_refuse(img, "cannot read a refcount block",
					 w->rt[t]);
		for (uint64_t i = rbe; i > lo; i--) {
			if (qcow2_rc_get(w->rbuf, w->rc_order, i - 1)) {
				hw = t * rbe + i;
				break;
			}
		}
	}
	if (hw > DIV_ROUND_UP(img->file_size, cs))
		DBG(FORMAT, "qcow2: %s: clusters counted past the end of the file (up to %llu)",
		    img->path, (unsigned long long)(hw * cs));
	w->hw = hw;
	return 0;
}

void qcow2_rc_close(struct qcow2_w *w)
{
	for (size_t i = 0; i < w->nrb; i++)
		free(w->rb[i].raw);
	free(w->rb);
	w->rb = NULL;
	w->nrb = w->rb_cap = 0;
	free(w->rt);
	w->rt = NULL;
}
