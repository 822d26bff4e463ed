// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * write.c: write an Android sparse image (version 1.0), block
 * after block, for `layerimg convert -O sparse`.
 *
 * The caller hands over runs of output blocks in increasing order: RAW
 * data, FILL runs (one repeated 32-bit value) and nothing at all for the
 * gaps, which become DONT_CARE chunks.  Neighbouring runs of the same kind
 * (and fill value) share a chunk; a RAW chunk is written in place (its
 * header slot reserved first, filled in when the chunk ends) and capped at
 * ASPARSE_W_RAW_MAX bytes.  The file header goes in last, with the chunk
 * count; no CRC32 chunk and no image checksum (both optional).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "asparse-writer.h"
#include "asparse.h"
#include "checked.h"
#include "endian-io.h"
#include "io.h"
#include "log.h"

#define ASPARSE_W_RAW_MAX (64u << 20)	/* bytes of data in one RAW chunk */

struct asparse_writer {
	char *path;		/* owned */
	int fd;			/* owned */
	uint32_t blk_sz;
	uint32_t total_blks;
	uint32_t nchunks;	/* chunks finished */
	uint64_t next_blk;	/* first block not yet described */
	uint64_t pos;		/* file offset of the next chunk */
	/* the chunk being built: type 0 for none */
	uint16_t type;
	uint32_t value;		/* FILL */
	uint32_t nblocks;
	uint64_t hdr_off;	/* RAW: the reserved header slot */
};

static int put_chunk_hdr(struct asparse_writer *w, uint64_t at, uint16_t type,
			 uint32_t nblocks, uint32_t total_sz)
{
	const struct asparse_chunk c = {
		.type = type, .nblocks = nblocks, .total_sz = total_sz,
	};
	uint8_t buf[ASPARSE_CHUNK_HDR_MIN];

	asparse_chunk_encode(&c, buf);
	return pwrite_full(w->fd, buf, sizeof(buf), at);
}

/* Write out the chunk being built, if any. */
static int finish_chunk(struct asparse_writer *w)
{
	uint8_t v[4];
	uint32_t data;
	int r = 0;

	switch (w->type) {
	case 0:
		return 0;
	case ASPARSE_CHUNK_RAW:
		data = w->nblocks * w->blk_sz;	/* <= ASPARSE_W_RAW_MAX */
		r = put_chunk_hdr(w, w->hdr_off, w->type, w->nblocks,
				  ASPARSE_CHUNK_HDR_MIN + data);
		break;
	case ASPARSE_CHUNK_FILL:
		r = put_chunk_hdr(w, w->pos, w->type, w->nblocks,
				  ASPARSE_CHUNK_HDR_MIN + 4);
		put_le32(v, w->value);
		if (r == 0)
			r = pwrite_full(w->fd, v, 4, w->pos + ASPARSE_CHUNK_HDR_MIN);
		if (r == 0)
			w->pos += ASPARSE_CHUNK_HDR_MIN + 4;
		break;
	case ASPARSE_CHUNK_DONT_CARE:
		r = put_chunk_hdr(w, w->pos, w->type, w->nblocks,
				  ASPARSE_CHUNK_HDR_MIN);
		if (r == 0)
			w->pos += ASPARSE_CHUNK_HDR_MIN;
		break;
	}
	if (r < 0)
		return log_err_ret(r, "asparse: %s: write: %s", w->path,
				   strerror(-r));
	w->nchunks++;
	w->type = 0;
	w->nblocks = 0;
	return 0;
}

/* Make the chunk being built one of type (and value); may finish one. */
static int want_chunk(struct asparse_writer *w, uint16_t type, uint32_t value)
{
	int r;

	if (w->type == type && (type != ASPARSE_CHUNK_FILL || w->value == value))
		return 0;
	r = finish_chunk(w);
	if (r < 0)
		return r;
	w->type = type;
	w->value = value;
	w->nblocks = 0;
	if (type == ASPARSE_CHUNK_RAW) {
		w->hdr_off = w->pos;
		w->pos += ASPARSE_CHUNK_HDR_MIN;
	}
	return 0;
}

/* Describe the blocks from next_blk up to blk as DONT_CARE. */
static int skip_to(struct asparse_writer *w, uint64_t blk)
{
	int r;

	if (blk < w->next_blk || blk > w->total_blks)
		return log_err_ret(-EINVAL, "asparse: %s: block %llu out of "
				   "order", w->path, (unsigned long long)blk);
	if (blk == w->next_blk)
		return 0;
	r = want_chunk(w, ASPARSE_CHUNK_DONT_CARE, 0);
	if (r < 0)
		return r;
	w->nblocks += (uint32_t)(blk - w->next_blk);
	w->next_blk = blk;
	return 0;
}

