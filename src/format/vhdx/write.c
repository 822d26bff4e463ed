// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/write.c: writing a VHDX top image (MS-VHDX v1.0): ->write,
 * ->zero and ->flush.  New files are create.c's.
 *
 * Writes are sector-granular: in a differencing file a block that was
 * NOT_PRESENT and gets a partial write becomes PARTIALLY_PRESENT, with
 * the written sectors' bits set in its chunk's sector bitmap; nothing is
 * ever copied from the parent.  A block whose state reads as zeros in
 * this file (ZERO, UNDEFINED, UNMAPPED in a differencing file; anything
 * unallocated in a dynamic one) becomes FULLY_PRESENT, the rest of the
 * new block being a hole of the file, so it keeps reading zeros.
 *
 * We do not use the VHDX log (2.3) for metadata updates; the order below
 * is the argument instead.  A file opened for writing must have an empty
 * log (LogGuid zero): a dirty log is only ever replayed in memory, so
 * writing would go under metadata a later replay overwrites (-EROFS).
 * The data goes to the file at once; the metadata that points at it (BAT
 * entries, sector-bitmap bits) is kept in memory, dirty, and written back
 * by ->flush, as qemu's metadata caches do.  Readers see the in-memory
 * metadata, which is published only after the data it points at is
 * written (the page cache serves the rest).
 *
 *   0. Once per open, before the first write of any kind (2.2.2:
 *      FileWriteGuid changes before the first write, DataWriteGuid before
 *      the first change of user data): a new header with both GUIDs
 *      fresh and sequence + 1 goes into the non-current slot; fdatasync;
 *      then the same with sequence + 2 into the other slot; fdatasync.  A
 *      torn header fails its CRC-32C and the other one is current, so at
 *      every instant one valid header with the highest sequence exists.
 *   1. Allocation (alloc_lock): a new payload block (and a new 1 MiB
 *      sector bitmap block, if its chunk had none) is taken past the end
 *      of the file, which only ever grows in 1 MiB units (ftruncate, or
 *      the data write itself when it ends the block: the space reads as
 *      zeros).  The written sectors go into it.  Nothing in the file
 *      refers to that space yet.
 *   2. Still under alloc_lock, the in-memory state is published: a block
 *      becoming PARTIALLY_PRESENT gets a new, clear bitmap slice and the
 *      written sectors' bits set (stale bits of a block that was not
 *      present must not survive), then the BAT entry is stored with
 *      release (the slice and the chunk's bitmap entry before it).  A
 *      concurrent reader sees either the old state (the parent's sectors,
 *      or zeros) or the finished block.  The entries and the slice are marked
 *      dirty.
 *
 * In a block that is already allocated the sectors are written in place,
 * then (PARTIALLY_PRESENT) their bits are ORed into the in-memory bitmap
 * and the block is marked dirty, with inflight[] counting the writers in
 * between: a writer that finds its bits set and nobody in between is one
 * pwrite (the setter's dirty mark is done, so the next flush covers it).
 * Bits only go from 0 to 1.  ->zero sets whole blocks to ZERO the same
 * way (2.5.1.1: reads as zeros whatever the parent holds; the old space
 * is never reused); partial blocks get zeros written.
 *
 * ->flush (flush_lock: one at a time; writes go on meanwhile):
 *
 *   3. under alloc_lock, take the dirty BAT entries (their indexes and
 *      values) and the dirty bitmap slices: every entry taken was
 *      published, so what it points at was written before;
 *   4. write the slices (each block's whole slice from memory, in the
 *      512-byte sectors that hold it, the neighbours' bytes as the file
 *      has them; the dirty flag is cleared before the copy, so bits set
 *      after it mark the block dirty again);
 *   5. fdatasync: data, bitmaps and the file size are durable;
 *   6. write the BAT pages holding the taken entries, merged into runs,
 *      read back from the file (the BAT as flushed) with the taken values
 *      put in: each entry is one aligned 8-byte field inside a logical
 *      sector, and every value in those pages may be in the file, so
 *      a torn multi-sector write leaves each sector old or new (512- and
 *      4096-byte devices promise at least their logical sector; NVMe AWUN
 *      >= 1 block), and any mix is valid.  Entries published after step 3
 *      stay dirty: their data may not be durable yet;
 *   7. fdatasync.  Nothing dirty: step 5 only.
 *
 * A crash at any instant (the process killed, or power lost) leaves valid
 * headers, a BAT whose entries point only at blocks and bitmaps that were
 * durable, inside a file that was as long, before the entries were
 * written, and perhaps unreferenced space at the end (harmless: readers
 * and 7-Zip ignore it).  A lost BAT update loses only writes no flush
 * acknowledged.  There is no barrier between data and bits: after a
 * power failure a sector written since the last flush may read as what
 * the block held there before (zeros in blocks we allocated) instead of
 * the old or the new data.  close writes the dirty metadata back (a
 * flush); a writer that finds more than dirty_max dirty entries or
 * slices runs the flush itself, so memory and lost work stay bounded.  A
 * failed metadata write or fdatasync marks the image broken: every later
 * write and flush fails with -EIO.  So does the image's own flag
 * (img_broken_get), which the chain sets when the file changed behind us
 * (img_health_check, before each allocation here and by the chain,
 * against the end of the file reported with img_end_grow); close then
 * writes nothing back.
 *
 * Memory does not grow with the disk or with the number of blocks
 * written: the dirty lists are bounded by dirty_max (a writer past it
 * flushes), and the sector bitmaps are the read side's slice cache
 * (bat.c): a slice is loaded when a write or map needs it, and once the
 * cache holds VHDX_SLICE_CACHE bytes a writer flushes and drops the clean
 * ones.  What stays is the read side's BAT (8 bytes a block) and a dirty
 * bit per BAT entry.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (path) ? (path) : "-", \
		    ##__VA_ARGS__)

#define W_SECTOR 512u		/* granule of bitmap rewrites */
#define W_PAGE 4096u		/* granule of BAT rewrites */
#define W_STRIPES 64		/* inflight counters */
#define W_BAT_RUN 64		/* BAT pages written at a time */
/* Dirty BAT entries (or bitmap slices, and their bytes) past which a
 * writer flushes. */
#define VHDX_DIRTY_MAX 4096u
#define VHDX_DIRTY_BYTES (16u << 20)

struct vhdx_writer {
	pthread_mutex_t alloc_lock;	/* allocation, BAT, headers; before
					 * s->sl.lock and dirty_lock */
	pthread_mutex_t dirty_lock;	/* bm_list */
	pthread_mutex_t flush_lock;	/* one flush at a time; before
					 * s->sl.lock (exclusive) */
	bool session;		/* headers renewed (atomic loads) */
	bool broken;		/* a metadata write failed (atomic) */
	uint64_t next;		/* file end: next block (alloc_lock) */
	uint64_t nent;		/* BAT entries (payload and bitmap) */
	uint64_t bat_end;	/* bytes of the BAT we write: whole 4 KiB
				 * pages, inside the region */
	uint8_t *bat_dirty;	/* owned: a bit per BAT index (alloc_lock) */
	uint32_t *bat_list;	/* owned: dirty BAT indexes (alloc_lock) */
	uint64_t bat_n, bat_cap;
	uint32_t *bm_list;	/* owned: blocks whose slice is newer in
				 * memory than in the file (dirty_lock) */
	uint64_t bm_n, bm_cap;
	uint64_t dirty_max;	/* bound on bat_n and bm_n */
	unsigned inflight[W_STRIPES];	/* writers setting bits (atomic) */
	uint8_t *zeros;		/* owned: one block of zeros, for ->zero */
};

/* ---- helpers ---- */

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* BAT index of payload block blk, and of chunk c's sector bitmap (2.5) */
static uint64_t bat_index(const struct vhdx *s, uint64_t blk)
{
	return vhdx_bat_payload_index(s->chunk_ratio, blk);
}

static uint64_t sb_index(const struct vhdx *s, uint64_t c)
{
	return vhdx_bat_bitmap_index(s->chunk_ratio, c);
}

static bool w_broken(const struct vhdx *s)
{
	return __atomic_load_n(&s->w->broken, __ATOMIC_ACQUIRE);
}

/* Metadata or ordering failed: refuse everything after (see above). */
static int w_break(struct vhdx *s, int r, const char *what)
{
	__atomic_store_n(&s->w->broken, true, __ATOMIC_RELEASE);
	return vhdx_err(r, s->path, "%s failed, no more writes (%s)", what,
			strerror(-r));
}

static int w_sync(struct vhdx *s)
{
	if (fdatasync(s->fd) < 0)
		return w_break(s, -errno, "fdatasync");
	return 0;
}

/* BAT entry idx changed in memory: write it at the next flush
 * (alloc_lock held). */
/* Room for one more entry in a list of 32-bit indexes. */
static int list_grow(uint32_t **list, uint64_t n, uint64_t *cap)
{
	uint64_t ncap = *cap ? 2 * *cap : 256;
	uint32_t *l;

	if (n < *cap)
		return 0;
	l = reallocarray(*list, ncap, sizeof(*l));
	if (!l)
		return -ENOMEM;
	*list = l;
	*cap = ncap;
	return 0;
}

static int bat_dirty(struct vhdx *s, uint64_t idx)
{
	struct vhdx_writer *w = s->w;

	if (w->bat_dirty[idx >> 3] & (1u << (idx & 7)))
		return 0;
	if (list_grow(&w->bat_list, w->bat_n, &w->bat_cap) < 0)
		return w_break(s, -ENOMEM, "a dirty BAT entry");
	w->bat_dirty[idx >> 3] |= (uint8_t)(1u << (idx & 7));
	w->bat_list[w->bat_n++] = (uint32_t)idx;	/* at most once each */
	return 0;
}

/* The in-memory value of BAT entry idx (alloc_lock held). */
static uint64_t bat_value(const struct vhdx *s, uint64_t idx)
{
	uint64_t per = (uint64_t)s->chunk_ratio + 1;

	if (idx % per == s->chunk_ratio)
		return s->sb[idx / per];
	return s->bat[idx / per * s->chunk_ratio + idx % per];
}

/* Block blk's bitmap slice sl is newer in memory than in the file
 * (s->sl.lock held shared). */
static int bm_dirty(struct vhdx *s, uint64_t blk, struct vhdx_slice *sl)
{
	struct vhdx_writer *w = s->w;
	int r;

	if (__atomic_exchange_n(&sl->dirty, 1, __ATOMIC_SEQ_CST))
		return 0;
	pthread_mutex_lock(&w->dirty_lock);
	r = list_grow(&w->bm_list, w->bm_n, &w->bm_cap);
	if (r == 0)
		w->bm_list[w->bm_n++] = (uint32_t)blk;	/* once each */
	pthread_mutex_unlock(&w->dirty_lock);
	return r < 0 ? w_break(s, r, "a dirty sector bitmap") : 0;
}

static uint64_t block_used(const struct vhdx *s, uint64_t blk)
{
	return MIN((uint64_t)s->p.block_size,
		   s->p.disk_size - blk * s->p.block_size);
}

static int w_flush_meta(struct vhdx *s);

/* ---- open / close ---- */

void vhdx_write_close(struct vhdx *s, bool keep)
{
	struct vhdx_writer *w = s->w;

	if (!w)
		return;
	if (keep && (w->bat_n || w->bm_n) && !w_broken(s))
		(void)w_flush_meta(s);	/* logs its errors */
	free(w->bat_dirty);
	free(w->bat_list);
	free(w->bm_list);
	free(w->zeros);
	pthread_mutex_destroy(&w->alloc_lock);
	pthread_mutex_destroy(&w->dirty_lock);
	pthread_mutex_destroy(&w->flush_lock);
	free(w);
	s->w = NULL;
}

int vhdx_write_open(struct vhdx *s)
{
	struct vhdx_writer *w;

	if (!guid_is_zero(&s->hdr.log_guid) || s->log.entries || s->via_read)
		return vhdx_err(-EROFS, s->path,
				"the log is not empty (it was replayed in "
				"memory only): open it read-only, or let "
				"Hyper-V replay it, before writing (%u "
				"entries)", s->log.entries);
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_init(&w->alloc_lock, NULL);
	pthread_mutex_init(&w->dirty_lock, NULL);
	pthread_mutex_init(&w->flush_lock, NULL);
	s->w = w;
	w->next = round_up(s->file_size, VHDX_ALIGN);
	/* as vhdx_bat_geometry counts them (2.5) */
	w->nent = vhdx_bat_entry_count(s->nblocks, s->chunk_ratio,
				       s->p.has_parent);
	/* whole pages: the region is 1 MiB-aligned, at least this long */
	w->bat_end = MIN(round_up(w->nent * 8, W_PAGE), s->rg.bat.len);
	w->dirty_max = MIN((uint64_t)VHDX_DIRTY_MAX,
			   VHDX_DIRTY_BYTES / round_up(s->slice_len, W_SECTOR));
	w->bat_dirty = calloc(w->nent / 8 + 1, 1);
	if (!w->bat_dirty) {
		vhdx_write_close(s, false);
		return -ENOMEM;
	}
	return 0;
}

/* ---- step 0: new headers, once per open ---- */

static int w_session_locked(struct vhdx *s)
{
	uint8_t *buf;
	struct vhdx_header h = s->hdr;
	uint64_t slot[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
	int cur = 0, r;

	if (s->w->session)
		return 0;
	buf = malloc(2 * VHDX_HEADER_SIZE);
	if (!buf)
		return -ENOMEM;
	/* the slot of the current header, as open() picked it */
	cur = s->hdr_slot;
	r = vhdx_guid_random(&h.file_write_guid);
	if (r == 0)
		r = vhdx_guid_random(&h.data_write_guid);
	if (r < 0)
		goto out;
	memset(&h.log_guid, 0, sizeof(h.log_guid));
	for (int k = 0; k < 2 && r == 0; k++) {
		h.sequence = s->hdr.sequence + 1 + (uint64_t)k;
		vhdx_header_encode(&h, buf);
		r = pwrite_full(s->fd, buf, VHDX_HEADER_SIZE,
				slot[k == 0 ? 1 - cur : cur]);
		if (r < 0)
			r = w_break(s, r, "header update");
		else
			r = w_sync(s);
	}
	if (r == 0) {
		s->hdr = h;
		__atomic_store_n(&s->w->session, true, __ATOMIC_RELEASE);
	}
out:
	free(buf);
	return r;
}

static int w_session(struct vhdx *s)
{
	int r;

	if (__atomic_load_n(&s->w->session, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&s->w->alloc_lock);
	r = w_session_locked(s);
	pthread_mutex_unlock(&s->w->alloc_lock);
	return r;
}

/* ---- sector bitmaps ---- */

static bool bits_set(const uint8_t *bm, uint64_t i, uint64_t end)
{
	for (; i < end; i++) {
		if (!(i & 7) && i + 8 <= end) {
			if (__atomic_load_n(&bm[i >> 3], __ATOMIC_SEQ_CST) !=
			    0xff)
				return false;
			i += 7;
			continue;
		}
		if (!(__atomic_load_n(&bm[i >> 3], __ATOMIC_SEQ_CST) >>
		      (i & 7) & 1))
			return false;
	}
	return true;
}

/* OR bits [i, end) into bm, one atomic OR per byte (LSB first, 2.5.1.2) */
static void bits_or(uint8_t *bm, uint64_t i, uint64_t end)
{
	while (i < end) {
		uint64_t byte = i >> 3;
		unsigned lo = (unsigned)(i & 7);
		unsigned hi = (unsigned)MIN((uint64_t)8, end - byte * 8);

		__atomic_fetch_or(&bm[byte],
				  (uint8_t)((0xffu << lo) & (0xffu >> (8 - hi))),
				  __ATOMIC_SEQ_CST);
		i = byte * 8 + hi;
	}
}

/*
 * Set the bits of sectors [sec, sec + nsec) of block blk in memory and
 * mark its slice dirty.  fresh (alloc_lock held, the block not published
 * yet): the block is becoming PARTIALLY_PRESENT, so it gets a new slice,
 * all clear (stale bits of a block that was not present must not
 * survive).  Otherwise the slice is the cached one, or read back.
 */
static int w_set_bits(struct vhdx *s, uint64_t blk, uint64_t sec,
		      uint64_t nsec, bool fresh)
{
	uint64_t i0 = sec, i1 = i0 + nsec;
	unsigned *inflight = &s->w->inflight[blk % W_STRIPES];
	struct vhdx_slice **slot, *sl = NULL, *tmp = NULL;
	int r = 0;

	pthread_rwlock_rdlock(&s->sl.lock);
	if (fresh) {
		slot = vhdx_slice_slot(s, blk);
		sl = slot ? *slot : NULL;
		if (!slot) {
			r = -ENOMEM;
		} else if (sl) {	/* left from an earlier state */
			for (uint32_t k = 0; k < s->slice_len; k++)
				__atomic_store_n(&sl->bits[k], 0,
						 __ATOMIC_SEQ_CST);
		} else {
			sl = calloc(1, vhdx_slice_size(s));
			if (!sl)
				r = -ENOMEM;
			else	/* published before the BAT entry */
				__atomic_store_n(slot, sl, __ATOMIC_RELEASE);
			if (sl)
				__atomic_add_fetch(&s->sl.bytes,
						   vhdx_slice_size(s),
						   __ATOMIC_RELAXED);
		}
	} else {
		r = vhdx_slice_get(s, blk, true, &sl, &tmp);	/* kept */
	}
	if (r < 0) {
		pthread_rwlock_unlock(&s->sl.lock);
		return w_break(s, r, "a sector bitmap");
	}
	if (!fresh && bits_set(sl->bits, i0, i1) &&
	    !__atomic_load_n(inflight, __ATOMIC_SEQ_CST)) {
		pthread_rwlock_unlock(&s->sl.lock);
		return 0;	/* set, and its setter's dirty mark is done */
	}
	__atomic_fetch_add(inflight, 1, __ATOMIC_SEQ_CST);
	bits_or(sl->bits, i0, i1);
	r = bm_dirty(s, blk, sl);
	__atomic_fetch_sub(inflight, 1, __ATOMIC_SEQ_CST);
	pthread_rwlock_unlock(&s->sl.lock);
	return r;
}

/* ---- flush ---- */

/* A BAT entry taken for a flush: its index and its value then. */
struct bat_take {
	uint64_t idx;
	uint64_t val;
};

static int take_cmp(const void *a, const void *b)
{
	const struct bat_take *x = a, *y = b;

	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/*
 * Step 4: block blk's slice, in the 512-byte sectors that hold it: the
 * file's bytes of the neighbours' slices (what the last flush wrote, or
 * zeros in a new bitmap block), this slice's from memory.
 */
static int w_write_slice(struct vhdx *s, uint64_t blk, uint8_t *tmp)
{
	uint64_t c = blk / s->chunk_ratio;
	uint64_t slice = blk % s->chunk_ratio * s->slice_len;
	uint64_t lo = slice / W_SECTOR * W_SECTOR;
	uint64_t hi = round_up(slice + s->slice_len, W_SECTOR);
	uint64_t at = VHDX_BAT_OFFSET(s->sb[c]);	/* set before the block */
	struct vhdx_slice **slot = vhdx_slice_slot(s, blk), *sl;
	int r;

	/* dirty slices stay cached: only clean ones are dropped, and only
	 * under flush_lock, which the caller holds */
	sl = slot ? __atomic_load_n(slot, __ATOMIC_ACQUIRE) : NULL;
	if (!sl)
		return w_break(s, -ENOMEM, "sector bitmap update");
	if (slice != lo || slice + s->slice_len != hi) {
		r = pread_full(s->fd, tmp, hi - lo, at + lo);
		if (r < 0)
			return w_break(s, r, "sector bitmap update");
	}
	__atomic_store_n(&sl->dirty, 0, __ATOMIC_SEQ_CST);
	for (uint64_t k = 0; k < s->slice_len; k++)
		tmp[slice - lo + k] = __atomic_load_n(&sl->bits[k],
						      __ATOMIC_SEQ_CST);
	r = pwrite_full(s->fd, tmp, hi - lo, at + lo);
	return r < 0 ? w_break(s, r, "sector bitmap update") : 0;
}

/*
 * Step 6: the BAT pages holding the taken entries t[0..n) (sorted):
 * each run of neighbouring pages (W_BAT_RUN at most) read from the file
 * (the BAT as flushed: only this writer writes it, one flush at a time),
 * the entries put in, written back in one write.
 */
static int w_write_bat(struct vhdx *s, const struct bat_take *t, uint64_t n,
		       uint8_t *buf)
{
	const uint64_t per = W_PAGE / 8;
	const struct vhdx_writer *w = s->w;
	int r = 0;

	for (uint64_t i = 0; i < n && r == 0;) {
		uint64_t p0 = t[i].idx / per, p1 = p0, b0, b1;

		for (uint64_t j = i; j < n && t[j].idx / per <= p1 + 1 &&
		     t[j].idx / per < p0 + W_BAT_RUN; j++)
			p1 = t[j].idx / per;
		b0 = p0 * W_PAGE;
		b1 = MIN((p1 + 1) * W_PAGE, w->bat_end);
		r = pread_full(s->fd, buf, b1 - b0, s->rg.bat.off + b0);
		for (; r == 0 && i < n && t[i].idx / per <= p1; i++)
			put_le64(buf + t[i].idx * 8 - b0, t[i].val);
		if (r == 0)
			r = pwrite_full(s->fd, buf, b1 - b0,
					s->rg.bat.off + b0);
		if (r < 0)
			r = w_break(s, r, "BAT update");
	}
	return r;
}

/* Steps 3-7 at the top of this file; flush_lock held (or closing). */
static int w_flush_meta(struct vhdx *s)
{
	struct vhdx_writer *w = s->w;
	struct bat_take *take = NULL;
	uint32_t *bm_idx = NULL;
	uint64_t nbat = 0, nbm = 0;
	uint8_t *tmp;
	int r = 0;

	if (w_broken(s))
		return -EIO;
	tmp = malloc(MAX(round_up(s->slice_len, W_SECTOR) + W_SECTOR,
			 (uint64_t)W_BAT_RUN * W_PAGE));
	if (!tmp)
		return -ENOMEM;
	/* 3 */
	pthread_mutex_lock(&w->alloc_lock);
	pthread_mutex_lock(&w->dirty_lock);
	if (w->bat_n)
		take = malloc(w->bat_n * sizeof(*take));
	if (w->bm_n)
		bm_idx = malloc(w->bm_n * sizeof(*bm_idx));
	if ((w->bat_n && !take) || (w->bm_n && !bm_idx)) {
		r = -ENOMEM;
	} else {
		nbat = w->bat_n;
		nbm = w->bm_n;
		for (uint64_t i = 0; i < nbat; i++) {
			uint32_t k = w->bat_list[i];

			take[i].idx = k;
			take[i].val = bat_value(s, k);
			w->bat_dirty[k >> 3] &= (uint8_t)~(1u << (k & 7));
		}
		if (nbm)
			memcpy(bm_idx, w->bm_list, nbm * sizeof(*bm_idx));
		w->bat_n = w->bm_n = 0;
	}
	pthread_mutex_unlock(&w->dirty_lock);
	pthread_mutex_unlock(&w->alloc_lock);
	/* 4 */
	for (uint64_t i = 0; i < nbm && r == 0; i++)
		r = w_write_slice(s, bm_idx[i], tmp);
	/* 5 */
	if (r == 0)
		r = w_sync(s);
	/* 6, 7 */
	if (r == 0 && nbat) {
		qsort(take, nbat, sizeof(*take), take_cmp);
		r = w_write_bat(s, take, nbat, tmp);
		if (r == 0)
			r = w_sync(s);
	}
	free(tmp);
	free(take);
	free(bm_idx);
	return r;
}

int vhdx_flush(struct img *img)
{
	struct vhdx *s = img->priv;
	int r;

	if (!s->w)
		return 0;
	if (w_broken(s) || img_broken_get(img))
		return -EIO;
	pthread_mutex_lock(&s->w->flush_lock);
	r = w_flush_meta(s);
	pthread_mutex_unlock(&s->w->flush_lock);
	return r;
}

/* Too much dirty metadata: flush it here, unless a flush is running. */
/*
 * Drop the clean slices from the cache (flush_lock held, so no flush
 * reads them; the cache lock exclusive, so nobody else does).  Dirty
 * ones stay: their bits are not in the file yet.
 */
static void w_drop_clean(struct vhdx *s)
{
	size_t size = vhdx_slice_size(s);

	pthread_rwlock_wrlock(&s->sl.lock);
	for (uint64_t c = 0; c < s->nchunks; c++) {
		struct vhdx_slice **d = s->sl.dir[c];
		bool kept = false;

		for (uint32_t k = 0; d && k < s->chunk_ratio; k++) {
			if (!d[k])
				continue;
			if (d[k]->dirty) {
				kept = true;
				continue;
			}
			free(d[k]);
			d[k] = NULL;
			s->sl.bytes -= size;
		}
		if (d && !kept) {
			free(d);
			s->sl.dir[c] = NULL;
		}
	}
	pthread_rwlock_unlock(&s->sl.lock);
}

/*
 * Too much dirty metadata, or too many cached slices: flush here, unless
 * a flush is running, then drop the clean slices.  Memory stays bounded
 * by dirty_max and VHDX_SLICE_CACHE, whatever the size of the disk.
 */
static int w_bound_dirty(struct vhdx *s)
{
	struct vhdx_writer *w = s->w;
	bool full = s->sl.dir && __atomic_load_n(&s->sl.bytes,
						 __ATOMIC_RELAXED) >
					 VHDX_SLICE_CACHE;
	int r;

	if (!full &&
	    __atomic_load_n(&w->bat_n, __ATOMIC_RELAXED) < w->dirty_max &&
	    __atomic_load_n(&w->bm_n, __ATOMIC_RELAXED) < w->dirty_max)
		return 0;
	if (pthread_mutex_trylock(&w->flush_lock))
		return 0;
	r = w_flush_meta(s);
	if (r == 0 && full)
		w_drop_clean(s);
	pthread_mutex_unlock(&w->flush_lock);
	return r;
}

/* ---- writes ---- */

static int w_block(struct img *img, struct vhdx *s, const uint8_t *buf,
		   uint64_t blk, uint64_t in, uint64_t len);

/* Steps 1-2 for a block that is not allocated (yet). */
static int w_alloc(struct img *img, struct vhdx *s, const uint8_t *buf,
		   uint64_t blk, uint64_t in, uint64_t len)
{
	struct vhdx_writer *w = s->w;
	uint32_t lss = s->p.logical_sector;
	uint64_t e, c = blk / s->chunk_ratio, off, end, ne;
	unsigned st;
	bool partial, new_sb = false;
	int r;

	pthread_mutex_lock(&w->alloc_lock);
	e = s->bat[blk];	/* only changed under alloc_lock */
	st = VHDX_BAT_STATE(e);
	if (st == VHDX_PAYLOAD_FULLY_PRESENT ||
	    st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {	/* lost a race */
		pthread_mutex_unlock(&w->alloc_lock);
		return w_block(img, s, buf, blk, in, len);
	}
	r = img_health_check(img);	/* a cut file would grow back */
	if (r == 0)
		r = w_session_locked(s);
	if (r < 0)
		goto out;
	/* Only a NOT_PRESENT block of a differencing file shows its parent
	 * through unwritten sectors; every other state reads as zeros here,
	 * and so does the unwritten rest of a new (sparse) block. */
	partial = s->p.has_parent && st == VHDX_PAYLOAD_NOT_PRESENT &&
		  !(in == 0 && len >= block_used(s, blk));
	off = w->next;
	end = off + s->p.block_size;
	if (partial && VHDX_BAT_STATE(s->sb[c]) != VHDX_SB_PRESENT) {
		new_sb = true;
		end += VHDX_SB_BLOCK_SIZE;
	}
	/* 1: the file grows to end: by the data write if it reaches it */
	if (off + in + len < end && ftruncate(s->fd, (off_t)end) < 0) {
		r = w_break(s, -errno, "growing the file");
		goto out;
	}
	r = pwrite_full(s->fd, buf, len, off + in);
	if (r < 0) {
		r = w_break(s, r, "writing a new block");
		goto out;
	}
	w->next = end;
	if (end > s->file_size) {	/* reads of the new space (bat.c) */
		__atomic_store_n(&s->file_size, end, __ATOMIC_RELEASE);
		__atomic_store_n(&s->eff_size, end, __ATOMIC_RELEASE);
	}
	img_end_grow(img, end);
	/* 2 */
	if (new_sb) {	/* the new bitmap block is a hole: all clear */
		__atomic_store_n(&s->sb[c],
				 (off + s->p.block_size) | VHDX_SB_PRESENT,
				 __ATOMIC_RELEASE);
		r = bat_dirty(s, sb_index(s, c));
		if (r < 0)
			goto out;
	}
	if (partial) {
		r = w_set_bits(s, blk, in / lss, len / lss, true);
		if (r < 0)
			goto out;
	}
	ne = off | (partial ? VHDX_PAYLOAD_PARTIALLY_PRESENT :
		    VHDX_PAYLOAD_FULLY_PRESENT);
	__atomic_store_n(&s->bat[blk], ne, __ATOMIC_RELEASE);
	r = bat_dirty(s, bat_index(s, blk));
out:
	pthread_mutex_unlock(&w->alloc_lock);
	return r;
}

/* [in, in + len) of block blk (sector-aligned, inside the block). */
static int w_block(struct img *img, struct vhdx *s, const uint8_t *buf,
		   uint64_t blk, uint64_t in, uint64_t len)
{
	uint64_t e = __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
	uint32_t lss = s->p.logical_sector;
	int r;

	switch (VHDX_BAT_STATE(e)) {
	case VHDX_PAYLOAD_FULLY_PRESENT:
		return pwrite_full(s->fd, buf, len, VHDX_BAT_OFFSET(e) + in);
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		r = pwrite_full(s->fd, buf, len, VHDX_BAT_OFFSET(e) + in);
		if (r == 0)
			r = w_set_bits(s, blk, in / lss, len / lss, false);
		return r;
	default:
		return w_alloc(img, s, buf, blk, in, len);
	}
}

int vhdx_write(struct img *img, const void *buf, size_t n, uint64_t off,
	       const struct img_below *below)
{
	struct vhdx *s = img->priv;
	const uint8_t *p = buf;
	uint64_t bs = s->p.block_size;
	int r;

	(void)below;	/* sector-granular: nothing is copied from below */
	if (!s->w)
		return -EROFS;
	if (w_broken(s))
		return -EIO;
	r = w_session(s);
	while (r == 0 && n) {
		uint64_t blk = off / bs, in = off % bs;
		uint64_t len = MIN((uint64_t)n, bs - in);

		r = w_block(img, s, p, blk, in, len);
		p += len;
		off += len;
		n -= len;
	}
	return r < 0 ? r : w_bound_dirty(s);
}

/* Does [in, in + len) of block blk read as zeros already? */
static bool reads_zero(const struct vhdx *s, uint64_t blk)
{
	switch (VHDX_BAT_STATE(__atomic_load_n(&s->bat[blk],
					       __ATOMIC_ACQUIRE))) {
	case VHDX_PAYLOAD_ZERO:
	case VHDX_PAYLOAD_UNDEFINED:	/* read as zeros (open.c) */
	case VHDX_PAYLOAD_UNMAPPED:
	case VHDX_PAYLOAD_UNMAPPED_V095:
		return true;
	case VHDX_PAYLOAD_NOT_PRESENT:
		return !s->p.has_parent;	/* nothing below */
	default:
		return false;
	}
}

int vhdx_zero(struct img *img, uint64_t off, uint64_t n,
	      const struct img_below *below)
{
	struct vhdx *s = img->priv;
	uint64_t bs = s->p.block_size;
	int r;

	(void)below;
	if (!s->w)
		return -EROFS;
	if (w_broken(s))
		return -EIO;
	r = w_session(s);
	while (r == 0 && n) {
		uint64_t blk = off / bs, in = off % bs;
		uint64_t len = MIN(n, bs - in);

		if (reads_zero(s, blk)) {
			/* nothing to do */
		} else if (in == 0 && len >= block_used(s, blk) &&
			   !s->p.leave_allocated) {
			/* 2.5.1.1 ZERO; the old space is never reused */
			pthread_mutex_lock(&s->w->alloc_lock);
			__atomic_store_n(&s->bat[blk],
					 (uint64_t)VHDX_PAYLOAD_ZERO,
					 __ATOMIC_RELEASE);
			r = bat_dirty(s, bat_index(s, blk));
			pthread_mutex_unlock(&s->w->alloc_lock);
		} else {
			if (!s->w->zeros) {
				uint8_t *z = calloc(1, bs), *old = NULL;

				if (!z)
					return -ENOMEM;
				if (!__atomic_compare_exchange_n(
					    &s->w->zeros, &old, z, false,
					    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
					free(z);
			}
			r = w_block(img, s,
				    __atomic_load_n(&s->w->zeros,
						    __ATOMIC_ACQUIRE),
				    blk, in, len);
		}
		off += len;
		n -= len;
	}
	return r < 0 ? r : w_bound_dirty(s);
}
