// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/codec.c: decode and encode every VHDX on-disk structure (MS-VHDX
 * v1.0): the headers, the region table, the metadata table and its items,
 * the parent locator, BAT indexes and log entry headers and descriptors,
 * with their CRC-32C checks.  No I/O and no state: each function works on
 * the bytes it is given (path only names the file in messages), so the
 * open path (open.c), the checker (check.c) and the writers (write.c,
 * create.c, parent.c) share one reading and one writing of each field.
 *
 * The table decoders keep every entry (GUID, offset, length, flags), not
 * only the ones the driver uses: the checker judges them all.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "log.h"
#include "utf16.h"
#include "vhdx.h"

/* GUIDs in text order (struct guid); the file holds them mixed-endian.
 * Shared through vhdx.h. */
const struct guid vhdx_region_bat = { {
	0x2d, 0xc2, 0x77, 0x66, 0xf6, 0x23, 0x42, 0x00,
	0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 } };
const struct guid vhdx_region_meta = { {
	0x8b, 0x7c, 0xa2, 0x06, 0x47, 0x90, 0x4b, 0x9a,
	0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e } };
const struct guid vhdx_meta_file_params = { {
	0xca, 0xa1, 0x67, 0x37, 0xfa, 0x36, 0x4d, 0x43,
	0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b } };
const struct guid vhdx_meta_disk_size = { {
	0x2f, 0xa5, 0x42, 0x24, 0xcd, 0x1b, 0x48, 0x76,
	0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 } };
const struct guid vhdx_meta_page83 = { {
	0xbe, 0xca, 0x12, 0xab, 0xb2, 0xe6, 0x45, 0x23,
	0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 } };
const struct guid vhdx_meta_logical_sector = { {
	0x81, 0x41, 0xbf, 0x1d, 0xa9, 0x6f, 0x47, 0x09,
	0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f } };
const struct guid vhdx_meta_physical_sector = { {
	0xcd, 0xa3, 0x48, 0xc7, 0x44, 0x5d, 0x44, 0x71,
	0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 } };
const struct guid vhdx_meta_parent_locator = { {
	0xa8, 0xd3, 0x5f, 0x2d, 0xb3, 0x0b, 0x45, 0x4d,
	0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c } };
const struct guid vhdx_locator_type = { {
	0xb0, 0x4a, 0xef, 0xb7, 0xd1, 0x9e, 0x4a, 0x81,
	0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 } };

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (path) ? (path) : "-", ##__VA_ARGS__)

/* ---- CRC-32C (2.2.2, 2.2.3, 2.3.1.1) ---- */

uint32_t vhdx_crc_compute(const uint8_t *buf, size_t len, size_t csum_off)
{
	static const uint8_t zero[4];
	uint32_t c = crc32c(0, buf, csum_off);

	c = crc32c(c, zero, 4);
	return crc32c(c, buf + csum_off + 4, len - csum_off - 4);
}

bool vhdx_crc_check(const uint8_t *buf, size_t len, size_t csum_off)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
	(void)buf, (void)len, (void)csum_off;	/* let the fuzzer past it */
	return true;
#else
	return vhdx_crc_compute(buf, len, csum_off) == get_le32(buf + csum_off);
#endif
}

void vhdx_crc_put(uint8_t *buf, size_t len, size_t csum_off)
{
	put_le32(buf + csum_off, vhdx_crc_compute(buf, len, csum_off));
}

/* ---- GUIDs for new files ---- */

int vhdx_guid_random(struct guid *g)
{
	ssize_t n = getrandom(g->b, sizeof(g->b), 0);

	if (n != (ssize_t)sizeof(g->b))
		return log_err_ret(n < 0 ? -errno : -EIO,
				   "vhdx: no random bytes for a GUID (%zd)", n);
	g->b[6] = (uint8_t)((g->b[6] & 0x0f) | 0x40);	/* RFC 4122 v4 */
	g->b[8] = (uint8_t)((g->b[8] & 0x3f) | 0x80);
	return 0;
}

/* ---- headers (2.2.2) ---- */

