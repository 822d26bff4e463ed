// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * check.c: the structural check of a VHD file (layerimg check).
 *
 * The checks of tests/tools/vhdcheck.py, in C, from the "Virtual Hard Disk
 * Image Format Specification": the footer at the end (cookie, checksum,
 * version, disk type, the reserved feature bit, saved state) and, for
 * dynamic and differencing disks, its copy at offset 0; the dynamic header
 * (cookie, checksum, version, block size, table size for the virtual
 * size); every BAT entry's block (bitmap and data) inside the file before
 * the footer; no two structures overlapping (footer copy, header, BAT,
 * parent locator data, blocks); the parent locators (known platform code,
 * data inside the file, data space large enough, text that decodes).
 *
 * Works on the file alone (the driver's open is not run, so it can report
 * on files open refuses), but decodes with the codec (codec.c) and finds
 * the footer as the open path does; what it adds are its own rules: the
 * reserved feature bit, the saved state, the header's unused data offset,
 * overlaps, locator details, every finding reported rather than the first
 * one refused.  --repair:
 *   - a damaged footer at the end restored from a valid copy at offset 0
 *     (dynamic and differencing disks), written where the old one was
 *     (or over an unused last sector), or appended when the last sector
 *     holds a block;
 *   - a damaged or different copy at offset 0 restored from a valid footer
 *     at the end;
 *   - with no valid copy anywhere (fixed disks), a footer whose only
 *     problem is its checksum gets the checksum recomputed.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhd.h"

struct vhd_check_region {
	uint64_t off, len;
	char what[40];
};

struct vhd_checker {
	struct img *img;
	struct img_check *res;
	struct vhd_check_region *rg;	/* owned */
	size_t nrg, caprg;
};

#define vhd_check_err(c, ...) \
	img_check_report((c)->res, true, "vhd", (c)->img->path, __VA_ARGS__)
#define vhd_check_warn(c, ...) \
	img_check_report((c)->res, false, "vhd", (c)->img->path, __VA_ARGS__)

static int vhd_region_add(struct vhd_checker *c, uint64_t off, uint64_t len, const char *fmt,
		  ...) __printf(4, 5);
static int vhd_region_add(struct vhd_checker *c, uint64_t off, uint64_t len, const char *fmt,
		  ...)
{
	va_list ap;

	if (c->nrg == c->caprg) {
		size_t ncap = c->caprg ? 2 * c->caprg : 64;
		struct vhd_check_region *n = reallocarray(c->rg, ncap, sizeof(*n));

		if (!n)
			return -ENOMEM;
		c->rg = n;
		c->caprg = ncap;
	}
	c->rg[c->nrg].off = off;
	c->rg[c->nrg].len = len;
	va_start(ap, fmt);
	vsnprintf(c->rg[c->nrg].what, sizeof(c->rg[0].what), fmt, ap);
	va_end(ap);
	c->nrg++;
	return 0;
}

