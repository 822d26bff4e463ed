// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * asparse.c: Android sparse images (AOSP libsparse format, version 1.0).
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

struct asparse_run {
	uint64_t start;		/* first byte in the output image */
	uint64_t len;		/* bytes, > 0 */
	uint64_t data;		/* RAW: file offset; FILL: the LE32 value */
	uint16_t type;		/* ASPARSE_CHUNK_RAW/FILL/DONT_CARE */
};

struct asparse {
	struct asparse_header h;
	struct asparse_run *runs;	/* owned; contiguous, cover [0, size) */
	size_t nruns;
};

struct asparse_crc {		/* a CRC32 chunk: a checkpoint in the output */
	uint64_t pos;		/* output bytes before it */
	uint32_t value;
	uint32_t chunk;		/* chunk index, for messages */
};

static void diag(struct asparse_diag *d, const char *what, uint64_t val)
{
	if (d) {
		d->what = what;
		d->val = val;
	}
}

int asparse_header_decode_diag(const uint8_t *buf, size_t len,
			       struct asparse_header *h,
			       struct asparse_diag *d)
{
	const struct asparse_header_raw *r = (const void *)buf; /* bytes only */
	struct asparse_header v;

	if (len < sizeof(*r)) {
		diag(d, "file header too short", len);
		return -EINVAL;
	}
	if (get_le32(r->magic) != ASPARSE_MAGIC) {
		diag(d, "bad magic", get_le32(r->magic));
		return -EINVAL;
	}
	v.major = get_le16(r->major_version);
	v.minor = get_le16(r->minor_version);	/* minors are compatible */
	if (v.major != ASPARSE_MAJOR) {
		diag(d, "unsupported major version", v.major);
		return -ENOTSUP;
	}
	v.file_hdr_sz = get_le16(r->file_hdr_sz);
	if (v.file_hdr_sz < ASPARSE_FILE_HDR_MIN) {
		diag(d, "file_hdr_sz too small", v.file_hdr_sz);
		return -EUCLEAN;
	}
	v.chunk_hdr_sz = get_le16(r->chunk_hdr_sz);
	if (v.chunk_hdr_sz < ASPARSE_CHUNK_HDR_MIN) {
		diag(d, "chunk_hdr_sz too small", v.chunk_hdr_sz);
		return -EUCLEAN;
	}
	v.blk_sz = get_le32(r->blk_sz);
	if (v.blk_sz == 0 || v.blk_sz % 4) {
		diag(d, "blk_sz not a non-zero multiple of 4", v.blk_sz);
		return -EUCLEAN;
	}
	v.total_blks = get_le32(r->total_blks);
	v.total_chunks = get_le32(r->total_chunks);
	v.image_checksum = get_le32(r->image_checksum);
	*h = v;
	return 0;
}

int asparse_header_decode(const uint8_t *buf, size_t len,
			  struct asparse_header *h)
{
	return asparse_header_decode_diag(buf, len, h, NULL);
}

int asparse_chunk_decode_diag(const uint8_t *buf, size_t len,
			      const struct asparse_header *h,
			      struct asparse_chunk *c, struct asparse_diag *d)
{
	const struct asparse_chunk_raw *r = (const void *)buf; /* bytes only */
	struct asparse_chunk v;
	uint64_t want;

	if (len < sizeof(*r)) {
		diag(d, "chunk header too short", len);
		return -EINVAL;
	}
	v.type = get_le16(r->chunk_type);
	v.nblocks = get_le32(r->chunk_sz);
	v.total_sz = get_le32(r->total_sz);
	switch (v.type) {
	case ASPARSE_CHUNK_RAW:
		/* u32 * u32 fits in u64; + u16 cannot wrap */
		want = (uint64_t)v.nblocks * h->blk_sz + h->chunk_hdr_sz;
		if (v.total_sz != want) {
			diag(d, "RAW chunk total_sz does not match its blocks",
			     v.total_sz);
			return -EUCLEAN;
		}
		break;
	case ASPARSE_CHUNK_FILL:
		if (v.total_sz != (uint64_t)h->chunk_hdr_sz + 4) {
			diag(d, "FILL chunk total_sz is not header + 4",
			     v.total_sz);
			return -EUCLEAN;
		}
		break;
	case ASPARSE_CHUNK_DONT_CARE:
		if (v.total_sz != h->chunk_hdr_sz) {
			diag(d, "DONT_CARE chunk has data", v.total_sz);
			return -EUCLEAN;
		}
		break;
	case ASPARSE_CHUNK_CRC32:
		if (v.total_sz != (uint64_t)h->chunk_hdr_sz + 4) {
			diag(d, "CRC32 chunk total_sz is not header + 4",
			     v.total_sz);
			return -EUCLEAN;
		}
		if (v.nblocks) {
			diag(d, "CRC32 chunk covers blocks", v.nblocks);
			return -EUCLEAN;
		}
		break;
	default:
		diag(d, "unknown chunk type", v.type);
		return -EUCLEAN;
	}
	v.data_sz = v.total_sz - h->chunk_hdr_sz;
	*c = v;
	return 0;
}