/* Signature and CRC of one copy; d (optional) gets the two checksums. */
static int header_verify(const uint8_t *buf, uint32_t *stored,
			 uint32_t *computed)
{
	const size_t at = offsetof(struct vhdx_header_raw, checksum);

	if (memcmp(buf, "head", 4) != 0)
		return -EINVAL;
	*stored = get_le32(buf + at);
	*computed = vhdx_crc_compute(buf, VHDX_HEADER_SIZE, at);
	if (!vhdx_crc_check(buf, VHDX_HEADER_SIZE, at))
		return -EBADMSG;
	return 0;
}

static void header_fields(const uint8_t *buf, struct vhdx_header *h)
{
	const struct vhdx_header_raw *r = (const void *)buf;	/* bytes */

	h->sequence = get_le64(r->sequence);
	guid_from_le(&h->file_write_guid, r->file_write_guid);
	guid_from_le(&h->data_write_guid, r->data_write_guid);
	guid_from_le(&h->log_guid, r->log_guid);
	h->log_version = get_le16(r->log_version);
	h->version = get_le16(r->version);
	h->log_length = get_le32(r->log_length);
	h->log_offset = get_le64(r->log_offset);
}

int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h)
{
	uint32_t stored, computed;
	int r = header_verify(buf, &stored, &computed);

	if (r == 0)
		header_fields(buf, h);
	return r;
}

void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf)
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
	vhdx_crc_put(buf, VHDX_HEADER_SIZE,
		     offsetof(struct vhdx_header_raw, checksum));
}

int vhdx_header_check(const char *path, const struct vhdx_header *h)
{
	if (h->version != 1)
		return vhdx_err(-ENOTSUP, path, "unsupported version (%u)",
				h->version);
	if (h->log_version != 0)
		return vhdx_err(-ENOTSUP, path, "unsupported log version (%u)",
				h->log_version);
	if (h->log_length % VHDX_ALIGN)
		return vhdx_err(-EUCLEAN, path,
				"log length is not a multiple of 1 MiB (%u)",
				h->log_length);
	if (h->log_length == 0 && !guid_is_zero(&h->log_guid))
		return vhdx_err(-EUCLEAN, path,
				"log GUID set but the log is empty (%u)",
				h->log_length);
	if (h->log_length &&
	    (h->log_offset % VHDX_ALIGN || h->log_offset < VHDX_HEADER_SECTION))
		return vhdx_err(-EUCLEAN, path, "bad log offset (%llu)",
				(unsigned long long)h->log_offset);
	return 0;
}


void vhdx_headers_choose(const uint8_t *h1, const uint8_t *h2,
			 struct vhdx_header_choice *c)
{
	const uint8_t *raw[2] = { h1, h2 };

	memset(c, 0, sizeof(*c));
	for (int i = 0; i < 2; i++) {
		c->r[i] = header_verify(raw[i], &c->stored[i],
					&c->computed[i]);
		if (c->r[i] == 0)
			header_fields(raw[i], &c->h[i]);
	}
	if (c->r[0] < 0 && c->r[1] < 0) {
		c->cur = -1;
	} else if (c->r[0] == 0 && c->r[1] == 0) {
		/* Disk2VHD writes the same header twice; anything else with
		 * a tie has no current header (2.2.2): the first is kept. */
		c->tie = c->h[0].sequence == c->h[1].sequence &&
			 memcmp(h1, h2, VHDX_HEADER_SIZE) != 0;
		c->cur = c->h[1].sequence > c->h[0].sequence;
	} else {
		c->cur = c->r[0] == 0 ? 0 : 1;
	}
}

int vhdx_headers_pick(const char *path, const uint8_t *h1, const uint8_t *h2,
		      struct vhdx_header *h)
{
	struct vhdx_header_choice c;

	vhdx_headers_choose(h1, h2, &c);
	if (c.cur < 0) {
		if (c.r[0] == -EBADMSG || c.r[1] == -EBADMSG)
			return vhdx_err(-EBADMSG, path,
					"no valid header: checksum mismatch "
					"(header %d)", c.r[0] == -EBADMSG ? 1 : 2);
		return vhdx_err(-EUCLEAN, path,
				"no valid header (no \"head\" signature at "
				"%llu or %llu)",
				(unsigned long long)VHDX_HEADER1_OFF,
				(unsigned long long)VHDX_HEADER2_OFF);
	}
	if (c.tie)
		return vhdx_err(-EUCLEAN, path,
				"headers differ but have the same sequence "
				"number (%llu)",
				(unsigned long long)c.h[0].sequence);
	*h = c.h[c.cur];
	return 0;
}

