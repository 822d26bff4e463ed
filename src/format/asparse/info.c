// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * info.c: the ->info hook, the Android sparse image's facts for the front
 * ends: the file header's numbers and the chunks open walked, by type.
 */
#include "asparse.h"
#include "img.h"

int asparse_info(struct img *img, struct img_info *out)
{
	const struct asparse *s = img->priv;
	const struct asparse_header *h = &s->h;

	img_info_add_fact(out, "major_version", h->major);
	img_info_add_fact(out, "minor_version", h->minor);
	img_info_add_fact(out, "block_size", h->blk_sz);
	img_info_add_fact(out, "total_blocks", h->total_blks);
	img_info_add_fact(out, "total_chunks", h->total_chunks);
	img_info_add_fact(out, "raw_chunks",
			  s->nchunks[ASPARSE_TYPE_INDEX(ASPARSE_CHUNK_RAW)]);
	img_info_add_fact(out, "fill_chunks",
			  s->nchunks[ASPARSE_TYPE_INDEX(ASPARSE_CHUNK_FILL)]);
	img_info_add_fact(out, "dont_care_chunks",
			  s->nchunks[ASPARSE_TYPE_INDEX(ASPARSE_CHUNK_DONT_CARE)]);
	img_info_add_fact(out, "crc32_chunks",
			  s->nchunks[ASPARSE_TYPE_INDEX(ASPARSE_CHUNK_CRC32)]);
	if (h->image_checksum)	/* 0: not recorded (libsparse writes 0) */
		img_info_add_fact(out, "image_checksum", h->image_checksum);
	return 0;
}
