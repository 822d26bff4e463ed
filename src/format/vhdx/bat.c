// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/bat.c: the VHDX block allocation table (MS-VHDX 2.5) and the
 * sector bitmaps of partially present blocks (2.4).
 *
 * The BAT interleaves one sector bitmap entry after every chunk_ratio
 * payload entries.  open() keeps the payload entries (8 bytes a block)
 * and, in a differencing file, each chunk's sector bitmap entry; nothing
 * is read from the BAT again afterwards.
 *
 * The sector bitmap bytes of a PARTIALLY_PRESENT block (its slice of the
 * chunk's bitmap) are read when a map first needs them and kept in a
 * cache of slices (struct vhdx_slices), up to VHDX_SLICE_CACHE bytes;
 * past that, reads go to a temporary copy.  A writable image's writer
 * (write.c) puts the slices it changes in the same cache, sets bits in
 * them and drops clean ones again (under the cache lock, taken
 * exclusive), so the cache is the one copy of the bits in memory.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "log.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, path, ##__VA_ARGS__)

#define BAT_READ_CHUNK (VHDX_MiB / 8)	/* entries read at a time */

static uint64_t bat_entries(const struct vhdx *s)
{
	return vhdx_bat_entry_count(s->nblocks, s->chunk_ratio,
				    s->p.has_parent);
}

int vhdx_bat_geometry(struct vhdx *s)
{
	uint64_t bs = s->p.block_size, bytes;

	/* 2.4: chunk ratio = 2^23 * LogicalSectorSize / BlockSize (>= 16) */
	s->chunk_ratio = (uint32_t)(VHDX_SB_SECTORS * s->p.logical_sector / bs);
	s->nblocks = s->p.disk_size / bs + (s->p.disk_size % bs != 0);
	s->nchunks = s->nblocks / s->chunk_ratio +
		     (s->nblocks % s->chunk_ratio != 0);
	s->slice_len = (uint32_t)(bs / s->p.logical_sector / 8);
	bytes = bat_entries(s) * 8;	/* <= 2^26 entries: no overflow */
	if (bytes > s->rg.bat.len)
		return vhdx_err(-EUCLEAN, s->path,
				"BAT region too small for the disk (%llu "
				"entries)", (unsigned long long)bat_entries(s));
	if (bytes > VHDX_BAT_CAP)
		return vhdx_err(-EFBIG, s->path, "BAT too large (%llu bytes)",
				(unsigned long long)bytes);
	return 0;
}

/* An allocated block or bitmap must not sit on the file's own metadata. */
static bool on_metadata(const struct vhdx *s, uint64_t off, uint64_t len)
{
	return ranges_overlap(off, len, 0, VHDX_HEADER_SECTION) ||
	       (s->hdr.log_length &&
		ranges_overlap(off, len, s->hdr.log_offset,
			       s->hdr.log_length)) ||
	       ranges_overlap(off, len, s->rg.bat.off, s->rg.bat.len) ||
	       ranges_overlap(off, len, s->rg.meta.off, s->rg.meta.len);
}

/* Bytes of block blk that lie inside the virtual disk. */
static uint64_t block_used(const struct vhdx *s, uint64_t blk)
{
	uint64_t start = blk * s->p.block_size;

	return MIN((uint64_t)s->p.block_size, s->p.disk_size - start);
}

static int check_payload(const struct vhdx *s, uint64_t blk, uint64_t e)
{
	unsigned st = VHDX_BAT_STATE(e);
	uint64_t off = VHDX_BAT_OFFSET(e), used;

	switch (st) {
	case VHDX_PAYLOAD_NOT_PRESENT:
	case VHDX_PAYLOAD_UNDEFINED:
	case VHDX_PAYLOAD_ZERO:
	case VHDX_PAYLOAD_UNMAPPED:
	case VHDX_PAYLOAD_UNMAPPED_V095:
		return 0;	/* FileOffsetMB reserved or unused */
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:
		if (!s->p.has_parent)
			return vhdx_err(-EUCLEAN, s->path,
					"partially present block %llu in a "
					"file without a parent (%u)",
					(unsigned long long)blk, st);
		/* fall through */
	case VHDX_PAYLOAD_FULLY_PRESENT:
		used = block_used(s, blk);
		if (!range_within(off, used, s->eff_size))
			return vhdx_err(-EUCLEAN, s->path,
					"block %llu lies past the end of the "
					"file (offset %llu)",
					(unsigned long long)blk,
					(unsigned long long)off);
		if (on_metadata(s, off, used))
			return vhdx_err(-EUCLEAN, s->path,
					"block %llu overlaps the file's "
					"metadata (offset %llu)",
					(unsigned long long)blk,
					(unsigned long long)off);
		return 0;
	default:
		return vhdx_err(-EUCLEAN, s->path,
				"reserved state in BAT entry of block %llu (%u)",
				(unsigned long long)blk, st);
	}
}

static int check_bitmap(const struct vhdx *s, uint64_t chunk, uint64_t e,
			uint64_t *sb)
{
	uint64_t off = VHDX_BAT_OFFSET(e);

	switch (VHDX_BAT_STATE(e)) {
	case VHDX_SB_NOT_PRESENT:
		*sb = 0;
		return 0;
	case VHDX_SB_PRESENT:
		if (!range_within(off, VHDX_SB_BLOCK_SIZE, s->eff_size))
			return vhdx_err(-EUCLEAN, s->path,
					"sector bitmap %llu lies past the end "
					"of the file (offset %llu)",
					(unsigned long long)chunk,
					(unsigned long long)off);
		if (on_metadata(s, off, VHDX_SB_BLOCK_SIZE))
			return vhdx_err(-EUCLEAN, s->path,
					"sector bitmap %llu overlaps the "
					"file's metadata (offset %llu)",
					(unsigned long long)chunk,
					(unsigned long long)off);
		*sb = e;
		return 0;
	default:
		return vhdx_err(-EUCLEAN, s->path,
				"reserved state in sector bitmap entry %llu (%u)",
				(unsigned long long)chunk,
				VHDX_BAT_STATE(e));
	}
}

/* Read the BAT; sb (differencing only) gets each chunk's bitmap entry. */
static int bat_read(struct vhdx *s, uint64_t *sb)
{
	uint64_t total = bat_entries(s), per = (uint64_t)s->chunk_ratio + 1;
	uint8_t *buf = malloc(BAT_READ_CHUNK * 8);
	int r = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t base = 0; base < total && r == 0; base += BAT_READ_CHUNK) {
		uint64_t n = MIN((uint64_t)BAT_READ_CHUNK, total - base);

		r = vhdx_file_read(s, buf, n * 8, s->rg.bat.off + base * 8);
		for (uint64_t j = 0; j < n && r == 0; j++) {
			uint64_t i = base + j, e = get_le64(buf + j * 8);
			uint64_t chunk = i / per, k = i % per, blk;

			if (k == s->chunk_ratio) {
				/* 2.5.1.2: fixed and dynamic files leave these
				 * unallocated; some writers leave junk in
				 * them (qemu before 8.0), so only
				 * differencing files are checked. */
				if (sb)
					r = check_bitmap(s, chunk, e,
							 &sb[chunk]);
				continue;
			}
			blk = chunk * s->chunk_ratio + k;
			if (blk >= s->nblocks)
				continue;	/* padding of the last chunk */
			r = check_payload(s, blk, e);
			s->bat[blk] = e;
		}
	}
	free(buf);
	return r;
}

