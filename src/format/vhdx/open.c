// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx.c: Hyper-V VHDX images (MS-VHDX v1.0): fixed, dynamic and
 * differencing.
 *
 * open() validates the whole file once: the current header, the region
 * table, the metadata items, the BAT and the sector bitmaps of partially
 * present blocks, replaying a dirty log in memory first (vhdx-log.c; the
 * file is never written).  After that map_extent() is a table lookup.
 * Writing a top image and creating differencing files: vhdx-write.c.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "utf16.h"
#include "vhdx.h"

/* GUIDs in text order (struct guid); the file holds them mixed-endian.
 * Shared with vhdx-write.c through vhdx.h. */
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

/* CRC-32C of len bytes with the 4-byte checksum field at csum_off zeroed. */
static uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t csum_off)
{
	static const uint8_t zero[4];
	uint32_t c = crc32c(0, buf, csum_off);

	c = crc32c(c, zero, 4);
	return crc32c(c, buf + csum_off + 4, len - csum_off - 4);
}

static bool vhdx_crc_ok(const uint8_t *buf, size_t len, size_t csum_off)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
	(void)buf, (void)len, (void)csum_off;	/* let the fuzzer past it */
	return true;
#else
	return vhdx_crc(buf, len, csum_off) == get_le32(buf + csum_off);
#endif
}

/* ---- headers (2.2.2) ---- */

