/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhdx.h: the VHDX layout (MS-VHDX v1.0, "VHDX Format Specification"),
 * its pure decoders and the driver's private state shared by vhdx.c,
 * vhdx-bat.c and vhdx-log.c.
 *
 * File layout: a 1 MiB header section (file type identifier at 0, headers
 * at 64 KiB and 128 KiB, region tables at 192 KiB and 256 KiB), then the
 * log, the BAT and the metadata regions and the blocks, all 1 MiB
 * aligned.  Integers are little-endian; GUIDs use the Windows layout
 * (decode with guid_from_le()).
 */
#ifndef LAYERFS_VHDX_H
#define LAYERFS_VHDX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "guid.h"

#define VHDX_KiB 1024ull
#define VHDX_MiB (1024ull * 1024)
#define VHDX_TiB (VHDX_MiB * VHDX_MiB)

#define VHDX_FILE_ID_OFF 0
#define VHDX_HEADER1_OFF (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF (128 * VHDX_KiB)
#define VHDX_HEADER_SIZE 4096
#define VHDX_REGION1_OFF (192 * VHDX_KiB)
#define VHDX_REGION2_OFF (256 * VHDX_KiB)
#define VHDX_REGION_SIZE (64 * VHDX_KiB)
#define VHDX_REGION_MAX 2047		/* spec: EntryCount <= 2047 */
#define VHDX_HEADER_SECTION VHDX_MiB	/* the first 1 MiB */
#define VHDX_ALIGN VHDX_MiB		/* regions, log and blocks */

#define VHDX_META_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_META_MAX 2047
#define VHDX_META_ITEM_MAX VHDX_MiB	/* spec: Length <= 1 MiB */
#define VHDX_LOCATOR_MAX_ENTRIES 256	/* our cap; Hyper-V writes 3-5 */

#define VHDX_BLOCK_MIN VHDX_MiB
#define VHDX_BLOCK_MAX (256 * VHDX_MiB)
#define VHDX_DISK_MAX (64 * VHDX_TiB)	/* spec: VirtualDiskSize <= 64 TiB */
#define VHDX_SB_BLOCK_SIZE VHDX_MiB	/* one sector bitmap block */
#define VHDX_SB_SECTORS (1ull << 23)	/* sectors one bitmap block covers */

#define VHDX_LOG_SECTOR 4096
#define VHDX_LOG_DATA_LEN 4084		/* data bytes in a data sector */

/* Caps on what open() holds in memory (-EFBIG beyond). */
#define VHDX_BAT_CAP (256 * VHDX_MiB)
#define VHDX_SBM_CAP (256 * VHDX_MiB)
#define VHDX_LOG_CAP (64 * VHDX_MiB)	/* Hyper-V and qemu write 1 MiB */
#define VHDX_FILE_MAX (1ull << 50)	/* sanity bound on offsets from the log */

/* Payload BAT entry states, MS-VHDX 2.5.1.1 */
#define VHDX_PAYLOAD_NOT_PRESENT 0
#define VHDX_PAYLOAD_UNDEFINED 1
#define VHDX_PAYLOAD_ZERO 2
#define VHDX_PAYLOAD_UNMAPPED 3
#define VHDX_PAYLOAD_UNMAPPED_V095 5	/* the 0.95 draft's UNMAPPED (qemu) */
#define VHDX_PAYLOAD_FULLY_PRESENT 6
#define VHDX_PAYLOAD_PARTIALLY_PRESENT 7
/* Sector bitmap BAT entry states, MS-VHDX 2.5.1.2 */
#define VHDX_SB_NOT_PRESENT 0
#define VHDX_SB_PRESENT 6

#define VHDX_BAT_STATE(e) ((unsigned)((e) & 7))
#define VHDX_BAT_OFFSET(e) (((e) >> 20) * VHDX_MiB)	/* FileOffsetMB */

/* ---- on-disk layout (bytes only) ---- */

struct vhdx_file_id_raw {		/* 2.2.1, at offset 0 */
	uint8_t signature[8];		/* "vhdxfile" */
	uint8_t creator[512];		/* UTF-16LE, informational */
};
_Static_assert(sizeof(struct vhdx_file_id_raw) == 520, "spec: 520 bytes");

