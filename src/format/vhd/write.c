// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * write.c: writing VHD images: ->write, ->zero, ->flush, and the setup of
 * a writable open (vhd_rw_open, after the read side's vhd_open) and its
 * end (vhd_rw_close, before vhd_close).  Uses codec.c and open.c; nothing
 * there calls back here.
 *
 * Writing (a top image opened writable).  Fixed disks are written in place.
 * Dynamic and differencing disks are written sector-granular (nothing is
 * ever copied from the parent): the data goes to the file at once, the
 * metadata that points at it (sector-bitmap bits, BAT entries) is kept in
 * memory, dirty, and written back by ->flush, as qemu's metadata caches
 * do.  Readers see the in-memory metadata, which is published only after
 * the data it points at is written (the page cache serves the rest).
 *
 * A write into an unused BAT entry allocates whole blocks (the run of
 * unused blocks the write starts in, at most VHD_ALLOC_BATCH) where the
 * footer at the end of the file is, under alloc_lock:
 *
 *   a. the footer is written at the new end of the file (the space before
 *      it is a hole, which reads as zeros): the file always ends in a
 *      valid footer when the process dies, and the old footer, in the
 *      middle now, lies in space nothing points at;
 *   b. the written sectors go into the new blocks (their bitmaps too, if
 *      bitmaps are not kept in memory);
 *   c. the bitmaps (the written sectors' bits; all bits on a dynamic disk)
 *      and BAT entries are published in memory with release stores, the
 *      bitmap first, and marked dirty.
 *
 * In an allocated block the sectors are written, then their bits are
 * ORed into the in-memory bitmap (atomic; readers copy it with atomic
 * loads) and the block is marked dirty.  A write whose bits are all set
 * already, and that no other writer of the block is setting (inflight),
 * is one pwrite.  Bits only go from 0 to 1 (VHD cannot give a sector
 * back).  Without bitmaps in memory (more than VHD_BITMAP_PRELOAD_MAX
 * allocated) the bitmap sector is rewritten in the file (read-modify-write
 * under a stripe lock) instead: no fdatasync, ->flush orders it.
 *
 * ->flush (flush_lock: one at a time; writes go on meanwhile):
 *
 *   1. under alloc_lock, take the dirty BAT entries (their values, into
 *      bat_disk) and the dirty bitmaps: every block taken was published,
 *      so its data, bitmap and the footer past it were written before;
 *   2. write each dirty bitmap (cleared dirty first, then copied: bits a
 *      concurrent writer sets after the copy mark it dirty again);
 *   3. fdatasync: data, bitmaps, footer and file size are durable;
 *   4. write the BAT sectors holding the taken entries, merged into runs,
 *      from bat_disk (entries published after step 1 stay dirty: their
 *      data may not be durable);
 *   5. fdatasync.  Nothing dirty: step 3 only.
 *
 * Crash (process killed, or power lost) at any instant: the BAT in the
 * file points only at blocks whose bitmaps and data were durable before
 * it was written, inside a file that was as long; a BAT entry still
 * unused reads from the parent, so a lost allocation loses only writes no
 * flush acknowledged.  A killed process leaves a file that ends in a
 * valid footer (step a).  After a power failure the end of the file may
 * be a hole or torn: a writable open then repairs it (the only file this
 * driver ever modifies is the top layer): it writes the footer copy from
 * offset 0 after the last block the BAT references (or after the
 * metadata) and cuts the file there, dropping space no entry points at.
 * A read-only open reads such a file through the copy and writes nothing.
 * Between data and bits there is no barrier: after a power failure a
 * sector written since the last flush may read as what the block held
 * before (zeros in blocks this driver allocated) rather than old or new.
 *
 * close writes the dirty metadata back (a flush).  Dirty metadata is
 * bounded: a writer that finds more than dirty_max dirty blocks (4096 BAT
 * entries, or 16 MiB of bitmaps) runs
 * the flush itself.  A failed write of metadata or a failed fdatasync
 * marks the image broken: every later write and flush fails with -EIO
 * (the page cache may have dropped what was written; carrying on could
 * lie about durability).  The flag is the image's (img_broken_get): the
 * health check sets it too when the file changed behind us
 * (img_health_check: before each allocation here, and in the chain,
 * against the end of the file this driver reports with img_end_grow).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhd.h"

/* Sectors one bitmap sector covers. */
#define VHD_BITS_PER_SECTOR (VHD_SECTOR * 8)
/* Stripes of the lock that serializes bitmap-sector rewrites per block. */
#define VHD_BM_LOCKS 64
/* Most blocks one allocation batch takes. */
#define VHD_ALLOC_BATCH 64
/* New blocks' data areas start on this boundary (or the block size). */
#define VHD_DATA_ALIGN 4096u
/* Dirty BAT entries (or bitmaps, and bitmap bytes) past which a writer
 * flushes itself. */
#define VHD_DIRTY_MAX 4096u
#define VHD_DIRTY_BYTES (16u << 20)

void (*vhd_test_hook)(enum vhd_step step);

/* The writer's state (struct vhd's rw): every writable image has one. */
struct vhd_rw {
	bool repair;		/* no valid footer at the end: write one */
	uint64_t next;		/* file offset of the footer at the end:
				 * where the next block goes (alloc_lock) */
	/* dynamic and differencing only (NULL for fixed disks): */
	uint32_t *bat_disk;	/* owned: the BAT as flushed (native); taken
				 * under alloc_lock, written under flush_lock */
	uint8_t *bat_dirty;	/* owned: per block (alloc_lock) */
	uint32_t *bat_list;	/* owned: the dirty entries (alloc_lock) */
	uint64_t bat_n;
	uint8_t *bm_dirty;	/* owned: per block (atomic exchange) */
	uint32_t *bm_list;	/* owned: blocks whose in-memory bitmap is
				 * newer than the file's (dirty_lock) */
	uint64_t bm_n;
	uint64_t dirty_max;	/* bound on bat_n and bm_n */
	unsigned inflight[VHD_BM_LOCKS]; /* writers setting bits (atomic) */
	pthread_mutex_t alloc_lock;	/* before dirty_lock */
	pthread_mutex_t dirty_lock;
	pthread_mutex_t flush_lock;	/* one flush at a time */
	pthread_mutex_t bm_lock[VHD_BM_LOCKS];
};

static int vhd_meta_flush(struct img *img, struct vhd *s);

static void vhd_hook(enum vhd_step step)
{
	if (vhd_test_hook)
		vhd_test_hook(step);
}

/* Bits [lo, hi) of one bitmap byte, 0 <= lo < hi <= 8 (MSB first). */
static inline uint8_t vhd_bits_mask(unsigned lo, unsigned hi)
{
	return (uint8_t)((0xffu >> lo) & (0xffu << (8 - hi)));
}

/* Are bits [first, first + n) all set?  (Atomic loads: bits may be set
 * concurrently; sequentially consistent, see vhd_bits_mark.) */
static bool vhd_bits_all_set(const uint8_t *bm, uint64_t first, uint64_t n)
{
	const uint64_t end = first + n;

	for (uint64_t i = first; i < end;) {
		uint64_t byte = i / 8;
		unsigned hi = (unsigned)MIN((uint64_t)8, end - byte * 8);
		uint8_t m = vhd_bits_mask((unsigned)(i % 8), hi);

		if ((__atomic_load_n(&bm[byte], __ATOMIC_SEQ_CST) & m) != m)
			return false;
		i = byte * 8 + hi;
	}
	return true;
}

/* Set bits [first, first + n), each byte with one atomic OR (release: the
 * sectors they mark are written before; sequentially consistent, see
 * vhd_bits_mark). */
static void vhd_bits_set(uint8_t *bm, uint64_t first, uint64_t n)
{
	const uint64_t end = first + n;

	for (uint64_t i = first; i < end;) {
		uint64_t byte = i / 8;
		unsigned hi = (unsigned)MIN((uint64_t)8, end - byte * 8);

		__atomic_fetch_or(&bm[byte], vhd_bits_mask((unsigned)(i % 8), hi),
				  __ATOMIC_SEQ_CST);
		i = byte * 8 + hi;
	}
}

static const uint8_t vhd_zeros[65536];

/* n bytes of buf (NULL: zeros) at off; logged on failure */
static int vhd_pwrite(struct img *img, const uint8_t *buf, uint64_t n,
		      uint64_t off, const char *what)
{
	int r = 0;

	if (buf) {
		r = pwrite_full(img->fd, buf, (size_t)n, off);
	} else {
		for (uint64_t done = 0, k; done < n && r == 0; done += k) {
			k = MIN(n - done, (uint64_t)sizeof(vhd_zeros));
			r = pwrite_full(img->fd, vhd_zeros, (size_t)k,
					off + done);
		}
	}
	if (r < 0)
		log_err("vhd: %s: cannot write %s at %llu (%s)", img->path,
			what, (unsigned long long)off, strerror(-r));
	return r;
}

static int vhd_sync(struct img *img)
{
	int r;

	if (fdatasync(img->fd) == 0)
		return 0;
	r = -errno;
	log_err("vhd: %s: fdatasync: %s", img->path, strerror(-r));
	return r;
}

/* A write of metadata failed: the image's broken flag (img.h), which
 * the chain's health check also sets when the file changed behind us. */
static void vhd_broken_set(struct img *img)
{
	if (img_broken_set(img))
		log_err("vhd: %s: the file may no longer match what was "
			"written; refusing further writes", img->path);
}

/* Block blk's in-memory bitmap is newer than the file's: list it for the
 * next flush (once: the flag stays set until the flush takes it). */
static void vhd_bitmap_dirty(struct vhd *s, uint64_t blk)
{
	if (__atomic_exchange_n(&s->rw->bm_dirty[blk], 1, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&s->rw->dirty_lock);
	s->rw->bm_list[s->rw->bm_n++] = (uint32_t)blk;	/* each block at most once */
	pthread_mutex_unlock(&s->rw->dirty_lock);
}

/*
 * Sectors [first, first + n) of block blk (at file sector `sector`) now
 * hold their data: set their bits.  In memory: atomic ORs, then the block
 * is marked dirty, with inflight[] counting the writers in between; a
 * writer that sees all its bits set and nobody in between knows that the
 * setter's dirty mark is done, so the next flush writes the bits (all of
 * it sequentially consistent).  Bitmaps not in memory: the bitmap sectors
 * are rewritten in the file (read-modify-write under the block's stripe
 * lock, so that two writers do not lose each other's bits).
 */
static int vhd_bits_mark(struct img *img, struct vhd *s, uint64_t blk,
		    uint32_t sector, uint64_t first, uint64_t n)
{
	uint8_t *mem = s->bm ? __atomic_load_n(&s->bm[blk], __ATOMIC_ACQUIRE)
			     : NULL;
	unsigned *inflight = &s->rw->inflight[blk % VHD_BM_LOCKS];
	pthread_mutex_t *lock = &s->rw->bm_lock[blk % VHD_BM_LOCKS];
	const uint64_t base = (uint64_t)sector * VHD_SECTOR, end = first + n;
	int r = 0;

	if (mem) {
		if (vhd_bits_all_set(mem, first, n) &&
		    !__atomic_load_n(inflight, __ATOMIC_SEQ_CST))
			return 0;	/* the sectors were here already */
		__atomic_fetch_add(inflight, 1, __ATOMIC_SEQ_CST);
		vhd_bits_set(mem, first, n);
		vhd_hook(VHD_STEP_BITMAP);
		vhd_bitmap_dirty(s, blk);
		__atomic_fetch_sub(inflight, 1, __ATOMIC_SEQ_CST);
		return 0;
	}
	pthread_mutex_lock(lock);
	for (uint64_t k = first / VHD_BITS_PER_SECTOR;
	     k * VHD_BITS_PER_SECTOR < end && r == 0; k++) {
		uint64_t k0 = k * VHD_BITS_PER_SECTOR;
		uint64_t lo = MAX(first, k0);
		uint64_t hi = MIN(end, k0 + VHD_BITS_PER_SECTOR);
		uint8_t sec[VHD_SECTOR];

		r = vhd_pread(img, sec, sizeof(sec), base + k * VHD_SECTOR,
			      "sector bitmap");
		if (r < 0)
			break;
		if (vhd_bits_all_set(sec, lo - k0, hi - lo))
			continue;
		vhd_bits_set(sec, lo - k0, hi - lo);
		r = vhd_pwrite(img, sec, VHD_SECTOR, base + k * VHD_SECTOR,
			       "a sector bitmap");
		if (r < 0) {	/* a torn sector, maybe */
			vhd_broken_set(img);
			break;
		}
		vhd_hook(VHD_STEP_BITMAP);
	}
	pthread_mutex_unlock(lock);
	return r;
}

/* Too much dirty metadata: flush it here, unless a flush is running. */
static int vhd_dirty_bound(struct img *img, struct vhd *s)
{
	uint64_t n;
	int r;

	pthread_mutex_lock(&s->rw->dirty_lock);
	n = s->rw->bm_n;
	pthread_mutex_unlock(&s->rw->dirty_lock);
	pthread_mutex_lock(&s->rw->alloc_lock);
	n = MAX(n, s->rw->bat_n);
	pthread_mutex_unlock(&s->rw->alloc_lock);
	if (n < s->rw->dirty_max || pthread_mutex_trylock(&s->rw->flush_lock))
		return 0;
	r = vhd_meta_flush(img, s);
	pthread_mutex_unlock(&s->rw->flush_lock);
	return r;
}

/*
 * Allocate the unused blocks that [off, off + n) starts in, as many as
 * follow each other (at most VHD_ALLOC_BATCH), write buf's sectors into
 * them (buf NULL: the sectors read as zeros, the space being a new hole)
 * and publish them, steps a-c at the top of this file.  *done: bytes of
 * the request written; 0 when another writer took the first block
 * meanwhile (the caller looks again).
 */
static int vhd_blocks_alloc(struct img *img, struct vhd *s, const uint8_t *buf,
		     uint64_t off, uint64_t n, uint64_t *done)
{
	const uint64_t bs = s->block_size, bms = s->bitmap_size;
	const uint64_t stride = bms + bs, blk0 = off / bs, end = off + n;
	const uint64_t align = MIN(bs, (uint64_t)VHD_DATA_ALIGN);
	uint8_t *maps, *tmp = NULL;
	uint64_t k = 0, start, foot;
	bool in_mem;
	int r = 0;

	*done = 0;
	pthread_mutex_lock(&s->rw->alloc_lock);
	r = img_health_check(img);	/* a cut file would grow back */
	if (r < 0)
		goto out;
	while (k < VHD_ALLOC_BATCH && (blk0 + k) * bs < end &&
	       s->bat[blk0 + k] == VHD_BAT_UNUSED)
		k++;
	if (!k)
		goto out;
	/* where the footer is, the data areas aligned for the host's pages */
	start = (s->rw->next + bms + align - 1) / align * align - bms;
	foot = start + k * stride;
	if ((foot - stride) / VHD_SECTOR >= VHD_BAT_UNUSED) {
		r = log_err_ret(-EFBIG, "vhd: %s: a new block would lie past "
				"the 2 TiB a BAT entry can address",
				img->path);
		goto out;
	}
	in_mem = s->bm && s->bm_bytes + k * bms <= VHD_BITMAP_PRELOAD_MAX;
	maps = in_mem ? vhd_chunk_alloc(s, k * bms)
		      : (tmp = calloc((size_t)k, (size_t)bms));
	if (!maps) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < k; i++) {
		uint64_t b0 = (blk0 + i) * bs;
		uint64_t lo = MAX(off, b0), hi = MIN(end, b0 + bs);

		if (s->footer.disk_type == VHD_TYPE_DYNAMIC)
			vhd_bits_set(maps + i * bms, 0, bs / VHD_SECTOR); /* data */
		else
			vhd_bits_set(maps + i * bms, (lo - b0) / VHD_SECTOR,
			       (hi - lo) / VHD_SECTOR);
	}

	/* a: the file ends in a valid footer; the old one is left behind */
	r = vhd_pwrite(img, s->footer_raw, VHD_FOOTER_SIZE, foot,
		       "the footer");
	if (r < 0) {
		/* the old footer is intact: cut the file back to it */
		if (ftruncate(img->fd, (off_t)(s->rw->next + VHD_FOOTER_SIZE)) < 0)
			vhd_broken_set(img);
		goto out;
	}
	vhd_hook(VHD_STEP_ALLOC_FOOTER);
	s->rw->next = foot;	/* from here on the new footer ends the file */
	img_end_grow(img, foot + VHD_FOOTER_SIZE);

	/* b: sectors (and bitmaps kept in the file only), into space
	 * nothing points at yet */
	for (uint64_t i = 0; i < k && r == 0; i++) {
		uint64_t b0 = (blk0 + i) * bs, at = start + i * stride;
		uint64_t lo = MAX(off, b0), hi = MIN(end, b0 + bs);

		if (!in_mem) {
			r = vhd_pwrite(img, maps + i * bms, bms, at,
				       "a sector bitmap");
			if (r < 0)
				break;
			vhd_hook(VHD_STEP_ALLOC_BITMAP);
		}
		if (!buf)
			continue;	/* zeros: the new space is a hole */
		r = vhd_pwrite(img, buf + (lo - off), hi - lo,
			       at + bms + (lo - b0), "data");
		if (r == 0)
			vhd_hook(VHD_STEP_ALLOC_DATA);
	}
	if (r < 0)
		goto out;	/* the new footer ends the file: skip it all */

	/* c: publish, the bitmap before the entry that leads to it; dirty */
	for (uint64_t i = 0; i < k; i++) {
		uint64_t b = blk0 + i;

		if (in_mem) {
			__atomic_store_n(&s->bm[b], maps + i * bms,
					 __ATOMIC_RELEASE);
			vhd_bitmap_dirty(s, b);
		}
		__atomic_store_n(&s->bat[b],
				 (uint32_t)((start + i * stride) / VHD_SECTOR),
				 __ATOMIC_RELEASE);
		if (!s->rw->bat_dirty[b]) {
			s->rw->bat_dirty[b] = 1;
			s->rw->bat_list[s->rw->bat_n++] = (uint32_t)b;
		}
	}
	vhd_hook(VHD_STEP_ALLOC_PUBLISH);
	*done = MIN(end, (blk0 + k) * bs) - off;
out:
	pthread_mutex_unlock(&s->rw->alloc_lock);
	free(tmp);
	return r;
}

/* buf NULL: [off, off + n) must read as zeros */
static int vhd_write_range(struct img *img, struct vhd *s, const uint8_t *buf,
			   uint64_t n, uint64_t off)
{
	const uint64_t bs = s->block_size;
	bool allocated = false;
	int r;

	if (s->footer.disk_type == VHD_TYPE_FIXED)	/* the disk, in place */
		return vhd_pwrite(img, buf, n, off, "data");
	while (n) {
		uint64_t blk = off / bs, in_blk = off % bs;
		uint64_t piece = MIN(n, bs - in_blk), done = piece;
		uint32_t sector = __atomic_load_n(&s->bat[blk],
						  __ATOMIC_ACQUIRE);

		if (sector != VHD_BAT_UNUSED) {
			r = vhd_pwrite(img, buf, piece,
				       (uint64_t)sector * VHD_SECTOR +
					       s->bitmap_size + in_blk,
				       "data");
			if (r < 0)
				return r;
			vhd_hook(VHD_STEP_DATA);
			r = vhd_bits_mark(img, s, blk, sector, in_blk / VHD_SECTOR,
				     piece / VHD_SECTOR);
			if (r < 0)
				return r;
		} else if (buf || s->footer.disk_type == VHD_TYPE_DIFF) {
			r = vhd_blocks_alloc(img, s, buf, off, n, &done);
			if (r < 0)
				return r;
			allocated = true;
		}
		/* else: zeros in an unused block of a dynamic disk: it reads
		 * as zeros already (it has no parent) */
		off += done;
		n -= done;
		if (buf)
			buf += done;
	}
	if (allocated ||
	    __atomic_load_n(&s->rw->bm_n, __ATOMIC_RELAXED) >= s->rw->dirty_max)
		return vhd_dirty_bound(img, s);
	return 0;
}

static int vhd_write_args_check(struct img *img, uint64_t off, uint64_t n)
{
	const struct vhd *s = img->priv;

	if (!s->rw)
		return -EROFS;
	/* the chain's promise: whole sectors inside the disk */
	if (off % VHD_SECTOR || n % VHD_SECTOR || !n ||
	    !range_within(off, n, img->size))
		return -EINVAL;
	return img_broken_get(img) ? -EIO : 0;
}

/* below is never read: VHD keeps single sectors, nothing is copied up */
int vhd_write(struct img *img, const void *buf, size_t n, uint64_t off,
	      const struct img_below *below __unused)
{
	int r = vhd_write_args_check(img, off, n);

	return r < 0 ? r : vhd_write_range(img, img->priv, buf, n, off);
}

/* VHD has no zero state: zeros are written (a differencing disk must hide
 * its parent's sectors), except where a new block's hole gives them. */
int vhd_zero(struct img *img, uint64_t off, uint64_t n,
	     const struct img_below *below __unused)
{
	int r = vhd_write_args_check(img, off, n);

	return r < 0 ? r : vhd_write_range(img, img->priv, NULL, n, off);
}

static int vhd_index_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Write the BAT sectors holding entries idx[0..n) (sorted) from bat_disk,
 * contiguous sectors in one pwrite. */
static int vhd_bat_write(struct img *img, struct vhd *s, const uint32_t *idx,
			 uint64_t n)
{
	const uint64_t per = VHD_SECTOR / 4;	/* entries per BAT sector */
	uint8_t *buf = NULL;
	size_t cap = 0;
	int r = 0;

	for (uint64_t i = 0; i < n && r == 0;) {
		uint64_t sec0 = idx[i] / per, sec1 = sec0, e0, e1;

		while (i < n && idx[i] / per <= sec1 + 1) {
			sec1 = idx[i] / per;
			i++;
		}
		e0 = sec0 * per;
		e1 = MIN((sec1 + 1) * per, s->nblocks);
		if ((e1 - e0) * 4 > cap) {
			uint8_t *nb = realloc(buf, (size_t)(e1 - e0) * 4);

			if (!nb) {
				r = -ENOMEM;
				break;
			}
			buf = nb;
			cap = (size_t)(e1 - e0) * 4;
		}
		vhd_bat_encode(s->rw->bat_disk + e0, e1 - e0, buf);
		r = vhd_pwrite(img, buf, (e1 - e0) * 4,
			       s->table_offset + 4 * e0, "the BAT");
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_BAT);
	}
	free(buf);
	return r;
}

/* Steps 1-5 at the top of this file; flush_lock held. */
static int vhd_meta_flush(struct img *img, struct vhd *s)
{
	uint32_t *bat_idx = NULL, *bm_idx = NULL;
	uint64_t nbat = 0, nbm = 0;
	uint8_t *copy = NULL;
	int r = 0;

	if (img_broken_get(img))
		return -EIO;
	copy = malloc(s->bitmap_size);
	if (!copy)
		return -ENOMEM;
	/* 1: what is published now, and the bitmaps dirty now */
	pthread_mutex_lock(&s->rw->alloc_lock);
	pthread_mutex_lock(&s->rw->dirty_lock);
	if (s->rw->bat_n)
		bat_idx = malloc((size_t)s->rw->bat_n * sizeof(*bat_idx));
	if (s->rw->bm_n)
		bm_idx = malloc((size_t)s->rw->bm_n * sizeof(*bm_idx));
	if ((s->rw->bat_n && !bat_idx) || (s->rw->bm_n && !bm_idx)) {
		r = -ENOMEM;
	} else {
		nbat = s->rw->bat_n;
		nbm = s->rw->bm_n;
		for (uint64_t i = 0; i < nbat; i++) {
			uint32_t b = s->rw->bat_list[i];

			bat_idx[i] = b;
			s->rw->bat_disk[b] = s->bat[b];
			s->rw->bat_dirty[b] = 0;
		}
		if (nbm)
			memcpy(bm_idx, s->rw->bm_list, (size_t)nbm * sizeof(*bm_idx));
		s->rw->bat_n = s->rw->bm_n = 0;
	}
	pthread_mutex_unlock(&s->rw->dirty_lock);
	pthread_mutex_unlock(&s->rw->alloc_lock);
	if (r < 0)
		goto out;

	/* 2: the bitmaps (dirty flag cleared before the copy) */
	for (uint64_t i = 0; i < nbm && r == 0; i++) {
		uint32_t b = bm_idx[i];
		const uint8_t *bm = __atomic_load_n(&s->bm[b],
						    __ATOMIC_ACQUIRE);
		uint32_t sector = __atomic_load_n(&s->bat[b],
						  __ATOMIC_ACQUIRE);

		__atomic_store_n(&s->rw->bm_dirty[b], 0, __ATOMIC_SEQ_CST);
		for (uint32_t k = 0; k < s->bitmap_size; k++)
			copy[k] = __atomic_load_n(&bm[k], __ATOMIC_SEQ_CST);
		r = vhd_pwrite(img, copy, s->bitmap_size,
			       (uint64_t)sector * VHD_SECTOR, "a sector bitmap");
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_BITMAP);
	}
	/* 3: data, bitmaps, footer, size */
	if (r == 0)
		r = vhd_sync(img);
	if (r == 0)
		vhd_hook(VHD_STEP_FLUSH_SYNC1);
	/* 4-5: the BAT entries taken in step 1 */
	if (r == 0 && nbat) {
		qsort(bat_idx, (size_t)nbat, sizeof(*bat_idx), vhd_index_cmp);
		r = vhd_bat_write(img, s, bat_idx, nbat);
		if (r == 0)
			r = vhd_sync(img);
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_SYNC2);
	}
	if (r < 0)
		vhd_broken_set(img);
