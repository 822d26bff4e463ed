// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * open.c: Microsoft Virtual Hard Disk images, the read side: probe, open,
 * close, parent, map_extent (fixed, dynamic, differencing).
 *
 * Everything read from the file is checked at open: the footer (the one at
 * the end, or the copy at offset 0 of a dynamic disk), the dynamic header,
 * the BAT, every allocated block and the parent locators.
 *
 *   fixed         the file is the disk, then the footer
 *   dynamic       an allocated block is data as a whole (qemu: its sector
 *                 bitmap is not consulted); an unused BAT entry is a hole
 *   differencing  an allocated block holds the sectors its bitmap marks;
 *                 every other sector comes from the parent
 *
 * The virtual size is the footer's current size, never the CHS geometry.
 * A VHD names no format for its parent: the chain probes the parent file,
 * so a VHD may sit on a qcow2, VHDX or raw parent.  An all-zero parent
 * unique id means "not recorded" (what create_diff writes over a parent
 * that has no identity) and is not checked.
 *
 * The read side and the writer.  This file decodes through codec.c only
 * and calls nothing of write.c, create.c, parent.c or check.c (nm -u of
 * open.o proves it).  The other direction is how a writable image opens:
 * the driver struct (driver.c, the one file that sees both sides) runs
 * vhd_open() here, which reads everything a reader needs and keeps what
 * the writer needs next (where the footer was found, the decoded header,
 * the bitmaps of a writable image in memory), then write.c's
 * vhd_rw_open(), which refuses what it cannot write safely, repairs a
 * cut-off end and sets up its own state (s->rw, owned by write.c).  Close
 * is the reverse: vhd_rw_close() writes the dirty metadata back, then
 * vhd_close() frees the rest.  Here s->rw is only ever tested for NULL
 * (a writable image's bitmaps change under the readers: copy them).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhd.h"

/* Bitmap bytes read per lookup when not in memory (4096 sectors). */
#define VHD_BITMAP_LAZY_BYTES 512u

int vhd_pread(struct img *img, void *buf, size_t n, uint64_t off,
		     const char *what)
{
	int r = pread_full(img->fd, buf, n, off);

	if (r == -ENODATA)
		return log_err_ret(-EUCLEAN, "vhd: %s: %s lies past the end "
				   "of the file (%llu)", img->path, what,
				   (unsigned long long)off);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot read %s (%s)",
				   img->path, what, strerror(-r));
	return 0;
}

/*
 * Find the footer: the one at the end of the file, or (dynamic and
 * differencing disks) the copy at offset 0.  s->limit is where the file's
 * payload ends: the footer at the end is never data.
 * s->footer_at_end: a whole valid 512-byte footer ends the file (its
 * bytes are in s->footer_raw).  s->footer_copy_used: the copy at offset 0
 * was used (no valid footer at the end).
 */
static int vhd_footer_read(struct img *img, struct vhd *s)
{
	uint8_t buf[VHD_FOOTER_SIZE];
	struct vhd_problem end_why = { "" }, copy_why = { "" };
	struct vhd_footer end, copy;
	size_t end_len;
	int end_r, copy_r, r;

	if (img->file_size < VHD_FOOTER_SIZE)
		return log_err_ret(-EINVAL, "vhd: %s: file too small for a "
				   "footer (%llu)", img->path,
				   (unsigned long long)img->file_size);
	r = vhd_pread(img, buf, sizeof(buf), img->file_size - sizeof(buf),
		      "footer");
	if (r < 0)
		return r;
	end_len = vhd_footer_locate(buf);	/* 0: -EINVAL below */
	end_r = vhd_footer_decode(buf, &end, &end_why);
	s->limit = img->file_size - end_len;
	s->footer_at_end = end_r == 0 && end_len == VHD_FOOTER_SIZE;
	s->footer_copy_used = false;
	if (end_r == 0) {
		memcpy(s->footer_raw, buf, sizeof(buf));
		s->footer = end;
		return 0;
	}

	r = vhd_pread(img, buf, sizeof(buf), 0, "footer copy");
	if (r < 0)
		return r;
	copy_r = vhd_footer_decode(buf, &copy, &copy_why);
	if (copy_r == 0 && copy.disk_type != VHD_TYPE_FIXED) {
		s->footer_copy_used = true;
		if (end_len)
			log_warn("vhd: %s: footer at the end: %s; using the "
				 "footer copy at offset 0", img->path,
				 end_why.msg);
		else
			log_warn("vhd: %s: no footer at the end of the file; "
				 "using the footer copy at offset 0",
				 img->path);
		memcpy(s->footer_raw, buf, sizeof(buf));
		s->footer = copy;
		return 0;
	}
	if (end_len)
		return log_err_ret(end_r, "vhd: %s: footer: %s", img->path,
				   end_why.msg);
	if (copy_r == 0)
		return log_err_ret(-EUCLEAN, "vhd: %s: fixed disk without a "
				   "footer at the end of the file (%llu)",
				   img->path,
				   (unsigned long long)img->file_size);
	if (copy_r != -EINVAL)
		return log_err_ret(copy_r, "vhd: %s: footer copy: %s",
				   img->path, copy_why.msg);
	return log_err_ret(-EINVAL, "vhd: %s: footer: %s", img->path,
			   end_why.msg);
}