int asparse_chunk_decode(const uint8_t *buf, size_t len,
			 const struct asparse_header *h,
			 struct asparse_chunk *c)
{
	return asparse_chunk_decode_diag(buf, len, h, c, NULL);
}

static int asparse_probe(const struct img_probe *p)
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

/* The 4-byte pattern of value, phase from the output offset off. */
static void asparse_fill(uint8_t *buf, size_t n, uint32_t value, uint64_t off)
{
	uint8_t pat[4];
	size_t done;

	put_le32(pat, value);
	for (done = 0; done < n && done < 4; done++)
		buf[done] = pat[(off + done) % 4];
	while (done < n) {	/* done is a multiple of 4: the phase holds */
		size_t k = MIN(done, n - done);

		memcpy(buf + done, buf, k);
		done += k;
	}
}

/* Produce output bytes [off, off + n) from any runs: RAW, FILL, zeros. */
static int asparse_produce(struct img *img, const struct asparse *s,
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
			asparse_fill(buf, k, (uint32_t)run->data, off);
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

static int asparse_crc_mismatch(const struct img *img,
				const struct asparse_crc *c, uint32_t computed)
{
	return log_err_ret(-EBADMSG,
			   "asparse: %s: chunk %u: CRC32 mismatch (stored 0x%08x, computed 0x%08x)",
			   img->path, c->chunk, c->value, computed);
}

/* Stream the output up to each checkpoint and compare its CRC-32. */
static int asparse_check_crcs(struct img *img, const struct asparse *s,
			      const struct asparse_crc *cp, size_t ncp)
{
	uLong crc = crc32(0L, Z_NULL, 0);
	uint64_t done = 0;
	uint8_t *buf;
	size_t i;
	int r = 0;

	if (!ncp)
		return 0;
	buf = malloc(ASPARSE_CRC_BUF);
	if (!buf)
		return -ENOMEM;
	for (i = 0; i < ncp; i++) {
		if (cp[i].pos > ASPARSE_CRC_MAX) {
			log_warn("asparse: %s: CRC32 chunks after 4 GiB not checked (%zu)",
				 img->path, ncp - i);
			break;
		}
		while (done < cp[i].pos) {
			size_t n = (size_t)MIN((uint64_t)ASPARSE_CRC_BUF,
					       cp[i].pos - done);

			r = asparse_produce(img, s, buf, n, done);
			if (r < 0)
				goto out;
			crc = crc32_z(crc, buf, n);
			done += n;
		}
		if ((uint32_t)crc != cp[i].value) {
			r = asparse_crc_mismatch(img, &cp[i], (uint32_t)crc);
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

static int asparse_add_crc(struct asparse_crc **cp, size_t *ncp, size_t *cap,
			   const struct asparse_crc *c)
{
	if (*ncp == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct asparse_crc *n = reallocarray(*cp, ncap, sizeof(**cp));

		if (!n)
			return -ENOMEM;
		*cp = n;
		*cap = ncap;
	}
	(*cp)[(*ncp)++] = *c;
	return 0;
}

static int asparse_chunk_err(const struct img *img, uint32_t i, int err,
			     const char *what, uint64_t val)
{
	return log_err_ret(err, "asparse: %s: chunk %u: %s (%llu)", img->path,
			   i, what, (unsigned long long)val);
}

/* Walk all chunks once: fill s->runs and the CRC checkpoints. */
static int asparse_walk(struct img *img, struct asparse *s,
			struct asparse_crc **cp, size_t *ncp)
{
	const struct asparse_header *h = &s->h;
	struct asparse_ra ra = { .fd = img->fd, .file_size = img->file_size };
	uint64_t pos = h->file_hdr_sz, blk = 0;
	size_t cap = 0;
	int r = 0;

	ra.buf = malloc(ASPARSE_RA_BUF);
	if (!ra.buf)
		return -ENOMEM;
	for (uint32_t i = 0; i < h->total_chunks; i++) {
		struct asparse_diag d = { 0 };
		struct asparse_chunk c;
		const uint8_t *p;
		size_t need;

		if (!range_within(pos, h->chunk_hdr_sz, img->file_size)) {
			r = asparse_chunk_err(img, i, -EUCLEAN,
					      "header past end of file", pos);
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
			asparse_chunk_err(img, i, r, d.what, d.val);
			goto out;
		}
		if (!range_within(pos, c.total_sz, img->file_size)) {
			r = asparse_chunk_err(img, i, -EUCLEAN,
					      "data past end of file",
					      pos + c.total_sz);
			goto out;
		}
		if (c.nblocks > h->total_blks - blk) {
			r = asparse_chunk_err(img, i, -EUCLEAN,
					      "blocks beyond total_blks",
					      blk + c.nblocks);
			goto out;
		}
		if (c.type == ASPARSE_CHUNK_CRC32) {
			struct asparse_crc cr = {
				.pos = blk * h->blk_sz,
				.value = get_le32(p + h->chunk_hdr_sz),
				.chunk = i,
			};

			r = asparse_add_crc(cp, ncp, &cap, &cr);
			if (r < 0)
				goto out;
		} else if (c.nblocks) {
			struct asparse_run *run = &s->runs[s->nruns++];

			assert(s->nruns <= h->total_chunks);
			run->start = blk * h->blk_sz;
			run->len = (uint64_t)c.nblocks * h->blk_sz;
			run->type = c.type;
			if (c.type == ASPARSE_CHUNK_RAW)
				run->data = pos + h->chunk_hdr_sz;
			else if (c.type == ASPARSE_CHUNK_FILL)
				run->data = get_le32(p + h->chunk_hdr_sz);
			else
				run->data = 0;
		}
		/* no overflow: pos + total_sz <= file_size was checked */
		pos += c.total_sz;
		blk += c.nblocks;
	}
	if (blk != h->total_blks) {
		r = log_err_ret(-EUCLEAN,
				"asparse: %s: chunks cover %llu blocks, not total_blks (%u)",
				img->path, (unsigned long long)blk,
				h->total_blks);
		goto out;
	}
	if (pos != img->file_size)
		DBG(FORMAT, "asparse: %s: %llu bytes after the last chunk",
		    img->path, (unsigned long long)(img->file_size - pos));
out:
	free(ra.buf);
	return r;
}

static void asparse_free(struct asparse *s)
{
	if (!s)
		return;
	free(s->runs);
	free(s);
}

static int asparse_open(struct img *img)
{
	uint8_t hb[ASPARSE_FILE_HDR_MIN];
	struct asparse_diag d = { 0 };
	struct asparse_crc *cp = NULL;
	struct asparse_header h;
	struct asparse *s = NULL;
	uint64_t size, max_chunks;
	size_t ncp = 0;
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
		return -ENOMEM;
	s->h = h;
	s->runs = calloc(h.total_chunks ? h.total_chunks : 1,
			 sizeof(*s->runs));
	if (!s->runs) {
		r = -ENOMEM;
		goto fail;
	}
	r = asparse_walk(img, s, &cp, &ncp);
	if (r < 0)
		goto fail;
	r = asparse_check_crcs(img, s, cp, ncp);
	if (r < 0)
		goto fail;
	free(cp);

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
	if (r == -ENOMEM)
		log_err("asparse: %s: out of memory (%u chunks)", img->path,
			h.total_chunks);
	free(cp);
	asparse_free(s);
	return r;
}

static void asparse_close(struct img *img)
{
	asparse_free(img->priv);
	img->priv = NULL;
}

static int asparse_map_extent(struct img *img, uint64_t off, uint64_t len,
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

static int asparse_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct asparse *s = img->priv;

	if (off > img->size || n > img->size - off)
		return -EINVAL;
	return asparse_produce(img, s, buf, n, off);
}

const struct img_driver asparse_driver = {
	.name = "asparse",
	.desc = "Android sparse image",
	.probe = asparse_probe,
	.open = asparse_open,
	.close = asparse_close,
	.map_extent = asparse_map_extent,
	.check = asparse_check,		/* asparse-check.c */
	.read = asparse_read,
	/* no .parent: a sparse image stands alone; no .write: read-only */
};