int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h)
{
	const struct vhdx_header_raw *r = (const void *)buf;

	if (memcmp(r->signature, "head", 4) != 0)
		return -EINVAL;
	if (!vhdx_crc_ok(buf, VHDX_HEADER_SIZE,
			 offsetof(struct vhdx_header_raw, checksum)))
		return -EBADMSG;
	h->sequence = get_le64(r->sequence);
	guid_from_le(&h->file_write_guid, r->file_write_guid);
	guid_from_le(&h->data_write_guid, r->data_write_guid);
	guid_from_le(&h->log_guid, r->log_guid);
	h->log_version = get_le16(r->log_version);
	h->version = get_le16(r->version);
	h->log_length = get_le32(r->log_length);
	h->log_offset = get_le64(r->log_offset);
	return 0;
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

int vhdx_headers_pick(const char *path, const uint8_t *h1, const uint8_t *h2,
		      struct vhdx_header *h)
{
	struct vhdx_header a, b;
	int ra = vhdx_header_decode(h1, &a);
	int rb = vhdx_header_decode(h2, &b);

	if (ra < 0 && rb < 0) {
		if (ra == -EBADMSG || rb == -EBADMSG)
			return vhdx_err(-EBADMSG, path,
					"no valid header: checksum mismatch "
					"(header %d)", ra == -EBADMSG ? 1 : 2);
		return vhdx_err(-EUCLEAN, path,
				"no valid header (no \"head\" signature at "
				"%llu or %llu)",
				(unsigned long long)VHDX_HEADER1_OFF,
				(unsigned long long)VHDX_HEADER2_OFF);
	}
	if (ra == 0 && rb == 0) {
		if (a.sequence == b.sequence) {
			/* Disk2VHD writes the same header twice; anything
			 * else with a tie has no current header (2.2.2). */
			if (memcmp(h1, h2, VHDX_HEADER_SIZE) != 0)
				return vhdx_err(-EUCLEAN, path,
						"headers differ but have the "
						"same sequence number (%llu)",
						(unsigned long long)a.sequence);
			*h = a;
		} else {
			*h = a.sequence > b.sequence ? a : b;
		}
	} else {
		*h = ra == 0 ? a : b;
	}
	return 0;
}

/* ---- region table (2.2.3) ---- */

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
	struct vhdx_regions rg = { { 0, 0 }, { 0, 0 } };
	uint32_t count;
	int r;

	if (memcmp(h->signature, "regi", 4) != 0)
		return quiet ? -EINVAL :
			vhdx_err(-EINVAL, path, "no region table signature (%s)",
				 "regi");
	if (!vhdx_crc_ok(buf, VHDX_REGION_SIZE,
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
	for (uint32_t i = 0; i < count; i++) {
		const struct vhdx_region_entry_raw *e = (const void *)
			(buf + sizeof(*h) + (size_t)i * sizeof(*e));
		uint64_t off = get_le64(e->file_offset);
		uint32_t len = get_le32(e->length);
		struct guid g;

		guid_from_le(&g, e->guid);
		if (guid_equal(&g, &vhdx_region_bat)) {
			r = vhdx_region_set(path, quiet, "BAT", &rg.bat, off,
					    len);
		} else if (guid_equal(&g, &vhdx_region_meta)) {
			r = vhdx_region_set(path, quiet, "metadata", &rg.meta,
					    off, len);
		} else if (get_le32(e->flags) & 1) {
			char s[GUID_STR_LEN + 1];

			guid_to_str(&g, s);
			r = quiet ? -ENOTSUP :
				vhdx_err(-ENOTSUP, path,
					 "unknown required region (%s)", s);
		} else {
			r = 0;	/* optional and unknown: ignored */
		}
		if (r < 0)
			return r;
	}
	if (!rg.bat.len || !rg.meta.len)
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path, "no %s region (%u entries)",
				 rg.bat.len ? "metadata" : "BAT", count);
	if (ranges_overlap(rg.bat.off, rg.bat.len, rg.meta.off, rg.meta.len))
		return quiet ? -EUCLEAN :
			vhdx_err(-EUCLEAN, path,
				 "BAT and metadata regions overlap (%llu)",
				 (unsigned long long)rg.meta.off);
	*out = rg;
	return 0;
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
	struct vhdx_meta_table mt;
	unsigned count;

	memset(&mt, 0, sizeof(mt));
	if (memcmp(h->signature, "metadata", 8) != 0)
		return vhdx_err(-EUCLEAN, path,
				"no metadata table signature (%s)", "metadata");
	count = get_le16(h->entry_count);
	if (count > VHDX_META_MAX)
		return vhdx_err(-EUCLEAN, path,
				"too many metadata entries (%u)", count);
	for (unsigned i = 0; i < count; i++) {
		const struct vhdx_meta_entry_raw *e = (const void *)
			(buf + sizeof(*h) + (size_t)i * sizeof(*e));
		uint32_t off = get_le32(e->offset), len = get_le32(e->length);
		uint32_t flags = get_le32(e->flags);
		struct vhdx_meta_item *it = NULL;
		char s[GUID_STR_LEN + 1];
		struct guid g;
		size_t k;

		guid_from_le(&g, e->item_id);
		guid_to_str(&g, s);
		if (len == 0 && off != 0)
			return vhdx_err(-EUCLEAN, path,
					"empty metadata item %s has an offset "
					"(%u)", s, off);
		if (len &&
		    (off < VHDX_META_TABLE_SIZE || len > VHDX_META_ITEM_MAX ||
		     !range_within(off, len, region_len)))
			return vhdx_err(-EUCLEAN, path,
					"metadata item %s out of bounds "
					"(offset %u, length %u)", s, off, len);
		for (k = 0; k < ARRAY_SIZE(vhdx_meta_known); k++)
			if (guid_equal(&g, vhdx_meta_known[k].id))
				break;
		if (k == ARRAY_SIZE(vhdx_meta_known) ||
		    (flags & VHDX_META_IS_USER)) {
			if (flags & VHDX_META_IS_REQUIRED)
				return vhdx_err(-ENOTSUP, path,
						"unknown required metadata "
						"item (%s)", s);
			continue;	/* user or unknown optional: ignored */
		}
		it = (struct vhdx_meta_item *)((uint8_t *)&mt +
					       vhdx_meta_known[k].field);
		if (it->present)
			return vhdx_err(-EUCLEAN, path,
					"duplicate %s metadata item (%s)",
					vhdx_meta_known[k].name, s);
		if (vhdx_meta_known[k].len ? len != vhdx_meta_known[k].len :
		    len < sizeof(struct vhdx_locator_hdr_raw))
			return vhdx_err(-EUCLEAN, path,
					"bad %s metadata length (%u)",
					vhdx_meta_known[k].name, len);
		it->present = true;
		it->off = off;
		it->len = len;
	}
	for (size_t k = 0; k < ARRAY_SIZE(vhdx_meta_known); k++) {
		const struct vhdx_meta_item *it = (const void *)
			((const uint8_t *)&mt + vhdx_meta_known[k].field);

		if (!it->present && vhdx_meta_known[k].len)
			return vhdx_err(-EUCLEAN, path,
					"no %s metadata item (%u entries)",
					vhdx_meta_known[k].name, count);
	}
	*out = mt;
	return 0;
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

/* ---- open ---- */

static int vhdx_probe(const struct img_probe *p)
{
	if (p->head_len >= 8 && !memcmp(p->head, "vhdxfile", 8))
		return 100;
	return 0;
}

static void vhdx_free(struct vhdx *s)
{
	if (!s)
		return;
	vhdx_w_free(s);
	vhdx_bat_free(s);
	vhdx_overlay_free(&s->log);
	vhdx_locator_clear(&s->loc);
	free(s);
}

static int vhdx_read_headers(struct vhdx *s)
{
	uint8_t *buf;
	int r;

	buf = malloc(2 * VHDX_HEADER_SIZE);
	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, buf, VHDX_HEADER_SIZE, VHDX_HEADER1_OFF);
	if (r == 0)
		r = vhdx_file_read(s, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE,
				   VHDX_HEADER2_OFF);
	if (r == 0)
		r = vhdx_headers_pick(s->path, buf, buf + VHDX_HEADER_SIZE,
				      &s->hdr);
	free(buf);
	if (r < 0)
		return r;
	r = vhdx_header_check(s->path, &s->hdr);
	if (r < 0)
		return r;
	if (s->hdr.log_length &&
	    !range_within(s->hdr.log_offset, s->hdr.log_length, s->file_size))
		return vhdx_err(-EUCLEAN, s->path,
				"log lies past the end of the file (%llu)",
				(unsigned long long)s->hdr.log_offset);
	return 0;
}

static int vhdx_check_region(const struct vhdx *s, const char *name,
			     const struct vhdx_region *rg)
{
	if (!range_within(rg->off, rg->len, s->eff_size))
		return vhdx_err(-EUCLEAN, s->path,
				"%s region lies past the end of the file (%llu)",
				name, (unsigned long long)rg->off);
	if (s->hdr.log_length && ranges_overlap(rg->off, rg->len,
						s->hdr.log_offset,
						s->hdr.log_length))
		return vhdx_err(-EUCLEAN, s->path,
				"%s region overlaps the log (%llu)", name,
				(unsigned long long)rg->off);
	return 0;
}

static int vhdx_read_regions(struct vhdx *s)
{
	uint8_t *buf = malloc(2 * VHDX_REGION_SIZE);
	uint8_t *t2 = buf + VHDX_REGION_SIZE;
	int r;

	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, buf, VHDX_REGION_SIZE, VHDX_REGION1_OFF);
	if (r == 0)
		r = vhdx_file_read(s, t2, VHDX_REGION_SIZE, VHDX_REGION2_OFF);
	if (r < 0)
		goto out;
	/* The copies are identical; fall back to the second only when the
	 * first is damaged (signature or checksum).  Decode quietly first,
	 * then once more aloud for the one message. */
	r = vhdx_region_table_decode(s->path, buf, true, &s->rg);
	if (r == -EINVAL || r == -EBADMSG) {
		int r2 = vhdx_region_table_decode(s->path, t2, true, &s->rg);

		if (r2 == 0) {
			log_warn("vhdx: %s: first region table damaged, "
				 "using the second (%llu)", s->path,
				 (unsigned long long)VHDX_REGION2_OFF);
			r = 0;
		} else if (r2 != -EINVAL && r2 != -EBADMSG) {
			r = vhdx_region_table_decode(s->path, t2, false,
						     &s->rg);
		} else {
			r = vhdx_region_table_decode(s->path, buf, false,
						     &s->rg);
		}
	} else if (r < 0) {
		r = vhdx_region_table_decode(s->path, buf, false, &s->rg);
	}
	if (r == -EINVAL)
		r = -EUCLEAN;	/* a VHDX file, just a broken one */
	if (r == 0)
		r = vhdx_check_region(s, "BAT", &s->rg.bat);
	if (r == 0)
		r = vhdx_check_region(s, "metadata", &s->rg.meta);
out:
	free(buf);
	return r;
}

