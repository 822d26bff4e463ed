// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-vhd.c: libFuzzer target for the VHD driver (fixed, dynamic,
 * differencing) and its checker.
 *
 * Each input is written to a file in a private directory and opened
 * read-only with the vhd driver.  If it opens, the target asks for the
 * parent description, maps the disk extent by extent from offset 0 (up to
 * MAP_MAX extents) and reads what the map says is DATA (up to READ_MAX
 * bytes), then maps and reads a spread of sampled offsets the way the
 * chain layer does.  Every input, open or not, also goes through ->check
 * as `layerimg check` runs it.
 *
 * So that mutations get past the checksums (the driver has no fuzzing
 * switch), the target recomputes the checksum of a footer at offset 0 or
 * at the end, and of the dynamic header the footer points to, whenever
 * the cookie is there; checksum mismatches are covered by the unit tests.
 * Built outside meson by build-vhd.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endian-io.h"
#include "fuzz-common.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "registry.h"

/* The fuzzer's own registry: img.c probes only these. */
const struct img_driver *const img_drivers[] = {
	&vhd_driver,
	&raw_driver,
};
const size_t img_ndrivers = sizeof(img_drivers) / sizeof(img_drivers[0]);

#define MAP_MAX 65536u		/* extents mapped from offset 0 */
#define READ_MAX (4u << 20)	/* bytes read while mapping */
#define CHUNK FUZZ_CHUNK

static uint8_t *file;		/* the input, checksums fixed */
static size_t file_cap;

static void file_free(void)
{
	free(file);
}

/* The VHD checksum: ones' complement of the byte sum, its field as 0. */
static void fix_sum(uint8_t *p, size_t len, size_t field)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < len; i++)
		if (i < field || i >= field + 4)
			sum += p[i];
	put_be32(p + field, ~sum);
}

/* Footer (512 bytes, checksum at 64), dynamic header (1024, at 36). */
static void fix_footer(uint8_t *f, size_t size, size_t at)
{
	uint64_t dyn;

	if (at + 512 > size || memcmp(f + at, "conectix", 8) != 0)
		return;
	fix_sum(f + at, 512, 64);
	dyn = get_be64(f + at + 16);
	if (dyn <= size && size - dyn >= 1024 &&
	    memcmp(f + dyn, "cxsparse", 8) == 0)
		fix_sum(f + dyn, 1024, 36);
}

/* Read the first n bytes of extent e at off (DATA only: VHD has no ->read). */
static void read_extent(struct img *img, const struct img_extent *e,
			uint64_t off, uint64_t n)
{
	if (e->type != IMG_EXT_DATA)
		return;
	while (n) {
		size_t c = (size_t)(n < CHUNK ? n : CHUNK);
		int r = e->host_off == IMG_HOST_NONE ?
			img->drv->read(img, fuzz_buf, c, off) :
			pread_full(e->fd, fuzz_buf, c, e->host_off + (e->len - n));

		if (r < 0)
			return;
		off += c;
		n -= c;
	}
}

/* Map from 0, one extent after another, reading DATA up to READ_MAX. */
static void map_all(struct img *img)
{
	uint64_t off = 0, done = 0;

	for (unsigned i = 0; i < MAP_MAX && off < img->size; i++) {
		struct img_extent e;
		uint64_t n;

		if (img_map(img, off, img->size - off, &e) < 0)
			return;
		if (e.len == 0 || e.len > img->size - off)
			abort();	/* the driver broke the contract */
		n = e.len < READ_MAX - done ? e.len : READ_MAX - done;
		if (n && e.type == IMG_EXT_DATA) {
			read_extent(img, &e, off, n);
			done += n;
		}
		off += e.len;
	}
}

/* Map and read [off, off + n) the way the chain layer does. */
static void read_range(struct img *img, uint64_t off, uint64_t n)
{
	uint64_t end;

	if (off >= img->size)
		return;
	end = off + (n < img->size - off ? n : img->size - off);
	while (off < end) {
		struct img_extent e;
		uint64_t c;

		if (img_map(img, off, end - off, &e) < 0)
			return;
		c = e.len < CHUNK ? e.len : CHUNK;
		read_extent(img, &e, off, c);
		off += e.len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img_parent parent;
	struct img *img;

	if (!fuzz_path) {
		fuzz_file_setup("fuzz-vhd", "fuzz.vhd");
		atexit(file_free);
	}
	if (size > file_cap) {
		free(file);
		file = malloc(size);
		if (!file)
			abort();
		file_cap = size;
	}
	if (size) {
		memcpy(file, data, size);
		fix_footer(file, size, 0);
		if (size >= 512)
			fix_footer(file, size, size - 512);
	}
	fuzz_file_write(file, size);
	if (vhd_driver.check)
		fuzz_check_run(&vhd_driver, size);
	if (img_open(fuzz_path, &vhd_driver, false, &img) < 0)
		return 0;
	memset(&parent, 0, sizeof(parent));
	if (img->drv->parent && img->drv->parent(img, &parent) > 0)
		img_parent_clear(&parent);
	map_all(img);
	for (unsigned i = 1; i <= FUZZ_SAMPLES && img->size; i++)
		read_range(img, fuzz_sample_off(img, i), fuzz_sample_len(i));
	img_unref(img);
	return 0;
}
