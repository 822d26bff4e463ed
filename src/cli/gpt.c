// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * gpt.c: the bytes of a GUID partition table (UEFI specification, chapter
 * "GUID Partition Table (GPT) Disk Layout"), little-endian throughout,
 * GUIDs in the mixed-endian Windows layout (guid_to_le).
 *
 *   LBA 0        protective MBR: one entry of type 0xEE from LBA 1 over
 *                the whole disk (capped at 0xFFFFFFFF sectors), 0x55AA
 *   LBA 1        header (92 bytes, CRC-32 of the header and of the entries)
 *   LBA 2..      128 entries of 128 bytes (16 KiB)
 *   last-32..    backup entries (512-byte sectors: 32 LBAs; 4096: 4)
 *   last LBA     backup header (MyLBA and AlternateLBA swapped)
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian-io.h"
#include "gpt.h"
#include "utf16.h"

#define GPT_HEADER_SIZE 92u
#define GPT_REVISION 0x00010000u
#define GPT_ENTRIES_BYTES (GPT_ENTRIES * GPT_ENTRY_SIZE)

struct gpt_header_raw {
	uint8_t signature[8];		/* "EFI PART" */
	uint8_t revision[4];
	uint8_t header_size[4];
	uint8_t header_crc[4];		/* over header_size bytes, field 0 */
	uint8_t reserved[4];
	uint8_t my_lba[8];
	uint8_t alternate_lba[8];
	uint8_t first_usable[8];
	uint8_t last_usable[8];
	uint8_t disk_guid[16];
	uint8_t entries_lba[8];
	uint8_t nentries[4];
	uint8_t entry_size[4];
	uint8_t entries_crc[4];
};
_Static_assert(sizeof(struct gpt_header_raw) == GPT_HEADER_SIZE, "UEFI");

struct gpt_entry_raw {
	uint8_t type[16];
	uint8_t id[16];
	uint8_t first_lba[8];
	uint8_t last_lba[8];
	uint8_t attrs[8];
	uint8_t name[72];		/* UTF-16LE, zero padded */
};
_Static_assert(sizeof(struct gpt_entry_raw) == GPT_ENTRY_SIZE, "UEFI");

uint32_t gpt_crc32(const uint8_t *buf, size_t len)
{
	uint32_t c = 0xffffffffu;

	for (size_t i = 0; i < len; i++) {
		c ^= buf[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
	}
	return ~c;
}

/* LBAs the entry array takes */
static uint64_t entries_lbas(uint32_t ss)
{
	return (GPT_ENTRIES_BYTES + ss - 1) / ss;
}

int gpt_usable(uint32_t ss, uint64_t nsectors, uint64_t *first, uint64_t *last)
{
	uint64_t n = entries_lbas(ss);

	if (ss < 512 || nsectors < 2 * (2 + n) + 1)
		return -EINVAL;
	*first = 2 + n;
	*last = nsectors - 2 - n;
	return 0;
}

static void header_encode(uint8_t *buf, const struct gpt_disk *d,
			  uint64_t my, uint64_t alt, uint64_t first,
			  uint64_t last, uint64_t entries, uint32_t ecrc)
{
	struct gpt_header_raw *h = (void *)buf;	/* bytes only */

	memcpy(h->signature, "EFI PART", 8);
	put_le32(h->revision, GPT_REVISION);
	put_le32(h->header_size, GPT_HEADER_SIZE);
	put_le64(h->my_lba, my);
	put_le64(h->alternate_lba, alt);
	put_le64(h->first_usable, first);
	put_le64(h->last_usable, last);
	guid_to_le(&d->disk_id, h->disk_guid);
	put_le64(h->entries_lba, entries);
	put_le32(h->nentries, GPT_ENTRIES);
	put_le32(h->entry_size, GPT_ENTRY_SIZE);
	put_le32(h->entries_crc, ecrc);
	put_le32(h->header_crc, gpt_crc32(buf, GPT_HEADER_SIZE));
}

static int entries_encode(uint8_t *buf, const struct gpt_disk *d,
			  uint64_t first, uint64_t last)
{
	uint64_t prev_end = 0;

	if (d->nparts > GPT_ENTRIES)
		return -EINVAL;
	for (unsigned i = 0; i < d->nparts; i++) {
		const struct gpt_part *p = &d->parts[i];
		struct gpt_entry_raw *e = (void *)(buf + i * GPT_ENTRY_SIZE);
		uint8_t *u = NULL;
		size_t ulen = 0;

		if (p->first_lba < first || p->last_lba > last ||
		    p->first_lba > p->last_lba ||
		    (i && p->first_lba <= prev_end))
			return -EINVAL;
		prev_end = p->last_lba;
		if (p->name && *p->name) {
			if (utf8_to_utf16(p->name, false, &u, &ulen) < 0)
				return -EINVAL;
			if (ulen > sizeof(e->name)) {
				free(u);
				return -EINVAL;
			}
			memcpy(e->name, u, ulen);
			free(u);
		}
		guid_to_le(&p->type, e->type);
		guid_to_le(&p->id, e->id);
		put_le64(e->first_lba, p->first_lba);
		put_le64(e->last_lba, p->last_lba);
		put_le64(e->attrs, p->attrs);
	}
	return 0;
}

int gpt_build(const struct gpt_disk *d, struct gpt_image *out)
{
	const uint32_t ss = d->sector_size;
	const uint64_t nent = entries_lbas(ss);
	uint64_t first, last, lastlba = d->nsectors - 1;
	uint8_t *pri = NULL, *bak = NULL, *mbr;
	size_t plen, blen;
	uint32_t ecrc;
	int r;

	r = gpt_usable(ss, d->nsectors, &first, &last);
	if (r < 0)
		return r;
	plen = (size_t)((2 + nent) * ss);
	blen = (size_t)((1 + nent) * ss);
	pri = calloc(1, plen);
	bak = calloc(1, blen);
	if (!pri || !bak) {
		r = -ENOMEM;
		goto fail;
	}
	r = entries_encode(pri + 2 * ss, d, first, last);
	if (r < 0)
		goto fail;
	ecrc = gpt_crc32(pri + 2 * ss, GPT_ENTRIES_BYTES);
	memcpy(bak, pri + 2 * ss, GPT_ENTRIES_BYTES);

	/* protective MBR: one partition record at 446 */
	mbr = pri;
	mbr[446 + 1] = 0x00;		/* CHS start 0/0/2 */
	mbr[446 + 2] = 0x02;
	mbr[446 + 3] = 0x00;
	mbr[446 + 4] = 0xee;		/* GPT protective */
	mbr[446 + 5] = 0xff;		/* CHS end: all ones */
	mbr[446 + 6] = 0xff;
	mbr[446 + 7] = 0xff;
	put_le32(mbr + 446 + 8, 1);
	put_le32(mbr + 446 + 12, d->nsectors - 1 > 0xffffffffu ?
				 0xffffffffu : (uint32_t)(d->nsectors - 1));
	mbr[510] = 0x55;
	mbr[511] = 0xaa;

	header_encode(pri + ss, d, 1, lastlba, first, last, 2, ecrc);
	header_encode(bak + nent * ss, d, lastlba, 1, first, last,
		      lastlba - nent, ecrc);
	out->primary = pri;
	out->primary_len = plen;
	out->backup = bak;
	out->backup_len = blen;
	out->backup_off = (lastlba - nent) * ss;
	return 0;
fail:
	free(pri);
	free(bak);
	return r;
}

void gpt_image_free(struct gpt_image *img)
{
	free(img->primary);
	free(img->backup);
	img->primary = img->backup = NULL;
}