static int vhdx_read_item(const struct vhdx *s, const struct vhdx_meta_item *it,
			  uint8_t **out)
{
	uint8_t *buf = malloc(it->len ? it->len : 1);
	int r;

	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, buf, it->len, s->rg.meta.off + it->off);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	return 0;
}

static int vhdx_read_metadata(struct vhdx *s)
{
	uint8_t *table, *fp = NULL, *ds = NULL, *ls = NULL, *ps = NULL;
	uint8_t *loc = NULL;
	struct vhdx_meta_table mt;
	int r;

	table = malloc(VHDX_META_TABLE_SIZE);
	if (!table)
		return -ENOMEM;
	r = vhdx_file_read(s, table, VHDX_META_TABLE_SIZE, s->rg.meta.off);
	if (r == 0)
		r = vhdx_meta_table_decode(s->path, table, s->rg.meta.len, &mt);
	free(table);
	if (r < 0)
		return r;
	r = vhdx_read_item(s, &mt.file_params, &fp);
	if (r == 0)
		r = vhdx_read_item(s, &mt.disk_size, &ds);
	if (r == 0)
		r = vhdx_read_item(s, &mt.logical_sector, &ls);
	if (r == 0)
		r = vhdx_read_item(s, &mt.physical_sector, &ps);
	if (r == 0)
		r = vhdx_params_decode(s->path, fp, ds, ls, ps, &s->p);
	if (r == 0 && s->p.has_parent) {
		if (!mt.parent_locator.present)
			r = vhdx_err(-EUCLEAN, s->path,
				     "differencing file without a parent "
				     "locator (%u)", 0);
		else
			r = vhdx_read_item(s, &mt.parent_locator, &loc);
		if (r == 0)
			r = vhdx_locator_decode(s->path, loc,
						mt.parent_locator.len, &s->loc);
	}
	free(fp);
	free(ds);
	free(ls);
	free(ps);
	free(loc);
	return r;
}

