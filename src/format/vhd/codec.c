// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * codec.c: the VHD on-disk structures, decoded and encoded: the footer,
 * the dynamic header and its parent locators, BAT entries, the checksum,
 * the CHS geometry, time stamps, sector bitmaps and the parent locators'
 * texts (W2ru, W2ku, MacX) and unicode name.
 *
 * Pure: no I/O, no state, nothing logged (a decoder says why it refused
 * its input in a struct vhd_problem; the caller logs, naming the file).
 * The open path, the writer, create, set_parent and the checker all
 * decode and encode here; tests/unit/test-vhd.c runs it on byte arrays.
 *
 * All multi-byte fields are big-endian (spec: "Hard Disk Footer Format",
 * "Dynamic Disk Header Format"), except the W2ru/W2ku texts (UTF-16LE).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "utf16.h"
#include "vhd.h"

static int vhd_problem_set(struct vhd_problem *why, int err, const char *fmt,
			   ...) __printf(3, 4);

static int vhd_problem_set(struct vhd_problem *why, int err, const char *fmt,
			   ...)
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

/*
 * The cookie and the checksum a footer and a dynamic header start with:
 * no cookie is err (the caller's code), a checksum mismatch -EBADMSG.
 */
static int vhd_seal_check(const uint8_t *buf, size_t len, const char *cookie,
			  size_t csum_off, int err, struct vhd_problem *why)
{
	uint32_t stored, sum;

	if (memcmp(buf, cookie, 8) != 0)
		return vhd_problem_set(why, err, "no \"%s\" cookie (0x%016llx)",
				       cookie,
				       (unsigned long long)get_be64(buf));
	stored = get_be32(buf + csum_off);
	sum = vhd_checksum(buf, len, csum_off);
	if (stored != sum)
		return vhd_problem_set(why, -EBADMSG,
				       "checksum mismatch (stored 0x%08x, "
				       "computed 0x%08x)", stored, sum);
	return 0;
}

/* ---- footer ------------------------------------------------------------ */

size_t vhd_footer_locate(uint8_t *buf)
{
	if (!memcmp(buf, VHD_COOKIE, 8))
		return VHD_FOOTER_SIZE;
	if (!memcmp(buf + 1, VHD_COOKIE, 8)) {
		/* Virtual PC before 2004: a 511-byte footer */
		memmove(buf, buf + 1, VHD_FOOTER_OLD_SIZE);
		buf[VHD_FOOTER_OLD_SIZE] = 0;
		return VHD_FOOTER_OLD_SIZE;
	}
	return 0;
}

void vhd_footer_unpack(const uint8_t *buf, struct vhd_footer *f)
{
	const struct vhd_footer_raw *r = (const void *)buf; /* bytes only */

	f->features = get_be32(r->features);
	f->version = get_be32(r->version);
	f->data_offset = get_be64(r->data_offset);
	f->timestamp = get_be32(r->timestamp);
	f->creator_app = get_be32(r->creator_app);
	f->creator_ver = get_be32(r->creator_ver);
	f->creator_os = get_be32(r->creator_os);
	f->orig_size = get_be64(r->orig_size);
	f->cur_size = get_be64(r->cur_size);
	f->geometry = get_be32(r->geometry);
	f->disk_type = get_be32(r->disk_type);
	memcpy(f->uuid, r->uuid, sizeof(f->uuid));
	f->saved_state = r->saved_state;
}

int vhd_footer_decode(const uint8_t *buf, struct vhd_footer *f,
		      struct vhd_problem *why)
{
	struct vhd_footer d;
	int r = vhd_seal_check(buf, VHD_FOOTER_SIZE, VHD_COOKIE,
			       offsetof(struct vhd_footer_raw, checksum),
			       -EINVAL, why);

	if (r < 0)
		return r;
	vhd_footer_unpack(buf, &d);
	if (d.version >> 16 != 1)
		return vhd_problem_set(why, -ENOTSUP,
				       "unsupported version (0x%08x)",
				       d.version);
	if (d.disk_type < VHD_TYPE_FIXED || d.disk_type > VHD_TYPE_DIFF)
		return vhd_problem_set(why, -ENOTSUP,
				       "unsupported disk type (%u)",
				       d.disk_type);
	*f = d;
	return 0;
}