/*
 * Read and decode locator i.  *out is NULL for a locator this driver does
 * not use (the deprecated ANSI ones, Mac aliases) or an empty one.  The
 * data space is ignored: Windows writes it in bytes, the spec in sectors,
 * and only the offset and length say where the path is.
 */
static int vhd_locator_read(struct img *img, const struct vhd_locator *l,
			    unsigned i, uint64_t limit, char **out,
			    enum img_ref_kind *kind)
{
	const char *name = vhd_locator_name(l->code);
	uint8_t *data;
	char what[32];
	int r;

	*out = NULL;
	if (!name || !l->data_length)
		return 0;	/* none, or an unknown code: nothing to read */
	if (l->data_length > VHD_MAX_LOCATOR_LEN)
		return log_err_ret(-EFBIG, "vhd: %s: parent locator %u (%s) "
				   "too long (%u)", img->path, i, name,
				   l->data_length);
	if (!range_within(l->data_offset, l->data_length, limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: parent locator %u (%s) "
				   "lies past the end of the file (%llu)",
				   img->path, i, name,
				   (unsigned long long)l->data_offset);
	if (l->code != VHD_PLAT_W2RU && l->code != VHD_PLAT_W2KU &&
	    l->code != VHD_PLAT_MACX)
		return 0;
	data = malloc(l->data_length);
	if (!data)
		return -ENOMEM;
	snprintf(what, sizeof(what), "parent locator %u", i);
	r = vhd_pread(img, data, l->data_length, l->data_offset, what);
	if (r == 0)
		r = vhd_locator_decode(l->code, data, l->data_length, out,
				       kind);
	if (r == -EILSEQ)
		r = log_err_ret(-EUCLEAN, "vhd: %s: parent locator %u (%s) "
				"is not valid UTF-16 (%u bytes)", img->path,
				i, name, l->data_length);
	free(data);
	return r;
}

/* Differencing: decode the parent's identity and references at open. */
static int vhd_parent_load(struct img *img, struct vhd *s,
			   const struct vhd_dyn_header *h, uint64_t limit)
{
	static const uint32_t order[] = {	/* preference order */
		VHD_PLAT_W2RU, VHD_PLAT_W2KU, VHD_PLAT_MACX,
	};
	struct img_parent *p = &s->parent;
	char *paths[VHD_NLOCATORS] = { NULL }, *name = NULL;
	enum img_ref_kind kinds[VHD_NLOCATORS] = { IMG_REF_NAME };
	int r = 0;

	/* Check and decode every locator, then collect them in order. */
	for (unsigned i = 0; i < VHD_NLOCATORS && r == 0; i++)
		r = vhd_locator_read(img, &h->locators[i], i, limit,
				     &paths[i], &kinds[i]);
	if (r < 0)
		goto out;
	r = vhd_parent_name_decode(h->parent_name, &name);
	if (r == -EILSEQ)
		r = log_err_ret(-EUCLEAN, "vhd: %s: parent unicode name is "
				"not valid UTF-16 (%u bytes)", img->path,
				(unsigned)sizeof(h->parent_name));
	if (r < 0)
		goto out;
	for (size_t k = 0; k < ARRAY_SIZE(order) && r != -ENOMEM; k++)
		for (unsigned i = 0; i < VHD_NLOCATORS && r != -ENOMEM; i++)
			if (h->locators[i].code == order[k] && paths[i] &&
			    *paths[i])
				r = img_parent_add_ref(p, kinds[i],
						       vhd_locator_name(order[k]),
						       paths[i]);
	if (r != -ENOMEM && *name)
		r = img_parent_add_ref(p, IMG_REF_NAME, "parent_name", name);
	if (r == -ENOMEM)
		goto out;
	r = 0;	/* -E2BIG: more references than fit; the first ones win */
	guid_from_be(&p->id, h->parent_uuid);
	p->id_kind = guid_is_zero(&p->id) ? IMG_ID_NONE : IMG_ID_VHD_UUID;
	p->has_timestamp = true;
	p->timestamp = h->parent_timestamp;
	/* The spec means a VHD parent, but nothing in the file names the
	 * format: leave it to the probe (create_diff writes VHDs over qcow2,
	 * VHDX and raw parents; the unique id still checks a VHD parent). */
	p->format = NULL;
out:
	for (unsigned i = 0; i < VHD_NLOCATORS; i++)
		free(paths[i]);
	free(name);
	return r;
}


/* ---- sector bitmaps in memory ---------------------------------------- */

/* len zeroed bytes that live until close. */
uint8_t *vhd_chunk_alloc(struct vhd *s, uint64_t len)
{
	struct vhd_chunk *c = calloc(1, sizeof(*c) + (size_t)len);

	if (!c)
		return NULL;
	c->next = s->chunks;
	s->chunks = c;
	s->bm_bytes += len;
	return c->data;
}


/* Keep every allocated block's bitmap in memory if they are few. */
static int vhd_bitmaps_load(struct img *img, struct vhd *s, uint64_t nalloc)
{
	uint64_t total;
	uint8_t *p;
	int r;

	if (MUL_OVERFLOW(nalloc, (uint64_t)s->bitmap_size, &total) ||
	    total > VHD_BITMAP_PRELOAD_MAX) {
		DBG(FORMAT, "vhd: %s: %llu blocks allocated: sector bitmaps "
		    "read on demand", img->path, (unsigned long long)nalloc);
		return 0;
	}
	s->bm = calloc((size_t)s->nblocks + 1, sizeof(*s->bm));
	p = vhd_chunk_alloc(s, total);
	if (!s->bm || !p)
		return -ENOMEM;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		r = vhd_pread(img, p, s->bitmap_size,
			      (uint64_t)s->bat[b] * VHD_SECTOR,
			      "sector bitmap");
		if (r < 0)
			return r;
		s->bm[b] = p;
		p += s->bitmap_size;
	}
	return 0;
}


