// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-qcow2.c: libFuzzer target for the qcow2 and qcow (v1) drivers.
 *
 * Each input is written to a file in a private directory and opened with
 * the qcow2 driver (or the qcow driver when the version field says 1).
 * If it opens, the target asks for the parent and the snapshot list, then
 * maps and reads the first few MiB and a spread of sampled offsets the way
 * the chain layer does (pread of host runs, ->read for the others).
 * Built outside meson by build-qcow2.sh.
 */
#include <stdint.h>
#include <string.h>

#include "endian-io.h"
#include "fuzz-common.h"
#include "qcow2.h"
#include "registry.h"

/* The fuzzer's own registry: img.c probes only these. */
const struct img_driver *const img_drivers[] = {
	&qcow2_driver,
	&qcow_driver,
	&raw_driver,
};
const size_t img_ndrivers = sizeof(img_drivers) / sizeof(img_drivers[0]);

#define READ_HEAD (4u << 20)	/* sequential part */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct img_driver *drv = &qcow2_driver;
	struct img_parent parent;
	struct qcow2_snapshot *snaps;
	struct img *img;
	size_t nsnaps;

	if (!fuzz_path) {
		fuzz_file_setup("fuzz-qcow2", "fuzz.qcow2");
		/* a small cache so eviction runs too */
		qcow2_l2_cache_set_budget(256u << 10);
	}
	fuzz_file_write(data, size);
	if (size >= 8 && get_be32(data + 4) == 1)
		drv = &qcow_driver;
	if (img_open(fuzz_path, drv, false, &img) < 0)
		return 0;
	memset(&parent, 0, sizeof(parent));
	if (img->drv->parent(img, &parent) > 0)
		img_parent_clear(&parent);
	if (qcow2_snapshot_list(img, &snaps, &nsnaps) == 0)
		qcow2_snapshot_list_free(snaps, nsnaps);
	fuzz_read_range(img, 0, READ_HEAD);
	for (unsigned i = 1; i <= FUZZ_SAMPLES && img->size; i++)
		fuzz_read_range(img, fuzz_sample_off(img, i),
				fuzz_sample_len(i));
	img_unref(img);
	return 0;
}