/* ---- region table (2.2.3) ---- */

void vhdx_region_tables_choose(const uint8_t *t1, const uint8_t *t2,
			       struct vhdx_region_choice *c)
{
	const uint8_t *raw[2] = { t1, t2 };
	const size_t at = offsetof(struct vhdx_region_hdr_raw, checksum);

	memset(c, 0, sizeof(*c));
	for (int i = 0; i < 2; i++) {
		c->stored[i] = get_le32(raw[i] + at);
		c->computed[i] = vhdx_crc_compute(raw[i], VHDX_REGION_SIZE, at);
		if (memcmp(raw[i], "regi", 4) != 0)
			c->r[i] = -EINVAL;
		else if (!vhdx_crc_check(raw[i], VHDX_REGION_SIZE, at))
			c->r[i] = -EBADMSG;
	}
	/* The copies are identical; the second serves only when the first
	 * is damaged (signature or checksum). */
	c->use = c->r[0] == 0 ? 0 : c->r[1] == 0 ? 1 : -1;
	c->differ = c->r[0] == 0 && c->r[1] == 0 &&
		    memcmp(t1, t2, VHDX_REGION_SIZE) != 0;
}

static int vhdx_region_set(const char *path, bool quiet, const char *name,
			   struct vhdx_region *rg, uint64_t off, uint32_t len)
{
	if (rg->len)
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path, "duplicate %s region (%llu)",
				 name, (unsigned long long)off);
	if (off % VHDX_ALIGN || off < VHDX_HEADER_SECTION)
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path, "bad %s region offset (%llu)",
				 name, (unsigned long long)off);
	if (len == 0 || len % VHDX_ALIGN)
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path, "bad %s region length (%u)",
				 name, len);
	rg->off = off;
	rg->len = len;
	return 0;
}


int vhdx_region_table_decode(const char *path, const uint8_t *buf,
			     bool quiet, struct vhdx_regions *out)
{
	const struct vhdx_region_hdr_raw *h = (const void *)buf;
	struct vhdx_regions *rg;
	uint32_t count;
	int r = 0;

	if (memcmp(h->signature, "regi", 4) != 0)
		return quiet ? -EINVAL :
			vhdx_err(-EINVAL, path, "no region table signature (%s)",
				 "regi");
	if (!vhdx_crc_check(buf, VHDX_REGION_SIZE,
			    offsetof(struct vhdx_region_hdr_raw, checksum)))
		return quiet ? -EBADMSG :
			vhdx_err(-EBADMSG, path,
				 "region table checksum mismatch (0x%08x)",
				 get_le32(h->checksum));
	count = get_le32(h->entry_count);
	if (count > VHDX_REGION_MAX)
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path,
				 "too many region table entries (%u)", count);
	rg = calloc(1, sizeof(*rg));
	if (!rg)
		return -ENOMEM;
	rg->count = count;
	for (uint32_t i = 0; i < count && r == 0; i++) {
		const struct vhdx_region_entry_raw *e = (const void *)
			(buf + sizeof(*h) + (size_t)i * sizeof(*e));
		struct vhdx_region_entry *d = &rg->ent[i];

		guid_from_le(&d->guid, e->guid);
		d->off = get_le64(e->file_offset);
		d->len = get_le32(e->length);
		d->flags = get_le32(e->flags);
		if (guid_equal(&d->guid, &vhdx_region_bat)) {
			r = vhdx_region_set(path, quiet, "BAT", &rg->bat,
					    d->off, d->len);
		} else if (guid_equal(&d->guid, &vhdx_region_meta)) {
			r = vhdx_region_set(path, quiet, "metadata", &rg->meta,
					    d->off, d->len);
		} else if (d->flags & VHDX_REGION_REQUIRED) {
			char s[GUID_STR_LEN + 1];

			guid_to_str(&d->guid, s);
			r = quiet ? -ENOTSUP :
				vhdx_err(-ENOTSUP, path,
					 "unknown required region (%s)", s);
		}		/* optional and unknown: kept, not used */
	}
	if (r == 0 && (!rg->bat.len || !rg->meta.len))
		r = quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path, "no %s region (%u entries)",
				 rg->bat.len ? "metadata" : "BAT", count);
	if (r == 0 && ranges_overlap(rg->bat.off, rg->bat.len, rg->meta.off,
				     rg->meta.len))
		r = quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path,
				 "BAT and metadata regions overlap (%llu)",
				 (unsigned long long)rg->meta.off);
	if (r == 0)
		*out = *rg;
	free(rg);
	return r;
}