struct vhdx_header_raw {		/* 2.2.2, 4 KiB at 64 and 128 KiB */
	uint8_t signature[4];		/* "head" */
	uint8_t checksum[4];		/* CRC-32C over 4 KiB, this field 0 */
	uint8_t sequence[8];
	uint8_t file_write_guid[16];
	uint8_t data_write_guid[16];	/* what children's parent_linkage names */
	uint8_t log_guid[16];		/* non-zero: the log must be replayed */
	uint8_t log_version[2];		/* 0 */
	uint8_t version[2];		/* 1 */
	uint8_t log_length[4];		/* multiple of 1 MiB */
	uint8_t log_offset[8];		/* multiple of 1 MiB, >= 1 MiB */
	uint8_t reserved[4016];
};
_Static_assert(sizeof(struct vhdx_header_raw) == VHDX_HEADER_SIZE, "spec");
_Static_assert(offsetof(struct vhdx_header_raw, checksum) == 4, "spec");
_Static_assert(offsetof(struct vhdx_header_raw, log_guid) == 48, "spec");
_Static_assert(offsetof(struct vhdx_header_raw, log_offset) == 72, "spec");

struct vhdx_region_hdr_raw {		/* 2.2.3, 64 KiB at 192 and 256 KiB */
	uint8_t signature[4];		/* "regi" */
	uint8_t checksum[4];		/* CRC-32C over 64 KiB, this field 0 */
	uint8_t entry_count[4];		/* <= 2047 */
	uint8_t reserved[4];
};
_Static_assert(sizeof(struct vhdx_region_hdr_raw) == 16, "spec");

struct vhdx_region_entry_raw {		/* 2.2.3.2 */
	uint8_t guid[16];
	uint8_t file_offset[8];		/* multiple of 1 MiB, >= 1 MiB */
	uint8_t length[4];		/* multiple of 1 MiB */
	uint8_t flags[4];		/* bit 0: Required */
};
_Static_assert(sizeof(struct vhdx_region_entry_raw) == 32, "spec");

struct vhdx_meta_hdr_raw {		/* 2.6.1.1, start of the metadata region */
	uint8_t signature[8];		/* "metadata" */
	uint8_t reserved[2];
	uint8_t entry_count[2];		/* <= 2047 */
	uint8_t reserved2[20];
};
_Static_assert(sizeof(struct vhdx_meta_hdr_raw) == 32, "spec");

struct vhdx_meta_entry_raw {		/* 2.6.1.2 */
	uint8_t item_id[16];
	uint8_t offset[4];		/* from the region start, >= 64 KiB */
	uint8_t length[4];		/* <= 1 MiB */
	uint8_t flags[4];		/* IsUser, IsVirtualDisk, IsRequired */
	uint8_t reserved[4];
};
_Static_assert(sizeof(struct vhdx_meta_entry_raw) == 32, "spec");
#define VHDX_META_IS_USER 0x1
#define VHDX_META_IS_REQUIRED 0x4

struct vhdx_file_params_raw {		/* 2.6.2.1 */
	uint8_t block_size[4];
	uint8_t flags[4];		/* LeaveBlockAllocated, HasParent */
};
_Static_assert(sizeof(struct vhdx_file_params_raw) == 8, "spec");
#define VHDX_PARAMS_LEAVE_ALLOCATED 0x1
#define VHDX_PARAMS_HAS_PARENT 0x2

struct vhdx_locator_hdr_raw {		/* 2.6.2.6 */
	uint8_t locator_type[16];
	uint8_t reserved[2];
	uint8_t key_value_count[2];
};
_Static_assert(sizeof(struct vhdx_locator_hdr_raw) == 20, "spec");

struct vhdx_locator_entry_raw {		/* 2.6.2.6.1; offsets from the item */
	uint8_t key_offset[4];
	uint8_t value_offset[4];
	uint8_t key_length[2];		/* bytes of UTF-16LE, no terminator */
	uint8_t value_length[2];
};
_Static_assert(sizeof(struct vhdx_locator_entry_raw) == 12, "spec");

