// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * open.c: the read side of the Android sparse driver (AOSP libsparse
 * format, version 1.0): probe, open, close, map_extent, read, and the chunk
 * walk and output stream that the checker (check.c) runs too.
 *
 * The format has no index: open walks every chunk once and builds a sorted
 * table of runs, one per chunk that covers blocks.  map_extent is then a
 * binary search.  Block states (sparse_format.h chunk types):
 *   RAW        DATA at the chunk's data offset in the file
 *   FILL       ZERO for a zero pattern, else DATA produced by ->read
 *   DONT_CARE  UNALLOC: "unspecified"; zeros at the bottom of a chain
 *   CRC32      no blocks: a checkpoint, verified at open
 *
 * CRC32 chunks hold the CRC-32 (zlib's) of all output before them,
 * DONT_CARE blocks counted as zeros (libsparse does the same).  Open
 * verifies every checkpoint in the first ASPARSE_CRC_MAX bytes of output by
 * streaming the output up to it; later checkpoints are skipped with one
 * warning, so opening a huge image stays bounded.  The header's
 * image_checksum is not checked (AOSP ignores it; writers leave it 0).
 *
 * The run table is immutable after open: map and read need no lock.
 *
 * Dependencies point one way: codec.c <- this file <- check.c, write.c.
 * The driver struct names the checker too, so it lives in driver.c, which
 * sees both sides; nothing here calls a check or write symbol.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "asparse.h"
#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"

#define ASPARSE_MAX_RUNS (1u << 22)	/* 4 Mi chunks: 128 MiB of table */
#define ASPARSE_CRC_MAX ((uint64_t)4 << 30)	/* CRC checks at open */
#define ASPARSE_CRC_BUF (1u << 20)
#define ASPARSE_RA_MIN 65536	/* read-ahead while walking chunk headers */
#define ASPARSE_RA_BUF (ASPARSE_RA_MIN + 4)	/* >= largest header + 4 */

int asparse_probe(const struct img_probe *p)
{
	if (p->head_len < 4 || get_le32(p->head) != ASPARSE_MAGIC)
		return 0;
	return 100;
}

/* The run holding output byte off (< size): the last run starting <= off. */
static size_t asparse_find(const struct asparse *s, uint64_t off)
{
	size_t lo = 0, hi = s->nruns;	/* runs[lo].start <= off < [hi] */

	assert(s->nruns && s->runs[0].start == 0);
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (s->runs[mid].start <= off)
			lo = mid;
		else
			hi = mid;
	}
	assert(off - s->runs[lo].start < s->runs[lo].len);
	return lo;
}

/* Produce output bytes [off, off + n) from any runs: RAW, FILL, zeros. */
static int asparse_output_read(struct img *img, const struct asparse *s,
			       uint8_t *buf, size_t n, uint64_t off)
{
	size_t i;

	if (!n)
		return 0;
	i = asparse_find(s, off);
	while (n) {
		const struct asparse_run *run = &s->runs[i];
		uint64_t in = off - run->start;
		size_t k = (size_t)MIN((uint64_t)n, run->len - in);
		int r;

		switch (run->type) {
		case ASPARSE_CHUNK_RAW:
			r = pread_full(img->fd, buf, k, run->data + in);
			if (r < 0) {
				log_err("asparse: %s: cannot read at %llu: %s",
					img->path,
					(unsigned long long)(run->data + in),
					strerror(-r));
				return r == -ENODATA ? -EIO : r;
			}
			break;
		case ASPARSE_CHUNK_FILL:
			asparse_fill_expand(buf, k, (uint32_t)run->data, off);
			break;
		default:	/* DONT_CARE: zeros when expanded */
			memset(buf, 0, k);
			break;
		}
		buf += k;
		off += k;
		n -= k;
		i++;
		assert(!n || i < s->nruns);
	}
	return 0;
}

/* Continue *crc over run (all of it): RAW read in pieces, FILL computed. */
static int asparse_run_crc(struct img *img, const struct asparse_run *run,
			   uint8_t *buf, uint32_t *crc)
{
	uint64_t done = 0;
	int r;

	if (run->type != ASPARSE_CHUNK_RAW) {	/* DONT_CARE: data is 0 */
		*crc = asparse_crc32_fill(*crc, (uint32_t)run->data, run->len);
		return 0;
	}
	while (done < run->len) {
		size_t n = (size_t)MIN((uint64_t)ASPARSE_CRC_BUF,
				       run->len - done);

		r = pread_full(img->fd, buf, n, run->data + done);
		if (r < 0) {
			log_err("asparse: %s: cannot read at %llu: %s",
				img->path,
				(unsigned long long)(run->data + done),
				strerror(-r));
			return r == -ENODATA ? -EIO : r;
		}
		*crc = asparse_crc32_update(*crc, buf, n);
		done += n;
	}
	return 0;
}