static int vhd_dynamic_open(struct img *img, struct vhd *s)
{
	uint8_t buf[VHD_DYN_HEADER_SIZE];
	struct vhd_dyn_header *h = &s->header;
	struct vhd_problem why;
	uint64_t off = s->footer.data_offset, limit = s->limit;
	int r;

	if (!range_within(off, sizeof(buf), limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: dynamic header lies "
				   "past the end of the file (%llu)",
				   img->path, (unsigned long long)off);
	r = vhd_pread(img, buf, sizeof(buf), off, "dynamic header");
	if (r < 0)
		return r;
	r = vhd_dyn_header_decode(buf, h, &why);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: dynamic header: %s", img->path,
				   why.msg);

	s->block_size = h->block_size;
	s->bitmap_size = vhd_bitmap_size(h->block_size);
	s->nblocks = img->size / h->block_size + !!(img->size % h->block_size);
	s->table_offset = h->table_offset;
	if (s->nblocks > h->max_table_entries)
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "too small for the virtual size (%u "
				   "entries, %llu needed)", img->path,
				   h->max_table_entries,
				   (unsigned long long)s->nblocks);
	/* nblocks <= VHD_MAX_BAT_ENTRIES: no overflow below */
	if (!range_within(h->table_offset, s->nblocks * 4, limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "lies past the end of the file (%llu)",
				   img->path,
				   (unsigned long long)h->table_offset);
	s->bat = malloc((size_t)s->nblocks * sizeof(*s->bat) + 1);
	if (!s->bat)
		return -ENOMEM;
	r = vhd_pread(img, s->bat, (size_t)s->nblocks * 4, h->table_offset,
		      "block allocation table");
	if (r < 0)
		return r;
	vhd_bat_decode((const uint8_t *)s->bat, s->nblocks, s->bat);
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t data_len, start;

		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		/* the last block only needs to cover the virtual size */
		data_len = MIN((uint64_t)h->block_size,
			       img->size - b * h->block_size);
		start = (uint64_t)s->bat[b] * VHD_SECTOR;
		if (!range_within(start, s->bitmap_size + data_len, limit))
			return log_err_ret(-EUCLEAN, "vhd: %s: block %llu lies "
					   "past the end of the file (sector "
					   "%u)", img->path,
					   (unsigned long long)b, s->bat[b]);
		s->nalloc++;
	}
	img->block_size = h->block_size;
	/* differencing: for the reads; writable: to keep the bits current */
	if (s->footer.disk_type == VHD_TYPE_DIFF || img->writable) {
		r = vhd_bitmaps_load(img, s, s->nalloc);
		if (r < 0)
			return r;
	}
	if (s->footer.disk_type == VHD_TYPE_DIFF)
		return vhd_parent_load(img, s, h, limit);
	return 0;
}

