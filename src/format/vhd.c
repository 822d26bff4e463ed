// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhd.c: Microsoft Virtual Hard Disk images: fixed, dynamic, differencing.
 *
 * Read-only.  Everything read from the file is checked at open: the footer
 * (the one at the end, or the copy at offset 0 of a dynamic disk), the
 * dynamic header, the BAT, every allocated block and the parent locators.
 * After open the metadata is immutable, so map_extent needs no lock.
 *
 *   fixed         the file is the disk, then the footer
 *   dynamic       an allocated block is data as a whole (qemu: its sector
 *                 bitmap is not consulted); an unused BAT entry is a hole
 *   differencing  an allocated block holds the sectors its bitmap marks;
 *                 every other sector comes from the parent
 *
 * The virtual size is the footer's current size, never the CHS geometry.
 */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "utf16.h"
#include "vhd.h"

/* Sector bitmaps of a differencing disk up to this total are read at open;
 * larger images read the bitmap bytes they need on each lookup. */
#define VHD_BITMAP_PRELOAD_MAX (64u << 20)
/* Bitmap bytes read per lookup when not preloaded (4096 sectors). */
#define VHD_BITMAP_LAZY_BYTES 512u

struct vhd {
	struct vhd_footer footer;
	uint32_t block_size;	/* dynamic, differencing */
	uint32_t bitmap_size;	/* bitmap bytes before each block's data */
	uint64_t nblocks;	/* BAT entries in use: ceil(size / block) */
	uint32_t *bat;		/* owned: nblocks sector numbers (native) */
	uint8_t *bitmaps;	/* owned: preloaded bitmaps (differencing), or
				 * NULL: read on demand */
	uint32_t *bm_slot;	/* owned: per block, its index in bitmaps */
	struct img_parent parent; /* differencing: owns its paths */
};

static int problem(struct vhd_problem *why, int err, const char *fmt, ...)
	__printf(3, 4);

static int problem(struct vhd_problem *why, int err, const char *fmt, ...)
{
	va_list ap;

	if (why) {
		va_start(ap, fmt);
		vsnprintf(why->msg, sizeof(why->msg), fmt, ap);
		va_end(ap);
	}
	return err;
}

uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < len; i++)
		if (i < csum_off || i >= csum_off + 4)
			sum += buf[i];
	return ~sum;
}

int vhd_footer_decode(const uint8_t *buf, struct vhd_footer *f,
		      struct vhd_problem *why)
{
	const struct vhd_footer_raw *r = (const void *)buf; /* bytes only */
	struct vhd_footer d;
	uint32_t stored, sum;

	if (memcmp(r->cookie, VHD_COOKIE, sizeof(r->cookie)) != 0)
		return problem(why, -EINVAL, "no \"conectix\" footer cookie "
			       "(0x%016llx)",
			       (unsigned long long)get_be64(r->cookie));
	stored = get_be32(r->checksum);
	sum = vhd_checksum(buf, sizeof(*r),
			   offsetof(struct vhd_footer_raw, checksum));
	if (stored != sum)
		return problem(why, -EBADMSG,
			       "footer checksum mismatch (stored 0x%08x, "
			       "computed 0x%08x)", stored, sum);
	d.version = get_be32(r->version);
	if (d.version >> 16 != 1)
		return problem(why, -ENOTSUP,
			       "unsupported footer version (0x%08x)",
			       d.version);
	d.disk_type = get_be32(r->disk_type);
	if (d.disk_type < VHD_TYPE_FIXED || d.disk_type > VHD_TYPE_DIFF)
		return problem(why, -ENOTSUP, "unsupported disk type (%u)",
			       d.disk_type);
	d.features = get_be32(r->features);
	d.data_offset = get_be64(r->data_offset);
	d.timestamp = get_be32(r->timestamp);
	d.creator_app = get_be32(r->creator_app);
	d.orig_size = get_be64(r->orig_size);
	d.cur_size = get_be64(r->cur_size);
	d.geometry = get_be32(r->geometry);
	memcpy(d.uuid, r->uuid, sizeof(d.uuid));
	d.saved_state = r->saved_state;
	*f = d;
	return 0;
}

int vhd_dyn_header_decode(const uint8_t *buf, struct vhd_dyn_header *h,
			  struct vhd_problem *why)
{
	const struct vhd_dyn_header_raw *r = (const void *)buf;
	uint32_t stored, sum;

