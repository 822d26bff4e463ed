// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * codec.c: the Android sparse format's bytes, decoded and encoded (AOSP
 * libsparse sparse_format.h, version 1.0), and its CRC-32.  Pure: no I/O,
 * no state, no logging; the decoders say why they refused through an
 * optional struct asparse_diag.  Used by the driver (open.c), the checker
 * (check.c) and the writer (write.c); unit-tested on byte arrays.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>

#include "asparse.h"
#include "compiler.h"
#include "endian-io.h"

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

void asparse_header_encode(const struct asparse_header *h, uint8_t *buf)
{
	struct asparse_header_raw *r = (void *)buf;	/* bytes only */

	put_le32(r->magic, ASPARSE_MAGIC);
	put_le16(r->major_version, h->major);
	put_le16(r->minor_version, h->minor);
	put_le16(r->file_hdr_sz, h->file_hdr_sz);
	put_le16(r->chunk_hdr_sz, h->chunk_hdr_sz);
	put_le32(r->blk_sz, h->blk_sz);
	put_le32(r->total_blks, h->total_blks);
	put_le32(r->total_chunks, h->total_chunks);
	put_le32(r->image_checksum, h->image_checksum);
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

void asparse_chunk_encode(const struct asparse_chunk *c, uint8_t *buf)
{
	struct asparse_chunk_raw *r = (void *)buf;	/* bytes only */

	put_le16(r->chunk_type, c->type);
	memset(r->reserved1, 0, sizeof(r->reserved1));
	put_le32(r->chunk_sz, c->nblocks);
	put_le32(r->total_sz, c->total_sz);
}

uint32_t asparse_crc32_update(uint32_t crc, const void *buf, size_t n)
{
	return (uint32_t)crc32_z(crc, buf, n);
}

/* The CRC of n bytes (a multiple of 4, < 2^63) of the pattern of value. */
static uint32_t crc32_pattern(uint32_t value, uint64_t n)
{
	uint8_t pat[4];
	uint32_t piece, acc = 0;	/* the CRC of nothing is 0 */
	uint64_t len = 4, count = n / 4;

	put_le32(pat, value);
	piece = (uint32_t)crc32_z(0, pat, 4);
	while (count) {		/* piece: the pattern len / 4 times */
		if (count & 1)
			acc = (uint32_t)crc32_combine(acc, piece, (z_off_t)len);
		count >>= 1;
		if (count) {
			piece = (uint32_t)crc32_combine(piece, piece,
							(z_off_t)len);
			len *= 2;
		}
	}
	return acc;
}

uint32_t asparse_crc32_fill(uint32_t crc, uint32_t value, uint64_t n)
{
	const uint64_t step = (uint64_t)1 << 62;	/* fits z_off_t */

	while (n) {
		uint64_t k = MIN(n, step);

		crc = (uint32_t)crc32_combine(crc, crc32_pattern(value, k),
					      (z_off_t)k);
		n -= k;
	}
	return crc;
}

void asparse_fill_expand(uint8_t *buf, size_t n, uint32_t value, uint64_t off)
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