/* The read side's state; write.c's (s->rw) is gone already. */
void vhd_close(struct img *img)
{
	struct vhd *s = img->priv;

	if (!s)
		return;
	assert(!s->rw);	/* driver.c: vhd_rw_close() first */
	free(s->bat);
	free(s->bm);
	while (s->chunks) {
		struct vhd_chunk *c = s->chunks;

		s->chunks = c->next;
		free(c);
	}
	img_parent_clear(&s->parent);
	free(s);
	img->priv = NULL;
}

int vhd_open(struct img *img)
{
	static const char *const subtypes[] = {
		[VHD_TYPE_FIXED] = "fixed",
		[VHD_TYPE_DYNAMIC] = "dynamic",
		[VHD_TYPE_DIFF] = "differencing",
	};
	struct vhd *s;
	int r;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	img->priv = s;
	r = vhd_footer_read(img, s);
	if (r < 0)
		goto fail;
	/* the footer's current size, in whole sectors (as qemu reads it) */
	img->size = s->footer.cur_size & ~(uint64_t)(VHD_SECTOR - 1);
	img->sector_size = VHD_SECTOR;
	img->phys_sector_size = VHD_SECTOR;
	img->has_id = true;
	guid_from_be(&img->id, s->footer.uuid);
	snprintf(img->subtype, sizeof(img->subtype), "%s",
		 subtypes[s->footer.disk_type]);

	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		/* spec: the disk's bytes, then the footer */
		if (img->size > s->limit) {
			r = log_err_ret(-EUCLEAN, "vhd: %s: file too short for "
					"the virtual size (%llu)", img->path,
					(unsigned long long)img->size);
			goto fail;
		}
		return 0;
	}
	r = vhd_dynamic_open(img, s);
	if (r < 0)
		goto fail;
	return 0;
fail:
	vhd_close(img);
	return r;
}

int vhd_probe(const struct img_probe *p)
{
	if (p->tail_len >= VHD_FOOTER_SIZE &&
	    (!memcmp(p->tail, VHD_COOKIE, 8) ||
	     !memcmp(p->tail + 1, VHD_COOKIE, 8)))	/* 511-byte footer */
		return 100;
	if (p->head_len >= VHD_FOOTER_SIZE && !memcmp(p->head, VHD_COOKIE, 8))
		return 100;	/* the copy of a dynamic disk's footer */
	return 0;
}

