// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * check.c: the structural check of an Android sparse image (layerimg
 * check).
 *
 * It runs what open runs: the codec judges the file header and every chunk
 * header, the read side's chunk walk checks that each chunk lies inside the
 * file and inside total_blks, and its output stream computes the CRC-32s.
 * The checker's own rules: it reports (rather than refuses) what it finds,
 * so it also judges files open refuses; the chunks must add up to
 * total_blks; bytes after the last chunk are a warning; every CRC32 chunk
 * is verified, with no 4 GiB bound, and so is a non-zero image_checksum
 * (open ignores it).  Nothing is repaired.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "asparse.h"
#include "img.h"
#include "io.h"
#include "log.h"

#define sc_err(img, res, ...) \
	img_check_report(res, true, "asparse", (img)->path, __VA_ARGS__)

struct check_ctx {
	struct img *img;
	struct img_check *res;
};

/* A CRC mismatch is a finding, not a reason to stop. */
static int check_crc_mismatch(void *ctx, const struct asparse_crc *c,
			      uint32_t computed)
{
	struct check_ctx *k = ctx;

	if (c->chunk == ASPARSE_CRC_IMAGE)
		sc_err(k->img, k->res, "image_checksum mismatch (stored "
		       "0x%08x, computed 0x%08x)", c->value, computed);
	else
		sc_err(k->img, k->res, "chunk %u: CRC32 mismatch (stored "
		       "0x%08x, computed 0x%08x)", c->chunk, c->value,
		       computed);
	return 0;
}

/* Every CRC32 chunk, then image_checksum (when set) over all output. */
static int check_crcs(struct img *img, struct img_check *res,
		      const struct asparse *s)
{
	struct check_ctx k = { img, res };
	struct asparse_crc *cp;
	size_t n = s->ncrcs;
	int r;

	cp = calloc(n + 1, sizeof(*cp));
	if (!cp)
		return -ENOMEM;
	if (n)
		memcpy(cp, s->crcs, n * sizeof(*cp));
	if (s->h.image_checksum) {
		cp[n].pos = s->nblocks * s->h.blk_sz;
		cp[n].value = s->h.image_checksum;
		cp[n].chunk = ASPARSE_CRC_IMAGE;
		n++;
	}
	r = asparse_crcs_verify(img, s, cp, n, UINT64_MAX, check_crc_mismatch,
				&k);
	free(cp);
	return r;
}

int asparse_check(struct img *img, bool repair, struct img_check *res)
{
	uint8_t hb[ASPARSE_FILE_HDR_MIN];
	struct asparse_diag d = { "", 0 };
	struct asparse_fault f = { 0 };
	struct asparse s = { 0 };
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
	r = asparse_header_decode_diag(hb, sizeof(hb), &s.h, &d);
	if (r == -ENOTSUP)
		return log_err_ret(r, "asparse: %s: %s (%llu)", img->path,
				   d.what, (unsigned long long)d.val);
	if (r < 0) {
		sc_err(img, res, "file header: %s (%llu)", d.what,
		       (unsigned long long)d.val);
		return 0;
	}
	r = asparse_chunks_walk(img, &s, &f);
	for (size_t i = 0; i < s.nruns; i++)
		if (s.runs[i].type != ASPARSE_CHUNK_DONT_CARE)
			res->allocated += s.runs[i].len;
	if (r == -EUCLEAN) {
		sc_err(img, res, "chunk %u (offset %llu): %s (%llu)", f.chunk,
		       (unsigned long long)f.pos, f.d.what,
		       (unsigned long long)f.d.val);
		r = 0;
		goto out;
	}
	if (r < 0)
		goto out;
	if (s.nblocks != s.h.total_blks)
		sc_err(img, res, "the chunks cover %llu blocks, total_blks is "
		       "%u", (unsigned long long)s.nblocks, s.h.total_blks);
	if (s.end < img->file_size)
		img_check_report(res, false, "asparse", img->path, "%llu bytes "
				 "after the last chunk",
				 (unsigned long long)(img->file_size - s.end));
	if (s.ncrcs || s.h.image_checksum)
		r = check_crcs(img, res, &s);
out:
	asparse_state_clear(&s);
	return r;
}