void vhdx_region_table_encode(const struct vhdx_regions *rg, uint8_t *t)
{
	struct vhdx_region_hdr_raw *h = (void *)t;	/* bytes only */

	memset(t, 0, VHDX_REGION_SIZE);
	memcpy(h->signature, "regi", 4);
	put_le32(h->entry_count, rg->count);
	for (uint32_t i = 0; i < rg->count; i++) {
		struct vhdx_region_entry_raw *e = (void *)
			(t + sizeof(*h) + (size_t)i * sizeof(*e));

		guid_to_le(&rg->ent[i].guid, e->guid);
		put_le64(e->file_offset, rg->ent[i].off);
		put_le32(e->length, rg->ent[i].len);
		put_le32(e->flags, rg->ent[i].flags);
	}
	vhdx_crc_put(t, VHDX_REGION_SIZE,
		     offsetof(struct vhdx_region_hdr_raw, checksum));
}

/* ---- metadata (2.6) ---- */

static const struct {
	const struct guid *id;
	size_t field;		/* offsetof in struct vhdx_meta_table */
	const char *name;
	uint32_t len;		/* exact length, 0: variable */
} vhdx_meta_known[] = {
	{ &vhdx_meta_file_params, offsetof(struct vhdx_meta_table, file_params),
	  "file parameters", 8 },
	{ &vhdx_meta_disk_size, offsetof(struct vhdx_meta_table, disk_size),
	  "virtual disk size", 8 },
	{ &vhdx_meta_page83, offsetof(struct vhdx_meta_table, page83),
	  "page 83 data", 16 },
	{ &vhdx_meta_logical_sector,
	  offsetof(struct vhdx_meta_table, logical_sector),
	  "logical sector size", 4 },
	{ &vhdx_meta_physical_sector,
	  offsetof(struct vhdx_meta_table, physical_sector),
	  "physical sector size", 4 },
	{ &vhdx_meta_parent_locator,
	  offsetof(struct vhdx_meta_table, parent_locator),
	  "parent locator", 0 },
};

