/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * asparse.h: private to src/format/asparse/: the Android sparse image
 * layout (AOSP libsparse sparse_format.h, version 1.0), the codec, and what
 * the read side shares with the checker and the driver struct.
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
	uint32_t image_checksum;	/* 0: none; open ignores it, as AOSP */
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

/* ---- codec.c: pure decode and encode, no I/O, no state ---- */

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
/* Encode h into buf[0..28); a padded header's tail is the caller's. */
void asparse_header_encode(const struct asparse_header *h, uint8_t *buf);

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
/* Encode type, nblocks and total_sz into buf[0..12); reserved1 is 0. */
void asparse_chunk_encode(const struct asparse_chunk *c, uint8_t *buf);

/*
 * The format's CRC-32 (zlib's: reflected 0xedb88320, as libsparse),
 * continued from crc over n bytes; start with 0.
 */
uint32_t asparse_crc32_update(uint32_t crc, const void *buf, size_t n);
/*
 * The same, continued over n bytes (a multiple of 4) of a FILL value's
 * expansion from a block boundary (value 0: DONT_CARE, zeros), without
 * expanding it: O(log n) CRC combinations, so a few bytes of file that
 * describe terabytes of output cost no more than they are.
 */
uint32_t asparse_crc32_fill(uint32_t crc, uint32_t value, uint64_t n);
/* Expand a FILL value into buf[0..n): output bytes from offset off on. */
void asparse_fill_expand(uint8_t *buf, size_t n, uint32_t value,
			 uint64_t off);

/* ---- open.c: the read side (the walk, the output stream) ---- */

struct img;

struct asparse_run {		/* one chunk that covers output blocks */
	uint64_t start;		/* first byte in the output image */
	uint64_t len;		/* bytes, > 0 */
	uint64_t data;		/* RAW: file offset; FILL: the LE32 value */
	uint16_t type;		/* ASPARSE_CHUNK_RAW/FILL/DONT_CARE */
};

#define ASPARSE_CRC_IMAGE UINT32_MAX	/* asparse_crc.chunk: image_checksum */

struct asparse_crc {		/* a CRC32 chunk: a checkpoint in the output */
	uint64_t pos;		/* output bytes before it */
	uint32_t value;
	uint32_t chunk;		/* chunk index, for messages */
};

/* Index of a chunk type in asparse.nchunks[]: RAW 0 .. CRC32 3. */
#define ASPARSE_TYPE_INDEX(t) ((unsigned)(t) - ASPARSE_CHUNK_RAW)

/* An image's chunks, as one walk found them; immutable after open. */
struct asparse {
	struct asparse_header h;
	struct asparse_run *runs;	/* owned; contiguous from 0 */
	size_t nruns;
	struct asparse_crc *crcs;	/* owned; CRC32 chunks, file order */
	size_t ncrcs;
	uint32_t nchunks[4];	/* chunks walked, by ASPARSE_TYPE_INDEX */
	uint64_t nblocks;	/* output blocks the walked chunks cover */
	uint64_t end;		/* file offset after the last chunk walked */
};

/* Where a chunk walk stopped, and why. */
struct asparse_fault {
	uint32_t chunk;		/* index of the bad chunk */
	uint64_t pos;		/* its file offset */
	struct asparse_diag d;
};

/*
 * Walk the chunks of img (s->h decoded, the rest of *s zeroed) once and
 * fill s: every chunk header decoded and inside the file, the data inside
 * the file, no more blocks than total_blks (that they add up to it is the
 * caller's rule).  0; -EUCLEAN at the first bad chunk, with *f filled,
 * silent, and s holding the chunks before it; other -errno (logged).
 */
int asparse_chunks_walk(struct img *img, struct asparse *s,
			struct asparse_fault *f);
/* Free what a walk allocated in s (not s itself). */
void asparse_state_clear(struct asparse *s);

/*
 * Compute the CRC-32 of the output (DONT_CARE as zeros, as libsparse counts
 * it; RAW data read, FILL and DONT_CARE runs computed without expanding
 * them) up to each checkpoint of cp[0..ncp) (in output order, on run
 * boundaries, inside the runs) and compare it: mismatch(ctx, checkpoint,
 * computed) is called for each one that differs, and a < 0 from it stops
 * the walk.  Checkpoints past limit output bytes are skipped with one
 * warning.  0, or the first < 0 of mismatch, or -errno (logged).
 */
int asparse_crcs_verify(struct img *img, const struct asparse *s,
			const struct asparse_crc *cp, size_t ncp,
			uint64_t limit,
			int (*mismatch)(void *ctx, const struct asparse_crc *c,
					uint32_t computed),
			void *ctx);

/* ---- the driver's hooks, named by the driver struct in driver.c ---- */
struct img_check;
struct img_extent;
struct img_info;
struct img_probe;
/* open.c: the read side */
int asparse_probe(const struct img_probe *p);
int asparse_open(struct img *img);
void asparse_close(struct img *img);
int asparse_map_extent(struct img *img, uint64_t off, uint64_t len,
		       struct img_extent *ext);
int asparse_read(struct img *img, void *buf, size_t n, uint64_t off);
/* check.c, info.c */
int asparse_check(struct img *img, bool repair, struct img_check *res);
int asparse_info(struct img *img, struct img_info *out);

/* write.c, the streaming writer, is declared in asparse-writer.h. */

#endif
