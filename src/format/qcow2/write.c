// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/write.c: a qcow2 image as the writable top layer: ->write, ->zero
 * and ->flush (new images are create.c's).
 *
 * Facts are from qemu's docs/interop/qcow2.txt.  Data is written
 * through (pwrite, no fsync); metadata is written back, as qemu's qcow2
 * driver does it: new L2 entries and tables, refcounts and L1 entries are
 * made in memory and reach the file at the next ->flush (the kernel's
 * fsync or close), or earlier when too much of it is pending.  No dirty
 * bit, no lazy refcounts: the file is consistent at every instant.
 *
 * ORDERING.  qemu's rule: a refcount increment reaches the disk before any
 * reference to the cluster, and a reference is gone from the disk before
 * the refcount drops.  A crash at any instant then leaves at worst leaked
 * clusters (counted but unreferenced; `qemu-img check` reports leaks, not
 * corruption), never a reference to a cluster whose refcount is 0.  On top
 * of that, data reaches the disk before the entry that maps it, so a crash
 * never exposes a cluster that was never written.
 *
 * A write step (a batch of neighbouring clusters of one request, under
 * w->lock) allocates fresh clusters at the end of the file, counts them
 * in the refcount blocks held in memory, writes the data (copy-on-write
 * writes the caller's bytes and the old contents around them: the whole
 * cluster, or with extended L2 only the touched subclusters; only the
 * uncovered head and tail are read; neighbouring fresh clusters go out as
 * one pwrite), and then publishes the new entries in the cached L2 tables
 * (a new table is created in the cache, then linked into the in-memory
 * L1).  The tables it changed stay pinned in the L2 cache and listed as
 * dirty; what it replaced (a compressed cluster, or one shared without
 * COPIED) is listed for release.  Nothing of this is on disk but the data.
 * The flush (flush_locked) then runs:
 *
 *   1  new L2 tables (whole; nothing points at them yet), new refcount
 *      blocks (-- fdatasync, only if there are any --) and the refcount
 *      table entries naming them, the changed refcount blocks.  Nothing
 *      references the fresh clusters yet, so any part of this and of the
 *      data that survives a crash is a leak, nothing more.
 *   -- fdatasync: data, refcounts and new tables are durable --
 *   2  the changed entries of existing L2 tables, the L1 entries of the
 *      new tables (COPIED set: refcount 1).
 *   -- fdatasync: every write before the flush is durable --
 *   3  the listed releases: the references are durably gone, so the
 *      counts drop in memory and their blocks are written at once (a
 *      crash before they land leaks the clusters).
 *
 * A flush with nothing pending is one fdatasync.  More than 64 dirty
 * tables (or 16 MiB of them), 64 refcount blocks in memory or 4096
 * pending releases run the same sequence at the end of a step.  The
 * refcount table grows in a step of its own after a flush
 * (refcount.c; this file flushes first, refcount.c never calls back up).
 * A cluster the image owns (COPIED, refcount 1,
 * allocated, not zero) is overwritten in place by a plain pwrite without
 * any lock, also when its entry is still only in memory: the flush's
 * first barrier covers its data.  When a write to the file fails during a
 * flush, the in-memory metadata no longer matches the file: the image
 * turns broken and every later write and flush fails with -EIO (the file
 * itself holds leaks at most).  The image's own flag (img_broken_get),
 * which img_health_check sets when the file changed behind us (checked
 * before each allocation step here and by the chain, against the end of
 * the data reported with img_end_grow), stops the flush too, also the
 * one at close.
 *
 * CONCURRENCY.  The chain calls ->write and ->flush with its lock shared.
 * Allocation, the in-memory metadata and the whole flush run under
 * w->lock, so a flush writes only entries whose data and refcounts its
 * own first barrier covers, and a write step that waits for the lock
 * lands after the flush (it is pending for the next one).  Each
 * allocation decision is taken again under the lock, so two writers of
 * one unallocated cluster allocate it once (the second finds it owned and
 * writes in place).  Readers take no lock: L1 entries and standard L2
 * entries change by single atomic 64-bit stores after the data is
 * written; an extended pair (entry + bitmap) is replaced inside a
 * sequence lock (qcow2_entry_load).  A table a writer changes is pinned
 * first and the image's L2 generation bumped afterwards, so a concurrent
 * cache miss never installs a stale copy (qcow2_l2_get_gen); a dirty
 * table stays pinned until the flush wrote it, so it never leaves the
 * cache before the file holds it.  Allocation only appends and released
 * clusters are never reused, so a reader or fast-path writer holding an
 * old mapping still reaches the cluster it mapped.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))
#define WRITE_BATCH_BYTES (32ull << 20)	/* guest bytes per allocation step */
#define WRITE_BATCH_CLUSTERS 1024u
#define WRITE_DIRTY_TABLES 64u		/* dirty L2 tables before a flush */
#define WRITE_DIRTY_BYTES (16ull << 20)	/* ... or this many bytes of them */
#define WRITE_DIRTY_RELEASES 4096u
#define WRITE_DIRTY_RBLOCKS 64u

enum write_kind {
	WRITE_INPLACE,		/* the caller's bytes into the image's own cluster */
	WRITE_ALLOC,		/* into a fresh cluster; new entry */
	WRITE_REUSE,		/* into the entry's own host cluster; new entry
				 * (a zero-allocated cluster, new subclusters) */
	WRITE_META,		/* new entry only (zeroing) */
};

static int flush_locked(struct img *img, struct qcow2 *s);

/* What one step does to one guest cluster. */
struct write_op {
	enum write_kind kind;
	uint64_t gcl;			/* guest cluster index */
	uint64_t old_e, old_b;		/* L2 entry and bitmap before */
	uint64_t new_e, new_b;		/* after (ALLOC: host added later) */
	uint64_t host;			/* host cluster written (not META) */
	uint32_t w0, w1;		/* the caller's bytes in the cluster */
	uint32_t t0, t1;		/* bytes written to host, [w0,w1) inside */
	const uint8_t *src;		/* borrowed: the caller's [w0, w1) */
	uint64_t free_off, free_len;	/* replaced clusters to release */
	int tab;			/* new L2 table of the step, or -1 */
};

/* An L2 table the step creates (made in the cache when published). */
struct write_tab {
	uint64_t l1i;
	uint64_t host;
};