struct vhdx_log_entry_raw {		/* 2.3.1.1, at a 4 KiB log sector */
	uint8_t signature[4];		/* "loge" */
	uint8_t checksum[4];		/* CRC-32C over EntryLength bytes */
	uint8_t entry_length[4];	/* multiple of 4 KiB */
	uint8_t tail[4];		/* log offset of the sequence's tail */
	uint8_t sequence[8];		/* > 0 */
	uint8_t descriptor_count[4];
	uint8_t reserved[4];
	uint8_t log_guid[16];		/* must equal the header's LogGuid */
	uint8_t flushed_file_offset[8];	/* file was at least this long */
	uint8_t last_file_offset[8];	/* all structures fit below this */
};
_Static_assert(sizeof(struct vhdx_log_entry_raw) == 64, "spec");

struct vhdx_log_desc_raw {		/* 2.3.1.2 "zero" and 2.3.1.3 "desc" */
	uint8_t signature[4];
	uint8_t trailing_bytes[4];	/* "desc": last 4 bytes of the sector */
	uint8_t leading_or_length[8];	/* "desc": first 8; "zero": length */
	uint8_t file_offset[8];		/* multiple of 4 KiB */
	uint8_t sequence[8];		/* the entry's SequenceNumber */
};
_Static_assert(sizeof(struct vhdx_log_desc_raw) == 32, "spec");

struct vhdx_log_data_raw {		/* 2.3.1.4, one per "desc" */
	uint8_t signature[4];		/* "data" */
	uint8_t sequence_high[4];
	uint8_t data[VHDX_LOG_DATA_LEN];
	uint8_t sequence_low[4];
};
_Static_assert(sizeof(struct vhdx_log_data_raw) == VHDX_LOG_SECTOR, "spec");

/* ---- decoded forms ---- */

struct vhdx_header {
	uint64_t sequence;
	struct guid file_write_guid;
	struct guid data_write_guid;
	struct guid log_guid;
	uint16_t log_version;
	uint16_t version;
	uint32_t log_length;
	uint64_t log_offset;
};

struct vhdx_region {
	uint64_t off;
	uint64_t len;
};

struct vhdx_regions {
	struct vhdx_region bat;
	struct vhdx_region meta;
};

struct vhdx_meta_item {
	bool present;
	uint32_t off;		/* from the start of the metadata region */
	uint32_t len;
};

struct vhdx_meta_table {
	struct vhdx_meta_item file_params, disk_size, page83, logical_sector,
		physical_sector, parent_locator;
};

struct vhdx_params {
	uint32_t block_size;
	bool leave_allocated;
	bool has_parent;
	uint64_t disk_size;
	uint32_t logical_sector;
	uint32_t physical_sector;
};

struct vhdx_locator {
	struct guid linkage;		/* parent_linkage */
	bool has_linkage2;		/* parent_linkage2, when not zero */
	struct guid linkage2;
	char *relative_path;		/* owned, or NULL */
	char *absolute_win32_path;	/* owned, or NULL */
	char *volume_path;		/* owned, or NULL */
};

/* File sectors replaced by an in-memory log replay, sorted, disjoint. */
struct vhdx_overlay_ext {
	uint64_t off;
	uint64_t len;
	const uint8_t *data;	/* borrowed from pages; NULL: zeros */
};

struct vhdx_overlay {
	struct vhdx_overlay_ext *ext;	/* owned */
	size_t n;			/* extents */
	uint8_t *pages;			/* owned: the replayed 4 KiB sectors */
	unsigned entries;		/* log entries replayed */
	uint64_t end;			/* file size after the replay */
};

struct vhdx_w;			/* vhdx-write.c: writable state */

/*
 * The driver's private state; immutable once open() returns, except, for
 * a writable image (w != NULL), bat[] (atomic loads and release stores)
 * and the sector bitmaps in w (see vhdx-write.c).
 */
struct vhdx {
	const char *path;	/* borrowed from struct img */
	int fd;			/* borrowed from struct img */
	uint64_t file_size;	/* the real file */
	uint64_t eff_size;	/* after the replay: reads past the real end
				 * up to here are zeros */
	struct vhdx_header hdr;
	struct vhdx_regions rg;
	struct vhdx_params p;
	uint32_t chunk_ratio;	/* payload blocks per sector bitmap block */
	uint64_t nblocks;	/* payload blocks */
	uint64_t nchunks;	/* sector bitmap blocks */
	uint64_t *bat;		/* owned: the payload entries, nblocks */
	uint64_t *partial;	/* owned: PARTIALLY_PRESENT blocks, sorted */
	size_t npartial;
	uint8_t *sbm;		/* owned: each partial block's bitmap slice */
	uint32_t slice_len;	/* bytes of bitmap per payload block */
	uint8_t *via_read;	/* owned bitmap over blocks, or NULL: blocks
				 * served by ->read (replayed or past EOF) */
	struct vhdx_overlay log;
	struct vhdx_locator loc;
	struct vhdx_w *w;	/* owned: writable state, or NULL */
};