static int vhdx_open(struct img *img)
{
	struct vhdx *s;
	char sig[8];
	int r;

	if (img->file_size < sizeof(sig) ||
	    pread_full(img->fd, sig, sizeof(sig), VHDX_FILE_ID_OFF) < 0 ||
	    memcmp(sig, "vhdxfile", 8) != 0)
		return vhdx_err(-EINVAL, img->path, "not a VHDX file (%s)",
				"no \"vhdxfile\" signature");
	if (img->file_size < VHDX_HEADER_SECTION)
		return vhdx_err(-EUCLEAN, img->path,
				"file is shorter than the header section (%llu)",
				(unsigned long long)img->file_size);
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->path = img->path;
	s->fd = img->fd;
	s->file_size = img->file_size;
	s->eff_size = img->file_size;
	r = vhdx_read_headers(s);
	if (r == 0 && !guid_is_zero(&s->hdr.log_guid))
		r = vhdx_log_replay(s);
	if (r == 0)
		r = vhdx_read_regions(s);
	if (r == 0)
		r = vhdx_read_metadata(s);
	if (r == 0)
		r = vhdx_bat_geometry(s);
	if (r == 0)
		r = vhdx_bat_load(s);
	if (r == 0 && img->writable)
		r = vhdx_w_open(s);
	if (r < 0) {
		vhdx_free(s);
		return r;
	}
	img->priv = s;
	img->size = s->p.disk_size;
	img->sector_size = s->p.logical_sector;
	img->phys_sector_size = s->p.physical_sector;
	img->block_size = s->p.block_size;
	img->has_id = true;
	img->id = s->hdr.data_write_guid;
	strcpy(img->subtype, s->p.has_parent ? "differencing" :
			     s->p.leave_allocated ? "fixed" : "dynamic");
	return 0;
}