	if (memcmp(r->cookie, VHD_DYN_COOKIE, sizeof(r->cookie)) != 0)
		return problem(why, -EUCLEAN, "no \"cxsparse\" dynamic header "
			       "cookie (0x%016llx)",
			       (unsigned long long)get_be64(r->cookie));
	stored = get_be32(r->checksum);
	sum = vhd_checksum(buf, sizeof(*r),
			   offsetof(struct vhd_dyn_header_raw, checksum));
	if (stored != sum)
		return problem(why, -EBADMSG,
			       "dynamic header checksum mismatch (stored "
			       "0x%08x, computed 0x%08x)", stored, sum);
	h->version = get_be32(r->version);
	if (h->version >> 16 != 1)
		return problem(why, -ENOTSUP,
			       "unsupported dynamic header version (0x%08x)",
			       h->version);
	h->block_size = get_be32(r->block_size);
	if (h->block_size < VHD_SECTOR || !is_pow2(h->block_size))
		return problem(why, -EUCLEAN,
			       "block size is not a power of two >= 512 (%u)",
			       h->block_size);
	if (h->block_size > VHD_MAX_BLOCK_SIZE)
		return problem(why, -EFBIG, "block size too large (%u)",
			       h->block_size);
	h->max_table_entries = get_be32(r->max_table_entries);
	if (h->max_table_entries > VHD_MAX_BAT_ENTRIES)
		return problem(why, -EFBIG, "max table entries too large (%u)",
			       h->max_table_entries);
	h->table_offset = get_be64(r->table_offset);
	memcpy(h->parent_uuid, r->parent_uuid, sizeof(h->parent_uuid));
	h->parent_timestamp = get_be32(r->parent_timestamp);
	memcpy(h->parent_name, r->parent_name, sizeof(h->parent_name));
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator_raw *l = &r->locators[i];

		h->locators[i].code = get_be32(l->code);
		h->locators[i].data_space = get_be32(l->data_space);
		h->locators[i].data_length = get_be32(l->data_length);
		h->locators[i].data_offset = get_be64(l->data_offset);
	}
	return 0;
}

static inline bool bm_bit(const uint8_t *bm, uint64_t i)
{
	return (bm[i >> 3] >> (7 - (i & 7))) & 1;	/* MSB first */
}

uint64_t vhd_bitmap_run(const uint8_t *bm, uint64_t start, uint64_t max,
			bool *set)
{
	const bool state = bm_bit(bm, start);
	const uint8_t fill = state ? 0xff : 0x00;
	const uint64_t word = state ? UINT64_MAX : 0;
	uint64_t i = start, end = start + max;

	*set = state;
	while (i < end && (i & 7)) {	/* up to a byte boundary */
		if (bm_bit(bm, i) != state)
			return i - start;
		i++;
	}
	while (end - i >= 64) {		/* whole words of one state */
		uint64_t w;

		memcpy(&w, bm + (i >> 3), sizeof(w));
		if (w != word)
			break;
		i += 64;
	}
	while (end - i >= 8 && bm[i >> 3] == fill)
		i += 8;
	while (i < end && bm_bit(bm, i) == state)
		i++;
	return i - start;
}

static int vhd_pread(struct img *img, void *buf, size_t n, uint64_t off,
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
 * differencing disks) the copy at offset 0.  *limit is where the file's
 * payload ends: the footer at the end is never data.
 */