struct write_batch {
	struct write_op *ops;		/* owned, by guest cluster */
	size_t nops, ops_cap;
	struct write_tab *tabs;		/* owned, by L1 index */
	size_t ntabs, tabs_cap;
	uint64_t nalloc;		/* WRITE_ALLOC ops */
	struct qcow2_l2_ref ref;	/* pinned while planning */
	uint64_t ref_l1i;
};

static int write_refuse(struct img *img, const char *why)
{
	log_warn("qcow2: %s: writes are not supported: %s; the image stays read-only",
		 img->path, why);
	return -EROFS;
}

int qcow2_write_open(struct img *img, struct qcow2 *s)
{
	const struct qcow2_header *h = &s->h;
	size_t cs = (size_t)s->cluster_size;
	struct qcow2_w *w;
	int r;

	if (h->incompatible_features & QCOW2_INCOMPAT_DIRTY)
		return write_refuse(img, "the dirty bit is set (refcounts may be stale; `qemu-img check -r all` repairs them)");
	if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		return write_refuse(img, "the image is marked corrupt");
	if (s->data_fd >= 0)
		return write_refuse(img, "external data file");
	if (h->nb_snapshots)
		return write_refuse(img, "internal snapshots share its clusters");
	if (s->l1_shared)
		return write_refuse(img, "an L2 table is shared (L1 entry without COPIED)");
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	s->w = w;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->flight_done, NULL);
	w->buf = malloc(cs);
	w->rbuf = malloc(cs);
	w->zbuf = calloc(1, cs);
	if (!w->buf || !w->rbuf || !w->zbuf) {
		r = -ENOMEM;
		goto fail;
	}
	r = qcow2_rc_open(img, s);
	if (r < 0)
		goto fail;
	/* autoclear bits (bitmaps) are cleared at the first write, not now */
	w->hdr_done = h->version < 3 || !h->autoclear_features;
	DBG(FORMAT, "qcow2: %s: writable, refcount_bits %u, %llu clusters in use",
	    img->path, 1u << w->rc_order, (unsigned long long)w->hw);
	return 0;
fail:
	qcow2_write_free(s);
	return r;
}

void qcow2_write_free(struct qcow2 *s)
{
	struct qcow2_w *w = s->w;

	if (!w)
		return;
	/* unflushed tables (a failed or skipped flush) are dropped */
	for (size_t i = 0; i < w->ndl2; i++)
		qcow2_l2_put(&w->dl2[i].ref);
	free(w->dl2);
	free(w->rel);
	free(w->flight);
	qcow2_rc_close(w);
	pthread_cond_destroy(&w->flight_done);
	pthread_mutex_destroy(&w->lock);
	free(w->buf);
	free(w->rbuf);
	free(w->zbuf);
	free(w);
	s->w = NULL;
}

/*
 * Before the first write: clear the autoclear bits, since we do not keep
 * dirty bitmaps up to date (spec: a writer that does not maintain an
 * autoclear feature clears its bit first).  -EIO once a step failed half
 * way: the in-memory metadata may no longer match the file.
 */