static void vhdx_close(struct img *img)
{
	vhdx_free(img->priv);
	img->priv = NULL;
}

static int vhdx_parent(struct img *img, struct img_parent *p)
{
	const struct vhdx *s = img->priv;
	struct img_parent out;
	int r = 0;

	if (!s->p.has_parent)
		return 0;
	memset(&out, 0, sizeof(out));
	/* A zero parent_linkage names nothing: what create_diff writes over
	 * a parent without an identity (raw, qcow2); not checked. */
	out.id_kind = guid_is_zero(&s->loc.linkage) ? IMG_ID_NONE :
		      IMG_ID_VHDX_LINKAGE;
	out.id = s->loc.linkage;
	out.has_id2 = s->loc.has_linkage2;
	out.id2 = s->loc.linkage2;
	/* MS-VHDX 2.6.2.6.2: relative_path first; then the absolute forms. */
	if (s->loc.relative_path)
		r = img_parent_add_ref(&out, IMG_REF_RELATIVE, "relative_path",
				       s->loc.relative_path);
	if (r == 0 && s->loc.absolute_win32_path)
		r = img_parent_add_ref(&out, IMG_REF_ABSOLUTE,
				       "absolute_win32_path",
				       s->loc.absolute_win32_path);
	if (r == 0 && s->loc.volume_path)
		r = img_parent_add_ref(&out, IMG_REF_ABSOLUTE, "volume_path",
				       s->loc.volume_path);
	if (r < 0) {
		img_parent_clear(&out);
		return r;
	}
	*p = out;
	return 1;
}

/* Bitmap bytes are loaded atomically: a writable image sets bits while
 * others read (vhdx-write.c). */
static uint8_t vhdx_bm_byte(const uint8_t *bm, uint64_t i)
{
	return __atomic_load_n(&bm[i], __ATOMIC_ACQUIRE);
}

static bool vhdx_bit(const uint8_t *bm, uint64_t i)
{
	return vhdx_bm_byte(bm, i >> 3) >> (i & 7) & 1;	/* LSB first (2.4) */
}

/* A payload BAT entry: a writable image publishes them with release
 * stores once what they point at is written. */
static uint64_t vhdx_bat_get(const struct vhdx *s, uint64_t blk)
{
	return __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
}

static void vhdx_map_data(const struct vhdx *s, uint64_t e, uint64_t blk,
			  uint64_t in, struct img_extent *ext)
{
	ext->type = IMG_EXT_DATA;
	if (s->via_read && vhdx_bit(s->via_read, blk))
		ext->host_off = IMG_HOST_NONE;	/* replayed: ->read */
	else
		ext->host_off = VHDX_BAT_OFFSET(e) + in;
}

static int vhdx_map_extent(struct img *img, uint64_t off, uint64_t len,
			   struct img_extent *ext)
{
	const struct vhdx *s = img->priv;
	uint64_t bs = s->p.block_size, blk = off / bs, in = off % bs;
	uint64_t run = MIN(len, bs - in), e;

