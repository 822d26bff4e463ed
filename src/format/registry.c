// SPDX-License-Identifier: LGPL-2.1-or-later
/* registry.c: the format drivers, in probe order. */
#include "compiler.h"
#include "img.h"
#include "registry.h"

const struct img_driver *const img_drivers[] = {
	&qcow2_driver,
	&qcow_driver,
	&vhdx_driver,
	&asparse_driver,
	&vhd_driver,
	&raw_driver,	/* last: no magic, score 1 */
};

const size_t img_ndrivers = ARRAY_SIZE(img_drivers);
