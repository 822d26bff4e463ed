// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/create.c: new VHDX files: ->create (a fixed or dynamic base image)
 * and ->create_diff (a differencing image over any parent).
 *
 * Layout (MS-VHDX 2.2): file identifier (creator "layerfs"), two headers
 * (sequence 1 and 2, the same fresh GUIDs), two region tables, an empty
 * 1 MiB log at 1 MiB (LogGuid zero), the metadata region at 2 MiB (1 MiB)
 * and the BAT at 3 MiB.  The metadata (2.6.2) holds file parameters,
 * virtual disk size, page 83 data, logical and physical sector size, and
 * for a differencing file the parent locator.  The BAT of a file without
 * a parent ends at its last payload entry, of a differencing one at its
 * last sector bitmap entry (2.5); sector bitmap entries stay
 * SB_BLOCK_NOT_PRESENT.  A dynamic or differencing disk has every payload
 * block NOT_PRESENT (the file ends after the BAT); a fixed one has each
 * FULLY_PRESENT at its place after the BAT, in order (reading zeros).
 * Every structure is encoded by codec.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "utf16.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (path) ? (path) : "-", \
		    ##__VA_ARGS__)

#define VHDX_BASE_BLOCK_DEFAULT (32 * VHDX_MiB)	/* Hyper-V's for dynamic */
#define VHDX_DIFF_BLOCK_DEFAULT (2 * VHDX_MiB)	/* and for differencing */
#define VHDX_BAT_OFF (3 * VHDX_MiB)
#define VHDX_META_OFF (2 * VHDX_MiB)

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/*
 * The header section (1 MiB, malloc'd into *out): file identifier, two
 * headers, two region tables naming the metadata region (1 MiB at 2 MiB)
 * and the BAT (bat_len bytes at 3 MiB).  0, or -errno.
 */
static int header_section_encode(uint8_t **out, uint64_t bat_len)
{
	struct vhdx_regions *rg;
	struct vhdx_header h;
	uint8_t *hs, *u = NULL;
	size_t ulen;
	int r;

	memset(&h, 0, sizeof(h));
	h.version = 1;
	h.log_length = (uint32_t)VHDX_MiB;
	h.log_offset = VHDX_MiB;
	r = vhdx_guid_random(&h.file_write_guid);
	if (r == 0)
		r = vhdx_guid_random(&h.data_write_guid);
	if (r < 0)
		return r;
	hs = calloc(1, VHDX_HEADER_SECTION);
	rg = calloc(1, sizeof(*rg));
	r = hs && rg ? utf8_to_utf16("layerfs", false, &u, &ulen) : -ENOMEM;
	if (r < 0) {
		free(hs);
		free(rg);
		return r;
	}
	memcpy(hs, "vhdxfile", 8);
	memcpy(hs + 8, u, MIN(ulen, (size_t)512));
	free(u);
	for (int k = 0; k < 2; k++) {
		h.sequence = 1 + (uint64_t)k;
		vhdx_header_encode(&h, hs + (k ? VHDX_HEADER2_OFF :
					     VHDX_HEADER1_OFF));
	}
	rg->count = 2;
	rg->ent[0] = (struct vhdx_region_entry){ vhdx_region_bat, VHDX_BAT_OFF,
		(uint32_t)bat_len, VHDX_REGION_REQUIRED };
	rg->ent[1] = (struct vhdx_region_entry){ vhdx_region_meta,
		VHDX_META_OFF, (uint32_t)VHDX_MiB, VHDX_REGION_REQUIRED };
	vhdx_region_table_encode(rg, hs + VHDX_REGION1_OFF);
	memcpy(hs + VHDX_REGION2_OFF, hs + VHDX_REGION1_OFF, VHDX_REGION_SIZE);
	free(rg);
	*out = hs;
	return 0;
}

/*
 * The metadata region m (1 MiB, zeroed): the table, then the items from
 * 64 KiB on; the parent locator item when loc is not NULL.
 */
