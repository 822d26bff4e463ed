// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * asparse-check.c: the structural check of an Android sparse image
 * (layerimg check).
 *
 * The file header (magic, version, header sizes, block size), every chunk
 * header (known type, total_sz consistent with the type and blocks, data
 * inside the file), the chunks' blocks adding up to total_blks, and every
 * CRC32 chunk (the CRC-32 of the output so far) and a non-zero
 * image_checksum verified by streaming the expanded output.  The pure
 * decoders of asparse.c judge the headers.  Nothing is repaired.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
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

#define SC_BUF (1u << 20)

struct sc_chunk {
	uint16_t type;
	uint32_t index;		/* chunk number in the file */
	uint64_t nbytes;	/* output bytes (0 for CRC32) */
	uint64_t data;		/* RAW: file offset; FILL, CRC32: value */
};

#define sc_err(img, res, ...) \
	img_check_report(res, true, "asparse", (img)->path, __VA_ARGS__)

/* Stream the output and compare each CRC32 chunk and image_checksum. */
static int sc_crcs(struct img *img, struct img_check *res,
		   const struct sc_chunk *ch, size_t n, uint32_t image_crc)
{
	uLong crc = crc32(0L, Z_NULL, 0);
	uint8_t *buf = malloc(SC_BUF), *zero = calloc(1, SC_BUF);
	int r = 0;

	if (!buf || !zero) {
		free(buf);
		free(zero);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		uint64_t done = 0;

		if (ch[i].type == ASPARSE_CHUNK_CRC32) {
			if ((uint32_t)crc != (uint32_t)ch[i].data)
				sc_err(img, res, "chunk %u: CRC32 mismatch "
				       "(stored 0x%08x, computed 0x%08x)",
				       ch[i].index, (uint32_t)ch[i].data,
				       (uint32_t)crc);
			continue;
		}
		if (ch[i].type == ASPARSE_CHUNK_FILL)	/* pattern, once */
			for (size_t k = 0; k < SC_BUF; k += 4)
				put_le32(buf + k, (uint32_t)ch[i].data);
		while (done < ch[i].nbytes && r == 0) {
			size_t k = (size_t)MIN((uint64_t)SC_BUF,
					       ch[i].nbytes - done);

			switch (ch[i].type) {
			case ASPARSE_CHUNK_RAW:
				r = pread_full(img->fd, buf, k,
					       ch[i].data + done);
				if (r < 0)
					log_err("asparse: %s: cannot read "
						"chunk %u (%s)", img->path,
						ch[i].index, strerror(-r));
				crc = crc32_z(crc, buf, k);
				break;
			case ASPARSE_CHUNK_FILL:
				crc = crc32_z(crc, buf, k);
				break;
			default:
				crc = crc32_z(crc, zero, k);
				break;
			}
			done += k;
		}
	}
	if (r == 0 && image_crc && (uint32_t)crc != image_crc)
		sc_err(img, res, "image_checksum mismatch (stored 0x%08x, "
		       "computed 0x%08x)", image_crc, (uint32_t)crc);
	free(buf);
	free(zero);
	return r;
}