int asparse_crcs_verify(struct img *img, const struct asparse *s,
			const struct asparse_crc *cp, size_t ncp,
			uint64_t limit,
			int (*mismatch)(void *ctx, const struct asparse_crc *c,
					uint32_t computed),
			void *ctx)
{
	uint32_t crc = 0;
	uint8_t *buf;
	size_t i, run = 0;
	int r = 0;

	if (!ncp)
		return 0;
	buf = malloc(ASPARSE_CRC_BUF);
	if (!buf)
		return log_err_ret(-ENOMEM, "asparse: %s: out of memory",
				   img->path);
	for (i = 0; i < ncp; i++) {
		if (cp[i].pos > limit) {
			log_warn("asparse: %s: CRC32 chunks after %llu GiB not checked (%zu)",
				 img->path, (unsigned long long)(limit >> 30),
				 ncp - i);
			break;
		}
		/* a checkpoint lies between chunks: on a run boundary */
		while (run < s->nruns && s->runs[run].start < cp[i].pos) {
			assert(s->runs[run].start + s->runs[run].len <=
			       cp[i].pos);
			r = asparse_run_crc(img, &s->runs[run++], buf, &crc);
			if (r < 0)
				goto out;
		}
		if (crc != cp[i].value) {
			r = mismatch(ctx, &cp[i], crc);
			if (r < 0)
				goto out;
		}
	}
	DBG(FORMAT, "asparse: %s: %zu of %zu CRC32 chunks verified",
	    img->path, i, ncp);
out:
	free(buf);
	return r;
}

/* Read-ahead over the chunk headers, which are read in file order. */
struct asparse_ra {
	int fd;
	uint64_t file_size;
	uint8_t *buf;		/* owned, ASPARSE_RA_BUF bytes */
	uint64_t off;
	size_t len;
};

/* *p = file bytes [off, off + n); off + n <= file_size, n <= 65539. */
static int asparse_ra_get(struct asparse_ra *ra, uint64_t off, size_t n,
			  const uint8_t **p)
{
	if (off < ra->off || off + n > ra->off + ra->len) {
		size_t want = (size_t)MIN((uint64_t)MAX(n, ASPARSE_RA_MIN),
					  ra->file_size - off);
		int r;

		assert(n <= want && want <= ASPARSE_RA_BUF);
		ra->len = 0;
		r = pread_full(ra->fd, ra->buf, want, off);
		if (r < 0)
			return r;
		ra->off = off;
		ra->len = want;
	}
	*p = ra->buf + (off - ra->off);
	return 0;
}

/* Append one element of size sz to *arr (n used, *cap allocated). */
static int asparse_array_grow(void **arr, size_t n, size_t *cap, size_t sz)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 16;
	p = reallocarray(*arr, ncap, sz);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = ncap;
	return 0;
}

static int asparse_fault_set(struct asparse_fault *f, uint32_t i,
			     uint64_t pos, const struct asparse_diag *d)
{
	f->chunk = i;
	f->pos = pos;
	f->d = *d;
	return -EUCLEAN;
}

/* Record one decoded chunk (data inside the file) in s. */
static int asparse_chunk_add(struct asparse *s, uint32_t i, uint64_t pos,
			     const struct asparse_chunk *c, const uint8_t *p,
			     size_t *runs_cap, size_t *crcs_cap)
{
	const struct asparse_header *h = &s->h;
	int r;

	s->nchunks[ASPARSE_TYPE_INDEX(c->type)]++;
	if (c->type == ASPARSE_CHUNK_CRC32) {
		struct asparse_crc *cr;

		r = asparse_array_grow((void **)&s->crcs, s->ncrcs, crcs_cap,
				       sizeof(*s->crcs));
		if (r < 0)
			return r;
		cr = &s->crcs[s->ncrcs++];
		cr->pos = s->nblocks * h->blk_sz;
		cr->value = get_le32(p + h->chunk_hdr_sz);
		cr->chunk = i;
	} else if (c->nblocks) {
		struct asparse_run *run;

		r = asparse_array_grow((void **)&s->runs, s->nruns, runs_cap,
				       sizeof(*s->runs));
		if (r < 0)
			return r;
		run = &s->runs[s->nruns++];
		run->start = s->nblocks * h->blk_sz;
		run->len = (uint64_t)c->nblocks * h->blk_sz;
		run->type = c->type;
		if (c->type == ASPARSE_CHUNK_RAW)
			run->data = pos + h->chunk_hdr_sz;
		else if (c->type == ASPARSE_CHUNK_FILL)
			run->data = get_le32(p + h->chunk_hdr_sz);
		else
			run->data = 0;
	}
	s->nblocks += c->nblocks;
	return 0;
}