int vhdx_meta_table_decode(const char *path, const uint8_t *buf,
			   uint64_t region_len, struct vhdx_meta_table *out)
{
	const struct vhdx_meta_hdr_raw *h = (const void *)buf;
	struct vhdx_meta_table *mt;
	unsigned count;
	int r = 0;

	if (memcmp(h->signature, "metadata", 8) != 0)
		return vhdx_err(-EUCLEAN, path,
				"no metadata table signature (%s)", "metadata");
	count = get_le16(h->entry_count);
	if (count > VHDX_META_MAX)
		return vhdx_err(-EUCLEAN, path,
				"too many metadata entries (%u)", count);
	mt = calloc(1, sizeof(*mt));
	if (!mt)
		return -ENOMEM;
	mt->count = count;
	for (unsigned i = 0; i < count && r == 0; i++) {
		const struct vhdx_meta_entry_raw *e = (const void *)
			(buf + sizeof(*h) + (size_t)i * sizeof(*e));
		struct vhdx_meta_entry *d = &mt->ent[i];
		struct vhdx_meta_item *it = NULL;
		char s[GUID_STR_LEN + 1];
		size_t k;

		guid_from_le(&d->id, e->item_id);
		d->off = get_le32(e->offset);
		d->len = get_le32(e->length);
		d->flags = get_le32(e->flags);
		guid_to_str(&d->id, s);
		if (d->len == 0 && d->off != 0) {
			r = vhdx_err(-EUCLEAN, path,
				     "empty metadata item %s has an offset "
				     "(%u)", s, d->off);
			break;
		}
		if (d->len &&
		    (d->off < VHDX_META_TABLE_SIZE ||
		     d->len > VHDX_META_ITEM_MAX ||
		     !range_within(d->off, d->len, region_len))) {
			r = vhdx_err(-EUCLEAN, path,
				     "metadata item %s out of bounds "
				     "(offset %u, length %u)", s, d->off,
				     d->len);
			break;
		}
		for (k = 0; k < ARRAY_SIZE(vhdx_meta_known); k++)
			if (guid_equal(&d->id, vhdx_meta_known[k].id))
				break;
		if (k == ARRAY_SIZE(vhdx_meta_known) ||
		    (d->flags & VHDX_META_IS_USER)) {
			if (d->flags & VHDX_META_IS_REQUIRED)
				r = vhdx_err(-ENOTSUP, path,
					     "unknown required metadata "
					     "item (%s)", s);
			continue;	/* user or unknown optional: kept */
		}
		it = (struct vhdx_meta_item *)((uint8_t *)mt +
					       vhdx_meta_known[k].field);
		if (it->present)
			r = vhdx_err(-EUCLEAN, path,
				     "duplicate %s metadata item (%s)",
				     vhdx_meta_known[k].name, s);
		else if (vhdx_meta_known[k].len ?
			 d->len != vhdx_meta_known[k].len :
			 d->len < sizeof(struct vhdx_locator_hdr_raw))
			r = vhdx_err(-EUCLEAN, path,
				     "bad %s metadata length (%u)",
				     vhdx_meta_known[k].name, d->len);
		it->present = true;
		it->off = d->off;
		it->len = d->len;
	}
	for (size_t k = 0; k < ARRAY_SIZE(vhdx_meta_known) && r == 0; k++) {
		const struct vhdx_meta_item *it = (const void *)
			((const uint8_t *)mt + vhdx_meta_known[k].field);

		if (!it->present && vhdx_meta_known[k].len)
			r = vhdx_err(-EUCLEAN, path,
				     "no %s metadata item (%u entries)",
				     vhdx_meta_known[k].name, count);
	}
	if (r == 0)
		*out = *mt;
	free(mt);
	return r;
}

void vhdx_meta_entry_encode(uint8_t *t, unsigned i,
			    const struct vhdx_meta_entry *d)
{
	struct vhdx_meta_entry_raw *e = (void *)
		(t + sizeof(struct vhdx_meta_hdr_raw) + i * sizeof(*e));

	memset(e, 0, sizeof(*e));
	guid_to_le(&d->id, e->item_id);
	put_le32(e->offset, d->off);
	put_le32(e->length, d->len);
	put_le32(e->flags, d->flags);
}

void vhdx_meta_header_encode(uint8_t *t, unsigned count)
{
	struct vhdx_meta_hdr_raw *h = (void *)t;	/* bytes only */

	memset(h, 0, sizeof(*h));
	memcpy(h->signature, "metadata", 8);
	put_le16(h->entry_count, (uint16_t)count);
}

int vhdx_params_decode(const char *path, const uint8_t *file_params,
		       const uint8_t *disk_size, const uint8_t *lss,
		       const uint8_t *pss, struct vhdx_params *out)
{
	const struct vhdx_file_params_raw *fp = (const void *)file_params;
	struct vhdx_params p;
	uint32_t flags = get_le32(fp->flags);

	p.block_size = get_le32(fp->block_size);
	if (p.block_size < VHDX_BLOCK_MIN || p.block_size > VHDX_BLOCK_MAX ||
	    !is_pow2(p.block_size))
		return vhdx_err(-EUCLEAN, path, "bad block size (%u)",
				p.block_size);
	if (flags & ~(uint32_t)(VHDX_PARAMS_LEAVE_ALLOCATED |
				VHDX_PARAMS_HAS_PARENT))
		return vhdx_err(-ENOTSUP, path,
				"unknown file parameter flags (0x%x)", flags);
	p.leave_allocated = flags & VHDX_PARAMS_LEAVE_ALLOCATED;
	p.has_parent = flags & VHDX_PARAMS_HAS_PARENT;
	p.logical_sector = get_le32(lss);
	if (p.logical_sector != 512 && p.logical_sector != 4096)
		return vhdx_err(-EUCLEAN, path, "bad logical sector size (%u)",
				p.logical_sector);
	p.physical_sector = get_le32(pss);
	if (p.physical_sector != 512 && p.physical_sector != 4096)
		return vhdx_err(-EUCLEAN, path,
				"bad physical sector size (%u)",
				p.physical_sector);
	p.disk_size = get_le64(disk_size);
	if (p.disk_size == 0 || p.disk_size % p.logical_sector)
		return vhdx_err(-EUCLEAN, path, "bad virtual disk size (%llu)",
				(unsigned long long)p.disk_size);
	if (p.disk_size > VHDX_DISK_MAX)
		return vhdx_err(-EFBIG, path,
				"virtual disk size over 64 TiB (%llu)",
				(unsigned long long)p.disk_size);
	*out = p;
	return 0;
}

