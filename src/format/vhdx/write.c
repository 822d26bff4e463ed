// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx-write.c: writing a VHDX top image, and creating a differencing
 * VHDX over any parent (MS-VHDX v1.0).
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
 *      becoming PARTIALLY_PRESENT gets its bitmap slice zeroed and the
 *      written sectors' bits set (stale bits of a block that was not
 *      present must not survive), then the BAT entry is stored with
 *      release (the chunk's bitmap pointer before it).  A concurrent
 *      reader sees either the old state (the parent's sectors, or zeros)
 *      or the finished block.  The entries and the slice are marked
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
 *   3. under alloc_lock, take the dirty BAT entries (their values, into
 *      bat_disk, the BAT as it is to be in the file) and the dirty
 *      bitmap slices: every entry taken was published, so what it points
 *      at was written before;
 *   4. write the slices (each block's whole slice, in the 512-byte
 *      sectors that hold it, from memory; the dirty flag is cleared before
 *      the copy, so bits set after it mark the block dirty again);
 *   5. fdatasync: data, bitmaps and the file size are durable;
 *   6. write the BAT pages holding the taken entries, merged into runs,
 *      from bat_disk: each entry is one aligned 8-byte field inside a
 *      logical sector, and every entry of bat_disk may be in the file, so
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
 * write and flush fails with -EIO.
 *
 * Memory: a writable differencing image keeps each chunk's whole 1 MiB
 * sector bitmap (one per 2^23 sectors: 4 GiB of disk at 512 bytes), and
 * every writable image a copy of the BAT.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "utf16.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (path) ? (path) : "-", \
		    ##__VA_ARGS__)

#define VHDX_DIFF_BLOCK_DEFAULT (2 * VHDX_MiB)	/* what Hyper-V uses */
#define VHDX_META_IS_VIRTUAL_DISK 0x2
#define W_SECTOR 512u		/* granule of bitmap rewrites */
#define W_PAGE 4096u		/* granule of BAT rewrites */
#define W_STRIPES 64		/* inflight counters */
/* Dirty BAT entries (or bitmap slices, and their bytes) past which a
 * writer flushes. */
#define VHDX_DIRTY_MAX 4096u
#define VHDX_DIRTY_BYTES (16u << 20)

struct vhdx_w {
	pthread_mutex_t alloc_lock;	/* allocation, BAT, headers; before
					 * dirty_lock */
	pthread_mutex_t dirty_lock;	/* bm_list */
	pthread_mutex_t flush_lock;	/* one flush at a time */
	bool session;		/* headers renewed (atomic loads) */
	bool broken;		/* a metadata write failed (atomic) */
	uint64_t next;		/* file end: next block (alloc_lock) */
	uint64_t nent;		/* BAT entries (payload and bitmap) */
	uint8_t *bat_disk;	/* owned: the BAT bytes as flushed, whole
				 * 4 KiB pages (taken under alloc_lock,
				 * written under flush_lock) */
	uint64_t bat_disk_len;
	uint8_t *bat_dirty;	/* owned: per BAT index (alloc_lock) */
	uint32_t *bat_list;	/* owned: dirty BAT indexes (alloc_lock) */
	uint64_t bat_n;
	uint8_t *bm_dirty;	/* owned: per payload block (atomic) */
	uint32_t *bm_list;	/* owned: blocks whose slice is newer in
				 * memory than in the file (dirty_lock) */
	uint64_t bm_n;
	uint64_t dirty_max;	/* bound on bat_n and bm_n */
	unsigned inflight[W_STRIPES];	/* writers setting bits (atomic) */
	uint64_t *sb;		/* owned: differencing: nchunks sector bitmap
				 * BAT entries (alloc_lock) */
	uint8_t **sbm;		/* owned: differencing: nchunks 1 MiB sector
				 * bitmaps (each owned) or NULL; pointers
				 * stored with release before a BAT entry */
	uint8_t *zeros;		/* owned: one block of zeros, for ->zero */
};

/* ---- helpers ---- */

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static int random_guid(struct guid *g)
{
	ssize_t n = getrandom(g->b, sizeof(g->b), 0);

	if (n != (ssize_t)sizeof(g->b))
		return log_err_ret(n < 0 ? -errno : -EIO,
				   "vhdx: no random bytes for a GUID (%zd)", n);
	g->b[6] = (uint8_t)((g->b[6] & 0x0f) | 0x40);	/* RFC 4122 v4 */
	g->b[8] = (uint8_t)((g->b[8] & 0x3f) | 0x80);
	return 0;
}

static void put_crc(uint8_t *buf, size_t len, size_t at)
{
	put_le32(buf + at, 0);
	put_le32(buf + at, crc32c(0, buf, len));
}

static void header_encode(const struct vhdx_header *h, uint8_t *buf)
{
	struct vhdx_header_raw *r = (void *)buf;	/* bytes only */

	memset(buf, 0, VHDX_HEADER_SIZE);
	memcpy(r->signature, "head", 4);
	put_le64(r->sequence, h->sequence);
	guid_to_le(&h->file_write_guid, r->file_write_guid);
	guid_to_le(&h->data_write_guid, r->data_write_guid);
	guid_to_le(&h->log_guid, r->log_guid);
	put_le16(r->log_version, h->log_version);
	put_le16(r->version, h->version);
	put_le32(r->log_length, h->log_length);
	put_le64(r->log_offset, h->log_offset);
	put_crc(buf, VHDX_HEADER_SIZE, offsetof(struct vhdx_header_raw,
						checksum));
}

/* BAT index of payload block blk, and of chunk c's sector bitmap (2.5) */
static uint64_t bat_index(const struct vhdx *s, uint64_t blk)
{
	return blk + blk / s->chunk_ratio;
}

static uint64_t sb_index(const struct vhdx *s, uint64_t c)
{
	return c * ((uint64_t)s->chunk_ratio + 1) + s->chunk_ratio;
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
static void bat_dirty(struct vhdx *s, uint64_t idx)
{
	struct vhdx_w *w = s->w;

	if (w->bat_dirty[idx])
		return;
	w->bat_dirty[idx] = 1;
	w->bat_list[w->bat_n++] = (uint32_t)idx;	/* at most once each */
}

/* The in-memory value of BAT entry idx (alloc_lock held). */
static uint64_t bat_value(const struct vhdx *s, uint64_t idx)
{
	uint64_t per = (uint64_t)s->chunk_ratio + 1;

	if (idx % per == s->chunk_ratio)
		return s->w->sb[idx / per];
	return s->bat[idx / per * s->chunk_ratio + idx % per];
}

/* Block blk's bitmap slice is newer in memory than in the file. */
static void bm_dirty(struct vhdx *s, uint64_t blk)
{
	struct vhdx_w *w = s->w;

	if (__atomic_exchange_n(&w->bm_dirty[blk], 1, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&w->dirty_lock);
	w->bm_list[w->bm_n++] = (uint32_t)blk;	/* at most once each */
	pthread_mutex_unlock(&w->dirty_lock);
}

static uint64_t block_used(const struct vhdx *s, uint64_t blk)
{
	return MIN((uint64_t)s->p.block_size,
		   s->p.disk_size - blk * s->p.block_size);
}

static int w_flush_meta(struct vhdx *s);

/* ---- open / close ---- */

const uint8_t *vhdx_w_chunk_bitmap(const struct vhdx *s, uint64_t c)
{
	/* set before any PARTIALLY_PRESENT entry of the chunk is published */
	return __atomic_load_n(&s->w->sbm[c], __ATOMIC_ACQUIRE);
}

void vhdx_w_free(struct vhdx *s)
{
	struct vhdx_w *w = s->w;

	if (!w)
		return;
	if (w->bat_list && (w->bat_n || w->bm_n) && !w_broken(s))
		(void)w_flush_meta(s);	/* logs its errors */
	free(w->bat_disk);
	free(w->bat_dirty);
	free(w->bat_list);
	free(w->bm_dirty);
	free(w->bm_list);
	for (uint64_t c = 0; w->sbm && c < s->nchunks; c++)
		free(w->sbm[c]);
	free(w->sbm);
	free(w->sb);
	free(w->zeros);
	pthread_mutex_destroy(&w->alloc_lock);
	pthread_mutex_destroy(&w->dirty_lock);
	pthread_mutex_destroy(&w->flush_lock);
	free(w);
	s->w = NULL;
}

/* Differencing: every chunk's sector bitmap entry and present bitmap. */
static int w_load_bitmaps(struct vhdx *s, struct vhdx_w *w)
{
	uint64_t loaded = 0;

	w->sb = calloc(s->nchunks, sizeof(*w->sb));
	w->sbm = calloc(s->nchunks, sizeof(*w->sbm));
	if (!w->sb || !w->sbm)
		return -ENOMEM;
	for (uint64_t c = 0; c < s->nchunks; c++) {
		uint8_t b[8];
		int r = pread_full(s->fd, b, sizeof(b),
				   s->rg.bat.off + sb_index(s, c) * 8);

		if (r < 0)
			return vhdx_err(r, s->path, "reading the BAT: %s",
					strerror(-r));
		w->sb[c] = get_le64(b);
		if (VHDX_BAT_STATE(w->sb[c]) != VHDX_SB_PRESENT)
			continue;	/* checked at open: NOT_PRESENT */
		loaded += VHDX_SB_BLOCK_SIZE;
		if (loaded > VHDX_SBM_CAP)
			return vhdx_err(-EFBIG, s->path,
					"too many sector bitmaps to write "
					"(%llu bytes)",
					(unsigned long long)loaded);
		w->sbm[c] = malloc(VHDX_SB_BLOCK_SIZE);
		if (!w->sbm[c])
			return -ENOMEM;
		/* open() checked it lies inside the file */
		r = pread_full(s->fd, w->sbm[c], VHDX_SB_BLOCK_SIZE,
			       VHDX_BAT_OFFSET(w->sb[c]));
		if (r < 0)
			return vhdx_err(r, s->path,
					"reading sector bitmap %llu: %s",
					(unsigned long long)c, strerror(-r));
	}
	return 0;
}

int vhdx_w_open(struct vhdx *s)
{
	struct vhdx_w *w;
	int r;

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
	w->nent = s->p.has_parent ? s->nchunks * ((uint64_t)s->chunk_ratio + 1)
				  : s->nblocks + (s->nblocks - 1) /
							 s->chunk_ratio;
	/* whole pages: the region is 1 MiB-aligned, at least this long */
	w->bat_disk_len = MIN(round_up(w->nent * 8, W_PAGE), s->rg.bat.len);
	w->dirty_max = MIN((uint64_t)VHDX_DIRTY_MAX,
			   VHDX_DIRTY_BYTES / round_up(s->slice_len, W_SECTOR));
	w->bat_disk = malloc(w->bat_disk_len);
	w->bat_dirty = calloc(w->nent, 1);
	w->bat_list = malloc(w->nent * sizeof(*w->bat_list));
	w->bm_dirty = calloc(s->nblocks, 1);
	w->bm_list = malloc(s->nblocks * sizeof(*w->bm_list));
	if (!w->bat_disk || !w->bat_dirty || !w->bat_list || !w->bm_dirty ||
	    !w->bm_list) {
		r = -ENOMEM;
		goto fail;
	}
	r = pread_full(s->fd, w->bat_disk, w->bat_disk_len, s->rg.bat.off);
	if (r < 0) {
		vhdx_err(r, s->path, "reading the BAT: %s", strerror(-r));
		goto fail;
	}
	r = s->p.has_parent ? w_load_bitmaps(s, w) : 0;
	if (r == 0)
		return 0;
fail:
	vhdx_w_free(s);
	return r;
}

/* ---- step 0: new headers, once per open ---- */

/* The current header's slot, for here and vhdx-parent.c; see vhdx.h. */
int vhdx_header_slot(int fd, uint8_t *buf, int *cur)
{
	struct vhdx_header a, b;
	int r;

	r = pread_full(fd, buf, VHDX_HEADER_SIZE, VHDX_HEADER1_OFF);
	if (r == 0)
		r = pread_full(fd, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE,
			       VHDX_HEADER2_OFF);
	if (r < 0)
		return r;
	*cur = 0;
	if (vhdx_header_decode(buf, &a) < 0)
		*cur = 1;
	else if (vhdx_header_decode(buf + VHDX_HEADER_SIZE, &b) == 0 &&
		 b.sequence > a.sequence)
		*cur = 1;
	return 0;
}

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
	/* Which slot holds the current header (the one open() picked)? */
	r = vhdx_header_slot(s->fd, buf, &cur);
	if (r < 0)
		goto out;
	r = random_guid(&h.file_write_guid);
	if (r == 0)
		r = random_guid(&h.data_write_guid);
	if (r < 0)
		goto out;
	memset(&h.log_guid, 0, sizeof(h.log_guid));
	for (int k = 0; k < 2 && r == 0; k++) {
		h.sequence = s->hdr.sequence + 1 + (uint64_t)k;
		header_encode(&h, buf);
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
 * yet): the block is becoming PARTIALLY_PRESENT, so its whole slice is
 * cleared first.
 */
static void w_set_bits(struct vhdx *s, uint64_t blk, uint64_t sec,
		       uint64_t nsec, bool fresh)
{
	uint64_t c = blk / s->chunk_ratio;
	uint64_t slice = blk % s->chunk_ratio * s->slice_len;
	uint64_t i0 = slice * 8 + sec, i1 = i0 + nsec;
	unsigned *inflight = &s->w->inflight[blk % W_STRIPES];
	uint8_t *bm = s->w->sbm[c];

	if (!fresh && bits_set(bm, i0, i1) &&
	    !__atomic_load_n(inflight, __ATOMIC_SEQ_CST))
		return;	/* set, and its setter's dirty mark is done */
	__atomic_fetch_add(inflight, 1, __ATOMIC_SEQ_CST);
	if (fresh)
		for (uint64_t k = slice; k < slice + s->slice_len; k++)
			__atomic_store_n(&bm[k], 0, __ATOMIC_SEQ_CST);
	bits_or(bm, i0, i1);
	bm_dirty(s, blk);
	__atomic_fetch_sub(inflight, 1, __ATOMIC_SEQ_CST);
}

/* ---- flush ---- */

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Step 4: block blk's slice, in the 512-byte sectors that hold it. */
static int w_write_slice(struct vhdx *s, uint64_t blk, uint8_t *tmp)
{
	uint64_t c = blk / s->chunk_ratio;
	uint64_t slice = blk % s->chunk_ratio * s->slice_len;
	uint64_t lo = slice / W_SECTOR * W_SECTOR;
	uint64_t hi = round_up(slice + s->slice_len, W_SECTOR);
	const uint8_t *bm = s->w->sbm[c];	/* set before the block was */
	int r;

	__atomic_store_n(&s->w->bm_dirty[blk], 0, __ATOMIC_SEQ_CST);
	for (uint64_t k = lo; k < hi; k++)
		tmp[k - lo] = __atomic_load_n(&bm[k], __ATOMIC_SEQ_CST);
	r = pwrite_full(s->fd, tmp, hi - lo, VHDX_BAT_OFFSET(s->w->sb[c]) + lo);
	return r < 0 ? w_break(s, r, "sector bitmap update") : 0;
}

/* Step 6: the BAT pages holding entries idx[0..n) (sorted), from
 * bat_disk, neighbouring pages in one write. */
static int w_write_bat(struct vhdx *s, const uint32_t *idx, uint64_t n)
{
	const uint64_t per = W_PAGE / 8;
	const struct vhdx_w *w = s->w;
	int r = 0;

	for (uint64_t i = 0; i < n && r == 0;) {
		uint64_t p0 = idx[i] / per, p1 = p0, b0, b1;

		while (i < n && idx[i] / per <= p1 + 1)
			p1 = idx[i++] / per;
		b0 = p0 * W_PAGE;
		b1 = MIN((p1 + 1) * W_PAGE, w->bat_disk_len);
		r = pwrite_full(s->fd, w->bat_disk + b0, b1 - b0,
				s->rg.bat.off + b0);
		if (r < 0)
			r = w_break(s, r, "BAT update");
	}
	return r;
}

/* Steps 3-7 at the top of this file; flush_lock held (or closing). */
static int w_flush_meta(struct vhdx *s)
{
	struct vhdx_w *w = s->w;
	uint32_t *bat_idx = NULL, *bm_idx = NULL;
	uint64_t nbat = 0, nbm = 0;
	uint8_t *tmp;
	int r = 0;

	if (w_broken(s))
		return -EIO;
	tmp = malloc(round_up(s->slice_len, W_SECTOR) + W_SECTOR);
	if (!tmp)
		return -ENOMEM;
	/* 3 */
	pthread_mutex_lock(&w->alloc_lock);
	pthread_mutex_lock(&w->dirty_lock);
	if (w->bat_n)
		bat_idx = malloc(w->bat_n * sizeof(*bat_idx));
	if (w->bm_n)
		bm_idx = malloc(w->bm_n * sizeof(*bm_idx));
	if ((w->bat_n && !bat_idx) || (w->bm_n && !bm_idx)) {
		r = -ENOMEM;
	} else {
		nbat = w->bat_n;
		nbm = w->bm_n;
		for (uint64_t i = 0; i < nbat; i++) {
			uint32_t k = w->bat_list[i];

			bat_idx[i] = k;
			put_le64(w->bat_disk + (uint64_t)k * 8,
				 bat_value(s, k));
			w->bat_dirty[k] = 0;
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
		qsort(bat_idx, nbat, sizeof(*bat_idx), u32_cmp);
		r = w_write_bat(s, bat_idx, nbat);
		if (r == 0)
			r = w_sync(s);
	}
	free(tmp);
	free(bat_idx);
	free(bm_idx);
	return r;
}

int vhdx_w_flush(struct vhdx *s)
{
	int r;

	if (!s->w)
		return 0;
	if (w_broken(s))
		return -EIO;
	pthread_mutex_lock(&s->w->flush_lock);
	r = w_flush_meta(s);
	pthread_mutex_unlock(&s->w->flush_lock);
	return r;
}

/* Too much dirty metadata: flush it here, unless a flush is running. */
static int w_bound_dirty(struct vhdx *s)
{
	struct vhdx_w *w = s->w;
	int r;

	if (__atomic_load_n(&w->bat_n, __ATOMIC_RELAXED) < w->dirty_max &&
	    __atomic_load_n(&w->bm_n, __ATOMIC_RELAXED) < w->dirty_max)
		return 0;
	if (pthread_mutex_trylock(&w->flush_lock))
		return 0;
	r = w_flush_meta(s);
	pthread_mutex_unlock(&w->flush_lock);
	return r;
}

/* ---- writes ---- */

static int w_block(struct vhdx *s, const uint8_t *buf, uint64_t blk,
		   uint64_t in, uint64_t len);

/* Steps 1-2 for a block that is not allocated (yet). */
static int w_alloc(struct vhdx *s, const uint8_t *buf, uint64_t blk,
		   uint64_t in, uint64_t len)
{
	struct vhdx_w *w = s->w;
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
		return w_block(s, buf, blk, in, len);
	}
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
	if (partial && VHDX_BAT_STATE(w->sb[c]) != VHDX_SB_PRESENT) {
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
	/* 2 */
	if (new_sb) {
		uint8_t *bm = calloc(1, VHDX_SB_BLOCK_SIZE);	/* a hole */

		if (!bm) {
			r = w_break(s, -ENOMEM, "a new sector bitmap");
			goto out;
		}
		w->sb[c] = (off + s->p.block_size) | VHDX_SB_PRESENT;
		__atomic_store_n(&w->sbm[c], bm, __ATOMIC_RELEASE);
		bat_dirty(s, sb_index(s, c));
	}
	if (partial)
		w_set_bits(s, blk, in / lss, len / lss, true);
	ne = off | (partial ? VHDX_PAYLOAD_PARTIALLY_PRESENT :
		    VHDX_PAYLOAD_FULLY_PRESENT);
	__atomic_store_n(&s->bat[blk], ne, __ATOMIC_RELEASE);
	bat_dirty(s, bat_index(s, blk));
out:
	pthread_mutex_unlock(&w->alloc_lock);
	return r;
}

/* [in, in + len) of block blk (sector-aligned, inside the block). */
static int w_block(struct vhdx *s, const uint8_t *buf, uint64_t blk,
		   uint64_t in, uint64_t len)
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
			w_set_bits(s, blk, in / lss, len / lss, false);
		return r;
	default:
		return w_alloc(s, buf, blk, in, len);
	}
}

int vhdx_w_write(struct vhdx *s, const void *buf, size_t n, uint64_t off)
{
	const uint8_t *p = buf;
	uint64_t bs = s->p.block_size;
	int r;

	if (!s->w)
		return -EROFS;
	if (w_broken(s))
		return -EIO;
	r = w_session(s);
	while (r == 0 && n) {
		uint64_t blk = off / bs, in = off % bs;
		uint64_t len = MIN((uint64_t)n, bs - in);

		r = w_block(s, p, blk, in, len);
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
	case VHDX_PAYLOAD_UNDEFINED:	/* read as zeros (vhdx.c) */
	case VHDX_PAYLOAD_UNMAPPED:
	case VHDX_PAYLOAD_UNMAPPED_V095:
		return true;
	case VHDX_PAYLOAD_NOT_PRESENT:
		return !s->p.has_parent;	/* nothing below */
	default:
		return false;
	}
}

int vhdx_w_zero(struct vhdx *s, uint64_t off, uint64_t n)
{
	uint64_t bs = s->p.block_size;
	int r;

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
			bat_dirty(s, bat_index(s, blk));
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
			r = w_block(s, __atomic_load_n(&s->w->zeros,
						       __ATOMIC_ACQUIRE),
				    blk, in, len);
		}
		off += len;
		n -= len;
	}
	return r < 0 ? r : w_bound_dirty(s);
}

/* ---- create_diff ---- */

/* The parent locator item (2.6.2.6): header, entries, UTF-16LE strings. */
int vhdx_locator_encode(const struct vhdx_kv *kv, unsigned n, uint8_t *buf,
			size_t cap, size_t *len)
{
	struct vhdx_locator_hdr_raw *h = (void *)buf;	/* bytes only */
	size_t pos = sizeof(*h) + n * sizeof(struct vhdx_locator_entry_raw);

	guid_to_le(&vhdx_locator_type, h->locator_type);
	memset(h->reserved, 0, sizeof(h->reserved));
	put_le16(h->key_value_count, (uint16_t)n);
	for (unsigned i = 0; i < n; i++) {
		struct vhdx_locator_entry_raw *e = (void *)
			(buf + sizeof(*h) + i * sizeof(*e));
		const char *str[2] = { kv[i].key, kv[i].val };

		for (int k = 0; k < 2; k++) {
			uint8_t *u;
			size_t ulen;

			if (utf8_to_utf16(str[k], false, &u, &ulen) < 0)
				return -EINVAL;
			if (ulen > UINT16_MAX || pos + ulen > cap) {
				free(u);
				return -ENAMETOOLONG;
			}
			memcpy(buf + pos, u, ulen);
			free(u);
			put_le32(k ? e->value_offset : e->key_offset,
				 (uint32_t)pos);
			put_le16(k ? e->value_length : e->key_length,
				 (uint16_t)ulen);
			pos += ulen;
		}
	}
	*len = pos;
	return 0;
}

char *vhdx_backslashes(const char *prefix, const char *p)
{
	char *s;

	if (asprintf(&s, "%s%s", prefix, p) < 0)
		return NULL;
	for (char *q = s; *q; q++)
		if (*q == '/')
			*q = '\\';
	return s;
}

static void meta_entry(uint8_t *t, unsigned i, const struct guid *g,
		       uint32_t off, uint32_t len, uint32_t flags)
{
	struct vhdx_meta_entry_raw *e = (void *)
		(t + sizeof(struct vhdx_meta_hdr_raw) + i * sizeof(*e));

	guid_to_le(g, e->item_id);
	put_le32(e->offset, off);
	put_le32(e->length, len);
	put_le32(e->flags, flags);
}

/*
 * The metadata region (1 MiB): table, then the items from 64 KiB on.
 * parent_linkage names the parent's identity: a VHDX parent's
 * DataWriteGuid, a VHD parent's unique id; a parent without one (raw,
 * qcow2) gets the zero GUID, which the spec does not foresee: Hyper-V
 * would refuse the link, our resolver checks nothing when the parent's
 * reader reports no identity.  absolute_win32_path is the POSIX path
 * with '\' separators: no drive letter, so Windows falls back to
 * relative_path (tried first anyway, 2.6.2.6.2).
 */
static int meta_encode(uint8_t *m, const struct img_create_parent *par,
		       uint64_t size, uint32_t bs, uint32_t lss, uint32_t pss)
{
	uint32_t pos = VHDX_META_TABLE_SIZE;
	struct vhdx_meta_hdr_raw *h = (void *)m;	/* bytes only */
	struct guid id, page83;
	char sid[GUID_STR_LEN + 1];
	struct vhdx_kv kv[3] = { { "parent_linkage", NULL },
			    { "relative_path", NULL },
			    { "absolute_win32_path", NULL } };
	size_t loclen = 0;
	unsigned nkv = par->abs_path ? 3 : 2;
	int r;

	r = random_guid(&page83);
	if (r < 0)
		return r;
	memset(&id, 0, sizeof(id));
	if (par->img->has_id)
		id = par->img->id;
	guid_to_str(&id, sid);	/* lower case: libvhdi 20210425 reads no
				 * other (our reader and 7-Zip take both) */
	if (asprintf(&kv[0].val, "{%s}", sid) < 0)
		kv[0].val = NULL;
	kv[1].val = vhdx_backslashes(".\\", par->rel_path);
	if (par->abs_path)
		kv[2].val = vhdx_backslashes("", par->abs_path);
	if (!kv[0].val || !kv[1].val || (par->abs_path && !kv[2].val)) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(h->signature, "metadata", 8);
	put_le16(h->entry_count, 6);
	/* file parameters (2.6.2.1): HasParent, blocks not left allocated */
	meta_entry(m, 0, &vhdx_meta_file_params, pos, 8, VHDX_META_IS_REQUIRED);
	put_le32(m + pos, bs);
	put_le32(m + pos + 4, VHDX_PARAMS_HAS_PARENT);
	pos += 8;
	meta_entry(m, 1, &vhdx_meta_disk_size, pos, 8,
		   VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED);
	put_le64(m + pos, size);
	pos += 8;
	meta_entry(m, 2, &vhdx_meta_page83, pos, 16,
		   VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED);
	guid_to_le(&page83, m + pos);
	pos += 16;
	meta_entry(m, 3, &vhdx_meta_logical_sector, pos, 4,
		   VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED);
	put_le32(m + pos, lss);
	pos += 4;
	meta_entry(m, 4, &vhdx_meta_physical_sector, pos, 4,
		   VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED);
	put_le32(m + pos, pss);
	pos += 4;
	r = vhdx_locator_encode(kv, nkv, m + pos, VHDX_META_ITEM_MAX - pos,
			   &loclen);
	if (r == 0)
		meta_entry(m, 5, &vhdx_meta_parent_locator, pos,
			   (uint32_t)loclen, VHDX_META_IS_REQUIRED);
out:
	for (unsigned i = 0; i < 3; i++)
		free(kv[i].val);
	return r;
}

static void region_encode(uint8_t *t, uint64_t bat_off, uint64_t bat_len,
			  uint64_t meta_off, uint64_t meta_len)
{
	struct vhdx_region_hdr_raw *h = (void *)t;	/* bytes only */
	struct vhdx_region_entry_raw *e = (void *)(t + sizeof(*h));

	memcpy(h->signature, "regi", 4);
	put_le32(h->entry_count, 2);
	guid_to_le(&vhdx_region_bat, e[0].guid);
	put_le64(e[0].file_offset, bat_off);
	put_le32(e[0].length, (uint32_t)bat_len);
	put_le32(e[0].flags, 1);	/* required */
	guid_to_le(&vhdx_region_meta, e[1].guid);
	put_le64(e[1].file_offset, meta_off);
	put_le32(e[1].length, (uint32_t)meta_len);
	put_le32(e[1].flags, 1);
	put_crc(t, VHDX_REGION_SIZE, offsetof(struct vhdx_region_hdr_raw,
					      checksum));
}

/* The encoders above, for vhdx-create.c (base images); see vhdx.h. */
int vhdx_random_guid(struct guid *g)
{
	return random_guid(g);
}

void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf)
{
	header_encode(h, buf);
}