static int check_run(const struct asparse_writer *w, uint64_t blk,
		     uint64_t n)
{
	if (!range_within(blk, n, w->total_blks))
		return log_err_ret(-EINVAL, "asparse: %s: blocks %llu+%llu "
				   "past the end (%u)", w->path,
				   (unsigned long long)blk,
				   (unsigned long long)n, w->total_blks);
	return 0;
}

int asparse_writer_raw(struct asparse_writer *w, uint64_t blk,
		       const void *buf, uint64_t nblocks)
{
	const uint8_t *p = buf;
	uint32_t cap = ASPARSE_W_RAW_MAX / w->blk_sz;
	int r;

	r = check_run(w, blk, nblocks);
	if (r == 0)
		r = skip_to(w, blk);
	while (r == 0 && nblocks) {
		uint32_t k;

		r = want_chunk(w, ASPARSE_CHUNK_RAW, 0);
		if (r == 0 && w->nblocks == cap)
			r = finish_chunk(w);
		if (r == 0)
			r = want_chunk(w, ASPARSE_CHUNK_RAW, 0);
		if (r < 0)
			break;
		k = (uint32_t)MIN((uint64_t)(cap - w->nblocks), nblocks);
		r = pwrite_full(w->fd, p, (size_t)k * w->blk_sz, w->pos);
		if (r < 0)
			return log_err_ret(r, "asparse: %s: write: %s", w->path,
					   strerror(-r));
		w->pos += (uint64_t)k * w->blk_sz;
		w->nblocks += k;
		w->next_blk += k;
		p += (size_t)k * w->blk_sz;
		nblocks -= k;
	}
	return r;
}

int asparse_writer_fill(struct asparse_writer *w, uint64_t blk,
			uint32_t value, uint64_t nblocks)
{
	int r;

	r = check_run(w, blk, nblocks);
	if (r == 0)
		r = skip_to(w, blk);
	if (r == 0 && nblocks)
		r = want_chunk(w, ASPARSE_CHUNK_FILL, value);
	if (r < 0)
		return r;
	/* total_blks fits 32 bits, so the chunk's count does too */
	w->nblocks += (uint32_t)nblocks;
	w->next_blk += nblocks;
	return 0;
}

int asparse_writer_open(const char *path, uint64_t size, uint32_t blk_sz,
			struct asparse_writer **out)
{
	struct asparse_writer *w;

	if (blk_sz < 4 || blk_sz % 4 || blk_sz > ASPARSE_W_RAW_MAX ||
	    size % blk_sz)
		return log_err_ret(-EINVAL, "asparse: %s: size %llu is not a "
				   "multiple of the block size %u", path,
				   (unsigned long long)size, blk_sz);
	if (size / blk_sz > UINT32_MAX)
		return log_err_ret(-EFBIG, "asparse: %s: %llu bytes is too "
				   "large for %u-byte blocks", path,
				   (unsigned long long)size, blk_sz);
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->path = strdup(path);
	if (!w->path) {
		free(w);
		return -ENOMEM;
	}
	w->fd = file_create(path, "asparse");
	if (w->fd < 0) {
		int err = w->fd;

		free(w->path);
		free(w);
		return err;
	}
	w->blk_sz = blk_sz;
	w->total_blks = (uint32_t)(size / blk_sz);
	w->pos = ASPARSE_FILE_HDR_MIN;
	*out = w;
	return 0;
}

int asparse_writer_close(struct asparse_writer *w)
{
	struct asparse_header h = {
		.major = ASPARSE_MAJOR,
		.minor = 0,
		.file_hdr_sz = ASPARSE_FILE_HDR_MIN,
		.chunk_hdr_sz = ASPARSE_CHUNK_HDR_MIN,
		.image_checksum = 0,	/* optional; libsparse writes 0 too */
	};
	uint8_t buf[ASPARSE_FILE_HDR_MIN];
	int r;

	r = skip_to(w, w->total_blks);
	if (r == 0)
		r = finish_chunk(w);
	if (r < 0)
		return r;
	h.blk_sz = w->blk_sz;		/* the counts are final only now */
	h.total_blks = w->total_blks;
	h.total_chunks = w->nchunks;
	asparse_header_encode(&h, buf);
	r = pwrite_full(w->fd, buf, sizeof(buf), 0);
	if (r == 0 && ftruncate(w->fd, (off_t)w->pos) < 0)
		r = -errno;
	/* syncs and renames into place, or removes the temporary */
	r = file_create_end(w->fd, w->path, r, "asparse");
	w->fd = -1;
	return r;
}

void asparse_writer_free(struct asparse_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)		/* never closed: no file under the name */
		file_create_abort(w->fd);
	free(w->path);
	free(w);
}