static int meta_encode(uint8_t *m, uint64_t size, uint32_t bs, uint32_t lss,
		       uint32_t pss, uint32_t params, const uint8_t *loc,
		       size_t loc_len)
{
	const uint32_t vd = VHDX_META_IS_VIRTUAL_DISK | VHDX_META_IS_REQUIRED;
	struct vhdx_meta_entry e[6] = {
		{ vhdx_meta_file_params, 0, 8, VHDX_META_IS_REQUIRED },
		{ vhdx_meta_disk_size, 0, 8, vd },
		{ vhdx_meta_page83, 0, 16, vd },
		{ vhdx_meta_logical_sector, 0, 4, vd },
		{ vhdx_meta_physical_sector, 0, 4, vd },
		{ vhdx_meta_parent_locator, 0, (uint32_t)loc_len,
		  VHDX_META_IS_REQUIRED },
	};
	unsigned n = loc ? 6 : 5;
	uint32_t pos = VHDX_META_TABLE_SIZE;
	struct guid page83;
	int r;

	r = vhdx_guid_random(&page83);
	if (r < 0)
		return r;
	if (loc && loc_len > VHDX_META_ITEM_MAX - pos - 40)
		return -ENAMETOOLONG;
	for (unsigned i = 0; i < n; i++) {
		e[i].off = pos;
		pos += e[i].len;
	}
	vhdx_meta_header_encode(m, n);
	for (unsigned i = 0; i < n; i++)
		vhdx_meta_entry_encode(m, i, &e[i]);
	put_le32(m + e[0].off, bs);		/* 2.6.2.1 */
	put_le32(m + e[0].off + 4, params);
	put_le64(m + e[1].off, size);		/* 2.6.2.2 */
	guid_to_le(&page83, m + e[2].off);	/* 2.6.2.3 */
	put_le32(m + e[3].off, lss);		/* 2.6.2.4 */
	put_le32(m + e[4].off, pss);		/* 2.6.2.5 */
	if (loc)
		memcpy(m + e[5].off, loc, loc_len);	/* 2.6.2.6 */
	return 0;
}

/*
 * Create path (file_create) with the header section, the metadata region
 * meta and a BAT of bat_len bytes, all NOT_PRESENT: the fd, for the
 * caller to finish with file_create_end(), or -errno (logged; the file
 * is gone again).
 */
static int file_start(const char *path, uint64_t bat_len, const uint8_t *meta)
{
	uint8_t *hs = NULL;
	int fd, r;

	r = header_section_encode(&hs, bat_len);
	if (r < 0)
		return r;
	fd = file_create(path, "vhdx");
	if (fd < 0) {
		free(hs);
		return fd;
	}
	r = pwrite_full(fd, hs, VHDX_HEADER_SECTION, 0);
	if (r == 0)
		r = pwrite_full(fd, meta, VHDX_MiB, VHDX_META_OFF);
	if (r == 0 && ftruncate(fd, (off_t)(VHDX_BAT_OFF + bat_len)) < 0)
		r = -errno;
	free(hs);
	if (r < 0)
		return file_create_end(fd, path, r, "vhdx");
	return fd;
}

/* The BAT of a fixed disk: block b FULLY_PRESENT at data + b * bs. */
static int bat_write_fixed(int fd, uint64_t nblocks, uint32_t ratio,
			   uint32_t bs, uint64_t data_off)
{
	const size_t chunk = 65536;	/* entries per write */
	uint8_t *e = malloc(chunk * 8);
	uint64_t idx = 0, blk = 0;
	int r = 0;

	if (!e)
		return -ENOMEM;
	while (blk < nblocks && r == 0) {
		size_t n = 0;
		uint64_t first = idx;

		memset(e, 0, chunk * 8);
		for (; n < chunk && blk < nblocks; n++, idx++) {
			if (idx != vhdx_bat_payload_index(ratio, blk))
				continue;	/* a sector bitmap entry: 0 */
			put_le64(e + n * 8, VHDX_PAYLOAD_FULLY_PRESENT |
				 ((data_off + blk * bs) / VHDX_MiB) << 20);
			blk++;
		}
		r = pwrite_full(fd, e, n * 8, VHDX_BAT_OFF + first * 8);
	}
	free(e);
	return r;
}

/* Geometry shared by both: the BAT length for size, bs and lss. */
static uint64_t bat_length(uint64_t size, uint32_t bs, uint32_t lss,
			   bool has_parent, uint64_t *nblocks, uint32_t *ratio)
{
	*nblocks = size / bs + (size % bs != 0);
	*ratio = (uint32_t)(VHDX_SB_SECTORS * lss / bs);	/* 2.4 */
	return round_up(vhdx_bat_entry_count(*nblocks, *ratio, has_parent) * 8,
			VHDX_MiB);
}

int vhdx_create(const char *path, const struct img_create_opts *o)
{
	uint32_t bs = o->block_size ? o->block_size : VHDX_BASE_BLOCK_DEFAULT;
	uint32_t lss = o->sector_size ? o->sector_size : 512, pss = 4096;
	uint64_t size = o->size, nblocks, bat_len, data_off, end;
	uint32_t ratio;
	uint8_t *meta;
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
	bat_len = bat_length(size, bs, lss, false, &nblocks, &ratio);
	data_off = VHDX_BAT_OFF + bat_len;
	end = o->fixed ? data_off + nblocks * bs : data_off;

	meta = calloc(1, VHDX_MiB);
	if (!meta)
		return -ENOMEM;
	r = meta_encode(meta, size, bs, lss, pss,
			o->fixed ? VHDX_PARAMS_LEAVE_ALLOCATED : 0, NULL, 0);
	fd = r < 0 ? r : file_start(path, bat_len, meta);
	free(meta);
	if (fd < 0)
		return fd;
	r = 0;
	if (o->fixed)
		r = bat_write_fixed(fd, nblocks, ratio, bs, data_off);
	if (r == 0 && ftruncate(fd, (off_t)end) < 0)
		r = -errno;
	/* a fixed disk's blocks: reserved where the file system can */
	if (r == 0 && o->fixed)
		r = file_reserve(fd, data_off, end - data_off);
	return file_create_end(fd, path, r, "vhdx");
}