/* Mark the MiB units [off, off+len) in used; false if one was taken. */
static bool claim(uint8_t *used, uint64_t off, uint64_t len)
{
	for (uint64_t u = off / VHDX_MiB; u < (off + len + VHDX_MiB - 1) /
	     VHDX_MiB; u++) {
		if (used[u >> 3] & (1u << (u & 7)))
			return false;
		used[u >> 3] |= (uint8_t)(1u << (u & 7));
	}
	return true;
}

/* No two allocated blocks (payload or sector bitmap) share file space. */
static int check_cross_links(const struct vhdx *s, const uint64_t *sb)
{
	uint64_t units = (s->eff_size + VHDX_MiB - 1) / VHDX_MiB;
	uint8_t *used;
	int r = 0;

	if (units > (1ull << 27)) {	/* 128 TiB: only a log could say so */
		DBG(FORMAT, "vhdx: %s: file too large to check for shared "
		    "blocks", s->path);
		return 0;
	}
	used = calloc(units / 8 + 1, 1);
	if (!used)
		return -ENOMEM;
	for (uint64_t b = 0; b < s->nblocks && r == 0; b++) {
		unsigned st = VHDX_BAT_STATE(s->bat[b]);
		uint64_t off = VHDX_BAT_OFFSET(s->bat[b]);

		if ((st == VHDX_PAYLOAD_FULLY_PRESENT ||
		     st == VHDX_PAYLOAD_PARTIALLY_PRESENT) &&
		    !claim(used, off, block_used(s, b)))
			r = vhdx_err(-EUCLEAN, s->path,
				     "block %llu shares its file space with "
				     "another block (offset %llu)",
				     (unsigned long long)b,
				     (unsigned long long)off);
	}
	for (uint64_t c = 0; sb && c < s->nchunks && r == 0; c++)
		if (sb[c] && !claim(used, VHDX_BAT_OFFSET(sb[c]),
				    VHDX_SB_BLOCK_SIZE))
			r = vhdx_err(-EUCLEAN, s->path,
				     "sector bitmap %llu shares its file space "
				     "with a block (offset %llu)",
				     (unsigned long long)c,
				     (unsigned long long)VHDX_BAT_OFFSET(sb[c]));
	free(used);
	return r;
}