static int vhd_region_cmp(const void *a, const void *b)
{
	const struct vhd_check_region *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* Sorted by offset: each region against the furthest end before it. */
static void vhd_overlaps_report(struct vhd_checker *c)
{
	uint64_t end = 0;
	size_t endi = 0;

	qsort(c->rg, c->nrg, sizeof(*c->rg), vhd_region_cmp);
	for (size_t i = 0; i < c->nrg; i++) {
		const struct vhd_check_region *r = &c->rg[i];

		if (i && r->off < end)
			vhd_check_err(c, "%s (offset %llu, %llu bytes) overlaps %s "
			       "(offset %llu, %llu bytes)", r->what,
			       (unsigned long long)r->off,
			       (unsigned long long)r->len, c->rg[endi].what,
			       (unsigned long long)c->rg[endi].off,
			       (unsigned long long)c->rg[endi].len);
		if (r->off + r->len > end) {
			end = r->off + r->len;
			endi = i;
		}
	}
}

/*
 * Judge one 512-byte footer; where names it.  Returns true if it can be
 * used (the codec decodes it: cookie, checksum, version and disk type
 * good); every problem is an error when report, else silent.
 */
static bool vhd_footer_judge(struct vhd_checker *c, const uint8_t *buf, const char *where,
		      bool report)
{
	struct vhd_problem why = { "" };
	struct vhd_footer f;
	int r = vhd_footer_decode(buf, &f, &why);

	if (r < 0 && report)
		vhd_check_err(c, "%s: %s", where, why.msg);
	if (r == -EINVAL)
		return false;	/* no cookie: not a footer at all */
	/* the checker's own rules, on the fields as they are */
	vhd_footer_unpack(buf, &f);
	if (!(f.features & VHD_FEATURES_RESERVED) && report)
		vhd_check_err(c, "%s: reserved feature bit 0x2 not set (0x%08x)",
		       where, f.features);
	if (f.saved_state > 1 && report)
		vhd_check_err(c, "%s: saved state is neither 0 nor 1 (%u)", where,
		       f.saved_state);
	return r == 0;
}

/* Like vhd_footer_judge, but true when the checksum is the only problem. */
static bool vhd_footer_checksum_only(const uint8_t *f)
{
	uint8_t fixed[VHD_FOOTER_SIZE];
	struct vhd_footer d;

	memcpy(fixed, f, sizeof(fixed));
	put_be32(fixed + offsetof(struct vhd_footer_raw, checksum),
		 vhd_checksum(fixed, sizeof(fixed),
			      offsetof(struct vhd_footer_raw, checksum)));
	return vhd_footer_decode(fixed, &d, NULL) == 0;
}

static int vhd_repair_write(struct vhd_checker *c, const void *buf, size_t n, uint64_t off,
		    const char *what)
{
	int r = pwrite_full(c->img->fd, buf, n, off);

	if (r == 0 && fdatasync(c->img->fd) < 0)
		r = -errno;
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot write %s at offset "
				   "%llu (%s)", c->img->path, what,
				   (unsigned long long)off, strerror(-r));
	log_info("vhd: %s: repaired: %s written at offset %llu",
		 c->img->path, what, (unsigned long long)off);
	c->res->repaired++;
	return 0;
}

/* MacX: a file URL, UTF-8 (the reader takes any bytes). */
static bool vhd_utf8_check(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		unsigned len = p[i] < 0x80 ? 1 : (p[i] & 0xe0) == 0xc0 ? 2 :
			       (p[i] & 0xf0) == 0xe0 ? 3 :
			       (p[i] & 0xf8) == 0xf0 ? 4 : 0;

		if (!len || i + len > n)
			return false;
		for (unsigned k = 1; k < len; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
		i += len;
	}
	return true;
}

/* One locator's data, decoded: 1 if it names a path, 0 if not (reported
 * when bad), -errno if it could not be read. */
static int vhd_locator_check(struct vhd_checker *c, const struct vhd_locator *l, unsigned i,
		      const char *name)
{
	enum img_ref_kind kind;
	uint8_t *blob;
	char *text = NULL;
	int r, found = 0;

	blob = malloc(l->data_length);
	if (!blob)
		return -ENOMEM;
	r = pread_full(c->img->fd, blob, l->data_length, l->data_offset);
	if (r < 0) {
		free(blob);
		return log_err_ret(r, "vhd: %s: cannot read parent locator %u "
				   "(%s)", c->img->path, i, strerror(-r));
	}
	if (l->code == VHD_PLAT_W2RU || l->code == VHD_PLAT_W2KU) {
		if (l->data_length % 2)
			vhd_check_err(c, "parent locator %u (%s): odd length %u for "
			       "UTF-16", i, name, l->data_length);
		else if (vhd_locator_decode(l->code, blob, l->data_length,
					    &text, &kind) < 0)
			vhd_check_err(c, "parent locator %u (%s): not valid UTF-16LE",
			       i, name);
		else
			found = text && *text;
	} else if (l->code == VHD_PLAT_MACX) {
		if (!vhd_utf8_check(blob, l->data_length))
			vhd_check_err(c, "parent locator %u (%s): not valid UTF-8", i,
			       name);
		else
			found = blob[0] != 0;
	} else {
		found = 1;
	}
	free(text);
	free(blob);
	return found;
}

