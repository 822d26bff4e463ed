/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhdx.h: the VHDX layout (MS-VHDX v1.0, "VHDX Format Specification"),
 * the codec (codec.c) and the driver's private state, shared inside
 * src/format/vhdx/ only.  Dependencies point one way: codec.c <- the read
 * side (open.c, bat.c, log.c, info.c) <- write.c, create.c, parent.c,
 * check.c; driver.c puts the hooks of both sides in the driver struct.
 *
 * File layout: a 1 MiB header section (file type identifier at 0, headers
 * at 64 KiB and 128 KiB, region tables at 192 KiB and 256 KiB), then the
 * log, the BAT and the metadata regions and the blocks, all 1 MiB
 * aligned.  Integers are little-endian; GUIDs use the Windows layout
 * (decode with guid_from_le()).
 */
#ifndef LAYERFS_VHDX_H
#define LAYERFS_VHDX_H

#include <pthread.h>
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
#define VHDX_SLICE_CACHE (16 * VHDX_MiB)	/* sector bitmap slices kept */
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
#define VHDX_REGION_REQUIRED 0x1
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
#define VHDX_META_IS_VIRTUAL_DISK 0x2
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

/* One region table entry, as it is in the file (2.2.3.2). */
struct vhdx_region_entry {
	struct guid guid;
	uint64_t off;
	uint32_t len;
	uint32_t flags;		/* VHDX_REGION_REQUIRED */
};

struct vhdx_regions {
	struct vhdx_region bat;
	struct vhdx_region meta;
	uint32_t count;		/* every entry of the table, known or not */
	struct vhdx_region_entry ent[VHDX_REGION_MAX];
};

struct vhdx_meta_item {
	bool present;
	uint32_t off;		/* from the start of the metadata region */
	uint32_t len;
};

/* One metadata table entry, as it is in the file (2.6.1.2). */
struct vhdx_meta_entry {
	struct guid id;
	uint32_t off;
	uint32_t len;
	uint32_t flags;		/* VHDX_META_IS_* */
};