int asparse_chunks_walk(struct img *img, struct asparse *s,
			struct asparse_fault *f)
{
	const struct asparse_header *h = &s->h;
	struct asparse_ra ra = { .fd = img->fd, .file_size = img->file_size };
	size_t runs_cap = 0, crcs_cap = 0;
	uint64_t pos = h->file_hdr_sz;
	int r = 0;

	ra.buf = malloc(ASPARSE_RA_BUF);
	if (!ra.buf)
		return log_err_ret(-ENOMEM, "asparse: %s: out of memory",
				   img->path);
	for (uint32_t i = 0; i < h->total_chunks; i++) {
		struct asparse_diag d = { 0 };
		struct asparse_chunk c;
		const uint8_t *p;
		size_t need;

		s->end = pos;
		if (!range_within(pos, h->chunk_hdr_sz, img->file_size)) {
			d.what = "header lies past the end of the file";
			d.val = pos;
			r = asparse_fault_set(f, i, pos, &d);
			goto out;
		}
		/* the header, and the 4-byte value of FILL/CRC32 if present */
		need = (size_t)MIN((uint64_t)h->chunk_hdr_sz + 4,
				   img->file_size - pos);
		r = asparse_ra_get(&ra, pos, need, &p);
		if (r < 0) {
			log_err("asparse: %s: chunk %u: cannot read header: %s",
				img->path, i, strerror(-r));
			goto out;
		}
		r = asparse_chunk_decode_diag(p, need, h, &c, &d);
		if (r < 0) {
			r = asparse_fault_set(f, i, pos, &d);
			goto out;
		}
		if (!range_within(pos, c.total_sz, img->file_size)) {
			d.what = "data lies past the end of the file";
			d.val = pos + c.total_sz;
			r = asparse_fault_set(f, i, pos, &d);
			goto out;
		}
		if (c.nblocks > h->total_blks - s->nblocks) {
			d.what = "blocks beyond total_blks";
			d.val = s->nblocks + c.nblocks;
			r = asparse_fault_set(f, i, pos, &d);
			goto out;
		}
		r = asparse_chunk_add(s, i, pos, &c, p, &runs_cap, &crcs_cap);
		if (r < 0) {
			log_err("asparse: %s: out of memory (%u chunks)",
				img->path, h->total_chunks);
			goto out;
		}
		/* no overflow: pos + total_sz <= file_size was checked */
		pos += c.total_sz;
	}
	s->end = pos;
out:
	free(ra.buf);
	return r;
}

void asparse_state_clear(struct asparse *s)
{
	free(s->runs);
	free(s->crcs);
	s->runs = NULL;
	s->crcs = NULL;
	s->nruns = s->ncrcs = 0;
}

static void asparse_free(struct asparse *s)
{
	if (!s)
		return;
	asparse_state_clear(s);
	free(s);
}

static int asparse_crc_mismatch(void *ctx, const struct asparse_crc *c,
				uint32_t computed)
{
	const struct img *img = ctx;

	return log_err_ret(-EBADMSG,
			   "asparse: %s: chunk %u: CRC32 mismatch (stored 0x%08x, computed 0x%08x)",
			   img->path, c->chunk, c->value, computed);
}