void vhd_footer_encode(const struct vhd_footer *f, uint8_t *buf)
{
	struct vhd_footer_raw *r = (void *)buf;	/* bytes only */

	memcpy(r->cookie, VHD_COOKIE, sizeof(r->cookie));
	put_be32(r->features, f->features);
	put_be32(r->version, f->version);
	put_be64(r->data_offset, f->data_offset);
	put_be32(r->timestamp, f->timestamp);
	put_be32(r->creator_app, f->creator_app);
	put_be32(r->creator_ver, f->creator_ver);
	put_be32(r->creator_os, f->creator_os);
	put_be64(r->orig_size, f->orig_size);
	put_be64(r->cur_size, f->cur_size);
	put_be32(r->geometry, f->geometry);
	put_be32(r->disk_type, f->disk_type);
	memcpy(r->uuid, f->uuid, sizeof(r->uuid));
	r->saved_state = f->saved_state;
	put_be32(r->checksum, vhd_checksum(buf, VHD_FOOTER_SIZE,
					   offsetof(struct vhd_footer_raw,
						    checksum)));
}

/*
 * What this driver writes into a new footer.  The creator application
 * decides how qemu sizes the disk (block/vpc.c): for the few creators it
 * knows to write the current size ("win " Hyper-V, "d2v " Disk2vhd,
 * "qem2" qemu with force_size, "CTXS", "tap") it takes the current size,
 * as Hyper-V, Windows, 7-Zip, libvhdi, VirtualBox and this driver always
 * do; for any other ("vpc ", its own "qemu", and "lyfs" too) it
 * multiplies out the CHS geometry, which falls short of most sizes (a
 * 256 MiB disk reads as 268369920 bytes and loses its backup GPT, 100 MiB
 * as 104761344).  Fixed and dynamic disks are written as "qem2": qemu's
 * own marker for "the current size is the disk size", on that list since
 * qemu gained force_size (qemu 7.2 of Debian 12 included).  So every
 * reader sees the size asked for, to the byte; the geometry is still the
 * spec's CHS calculation (only Virtual PC, which reads nothing else,
 * would see less).  Differencing disks keep "lyfs": qemu opens them
 * without their parent (not as the disk they are), and the readers of
 * differencing disks (7-Zip, libvhdi, Windows) use the current size.
 * tests/integration/t-vhd-qemu-size.sh checks it with qemu-img, 7zz and
 * libvhdi.
 */
void vhd_footer_new(struct vhd_footer *f, uint32_t type, uint64_t size,
		    uint32_t stamp, const uint8_t uuid[16])
{
	memset(f, 0, sizeof(*f));
	f->features = VHD_FEATURES_RESERVED;
	f->version = VHD_VERSION;
	f->data_offset = type == VHD_TYPE_FIXED ? UINT64_MAX : VHD_FOOTER_SIZE;
	f->timestamp = stamp;
	f->creator_app = get_be32(type == VHD_TYPE_DIFF ? VHD_CREATOR_APP
							: VHD_CREATOR_APP_BASE);
	f->creator_ver = VHD_VERSION;
	f->creator_os = get_be32(VHD_CREATOR_OS);
	f->orig_size = size;
	f->cur_size = size;
	f->geometry = vhd_chs_geometry(size);
	f->disk_type = type;
	memcpy(f->uuid, uuid, sizeof(f->uuid));
}

uint32_t vhd_chs_geometry(uint64_t size)
{
	uint64_t total = MIN(size / VHD_SECTOR, 65535ull * 16 * 255), cth;
	uint32_t spt, heads;

	if (total >= 65535ull * 16 * 63) {
		spt = 255;
		heads = 16;
		cth = total / spt;
	} else {
		spt = 17;
		cth = total / spt;
		heads = (uint32_t)MAX((cth + 1023) / 1024, (uint64_t)4);
		if (cth >= heads * 1024ull || heads > 16) {
			spt = 31;
			heads = 16;
			cth = total / spt;
		}
		if (cth >= heads * 1024ull) {
			spt = 63;
			heads = 16;
			cth = total / spt;
		}
	}
	return (uint32_t)(cth / heads) << 16 | heads << 8 | spt;
}

