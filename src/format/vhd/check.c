// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhd-check.c: the structural check of a VHD file (layerimg check).
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
 * Works on the file alone (the driver's open is not run).  --repair:
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
#include "utf16.h"
#include "vhd.h"

struct vc_region {
	uint64_t off, len;
	char what[40];
};

struct vc {
	struct img *img;
	struct img_check *res;
	struct vc_region *rg;	/* owned */
	size_t nrg, caprg;
};

#define vc_err(c, ...) \
	img_check_report((c)->res, true, "vhd", (c)->img->path, __VA_ARGS__)
#define vc_warn(c, ...) \
	img_check_report((c)->res, false, "vhd", (c)->img->path, __VA_ARGS__)

static int vc_add(struct vc *c, uint64_t off, uint64_t len, const char *fmt,
		  ...) __printf(4, 5);
static int vc_add(struct vc *c, uint64_t off, uint64_t len, const char *fmt,
		  ...)
{
	va_list ap;

	if (c->nrg == c->caprg) {
		size_t ncap = c->caprg ? 2 * c->caprg : 64;
		struct vc_region *n = reallocarray(c->rg, ncap, sizeof(*n));

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

static int vc_region_cmp(const void *a, const void *b)
{
	const struct vc_region *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* Sorted by offset: each region against the furthest end before it. */
static void vc_overlaps(struct vc *c)
{
	uint64_t end = 0;
	size_t endi = 0;

	qsort(c->rg, c->nrg, sizeof(*c->rg), vc_region_cmp);
	for (size_t i = 0; i < c->nrg; i++) {
		const struct vc_region *r = &c->rg[i];

		if (i && r->off < end)
			vc_err(c, "%s (offset %llu, %llu bytes) overlaps %s "
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
 * used (cookie, checksum, version and disk type good); every problem is
 * an error when report, else silent.
 */
static bool vc_footer(struct vc *c, const uint8_t *f, const char *where,
		      bool report)
{
	const struct vhd_footer_raw *r = (const void *)f;
	uint32_t stored, sum, features, version, type;
	bool ok = true;

	if (memcmp(r->cookie, VHD_COOKIE, 8) != 0) {
		if (report)
			vc_err(c, "%s: no \"conectix\" cookie", where);
		return false;
	}
	stored = get_be32(r->checksum);
	sum = vhd_checksum(f, VHD_FOOTER_SIZE,
			   offsetof(struct vhd_footer_raw, checksum));
	if (stored != sum) {
		if (report)
			vc_err(c, "%s: checksum mismatch (stored 0x%08x, "
			       "computed 0x%08x)", where, stored, sum);
		ok = false;
	}
	features = get_be32(r->features);
	if (!(features & VHD_FEATURES_RESERVED) && report)
		vc_err(c, "%s: reserved feature bit 0x2 not set (0x%08x)",
		       where, features);
	version = get_be32(r->version);
	if (version >> 16 != 1) {
		if (report)
			vc_err(c, "%s: unsupported version (0x%08x)", where,
			       version);
		ok = false;
	}
	type = get_be32(r->disk_type);
	if (type < VHD_TYPE_FIXED || type > VHD_TYPE_DIFF) {
		if (report)
			vc_err(c, "%s: unknown disk type (%u)", where, type);
		ok = false;
	}
	if (r->saved_state > 1 && report)
		vc_err(c, "%s: saved state is neither 0 nor 1 (%u)", where,
		       r->saved_state);
	return ok;
}

/* Like vc_footer, but true when the checksum is the only problem. */
static bool vc_only_checksum(struct vc *c, const uint8_t *f)
{
	uint8_t fixed[VHD_FOOTER_SIZE];

	memcpy(fixed, f, sizeof(fixed));
	put_be32(fixed + offsetof(struct vhd_footer_raw, checksum),
		 vhd_checksum(fixed, sizeof(fixed),
			      offsetof(struct vhd_footer_raw, checksum)));
	return vc_footer(c, fixed, "", false);
}

static int vc_write(struct vc *c, const void *buf, size_t n, uint64_t off,
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

static bool vc_text_ok(const uint8_t *p, size_t n, bool be)
{
	char *s = NULL;
	int r = utf16_to_utf8(p, n, be, &s);

	free(s);
	return r == 0;
}

static bool vc_utf8_ok(const uint8_t *p, size_t n)
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

static const char *vc_plat(uint32_t code)
{
	switch (code) {
	case VHD_PLAT_WI2R:
		return "Wi2r";
	case VHD_PLAT_WI2K:
		return "Wi2k";
	case VHD_PLAT_W2RU:
		return "W2ru";
	case VHD_PLAT_W2KU:
		return "W2ku";
	case VHD_PLAT_MAC:
		return "Mac";
	case VHD_PLAT_MACX:
		return "MacX";
	default:
		return NULL;
	}
}

/* Parent name and locators of a differencing disk. */
static int vc_parent(struct vc *c, const uint8_t *h, uint64_t limit)
{
	const struct vhd_dyn_header_raw *r = (const void *)h;
	static const uint8_t zero[16];
	bool found = false;
	int rr;

	if (!memcmp(r->parent_uuid, zero, 16))
		vc_warn(c, "parent unique id is all zeros (not recorded)");
	if (!vc_text_ok(r->parent_name, VHD_PARENT_NAME_SIZE, true))
		vc_err(c, "parent unicode name is not valid UTF-16BE");
	else
		found = get_be16(r->parent_name) != 0;
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator_raw *l = &r->locators[i];
		uint32_t code = get_be32(l->code), space, len;
		uint64_t off;
		const char *name = vc_plat(code);
		uint8_t *blob;

		if (code == VHD_PLAT_NONE)
			continue;
		if (!name) {
			vc_err(c, "parent locator %u: unknown platform code "
			       "0x%08x", i, code);
			continue;
		}
		space = get_be32(l->data_space);
		len = get_be32(l->data_length);
		off = get_be64(l->data_offset);
		if (get_be32(l->reserved))
			vc_err(c, "parent locator %u (%s): reserved field is "
			       "%u", i, name, get_be32(l->reserved));
		if (!len) {
			vc_warn(c, "parent locator %u (%s): empty", i, name);
			continue;
		}
		if (!range_within(off, len, limit)) {
			vc_err(c, "parent locator %u (%s): data (%u bytes at "
			       "offset %llu) lies past the footer", i, name,
			       len, (unsigned long long)off);
			continue;
		}
		if ((uint64_t)space * VHD_SECTOR < len && space < len)
			vc_err(c, "parent locator %u (%s): data space %u holds "
			       "%u bytes neither as sectors (spec) nor as "
			       "bytes (Windows)", i, name, space, len);
		rr = vc_add(c, off, len, "parent locator %u (%s)", i, name);
		if (rr < 0)
			return rr;
		if (len > VHD_MAX_LOCATOR_LEN) {
			vc_err(c, "parent locator %u (%s): too long (%u bytes)",
			       i, name, len);
			continue;
		}
		blob = malloc(len);
		if (!blob)
			return -ENOMEM;
		rr = pread_full(c->img->fd, blob, len, off);
		if (rr < 0) {
			free(blob);
			return log_err_ret(rr, "vhd: %s: cannot read parent "
					   "locator %u (%s)", c->img->path, i,
					   strerror(-rr));
		}
		if (code == VHD_PLAT_W2RU || code == VHD_PLAT_W2KU) {
			if (len % 2)
				vc_err(c, "parent locator %u (%s): odd length "
				       "%u for UTF-16", i, name, len);
			else if (!vc_text_ok(blob, len, false))
				vc_err(c, "parent locator %u (%s): not valid "
				       "UTF-16LE", i, name);
			else
				found = found || get_le16(blob) != 0;
		} else if (code == VHD_PLAT_MACX) {
			if (!vc_utf8_ok(blob, len))
				vc_err(c, "parent locator %u (%s): not valid "
				       "UTF-8", i, name);
			else
				found = found || blob[0] != 0;
		} else {
			found = true;
		}
		free(blob);
	}
	if (!found)
		vc_err(c, "differencing disk names no parent (no name, no "
		       "locator)");
	return 0;
}

/* The dynamic header, the BAT and the blocks. */
static int vc_sparse(struct vc *c, const uint8_t *foot, uint64_t limit)
{
	const struct vhd_footer_raw *fr = (const void *)foot;
	uint8_t h[VHD_DYN_HEADER_SIZE];
	const struct vhd_dyn_header_raw *r = (const void *)h;
	uint64_t hoff = get_be64(fr->data_offset), size = get_be64(fr->cur_size);
	uint64_t table, need, bitmap, nalloc = 0;
	uint32_t bs, entries, stored, sum, version;
	uint8_t *bat;
	int rr;

	if (hoff < VHD_FOOTER_SIZE ||
	    !range_within(hoff, VHD_DYN_HEADER_SIZE, limit)) {
		vc_err(c, "dynamic header at offset %llu lies outside the "
		       "file (before the footer at %llu)",
		       (unsigned long long)hoff, (unsigned long long)limit);
		return 0;
	}
	rr = pread_full(c->img->fd, h, sizeof(h), hoff);
	if (rr < 0)
		return log_err_ret(rr, "vhd: %s: cannot read the dynamic "
				   "header (%s)", c->img->path, strerror(-rr));
	if ((rr = vc_add(c, hoff, sizeof(h), "the dynamic header")) < 0)
		return rr;
	if (memcmp(r->cookie, VHD_DYN_COOKIE, 8) != 0) {
		vc_err(c, "dynamic header (offset %llu): no \"cxsparse\" "
		       "cookie", (unsigned long long)hoff);
		return 0;
	}
	stored = get_be32(r->checksum);
	sum = vhd_checksum(h, sizeof(h),
			   offsetof(struct vhd_dyn_header_raw, checksum));
	if (stored != sum)
		vc_err(c, "dynamic header (offset %llu): checksum mismatch "
		       "(stored 0x%08x, computed 0x%08x)",
		       (unsigned long long)hoff, stored, sum);
	if (get_be64(r->data_offset) != UINT64_MAX)
		vc_err(c, "dynamic header: data offset is not all ones "
		       "(0x%llx)", (unsigned long long)get_be64(r->data_offset));
	version = get_be32(r->version);
	if (version >> 16 != 1)
		vc_err(c, "dynamic header: unsupported version (0x%08x)",
		       version);
	bs = get_be32(r->block_size);
	if (bs < VHD_SECTOR || !is_pow2(bs)) {
		vc_err(c, "dynamic header: block size is not a power of two "
		       ">= 512 (%u)", bs);
		return 0;
	}
	entries = get_be32(r->max_table_entries);
	need = size / bs + !!(size % bs);
	if (entries < need)
		vc_err(c, "BAT has %u entries, the virtual size %llu needs "
		       "%llu", entries, (unsigned long long)size,
		       (unsigned long long)need);
	table = get_be64(r->table_offset);
	if (!range_within(table, (uint64_t)entries * 4, limit)) {
		vc_err(c, "BAT (%u entries at offset %llu) lies past the "
		       "footer", entries, (unsigned long long)table);
		return 0;
	}
	if (entries > VHD_MAX_BAT_ENTRIES)
		return log_err_ret(-EFBIG, "vhd: %s: BAT too large to check "
				   "(%u entries)", c->img->path, entries);
	if (entries && (rr = vc_add(c, table, (uint64_t)entries * 4,
				    "the BAT")) < 0)
		return rr;
	bat = malloc((size_t)entries * 4 + 1);
	if (!bat)
		return -ENOMEM;
	rr = pread_full(c->img->fd, bat, (size_t)entries * 4, table);
	if (rr < 0) {
		free(bat);
		return log_err_ret(rr, "vhd: %s: cannot read the BAT (%s)",
				   c->img->path, strerror(-rr));
	}
	bitmap = ((bs / VHD_SECTOR + 7) / 8 + VHD_SECTOR - 1) &
		 ~(uint64_t)(VHD_SECTOR - 1);
	for (uint32_t i = 0; i < entries && rr == 0; i++) {
		uint32_t e = get_be32(bat + (size_t)i * 4);
		uint64_t start = (uint64_t)e * VHD_SECTOR;

		if (e == VHD_BAT_UNUSED)
			continue;
		nalloc++;
		if (!range_within(start, bitmap + bs, limit)) {
			vc_err(c, "block %u (BAT entry, sector %u): bitmap and "
			       "data lie past the footer (%llu > %llu)", i, e,
			       (unsigned long long)(start + bitmap + bs),
			       (unsigned long long)limit);
			continue;
		}
		if (i >= need)
			vc_warn(c, "block %u (BAT entry) is past the virtual "
				"size but allocated", i);
		rr = vc_add(c, start, bitmap + bs, "block %u", i);
	}
	free(bat);
	if (rr < 0)
		return rr;
	c->res->allocated = nalloc * bs;
	if (get_be32(fr->disk_type) == VHD_TYPE_DIFF)
		return vc_parent(c, h, limit);
	return 0;
}

int vhd_check(struct img *img, bool repair, struct img_check *res)
{
	struct vc c = { .img = img, .res = res };
	uint8_t end[VHD_FOOTER_SIZE], copy[VHD_FOOTER_SIZE];
	const uint8_t *foot;
	uint64_t fsize = img->file_size, limit, end_off;
	bool end_ok, copy_ok, old = false, has_end, restore_end = false;
	uint32_t type;
	int r;

	if (fsize < VHD_FOOTER_SIZE) {
		vc_err(&c, "file too small for a footer (%llu bytes)",
		       (unsigned long long)fsize);
		return 0;
	}
	r = pread_full(img->fd, end, sizeof(end), fsize - sizeof(end));
	if (r == 0)
		r = pread_full(img->fd, copy, sizeof(copy), 0);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot read the footer (%s)",
				   img->path, strerror(-r));
	end_off = fsize - VHD_FOOTER_SIZE;
	has_end = !memcmp(end, VHD_COOKIE, 8);
	if (!has_end && !memcmp(end + 1, VHD_COOKIE, 8)) {
		/* Virtual PC before 2004: a 511-byte footer */
		memmove(end, end + 1, VHD_FOOTER_OLD_SIZE);
		end[VHD_FOOTER_OLD_SIZE] = 0;
		end_off = fsize - VHD_FOOTER_OLD_SIZE;
		old = has_end = true;
	}
	end_ok = has_end && vc_footer(&c, end, "footer at the end", false);
	copy_ok = vc_footer(&c, copy, "footer copy at offset 0", false) &&
		  get_be32(copy + offsetof(struct vhd_footer_raw,
					   disk_type)) != VHD_TYPE_FIXED;
	if (has_end)
		vc_footer(&c, end, "footer at the end", true);
	else
		vc_err(&c, "no footer at the end of the file (no \"conectix\" "
		       "cookie at offset %llu)", (unsigned long long)end_off);

	if (!end_ok && copy_ok) {
		/* a dynamic disk: the copy at 0 describes it */
		foot = copy;
		limit = has_end ? end_off : fsize;
		restore_end = repair;	/* once the layout is known */
	} else if (!end_ok) {
		if (repair && has_end && !old && vc_only_checksum(&c, end)) {
			put_be32(end + offsetof(struct vhd_footer_raw,
						checksum),
				 vhd_checksum(end, sizeof(end),
					      offsetof(struct vhd_footer_raw,
						       checksum)));
			return vc_write(&c, end, sizeof(end), end_off,
					"the footer (checksum recomputed)");
		}
		return 0;	/* nothing describes the disk */
	} else {
		foot = end;
		limit = end_off;
	}

	type = get_be32(foot + offsetof(struct vhd_footer_raw, disk_type));
	if (type == VHD_TYPE_FIXED) {
		uint64_t size = get_be64(foot + offsetof(struct vhd_footer_raw,
							 cur_size));

		if (get_be64(foot + offsetof(struct vhd_footer_raw,
					     data_offset)) != UINT64_MAX)
			vc_err(&c, "fixed disk: data offset is not all ones");
		if (limit < size)
			vc_err(&c, "fixed disk: %llu bytes of data for a "
			       "%llu-byte disk", (unsigned long long)limit,
			       (unsigned long long)size);
		res->allocated = MIN(limit, size);
		return 0;
	}

	if (end_ok) {
		if (!vc_footer(&c, copy, "footer copy at offset 0", true)) {
			/* reported */
		} else if (memcmp(copy, end, sizeof(end)) != 0) {
			vc_err(&c, "the footer copy at offset 0 differs from "
			       "the footer at the end");
		} else {
			copy_ok = true;
		}
		if (memcmp(copy, end, sizeof(end)) != 0 && repair &&
		    get_be64(end + offsetof(struct vhd_footer_raw,
					    data_offset)) >= VHD_FOOTER_SIZE) {
			r = vc_write(&c, end, sizeof(end), 0,
				     "the footer copy (from the footer at the "
				     "end)");
			if (r < 0)
				return r;
		}
	}
	if (old)
		vc_err(&c, "511-byte footer on a dynamic disk");
	if (fsize % VHD_SECTOR)
		vc_err(&c, "file size %llu is not a multiple of 512",
		       (unsigned long long)fsize);
	r = vc_add(&c, 0, VHD_FOOTER_SIZE, "the footer copy");
	if (r == 0)
		r = vc_sparse(&c, foot, limit);
	if (r == 0)
		vc_overlaps(&c);
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
		r = vc_write(&c, copy, sizeof(copy), at,
			     "the footer (from the copy at offset 0)");
	}
	free(c.rg);
	return r;
}
