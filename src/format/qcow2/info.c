/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2/info.c: the ->info hook, the format's facts for the front ends:
 * the internal snapshot table and the header's feature numbers.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "qcow2.h"

int qcow2_info(struct img *img, struct img_info *out)
{
	const struct qcow2 *s = img->priv;
	struct qcow2_snapshot *sn = NULL;
	size_t n = 0;
	int r;

	img_info_add_fact(out, "compat_version", s->h.version);
	img_info_add_fact(out, "cluster_size", 1ull << s->h.cluster_bits);
	img_info_add_fact(out, "refcount_bits", 1ull << s->h.refcount_order);
	img_info_add_fact(out, "compression_type", s->h.compression_type);

	out->has_snapshots = true;
	r = qcow2_snapshot_list(img, &sn, &n);
	if (r < 0) {
		out->snapshots_err = r;
		return 0;
	}
	if (n) {
		out->snapshots = calloc(n, sizeof(*out->snapshots));
		if (!out->snapshots) {
			qcow2_snapshot_list_free(sn, n);
			return -ENOMEM;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct img_snapshot *d = &out->snapshots[i];

		d->id = sn[i].id;	/* ownership moves to *out */
		d->name = sn[i].name;
		sn[i].id = sn[i].name = NULL;
		d->date_sec = sn[i].date_sec;
		d->date_nsec = sn[i].date_nsec;
		d->vm_clock_nsec = sn[i].vm_clock_nsec;
		d->vm_state_size = sn[i].vm_state_size;
		d->disk_size = sn[i].disk_size;
	}
	out->nsnapshots = n;
	qcow2_snapshot_list_free(sn, n);
	return 0;
}