	assert(blk < s->nblocks);
	e = vhdx_bat_get(s, blk);
	ext->len = run;
	switch (VHDX_BAT_STATE(e)) {
	case VHDX_PAYLOAD_FULLY_PRESENT:	/* at FileOffsetMB */
		vhdx_map_data(s, e, blk, in, ext);
		return 0;
	case VHDX_PAYLOAD_PARTIALLY_PRESENT: {	/* differencing only: per
						 * sector, bit 1 here, 0 parent */
		const uint8_t *bm = vhdx_bat_bitmap(s, blk);
		uint32_t lss = s->p.logical_sector;
		uint64_t sec = in / lss, end = sec + 1;
		uint64_t last = (in + run + lss - 1) / lss;
		bool here = vhdx_bit(bm, sec);

		while (end < last) {
			if (!(end & 7) && end + 8 <= last &&
			    vhdx_bm_byte(bm, end >> 3) == (here ? 0xff : 0)) {
				end += 8;
				continue;
			}
			if (vhdx_bit(bm, end) != here)
				break;
			end++;
		}
		ext->len = MIN(in + run, end * lss) - in;
		if (here)
			vhdx_map_data(s, e, blk, in, ext);
		else
			ext->type = IMG_EXT_UNALLOC;
		return 0;
	}
	case VHDX_PAYLOAD_ZERO:		/* zeros, whatever the parent holds */
		ext->type = IMG_EXT_ZERO;
		return 0;
	case VHDX_PAYLOAD_UNDEFINED:
	case VHDX_PAYLOAD_UNMAPPED:
	case VHDX_PAYLOAD_UNMAPPED_V095:
		/*
		 * "Not defined in the file, can contain arbitrary data" for
		 * every file type: in a differencing file we read zeros (as
		 * qemu does for both states) rather than reach through to a
		 * parent the child says nothing about; in a base file there
		 * is nothing below, so it is a hole either way.
		 */
		ext->type = s->p.has_parent ? IMG_EXT_ZERO : IMG_EXT_UNALLOC;
		return 0;
	default:	/* NOT_PRESENT: the parent's, or undefined (zeros) */
		ext->type = IMG_EXT_UNALLOC;
		return 0;
	}
}

static int vhdx_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct vhdx *s = img->priv;
	uint64_t bs = s->p.block_size, blk = off / bs, in = off % bs;

	assert(blk < s->nblocks && in + n <= bs);
	return vhdx_file_read(s, buf, n,
			      VHDX_BAT_OFFSET(vhdx_bat_get(s, blk)) + in);
}

static int vhdx_write(struct img *img, const void *buf, size_t n,
		      uint64_t off, const struct img_below *below)
{
	(void)below;	/* sector-granular: nothing is copied from below */
	return vhdx_w_write(img->priv, buf, n, off);
}

static int vhdx_zero(struct img *img, uint64_t off, uint64_t n,
		     const struct img_below *below)
{
	(void)below;
	return vhdx_w_zero(img->priv, off, n);
}

static int vhdx_flush(struct img *img)
{
	return vhdx_w_flush(img->priv);
}

const struct img_driver vhdx_driver = {
	.name = "vhdx",
	.desc = "Hyper-V VHDX (fixed, dynamic, differencing)",
	.probe = vhdx_probe,
	.open = vhdx_open,
	.close = vhdx_close,
	.parent = vhdx_parent,
	.map_extent = vhdx_map_extent,
	.read = vhdx_read,	/* blocks a log replay touched */
	.write = vhdx_write,
	.flush = vhdx_flush,
	.zero = vhdx_zero,
	.create_diff = vhdx_create_diff,
	.check = vhdx_check,		/* vhdx-check.c */
	.create = vhdx_create,		/* vhdx-create.c */
	.set_parent = vhdx_set_parent,	/* vhdx-parent.c */
	.info = vhdx_info,
};