out:
	free(copy);
	free(bat_idx);
	free(bm_idx);
	return r;
}

int vhd_flush(struct img *img)
{
	struct vhd *s = img->priv;
	int r;

	if (!s->rw || !s->rw->bat_list) {	/* nothing kept in memory */
		r = vhd_sync(img);
		if (r < 0 && s->rw)
			vhd_broken_set(img);
		return r < 0 ? r : s->rw && img_broken_get(img) ? -EIO : 0;
	}
	pthread_mutex_lock(&s->rw->flush_lock);
	r = vhd_meta_flush(img, s);
	pthread_mutex_unlock(&s->rw->flush_lock);
	return r;
}

/* ---- the writable open ------------------------------------------------ */


struct vhd_region {
	uint64_t off, len;
	const char *what;	/* static; NULL: block blk */
	uint64_t blk;
};

static int vhd_region_cmp(const void *a, const void *b)
{
	const struct vhd_region *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static void vhd_region_name(const struct vhd_region *r, char *buf, size_t len)
{
	if (r->what)
		snprintf(buf, len, "%s", r->what);
	else
		snprintf(buf, len, "block %llu", (unsigned long long)r->blk);
}

/*
 * A writable dynamic or differencing disk: no two structures this driver
 * writes may overlap each other or what it must not overwrite.  Reading
 * tolerates overlaps; writing into one would corrupt the other.  Every
 * range is already inside the file (checked at open).  Sorted by offset,
 * two regions overlap if and only if two neighbours do.
 */
static int vhd_layout_check(struct img *img, const struct vhd *s)
{
	const struct vhd_dyn_header *h = &s->header;
	const uint64_t nalloc = s->nalloc;
	struct vhd_region *v;
	size_t n = 0;
	int r = 0;

	v = malloc(((size_t)nalloc + 3 + VHD_NLOCATORS) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	v[n++] = (struct vhd_region){ 0, VHD_FOOTER_SIZE, "the footer copy",
				      0 };
	v[n++] = (struct vhd_region){ s->footer.data_offset,
				      VHD_DYN_HEADER_SIZE,
				      "the dynamic header", 0 };
	if (s->nblocks)
		v[n++] = (struct vhd_region){ s->table_offset, s->nblocks * 4,
					      "the BAT", 0 };
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator *l = &h->locators[i];

		/* the ones vhd_locator_read checked against the file */
		if (s->footer.disk_type == VHD_TYPE_DIFF &&
		    vhd_locator_name(l->code) && l->data_length)
			v[n++] = (struct vhd_region){ l->data_offset,
						      l->data_length,
						      "a parent locator", 0 };
	}
	for (uint64_t b = 0; b < s->nblocks; b++)
		if (s->bat[b] != VHD_BAT_UNUSED)
			v[n++] = (struct vhd_region){
				(uint64_t)s->bat[b] * VHD_SECTOR,
				s->bitmap_size +
					MIN((uint64_t)s->block_size,
					    img->size - b * s->block_size),
				NULL, b };
	qsort(v, n, sizeof(*v), vhd_region_cmp);
	for (size_t i = 1; i < n && r == 0; i++) {
		char a[48], b[48];

		if (v[i].off >= v[i - 1].off + v[i - 1].len)
			continue;
		vhd_region_name(&v[i - 1], a, sizeof(a));
		vhd_region_name(&v[i], b, sizeof(b));
		r = log_err_ret(-EROFS, "vhd: %s: cannot write: %s overlaps %s "
				"(offset %llu); read-only only", img->path, a,
				b, (unsigned long long)v[i].off);
	}
	free(v);
	return r;
}

/* Refuse to write what this driver could not write safely.  No valid
 * footer at the end, the copy at offset 0 good: repaired (s->rw->repair). */
static int vhd_writable_check(struct img *img, struct vhd *s)
{
	const bool at_end = s->footer_at_end, copy_used = s->footer_copy_used;
	const uint64_t limit = s->limit;

	if (!at_end && !copy_used &&
	    img->file_size - limit == VHD_FOOTER_OLD_SIZE)
		return log_err_ret(-EROFS, "vhd: %s: cannot write: the file "
				   "ends in a 511-byte footer (Virtual PC "
				   "before 2004); read-only only", img->path);
	if (!at_end && !copy_used)	/* not reached: no footer at all */
		return log_err_ret(-EROFS, "vhd: %s: cannot write: no valid "
				   "footer at the end of the file; read-only "
				   "only", img->path);
	s->rw->repair = !at_end;
	if (s->footer.saved_state)
		return log_err_ret(-EROFS, "vhd: %s: cannot write: the disk is "
				   "in a saved state (%u); read-only only",
				   img->path, s->footer.saved_state);
	return 0;
}

/* The dirty-metadata tracking of a writable dynamic/differencing disk. */
static int vhd_dirty_alloc(struct vhd *s)
{
	const size_t n = (size_t)s->nblocks + 1;

	s->rw->bat_disk = malloc(n * sizeof(*s->rw->bat_disk));
	s->rw->bat_list = malloc(n * sizeof(*s->rw->bat_list));
	s->rw->bm_list = malloc(n * sizeof(*s->rw->bm_list));
	s->rw->bat_dirty = calloc(n, 1);
	s->rw->bm_dirty = calloc(n, 1);
	if (!s->rw->bat_disk || !s->rw->bat_list || !s->rw->bm_list ||
	    !s->rw->bat_dirty || !s->rw->bm_dirty)
		return -ENOMEM;
	memcpy(s->rw->bat_disk, s->bat, (size_t)s->nblocks * sizeof(*s->bat));
	s->rw->dirty_max = MIN((uint64_t)VHD_DIRTY_MAX,
			       MAX((uint64_t)1,
				   VHD_DIRTY_BYTES / s->bitmap_size));
	return 0;
}

/*
 * A writable open of a file without a valid footer at its end (a crash
 * after the file grew and before the new footer was durable): the copy
 * at offset 0 was read and checked.  Everything the file holds ends at
 * the last block the BAT references, or at the end of the header, BAT and
 * locators: the footer goes right after that (sector-aligned) and the
 * file is cut there, dropping space nothing points at (blocks of writes
 * no flush acknowledged).  Made durable before any write.
 */
static int vhd_tail_repair(struct img *img, struct vhd *s)
{
	const struct vhd_dyn_header *h = &s->header;
	uint64_t end = s->footer.data_offset + VHD_DYN_HEADER_SIZE, pos;
	int r;

	end = MAX(end, s->table_offset + s->nblocks * 4);
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator *l = &h->locators[i];

		/* the ones vhd_locator_read checked against the file */
		if (s->footer.disk_type == VHD_TYPE_DIFF &&
		    vhd_locator_name(l->code) && l->data_length)
			end = MAX(end, l->data_offset + l->data_length);
	}
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t start = (uint64_t)s->bat[b] * VHD_SECTOR, e;

		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		/* a whole block if the file holds it (as written here);
		 * else the part open() checked: up to the virtual size */
		e = start + s->bitmap_size + s->block_size;
		if (e > img->file_size)
			e = start + s->bitmap_size +
			    MIN((uint64_t)s->block_size,
				img->size - b * s->block_size);
		end = MAX(end, e);
	}
	pos = (end + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
	log_warn("vhd: %s: repairing the end of the file: the footer copy "
		 "from offset 0 written at %llu, after the last block (file "
		 "size %llu)", img->path, (unsigned long long)pos,
		 (unsigned long long)img->file_size);
	r = pwrite_full(img->fd, s->footer_raw, VHD_FOOTER_SIZE, pos);
	if (r == 0 && ftruncate(img->fd, (off_t)(pos + VHD_FOOTER_SIZE)) < 0)
		r = -errno;
	if (r == 0 && fdatasync(img->fd) < 0)
		r = -errno;
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot repair the footer at the "
				   "end of the file (%s)", img->path,
				   strerror(-r));
	s->rw->next = pos;
	s->rw->repair = false;
	return 0;
}