/* ---- vhdx.c: the spec's GUIDs (text order) ---- */

extern const struct guid vhdx_region_bat, vhdx_region_meta,
	vhdx_meta_file_params, vhdx_meta_disk_size, vhdx_meta_page83,
	vhdx_meta_logical_sector, vhdx_meta_physical_sector,
	vhdx_meta_parent_locator, vhdx_locator_type;

/* ---- vhdx.c: pure decoders (path only names the file in messages) ---- */

/*
 * One header copy: signature and CRC only, silent.  0, -EINVAL (no "head"
 * signature) or -EBADMSG (checksum).  The fields are checked later, on the
 * current header only, by vhdx_header_check().
 */
int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h);
/* Version, log version and log placement of the current header. */
int vhdx_header_check(const char *path, const struct vhdx_header *h);
/*
 * Choose the current header from the two 4 KiB copies (either may be
 * damaged): 0 and *h, or -errno (logged).
 */
int vhdx_headers_pick(const char *path, const uint8_t *h1, const uint8_t *h2,
		      struct vhdx_header *h);
/* One 64 KiB region table: 0, -EINVAL (signature), -EBADMSG, -EUCLEAN,
 * -ENOTSUP.  Silent when quiet (the first copy may be damaged). */
int vhdx_region_table_decode(const char *path, const uint8_t *buf,
			     bool quiet, struct vhdx_regions *rg);
/* The 64 KiB metadata table; region_len bounds the items. */
int vhdx_meta_table_decode(const char *path, const uint8_t *buf,
			   uint64_t region_len, struct vhdx_meta_table *mt);
/* Each known item from its bytes (lengths were checked by the table). */
int vhdx_params_decode(const char *path, const uint8_t *file_params,
		       const uint8_t *disk_size, const uint8_t *lss,
		       const uint8_t *pss, struct vhdx_params *p);
int vhdx_locator_decode(const char *path, const uint8_t *buf, size_t len,
			struct vhdx_locator *loc);
void vhdx_locator_clear(struct vhdx_locator *loc);

/* ---- vhdx-check.c: ->check, a structural check ---- */
struct img;
struct img_check;
int vhdx_check(struct img *img, bool repair, struct img_check *res);

/* ---- vhdx-bat.c ---- */

/* Total BAT entries for the geometry in s->p (sets chunk_ratio etc.). */
int vhdx_bat_geometry(struct vhdx *s);
/* Read and check the BAT and the sector bitmaps that are needed. */
int vhdx_bat_load(struct vhdx *s);
/* Sector bitmap slice of a PARTIALLY_PRESENT block (checked at open). */
const uint8_t *vhdx_bat_bitmap(const struct vhdx *s, uint64_t blk);
void vhdx_bat_free(struct vhdx *s);

/* ---- vhdx-log.c ---- */

/*
 * Find the active sequence in the log region (already read into log,
 * log_len bytes) and build the overlay of replayed file sectors.
 * file_size is the real size.  0 with ov->entries == 0 when there is
 * nothing to replay, or -errno (logged).
 */
int vhdx_log_build(const char *path, const uint8_t *log, uint64_t log_len,
		   uint64_t log_off, const struct guid *log_guid,
		   uint64_t file_size, struct vhdx_overlay *ov);
/* Read the log region of s and replay it in memory (s->log, eff_size). */
int vhdx_log_replay(struct vhdx *s);
/* Apply the overlay to buf, which holds the file bytes at [off, off+n). */
void vhdx_overlay_apply(const struct vhdx_overlay *ov, uint8_t *buf,
			size_t n, uint64_t off);
/* true if the overlay replaces any byte of [off, off+len) */
bool vhdx_overlay_touches(const struct vhdx_overlay *ov, uint64_t off,
			  uint64_t len);