/* seconds since 2000-01-01 UTC, clamped to the field */
uint32_t vhd_time_encode(time_t t)
{
	if (t <= VHD_EPOCH)
		return 0;
	return (uint32_t)MIN((uint64_t)(t - VHD_EPOCH), (uint64_t)UINT32_MAX);
}

/* ---- dynamic header ---------------------------------------------------- */

int vhd_dyn_header_decode(const uint8_t *buf, struct vhd_dyn_header *h,
			  struct vhd_problem *why)
{
	const struct vhd_dyn_header_raw *r = (const void *)buf;
	struct vhd_dyn_header d;
	int err = vhd_seal_check(buf, VHD_DYN_HEADER_SIZE, VHD_DYN_COOKIE,
				 offsetof(struct vhd_dyn_header_raw, checksum),
				 -EUCLEAN, why);

	if (err < 0)
		return err;
	d.version = get_be32(r->version);
	if (d.version >> 16 != 1)
		return vhd_problem_set(why, -ENOTSUP,
				       "unsupported version (0x%08x)",
				       d.version);
	d.block_size = get_be32(r->block_size);
	if (d.block_size < VHD_SECTOR || !is_pow2(d.block_size))
		return vhd_problem_set(why, -EUCLEAN, "block size is not a "
				       "power of two >= 512 (%u)",
				       d.block_size);
	if (d.block_size > VHD_MAX_BLOCK_SIZE)
		return vhd_problem_set(why, -EFBIG, "block size too large "
				       "(%u)", d.block_size);
	d.max_table_entries = get_be32(r->max_table_entries);
	if (d.max_table_entries > VHD_MAX_BAT_ENTRIES)
		return vhd_problem_set(why, -EFBIG, "max table entries too "
				       "large (%u)", d.max_table_entries);
	d.data_offset = get_be64(r->data_offset);
	d.table_offset = get_be64(r->table_offset);
	memcpy(d.parent_uuid, r->parent_uuid, sizeof(d.parent_uuid));
	d.parent_timestamp = get_be32(r->parent_timestamp);
	memcpy(d.parent_name, r->parent_name, sizeof(d.parent_name));
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator_raw *l = &r->locators[i];

		d.locators[i].code = get_be32(l->code);
		d.locators[i].data_space = get_be32(l->data_space);
		d.locators[i].data_length = get_be32(l->data_length);
		d.locators[i].data_offset = get_be64(l->data_offset);
	}
	*h = d;
	return 0;
}

void vhd_dyn_header_encode(const struct vhd_dyn_header *h, uint8_t *buf)
{
	struct vhd_dyn_header_raw *r = (void *)buf;	/* bytes only */

	memcpy(r->cookie, VHD_DYN_COOKIE, sizeof(r->cookie));
	put_be64(r->data_offset, h->data_offset);
	put_be64(r->table_offset, h->table_offset);
	put_be32(r->version, h->version);
	put_be32(r->max_table_entries, h->max_table_entries);
	put_be32(r->block_size, h->block_size);
	memcpy(r->parent_uuid, h->parent_uuid, sizeof(r->parent_uuid));
	put_be32(r->parent_timestamp, h->parent_timestamp);
	memcpy(r->parent_name, h->parent_name, sizeof(r->parent_name));
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		struct vhd_locator_raw *l = &r->locators[i];

		put_be32(l->code, h->locators[i].code);
		put_be32(l->data_space, h->locators[i].data_space);
		put_be32(l->data_length, h->locators[i].data_length);
		put_be64(l->data_offset, h->locators[i].data_offset);
	}
	put_be32(r->checksum, vhd_checksum(buf, VHD_DYN_HEADER_SIZE,
					   offsetof(struct vhd_dyn_header_raw,
						    checksum)));
}