static int vhd_read_footer(struct img *img, struct vhd_footer *f,
			   uint64_t *limit)
{
	uint8_t buf[VHD_FOOTER_SIZE];
	struct vhd_problem end_why = { "" }, copy_why = { "" };
	struct vhd_footer end, copy;
	uint64_t end_len = 0;
	int end_r, copy_r, r;

	if (img->file_size < VHD_FOOTER_SIZE)
		return log_err_ret(-EINVAL, "vhd: %s: file too small for a "
				   "footer (%llu)", img->path,
				   (unsigned long long)img->file_size);
	r = vhd_pread(img, buf, sizeof(buf), img->file_size - sizeof(buf),
		      "footer");
	if (r < 0)
		return r;
	end_r = vhd_footer_decode(buf, &end, &end_why);
	if (end_r != -EINVAL) {
		end_len = VHD_FOOTER_SIZE;
	} else if (!memcmp(buf + 1, VHD_COOKIE, 8)) {
		/* Virtual PC before 2004: a 511-byte footer */
		memmove(buf, buf + 1, VHD_FOOTER_OLD_SIZE);
		buf[VHD_FOOTER_OLD_SIZE] = 0;
		end_r = vhd_footer_decode(buf, &end, &end_why);
		end_len = VHD_FOOTER_OLD_SIZE;
	}
	*limit = img->file_size - end_len;
	if (end_r == 0) {
		*f = end;
		return 0;
	}

	r = vhd_pread(img, buf, sizeof(buf), 0, "footer copy");
	if (r < 0)
		return r;
	copy_r = vhd_footer_decode(buf, &copy, &copy_why);
	if (copy_r == 0 && copy.disk_type != VHD_TYPE_FIXED) {
		if (end_len)
			log_warn("vhd: %s: %s at the end; using the footer "
				 "copy at offset 0", img->path, end_why.msg);
		else
			log_warn("vhd: %s: no footer at the end of the file; "
				 "using the footer copy at offset 0",
				 img->path);
		*f = copy;
		return 0;
	}
	if (end_len)
		return log_err_ret(end_r, "vhd: %s: %s", img->path,
				   end_why.msg);
	if (copy_r == 0)
		return log_err_ret(-EUCLEAN, "vhd: %s: fixed disk without a "
				   "footer at the end of the file (%llu)",
				   img->path,
				   (unsigned long long)img->file_size);
	if (copy_r != -EINVAL)
		return log_err_ret(copy_r, "vhd: %s: %s", img->path,
				   copy_why.msg);
	return log_err_ret(-EINVAL, "vhd: %s: %s", img->path, end_why.msg);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "file://localhost/a%20b" -> "/a b" (absolute); "a/b" -> relative */
static int vhd_macx_path(const uint8_t *d, size_t n, char **out,
			 enum img_ref_kind *kind)
{
	const char *s = (const char *)d;
	size_t len = strnlen(s, n), o = 0;
	char *p;

	*kind = IMG_REF_RELATIVE;
	if (len >= 7 && !strncmp(s, "file://", 7)) {
		*kind = IMG_REF_ABSOLUTE;
		s += 7;
		len -= 7;
		if (len >= 10 && !strncmp(s, "localhost/", 10)) {
			s += 9;
			len -= 9;
		}
	}
	p = malloc(len + 1);
	if (!p)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++) {
		int hi = i + 2 < len ? hex_digit(s[i + 1]) : -1;
		int lo = i + 2 < len ? hex_digit(s[i + 2]) : -1;

		if (s[i] == '%' && hi >= 0 && lo >= 0 && (hi | lo)) {
			p[o++] = (char)(hi << 4 | lo);	/* never a NUL */
			i += 2;
			continue;
		}
		p[o++] = s[i];
	}
	p[o] = '\0';
	*out = p;
	return 0;
}

static const char *vhd_plat_name(uint32_t code)
{
	switch (code) {
	case VHD_PLAT_W2RU:
		return "W2ru";
	case VHD_PLAT_W2KU:
		return "W2ku";
	case VHD_PLAT_MACX:
		return "MacX";
	case VHD_PLAT_WI2R:
		return "Wi2r";
	case VHD_PLAT_WI2K:
		return "Wi2k";
	case VHD_PLAT_MAC:
		return "Mac";
	}
	return NULL;
}

/*
 * Read and decode locator i.  *out is NULL for a locator this driver does
 * not use (the deprecated ANSI ones, Mac aliases) or an empty one.  The
 * data space is ignored: Windows writes it in bytes, the spec in sectors,
 * and only the offset and length say where the path is.
 */
static int vhd_read_locator(struct img *img, const struct vhd_locator *l,
			    unsigned i, uint64_t limit, char **out,
			    enum img_ref_kind *kind)
{
	const char *name = vhd_plat_name(l->code);
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
	if (r < 0)
		goto out;
	if (l->code == VHD_PLAT_MACX) {
		r = vhd_macx_path(data, l->data_length, out, kind);
		goto out;
	}
	*kind = l->code == VHD_PLAT_W2RU ? IMG_REF_RELATIVE : IMG_REF_ABSOLUTE;
	r = utf16_to_utf8(data, l->data_length, false, out);
	if (r == -EILSEQ)
		r = log_err_ret(-EUCLEAN, "vhd: %s: parent locator %u (%s) "
				"is not valid UTF-16 (%u bytes)", img->path,
				i, name, l->data_length);
out:
	free(data);
	return r;
}

