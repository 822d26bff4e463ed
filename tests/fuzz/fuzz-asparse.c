// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-asparse.c: libFuzzer target for the Android sparse driver and its
 * checker.
 *
 * Each input is written to a file in a private directory and opened with
 * the asparse driver.  If it opens, the target asks for its format facts
 * (->info), then maps and reads the first few MiB and a spread of sampled
 * offsets the way the chain layer does (pread of host runs, ->read for
 * FILL runs).  Every input, open or not, also goes through ->check, which
 * judges files open refuses.  Built outside meson by build-asparse.sh.
 */
#include <stdint.h>

#include "fuzz-common.h"
#include "registry.h"

/* The fuzzer's own registry: img.c probes only these. */
const struct img_driver *const img_drivers[] = {
	&asparse_driver,
	&raw_driver,
};
const size_t img_ndrivers = sizeof(img_drivers) / sizeof(img_drivers[0]);

#define READ_HEAD (4u << 20)	/* sequential part */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_info inf;
	struct img *img;

	if (!fuzz_path)
		fuzz_file_setup("fuzz-asparse", "fuzz.simg");
	fuzz_file_write(data, size);
	fuzz_check_run(&asparse_driver, size);
	if (img_open(fuzz_path, &asparse_driver, false, &img) < 0)
		return 0;
	if (img_info_get(img, &inf) == 0)
		img_info_clear(&inf);
	fuzz_read_range(img, 0, READ_HEAD);
	for (unsigned i = 1; i <= FUZZ_SAMPLES && img->size; i++)
		fuzz_read_range(img, fuzz_sample_off(img, i),
				fuzz_sample_len(i));
	img_unref(img);
	return 0;
}
