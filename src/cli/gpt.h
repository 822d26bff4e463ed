/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * gpt.h: building a GUID partition table (UEFI 2.x, "GUID Partition
 * Table (GPT) Disk Layout") for layerimg create --layout.
 *
 * The table has the usual 128 entries of 128 bytes: the primary copy is
 * the protective MBR (LBA 0), the header (LBA 1) and the entries from LBA
 * 2; the backup is the entries and then the header in the last LBA.  Only
 * bytes are built here; the caller writes them (through a format driver).
 */
#ifndef LAYERFS_CLI_GPT_H
#define LAYERFS_CLI_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "guid.h"

#define GPT_ENTRIES 128u
#define GPT_ENTRY_SIZE 128u
#define GPT_NAME_UNITS 36u	/* UTF-16 code units in an entry's name */

struct gpt_part {
	uint64_t first_lba, last_lba;	/* inclusive */
	struct guid type;		/* text order */
	struct guid id;			/* text order */
	uint64_t attrs;
	const char *name;		/* borrowed, UTF-8, <= 36 UTF-16 units */
};

struct gpt_disk {
	uint32_t sector_size;		/* 512 or 4096 */
	uint64_t nsectors;		/* of the whole disk */
	struct guid disk_id;		/* text order */
	unsigned nparts;		/* <= GPT_ENTRIES */
	const struct gpt_part *parts;	/* borrowed, in entry order */
};

/* The bytes to write: primary at offset 0, backup at backup_off. */
struct gpt_image {
	uint8_t *primary;	/* owned: LBA 0 up to the first usable LBA */
	size_t primary_len;
	uint8_t *backup;	/* owned: the backup entries and header */
	size_t backup_len;
	uint64_t backup_off;
};

/* First and last LBA partitions may use on a disk of nsectors (0: too small) */
int gpt_usable(uint32_t sector_size, uint64_t nsectors, uint64_t *first,
	       uint64_t *last);
/*
 * Build the table.  Every partition must lie inside the usable LBAs, in
 * order and without overlaps (checked: -EINVAL, not logged); a name that
 * is not UTF-8 or longer than 36 units: -EINVAL.  0 or -errno.
 */
int gpt_build(const struct gpt_disk *d, struct gpt_image *out);
void gpt_image_free(struct gpt_image *img);

/* CRC-32 (ISO-HDLC, as the GPT uses), exposed for the tests */
uint32_t gpt_crc32(const uint8_t *buf, size_t len);

#endif