/* Parent name and locators of a differencing disk. */
static int vhd_parent_check(struct vhd_checker *c, const struct vhd_dyn_header *h,
		     const uint8_t *raw, uint64_t limit)
{
	const struct vhd_dyn_header_raw *r = (const void *)raw;
	static const uint8_t zero[16];
	bool found = false;
	char *pname = NULL;
	int rr;

	if (!memcmp(h->parent_uuid, zero, 16))
		vhd_check_warn(c, "parent unique id is all zeros (not recorded)");
	if (vhd_parent_name_decode(h->parent_name, &pname) < 0)
		vhd_check_err(c, "parent unicode name is not valid UTF-16BE");
	else
		found = *pname != 0;
	free(pname);
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator *l = &h->locators[i];
		const char *name = vhd_locator_name(l->code);

		if (l->code == VHD_PLAT_NONE)
			continue;
		if (!name) {
			vhd_check_err(c, "parent locator %u: unknown platform code "
			       "0x%08x", i, l->code);
			continue;
		}
		if (get_be32(r->locators[i].reserved))
			vhd_check_err(c, "parent locator %u (%s): reserved field is "
			       "%u", i, name, get_be32(r->locators[i].reserved));
		if (!l->data_length) {
			vhd_check_warn(c, "parent locator %u (%s): empty", i, name);
			continue;
		}
		if (!range_within(l->data_offset, l->data_length, limit)) {
			vhd_check_err(c, "parent locator %u (%s): data (%u bytes at "
			       "offset %llu) lies past the footer", i, name,
			       l->data_length,
			       (unsigned long long)l->data_offset);
			continue;
		}
		if ((uint64_t)l->data_space * VHD_SECTOR < l->data_length &&
		    l->data_space < l->data_length)
			vhd_check_err(c, "parent locator %u (%s): data space %u holds "
			       "%u bytes neither as sectors (spec) nor as "
			       "bytes (Windows)", i, name, l->data_space,
			       l->data_length);
		rr = vhd_region_add(c, l->data_offset, l->data_length,
			    "parent locator %u (%s)", i, name);
		if (rr < 0)
			return rr;
		if (l->data_length > VHD_MAX_LOCATOR_LEN) {
			vhd_check_err(c, "parent locator %u (%s): too long (%u bytes)",
			       i, name, l->data_length);
			continue;
		}
		rr = vhd_locator_check(c, l, i, name);
		if (rr < 0)
			return rr;
		found = found || rr;
	}
	if (!found)
		vhd_check_err(c, "differencing disk names no parent (no name, no "
		       "locator)");
	return 0;
}

/*
 * Decode the dynamic header at hoff with the codec.  A checksum mismatch
 * is reported and the rest judged on a copy with the checksum fixed (the
 * fields may still describe the disk).  0 and *h, or 1: unusable
 * (reported).
 */
static int vhd_header_check(struct vhd_checker *c, uint8_t *raw, uint64_t hoff,
		     struct vhd_dyn_header *h)
{
	struct vhd_problem why = { "" };
	uint8_t fixed[VHD_DYN_HEADER_SIZE];
	int r = vhd_dyn_header_decode(raw, h, &why);

	if (r == -EBADMSG) {
		vhd_check_err(c, "dynamic header (offset %llu): %s",
		       (unsigned long long)hoff, why.msg);
		memcpy(fixed, raw, sizeof(fixed));
		put_be32(fixed + offsetof(struct vhd_dyn_header_raw, checksum),
			 vhd_checksum(fixed, sizeof(fixed),
				      offsetof(struct vhd_dyn_header_raw,
					       checksum)));
		r = vhd_dyn_header_decode(fixed, h, &why);
	}
	if (r < 0) {
		vhd_check_err(c, "dynamic header (offset %llu): %s",
		       (unsigned long long)hoff, why.msg);
		return 1;
	}
	return 0;
}