static int write_prepare(struct img *img, struct qcow2 *s)
{
	struct qcow2_w *w = s->w;
	uint8_t zero[8] = { 0 };
	int r = 0;

	if (__atomic_load_n(&w->broken, __ATOMIC_ACQUIRE))
		return -EIO;
	if (__atomic_load_n(&w->hdr_done, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&w->lock);
	if (!w->hdr_done) {
		r = pwrite_full(img->fd, zero, sizeof(zero),
				offsetof(struct qcow2_header_raw,
					 autoclear_features));
		if (r < 0)
			log_err("qcow2: %s: cannot write the header (%s)",
				img->path, strerror(-r));
		else
			r = qcow2_file_sync(img);
		if (r == 0) {
			s->h.autoclear_features = 0;
			__atomic_store_n(&w->hdr_done, true, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&w->lock);
	return r;
}

/* ------------------------------------------------------------------ */
/* old contents, for copy-on-write                                     */

/* Guest bytes from the layers below; zeros past the virtual size. */
static int below_read(struct img *img, const struct img_below *below,
			 uint8_t *dst, size_t n, uint64_t off)
{
	size_t in = off < img->size ? (size_t)MIN((uint64_t)n,
						  img->size - off) : 0;
	int r;

	if (!below || !below->read)
		in = 0;			/* no parent: zeros */
	if (in) {
		r = below->read(below->ctx, dst, in, off);
		if (r < 0)
			return log_err_ret(r, "qcow2: %s: cannot read the layer below for copy-on-write at %llu (%s)",
					   img->path, (unsigned long long)off,
					   strerror(-r));
	}
	memset(dst + in, 0, n - in);
	return 0;
}

/* Bytes [from, to) of op's cluster as its old entry reads them. */
static int old_read(struct img *img, struct qcow2 *s,
		       const struct write_op *op, const struct img_below *below,
		       uint64_t from, uint64_t to, uint8_t *dst)
{
	struct qcow2_bad bad = { NULL, 0 };

	while (from < to) {
		struct qcow2_run run = { QCOW2_RUN_UNALLOC, 0, 0 };
		struct qcow2_zreq z;
		const uint8_t *data;
		size_t step;
		int r;

		r = qcow2_entry_classify(s, op->gcl, op->old_e, op->old_b, from,
					 &run, &bad);
		if (r < 0)
			return log_err_ret(r, "qcow2: %s: %s (%llu)", img->path,
					   bad.what,
					   (unsigned long long)bad.value);
		step = (size_t)MIN(run.len, to - from);
		switch (run.kind) {
		case QCOW2_RUN_UNALLOC:		/* spec: the backing file's bytes */
			r = below_read(img, below, dst, step,
					  (op->gcl << s->cluster_bits) + from);
			break;
		case QCOW2_RUN_ZERO:		/* spec: zeros, whatever is below */
			memset(dst, 0, step);
			break;
		case QCOW2_RUN_DATA:
			r = pread_full(img->fd, dst, step, run.host);
			if (r < 0)
				r = log_err_ret(r == -ENODATA ? -EUCLEAN : r, "qcow2: %s: cannot read cluster at %llu for copy-on-write (%s)",
						img->path,
						(unsigned long long)run.host,
						strerror(-r));
			break;
		case QCOW2_RUN_COMP:
			z = (struct qcow2_zreq){
				.drv = "qcow2", .path = img->path,
				.fd = img->fd, .file_size = img->file_size,
				.owner = s->owner, .key = op->old_e,
				.cluster_size = (size_t)s->cluster_size,
				.type = s->comp,
			};
			qcow2_comp_decode(s->cluster_bits, op->old_e, &z.coff,
					  &z.csize);
			r = qcow2_cluster_inflate(&z, NULL, &data);
			if (r == 0)
				memcpy(dst, data + from, step);
			break;
		}
		if (r < 0)
			return r;
		dst += step;
		from += step;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* planning a step (under w->lock)                                     */

static void batch_init(struct write_batch *b)
{
	memset(b, 0, sizeof(*b));
	b->ref_l1i = UINT64_MAX;
}

static void batch_free(struct write_batch *b)
{
	qcow2_l2_put(&b->ref);
	free(b->tabs);
	free(b->ops);
}

/* The entry of guest cluster gcl now; 0 without an L2 table. */
static int entry_now(struct img *img, struct qcow2 *s, struct write_batch *b,
			uint64_t gcl, uint64_t *e, uint64_t *bm)
{
	uint64_t l1i = gcl >> s->l2_bits, l2off = qcow2_l1_get(s, l1i);
	int r;

	*e = *bm = 0;
	if (!l2off)
		return 0;
	if (b->ref_l1i != l1i) {
		qcow2_l2_put(&b->ref);
		b->ref_l1i = UINT64_MAX;
		r = qcow2_l2_get_gen(s->owner, l1i, s->l2_words, img->fd, l2off,
				     "qcow2", img->path, &s->l2_gen, &b->ref);
		if (r < 0)
			return r;
		b->ref_l1i = l1i;
	}
	qcow2_entry_load(s, b->ref.table, gcl & ((1ull << s->l2_bits) - 1), e,
			 bm);
	return 0;
}

/* Append op; it gets a new L2 table if its table does not exist. */
static int batch_op_add(struct qcow2 *s, struct write_batch *b,
			const struct write_op *op)
{
	uint64_t l1i = op->gcl >> s->l2_bits;
	int tab = -1;

	if (!qcow2_l1_get(s, l1i)) {
		if (!b->ntabs || b->tabs[b->ntabs - 1].l1i != l1i) {
			if (b->ntabs == b->tabs_cap) {
				size_t cap = b->tabs_cap ? b->tabs_cap * 2 : 4;
				struct write_tab *t = realloc(b->tabs,
							   cap * sizeof(*t));

				if (!t)
					return -ENOMEM;
				b->tabs = t;
				b->tabs_cap = cap;
			}
			b->tabs[b->ntabs].l1i = l1i;
			b->tabs[b->ntabs].host = 0;
			b->ntabs++;
		}
		tab = (int)b->ntabs - 1;
	}
	if (b->nops == b->ops_cap) {
		size_t cap = b->ops_cap ? b->ops_cap * 2 : 16;
		struct write_op *o = realloc(b->ops, cap * sizeof(*o));

		if (!o)
			return -ENOMEM;
		b->ops = o;
		b->ops_cap = cap;
	}
	b->ops[b->nops] = *op;
	b->ops[b->nops].tab = tab;
	b->nops++;
	if (op->kind == WRITE_ALLOC)
		b->nalloc++;
	return 0;
}

/* The old clusters behind a replaced entry (compressed, or not owned). */
static void op_release_old(const struct qcow2 *s, struct write_op *op)
{
	size_t csize;

	if (op->old_e & QCOW2_L2E_COMPRESSED) {
		/* the sectors the descriptor names, each cluster once */
		qcow2_comp_decode(s->cluster_bits, op->old_e, &op->free_off,
				  &csize);
		op->free_len = csize;
	} else {
		op->free_off = op->old_e & QCOW2_L2E_OFFSET_MASK;
		op->free_len = s->cluster_size;
	}
}

/* Decide how to write [w0, w1) of op's cluster, given its old entry. */
static void op_decide_write(const struct qcow2 *s, struct write_op *op)
{
	uint64_t e = op->old_e, cs = s->cluster_size;
	bool comp = e & QCOW2_L2E_COMPRESSED;
	uint64_t hold = comp ? 0 : e & QCOW2_L2E_OFFSET_MASK;
	bool own = hold && (e & QCOW2_L2E_COPIED);
	unsigned f, l, scb = s->sc_bits;
	uint32_t abits = (uint32_t)op->old_b;
	uint64_t m;

	op->host = hold;
	op->t0 = op->w0;
	op->t1 = op->w1;
	op->new_b = op->old_b;
	if (comp || (hold && !own))
		op_release_old(s, op);	/* copied into a fresh cluster */
	if (!s->extl2) {
		if (own && !(e & QCOW2_L2E_ZERO)) {
			op->kind = WRITE_INPLACE;
			return;
		}
		/* copy-on-write of the whole cluster (a zero-allocated one
		 * keeps its host cluster) */
		op->kind = own ? WRITE_REUSE : WRITE_ALLOC;
		op->t0 = 0;
		op->t1 = (uint32_t)cs;
		op->new_e = (own ? hold : 0) | QCOW2_L2E_COPIED;
		return;
	}
	if (comp || (hold && !own)) {
		/* no subclusters to keep: the whole cluster, all allocated */
		op->kind = WRITE_ALLOC;
		op->t0 = 0;
		op->t1 = (uint32_t)cs;
		op->new_e = QCOW2_L2E_COPIED;
		op->new_b = QCOW2_SC_ALL;
		return;
	}
	f = op->w0 >> scb;
	l = (op->w1 - 1) >> scb;
	m = qcow2_sc_mask(f, l);
	if (own && (abits & m) == m) {
		op->kind = WRITE_INPLACE;
		return;
	}
	/* copy-on-write per subcluster: only the touched ones are written;
	 * an allocated one at either end is written in place (only the
	 * caller's bytes: a fast-path writer may be writing the rest) */
	op->kind = own ? WRITE_REUSE : WRITE_ALLOC;
	op->t0 = own && ((abits >> f) & 1) ? op->w0 : f << scb;
	op->t1 = own && ((abits >> l) & 1) ? op->w1 : (l + 1) << scb;
	op->new_e = (own ? hold : 0) | QCOW2_L2E_COPIED;
	op->new_b = (op->old_b | m) & ~(m << 32);
}

/* Plan the writes of [off, off + n) up to one step; *planned bytes. */
static int plan_write(struct img *img, struct qcow2 *s, struct write_batch *b,
			 const uint8_t *p, size_t n, uint64_t off,
			 size_t *planned)
{
	uint64_t cs = s->cluster_size, cmask = cs - 1;
	uint64_t max = MAX(1, MIN(WRITE_BATCH_CLUSTERS,
				  WRITE_BATCH_BYTES >> s->cluster_bits));
	int r;

	*planned = 0;
	while (n && b->nops < max) {
		struct write_op op = { .gcl = off >> s->cluster_bits };
		size_t chunk;

		op.w0 = (uint32_t)(off & cmask);
		op.w1 = (uint32_t)MIN(cs, op.w0 + (uint64_t)n);
		op.src = p;
		r = entry_now(img, s, b, op.gcl, &op.old_e, &op.old_b);
		if (r < 0)
			return r;
		op_decide_write(s, &op);
		r = batch_op_add(s, b, &op);
		if (r < 0)
			return r;
		chunk = op.w1 - op.w0;
		p += chunk;
		n -= chunk;
		off += chunk;
		*planned += chunk;
	}
	return 0;
}

/*
 * Plan zeroing whole units (clusters, or subclusters with extended L2) of
 * [off, off + n), up to one step.  Stops before a cluster that can only
 * be zeroed by writing zeros (*fallback): part of a compressed cluster, or
 * of one the image does not own.
 */
static int plan_zero(struct img *img, struct qcow2 *s, struct write_batch *b,
			uint64_t off, uint64_t n, uint64_t *planned,
			bool *fallback)
{
	uint64_t cs = s->cluster_size, cmask = cs - 1;
	uint64_t max = MAX(1, MIN(WRITE_BATCH_CLUSTERS,
				  WRITE_BATCH_BYTES >> s->cluster_bits));
	int r;

	*planned = 0;
	*fallback = false;
	while (n && b->nops < max) {
		struct write_op op = { .kind = WRITE_META,
				    .gcl = off >> s->cluster_bits };
		uint64_t z0 = off & cmask, z1 = MIN(cs, z0 + n), e, hold;
		bool comp, own, skip = false;

		r = entry_now(img, s, b, op.gcl, &op.old_e, &op.old_b);
		if (r < 0)
			return r;
		e = op.old_e;
		comp = e & QCOW2_L2E_COMPRESSED;
		hold = comp ? 0 : e & QCOW2_L2E_OFFSET_MASK;
		own = hold && (e & QCOW2_L2E_COPIED);
		op.new_e = e;
		op.new_b = op.old_b;
		if (!s->extl2) {
			/* spec: bit 0, the cluster reads as zeros; an owned
			 * host cluster stays allocated (qemu: zero-allocated) */
			if (!comp && (e & QCOW2_L2E_ZERO))
				skip = true;
			else if (!comp && !hold && !s->backing)
				skip = true;	/* unallocated, no backing */
			else if (own)
				op.new_e = hold | QCOW2_L2E_COPIED |
					   QCOW2_L2E_ZERO;
			else
				op.new_e = QCOW2_L2E_ZERO;
		} else {
			uint64_t m = qcow2_sc_mask((unsigned)(z0 >> s->sc_bits),
						(unsigned)((z1 - 1) >>
							   s->sc_bits));

			if (comp || (hold && !own)) {
				if (m != QCOW2_SC_ALL) {
					*fallback = true;
					break;
				}
				op.new_e = 0;
				op.new_b = QCOW2_SC_ALL << 32;
			} else if (!hold && !s->backing) {
				skip = true;	/* reads zeros already */
			} else {
				/* spec: zero bit set, allocation bit clear */
				op.new_b = (op.old_b & ~m) | (m << 32);
			}
		}
		if (op.new_e == op.old_e && op.new_b == op.old_b)
			skip = true;
		if (!skip) {
			if (comp || (hold && !own))
				op_release_old(s, &op);
			r = batch_op_add(s, b, &op);
			if (r < 0)
				return r;
		}
		off += z1 - z0;
		n -= z1 - z0;
		*planned += z1 - z0;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* running a step (under w->lock)                                      */

/* pwritev until done; a short write continues where it stopped */
static int data_pwritev(int fd, struct iovec *iov, int n, uint64_t off)
{
	while (n && !iov->iov_len) {
		iov++;
		n--;
	}
	while (n && !iov[n - 1].iov_len)
		n--;
	if (n == 1)
		return pwrite_full(fd, iov->iov_base, iov->iov_len, off);
	while (n) {
		ssize_t k = pwritev(fd, iov, n, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return -EIO;
		off += (uint64_t)k;
		while (n && (size_t)k >= iov->iov_len) {
			k -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n) {
			iov->iov_base = (uint8_t *)iov->iov_base + k;
			iov->iov_len -= (size_t)k;
		}
	}
	return 0;
}

/* Can op b's host bytes follow op a's in one pwrite? */
static bool ops_join(const struct qcow2 *s, const struct write_op *a,
		     const struct write_op *b)
{
	return a->kind == WRITE_ALLOC && b->kind == WRITE_ALLOC &&
	       b->host == a->host + s->cluster_size &&
	       a->w1 == s->cluster_size && a->t1 == a->w1 &&
	       b->w0 == 0 && b->t0 == 0 && b->src == a->src + (a->w1 - a->w0);
}

/*
 * Phase A for ops [i, j), whose host bytes are contiguous: [t0, t1) of
 * each, the caller's bytes and the old contents at either end, with one
 * pwrite.  Only the uncovered head and tail are read for copy-on-write.
 */
static int data_write(struct img *img, struct qcow2 *s, struct write_op *ops,
			 size_t i, size_t j, const struct img_below *below)
{
	struct write_op *first = &ops[i], *last = &ops[j - 1];
	uint64_t end = last->host + last->t1, mid = 0, cur;
	size_t head = first->w0 - first->t0, tail = last->t1 - last->w1;
	uint8_t *cow = NULL;
	struct iovec iov[3];
	int r = 0;

	for (size_t k = i; k < j; k++)
		mid += ops[k].w1 - ops[k].w0;
	if (head + tail) {
		cow = malloc(head + tail);	/* runs unlocked: our own */
		if (!cow)
			return -ENOMEM;
	}
	iov[0] = (struct iovec){ cow, head };
	iov[1] = (struct iovec){ (void *)first->src, (size_t)mid };
	iov[2] = (struct iovec){ cow + head, tail };
	if (head)
		r = old_read(img, s, first, below, first->t0, first->w0,
				cow);
	if (r == 0 && tail)
		r = old_read(img, s, last, below, last->w1, last->t1,
				cow + head);
	if (r == 0) {
		r = data_pwritev(img->fd, iov, 3, first->host + first->t0);
		if (r < 0)
			log_err("qcow2: %s: cannot write cluster at %llu (%s)",
				img->path, (unsigned long long)first->host,
				strerror(-r));
	}
	free(cow);
	if (r < 0)
		return r;
	/* readers check mapped data against file_end: grow it first (steps
	 * write in parallel: only ever up) */
	cur = __atomic_load_n(&s->file_end, __ATOMIC_RELAXED);
	while (end > cur &&
	       !__atomic_compare_exchange_n(&s->file_end, &cur, end, false,
					    __ATOMIC_RELEASE,
					    __ATOMIC_RELAXED))
		;
	img_end_grow(img, end);	/* the file is at least this long now */
	return 0;
}

/* Replace entry idx of a pinned table in memory (writers, under lock). */
static void entry_publish(struct qcow2 *s, struct qcow2_l2_ref *ref,
			  uint64_t idx, uint64_t e, uint64_t bm)
{
	unsigned q;

	if (!s->extl2) {
		qcow2_l2_store(ref, idx, e);
		return;
	}
	/* sequence lock writer: odd, the pair, even */
	q = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
	__atomic_store_n(&s->seq, q + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	qcow2_l2_store(ref, idx * 2, e);
	qcow2_l2_store(ref, idx * 2 + 1, bm);
	__atomic_store_n(&s->seq, q + 2, __ATOMIC_RELEASE);
}

static bool op_changes_entry(const struct write_op *op)
{
	return op->kind != WRITE_INPLACE;
}

/* Room for `more` dirty tables and releases, before anything changes. */
static int dirty_reserve(struct qcow2_w *w, size_t tabs, size_t rels)
{
	if (w->ndl2 + tabs > w->dl2_cap) {
		size_t cap = MAX(w->dl2_cap * 2, w->ndl2 + tabs);
		struct qcow2_dirty_l2 *d = realloc(w->dl2, cap * sizeof(*d));

		if (!d)
			return -ENOMEM;
		w->dl2 = d;
		w->dl2_cap = cap;
	}
	if (w->nrel + rels > w->rel_cap) {
		size_t cap = MAX(w->rel_cap * 2, w->nrel + rels);
		struct qcow2_release *x = realloc(w->rel, cap * sizeof(*x));

		if (!x)
			return -ENOMEM;
		w->rel = x;
		w->rel_cap = cap;
	}
	return 0;
}

static struct qcow2_dirty_l2 *dirty_find(struct qcow2_w *w, uint64_t l1i)
{
	for (size_t i = w->ndl2; i-- > 0;)
		if (w->dl2[i].l1i == l1i)
			return &w->dl2[i];
	return NULL;
}

/* The changed entries of ops [i, j) (one table) into a pinned table. */
static void ops_publish(struct qcow2 *s, struct write_batch *b, size_t i,
			   size_t j, struct qcow2_dirty_l2 *d)
{
	struct qcow2_w *w = s->w;
	uint64_t l2mask = (1ull << s->l2_bits) - 1;

	for (size_t k = i; k < j; k++) {
		const struct write_op *op = &b->ops[k];
		uint32_t idx = (uint32_t)(op->gcl & l2mask);

		if (!op_changes_entry(op))
			continue;
		entry_publish(s, &d->ref, idx, op->new_e, op->new_b);
		if (d->lo >= d->hi) {
			d->lo = idx;
			d->hi = idx + 1;
		} else {
			d->lo = MIN(d->lo, idx);
			d->hi = MAX(d->hi, idx + 1);
		}
		if (op->free_len) {
			w->rel[w->nrel].off = op->free_off;
			w->rel[w->nrel].len = op->free_len;
			w->nrel++;
		}
	}
}

/*
 * The step's new entries into the cached tables (new tables are made in
 * the cache and then linked into the in-memory L1), each table kept
 * pinned and listed dirty until the next flush writes it.  Its data is
 * written already; on a failure part way, what is published is whole and
 * the rest leaks.
 */
static int batch_publish(struct img *img, struct qcow2 *s,
			    struct write_batch *b)
{
	struct qcow2_w *w = s->w;
	size_t ntab = 0, nrel = 0;
	int r;

	for (size_t i = 0; i < b->nops; i++) {
		if (!i || (b->ops[i].gcl >> s->l2_bits) !=
				  (b->ops[i - 1].gcl >> s->l2_bits))
			ntab++;
		if (b->ops[i].free_len)
			nrel++;
	}
	r = dirty_reserve(w, ntab, nrel);
	if (r < 0)
		return r;
	for (size_t i = 0, j; i < b->nops; i = j) {
		uint64_t l1i = b->ops[i].gcl >> s->l2_bits;
		struct qcow2_dirty_l2 *d;
		bool any = false;

		for (j = i; j < b->nops && (b->ops[j].gcl >> s->l2_bits) == l1i;
		     j++)
			any |= op_changes_entry(&b->ops[j]);
		if (!any)
			continue;
		if (b->ops[i].tab >= 0) {
			/* a new table: pinned in the cache, then linked */
			d = &w->dl2[w->ndl2];
			memset(d, 0, sizeof(*d));
			r = qcow2_l2_new(s->owner, l1i, s->l2_words, &d->ref);
			if (r < 0)
				return r;
			d->l1i = l1i;
			d->host = b->tabs[b->ops[i].tab].host;
			d->fresh = true;
			w->ndl2++;
			ops_publish(s, b, i, j, d);
			__atomic_store_n(&s->l1[l1i], d->host,
					 __ATOMIC_RELEASE);
			__atomic_add_fetch(&s->l2_gen, 1, __ATOMIC_RELEASE);
			continue;
		}
		d = dirty_find(w, l1i);
		if (!d) {
			d = &w->dl2[w->ndl2];
			memset(d, 0, sizeof(*d));
			d->l1i = l1i;
			d->host = qcow2_l1_get(s, l1i);
			r = qcow2_l2_get_gen(s->owner, l1i, s->l2_words,
					     img->fd, d->host, "qcow2",
					     img->path, &s->l2_gen, &d->ref);
			if (r < 0)
				return r;
			w->ndl2++;
		}
		ops_publish(s, b, i, j, d);
		/* a loader that read the table from disk meanwhile
		 * must not cache it (qcow2_l2_get_gen) */
		__atomic_add_fetch(&s->l2_gen, 1, __ATOMIC_RELEASE);
	}
	return 0;
}

/* Too much in memory: the flush sequence runs now (64 tables, 16 MiB). */
static bool dirty_over_bound(const struct qcow2 *s)
{
	const struct qcow2_w *w = s->w;
	size_t tabs = MAX(1, MIN(WRITE_DIRTY_TABLES,
				 WRITE_DIRTY_BYTES >> s->cluster_bits));

	return w->ndl2 >= tabs || w->nrel >= WRITE_DIRTY_RELEASES ||
	       w->nrb >= WRITE_DIRTY_RBLOCKS;
}

/* The guest clusters a planned step covers, and every cluster of the L2
 * tables it creates: [sp->first, sp->end). */
static void batch_span(const struct qcow2 *s, const struct write_batch *b,
		    struct qcow2_span *sp)
{
	sp->first = UINT64_MAX;
	sp->end = 0;
	if (!b->nops)
		return;
	sp->first = b->ops[0].gcl;
	sp->end = b->ops[b->nops - 1].gcl + 1;
	for (size_t i = 0; i < b->ntabs; i++) {
		sp->first = MIN(sp->first, b->tabs[i].l1i << s->l2_bits);
		sp->end = MAX(sp->end, (b->tabs[i].l1i + 1) << s->l2_bits);
	}
}

static bool flight_overlaps(const struct qcow2_w *w,
			       const struct qcow2_span *sp)
{
	for (size_t i = 0; i < w->nflight; i++)
		if (sp->first < w->flight[i].end &&
		    w->flight[i].first < sp->end)
			return true;
	return false;
}

static int flight_add(struct qcow2_w *w, const struct qcow2_span *sp)
{
	if (w->nflight == w->flight_cap) {
		size_t cap = w->flight_cap ? w->flight_cap * 2 : 16;
		struct qcow2_span *f = realloc(w->flight, cap * sizeof(*f));

		if (!f)
			return -ENOMEM;
		w->flight = f;
		w->flight_cap = cap;
	}
	w->flight[w->nflight++] = *sp;
	return 0;
}

static void flight_del(struct qcow2_w *w, const struct qcow2_span *sp)
{
	for (size_t i = 0; i < w->nflight; i++) {
		if (w->flight[i].first == sp->first &&
		    w->flight[i].end == sp->end) {
			w->flight[i] = w->flight[--w->nflight];
			break;
		}
	}
	pthread_cond_broadcast(&w->flight_done);
}

/*
 * Plan a step with plan() until it overlaps no step in flight (waiting
 * for those to finish).  Under w->lock.
 */
static int plan_wait(struct qcow2 *s, struct write_batch *b,
			struct qcow2_span *sp)
{
	struct qcow2_w *w = s->w;

	if (w->broken)
		return -EIO;
	batch_span(s, b, sp);
	if (!flight_overlaps(w, sp))
		return 0;
	batch_free(b);
	batch_init(b);
	pthread_cond_wait(&w->flight_done, &w->lock);
	return 1;			/* plan again */
}

/*
 * Reserve nuser fresh clusters.  The one place that orders allocation
 * and flush: when the refcount table must grow, everything pending is
 * flushed first, then the table grows (refcount.c), then the reservation
 * is asked again.  refcount.c never calls back up here.
 */
static int clusters_reserve(struct img *img, struct qcow2 *s, uint64_t nuser,
			    struct qcow2_rc_plan *p)
{
	uint64_t grow_to = 0;
	int r;

	while ((r = qcow2_rc_reserve(img, s, nuser, p, &grow_to)) == 1) {
		r = flush_locked(img, s);
		if (r == 0)
			r = qcow2_rc_grow(img, s, grow_to);
		if (r < 0)
			return r;
	}
	return r;
}

/*
 * One step: allocate, write the data (without the lock), publish the
 * metadata in memory.  Called and returns with w->lock held.
 */
static int batch_run(struct img *img, struct qcow2 *s, struct write_batch *b,
		  const struct img_below *below, const struct qcow2_span *sp)
{
	struct qcow2_w *w = s->w;
	struct qcow2_rc_plan plan = { 0 };
	uint64_t cs = s->cluster_size, next;
	bool io = false;
	int r = 0;

	qcow2_l2_put(&b->ref);		/* planning is over */
	b->ref_l1i = UINT64_MAX;
	if (!b->nops)
		return 0;
	if (b->ntabs + b->nalloc) {
		/* fresh clusters go past the end: a cut file would grow
		 * back */
		r = img_health_check(img);
		if (r == 0)
			r = clusters_reserve(img, s, b->ntabs + b->nalloc,
					     &plan);
		if (r < 0)
			return r;
		next = plan.start;
		for (size_t i = 0; i < b->ntabs; i++)
			b->tabs[i].host = next++ * cs;
		for (size_t i = 0; i < b->nops; i++) {
			if (b->ops[i].kind != WRITE_ALLOC)
				continue;
			b->ops[i].host = next++ * cs;
			b->ops[i].new_e |= b->ops[i].host;
		}
		/* counted in memory before anything refers to them */
		r = qcow2_rc_take(img, s, &plan);
		if (r < 0)
			goto broken;
	}
	/* A: the data, one pwrite per run of neighbouring fresh clusters,
	 * without the lock: the step's clusters are marked in flight, so
	 * no other step plans them until this one published */
	for (size_t i = 0; i < b->nops && !io; i++)
		io = b->ops[i].kind != WRITE_META;
	if (io) {
		r = flight_add(w, sp);
		if (r < 0)
			goto out;	/* leaks at most */
		pthread_mutex_unlock(&w->lock);
	}
	for (size_t i = 0, j; r == 0 && i < b->nops; i = j) {
		j = i + 1;
		if (b->ops[i].kind == WRITE_META)
			continue;
		while (j < b->nops && ops_join(s, &b->ops[j - 1], &b->ops[j]))
			j++;
		r = data_write(img, s, b->ops, i, j, below);
	}
	if (io) {
		pthread_mutex_lock(&w->lock);
		flight_del(w, sp);
	}
	if (r < 0)
		goto out;	/* nothing published: leaks at most */
	if (__atomic_load_n(&w->broken, __ATOMIC_ACQUIRE)) {
		r = -EIO;	/* a flush failed meanwhile */
		goto out;
	}
	/* B: the new entries, in memory */
	r = batch_publish(img, s, b);
	if (r < 0)
		goto out;
	if (dirty_over_bound(s))
		r = flush_locked(img, s);
	goto out;
broken:
	log_err("qcow2: %s: metadata update failed; no more writes to this image until it is reopened",
		img->path);
	__atomic_store_n(&w->broken, true, __ATOMIC_RELEASE);
	r = -EIO;
out:
	qcow2_rc_plan_free(&plan);
	return r;
}

/* ------------------------------------------------------------------ */
/* the flush sequence (under w->lock)                                  */

/* Entries [lo, hi) of a pinned table, big-endian, into dst. */
static void dirty_entries_encode(const struct qcow2 *s,
				 const struct qcow2_dirty_l2 *d, uint32_t lo,
				 uint32_t hi, uint8_t *dst)
{
	size_t ew = s->entry_words;

	for (size_t i = lo * ew; i < hi * ew; i++)
		put_be64(dst + (i - lo * ew) * 8,
			 __atomic_load_n(&d->ref.table[i], __ATOMIC_RELAXED));
}

static int dirty_cmp_l1i(const void *a, const void *b)
{
	const struct qcow2_dirty_l2 *x = a, *y = b;

	return x->l1i < y->l1i ? -1 : x->l1i > y->l1i;
}

/*
 * 1  new L2 tables (whole), refcount blocks (new ones, barrier, their
 *    refcount table entries), changed refcount blocks
 * -- fdatasync: data, refcounts and new tables durable --
 * 2  changed entries of existing L2 tables, L1 entries of new tables
 * -- fdatasync --
 * 3  deferred releases: counts dropped and written (no barrier needed)
 */
static int flush_locked(struct img *img, struct qcow2 *s)
{
	struct qcow2_w *w = s->w;
	size_t eb = s->entry_words * 8;
	int r = 0;

	if (__atomic_load_n(&w->broken, __ATOMIC_ACQUIRE))
		return -EIO;
	if (!w->ndl2 && !w->nrel && !qcow2_rc_dirty(w))
		return qcow2_file_sync(img);
	for (size_t i = 0; r == 0 && i < w->ndl2; i++) {
		struct qcow2_dirty_l2 *d = &w->dl2[i];

		if (!d->fresh)
			continue;
		dirty_entries_encode(s, d, 0,
				     (uint32_t)(s->l2_words / s->entry_words),
				     w->buf);
		r = pwrite_full(img->fd, w->buf, s->cluster_size, d->host);
		if (r < 0)
			log_err("qcow2: %s: cannot write L2 table at %llu (%s)",
				img->path, (unsigned long long)d->host,
				strerror(-r));
	}
	if (r == 0)
		r = qcow2_rc_flush(img, s);
	if (r == 0)
		r = qcow2_file_sync(img);
	if (r < 0)
		goto broken;
	if (w->ndl2)	/* qsort's base must not be NULL, even for 0 items */
		qsort(w->dl2, w->ndl2, sizeof(*w->dl2), dirty_cmp_l1i);
	for (size_t i = 0; r == 0 && i < w->ndl2; i++) {
		struct qcow2_dirty_l2 *d = &w->dl2[i];

		if (d->fresh || d->lo >= d->hi)
			continue;
		dirty_entries_encode(s, d, d->lo, d->hi, w->buf);
		r = pwrite_full(img->fd, w->buf, (d->hi - d->lo) * eb,
				d->host + d->lo * eb);
		if (r < 0)
			log_err("qcow2: %s: cannot write L2 table at %llu (%s)",
				img->path, (unsigned long long)d->host,
				strerror(-r));
	}
	/* L1 entries of the new tables, one write per run of neighbours */
	for (size_t a = 0, z; r == 0 && a < w->ndl2; a = z) {
		uint64_t l1a = w->dl2[a].l1i;

		z = a + 1;
		if (!w->dl2[a].fresh)
			continue;
		/* a run is at most one cluster of entries: w->buf's size */
		while (z < w->ndl2 && z - a < s->cluster_size / 8 &&
		       w->dl2[z].fresh && w->dl2[z].l1i == l1a + (z - a))
			z++;
		for (size_t k = a; k < z; k++) {
			struct qcow2_l1e e = { .l2_off = w->dl2[k].host,
					       .copied = true };

			put_be64(w->buf + (k - a) * 8, qcow2_l1e_encode(&e));
		}
		r = pwrite_full(img->fd, w->buf, (z - a) * 8,
				s->h.l1_table_offset + l1a * 8);
		if (r < 0)
			log_err("qcow2: %s: cannot write the L1 table (%s)",
				img->path, strerror(-r));
	}
	if (r == 0)
		r = qcow2_file_sync(img);
	if (r < 0)
		goto broken;
	/* written: the tables may leave the cache again */
	for (size_t i = 0; i < w->ndl2; i++)
		qcow2_l2_put(&w->dl2[i].ref);
	w->ndl2 = 0;
	/* the replaced clusters' references are durably gone */
	for (size_t i = 0; r == 0 && i < w->nrel; i++)
		r = qcow2_rc_release(img, s, w->rel[i].off, w->rel[i].len);
	w->nrel = 0;
	if (r == 0)
		r = qcow2_rc_flush(img, s);
	if (r == 0)
		return 0;
broken:
	log_err("qcow2: %s: metadata write-back failed; no more writes to this image until it is reopened",
		img->path);
	__atomic_store_n(&w->broken, true, __ATOMIC_RELEASE);
	return -EIO;
}

/* ------------------------------------------------------------------ */
/* ->write, ->zero, ->flush                                            */

static bool entry_owned(const struct qcow2 *s, uint64_t e, uint64_t bm,
		     uint64_t w0, uint64_t w1)
{
	uint64_t m;

	if ((e & QCOW2_L2E_COMPRESSED) || !(e & QCOW2_L2E_COPIED) ||
	    !(e & QCOW2_L2E_OFFSET_MASK))
		return false;
	if (!s->extl2)
		return !(e & QCOW2_L2E_ZERO);
	m = qcow2_sc_mask((unsigned)(w0 >> s->sc_bits),
		       (unsigned)((w1 - 1) >> s->sc_bits));
	return (bm & m) == m;
}

static int write_run(struct img *img, const uint8_t *p, size_t n,
			uint64_t host)
{
	int r = pwrite_full(img->fd, p, n, host);

	if (r < 0)
		log_err("qcow2: %s: cannot write cluster at %llu (%s)",
			img->path, (unsigned long long)host, strerror(-r));
	return r;
}

/* The leading clusters of the request the image owns: pwrite, no lock. */
static int write_fast(struct img *img, struct qcow2 *s, const uint8_t *p,
			 size_t n, uint64_t off, size_t *done)
{
	struct qcow2_l2_ref ref = { NULL, NULL };
	uint64_t cs = s->cluster_size, ref_l1i = UINT64_MAX;
	uint64_t host, run_host = 0;
	const uint8_t *run_p = NULL;
	size_t run_len = 0;
	int r = 0;

	*done = 0;
	while (n) {
		uint64_t l1i = off >> (s->cluster_bits + s->l2_bits);
		uint64_t l2off = qcow2_l1_get(s, l1i), in_cl, e, bm;
		size_t chunk;

		if (!l2off)
			break;
		if (l1i != ref_l1i) {
			qcow2_l2_put(&ref);
			ref_l1i = UINT64_MAX;
			r = qcow2_l2_get_gen(s->owner, l1i, s->l2_words,
					     img->fd, l2off, "qcow2", img->path,
					     &s->l2_gen, &ref);
			if (r < 0)
				break;
			ref_l1i = l1i;
		}
		qcow2_entry_load(s, ref.table,
				 (off >> s->cluster_bits) &
					 ((1ull << s->l2_bits) - 1),
				 &e, &bm);
		in_cl = off & (cs - 1);
		chunk = (size_t)MIN((uint64_t)n, cs - in_cl);
		if (!entry_owned(s, e, bm, in_cl, in_cl + chunk))
			break;
		host = (e & QCOW2_L2E_OFFSET_MASK) + in_cl;
		if (run_len && host != run_host + run_len) {
			r = write_run(img, run_p, run_len, run_host);
			if (r < 0)
				break;
			*done += run_len;
			run_len = 0;
		}
		if (!run_len) {
			run_p = p;
			run_host = host;
		}
		run_len += chunk;	/* neighbours: one pwrite */
		p += chunk;
		n -= chunk;
		off += chunk;
	}
	qcow2_l2_put(&ref);
	if (r == 0 && run_len) {
		r = write_run(img, run_p, run_len, run_host);
		if (r == 0)
			*done += run_len;
	}
	return r;
}

/* One allocation step from off, under the lock; *done bytes. */
static int write_slow(struct img *img, struct qcow2 *s, const uint8_t *p,
			 size_t n, uint64_t off, const struct img_below *below,
			 size_t *done)
{
	struct qcow2_w *w = s->w;
	struct qcow2_span sp;
	struct write_batch b;
	int r;

	batch_init(&b);
	pthread_mutex_lock(&w->lock);
	do {
		r = w->broken ? -EIO : plan_write(img, s, &b, p, n, off,
						     done);
		if (r == 0)
			r = plan_wait(s, &b, &sp);
	} while (r == 1);
	if (r == 0)
		r = batch_run(img, s, &b, below, &sp);
	pthread_mutex_unlock(&w->lock);
	batch_free(&b);
	return r;
}

int qcow2_write(struct img *img, const void *buf, size_t n, uint64_t off,
		const struct img_below *below)
{
	struct qcow2 *s = img->priv;
	const uint8_t *p = buf;
	int r;

	if (!s->w)
		return -EROFS;
	r = write_prepare(img, s);
	while (r == 0 && n) {
		size_t done = 0;

		r = write_fast(img, s, p, n, off, &done);
		p += done;
		n -= done;
		off += done;
		if (r < 0 || !n)
			break;
		r = write_slow(img, s, p, n, off, below, &done);
		p += done;
		n -= done;
		off += done;
	}
	return r;
}

/* Zeros through the write path (partial units, version 2). */
static int zero_by_write(struct img *img, uint64_t off, uint64_t n,
			    const struct img_below *below)
{
	struct qcow2 *s = img->priv;
	int r = 0;

	while (r == 0 && n) {
		size_t chunk = (size_t)MIN(n, s->cluster_size);

		r = qcow2_write(img, s->w->zbuf, chunk, off, below);
		off += chunk;
		n -= chunk;
	}
	return r;
}

/*
 * Version 2 has no zero flag: zeros are written, except where nothing is
 * allocated and there is no backing file (those read as zeros already).
 */
static int zero_v2(struct img *img, uint64_t off, uint64_t n,
		      const struct img_below *below)
{
	struct qcow2 *s = img->priv;

	while (n) {
		struct img_extent e;
		int r = img_map(img, off, n, &e);

		if (r < 0)
			return r;
		if (e.type != IMG_EXT_UNALLOC || s->backing) {
			r = zero_by_write(img, off, e.len, below);
			if (r < 0)
				return r;
		}
		off += e.len;
		n -= e.len;
	}
	return 0;
}

int qcow2_zero(struct img *img, uint64_t off, uint64_t n,
	       const struct img_below *below)
{
	struct qcow2 *s = img->priv;
	struct qcow2_w *w = s->w;
	uint64_t unit, a, z, pos, end = off + n;
	int r;

	if (!w)
		return -EROFS;
	r = write_prepare(img, s);
	if (r < 0)
		return r;
	if (s->h.version < 3)
		return zero_v2(img, off, n, below);
	unit = s->extl2 ? 1ull << s->sc_bits : s->cluster_size;
	a = (off + unit - 1) & ~(unit - 1);
	z = end & ~(unit - 1);
	if (a >= z)
		return zero_by_write(img, off, n, below);
	r = zero_by_write(img, off, a - off, below);
	for (pos = a; r == 0 && pos < z;) {
		struct qcow2_span sp;
		struct write_batch b;
		uint64_t planned = 0;
		bool fallback = false;

		batch_init(&b);
		pthread_mutex_lock(&w->lock);
		do {
			r = w->broken ? -EIO :
				plan_zero(img, s, &b, pos, z - pos,
					     &planned, &fallback);
			if (r == 0)
				r = plan_wait(s, &b, &sp);
		} while (r == 1);
		if (r == 0)
			r = batch_run(img, s, &b, below, &sp);
		pthread_mutex_unlock(&w->lock);
		batch_free(&b);
		pos += planned;
		if (r == 0 && fallback) {
			uint64_t stop = MIN(z, (pos | (s->cluster_size - 1)) +
						       1);

			r = zero_by_write(img, pos, stop - pos, below);
			pos = stop;
		}
	}
	if (r == 0)
		r = zero_by_write(img, z, end - z, below);
	return r;
}

int qcow2_flush(struct img *img)
{
	struct qcow2 *s = img->priv;
	struct qcow2_w *w = s->w;
	int r;

	if (!w)
		return 0;		/* nothing was written */
	if (img_broken_get(img))	/* the file changed behind us */
		return -EIO;
	pthread_mutex_lock(&w->lock);
	r = flush_locked(img, s);
	pthread_mutex_unlock(&w->lock);
	return r;
}