/* Every PARTIALLY_PRESENT block lies in a chunk with a sector bitmap. */
static int bitmaps_check(const struct vhdx *s)
{
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t c = b / s->chunk_ratio;

		if (VHDX_BAT_STATE(s->bat[b]) ==
		    VHDX_PAYLOAD_PARTIALLY_PRESENT && !s->sb[c])
			return vhdx_err(-EUCLEAN, s->path,
					"partially present block %llu without "
					"a sector bitmap (chunk %llu)",
					(unsigned long long)b,
					(unsigned long long)c);
	}
	return 0;
}

/* Blocks whose bytes the replay changed, or that lie past the real end. */
static int mark_via_read(struct vhdx *s)
{
	if (!s->log.n && s->eff_size <= s->file_size)
		return 0;
	s->via_read = calloc(s->nblocks / 8 + 1, 1);
	if (!s->via_read)
		return -ENOMEM;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		unsigned st = VHDX_BAT_STATE(s->bat[b]);
		uint64_t off = VHDX_BAT_OFFSET(s->bat[b]), used;

		if (st != VHDX_PAYLOAD_FULLY_PRESENT &&
		    st != VHDX_PAYLOAD_PARTIALLY_PRESENT)
			continue;
		used = block_used(s, b);
		if (off + used > s->file_size ||
		    vhdx_overlay_touches(&s->log, off, used))
			s->via_read[b >> 3] |= (uint8_t)(1u << (b & 7));
	}
	return 0;
}

int vhdx_bat_load(struct vhdx *s)
{
	uint64_t counts[8] = { 0 };
	int r;

	s->bat = malloc(s->nblocks * sizeof(*s->bat));
	if (s->p.has_parent) {
		s->sb = calloc(s->nchunks, sizeof(*s->sb));
		s->sl.dir = calloc(s->nchunks, sizeof(*s->sl.dir));
	}
	if (!s->bat || (s->p.has_parent && (!s->sb || !s->sl.dir)))
		return -ENOMEM;
	pthread_rwlock_init(&s->sl.lock, NULL);
	s->sl.lock_init = true;
	r = bat_read(s, s->sb);
	if (r == 0)
		r = check_cross_links(s, s->sb);
	if (r == 0 && s->sb)
		r = bitmaps_check(s);
	if (r == 0)
		r = mark_via_read(s);
	if (r < 0)
		return r;
	for (uint64_t b = 0; b < s->nblocks; b++)
		counts[VHDX_BAT_STATE(s->bat[b])]++;
	DBG(FORMAT, "vhdx: %s: %llu blocks of %u: %llu full, %llu partial, "
	    "%llu zero, %llu not present, %llu undefined/unmapped", s->path,
	    (unsigned long long)s->nblocks, s->p.block_size,
	    (unsigned long long)counts[VHDX_PAYLOAD_FULLY_PRESENT],
	    (unsigned long long)counts[VHDX_PAYLOAD_PARTIALLY_PRESENT],
	    (unsigned long long)counts[VHDX_PAYLOAD_ZERO],
	    (unsigned long long)counts[VHDX_PAYLOAD_NOT_PRESENT],
	    (unsigned long long)(counts[VHDX_PAYLOAD_UNDEFINED] +
				 counts[VHDX_PAYLOAD_UNMAPPED] +
				 counts[VHDX_PAYLOAD_UNMAPPED_V095]));
	return 0;
}

