/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * asparse-writer.h: an Android sparse image written block after block, for
 * `layerimg convert -O sparse` (the format has no index, so it is written
 * as a stream, not through the driver's ->write).
 */
#ifndef LAYERFS_ASPARSE_WRITER_H
#define LAYERFS_ASPARSE_WRITER_H

#include <stdint.h>

struct asparse_writer;

/*
 * Create path (O_EXCL) for an output of size bytes in blk_sz-byte blocks
 * (a multiple of 4 dividing size; at most 2^32-1 blocks).  0 or -errno
 * (logged).
 */
int asparse_writer_open(const char *path, uint64_t size, uint32_t blk_sz,
			struct asparse_writer **out);
/*
 * Describe nblocks output blocks from block blk on: RAW data (buf holds
 * nblocks * blk_sz bytes) or a FILL of one 32-bit value (stored little-
 * endian, as it lies in the output).  Runs come in increasing order;
 * blocks skipped over become DONT_CARE.  0 or -errno (logged).
 */
int asparse_writer_raw(struct asparse_writer *w, uint64_t blk,
		       const void *buf, uint64_t nblocks);
int asparse_writer_fill(struct asparse_writer *w, uint64_t blk,
			uint32_t value, uint64_t nblocks);
/*
 * DONT_CARE to the end, the file header, fdatasync, and the file moves
 * into place under its name (file_create_end).  0 or -errno.
 */
int asparse_writer_close(struct asparse_writer *w);
/*
 * Free w; a file never closed is removed (it never had its name).  NULL
 * is a no-op.
 */
void asparse_writer_free(struct asparse_writer *w);

#endif
