/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * part.h: the partitions of a chain's flat disk, found with libblkid.
 *
 * part_scan reads what libblkid needs through chain_pread (the partition
 * table areas, EBR chains, the start of each partition) into a sparse
 * private copy and lets libblkid parse it, so neither the daemon nor the
 * CLI ever probes through FUSE.  A partition is only a window
 * [start, start + size) onto the chain.  libblkid is used only in
 * src/part/.
 */
#ifndef LAYERFS_PART_H
#define LAYERFS_PART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chain.h"

struct part {
	unsigned number;	/* as the kernel numbers them: 1-4 primary
				 * (MBR) or table order (GPT), 5+ logical */
	uint64_t start;		/* bytes from the disk start */
	uint64_t size;		/* bytes; start + size <= disk size */
	char type[40];		/* MBR "0x83", or GPT type GUID (lower case) */
	char name[144];		/* GPT partition name in UTF-8, "" if none */
	char uuid[40];		/* GPT partition GUID, MBR "SSSSSSSS-NN", "" */
	char fstype[32];	/* filesystem libblkid sees inside, "" if none */
	char label[128];	/* its label, "" if none */
	bool container;		/* MBR extended partition (holds logicals) */
};

/*
 * What part_scan reads of each partition to find its file system: the
 * first MiB and the last 64 KiB.  A write there can change a label.
 */
#define PART_FS_HEAD ((uint64_t)1 << 20)
#define PART_FS_TAIL ((uint64_t)64 << 10)

struct part_range {
	uint64_t off, len;
};

struct part_table {
	char type[8];		/* "gpt", "dos", or "" when there is none */
	char id[40];		/* GPT disk GUID or MBR disk signature */
	uint32_t sector_size;	/* logical sector size used for the probe */
	size_t nparts;
	struct part *parts;	/* owned, by number */
	/* byte ranges of the disk whose change can change the table: the
	 * MBR/GPT headers and entries (primary and backup), every EBR */
	size_t nwatch;
	struct part_range *watch; /* owned */
};

/*
 * Probe chain c's flat disk with c->sector_size as the logical sector size.
 * A disk without a (valid) table gives a table with type "" and no
 * partitions.  Partitions that do not fit the disk are dropped with a
 * warning naming the chain.  0 or -errno (I/O error, no memory).
 */
int part_scan(struct chain *c, struct part_table **out);
void part_table_free(struct part_table *t);
/* true if [off, off + len) overlaps a watched range of t */
bool part_table_touches(const struct part_table *t, uint64_t off, uint64_t len);
/* true if [off, off + len) overlaps what part_scan probes of a partition
 * for its file system type and label (PART_FS_HEAD, PART_FS_TAIL) */
bool part_table_touches_fs(const struct part_table *t, uint64_t off,
			   uint64_t len);

#endif