struct vhdx_meta_table {
	struct vhdx_meta_item file_params, disk_size, page83, logical_sector,
		physical_sector, parent_locator;
	unsigned count;		/* every entry of the table, known or not */
	struct vhdx_meta_entry ent[VHDX_META_MAX];
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

struct vhdx_writer;		/* write.c: writable state */

/* The sector bitmap bytes of one PARTIALLY_PRESENT block (2.4). */
struct vhdx_slice {
	uint8_t dirty;		/* write.c: newer than the file (atomic) */
	uint8_t bits[];		/* slice_len bytes, LSB first */
};

/* The cache of slices of a differencing image (bat.c). */
struct vhdx_slices {
	pthread_rwlock_t lock;	/* shared: using a slice; exclusive:
				 * dropping slices (write.c) */
	bool lock_init;
	struct vhdx_slice ***dir;	/* owned: per chunk, NULL or
					 * chunk_ratio slots (owned), each
					 * NULL or a slice (owned); set with
					 * compare-and-swap */
	uint64_t bytes;		/* held in slices (atomic) */
};

/*
 * The driver's private state; immutable once open() returns, except the
 * slice cache and, for a writable image (w != NULL), bat[] and sb[]
 * (atomic loads and release stores; see write.c).
 */
struct vhdx {
	const char *path;	/* borrowed from struct img */
	int fd;			/* borrowed from struct img */
	uint64_t file_size;	/* the real file (grows as write.c writes:
				 * atomic) */
	uint64_t eff_size;	/* after the replay: reads past the real end
				 * up to here are zeros (atomic) */
	struct vhdx_header hdr;
	int hdr_slot;		/* 0: hdr is the copy at 64 KiB, 1: 128 KiB */
	struct vhdx_regions rg;
	struct vhdx_params p;
	uint32_t chunk_ratio;	/* payload blocks per sector bitmap block */
	uint64_t nblocks;	/* payload blocks */
	uint64_t nchunks;	/* sector bitmap blocks */
	uint64_t *bat;		/* owned: the payload entries, nblocks */
	uint64_t *sb;		/* owned: differencing: each chunk's sector
				 * bitmap entry (0: none), nchunks */
	struct vhdx_slices sl;	/* differencing: bitmap slices */
	uint32_t slice_len;	/* bytes of bitmap per payload block */
	uint8_t *via_read;	/* owned bitmap over blocks, or NULL: blocks
				 * served by ->read (replayed or past EOF) */
	struct vhdx_overlay log;
	struct vhdx_locator loc;
	struct vhdx_writer *w;	/* owned: writable state, or NULL */
};

/* ---- codec.c: the spec's GUIDs (text order) ---- */

extern const struct guid vhdx_region_bat, vhdx_region_meta,
	vhdx_meta_file_params, vhdx_meta_disk_size, vhdx_meta_page83,
	vhdx_meta_logical_sector, vhdx_meta_physical_sector,
	vhdx_meta_parent_locator, vhdx_locator_type;

/* ---- codec.c: pure decoders and encoders (path names the file in
 * messages only) ---- */

/* CRC-32C of len bytes with the 4-byte checksum field at csum_off taken
 * as zero; whether it matches the stored one (always, in a fuzzing
 * build); store it. */
uint32_t vhdx_crc_compute(const uint8_t *buf, size_t len, size_t csum_off);
bool vhdx_crc_check(const uint8_t *buf, size_t len, size_t csum_off);
void vhdx_crc_put(uint8_t *buf, size_t len, size_t csum_off);
/* A random (v4) GUID for a new file or session: 0 or -errno (logged). */
int vhdx_guid_random(struct guid *g);

/*
 * One header copy: signature and CRC only, silent.  0, -EINVAL (no "head"
 * signature) or -EBADMSG (checksum).  The fields are checked later, on the
 * current header only, by vhdx_header_check().
 */
int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *h);
/* A 4 KiB header with its CRC. */
void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf);
/* Version, log version and log placement of the current header. */
int vhdx_header_check(const char *path, const struct vhdx_header *h);
/* What the two header copies hold, silently (for open and the checker). */
struct vhdx_header_choice {
	int r[2];		/* each copy: 0, -EINVAL (no "head"), -EBADMSG */
	uint32_t stored[2];	/* each copy's CRC field and the CRC */
	uint32_t computed[2];
	struct vhdx_header h[2];	/* each copy with r == 0 */
	int cur;		/* the current copy (0 or 1), -1: none */
	bool tie;		/* both valid, same sequence, bytes differ:
				 * no current header (cur is 0) */
};
void vhdx_headers_choose(const uint8_t *h1, const uint8_t *h2,
			 struct vhdx_header_choice *c);
/*
 * Choose the current header from the two 4 KiB copies (either may be
 * damaged): 0 and *h, or -errno (logged).
 */
int vhdx_headers_pick(const char *path, const uint8_t *h1, const uint8_t *h2,
		      struct vhdx_header *h);
/* Signature and CRC of both 64 KiB region tables, silently. */
struct vhdx_region_choice {
	int r[2];		/* each copy: 0, -EINVAL, -EBADMSG */
	uint32_t stored[2];
	uint32_t computed[2];
	int use;		/* the copy to decode: the first unless it is
				 * damaged; -1: both are */
	bool differ;		/* both valid but not identical */
};
void vhdx_region_tables_choose(const uint8_t *t1, const uint8_t *t2,
			       struct vhdx_region_choice *c);
/* One 64 KiB region table, every entry: 0, -EINVAL (signature), -EBADMSG,
 * -EUCLEAN, -ENOTSUP.  Silent when quiet (the first copy may be damaged). */
int vhdx_region_table_decode(const char *path, const uint8_t *buf,
			     bool quiet, struct vhdx_regions *rg);