/* Differencing: decode the parent's identity and references at open. */
static int vhd_load_parent(struct img *img, struct vhd *s,
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
		r = vhd_read_locator(img, &h->locators[i], i, limit,
				     &paths[i], &kinds[i]);
	if (r < 0)
		goto out;
	r = utf16_to_utf8(h->parent_name, sizeof(h->parent_name), true, &name);
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
						       vhd_plat_name(order[k]),
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
	p->format = "vhd";	/* a VHD's parent is a VHD (spec) */
out:
	for (unsigned i = 0; i < VHD_NLOCATORS; i++)
		free(paths[i]);
	free(name);
	return r;
}

/* Differencing: keep every allocated block's bitmap if they are few. */
static int vhd_load_bitmaps(struct img *img, struct vhd *s, uint64_t nalloc)
{
	uint64_t total;
	size_t k = 0;
	int r;

	if (MUL_OVERFLOW(nalloc, (uint64_t)s->bitmap_size, &total) ||
	    total > VHD_BITMAP_PRELOAD_MAX) {
		DBG(FORMAT, "vhd: %s: %llu blocks allocated: sector bitmaps "
		    "read on demand", img->path, (unsigned long long)nalloc);
		return 0;
	}
	s->bitmaps = malloc(total ? (size_t)total : 1);
	s->bm_slot = malloc((size_t)s->nblocks * sizeof(*s->bm_slot) + 1);
	if (!s->bitmaps || !s->bm_slot)
		return -ENOMEM;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		r = vhd_pread(img, s->bitmaps + k * s->bitmap_size,
			      s->bitmap_size, (uint64_t)s->bat[b] * VHD_SECTOR,
			      "sector bitmap");
		if (r < 0)
			return r;
		s->bm_slot[b] = (uint32_t)k++;
	}
	return 0;
}

static int vhd_open_dynamic(struct img *img, struct vhd *s, uint64_t limit)
{
	uint8_t buf[VHD_DYN_HEADER_SIZE];
	struct vhd_dyn_header h;
	struct vhd_problem why;
	uint64_t off = s->footer.data_offset, nalloc = 0;
	uint32_t spb;
	int r;

	if (!range_within(off, sizeof(buf), limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: dynamic header lies "
				   "past the end of the file (%llu)",
				   img->path, (unsigned long long)off);
	r = vhd_pread(img, buf, sizeof(buf), off, "dynamic header");
	if (r < 0)
		return r;
	r = vhd_dyn_header_decode(buf, &h, &why);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: %s", img->path, why.msg);

	s->block_size = h.block_size;
	spb = h.block_size / VHD_SECTOR;
	/* one bit per sector, padded to a sector (spec: "Sector Bitmap") */
	s->bitmap_size = ((spb + 7) / 8 + VHD_SECTOR - 1) & ~(VHD_SECTOR - 1);
	s->nblocks = img->size / h.block_size + !!(img->size % h.block_size);
	if (s->nblocks > h.max_table_entries)
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "too small for the virtual size (%u "
				   "entries, %llu needed)", img->path,
				   h.max_table_entries,
				   (unsigned long long)s->nblocks);
	/* nblocks <= VHD_MAX_BAT_ENTRIES: no overflow below */
	if (!range_within(h.table_offset, s->nblocks * 4, limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "lies past the end of the file (%llu)",
				   img->path,
				   (unsigned long long)h.table_offset);
	s->bat = malloc((size_t)s->nblocks * sizeof(*s->bat) + 1);
	if (!s->bat)
		return -ENOMEM;
	r = vhd_pread(img, s->bat, (size_t)s->nblocks * 4, h.table_offset,
		      "block allocation table");
	if (r < 0)
		return r;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t data_len, start;

		s->bat[b] = get_be32(&s->bat[b]);
		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		/* the last block only needs to cover the virtual size */
		data_len = MIN((uint64_t)h.block_size,
			       img->size - b * h.block_size);
		start = (uint64_t)s->bat[b] * VHD_SECTOR;
		if (!range_within(start, s->bitmap_size + data_len, limit))
			return log_err_ret(-EUCLEAN, "vhd: %s: block %llu lies "
					   "past the end of the file (sector "
					   "%u)", img->path,
					   (unsigned long long)b, s->bat[b]);
		nalloc++;
	}
	img->block_size = h.block_size;
	if (s->footer.disk_type != VHD_TYPE_DIFF)
		return 0;
	r = vhd_load_bitmaps(img, s, nalloc);
	if (r < 0)
		return r;
	return vhd_load_parent(img, s, &h, limit);
}

