// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx-create.c: new base VHDX images (the driver's ->create).
 *
 * The layout is the one vhdx_create_diff() writes (MS-VHDX 2.2): file
 * identifier, two headers (sequence 1 and 2, the same GUIDs), two region
 * tables, an empty 1 MiB log at 1 MiB (LogGuid zero), the metadata region
 * at 2 MiB and the BAT at 3 MiB; the headers and tables come from
 * vhdx_new_header_section(), shared with it.  The metadata (2.6.2) holds five items: file parameters (no
 * HasParent; LeaveBlockAllocated for a fixed disk), virtual disk size,
 * page 83 data, logical and physical sector size.  The BAT of a file
 * without a parent ends at its last payload entry (2.5); its sector
 * bitmap entries stay SB_BLOCK_NOT_PRESENT.  A dynamic disk has every
 * payload block NOT_PRESENT; a fixed one has each FULLY_PRESENT at its
 * place after the BAT, in order (the data reads as zeros).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, path, ##__VA_ARGS__)

#define VHDX_BASE_BLOCK_DEFAULT (32 * VHDX_MiB)	/* Hyper-V's for dynamic */
#define VHDX_META_IS_VIRTUAL_DISK 0x2		/* 2.6.1.2 IsVirtualDisk */
#define VHDX_BAT_OFF (3 * VHDX_MiB)

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* The metadata region (1 MiB): the table, then the items from 64 KiB. */
static int meta_encode(uint8_t *m, uint64_t size, uint32_t bs, uint32_t lss,
		       uint32_t pss, bool fixed)
{
	struct vhdx_meta_hdr_raw *h = (void *)m;	/* bytes only */
	uint32_t pos = VHDX_META_TABLE_SIZE;
	const uint32_t vd = VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED;
	struct guid page83;
	int r;

	r = vhdx_random_guid(&page83);
	if (r < 0)
		return r;
	memcpy(h->signature, "metadata", 8);
	put_le16(h->entry_count, 5);
	vhdx_meta_entry(m, 0, &vhdx_meta_file_params, pos, 8,
			VHDX_META_IS_REQUIRED);
	put_le32(m + pos, bs);
	put_le32(m + pos + 4, fixed ? VHDX_PARAMS_LEAVE_ALLOCATED : 0);
	pos += 8;
	vhdx_meta_entry(m, 1, &vhdx_meta_disk_size, pos, 8, vd);
	put_le64(m + pos, size);
	pos += 8;
	vhdx_meta_entry(m, 2, &vhdx_meta_page83, pos, 16, vd);
	guid_to_le(&page83, m + pos);
	pos += 16;
	vhdx_meta_entry(m, 3, &vhdx_meta_logical_sector, pos, 4, vd);
	put_le32(m + pos, lss);
	pos += 4;
	vhdx_meta_entry(m, 4, &vhdx_meta_physical_sector, pos, 4, vd);
	put_le32(m + pos, pss);
	return 0;
}

/* Write the BAT of a fixed disk: block b FULLY_PRESENT at data + b * bs. */
static int bat_write_fixed(int fd, uint64_t nblocks, uint32_t ratio,
			   uint32_t bs, uint64_t data_off)
{
	const size_t chunk = 65536;	/* entries per write */
	uint64_t *e = calloc(chunk, sizeof(*e));
	uint64_t idx = 0, blk = 0;
	int r = 0;

	if (!e)
		return -ENOMEM;
	while (blk < nblocks && r == 0) {
		size_t n = 0;
		uint64_t first = idx;

		memset(e, 0, chunk * sizeof(*e));
		for (; n < chunk && blk < nblocks; n++, idx++) {
			uint8_t *p = (uint8_t *)&e[n];

			if ((idx + 1) % ((uint64_t)ratio + 1) == 0)
				continue;	/* a sector bitmap entry: 0 */
			put_le64(p, VHDX_PAYLOAD_FULLY_PRESENT |
				       ((data_off + blk * bs) / VHDX_MiB) << 20);
			blk++;
		}
		r = pwrite_full(fd, e, n * sizeof(*e),
				VHDX_BAT_OFF + first * sizeof(*e));
	}
	free(e);
	return r;
}

int vhdx_create(const char *path, const struct img_create_opts *o)
{
	uint32_t bs = o->block_size ? o->block_size : VHDX_BASE_BLOCK_DEFAULT;
	uint32_t lss = o->sector_size ? o->sector_size : 512, pss = 4096;
	uint64_t size = o->size, nblocks, ratio, entries, bat_len, data_off;
	uint64_t end;
	uint8_t *hs = NULL, *meta = NULL;
	int fd, r;

	if (lss != 512 && lss != 4096)
		return vhdx_err(-EINVAL, path, "logical sector size must be "
				"512 or 4096 (%u)", lss);
	if (bs < VHDX_BLOCK_MIN || bs > VHDX_BLOCK_MAX || !is_pow2(bs))
		return vhdx_err(-EINVAL, path, "block size must be a power of "
				"two from 1 MiB to 256 MiB (%u)", bs);
	size = round_up(size, lss);	/* 2.6.2.2: whole logical sectors */
	if (size == 0 || size > VHDX_DISK_MAX)
		return vhdx_err(size ? -EFBIG : -EINVAL, path,
				"size must be 1 byte to 64 TiB (%llu)",
				(unsigned long long)o->size);
	nblocks = size / bs + (size % bs != 0);
	ratio = VHDX_SB_SECTORS * lss / bs;		/* 2.4 chunk ratio */
	entries = nblocks + (nblocks - 1) / ratio;	/* 2.5 */
	bat_len = round_up(entries * 8, VHDX_MiB);
	data_off = VHDX_BAT_OFF + bat_len;
	end = o->fixed ? data_off + nblocks * bs : data_off;

	r = vhdx_new_header_section(&hs, &meta, bat_len);
	if (r < 0)
		return r;
	r = meta_encode(meta, size, bs, lss, pss, o->fixed);
	if (r < 0)
		goto out_free;

	fd = vhdx_new_file(path, hs, meta);
	if (fd < 0) {
		r = fd;
		goto out_free;
	}
	r = 0;
	if (o->fixed)
		r = bat_write_fixed(fd, nblocks, (uint32_t)ratio, bs, data_off);
	if (r == 0 && ftruncate(fd, (off_t)end) < 0)
		r = -errno;
	/* a fixed disk's blocks: reserved where the file system can */
	if (r == 0 && o->fixed)
		r = file_reserve(fd, data_off, end - data_off);
	r = file_create_end(fd, path, r, "vhdx");
out_free:
	free(hs);
	free(meta);
	return r;
}