int vhd_rw_open(struct img *img)
{
	struct vhd *s = img->priv;
	int r;

	s->rw = calloc(1, sizeof(*s->rw));
	if (!s->rw)
		return -ENOMEM;
	pthread_mutex_init(&s->rw->alloc_lock, NULL);
	pthread_mutex_init(&s->rw->dirty_lock, NULL);
	pthread_mutex_init(&s->rw->flush_lock, NULL);
	for (unsigned i = 0; i < VHD_BM_LOCKS; i++)
		pthread_mutex_init(&s->rw->bm_lock[i], NULL);
	r = vhd_writable_check(img, s);
	if (r < 0 || s->footer.disk_type == VHD_TYPE_FIXED)
		return r;	/* fixed: written in place */
	r = vhd_layout_check(img, s);
	if (r == 0)
		r = vhd_dirty_alloc(s);
	if (r < 0 || !s->rw->repair) {
		/* new blocks go where the footer is (the file's end) */
		s->rw->next = img->file_size - VHD_FOOTER_SIZE;
		return r;
	}
	return vhd_tail_repair(img, s);
}

void vhd_rw_close(struct img *img)
{
	struct vhd *s = img->priv;
	struct vhd_rw *w = s ? s->rw : NULL;

	if (!w)
		return;
	if (w->bat_list && (w->bat_n || w->bm_n) && !img_broken_get(img))
		(void)vhd_meta_flush(img, s);	/* logs its errors */
	free(w->bat_disk);
	free(w->bat_list);
	free(w->bm_list);
	free(w->bat_dirty);
	free(w->bm_dirty);
	pthread_mutex_destroy(&w->alloc_lock);
	pthread_mutex_destroy(&w->dirty_lock);
	pthread_mutex_destroy(&w->flush_lock);
	for (unsigned i = 0; i < VHD_BM_LOCKS; i++)
		pthread_mutex_destroy(&w->bm_lock[i]);
	free(w);
	s->rw = NULL;
}
