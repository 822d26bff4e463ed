// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhd-create.c: new base VHD images (the driver's ->create).
 *
 * A dynamic disk is what vhd_build() lays out for a differencing one
 * (footer copy, dynamic header, an all-unused BAT, then the footer), with
 * disk type 3 and no parent: the header's parent fields stay zero, as the
 * spec wants for a dynamic disk.  A fixed disk is the raw data followed by
 * the footer alone (disk type 2, data offset all ones: spec, "Hard Disk
 * Footer Format").  The footer's current size is the size asked for (as
 * Hyper-V writes it); its CHS geometry is the spec's calculation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhd.h"

/* Give a footer built by vhd_build() another type (and data offset). */
static void vhd_footer_retype(uint8_t *footer, uint32_t type, uint64_t data_off)
{
	struct vhd_footer_raw *f = (void *)footer;	/* bytes only */

	put_be32(f->disk_type, type);
	put_be64(f->data_offset, data_off);
	put_be32(f->checksum, vhd_checksum(footer, VHD_FOOTER_SIZE,
					   offsetof(struct vhd_footer_raw,
						    checksum)));
}

int vhd_create(const char *path, const struct img_create_opts *o)
{
	uint64_t size = o->size, len = 0;
	uint32_t bs = o->block_size ? o->block_size : VHD_DEFAULT_BLOCK_SIZE;
	struct guid none = { { 0 } };
	uint8_t footer[VHD_FOOTER_SIZE], *buf = NULL;
	int fd, r;

	r = vhd_new_geometry(path, &size, bs,
			     o->sector_size ? o->sector_size : VHD_SECTOR,
			     !o->fixed);
	if (r < 0)
		return r;
	/* a fixed disk needs only the footer: build the smallest layout */
	r = vhd_build(&buf, &len, footer, size, o->fixed ? VHD_MAX_BLOCK_SIZE : bs,
		      &none, 0, NULL, 0, NULL, 0);
	if (r < 0)
		return r;
	if (o->fixed) {
		vhd_footer_retype(footer, VHD_TYPE_FIXED, UINT64_MAX);
	} else {
		vhd_footer_retype(footer, VHD_TYPE_DYNAMIC, VHD_FOOTER_SIZE);
		memcpy(buf, footer, VHD_FOOTER_SIZE);	/* the copy at 0 */
	}

	fd = file_create(path, "vhd");
	if (fd < 0) {
		r = fd;
		goto out;
	}
	if (o->fixed) {
		/* the data: reserved where the file system can */
		r = file_reserve(fd, 0, size);
		if (r == 0)
			r = pwrite_full(fd, footer, sizeof(footer), size);
	} else {
		r = pwrite_full(fd, buf, (size_t)len, 0);
		if (r == 0)
			r = pwrite_full(fd, footer, sizeof(footer), len);
	}
	r = file_create_end(fd, path, r, "vhd");
out:
	free(buf);
	return r;
}
