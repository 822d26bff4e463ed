// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx-check.c: the structural check of a VHDX file (layerimg check).
 *
 * The checks of tests/tools/vhdxcheck.py, in C, from MS-VHDX v1.0: the file
 * identifier; both headers (signature, CRC-32C, sequence numbers, equal
 * numbers only on identical headers, version 1, log version 0); the log
 * (1 MiB aligned, inside the file; a non-empty log is reported and its
 * entries validated by replaying it in memory, as the driver does); both
 * region tables (signature, CRC-32C, identical, entries 1 MiB aligned,
 * inside the file, clear of the header area, the log and each other); the
 * metadata table (items inside the region, not overlapping, the required
 * ones present and sane); the parent locator of a differencing file; the
 * BAT (large enough; every state valid for its kind of entry and the file
 * type; PARTIALLY_PRESENT only in a differencing file under a present
 * sector bitmap; every present block and bitmap 1 MiB aligned, inside the
 * file and overlapping nothing).
 *
 * The pure decoders of vhdx.c judge the fields; this file adds what a
 * check needs beyond open (both copies, every entry, overlaps).  Reads go
 * through vhdx_file_read, so a dirty log is seen replayed.
 * --repair changes nothing in a VHDX file: each header, region table and
 * BAT entry is either current or ambiguous, and Hyper-V and the log replay
 * own their updates; only a report is safe.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

struct xc_span {
	uint64_t off, len;
	bool block;		/* a payload block or sector bitmap */
	char what[48];
};

struct xc {
	struct img *img;
	struct img_check *res;
	struct vhdx *s;		/* owned: decoded state (no BAT arrays) */
	struct xc_span *sp;	/* owned */
	size_t nsp, capsp;
	uint64_t reserved_bits;	/* BAT entries with reserved bits set */
};

#define xc_err(c, ...) \
	img_check_report((c)->res, true, "vhdx", (c)->img->path, __VA_ARGS__)
#define xc_warn(c, ...) \
	img_check_report((c)->res, false, "vhdx", (c)->img->path, __VA_ARGS__)

static int xc_add(struct xc *c, uint64_t off, uint64_t len, bool block,
		  const char *fmt, ...) __printf(5, 6);
static int xc_add(struct xc *c, uint64_t off, uint64_t len, bool block,
		  const char *fmt, ...)
{
	va_list ap;

	if (c->nsp == c->capsp) {
		size_t ncap = c->capsp ? 2 * c->capsp : 64;
		struct xc_span *n = reallocarray(c->sp, ncap, sizeof(*n));

		if (!n)
			return -ENOMEM;
		c->sp = n;
		c->capsp = ncap;
	}
	c->sp[c->nsp].off = off;
	c->sp[c->nsp].len = len;
	c->sp[c->nsp].block = block;
	va_start(ap, fmt);
	vsnprintf(c->sp[c->nsp].what, sizeof(c->sp[0].what), fmt, ap);
	va_end(ap);
	c->nsp++;
	return 0;
}