/* ---- parent locator (2.6.2.6) ---- */

void vhdx_locator_clear(struct vhdx_locator *loc)
{
	free(loc->relative_path);
	free(loc->absolute_win32_path);
	free(loc->volume_path);
	memset(loc, 0, sizeof(*loc));
}

int vhdx_locator_decode(const char *path, const uint8_t *buf, size_t len,
			struct vhdx_locator *out)
{
	const struct vhdx_locator_hdr_raw *h = (const void *)buf;
	struct vhdx_locator loc;
	bool have_linkage = false, have_linkage2 = false;
	unsigned count;
	struct guid g;
	int r = 0;

	memset(&loc, 0, sizeof(loc));
	if (len < sizeof(*h))
		return vhdx_err(-EUCLEAN, path, "parent locator too short (%zu)",
				len);
	guid_from_le(&g, h->locator_type);
	if (!guid_equal(&g, &vhdx_locator_type)) {
		char s[GUID_STR_LEN + 1];

		guid_to_str(&g, s);
		return vhdx_err(-ENOTSUP, path,
				"unknown parent locator type (%s)", s);
	}
	count = get_le16(h->key_value_count);
	if (count == 0 || count > VHDX_LOCATOR_MAX_ENTRIES ||
	    sizeof(*h) + (size_t)count * sizeof(struct vhdx_locator_entry_raw) >
		    len)
		return vhdx_err(-EUCLEAN, path,
				"bad parent locator entry count (%u)", count);
	for (unsigned i = 0; i < count && r == 0; i++) {
		const struct vhdx_locator_entry_raw *e = (const void *)
			(buf + sizeof(*h) + (size_t)i * sizeof(*e));
		uint32_t koff = get_le32(e->key_offset);
		uint32_t voff = get_le32(e->value_offset);
		uint16_t klen = get_le16(e->key_length);
		uint16_t vlen = get_le16(e->value_length);
		char *key = NULL, *val = NULL, **slot = NULL;

		if (klen == 0 || klen % 2 || vlen % 2 ||
		    !range_within(koff, klen, len) ||
		    !range_within(voff, vlen, len)) {
			r = vhdx_err(-EUCLEAN, path,
				     "parent locator entry %u out of bounds "
				     "(key %u+%u, value %u+%u)", i, koff, klen,
				     voff, vlen);
			break;
		}
		if (utf16_to_utf8(buf + koff, klen, false, &key) < 0 ||
		    utf16_to_utf8(buf + voff, vlen, false, &val) < 0) {
			r = vhdx_err(-EUCLEAN, path,
				     "parent locator entry %u is not UTF-16 "
				     "(%u)", i, koff);
			free(key);
			break;
		}
		if (!strcmp(key, "parent_linkage") ||
		    !strcmp(key, "parent_linkage2")) {
			bool two = key[14] == '2';
			bool *have = two ? &have_linkage2 : &have_linkage;

			if (*have)
				r = vhdx_err(-EUCLEAN, path,
					     "duplicate %s (%s)", key, val);
			else if (guid_parse(val, two ? &loc.linkage2 :
						&loc.linkage) < 0)
				r = vhdx_err(-EUCLEAN, path,
					     "%s is not a GUID (%s)", key, val);
			*have = true;
		} else if (!strcmp(key, "relative_path")) {
			slot = &loc.relative_path;
		} else if (!strcmp(key, "absolute_win32_path")) {
			slot = &loc.absolute_win32_path;
		} else if (!strcmp(key, "volume_path")) {
			slot = &loc.volume_path;
		}		/* other keys are ignored (2.6.2.6.2) */
		if (slot && *slot) {
			r = vhdx_err(-EUCLEAN, path, "duplicate %s (%s)", key,
				     val);
		} else if (slot && *val) {
			*slot = val;
			val = NULL;
		}
		free(key);
		free(val);
	}
	if (r == 0 && !have_linkage)
		r = vhdx_err(-EUCLEAN, path, "parent locator has no %s (%u "
			     "entries)", "parent_linkage", count);
	if (r == 0 && !loc.relative_path && !loc.absolute_win32_path &&
	    !loc.volume_path)
		r = vhdx_err(-EUCLEAN, path, "parent locator has no path (%u "
			     "entries)", count);
	if (r < 0) {
		vhdx_locator_clear(&loc);
		return r;
	}
	/* A zero parent_linkage2 (Hyper-V writes one) names nothing. */
	loc.has_linkage2 = have_linkage2 && !guid_is_zero(&loc.linkage2);
	*out = loc;
	return 0;
}

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

