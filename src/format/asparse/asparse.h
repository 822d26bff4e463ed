/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * asparse.h: Android sparse image layout (AOSP libsparse sparse_format.h,
 * version 1.0) and its pure decoders.
 *
 * A sparse file is a file header followed by total_chunks chunks, each a
 * chunk header and its data.  Chunks describe the output image in order,
 * block after block:
 *   RAW        chunk_sz * blk_sz bytes of data follow the header
 *   FILL       a 4-byte value follows; the blocks repeat it
 *   DONT_CARE  no data; the blocks are unspecified (zeros when expanded)
 *   CRC32      4 bytes follow: the CRC-32 of all output so far (no blocks)
 * Both header sizes are stored in the file header; a larger size than
 * version 1.0's (28 and 12 bytes) is skipped over.  All little-endian.
 */
#ifndef LAYERFS_ASPARSE_H
#define LAYERFS_ASPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ASPARSE_MAGIC 0xed26ff3aU
#define ASPARSE_MAJOR 1
#define ASPARSE_FILE_HDR_MIN 28
#define ASPARSE_CHUNK_HDR_MIN 12

#define ASPARSE_CHUNK_RAW 0xcac1
#define ASPARSE_CHUNK_FILL 0xcac2
#define ASPARSE_CHUNK_DONT_CARE 0xcac3
#define ASPARSE_CHUNK_CRC32 0xcac4

struct asparse_header_raw {	/* sparse_header_t, byte for byte */
	uint8_t magic[4];
	uint8_t major_version[2];	/* 1; a higher major is incompatible */
	uint8_t minor_version[2];	/* higher minors are compatible */
	uint8_t file_hdr_sz[2];		/* 28 in version 1.0 */
	uint8_t chunk_hdr_sz[2];	/* 12 in version 1.0 */
	uint8_t blk_sz[4];		/* a multiple of 4 */
	uint8_t total_blks[4];		/* blocks in the output image */
	uint8_t total_chunks[4];	/* chunks in this file */
	uint8_t image_checksum[4];	/* CRC-32 of the output; 0 if unset */
};
_Static_assert(sizeof(struct asparse_header_raw) == 28, "spec: 28 bytes");
_Static_assert(offsetof(struct asparse_header_raw, blk_sz) == 12, "spec");
_Static_assert(offsetof(struct asparse_header_raw, image_checksum) == 24,
	       "spec");

struct asparse_chunk_raw {	/* chunk_header_t, byte for byte */
	uint8_t chunk_type[2];
	uint8_t reserved1[2];
	uint8_t chunk_sz[4];		/* blocks in the output image */
	uint8_t total_sz[4];		/* bytes in the file, with the header */
};
_Static_assert(sizeof(struct asparse_chunk_raw) == 12, "spec: 12 bytes");
_Static_assert(offsetof(struct asparse_chunk_raw, total_sz) == 8, "spec");

struct asparse_header {
	uint16_t major, minor;
	uint16_t file_hdr_sz, chunk_hdr_sz;
	uint32_t blk_sz;
	uint32_t total_blks;
	uint32_t total_chunks;
	uint32_t image_checksum;	/* not checked (AOSP ignores it too) */
};

struct asparse_chunk {
	uint16_t type;			/* ASPARSE_CHUNK_* */
	uint32_t nblocks;		/* chunk_sz; 0 for CRC32 */
	uint32_t total_sz;		/* header + data, in the file */
	uint64_t data_sz;		/* bytes after the chunk header */
};

/* Why a decoder refused its input: a short phrase and the offending value. */
struct asparse_diag {
	const char *what;
	uint64_t val;
};

/*
 * Decode and validate the file header in buf (len >= 28).  0, or -EINVAL
 * (not a sparse image), -ENOTSUP (major version not 1), -EUCLEAN (bad
 * header or block size).  Silent; *d (may be NULL) says why it failed.
 */
int asparse_header_decode_diag(const uint8_t *buf, size_t len,
			       struct asparse_header *h,
			       struct asparse_diag *d);
int asparse_header_decode(const uint8_t *buf, size_t len,
			  struct asparse_header *h);

/*
 * Decode and validate one chunk header (len >= 12) against its file
 * header h: known type, and total_sz consistent with the type and size
 * (RAW: nblocks * blk_sz bytes of data; FILL and CRC32: 4; DONT_CARE: 0;
 * CRC32 covers no blocks).  0 or -EUCLEAN; silent, *d as above.
 */
int asparse_chunk_decode_diag(const uint8_t *buf, size_t len,
			      const struct asparse_header *h,
			      struct asparse_chunk *c, struct asparse_diag *d);
int asparse_chunk_decode(const uint8_t *buf, size_t len,
			 const struct asparse_header *h,
			 struct asparse_chunk *c);

/* ---- write.c: the streaming writer, declared in asparse-writer.h ---- */
#include "asparse-writer.h"

/* asparse-check.c: ->check, a structural check with the CRC32 chunks */
struct img;
struct img_check;
int asparse_check(struct img *img, bool repair, struct img_check *res);

#endif