int asparse_open(struct img *img)
{
	uint8_t hb[ASPARSE_FILE_HDR_MIN];
	struct asparse_diag d = { 0 };
	struct asparse_fault f = { 0 };
	struct asparse_header h;
	struct asparse *s = NULL;
	uint64_t size, max_chunks;
	int r;

	if (img->file_size < sizeof(hb))
		return log_err_ret(-EUCLEAN,
				   "asparse: %s: file too small for the header (%llu)",
				   img->path,
				   (unsigned long long)img->file_size);
	r = pread_full(img->fd, hb, sizeof(hb), 0);
	if (r < 0)
		return log_err_ret(r, "asparse: %s: cannot read header: %s",
				   img->path, strerror(-r));
	r = asparse_header_decode_diag(hb, sizeof(hb), &h, &d);
	if (r < 0)
		return log_err_ret(r, "asparse: %s: %s (%llu)", img->path,
				   d.what, (unsigned long long)d.val);
	if (h.file_hdr_sz > img->file_size)
		return log_err_ret(-EUCLEAN,
				   "asparse: %s: file header past end of file (%u)",
				   img->path, h.file_hdr_sz);
	if (MUL_OVERFLOW((uint64_t)h.total_blks, h.blk_sz, &size) ||
	    size > (uint64_t)INT64_MAX)
		return log_err_ret(-EFBIG,
				   "asparse: %s: image too large (%u blocks of %u)",
				   img->path, h.total_blks, h.blk_sz);
	/* each chunk takes at least a chunk header in the file */
	max_chunks = (img->file_size - h.file_hdr_sz) / h.chunk_hdr_sz;
	if (h.total_chunks > max_chunks)
		return log_err_ret(-EUCLEAN,
				   "asparse: %s: total_chunks more than the file can hold (%u)",
				   img->path, h.total_chunks);
	if (h.total_chunks > ASPARSE_MAX_RUNS)
		return log_err_ret(-EFBIG,
				   "asparse: %s: too many chunks (%u)", img->path,
				   h.total_chunks);

	s = calloc(1, sizeof(*s));
	if (!s)
		return log_err_ret(-ENOMEM, "asparse: %s: out of memory",
				   img->path);
	s->h = h;
	r = asparse_chunks_walk(img, s, &f);
	if (r == -EUCLEAN)
		log_err("asparse: %s: chunk %u: %s (%llu)", img->path, f.chunk,
			f.d.what, (unsigned long long)f.d.val);
	if (r < 0)
		goto fail;
	if (s->nblocks != h.total_blks) {
		r = log_err_ret(-EUCLEAN,
				"asparse: %s: chunks cover %llu blocks, not total_blks (%u)",
				img->path, (unsigned long long)s->nblocks,
				h.total_blks);
		goto fail;
	}
	if (s->end != img->file_size)
		DBG(FORMAT, "asparse: %s: %llu bytes after the last chunk",
		    img->path, (unsigned long long)(img->file_size - s->end));
	r = asparse_crcs_verify(img, s, s->crcs, s->ncrcs, ASPARSE_CRC_MAX,
				asparse_crc_mismatch, img);
	if (r < 0)
		goto fail;

	img->size = size;
	img->sector_size = 512;
	img->block_size = h.blk_sz;
	strcpy(img->subtype, "sparse");
	img->priv = s;
	DBG(FORMAT, "asparse: %s: v%u.%u, %u blocks of %u, %u chunks, %zu runs",
	    img->path, h.major, h.minor, h.total_blks, h.blk_sz,
	    h.total_chunks, s->nruns);
	return 0;
fail:
	asparse_free(s);
	return r;
}

void asparse_close(struct img *img)
{
	asparse_free(img->priv);
	img->priv = NULL;
}

int asparse_map_extent(struct img *img, uint64_t off, uint64_t len,
		       struct img_extent *ext)
{
	const struct asparse *s = img->priv;
	const struct asparse_run *run = &s->runs[asparse_find(s, off)];
	uint64_t in = off - run->start;

	ext->len = MIN(len, run->len - in);
	ext->fd = img->fd;
	ext->host_off = IMG_HOST_NONE;
	switch (run->type) {
	case ASPARSE_CHUNK_RAW:		/* CHUNK_TYPE_RAW: data in the file */
		ext->type = IMG_EXT_DATA;
		ext->host_off = run->data + in;
		break;
	case ASPARSE_CHUNK_FILL:	/* CHUNK_TYPE_FILL: a 4-byte pattern */
		ext->type = run->data ? IMG_EXT_DATA : IMG_EXT_ZERO;
		break;
	default:			/* CHUNK_TYPE_DONT_CARE: unspecified */
		ext->type = IMG_EXT_UNALLOC;
		break;
	}
	return 0;
}

int asparse_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct asparse *s = img->priv;

	if (off > img->size || n > img->size - off)
		return -EINVAL;
	return asparse_output_read(img, s, buf, n, off);
}
