// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/check.c: the structural check of a VHDX file (layerimg check).
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
 * The open path (open.c) reads the file and the codec (codec.c) judges
 * the fields, silently where open would stop (a diagnostic out-parameter
 * says what each header and region table copy holds); this file adds
 * only the rules of a check: both copies, every table entry, overlaps,
 * every BAT entry.  Reads go through vhdx_file_read, so a dirty log is
 * seen replayed.
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

struct check_span {
	uint64_t off, len;
	bool block;		/* a payload block or sector bitmap */
	char what[48];
};

struct checker {
	struct img *img;
	struct img_check *res;
	struct vhdx *s;		/* owned: decoded state (no BAT arrays) */
	struct check_span *sp;	/* owned */
	size_t nsp, capsp;
	uint64_t reserved_bits;	/* BAT entries with reserved bits set */
	int fatal;		/* -errno that stops the check (I/O, memory) */
};

#define check_err(c, ...) \
	img_check_report((c)->res, true, "vhdx", (c)->img->path, __VA_ARGS__)
#define check_warn(c, ...) \
	img_check_report((c)->res, false, "vhdx", (c)->img->path, __VA_ARGS__)

static int check_add(struct checker *c, uint64_t off, uint64_t len, bool block,
		     const char *fmt, ...) __printf(5, 6);