/* The dynamic header, the BAT and the blocks. */
static int vhd_sparse_check(struct vhd_checker *c, const struct vhd_footer *f, uint64_t limit)
{
	uint8_t raw[VHD_DYN_HEADER_SIZE];
	struct vhd_dyn_header h;
	uint64_t hoff = f->data_offset, size = f->cur_size;
	uint64_t need, bitmap, nalloc = 0;
	uint32_t bs, entries, *bat;
	int rr;

	if (hoff < VHD_FOOTER_SIZE ||
	    !range_within(hoff, VHD_DYN_HEADER_SIZE, limit)) {
		vhd_check_err(c, "dynamic header at offset %llu lies outside the "
		       "file (before the footer at %llu)",
		       (unsigned long long)hoff, (unsigned long long)limit);
		return 0;
	}
	rr = pread_full(c->img->fd, raw, sizeof(raw), hoff);
	if (rr < 0)
		return log_err_ret(rr, "vhd: %s: cannot read the dynamic "
				   "header (%s)", c->img->path, strerror(-rr));
	if ((rr = vhd_region_add(c, hoff, sizeof(raw), "the dynamic header")) < 0)
		return rr;
	if (vhd_header_check(c, raw, hoff, &h))
		return 0;
	if (h.data_offset != UINT64_MAX)
		vhd_check_err(c, "dynamic header: data offset is not all ones "
		       "(0x%llx)", (unsigned long long)h.data_offset);
	bs = h.block_size;
	entries = h.max_table_entries;	/* <= VHD_MAX_BAT_ENTRIES */
	need = size / bs + !!(size % bs);
	if (entries < need)
		vhd_check_err(c, "BAT has %u entries, the virtual size %llu needs "
		       "%llu", entries, (unsigned long long)size,
		       (unsigned long long)need);
	if (!range_within(h.table_offset, (uint64_t)entries * 4, limit)) {
		vhd_check_err(c, "BAT (%u entries at offset %llu) lies past the "
		       "footer", entries, (unsigned long long)h.table_offset);
		return 0;
	}
	if (entries && (rr = vhd_region_add(c, h.table_offset, (uint64_t)entries * 4,
				    "the BAT")) < 0)
		return rr;
	bat = malloc((size_t)entries * 4 + 1);
	if (!bat)
		return -ENOMEM;
	rr = pread_full(c->img->fd, bat, (size_t)entries * 4, h.table_offset);
	if (rr < 0) {
		free(bat);
		return log_err_ret(rr, "vhd: %s: cannot read the BAT (%s)",
				   c->img->path, strerror(-rr));
	}
	vhd_bat_decode((const uint8_t *)bat, entries, bat);
	bitmap = vhd_bitmap_size(bs);
	for (uint32_t i = 0; i < entries && rr == 0; i++) {
		uint64_t start = (uint64_t)bat[i] * VHD_SECTOR;

		if (bat[i] == VHD_BAT_UNUSED)
			continue;
		nalloc++;
		if (!range_within(start, bitmap + bs, limit)) {
			vhd_check_err(c, "block %u (BAT entry, sector %u): bitmap and "
			       "data lie past the footer (%llu > %llu)", i,
			       bat[i], (unsigned long long)(start + bitmap + bs),
			       (unsigned long long)limit);
			continue;
		}
		if (i >= need)
			vhd_check_warn(c, "block %u (BAT entry) is past the virtual "
				"size but allocated", i);
		rr = vhd_region_add(c, start, bitmap + bs, "block %u", i);
	}
	free(bat);
	if (rr < 0)
		return rr;
	c->res->allocated = nalloc * bs;
	if (f->disk_type == VHD_TYPE_DIFF)
		return vhd_parent_check(c, &h, raw, limit);
	return 0;
}

