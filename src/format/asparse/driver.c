// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * driver.c: the Android sparse driver struct.  It names the read side
 * (open.c) and the checker (check.c), so it sits apart from both: the read
 * side never refers to a check or write symbol.
 */
#include "asparse.h"
#include "img.h"

const struct img_driver asparse_driver = {
	.name = "asparse",
	.desc = "Android sparse image",
	.probe = asparse_probe,
	.open = asparse_open,
	.close = asparse_close,
	.map_extent = asparse_map_extent,
	.read = asparse_read,
	.check = asparse_check,		/* check.c */
	.info = asparse_info,		/* info.c */
	/* no .parent: a sparse image stands alone; no .write: read-only
	 * (layerimg convert -O sparse streams through write.c) */
};