/*
 * The parent locator item (2.6.2.6) into loc (VHDX_META_ITEM_MAX bytes).
 * parent_linkage names the parent's identity: a VHDX parent's
 * DataWriteGuid, a VHD parent's unique id; a parent without one (raw,
 * qcow2) gets the zero GUID, which the spec does not foresee: Hyper-V
 * would refuse the link, our resolver checks nothing when the parent's
 * reader reports no identity.  absolute_win32_path is the POSIX path
 * with '\' separators: no drive letter, so Windows falls back to
 * relative_path (tried first anyway, 2.6.2.6.2).
 */
static int locator_encode(const struct img_create_parent *par, uint8_t *loc,
			  size_t *loc_len)
{
	struct vhdx_kv kv[3] = { { "parent_linkage", NULL },
				 { "relative_path", NULL },
				 { "absolute_win32_path", NULL } };
	char sid[GUID_STR_LEN + 1];
	unsigned nkv = par->abs_path ? 3 : 2;
	struct guid id;
	int r = 0;

	memset(&id, 0, sizeof(id));
	if (par->img->has_id)
		id = par->img->id;
	guid_to_str(&id, sid);	/* lower case: libvhdi 20210425 reads no
				 * other (our reader and 7-Zip take both) */
	if (asprintf(&kv[0].val, "{%s}", sid) < 0)
		kv[0].val = NULL;
	kv[1].val = vhdx_path_to_windows(".\\", par->rel_path);
	if (par->abs_path)
		kv[2].val = vhdx_path_to_windows("", par->abs_path);
	if (!kv[0].val || !kv[1].val || (par->abs_path && !kv[2].val))
		r = -ENOMEM;
	if (r == 0)
		r = vhdx_locator_encode(kv, nkv, loc, VHDX_META_ITEM_MAX,
					loc_len);
	for (unsigned i = 0; i < 3; i++)
		free(kv[i].val);
	return r;
}

int vhdx_create_diff(const char *path, const struct img_create_parent *par,
		     const struct img_create_opts *o)
{
	struct img *pi = par->img;
	uint32_t bs = o->block_size ? o->block_size : VHDX_DIFF_BLOCK_DEFAULT;
	uint32_t lss = o->sector_size ? o->sector_size : pi->sector_size;
	uint32_t pss = pi->phys_sector_size, ratio;
	uint64_t size = o->size ? o->size : pi->size, nblocks, bat_len;
	uint8_t *meta = NULL, *loc = NULL;
	size_t loc_len = 0;
	int fd, r;

	if (!o->sector_size && lss != 512 && lss != 4096)
		lss = 512;	/* the parent has no usable sector size */
	if (pss != 512 && pss != 4096)
		pss = 4096;
	if (lss != 512 && lss != 4096)
		return vhdx_err(-EINVAL, path, "bad logical sector size (%u)",
				lss);
	if (bs < VHDX_BLOCK_MIN || bs > VHDX_BLOCK_MAX || !is_pow2(bs))
		return vhdx_err(-EINVAL, path, "bad block size (%u)", bs);
	/* The spec wants whole sectors; a parent of another size reads as
	 * zeros past its end. */
	size = round_up(size, lss);
	if (size == 0 || size > VHDX_DISK_MAX)
		return vhdx_err(size ? -EFBIG : -EINVAL, path,
				"bad virtual disk size (%llu)",
				(unsigned long long)size);
	bat_len = bat_length(size, bs, lss, true, &nblocks, &ratio);

	meta = calloc(1, VHDX_MiB);
	loc = calloc(1, VHDX_META_ITEM_MAX);
	r = meta && loc ? locator_encode(par, loc, &loc_len) : -ENOMEM;
	if (r == 0)
		r = meta_encode(meta, size, bs, lss, pss,
				VHDX_PARAMS_HAS_PARENT, loc, loc_len);
	if (r < 0 && r != -ENOMEM)
		vhdx_err(r, path, "cannot encode the parent locator (%s)",
			 strerror(-r));
	fd = r < 0 ? r : file_start(path, bat_len, meta);
	free(meta);
	free(loc);
	if (fd < 0)
		return fd;
	return file_create_end(fd, path, 0, "vhdx");
}