static int check_add(struct checker *c, uint64_t off, uint64_t len, bool block,
		     const char *fmt, ...)
{
	va_list ap;

	if (c->nsp == c->capsp) {
		size_t ncap = c->capsp ? 2 * c->capsp : 64;
		struct check_span *n = reallocarray(c->sp, ncap, sizeof(*n));

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

static int check_span_cmp(const void *a, const void *b)
{
	const struct check_span *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* Every block inside the file; nothing overlaps anything else. */
static void check_finish(struct checker *c)
{
	uint64_t end = 0;
	size_t endi = 0;

	qsort(c->sp, c->nsp, sizeof(*c->sp), check_span_cmp);
	for (size_t i = 0; i < c->nsp; i++) {
		const struct check_span *p = &c->sp[i];

		if (p->block && !range_within(p->off, p->len,
					      c->s->eff_size))
			check_err(c, "%s (%llu bytes at offset %llu) lies past "
				  "the end of the file (%llu)", p->what,
				  (unsigned long long)p->len,
				  (unsigned long long)p->off,
				  (unsigned long long)c->s->eff_size);
		if (i && p->off < end)
			check_err(c, "%s (offset %llu) overlaps %s (offset %llu, "
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
		check_warn(c, "%llu BAT entries have reserved bits set",
			   (unsigned long long)c->reserved_bits);
}

/* A whole region placed in the file: 1 MiB aligned, inside it. */
static bool check_placed(struct checker *c, uint64_t off, uint64_t len,
			 const char *what)
{
	bool ok = true;

	if (off % VHDX_ALIGN || len % VHDX_ALIGN) {
		check_err(c, "%s (%llu bytes at offset %llu) is not 1 MiB "
			  "aligned", what, (unsigned long long)len,
			  (unsigned long long)off);
		ok = false;
	}
	if (off < VHDX_HEADER_SECTION) {
		check_err(c, "%s (offset %llu) lies in the 1 MiB header area",
			  what, (unsigned long long)off);
		ok = false;
	}
	if (!range_within(off, len, c->s->eff_size)) {
		check_err(c, "%s (%llu bytes at offset %llu) lies past the end "
			  "of the file (%llu)", what, (unsigned long long)len,
			  (unsigned long long)off,
			  (unsigned long long)c->s->eff_size);
		ok = false;
	}
	return ok;
}

/* What the codec found wrong with each of two copies of a structure. */
static void check_copies(struct checker *c, const char *what,
			 const char *sig, uint64_t at1, uint64_t at2,
			 const int *r, const uint32_t *stored,
			 const uint32_t *computed)
{
	for (int i = 0; i < 2; i++) {
		uint64_t at = i ? at2 : at1;

		if (r[i] == -EINVAL)
			check_err(c, "%s %d (offset %llu): no \"%s\" signature",
				  what, i + 1, (unsigned long long)at, sig);
		else if (r[i] == -EBADMSG)
			check_err(c, "%s %d (offset %llu): CRC-32C mismatch "
				  "(stored 0x%08x, computed 0x%08x)", what, i + 1,
				  (unsigned long long)at, stored[i], computed[i]);
	}
}

/* Both headers; the current one into c->s->hdr.  false: none valid. */
static bool check_headers(struct checker *c)
{
	struct vhdx_header_choice hc;
	int cur, r;

	memset(&hc, 0, sizeof(hc));
	r = vhdx_headers_read(c->s, &hc);
	if (r < 0 && r != -EUCLEAN) {
		c->fatal = r;
		return false;
	}
	check_copies(c, "header", "head", VHDX_HEADER1_OFF, VHDX_HEADER2_OFF,
		      hc.r, hc.stored, hc.computed);
	if (hc.cur < 0) {
		check_err(c, "no valid header");
		return false;
	}
	if (hc.tie)
		check_err(c, "both headers have sequence number %llu but differ",
			  (unsigned long long)hc.h[0].sequence);
	cur = hc.cur;
	if (hc.r[!cur] == 0 && hc.h[!cur].version != 1)
		check_err(c, "header %d: version %u, not 1", !cur + 1,
			  hc.h[!cur].version);
	if (vhdx_header_check(c->img->path, &c->s->hdr) < 0) {
		c->res->errors++;	/* logged */
		return false;
	}
	return true;
}

/* The log: placement; a dirty one reported and replayed in memory. */
static int check_log(struct checker *c)
{
	struct vhdx *s = c->s;
	int r;

	if (!s->hdr.log_length)
		return 0;
	if (!check_placed(c, s->hdr.log_offset, s->hdr.log_length, "the log"))
		return 0;
	r = check_add(c, s->hdr.log_offset, s->hdr.log_length, false, "the log");
	if (r < 0 || guid_is_zero(&s->hdr.log_guid))
		return r;
	r = vhdx_log_replay(s);
	if (r == -ENOMEM)
		return r;
	if (r < 0) {
		check_err(c, "the log is not empty and cannot be replayed (%s)",
			  strerror(-r));
		return 0;
	}
	check_warn(c, "the log is not empty (%u entries to replay): the file "
		   "was not closed cleanly; checked as replayed", s->log.entries);
	return 0;
}

/* Both region tables; the decoded regions into c->s->rg. */
static bool check_regions(struct checker *c)
{
	const struct vhdx_regions *rg = &c->s->rg;
	struct vhdx_region_choice rc;
	int r;

	memset(&rc, 0, sizeof(rc));
	r = vhdx_regions_read(c->s, &rc);
	if (r < 0 && r != -EUCLEAN && r != -ENOTSUP) {
		c->fatal = r;
		return false;
	}
	check_copies(c, "region table", "regi", VHDX_REGION1_OFF,
		      VHDX_REGION2_OFF, rc.r, rc.stored, rc.computed);
	if (rc.differ)
		check_err(c, "the two region tables differ");
	if (rc.use < 0) {
		check_err(c, "no valid region table");
		return false;
	}
	if (r < 0) {
		c->res->errors++;	/* logged by the decoder */
		return false;
	}
	for (uint32_t i = 0; i < rg->count; i++) {
		const struct vhdx_region_entry *e = &rg->ent[i];
		char what[64], gs[GUID_STR_LEN + 1];

		if (guid_equal(&e->guid, &vhdx_region_bat))
			snprintf(what, sizeof(what), "the BAT region");
		else if (guid_equal(&e->guid, &vhdx_region_meta))
			snprintf(what, sizeof(what), "the metadata region");
		else {
			guid_to_str(&e->guid, gs);
			snprintf(what, sizeof(what), "region %s", gs);
		}
		if (check_placed(c, e->off, e->len, what) &&
		    check_add(c, e->off, e->len, false, "%s", what) < 0) {
			c->fatal = -ENOMEM;
			return false;
		}
	}
	return true;
}

/* Metadata items: inside the region (checked by the decoder), apart. */
static void check_meta_overlaps(struct checker *c,
				const struct vhdx_meta_table *mt)
{
	struct { uint32_t off, len; unsigned i; } *it, t;
	unsigned k = 0;

	it = malloc(sizeof(*it) * (mt->count + 1));
	if (!it) {
		c->fatal = -ENOMEM;
		return;
	}
	for (unsigned i = 0; i < mt->count; i++) {
		if (!mt->ent[i].len)
			continue;
		it[k].off = mt->ent[i].off;
		it[k].len = mt->ent[i].len;
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
			check_err(c, "metadata item %u (offset %u) overlaps item "
				  "%u (offset %u, %u bytes)", it[i].i, it[i].off,
				  it[i - 1].i, it[i - 1].off, it[i - 1].len);
	free(it);
}

/* The metadata region: table, items, parameters, parent locator. */
static int check_metadata(struct checker *c, bool *ok)
{
	struct vhdx *s = c->s;
	struct vhdx_meta_table *mt;
	int r;

	*ok = false;
	if (s->rg.meta.len < VHDX_META_TABLE_SIZE ||
	    !range_within(s->rg.meta.off, s->rg.meta.len, s->eff_size)) {
		check_err(c, "metadata region (%llu bytes at offset %llu) cannot "
			  "hold its table inside the file",
			  (unsigned long long)s->rg.meta.len,
			  (unsigned long long)s->rg.meta.off);
		return 0;
	}
	mt = malloc(sizeof(*mt));
	if (!mt)
		return -ENOMEM;
	r = vhdx_meta_read(s, mt);
	if (r == -EUCLEAN || r == -ENOTSUP) {
		c->res->errors++;	/* logged */
		free(mt);
		return 0;
	}
	if (r == 0)
		check_meta_overlaps(c, mt);
	if (r == 0) {
		r = vhdx_params_read(s, mt);
		if (r == -EUCLEAN || r == -ENOTSUP || r == -EFBIG) {
			c->res->errors++;	/* logged */
			r = 0;
		} else if (r == 0) {
			*ok = true;
		}
	}
	if (r == 0 && *ok && s->p.has_parent != mt->parent_locator.present)
		check_err(c, "HasParent is %d but the parent locator is %s",
			  s->p.has_parent,
			  mt->parent_locator.present ? "present" : "missing");
	if (r == 0 && *ok && s->p.has_parent && mt->parent_locator.present) {
		r = vhdx_locator_read(s, mt);
		if (r == -EUCLEAN || r == -ENOTSUP) {
			c->res->errors++;	/* logged */
			r = 0;
		}
	}
	free(mt);
	return r;
}

/* Every BAT entry: states, placement, bitmaps under partial blocks. */
static int check_bat(struct checker *c)
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
	total = vhdx_bat_entry_count(s->nblocks, s->chunk_ratio,
				     s->p.has_parent);
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
			check_err(c, "BAT entry %llu (sector bitmap of chunk "
				  "%llu): invalid state %u",
				  (unsigned long long)i, (unsigned long long)chunk,
				  st);
			continue;
		}
		if (st != VHDX_SB_PRESENT)
			continue;
		if (!s->p.has_parent)
			check_warn(c, "BAT entry %llu: SB_PRESENT in a file "
				   "without a parent", (unsigned long long)i);
		if (VHDX_BAT_OFFSET(e) == 0) {
			check_err(c, "BAT entry %llu (sector bitmap of chunk "
				  "%llu): present at offset 0",
				  (unsigned long long)i,
				  (unsigned long long)chunk);
			continue;
		}
		if (chunk < s->nchunks)
			sb_present[chunk] = 1;
		r = check_add(c, VHDX_BAT_OFFSET(e), VHDX_SB_BLOCK_SIZE, true,
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
			check_warn(c, "BAT entry %llu (block %llu): state 5, the "
				   "0.95 draft's UNMAPPED",
				   (unsigned long long)i, (unsigned long long)blk);
			continue;
		case VHDX_PAYLOAD_FULLY_PRESENT:
		case VHDX_PAYLOAD_PARTIALLY_PRESENT:
			break;
		default:
			check_err(c, "BAT entry %llu (block %llu): invalid state "
				  "%u", (unsigned long long)i,
				  (unsigned long long)blk, st);
			continue;
		}
		if (blk >= s->nblocks)
			check_warn(c, "BAT entry %llu (block %llu): present past "
				   "the virtual size", (unsigned long long)i,
				   (unsigned long long)blk);
		if (st == VHDX_PAYLOAD_PARTIALLY_PRESENT) {
			if (!s->p.has_parent)
				check_err(c, "BAT entry %llu (block %llu): "
					  "PARTIALLY_PRESENT in a file without a "
					  "parent", (unsigned long long)i,
					  (unsigned long long)blk);
			else if (!sb_present[blk / cr])
				check_err(c, "BAT entry %llu (block %llu): "
					  "PARTIALLY_PRESENT but the sector bitmap "
					  "of chunk %llu is not present",
					  (unsigned long long)i,
					  (unsigned long long)blk,
					  (unsigned long long)(blk / cr));
		}
		if (VHDX_BAT_OFFSET(e) == 0) {
			check_err(c, "BAT entry %llu (block %llu): present at "
				  "offset 0", (unsigned long long)i,
				  (unsigned long long)blk);
			continue;
		}
		c->res->allocated += bs;
		r = check_add(c, VHDX_BAT_OFFSET(e), bs, true, "block %llu",
			      (unsigned long long)blk);
	}
	free(bat);
	free(sb_present);
	return r;
}

int vhdx_check(struct img *img, bool repair, struct img_check *res)
{
	struct checker c = { .img = img, .res = res };
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
	buf = malloc(8);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	if (img->file_size < 8 ||
	    pread_full(img->fd, buf, 8, VHDX_FILE_ID_OFF) < 0 ||
	    memcmp(buf, "vhdxfile", 8) != 0) {
		check_err(&c, "no \"vhdxfile\" file identifier at offset 0");
		goto out;
	}
	if (img->file_size < VHDX_HEADER_SECTION) {
		check_err(&c, "file of %llu bytes is shorter than the 1 MiB "
			  "header area", (unsigned long long)img->file_size);
		goto out;
	}
	r = check_add(&c, 0, VHDX_HEADER_SECTION, false, "the header area");
	if (r < 0)
		goto out;
	if (!check_headers(&c))
		goto finish;
	r = check_log(&c);
	if (r < 0)
		goto out;
	if (!check_regions(&c))
		goto finish;
	r = check_metadata(&c, &meta_ok);
	if (r < 0)
		goto out;
	if (meta_ok)
		r = check_bat(&c);
	if (r < 0)
		goto out;
finish:
	if (c.fatal < 0) {
		r = c.fatal;
		goto out;
	}
	check_finish(&c);
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
