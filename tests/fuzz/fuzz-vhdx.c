// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-vhdx.c: libFuzzer target for the VHDX driver (see build-vhdx.sh).
 *
 * The input is a file, written to a memfd and opened with img_open():
 *  - starting with "vhdxfile": the file itself;
 *  - otherwise a sparse description, so that small inputs reach every
 *    structure of a real layout (1 MiB aligned regions): records of
 *    { u16 page, u16 len, len bytes } put len bytes at page * 4 KiB (an
 *    empty record only sets the size); the file ends at the end of the
 *    last record, rounded up to 1 MiB.
 * After a successful open the whole virtual disk is mapped (up to a cap)
 * and the DATA runs are read, through ->read where the driver says so.
 * Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION the driver skips
 * CRC-32C checks, so mutations get past the checksums.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "compiler.h"
#include "endian-io.h"
#include "fuzz-common.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

#define MAX_FILE (256u << 20)	/* a sparse memfd, mostly holes */
#define MAX_EXTENTS 20000
#define MAX_READ (8u << 20)

/*
 * This target links only the read side of the VHDX driver (open.c,
 * bat.c, log.c, info.c and codec.c; see build-vhdx.sh), so it names the
 * read-side hooks itself: images open read-only here.
 */
static const struct img_driver vhdx_read_driver = {
	.name = "vhdx",
	.desc = "Hyper-V VHDX, read side",
	.probe = vhdx_probe,
	.open = vhdx_open,
	.close = vhdx_close,
	.parent = vhdx_parent,
	.map_extent = vhdx_map_extent,
	.read = vhdx_read,
	.info = vhdx_info,
};

const struct img_driver *const img_drivers[] = { &vhdx_read_driver };
const size_t img_ndrivers = 1;

static int build_file(int fd, const uint8_t *data, size_t size)
{
	uint64_t end = 0;

	if (size >= 8 && !memcmp(data, "vhdxfile", 8)) {
		if (size > MAX_FILE)
			return -1;
		return pwrite_full(fd, data, size, 0) ? -1 : 0;
	}
	while (size >= 4) {
		uint64_t off = (uint64_t)get_le16(data) * 4096;
		size_t len = get_le16(data + 2);

		data += 4;
		size -= 4;
		len = MIN(len, size);
		if (len && pwrite_full(fd, data, len, off))
			return -1;
		end = MAX(end, off + len);	/* len 0: just the size */
		data += len;
		size -= len;
	}
	end = (end + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
	return ftruncate(fd, (off_t)end) ? -1 : 0;
}

static void walk(struct img *img)
{
	static uint8_t buf[MAX_READ];
	uint64_t off = 0, read = 0;
	struct img_parent p;

	if (img->drv->parent && img->drv->parent(img, &p) == 1)
		img_parent_clear(&p);
	for (unsigned n = 0; n < MAX_EXTENTS && off < img->size; n++) {
		struct img_extent e;
		size_t len;

		if (img_map(img, off, img->size - off, &e) < 0)
			abort();	/* map never fails after open */
		if (e.len == 0 || e.len > img->size - off)
			abort();
		if (e.type == IMG_EXT_DATA && read < MAX_READ) {
			len = (size_t)MIN(e.len, (uint64_t)MAX_READ - read);
			/* open checked every offset: reads cannot fail */
			if (e.host_off == IMG_HOST_NONE ?
			    img->drv->read(img, buf, len, off) :
			    pread_full(e.fd, buf, len, e.host_off))
				abort();
			read += len;
		}
		off += e.len;
		/* a 64 TiB disk is mostly one kind of run: jump ahead */
		if (n % 64 == 63 && img->block_size)
			off += (uint64_t)img->block_size * 997;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	struct img *img;
	int fd;

	log_set_sink(fuzz_quiet_sink);
	fd = memfd_create("fuzz-vhdx", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	if (build_file(fd, data, size) == 0) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (img_open(path, NULL, false, &img) == 0) {
			walk(img);
			img_unref(img);
		}
	}
	close(fd);
	return 0;
}