size_t vhdx_slice_size(const struct vhdx *s)
{
	return sizeof(struct vhdx_slice) + s->slice_len;
}

struct vhdx_slice **vhdx_slice_slot(struct vhdx *s, uint64_t blk)
{
	uint64_t c = blk / s->chunk_ratio;
	struct vhdx_slice **d = __atomic_load_n(&s->sl.dir[c],
						 __ATOMIC_ACQUIRE);

	if (!d) {
		struct vhdx_slice **old = NULL;

		d = calloc(s->chunk_ratio, sizeof(*d));
		if (!d)
			return NULL;
		if (!__atomic_compare_exchange_n(&s->sl.dir[c], &old, d, false,
						 __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE)) {
			free(d);
			d = old;
		}
	}
	return &d[blk % s->chunk_ratio];
}

int vhdx_slice_get(struct vhdx *s, uint64_t blk, bool keep,
		   struct vhdx_slice **out, struct vhdx_slice **tmp)
{
	struct vhdx_slice **slot = vhdx_slice_slot(s, blk), *sl, *old = NULL;
	uint64_t c = blk / s->chunk_ratio, sb;
	size_t size = vhdx_slice_size(s);
	bool cache;
	int r;

	if (!slot)
		return -ENOMEM;
	sl = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (sl) {
		*out = sl;
		return 0;
	}
	cache = keep || __atomic_load_n(&s->sl.bytes, __ATOMIC_RELAXED) +
			size <= VHDX_SLICE_CACHE;
	sl = calloc(1, size);
	if (!sl)
		return -ENOMEM;
	/* set (release) before any PARTIALLY_PRESENT entry of the chunk */
	sb = __atomic_load_n(&s->sb[c], __ATOMIC_ACQUIRE);
	r = vhdx_file_read(s, sl->bits, s->slice_len, VHDX_BAT_OFFSET(sb) +
			   blk % s->chunk_ratio * s->slice_len);
	if (r < 0) {
		free(sl);
		return r;
	}
	if (!cache) {
		*tmp = sl;	/* the caller frees it */
		*out = sl;
		return 0;
	}
	if (__atomic_compare_exchange_n(slot, &old, sl, false,
					__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		__atomic_add_fetch(&s->sl.bytes, size, __ATOMIC_RELAXED);
	} else {	/* another thread loaded it first */
		free(sl);
		sl = old;
	}
	*out = sl;
	return 0;
}

static void slices_free(struct vhdx *s)
{
	for (uint64_t c = 0; s->sl.dir && c < s->nchunks; c++) {
		for (uint32_t k = 0; s->sl.dir[c] && k < s->chunk_ratio; k++)
			free(s->sl.dir[c][k]);
		free(s->sl.dir[c]);
	}
	free(s->sl.dir);
	s->sl.dir = NULL;
	if (s->sl.lock_init)
		pthread_rwlock_destroy(&s->sl.lock);
	s->sl.lock_init = false;
}

void vhdx_bat_free(struct vhdx *s)
{
	slices_free(s);
	free(s->bat);
	free(s->sb);
	free(s->via_read);
	s->bat = s->sb = NULL;
	s->via_read = NULL;
}