int vhd_check(struct img *img, bool repair, struct img_check *res)
{
	struct vhd_checker c = { .img = img, .res = res };
	uint8_t end[VHD_FOOTER_SIZE], copy[VHD_FOOTER_SIZE];
	const uint8_t *foot;
	struct vhd_footer f;
	uint64_t fsize = img->file_size, limit, end_off;
	bool end_ok, copy_ok, old, has_end, restore_end = false;
	size_t end_len;
	int r;

	if (fsize < VHD_FOOTER_SIZE) {
		vhd_check_err(&c, "file too small for a footer (%llu bytes)",
		       (unsigned long long)fsize);
		return 0;
	}
	r = pread_full(img->fd, end, sizeof(end), fsize - sizeof(end));
	if (r == 0)
		r = pread_full(img->fd, copy, sizeof(copy), 0);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot read the footer (%s)",
				   img->path, strerror(-r));
	/* where the open path looks: 512 bytes, or 511 (Virtual PC) */
	end_len = vhd_footer_locate(end);
	has_end = end_len != 0;
	old = end_len == VHD_FOOTER_OLD_SIZE;
	end_off = fsize - (has_end ? end_len : VHD_FOOTER_SIZE);
	end_ok = has_end && vhd_footer_judge(&c, end, "footer at the end", false);
	copy_ok = vhd_footer_judge(&c, copy, "footer copy at offset 0", false);
	if (copy_ok) {
		vhd_footer_unpack(copy, &f);
		copy_ok = f.disk_type != VHD_TYPE_FIXED;
	}
	if (has_end)
		vhd_footer_judge(&c, end, "footer at the end", true);
	else
		vhd_check_err(&c, "no footer at the end of the file (no \"conectix\" "
		       "cookie at offset %llu)", (unsigned long long)end_off);

	if (!end_ok && copy_ok) {
		/* a dynamic disk: the copy at 0 describes it */
		foot = copy;
		limit = has_end ? end_off : fsize;
		restore_end = repair;	/* once the layout is known */
	} else if (!end_ok) {
		if (repair && has_end && !old && vhd_footer_checksum_only(end)) {
			put_be32(end + offsetof(struct vhd_footer_raw,
						checksum),
				 vhd_checksum(end, sizeof(end),
					      offsetof(struct vhd_footer_raw,
						       checksum)));
			return vhd_repair_write(&c, end, sizeof(end), end_off,
					"the footer (checksum recomputed)");
		}
		return 0;	/* nothing describes the disk */
	} else {
		foot = end;
		limit = end_off;
	}

	vhd_footer_unpack(foot, &f);	/* decoded: vhd_footer_judge() */
	if (f.disk_type == VHD_TYPE_FIXED) {
		if (f.data_offset != UINT64_MAX)
			vhd_check_err(&c, "fixed disk: data offset is not all ones");
		if (limit < f.cur_size)
			vhd_check_err(&c, "fixed disk: %llu bytes of data for a "
			       "%llu-byte disk", (unsigned long long)limit,
			       (unsigned long long)f.cur_size);
		res->allocated = MIN(limit, f.cur_size);
		return 0;
	}

	if (end_ok) {
		if (!vhd_footer_judge(&c, copy, "footer copy at offset 0", true)) {
			/* reported */
		} else if (memcmp(copy, end, sizeof(end)) != 0) {
			vhd_check_err(&c, "the footer copy at offset 0 differs from "
			       "the footer at the end");
		} else {
			copy_ok = true;
		}
		if (memcmp(copy, end, sizeof(end)) != 0 && repair &&
		    f.data_offset >= VHD_FOOTER_SIZE) {
			r = vhd_repair_write(&c, end, sizeof(end), 0,
				     "the footer copy (from the footer at the "
				     "end)");
			if (r < 0)
				return r;
		}
	}
	if (old)
		vhd_check_err(&c, "511-byte footer on a dynamic disk");
	if (fsize % VHD_SECTOR)
		vhd_check_err(&c, "file size %llu is not a multiple of 512",
		       (unsigned long long)fsize);
	r = vhd_region_add(&c, 0, VHD_FOOTER_SIZE, "the footer copy");
	if (r == 0)
		r = vhd_sparse_check(&c, &f, limit);
	if (r == 0)
		vhd_overlaps_report(&c);
	if (r == 0 && restore_end) {
		/*
		 * The footer goes over the damaged one (its cookie is still
		 * there), or over the last sector if no structure uses it (a
		 * footer overwritten with garbage), or else at the end (the
		 * file was cut after its last block).
		 */
		uint64_t used = 0, at = fsize;

		for (size_t i = 0; i < c.nrg; i++)
			used = MAX(used, c.rg[i].off + c.rg[i].len);
		if (has_end)
			at = end_off;
		else if (used <= fsize - VHD_FOOTER_SIZE)
			at = fsize - VHD_FOOTER_SIZE;
		r = vhd_repair_write(&c, copy, sizeof(copy), at,
			     "the footer (from the copy at offset 0)");
	}
	free(c.rg);
	return r;
}