/* ---- BAT and sector bitmaps ---------------------------------------------- */

void vhd_bat_decode(const uint8_t *raw, uint64_t n, uint32_t *bat)
{
	for (uint64_t i = 0; i < n; i++)
		bat[i] = get_be32(raw + 4 * i);	/* may be in place */
}

void vhd_bat_encode(const uint32_t *bat, uint64_t n, uint8_t *raw)
{
	for (uint64_t i = 0; i < n; i++)
		put_be32(raw + 4 * i, bat[i]);
}

uint32_t vhd_bitmap_size(uint32_t block_size)
{
	uint32_t spb = block_size / VHD_SECTOR;

	/* one bit per sector, padded to a sector (spec: "Sector Bitmap") */
	return ((spb + 7) / 8 + VHD_SECTOR - 1) & ~(VHD_SECTOR - 1);
}

static inline bool vhd_bitmap_bit(const uint8_t *bm, uint64_t i)
{
	return (bm[i >> 3] >> (7 - (i & 7))) & 1;	/* MSB first */
}

uint64_t vhd_bitmap_run(const uint8_t *bm, uint64_t start, uint64_t max,
			bool *set)
{
	const bool state = vhd_bitmap_bit(bm, start);
	const uint8_t fill = state ? 0xff : 0x00;
	const uint64_t word = state ? UINT64_MAX : 0;
	uint64_t i = start, end = start + max;

	*set = state;
	while (i < end && (i & 7)) {	/* up to a byte boundary */
		if (vhd_bitmap_bit(bm, i) != state)
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
	while (i < end && vhd_bitmap_bit(bm, i) == state)
		i++;
	return i - start;
}

/* ---- parent locators and name -------------------------------------------- */

const char *vhd_locator_name(uint32_t code)
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

static int vhd_hex_digit(char c)
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
static int vhd_macx_decode(const uint8_t *d, size_t n, char **out,
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
		int hi = i + 2 < len ? vhd_hex_digit(s[i + 1]) : -1;
		int lo = i + 2 < len ? vhd_hex_digit(s[i + 2]) : -1;

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

int vhd_locator_decode(uint32_t code, const uint8_t *d, size_t n, char **out,
		       enum img_ref_kind *kind)
{
	*out = NULL;
	if (code == VHD_PLAT_MACX)
		return vhd_macx_decode(d, n, out, kind);
	if (code != VHD_PLAT_W2RU && code != VHD_PLAT_W2KU)
		return 0;
	*kind = code == VHD_PLAT_W2RU ? IMG_REF_RELATIVE : IMG_REF_ABSOLUTE;
	return utf16_to_utf8(d, n, false, out);
}

int vhd_parent_name_decode(const uint8_t *name, char **out)
{
	return utf16_to_utf8(name, VHD_PARENT_NAME_SIZE, true, out);
}

/* "sub/p.vhd" -> ".\sub\p.vhd"; "../p.vhd" -> "..\p.vhd" (as Windows) */
char *vhd_w2ru_encode(const char *rel)
{
	bool dotted = !strncmp(rel, "./", 2) || !strncmp(rel, "../", 3);
	char *t = malloc(strlen(rel) + 3), *o = t;

	if (!t)
		return NULL;
	if (!dotted) {
		*o++ = '.';
		*o++ = '\\';
	}
	for (const char *c = rel; *c; c++)
		*o++ = *c == '/' ? '\\' : *c;
	*o = '\0';
	return t;
}

int vhd_parent_refs_encode(const char *rel, const char *abs,
			   struct vhd_new_parent *np)
{
	const char *ref = rel ? rel : abs;
	const char *base;
	char *text = NULL;
	int r;

	memset(np, 0, sizeof(*np));
	if (!ref || (rel && rel[0] == '/'))
		return -EINVAL;
	base = strrchr(ref, '/') ? strrchr(ref, '/') + 1 : ref;
	r = utf8_to_utf16(base, true, &np->name, &np->name_len);
	if (r == 0 && np->name_len > VHD_PARENT_NAME_SIZE)
		r = -ENAMETOOLONG;	/* a 255-byte name fits */
	if (r == 0 && abs) {
		np->loc[np->nloc].code = VHD_PLAT_W2KU;
		r = utf8_to_utf16(abs, false, &np->loc[np->nloc].data,
				  &np->loc[np->nloc].len);
		np->nloc++;
	}
	if (r == 0 && rel) {
		text = vhd_w2ru_encode(rel);
		np->loc[np->nloc].code = VHD_PLAT_W2RU;
		r = text ? utf8_to_utf16(text, false, &np->loc[np->nloc].data,
					 &np->loc[np->nloc].len)
			 : -ENOMEM;
		np->nloc++;
	}
	for (unsigned i = 0; i < np->nloc && r == 0; i++)
		if (np->loc[i].len > VHD_MAX_LOCATOR_LEN)
			r = -ENAMETOOLONG;
	free(text);
	if (r < 0)
		vhd_new_parent_clear(np);
	return r;
}

void vhd_new_parent_clear(struct vhd_new_parent *np)
{
	for (unsigned i = 0; i < np->nloc; i++)
		free(np->loc[i].data);
	free(np->name);
	memset(np, 0, sizeof(*np));
}

void vhd_locators_place(struct vhd_dyn_header *h,
			const struct vhd_new_parent *np, uint64_t off)
{
	memset(h->locators, 0, sizeof(h->locators));
	for (unsigned i = 0; i < np->nloc; i++) {
		uint64_t space = (np->loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR;

		h->locators[i].code = np->loc[i].code;
		/* spec: sectors (Windows writes bytes; readers take both) */
		h->locators[i].data_space = (uint32_t)space;
		h->locators[i].data_length = (uint32_t)np->loc[i].len;
		h->locators[i].data_offset = off;
		off += space * VHD_SECTOR;
	}
}

/* ---- a new file ----------------------------------------------------------- */

int vhd_layout_encode(uint8_t **out, uint64_t *out_len, uint8_t *footer,
		      const struct vhd_footer *f, uint32_t bs,
		      const uint8_t parent_uuid[16], uint32_t pstamp,
		      const struct vhd_new_parent *np)
{
	const uint64_t size = f->cur_size;
	const uint64_t entries = size / bs + !!(size % bs);
	const uint64_t table = VHD_FOOTER_SIZE + VHD_DYN_HEADER_SIZE;
	const uint64_t pos_bat_end = table + ((entries * 4 + VHD_SECTOR - 1) &
					      ~(uint64_t)(VHD_SECTOR - 1));
	struct vhd_dyn_header h = { 0 };
	uint64_t pos = pos_bat_end;
	unsigned nloc = np ? np->nloc : 0;
	uint8_t *buf;

	for (unsigned i = 0; i < nloc; i++)
		pos += (np->loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR *
		       VHD_SECTOR;
	buf = calloc(1, (size_t)pos);
	if (!buf)
		return -ENOMEM;

	memset(footer, 0, VHD_FOOTER_SIZE);
	vhd_footer_encode(f, footer);
	memcpy(buf, footer, VHD_FOOTER_SIZE);

	h.data_offset = UINT64_MAX;	/* spec: unused */
	h.table_offset = table;
	h.version = VHD_VERSION;
	h.max_table_entries = (uint32_t)entries;
	h.block_size = bs;
	memcpy(h.parent_uuid, parent_uuid, sizeof(h.parent_uuid));
	h.parent_timestamp = pstamp;
	if (np) {
		memcpy(h.parent_name, np->name, np->name_len);
		vhd_locators_place(&h, np, pos_bat_end);
		for (unsigned i = 0; i < nloc; i++)
			memcpy(buf + h.locators[i].data_offset,
			       np->loc[i].data, np->loc[i].len);
	}
	vhd_dyn_header_encode(&h, buf + VHD_FOOTER_SIZE);
	/* all unused, and the padding to the sector too (as qemu) */
	memset(buf + table, 0xff, (size_t)(pos_bat_end - table));
	*out = buf;
	*out_len = pos;
	return 0;
}
