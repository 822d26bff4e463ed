// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * raw.c: raw disk images and ISO 9660 images (read as raw).
 *
 * Raw has no magic, so it is the fallback: any file whose size is a
 * non-zero multiple of 512 bytes.  Everything in the file is data.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "compiler.h"
#include "img.h"

#define ISO_PVD_OFF 0x8001	/* "CD001" in the primary volume descriptor */

static int raw_probe(const struct img_probe *p)
{
	if (p->file_size == 0 || p->file_size % 512)
		return 0;
	if (p->head_len >= ISO_PVD_OFF + 5 &&
	    !memcmp(p->head + ISO_PVD_OFF, "CD001", 5))
		return 2;
	return 1;
}

static int raw_open(struct img *img)
{
	if (img->file_size >= ISO_PVD_OFF + 5) {
		char magic[5];

		if (pread(img->fd, magic, 5, ISO_PVD_OFF) == 5 &&
		    !memcmp(magic, "CD001", 5)) {
			strcpy(img->subtype, "iso");
			img->writable = false;
		}
	}
	if (!img->subtype[0])
		strcpy(img->subtype, "raw");
	img->size = img->file_size;
	return 0;
}

static int raw_map_extent(struct img *img __unused, uint64_t off,
			  uint64_t len, struct img_extent *ext)
{
	ext->type = IMG_EXT_DATA;
	ext->len = len;
	ext->host_off = off;
	return 0;
}

const struct img_driver raw_driver = {
	.name = "raw",
	.desc = "raw disk image (also ISO 9660, read-only)",
	.probe = raw_probe,
	.open = raw_open,
	.map_extent = raw_map_extent,
};