/* The 64 KiB table of rg's count entries, with its CRC. */
void vhdx_region_table_encode(const struct vhdx_regions *rg, uint8_t *t);
/* The 64 KiB metadata table, every entry; region_len bounds the items. */
int vhdx_meta_table_decode(const char *path, const uint8_t *buf,
			   uint64_t region_len, struct vhdx_meta_table *mt);
/* Table header with count entries; entry i of the table t. */
void vhdx_meta_header_encode(uint8_t *t, unsigned count);
void vhdx_meta_entry_encode(uint8_t *t, unsigned i,
			    const struct vhdx_meta_entry *e);
/* Each known item from its bytes (lengths were checked by the table). */
int vhdx_params_decode(const char *path, const uint8_t *file_params,
		       const uint8_t *disk_size, const uint8_t *lss,
		       const uint8_t *pss, struct vhdx_params *p);
int vhdx_locator_decode(const char *path, const uint8_t *buf, size_t len,
			struct vhdx_locator *loc);
void vhdx_locator_clear(struct vhdx_locator *loc);
/*
 * A parent locator item (2.6.2.6: header, n key/value entries, UTF-16LE
 * strings) into buf (cap bytes), *len its length (0, -EINVAL or
 * -ENAMETOOLONG).
 */
struct vhdx_kv {
	const char *key;
	char *val;	/* owned */
};
int vhdx_locator_encode(const struct vhdx_kv *kv, unsigned n, uint8_t *buf,
			size_t cap, size_t *len);
/* A malloc'd copy of prefix + p with '/' turned into '\', or NULL. */
char *vhdx_path_to_windows(const char *prefix, const char *p);

/* BAT entries (2.5): in the file of this geometry; the index of payload
 * block blk and of chunk's sector bitmap (ratio: the chunk ratio). */
uint64_t vhdx_bat_entry_count(uint64_t nblocks, uint32_t ratio,
			      bool has_parent);
uint64_t vhdx_bat_payload_index(uint32_t ratio, uint64_t blk);
uint64_t vhdx_bat_bitmap_index(uint32_t ratio, uint64_t chunk);

/* A log entry header (2.3.1.1), a descriptor (2.3.1.2-3), decoded. */
struct vhdx_log_hdr {
	bool is_entry;		/* "loge" */
	uint32_t entry_length;
	uint32_t tail;
	uint64_t sequence;
	uint32_t descriptor_count;
	struct guid log_guid;
	uint64_t flushed_file_offset;
	uint64_t last_file_offset;
};
enum vhdx_log_desc_kind {
	VHDX_LOG_DESC_BAD,
	VHDX_LOG_DESC_ZERO,	/* "zero": zero_length bytes of zeros */
	VHDX_LOG_DESC_DATA,	/* "desc": one 4 KiB sector from a "data" */
};
struct vhdx_log_desc {
	enum vhdx_log_desc_kind kind;
	uint8_t leading[8];	/* "desc": the sector's first 8 bytes */
	uint8_t trailing[4];	/* "desc": its last 4 */
	uint64_t zero_length;	/* "zero" */
	uint64_t file_offset;
	uint64_t sequence;
};
void vhdx_log_entry_decode(const uint8_t *buf, struct vhdx_log_hdr *h);
void vhdx_log_desc_decode(const uint8_t *buf, struct vhdx_log_desc *d);
/* A "data" sector (2.3.1.4) of the entry with sequence number seq? */
bool vhdx_log_data_ok(const uint8_t *buf, uint64_t seq);

/* ---- open.c: the read side's hooks (see img.h), for driver.c ---- */
struct img;
struct img_probe;
struct img_parent;
struct img_extent;
int vhdx_probe(const struct img_probe *p);
int vhdx_open(struct img *img);		/* read side only */
void vhdx_close(struct img *img);
int vhdx_parent(struct img *img, struct img_parent *p);
int vhdx_map_extent(struct img *img, uint64_t off, uint64_t len,
		    struct img_extent *ext);
int vhdx_read(struct img *img, void *buf, size_t n, uint64_t off);