char *vhdx_path_to_windows(const char *prefix, const char *p)
{
	char *s;

	if (asprintf(&s, "%s%s", prefix, p) < 0)
		return NULL;
	for (char *q = s; *q; q++)
		if (*q == '/')
			*q = '\\';
	return s;
}

/* ---- BAT (2.5) ---- */

uint64_t vhdx_bat_entry_count(uint64_t nblocks, uint32_t ratio,
			      bool has_parent)
{
	uint64_t nchunks = nblocks / ratio + (nblocks % ratio != 0);

	if (has_parent)	/* up to the last sector bitmap entry */
		return nchunks * ((uint64_t)ratio + 1);
	/* dynamic and fixed: up to the last payload entry */
	return nblocks + (nblocks - 1) / ratio;
}

uint64_t vhdx_bat_payload_index(uint32_t ratio, uint64_t blk)
{
	return blk + blk / ratio;
}

uint64_t vhdx_bat_bitmap_index(uint32_t ratio, uint64_t chunk)
{
	return chunk * ((uint64_t)ratio + 1) + ratio;
}

/* ---- log (2.3.1) ---- */

void vhdx_log_entry_decode(const uint8_t *buf, struct vhdx_log_hdr *h)
{
	const struct vhdx_log_entry_raw *r = (const void *)buf;	/* bytes */

	h->is_entry = memcmp(r->signature, "loge", 4) == 0;
	h->entry_length = get_le32(r->entry_length);
	h->tail = get_le32(r->tail);
	h->sequence = get_le64(r->sequence);
	h->descriptor_count = get_le32(r->descriptor_count);
	guid_from_le(&h->log_guid, r->log_guid);
	h->flushed_file_offset = get_le64(r->flushed_file_offset);
	h->last_file_offset = get_le64(r->last_file_offset);
}

void vhdx_log_desc_decode(const uint8_t *buf, struct vhdx_log_desc *d)
{
	const struct vhdx_log_desc_raw *r = (const void *)buf;	/* bytes */

	d->kind = !memcmp(r->signature, "zero", 4) ? VHDX_LOG_DESC_ZERO :
		  !memcmp(r->signature, "desc", 4) ? VHDX_LOG_DESC_DATA :
						     VHDX_LOG_DESC_BAD;
	memcpy(d->trailing, r->trailing_bytes, 4);
	memcpy(d->leading, r->leading_or_length, 8);
	d->zero_length = get_le64(r->leading_or_length);
	d->file_offset = get_le64(r->file_offset);
	d->sequence = get_le64(r->sequence);
}

bool vhdx_log_data_ok(const uint8_t *buf, uint64_t seq)
{
	const struct vhdx_log_data_raw *r = (const void *)buf;	/* bytes */

	return memcmp(r->signature, "data", 4) == 0 &&
	       get_le32(r->sequence_high) == seq >> 32 &&
	       get_le32(r->sequence_low) == (uint32_t)seq;
}