void vhdx_meta_entry(uint8_t *t, unsigned i, const struct guid *g,
		     uint32_t off, uint32_t len, uint32_t flags)
{
	meta_entry(t, i, g, off, len, flags);
}

/* The start of a new file, for create_diff and vhdx-create.c; see vhdx.h. */
int vhdx_new_header_section(uint8_t **out, uint8_t **meta, uint64_t bat_len)
{
	struct vhdx_header h;
	uint8_t *hs, *u = NULL;
	size_t ulen;
	int r;

	*out = NULL;
	*meta = NULL;
	memset(&h, 0, sizeof(h));
	h.version = 1;
	h.log_length = (uint32_t)VHDX_MiB;
	h.log_offset = VHDX_MiB;
	r = random_guid(&h.file_write_guid);
	if (r == 0)
		r = random_guid(&h.data_write_guid);
	if (r < 0)
		return r;
	hs = calloc(1, VHDX_HEADER_SECTION);
	*meta = calloc(1, VHDX_MiB);
	r = hs && *meta ? utf8_to_utf16("layerfs", false, &u, &ulen)
			: -ENOMEM;
	if (r < 0) {
		free(hs);
		free(*meta);
		*meta = NULL;
		return r;
	}
	memcpy(hs, "vhdxfile", 8);
	memcpy(hs + 8, u, MIN(ulen, (size_t)512));
	free(u);
	for (int k = 0; k < 2; k++) {
		h.sequence = 1 + (uint64_t)k;
		header_encode(&h, hs + (k ? VHDX_HEADER2_OFF :
					VHDX_HEADER1_OFF));
	}
	region_encode(hs + VHDX_REGION1_OFF, 3 * VHDX_MiB, bat_len,
		      2 * VHDX_MiB, VHDX_MiB);
	memcpy(hs + VHDX_REGION2_OFF, hs + VHDX_REGION1_OFF, VHDX_REGION_SIZE);
	*out = hs;
	return 0;
}

