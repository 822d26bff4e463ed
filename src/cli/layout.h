/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * layout.h: a Windows OEM device layout (DeviceLayoutOEM.xml, namespace
 * http://schemas.microsoft.com/embedded/2004/10/ImageUpdate/v2), parsed
 * and checked, with every partition placed.  libxml2 is used only in
 * layout.c.
 */
#ifndef LAYERFS_CLI_LAYOUT_H
#define LAYERFS_CLI_LAYOUT_H

#include <stdbool.h>
#include <stdint.h>

#include "guid.h"

#define LAYOUT_NS "http://schemas.microsoft.com/embedded/2004/10/ImageUpdate/v2"
#define LAYOUT_SIZE_UNIT 131072u	/* SizeInBytes, TotalBytes multiple */
#define LAYOUT_ALIGN_DEFAULT (1u << 20)	/* without ByteAlignment */

enum layout_fs { LAYOUT_FS_NONE, LAYOUT_FS_NTFS, LAYOUT_FS_FAT,
		 LAYOUT_FS_FAT32 };

struct layout_part {
	char *name;		/* owned, UTF-8 */
	struct guid type;	/* text order */
	struct guid id;		/* text order; random when absent */
	enum layout_fs fs;
	uint64_t total_bytes;	/* 0: the rest of the store */
	uint64_t align;		/* bytes, LAYOUT_ALIGN_DEFAULT if absent */
	long line;		/* of the <Partition> element */
	/* placed by layout_load (LBAs of SectorSize bytes, inclusive) */
	uint64_t first_lba, last_lba;
};

struct layout_store {
	struct guid id;		/* text order; random when absent */
	char *type;		/* owned: StoreType, or NULL */
	char *device_path;	/* owned: DevicePath, or NULL */
	uint64_t size;		/* bytes: SizeInBytes, or computed */
	struct layout_part *parts;	/* owned array */
	unsigned nparts;
	long line;
};

struct layout {
	char *path;		/* owned: the file, as given */
	uint32_t sector_size;
	char *merge_version_tag;	/* owned, or NULL */
	char *update_by_os_tag;		/* owned, or NULL */
	struct layout_store *stores;	/* owned array */
	unsigned nstores;
};

/*
 * Read path and enforce the layout rules: SectorSize present, a power of
 * two and one of sector_sizes (0-terminated: what the output format
 * supports; fmt names it in the message); SizeInBytes and TotalBytes
 * multiples of 128 KiB; partition names present, unique, at most 36
 * characters (11 for FAT and FAT32); partition ids unique; only a store's
 * last partition may leave out TotalBytes (it takes the rest); every
 * partition, aligned to its ByteAlignment (1 MiB without one), fits
 * between the GPT's first and last usable LBA.  Each problem is logged
 * as "FILE:LINE: what"; -EINVAL for a bad layout, other -errno when the
 * file cannot be read.  *out is set on success only.
 */
int layout_load(const char *path, const uint32_t *sector_sizes,
		const char *fmt, struct layout **out);
void layout_free(struct layout *l);

const char *layout_fs_name(enum layout_fs fs);

#endif