int vhd_parent(struct img *img, struct img_parent *p)
{
	const struct vhd *s = img->priv;
	const struct img_parent *src = &s->parent;
	struct img_parent t = { 0 };
	int r;

	if (s->footer.disk_type != VHD_TYPE_DIFF)
		return 0;
	for (unsigned i = 0; i < src->nrefs; i++) {
		r = img_parent_add_ref(&t, src->refs[i].kind,
				       src->refs[i].what, src->refs[i].path);
		if (r < 0) {
			img_parent_clear(&t);
			return r;
		}
	}
	t.id_kind = src->id_kind;
	t.id = src->id;
	t.has_timestamp = src->has_timestamp;
	t.timestamp = src->timestamp;
	t.format = src->format;
	*p = t;
	return 1;
}

/* Differencing, allocated block: split on the sector bitmap. */
static int vhd_map_diff(struct img *img, const struct vhd *s, uint64_t blk,
			uint32_t sector, uint64_t in_blk, uint64_t avail,
			struct img_extent *ext)
{
	uint64_t block_off = (uint64_t)sector * VHD_SECTOR;
	uint64_t first = in_blk / VHD_SECTOR, start = first, run, end;
	uint64_t nsec = (in_blk + avail + VHD_SECTOR - 1) / VHD_SECTOR - first;
	uint8_t buf[VHD_BITMAP_LAZY_BYTES];
	const uint8_t *bm = s->bm ? __atomic_load_n(&s->bm[blk],
						    __ATOMIC_ACQUIRE)
				  : NULL;
	bool set;
	int r;

	/* read-only: the preloaded bitmap as it is; otherwise a copy of the
	 * bytes needed, from memory (writers set bits meanwhile) or the file */
	if (!bm || s->rw) {
		uint64_t byte0 = first / 8;
		uint64_t nbytes = MIN((uint64_t)sizeof(buf),
				      (first + nsec + 7) / 8 - byte0);

		if (bm) {
			for (uint64_t i = 0; i < nbytes; i++)
				buf[i] = __atomic_load_n(&bm[byte0 + i],
							 __ATOMIC_ACQUIRE);
		} else {
			r = pread_full(img->fd, buf, (size_t)nbytes,
				       block_off + byte0);
			if (r < 0) {
				log_err("vhd: %s: cannot read the sector "
					"bitmap of block %llu (%s)", img->path,
					(unsigned long long)blk, strerror(-r));
				return r == -ENODATA ? -EIO : r;
			}
		}
		bm = buf;
		start = first - byte0 * 8;
		nsec = MIN(nsec, nbytes * 8 - start);
	}
	run = vhd_bitmap_run(bm, start, nsec, &set);
	end = (first + run) * VHD_SECTOR;	/* > in_blk: run >= 1 */
	ext->len = MIN(end - in_blk, avail);
	if (!set) {
		ext->type = IMG_EXT_UNALLOC;	/* bit clear: the parent's */
		return 0;
	}
	ext->type = IMG_EXT_DATA;		/* bit set: in this block */
	ext->host_off = block_off + s->bitmap_size + in_blk;
	return 0;
}

int vhd_map_extent(struct img *img, uint64_t off, uint64_t len,
			  struct img_extent *ext)
{
	const struct vhd *s = img->priv;
	uint64_t blk, in_blk;
	uint32_t sector;

	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		ext->type = IMG_EXT_DATA;	/* spec: data, then footer */
		ext->len = len;
		ext->host_off = off;
		return 0;
	}
	blk = off / s->block_size;
	in_blk = off % s->block_size;
	assert(blk < s->nblocks);	/* off < size: checked by img_map */
	ext->len = MIN(len, s->block_size - in_blk);
	ext->type = IMG_EXT_UNALLOC;	/* BAT 0xFFFFFFFF: parent, or zeros */
	/* acquire: a block published by a writer is complete */
	sector = __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
	if (sector == VHD_BAT_UNUSED)
		return 0;
	if (s->footer.disk_type == VHD_TYPE_DIFF)
		return vhd_map_diff(img, s, blk, sector, in_blk, ext->len,
				    ext);
	/* dynamic: the whole block is data; its bitmap is not consulted */
	ext->type = IMG_EXT_DATA;
	ext->host_off = (uint64_t)sector * VHD_SECTOR + s->bitmap_size +
			in_blk;
	return 0;
}

/* ---- writing ------------------------------------------------------------ */