void vhdx_overlay_free(struct vhdx_overlay *ov);
/* For layerimg info: the log an open VHDX image's header names. */
struct vhdx_log_info {
	bool dirty;		/* the header names a log (LogGuid not zero) */
	struct guid log_guid;
	uint64_t log_offset;
	uint32_t log_length;
	unsigned entries;	/* log entries replayed in memory at open */
};
struct img;
/* 0 and *out, or -EINVAL if img is not an open VHDX image. */
int vhdx_log_info(const struct img *img, struct vhdx_log_info *out);
/* info.c: the ->info hook */
struct img_info;
int vhdx_info(struct img *img, struct img_info *out);
/*
 * Read file bytes as they are after the replay: [off, off+n) must lie
 * below s->eff_size; bytes past the real end read as zeros.
 */
int vhdx_file_read(const struct vhdx *s, void *buf, size_t n, uint64_t off);

/* ---- vhdx-write.c ---- */

/* The 1 MiB sector bitmap of chunk c of a writable image, or NULL. */
const uint8_t *vhdx_w_chunk_bitmap(const struct vhdx *s, uint64_t c);
/* Set up writing for an opened image: 0, or -EROFS (dirty log), -errno. */
int vhdx_w_open(struct vhdx *s);
void vhdx_w_free(struct vhdx *s);
int vhdx_w_write(struct vhdx *s, const void *buf, size_t n, uint64_t off);
int vhdx_w_zero(struct vhdx *s, uint64_t off, uint64_t n);
int vhdx_w_flush(struct vhdx *s);
struct img_create_parent;
struct img_create_opts;
int vhdx_create_diff(const char *path, const struct img_create_parent *parent,
		     const struct img_create_opts *o);
/*
 * The encoders create_diff uses, for vhdx-create.c: a random (v4) GUID
 * (0 or -errno, logged); a 4 KiB header with its CRC; metadata table
 * entry i (t is the 64 KiB table, flags VHDX_META_IS_*).
 */
int vhdx_random_guid(struct guid *g);
void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf);
/*
 * The header section (1 MiB, malloc'd into *out) of a new file, for
 * create_diff and vhdx-create.c: file identifier (creator "layerfs"), two
 * headers (sequence 1 and 2, new file and data write GUIDs, an empty 1 MiB
 * log at 1 MiB) and two region tables naming the metadata region (1 MiB
 * at 2 MiB) and the BAT (bat_len bytes at 3 MiB); *meta gets that
 * metadata region, all zeros, for the caller to fill (both malloc'd, the
 * caller frees them).  0, or -errno (nothing allocated then).
 */
int vhdx_new_header_section(uint8_t **out, uint8_t **meta, uint64_t bat_len);
/*
 * Create the new file path (file_create) and write that header section
 * hs at 0 and the 1 MiB metadata region meta at 2 MiB: the fd, for the
 * caller to finish with file_create_end(), or -errno (logged; the file
 * is gone again).
 */
int vhdx_new_file(const char *path, const uint8_t *hs, const uint8_t *meta);
/*
 * Which header slot of the file fd holds the current header (0: the one
 * at 64 KiB, 1: at 128 KiB), as open() picks it: *cur is 1 when the first
 * does not decode or the second is valid with a higher sequence.  buf is
 * 2 * VHDX_HEADER_SIZE bytes of scratch (it gets both headers).  0, or
 * -errno of reading (not logged).  For the writer and vhdx-parent.c.
 */
int vhdx_header_slot(int fd, uint8_t *buf, int *cur);
void vhdx_meta_entry(uint8_t *t, unsigned i, const struct guid *g,
		     uint32_t off, uint32_t len, uint32_t flags);

/* vhdx-create.c: the driver's ->create (fixed or dynamic base image) */
int vhdx_create(const char *path, const struct img_create_opts *o);

/*
 * vhdx-write.c, shared with vhdx-parent.c: a parent locator item
 * (2.6.2.6: header, n key/value entries, UTF-16LE strings) into buf (cap
 * bytes), *len its length (0, -EINVAL or -ENAMETOOLONG); a malloc'd
 * copy of prefix + p with '/' turned into '\'.
 */
struct vhdx_kv {
	const char *key;
	char *val;	/* owned */
};
int vhdx_locator_encode(const struct vhdx_kv *kv, unsigned n, uint8_t *buf,
			size_t cap, size_t *len);
char *vhdx_backslashes(const char *prefix, const char *p);
/* vhdx-parent.c: the driver's ->set_parent */
struct img;
int vhdx_set_parent(struct img *img, const struct img_create_parent *parent);

#endif