/* ---- open.c: the open path, shared with check.c ---- */

/*
 * Read both headers and set s->hdr, s->hdr_slot to the current one.
 * diag NULL (open): the choice is logged and the current header's fields
 * and log placement are checked.  diag set (check): silent, *diag gets
 * what each copy holds; -EUCLEAN if no copy is valid, else 0.
 */
int vhdx_headers_read(struct vhdx *s, struct vhdx_header_choice *diag);
/*
 * Read the region tables and decode the one in use into s->rg (logged).
 * diag NULL: a damaged first copy is a warning, and the BAT and metadata
 * regions must lie in the file and clear of the log.  diag set: *diag gets
 * each copy's state, -EUCLEAN (silent) if neither is valid; placement is
 * left to the caller.
 */
int vhdx_regions_read(struct vhdx *s, struct vhdx_region_choice *diag);
/* The metadata table (logged), the bytes of one item (malloc'd into
 * *out), the parameters into s->p, the parent locator into s->loc. */
int vhdx_meta_read(struct vhdx *s, struct vhdx_meta_table *mt);
int vhdx_meta_item_read(const struct vhdx *s, const struct vhdx_meta_item *it,
			uint8_t **out);
int vhdx_params_read(struct vhdx *s, const struct vhdx_meta_table *mt);
int vhdx_locator_read(struct vhdx *s, const struct vhdx_meta_table *mt);

/* ---- check.c: ->check, a structural check ---- */
struct img;
struct img_check;
int vhdx_check(struct img *img, bool repair, struct img_check *res);

/* ---- bat.c ---- */

/* Total BAT entries for the geometry in s->p (sets chunk_ratio etc.). */
int vhdx_bat_geometry(struct vhdx *s);
/* Read and check the BAT and the sector bitmaps that are needed. */
int vhdx_bat_load(struct vhdx *s);
void vhdx_bat_free(struct vhdx *s);
/* Bytes of one struct vhdx_slice of s. */
size_t vhdx_slice_size(const struct vhdx *s);
/* The cache slot of block blk (its chunk's slots made if need be), or
 * NULL (no memory).  With s->sl.lock held shared. */
struct vhdx_slice **vhdx_slice_slot(struct vhdx *s, uint64_t blk);
/*
 * With s->sl.lock held shared: *out, the slice of PARTIALLY_PRESENT block
 * blk, cached or read from the file into the cache; when the cache holds
 * VHDX_SLICE_CACHE bytes already and keep is false, into a new copy that
 * *tmp gets too (the caller frees it).  0 or -errno.
 */
int vhdx_slice_get(struct vhdx *s, uint64_t blk, bool keep,
		   struct vhdx_slice **out, struct vhdx_slice **tmp);

/* ---- log.c ---- */

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

/* ---- write.c: writing a top image (hooks, see img.h) ---- */

/* Set up writing for an image vhdx_open() opened: 0, or -EROFS (dirty
 * log), -errno; vhdx_write_close() writes back what is dirty (unless keep
 * is false: the file changed behind us) and frees it (a no-op on a
 * read-only image). */
int vhdx_write_open(struct vhdx *s);
void vhdx_write_close(struct vhdx *s, bool keep);
struct img_below;
int vhdx_write(struct img *img, const void *buf, size_t n, uint64_t off,
	       const struct img_below *below);
int vhdx_zero(struct img *img, uint64_t off, uint64_t n,
	      const struct img_below *below);
int vhdx_flush(struct img *img);

/* ---- create.c: ->create (fixed or dynamic base), ->create_diff ---- */
struct img_create_parent;
struct img_create_opts;
int vhdx_create(const char *path, const struct img_create_opts *o);
int vhdx_create_diff(const char *path, const struct img_create_parent *parent,
		     const struct img_create_opts *o);

/* ---- parent.c: ->set_parent ---- */
int vhdx_set_parent(struct img *img, const struct img_create_parent *parent);

#endif
