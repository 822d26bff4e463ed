// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/driver.c: the VHDX driver struct, the one place that names the
 * hooks of both sides.  The read side (open.c and what it uses) knows
 * nothing of writing; opening an image for writing is the read-side open
 * followed by write.c's setup, and closing undoes both, here.  The fuzz
 * target links the read side alone (tests/fuzz/fuzz-vhdx.c).
 */
#include "img.h"
#include "vhdx.h"

static int vhdx_driver_open(struct img *img)
{
	int r = vhdx_open(img);

	if (r == 0 && img->writable) {
		r = vhdx_write_open(img->priv);
		if (r < 0)
			vhdx_close(img);
	}
	return r;
}

static void vhdx_driver_close(struct img *img)
{
	if (img->priv)	/* flushes what is dirty, into an intact file */
		vhdx_write_close(img->priv, !img_broken_get(img));
	vhdx_close(img);
}

const struct img_driver vhdx_driver = {
	.name = "vhdx",
	.desc = "Hyper-V VHDX (fixed, dynamic, differencing)",
	.probe = vhdx_probe,
	.open = vhdx_driver_open,
	.close = vhdx_driver_close,
	.parent = vhdx_parent,
	.map_extent = vhdx_map_extent,
	.read = vhdx_read,		/* blocks a log replay touched */
	.write = vhdx_write,		/* write.c */
	.flush = vhdx_flush,
	.zero = vhdx_zero,
	.create_diff = vhdx_create_diff,	/* create.c */
	.check = vhdx_check,		/* check.c */
	.create = vhdx_create,		/* create.c */
	.set_parent = vhdx_set_parent,	/* parent.c */
	.info = vhdx_info,		/* info.c */
};