static void vhd_close(struct img *img)
{
	struct vhd *s = img->priv;

	if (!s)
		return;
	free(s->bat);
	free(s->bitmaps);
	free(s->bm_slot);
	img_parent_clear(&s->parent);
	free(s);
	img->priv = NULL;
}

static int vhd_open(struct img *img)
{
	static const char *const subtypes[] = {
		[VHD_TYPE_FIXED] = "fixed",
		[VHD_TYPE_DYNAMIC] = "dynamic",
		[VHD_TYPE_DIFF] = "differencing",
	};
	struct vhd *s;
	uint64_t limit;
	int r;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	img->priv = s;
	r = vhd_read_footer(img, &s->footer, &limit);
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
	img->writable = false;	/* no write support in this driver */

	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		/* spec: the disk's bytes, then the footer */
		if (img->size > limit) {
			r = log_err_ret(-EUCLEAN, "vhd: %s: file too short for "
					"the virtual size (%llu)", img->path,
					(unsigned long long)img->size);
			goto fail;
		}
		return 0;
	}
	r = vhd_open_dynamic(img, s, limit);
	if (r < 0)
		goto fail;
	return 0;
fail:
	vhd_close(img);
	return r;
}

static int vhd_probe(const struct img_probe *p)
{
	if (p->tail_len >= VHD_FOOTER_SIZE &&
	    (!memcmp(p->tail, VHD_COOKIE, 8) ||
	     !memcmp(p->tail + 1, VHD_COOKIE, 8)))	/* 511-byte footer */
		return 100;
	if (p->head_len >= VHD_FOOTER_SIZE && !memcmp(p->head, VHD_COOKIE, 8))
		return 100;	/* the copy of a dynamic disk's footer */
	return 0;
}

static int vhd_parent(struct img *img, struct img_parent *p)
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
			uint64_t in_blk, uint64_t avail,
			struct img_extent *ext)
{
	uint64_t block_off = (uint64_t)s->bat[blk] * VHD_SECTOR;
	uint64_t first = in_blk / VHD_SECTOR, start = first, run, end;
	uint64_t nsec = (in_blk + avail + VHD_SECTOR - 1) / VHD_SECTOR - first;
	uint8_t buf[VHD_BITMAP_LAZY_BYTES];
	const uint8_t *bm;
	bool set;
	int r;

	if (s->bitmaps) {
		bm = s->bitmaps + (size_t)s->bm_slot[blk] * s->bitmap_size;
	} else {
		uint64_t byte0 = first / 8;
		uint64_t nbytes = MIN((uint64_t)sizeof(buf),
				      (first + nsec + 7) / 8 - byte0);

		r = pread_full(img->fd, buf, (size_t)nbytes,
			       block_off + byte0);
		if (r < 0) {
			log_err("vhd: %s: cannot read the sector bitmap of "
				"block %llu (%s)", img->path,
				(unsigned long long)blk, strerror(-r));
			return r == -ENODATA ? -EIO : r;
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

static int vhd_map_extent(struct img *img, uint64_t off, uint64_t len,
			  struct img_extent *ext)
{
	const struct vhd *s = img->priv;
	uint64_t blk, in_blk;

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
	if (s->bat[blk] == VHD_BAT_UNUSED)
		return 0;
	if (s->footer.disk_type == VHD_TYPE_DIFF)
		return vhd_map_diff(img, s, blk, in_blk, ext->len, ext);
	/* dynamic: the whole block is data; its bitmap is not consulted */
	ext->type = IMG_EXT_DATA;
	ext->host_off = (uint64_t)s->bat[blk] * VHD_SECTOR + s->bitmap_size +
			in_blk;
	return 0;
}

const struct img_driver vhd_driver = {
	.name = "vhd",
	.desc = "Microsoft Virtual Hard Disk (fixed, dynamic, differencing)",
	.probe = vhd_probe,
	.open = vhd_open,
	.close = vhd_close,
	.parent = vhd_parent,
	.map_extent = vhd_map_extent,	/* DATA always has host_off */
	/* .read, .write, .flush NULL: read-only, the chain answers -EROFS */
};
