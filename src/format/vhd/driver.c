// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * driver.c: the VHD driver struct, the one file that sees both the read
 * side (open.c) and the writer (write.c), so that neither calls the
 * other's way up: a writable open is the read side's open, then the
 * writer's setup; a close is the writer's flush, then the read side's
 * close.  See the top of open.c.
 */
#include <stddef.h>

#include "img.h"
#include "registry.h"
#include "vhd.h"

static void vhd_driver_close(struct img *img)
{
	vhd_rw_close(img);	/* no-op when read-only */
	vhd_close(img);
}

static int vhd_driver_open(struct img *img)
{
	int r = vhd_open(img);

	if (r < 0 || !img->writable)
		return r;
	r = vhd_rw_open(img);
	if (r < 0)
		vhd_driver_close(img);
	return r;
}

const struct img_driver vhd_driver = {
	.name = "vhd",
	.desc = "Microsoft Virtual Hard Disk (fixed, dynamic, differencing)",
	.probe = vhd_probe,
	.open = vhd_driver_open,
	.close = vhd_driver_close,
	.parent = vhd_parent,
	.map_extent = vhd_map_extent,	/* DATA always has host_off */
	.write = vhd_write,
	.flush = vhd_flush,
	.zero = vhd_zero,
	.create_diff = vhd_create_diff,
	.check = vhd_check,
	.create = vhd_create,
	.set_parent = vhd_set_parent,
};