int asparse_check(struct img *img, bool repair, struct img_check *res)
{
	uint8_t hb[ASPARSE_FILE_HDR_MIN], cb[ASPARSE_CHUNK_HDR_MIN + 4];
	struct asparse_header h;
	struct asparse_diag d = { "", 0 };
	struct sc_chunk *ch = NULL;
	uint64_t pos, blocks = 0, nmax;
	size_t nch = 0;
	bool crcs = false;
	int r;

	(void)repair;	/* nothing here is safe to rewrite */
	if (img->file_size < sizeof(hb)) {
		sc_err(img, res, "file too small for the header (%llu bytes)",
		       (unsigned long long)img->file_size);
		return 0;
	}
	r = pread_full(img->fd, hb, sizeof(hb), 0);
	if (r < 0)
		return log_err_ret(r, "asparse: %s: cannot read the header "
				   "(%s)", img->path, strerror(-r));
	r = asparse_header_decode_diag(hb, sizeof(hb), &h, &d);
	if (r == -ENOTSUP)
		return log_err_ret(r, "asparse: %s: %s (%llu)", img->path,
				   d.what, (unsigned long long)d.val);
	if (r < 0) {
		sc_err(img, res, "file header: %s (%llu)", d.what,
		       (unsigned long long)d.val);
		return 0;
	}
	/* every chunk has a header inside the file: that bounds the array */
	nmax = img->file_size > h.file_hdr_sz ?
		       (img->file_size - h.file_hdr_sz) / h.chunk_hdr_sz : 0;
	ch = calloc((size_t)MIN((uint64_t)h.total_chunks, nmax) + 1,
		    sizeof(*ch));
	if (!ch)
		return -ENOMEM;
	pos = h.file_hdr_sz;
	for (uint32_t i = 0; i < h.total_chunks; i++) {
		struct asparse_chunk c;

		if (!range_within(pos, h.chunk_hdr_sz, img->file_size)) {
			sc_err(img, res, "chunk %u: header at offset %llu lies "
			       "past the end of the file (%u of %u chunks "
			       "present)", i, (unsigned long long)pos, i,
			       h.total_chunks);
			goto out;
		}
		r = pread_full(img->fd, cb, ASPARSE_CHUNK_HDR_MIN, pos);
		if (r < 0) {
			log_err("asparse: %s: cannot read chunk %u (%s)",
				img->path, i, strerror(-r));
			goto out;
		}
		if (asparse_chunk_decode_diag(cb, ASPARSE_CHUNK_HDR_MIN, &h, &c,
					      &d) < 0) {
			sc_err(img, res, "chunk %u (offset %llu): %s (%llu)",
			       i, (unsigned long long)pos, d.what,
			       (unsigned long long)d.val);
			goto out;
		}
		if (!range_within(pos, c.total_sz, img->file_size)) {
			sc_err(img, res, "chunk %u (offset %llu): data (%u "
			       "bytes) lies past the end of the file (%llu)",
			       i, (unsigned long long)pos, c.total_sz,
			       (unsigned long long)img->file_size);
			goto out;
		}
		ch[nch].type = c.type;
		ch[nch].index = i;
		ch[nch].nbytes = (uint64_t)c.nblocks * h.blk_sz;
		ch[nch].data = pos + h.chunk_hdr_sz;
		if (c.type == ASPARSE_CHUNK_FILL ||
		    c.type == ASPARSE_CHUNK_CRC32) {
			r = pread_full(img->fd, cb, 4, pos + h.chunk_hdr_sz);
			if (r < 0) {
				log_err("asparse: %s: cannot read chunk %u "
					"(%s)", img->path, i, strerror(-r));
				goto out;
			}
			ch[nch].data = get_le32(cb);
			crcs = crcs || c.type == ASPARSE_CHUNK_CRC32;
		}
		if (c.type != ASPARSE_CHUNK_DONT_CARE)
			res->allocated += ch[nch].nbytes;
		nch++;
		blocks += c.nblocks;
		if (blocks > h.total_blks) {
			sc_err(img, res, "chunk %u (offset %llu): the chunks "
			       "cover more than total_blks (%u)", i,
			       (unsigned long long)pos, h.total_blks);
			goto out;
		}
		pos += c.total_sz;
	}
	if (blocks != h.total_blks)
		sc_err(img, res, "the chunks cover %llu blocks, total_blks is "
		       "%u", (unsigned long long)blocks, h.total_blks);
	if (pos < img->file_size) {
		img_check_report(res, false, "asparse", img->path, "%llu bytes "
				 "after the last chunk",
				 (unsigned long long)(img->file_size - pos));
	}
	if (crcs || h.image_checksum)
		r = sc_crcs(img, res, ch, nch, h.image_checksum);
out:
	free(ch);
	return r;
}