static int xc_span_cmp(const void *a, const void *b)
{
	const struct xc_span *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* Every block inside the file; nothing overlaps anything else. */
static void xc_finish(struct xc *c)
{
	uint64_t end = 0;
	size_t endi = 0;

	qsort(c->sp, c->nsp, sizeof(*c->sp), xc_span_cmp);
	for (size_t i = 0; i < c->nsp; i++) {
		const struct xc_span *p = &c->sp[i];

		if (p->block && !range_within(p->off, p->len,
					      c->s->eff_size))
			xc_err(c, "%s (%llu bytes at offset %llu) lies past "
			       "the end of the file (%llu)", p->what,
			       (unsigned long long)p->len,
			       (unsigned long long)p->off,
			       (unsigned long long)c->s->eff_size);
		if (i && p->off < end)
			xc_err(c, "%s (offset %llu) overlaps %s (offset %llu, "
			       "%llu bytes)", p->what,
			       (unsigned long long)p->off, c->sp[endi].what,
			       (unsigned long long)c->sp[endi].off,
			       (unsigned long long)c->sp[endi].len);
		if (p->off + p->len > end) {
			end = p->off + p->len;
			endi = i;
		}
	}
	if (c->reserved_bits)
		xc_warn(c, "%llu BAT entries have reserved bits set",
			(unsigned long long)c->reserved_bits);
}

/* A whole region placed in the file: 1 MiB aligned, inside it. */
static bool xc_placed(struct xc *c, uint64_t off, uint64_t len,
		      const char *what)
{
	bool ok = true;

	if (off % VHDX_ALIGN || len % VHDX_ALIGN) {
		xc_err(c, "%s (%llu bytes at offset %llu) is not 1 MiB "
		       "aligned", what, (unsigned long long)len,
		       (unsigned long long)off);
		ok = false;
	}
	if (off < VHDX_HEADER_SECTION) {
		xc_err(c, "%s (offset %llu) lies in the 1 MiB header area",
		       what, (unsigned long long)off);
		ok = false;
	}
	if (!range_within(off, len, c->s->eff_size)) {
		xc_err(c, "%s (%llu bytes at offset %llu) lies past the end "
		       "of the file (%llu)", what, (unsigned long long)len,
		       (unsigned long long)off,
		       (unsigned long long)c->s->eff_size);
		ok = false;
	}
	return ok;
}

static bool xc_crc_ok(const uint8_t *buf, size_t len, uint32_t *stored,
		      uint32_t *computed)
{
	static const uint8_t zero[4];
	uint32_t crc;

	crc = crc32c(0, buf, 4);
	crc = crc32c(crc, zero, 4);
	crc = crc32c(crc, buf + 8, len - 8);
	*stored = get_le32(buf + 4);
	*computed = crc;
	return crc == *stored;
}

/* Both headers; the current one into c->s->hdr.  false: none valid. */
static bool xc_headers(struct xc *c, const uint8_t *h1, const uint8_t *h2)
{
	const uint8_t *raw[2] = { h1, h2 };
	struct vhdx_header h[2];
	bool ok[2];
	int cur;

	for (int i = 0; i < 2; i++) {
		uint32_t st, cm;
		uint64_t at = i ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF;

		ok[i] = false;
		if (memcmp(raw[i], "head", 4) != 0) {
			xc_err(c, "header %d (offset %llu): no \"head\" "
			       "signature", i + 1, (unsigned long long)at);
			continue;
		}
		if (!xc_crc_ok(raw[i], VHDX_HEADER_SIZE, &st, &cm)) {
			xc_err(c, "header %d (offset %llu): CRC-32C mismatch "
			       "(stored 0x%08x, computed 0x%08x)", i + 1,
			       (unsigned long long)at, st, cm);
			continue;
		}
		ok[i] = vhdx_header_decode(raw[i], &h[i]) == 0;
	}
	if (!ok[0] && !ok[1]) {
		xc_err(c, "no valid header");
		return false;
	}
	if (ok[0] && ok[1] && h[0].sequence == h[1].sequence &&
	    memcmp(h1, h2, VHDX_HEADER_SIZE) != 0)
		xc_err(c, "both headers have sequence number %llu but differ",
		       (unsigned long long)h[0].sequence);
	cur = !ok[0] ? 1 : !ok[1] ? 0 : h[1].sequence > h[0].sequence;
	c->s->hdr = h[cur];
	if (ok[!cur] && h[!cur].version != 1)
		xc_err(c, "header %d: version %u, not 1", !cur + 1,
		       h[!cur].version);
	if (vhdx_header_check(c->img->path, &c->s->hdr) < 0) {
		c->res->errors++;	/* logged */
		return false;
	}
	return true;
}

/* The log: placement; a dirty one reported and replayed in memory. */
static int xc_log(struct xc *c)
{
	struct vhdx *s = c->s;
	int r;

	if (!s->hdr.log_length)
		return 0;
	if (!xc_placed(c, s->hdr.log_offset, s->hdr.log_length, "the log"))
		return 0;
	r = xc_add(c, s->hdr.log_offset, s->hdr.log_length, false, "the log");
	if (r < 0 || guid_is_zero(&s->hdr.log_guid))
		return r;
	r = vhdx_log_replay(s);
	if (r == -ENOMEM)
		return r;
	if (r < 0) {
		xc_err(c, "the log is not empty and cannot be replayed (%s)",
		       strerror(-r));
		return 0;
	}
	xc_warn(c, "the log is not empty (%u entries to replay): the file "
		"was not closed cleanly; checked as replayed", s->log.entries);
	return 0;
}

/* Both region tables; the decoded regions into c->s->rg. */
static bool xc_regions(struct xc *c, const uint8_t *t1, const uint8_t *t2)
{
	const uint8_t *raw[2] = { t1, t2 }, *use = NULL;
	bool ok[2];
	uint32_t count;

	for (int i = 0; i < 2; i++) {
		uint64_t at = i ? VHDX_REGION2_OFF : VHDX_REGION1_OFF;
		uint32_t st, cm;

		ok[i] = false;
		if (memcmp(raw[i], "regi", 4) != 0)
			xc_err(c, "region table %d (offset %llu): no \"regi\" "
			       "signature", i + 1, (unsigned long long)at);
		else if (!xc_crc_ok(raw[i], VHDX_REGION_SIZE, &st, &cm))
			xc_err(c, "region table %d (offset %llu): CRC-32C "
			       "mismatch (stored 0x%08x, computed 0x%08x)",
			       i + 1, (unsigned long long)at, st, cm);
		else
			ok[i] = true;
	}
	if (ok[0] && ok[1] && memcmp(t1, t2, VHDX_REGION_SIZE) != 0)
		xc_err(c, "the two region tables differ");
	use = ok[0] ? t1 : ok[1] ? t2 : NULL;
	if (!use) {
		xc_err(c, "no valid region table");
		return false;
	}
	if (vhdx_region_table_decode(c->img->path, use, false,
				     &c->s->rg) < 0) {
		c->res->errors++;	/* logged */
		return false;
	}
	count = get_le32(use + 8);	/* <= 2047: checked by the decoder */
	for (uint32_t i = 0; i < count; i++) {
		const struct vhdx_region_entry_raw *e = (const void *)
			(use + sizeof(struct vhdx_region_hdr_raw) +
			 (size_t)i * sizeof(*e));
		uint64_t off = get_le64(e->file_offset);
		uint32_t len = get_le32(e->length);
		struct guid g;
		char what[64], gs[GUID_STR_LEN + 1];

		guid_from_le(&g, e->guid);
		if (guid_equal(&g, &vhdx_region_bat))
			snprintf(what, sizeof(what), "the BAT region");
		else if (guid_equal(&g, &vhdx_region_meta))
			snprintf(what, sizeof(what), "the metadata region");
		else {
			guid_to_str(&g, gs);
			snprintf(what, sizeof(what), "region %s", gs);
		}
		if (xc_placed(c, off, len, what) &&
		    xc_add(c, off, len, false, "%s", what) < 0)
			return false;
	}
	return true;
}

/* Metadata items: inside the region (checked by the decoder), apart. */
static void xc_meta_overlaps(struct xc *c, const uint8_t *table)
{
	unsigned n = get_le16(table + 10);
	struct { uint32_t off, len; unsigned i; } it[VHDX_META_MAX], t;
	unsigned k = 0;

	for (unsigned i = 0; i < n && i < VHDX_META_MAX; i++) {
		const struct vhdx_meta_entry_raw *e = (const void *)
			(table + sizeof(struct vhdx_meta_hdr_raw) +
			 (size_t)i * sizeof(*e));

		if (!get_le32(e->length))
			continue;
		it[k].off = get_le32(e->offset);
		it[k].len = get_le32(e->length);
		it[k++].i = i;
	}
	for (unsigned i = 1; i < k; i++)	/* insertion sort: few items */
		for (unsigned j = i; j && it[j - 1].off > it[j].off; j--) {
			t = it[j];
			it[j] = it[j - 1];
			it[j - 1] = t;
		}
	for (unsigned i = 1; i < k; i++)
		if ((uint64_t)it[i - 1].off + it[i - 1].len > it[i].off)
			xc_err(c, "metadata item %u (offset %u) overlaps item "
			       "%u (offset %u, %u bytes)", it[i].i, it[i].off,
			       it[i - 1].i, it[i - 1].off, it[i - 1].len);
}

static int xc_item(struct xc *c, const struct vhdx_meta_item *it,
		   uint8_t **out)
{
	uint8_t *buf = malloc(it->len ? it->len : 1);
	int r;

	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(c->s, buf, it->len, c->s->rg.meta.off + it->off);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	return 0;
}

/* The metadata region: table, items, parameters, parent locator. */
static int xc_metadata(struct xc *c, bool *ok)
{
	struct vhdx *s = c->s;
	uint8_t *table, *fp = NULL, *ds = NULL, *ls = NULL, *ps = NULL;
	uint8_t *loc = NULL;
	struct vhdx_meta_table mt;
	int r;

	*ok = false;
	if (s->rg.meta.len < VHDX_META_TABLE_SIZE ||
	    !range_within(s->rg.meta.off, s->rg.meta.len, s->eff_size)) {
		xc_err(c, "metadata region (%llu bytes at offset %llu) cannot "
		       "hold its table inside the file",
		       (unsigned long long)s->rg.meta.len,
		       (unsigned long long)s->rg.meta.off);
		return 0;
	}
	table = malloc(VHDX_META_TABLE_SIZE);
	if (!table)
		return -ENOMEM;
	r = vhdx_file_read(s, table, VHDX_META_TABLE_SIZE, s->rg.meta.off);
	if (r < 0) {
		free(table);
		return r;
	}
	if (vhdx_meta_table_decode(c->img->path, table, s->rg.meta.len,
				   &mt) < 0) {
		c->res->errors++;	/* logged */
		free(table);
		return 0;
	}
	xc_meta_overlaps(c, table);
	free(table);
	r = xc_item(c, &mt.file_params, &fp);
	if (r == 0)
		r = xc_item(c, &mt.disk_size, &ds);
	if (r == 0)
		r = xc_item(c, &mt.logical_sector, &ls);
	if (r == 0)
		r = xc_item(c, &mt.physical_sector, &ps);
	if (r == 0) {
		if (vhdx_params_decode(c->img->path, fp, ds, ls, ps,
				       &s->p) < 0)
			c->res->errors++;	/* logged */
		else
			*ok = true;
	}
	if (r == 0 && *ok && s->p.has_parent != mt.parent_locator.present)
		xc_err(c, "HasParent is %d but the parent locator is %s",
		       s->p.has_parent,
		       mt.parent_locator.present ? "present" : "missing");
	if (r == 0 && *ok && s->p.has_parent && mt.parent_locator.present) {
		r = xc_item(c, &mt.parent_locator, &loc);
		if (r == 0 && vhdx_locator_decode(c->img->path, loc,
						  mt.parent_locator.len,
						  &s->loc) < 0)
			c->res->errors++;	/* logged */
	}
	free(fp);
	free(ds);
	free(ls);
	free(ps);
	free(loc);
	return r;
}

/* Every BAT entry: states, placement, bitmaps under partial blocks. */
static int xc_bat(struct xc *c)
{
	struct vhdx *s = c->s;
	uint64_t cr, total, bs = s->p.block_size;
	uint8_t *bat, *sb_present;
	int r;

	if (vhdx_bat_geometry(s) < 0) {
		c->res->errors++;	/* logged */
		return 0;
	}
	if (!range_within(s->rg.bat.off, s->rg.bat.len, s->eff_size))
		return 0;	/* reported with the regions */
	cr = s->chunk_ratio;
	total = s->p.has_parent ? s->nchunks * (cr + 1) :
				  s->nblocks + (s->nblocks - 1) / cr;
	bat = malloc((size_t)total * 8 + 1);
	sb_present = calloc(s->nchunks + 1, 1);
	if (!bat || !sb_present) {
		free(bat);
		free(sb_present);
		return -ENOMEM;
	}
	r = vhdx_file_read(s, bat, (size_t)total * 8, s->rg.bat.off);
	/* sector bitmap entries first: partial blocks look them up */
	for (uint64_t i = cr; r == 0 && i < total; i += cr + 1) {
		uint64_t e = get_le64(bat + i * 8), chunk = i / (cr + 1);
		unsigned st = VHDX_BAT_STATE(e);

		if (e & 0xffff8ull)
			c->reserved_bits++;
		if (st != VHDX_SB_NOT_PRESENT && st != VHDX_SB_PRESENT) {
			xc_err(c, "BAT entry %llu (sector bitmap of chunk "
			       "%llu): invalid state %u",
			       (unsigned long long)i, (unsigned long long)chunk,
			       st);
			continue;
		}
		if (st != VHDX_SB_PRESENT)
			continue;
		if (!s->p.has_parent)
			xc_warn(c, "BAT entry %llu: SB_PRESENT in a file "
				"without a parent", (unsigned long long)i);
		if (VHDX_BAT_OFFSET(e) == 0) {
			xc_err(c, "BAT entry %llu (sector bitmap of chunk "
			       "%llu): present at offset 0",
			       (unsigned long long)i,
			       (unsigned long long)chunk);
			continue;
		}
		if (chunk < s->nchunks)
			sb_present[chunk] = 1;
		r = xc_add(c, VHDX_BAT_OFFSET(e), VHDX_SB_BLOCK_SIZE, true,
			   "sector bitmap of chunk %llu",
			   (unsigned long long)chunk);
	}
	for (uint64_t i = 0; r == 0 && i < total; i++) {
		uint64_t e = get_le64(bat + i * 8), blk = i - i / (cr + 1);
		unsigned st = VHDX_BAT_STATE(e);

		if (i % (cr + 1) == cr)
			continue;
		if (e & 0xffff8ull)
			c->reserved_bits++;
		switch (st) {
		case VHDX_PAYLOAD_NOT_PRESENT:
		case VHDX_PAYLOAD_UNDEFINED:
		case VHDX_PAYLOAD_ZERO:
		case VHDX_PAYLOAD_UNMAPPED:
			continue;
		case VHDX_PAYLOAD_UNMAPPED_V095:
			xc_warn(c, "BAT entry %llu (block %llu): state 5, the "
				"0.95 draft's UNMAPPED",
				(unsigned long long)i, (unsigned long long)blk);
			continue;
		case VHDX_PAYLOAD_FULLY_PRESENT:
		case VHDX_PAYLOAD_PARTIALLY_PRESENT:
			break;
		default:
			xc_err(c, "BAT entry %llu (block %llu): invalid state "
			       "%u", (unsigned long long)i,
			       (unsigned long long)blk, st);
			continue;
		}
		if (blk >= s->nblocks)
			xc_warn(c, "BAT entry %llu (block %llu): present past "
				"the virtual size", (unsigned long long)i,
				(unsigned long long)blk);
		if (st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {
			if (!s->p.has_parent)
				xc_err(c, "BAT entry %llu (block %llu): "
				       "PARTIALLY_PRESENT in a file without a "
				       "parent", (unsigned long long)i,
				       (unsigned long long)blk);
			else if (!sb_present[blk / cr])
				xc_err(c, "BAT entry %llu (block %llu): "
				       "PARTIALLY_PRESENT but the sector bitmap "
				       "of chunk %llu is not present",
				       (unsigned long long)i,
				       (unsigned long long)blk,
				       (unsigned long long)(blk / cr));
		}
		if (VHDX_BAT_OFFSET(e) == 0) {
			xc_err(c, "BAT entry %llu (block %llu): present at "
			       "offset 0", (unsigned long long)i,
			       (unsigned long long)blk);
			continue;
		}
		c->res->allocated += bs;
		r = xc_add(c, VHDX_BAT_OFFSET(e), bs, true, "block %llu",
			   (unsigned long long)blk);
	}
	free(bat);
	free(sb_present);
	return r;
}

int vhdx_check(struct img *img, bool repair, struct img_check *res)
{
	struct xc c = { .img = img, .res = res };
	uint8_t *buf = NULL;
	bool meta_ok;
	int r = 0;

	c.s = calloc(1, sizeof(*c.s));
	if (!c.s)
		return -ENOMEM;
	c.s->path = img->path;
	c.s->fd = img->fd;
	c.s->file_size = img->file_size;
	c.s->eff_size = img->file_size;
	buf = malloc(2 * VHDX_REGION_SIZE);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	if (img->file_size < 8 ||
	    pread_full(img->fd, buf, 8, VHDX_FILE_ID_OFF) < 0 ||
	    memcmp(buf, "vhdxfile", 8) != 0) {
		xc_err(&c, "no \"vhdxfile\" file identifier at offset 0");
		goto out;
	}
	if (img->file_size < VHDX_HEADER_SECTION) {
		xc_err(&c, "file of %llu bytes is shorter than the 1 MiB "
		       "header area", (unsigned long long)img->file_size);
		goto out;
	}
	r = xc_add(&c, 0, VHDX_HEADER_SECTION, false, "the header area");
	if (r == 0)
		r = pread_full(img->fd, buf, VHDX_HEADER_SIZE,
			       VHDX_HEADER1_OFF);
	if (r == 0)
		r = pread_full(img->fd, buf + VHDX_HEADER_SIZE,
			       VHDX_HEADER_SIZE, VHDX_HEADER2_OFF);
	if (r < 0)
		goto out;
	if (!xc_headers(&c, buf, buf + VHDX_HEADER_SIZE))
		goto finish;
	r = xc_log(&c);
	if (r < 0)
		goto out;
	r = vhdx_file_read(c.s, buf, VHDX_REGION_SIZE, VHDX_REGION1_OFF);
	if (r == 0)
		r = vhdx_file_read(c.s, buf + VHDX_REGION_SIZE,
				   VHDX_REGION_SIZE, VHDX_REGION2_OFF);
	if (r < 0)
		goto out;
	if (!xc_regions(&c, buf, buf + VHDX_REGION_SIZE))
		goto finish;
	r = xc_metadata(&c, &meta_ok);
	if (r < 0)
		goto out;
	if (meta_ok)
		r = xc_bat(&c);
	if (r < 0)
		goto out;
finish:
	xc_finish(&c);
	if (repair && (res->errors || res->warnings))
		log_info("vhdx: %s: --repair: nothing is repaired in VHDX "
			 "files (no repair is safe without Hyper-V)",
			 img->path);
out:
	if (r < 0 && r != -ENOMEM)
		log_err("vhdx: %s: cannot check (%s)", img->path,
			strerror(-r));
	free(buf);
	free(c.sp);
	vhdx_overlay_free(&c.s->log);
	vhdx_locator_clear(&c.s->loc);
	free(c.s);
	return r;
}
