// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/driver.c: the qcow2 driver struct, the top of the folder.  It
 * joins the read side (open.c: the image, map_extent, read) with the
 * write side (write.c) and the hooks (create.c, check.c, parent.c), so
 * that nothing on the read side refers to a write-side symbol: ->open
 * adds the write state after the read side opened the image, ->close
 * flushes and drops it before the read side closes.
 */
#include <errno.h>
#include <stdbool.h>

#include "img.h"
#include "qcow2.h"
#include "registry.h"

static int driver_open(struct img *img)
{
	int r = qcow2_open(img);

	if (r < 0 || !img->writable)
		return r;
	r = qcow2_write_open(img, img->priv);
	if (r == -EROFS) {
		img->writable = false;	/* readable; logged why */
		return 0;
	}
	if (r < 0)
		qcow2_close(img);
	return r;
}

static void driver_close(struct img *img)
{
	struct qcow2 *s = img->priv;

	if (s && s->w) {
		if (!s->w->broken)
			qcow2_flush(img);	/* metadata held in memory, then
						 * sync; failure is logged */
		qcow2_write_free(s);
	}
	qcow2_close(img);
}

const struct img_driver qcow2_driver = {
	.name = "qcow2",
	.desc = "QEMU copy-on-write v2/v3",
	.probe = qcow2_probe,
	.open = driver_open,
	.close = driver_close,
	.parent = qcow2_parent,
	.map_extent = qcow2_map_extent,
	.read = qcow2_read,		/* compressed clusters */
	.write = qcow2_write,		/* write.c */
	.flush = qcow2_flush,
	.zero = qcow2_zero,
	.create_diff = qcow2_create_diff,	/* create.c */
	.create = qcow2_create,
	.check = qcow2_check,		/* check.c */
	.set_parent = qcow2_set_parent,	/* parent.c */
	.info = qcow2_info,		/* info.c */
};