int vhdx_new_file(const char *path, const uint8_t *hs, const uint8_t *meta)
{
	int fd = file_create(path, "vhdx"), r;

	if (fd < 0)
		return fd;
	r = pwrite_full(fd, hs, VHDX_HEADER_SECTION, 0);
	if (r == 0)
		r = pwrite_full(fd, meta, VHDX_MiB, 2 * VHDX_MiB);
	if (r < 0)
		return file_create_end(fd, path, r, "vhdx");
	return fd;
}

/*
 * Layout: file identifier, headers (sequence 1 and 2, the same GUIDs),
 * region tables, log at 1 MiB (1 MiB, empty: LogGuid zero), metadata at
 * 2 MiB (1 MiB), BAT at 3 MiB, all NOT_PRESENT (the file ends there).
 */
int vhdx_create_diff(const char *path, const struct img_create_parent *par,
		     const struct img_create_opts *o)
{
	struct img *pi = par->img;
	uint32_t bs = o->block_size ? o->block_size : VHDX_DIFF_BLOCK_DEFAULT;
	uint32_t lss = o->sector_size ? o->sector_size : pi->sector_size;
	uint32_t pss = pi->phys_sector_size;
	uint64_t size = o->size ? o->size : pi->size;
	uint64_t nblocks, ratio, nchunks, bat_len, bat_off = 3 * VHDX_MiB;
	uint8_t *hs = NULL, *meta = NULL;
	int fd, r;

	if (!o->sector_size && lss != 512 && lss != 4096)
		lss = 512;	/* the parent has no usable sector size */
	if (pss != 512 && pss != 4096)
		pss = 4096;
	if (lss != 512 && lss != 4096)
		return vhdx_err(-EINVAL, path, "bad logical sector size (%u)",
				lss);
	if (bs < VHDX_BLOCK_MIN || bs > VHDX_BLOCK_MAX || !is_pow2(bs))
		return vhdx_err(-EINVAL, path, "bad block size (%u)", bs);
	/* The spec wants whole sectors; a parent of another size reads as
	 * zeros past its end. */
	size = round_up(size, lss);
	if (size == 0 || size > VHDX_DISK_MAX)
		return vhdx_err(size ? -EFBIG : -EINVAL, path,
				"bad virtual disk size (%llu)",
				(unsigned long long)size);
	nblocks = size / bs + (size % bs != 0);
	ratio = VHDX_SB_SECTORS * lss / bs;
	nchunks = nblocks / ratio + (nblocks % ratio != 0);
	bat_len = round_up(nchunks * (ratio + 1) * 8, VHDX_MiB);

	r = vhdx_new_header_section(&hs, &meta, bat_len);
	if (r < 0)
		return r;
	r = meta_encode(meta, par, size, bs, lss, pss);
	if (r < 0) {
		vhdx_err(r, path, "cannot encode the parent locator (%s)",
			 strerror(-r));
		goto out_free;
	}
	fd = vhdx_new_file(path, hs, meta);
	if (fd < 0) {
		r = fd;
		goto out_free;
	}
	r = ftruncate(fd, (off_t)(bat_off + bat_len)) < 0 ? -errno : 0;
	r = file_create_end(fd, path, r, "vhdx");
out_free:
	free(hs);
	free(meta);
	return r;
}
