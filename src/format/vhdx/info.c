/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhdx/info.c: the ->info hook: the state of the metadata log. */
#include "img.h"
#include "vhdx.h"

int vhdx_info(struct img *img, struct img_info *out)
{
	struct vhdx_log_info li;
	int r;

	r = vhdx_log_info(img, &li);
	if (r < 0)
		return r;
	out->has_log = true;
	out->log.dirty = li.dirty;
	out->log.guid = li.log_guid;
	out->log.offset = li.log_offset;
	out->log.length = li.log_length;
	out->log.entries = li.entries;
	return 0;
}
