/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhd.h: Microsoft Virtual Hard Disk (VHD), private to src/format/vhd/:
 * the on-disk layout, the codec (codec.c), the driver's state and the
 * functions the files of the folder share.  One way only:
 *
 *   codec.c                      <- open.c (probe, open, parent, map, read)
 *   codec.c, open.c              <- write.c create.c parent.c check.c
 *   all of them                  <- driver.c (the struct img_driver)
 *
 * All multi-byte fields are big-endian.  Layout facts from the "Virtual
 * Hard Disk Image Format Specification" (Microsoft, version 1.0):
 *   footer          512 bytes, at the end of every file; dynamic and
 *                   differencing disks keep a copy at offset 0.  Files of
 *                   Virtual PC before 2004 end in a 511-byte footer.
 *   dynamic header  1024 bytes at the footer's data offset.
 *   BAT             big-endian uint32 sector numbers, 0xFFFFFFFF unused.
 *   block           sector bitmap (MSB first, padded to 512 bytes), then
 *                   block_size bytes of data.
 */
#ifndef LAYERFS_VHD_H
#define LAYERFS_VHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "img.h"

#define VHD_SECTOR 512u
#define VHD_FOOTER_SIZE 512u
#define VHD_FOOTER_OLD_SIZE 511u	/* Virtual PC before 2004 */
#define VHD_DYN_HEADER_SIZE 1024u
#define VHD_COOKIE "conectix"
#define VHD_DYN_COOKIE "cxsparse"
#define VHD_BAT_UNUSED 0xffffffffu
#define VHD_NLOCATORS 8
#define VHD_PARENT_NAME_SIZE 512u	/* bytes of UTF-16BE */

enum vhd_disk_type {
	VHD_TYPE_FIXED = 2,
	VHD_TYPE_DYNAMIC = 3,
	VHD_TYPE_DIFF = 4,
};

/* Parent locator platform codes (spec: "Platform Code" table). */
#define VHD_PLAT_NONE 0x00000000u
#define VHD_PLAT_WI2R 0x57693272u	/* "Wi2r": deprecated, ANSI */
#define VHD_PLAT_WI2K 0x5769326bu	/* "Wi2k": deprecated, ANSI */
#define VHD_PLAT_W2RU 0x57327275u	/* "W2ru": relative, UTF-16LE */
#define VHD_PLAT_W2KU 0x57326b75u	/* "W2ku": absolute, UTF-16LE */
#define VHD_PLAT_MAC 0x4d616320u	/* "Mac ": Mac OS alias blob */
#define VHD_PLAT_MACX 0x4d616358u	/* "MacX": file URL, UTF-8 */

/* Limits of this implementation (not of the format). */
#define VHD_MAX_BLOCK_SIZE (256u << 20)	/* spec default is 2 MiB */
#define VHD_MAX_BAT_ENTRIES (1u << 24)	/* a 64 MiB table */
#define VHD_MAX_LOCATOR_LEN 65536u	/* a 32767-unit Windows path */

/* What this driver writes. */
#define VHD_DEFAULT_BLOCK_SIZE (2u << 20)	/* as Hyper-V and Virtual PC */
/* Hyper-V's limit (the BAT's 32-bit sector numbers address 2 TiB) */
#define VHD_MAX_DISK_SIZE (2040ull << 30)
#define VHD_EPOCH 946684800	/* time stamps: seconds since 2000-01-01 UTC */
#define VHD_FEATURES_RESERVED 0x00000002u	/* spec: always set */
#define VHD_VERSION 0x00010000u
#define VHD_CREATOR_APP "lyfs"		/* differencing disks */
#define VHD_CREATOR_APP_BASE "qem2"	/* fixed and dynamic: see codec.c */
#define VHD_CREATOR_OS "Wi2k"	/* Windows tools expect it (as qemu, mkvhd) */

struct vhd_footer_raw {
	uint8_t cookie[8];
	uint8_t features[4];
	uint8_t version[4];
	uint8_t data_offset[8];
	uint8_t timestamp[4];
	uint8_t creator_app[4];
	uint8_t creator_ver[4];
	uint8_t creator_os[4];
	uint8_t orig_size[8];
	uint8_t cur_size[8];
	uint8_t geometry[4];
	uint8_t disk_type[4];
	uint8_t checksum[4];
	uint8_t uuid[16];
	uint8_t saved_state;
	uint8_t reserved[427];
};
_Static_assert(sizeof(struct vhd_footer_raw) == 512, "spec: 512 bytes");
_Static_assert(offsetof(struct vhd_footer_raw, cur_size) == 48, "spec");
_Static_assert(offsetof(struct vhd_footer_raw, checksum) == 64, "spec");
_Static_assert(offsetof(struct vhd_footer_raw, saved_state) == 84, "spec");

struct vhd_locator_raw {
	uint8_t code[4];
	uint8_t data_space[4];
	uint8_t data_length[4];
	uint8_t reserved[4];
	uint8_t data_offset[8];
};
_Static_assert(sizeof(struct vhd_locator_raw) == 24, "spec: 24 bytes");

struct vhd_dyn_header_raw {
	uint8_t cookie[8];
	uint8_t data_offset[8];
	uint8_t table_offset[8];
	uint8_t version[4];
	uint8_t max_table_entries[4];
	uint8_t block_size[4];
	uint8_t checksum[4];
	uint8_t parent_uuid[16];
	uint8_t parent_timestamp[4];
	uint8_t reserved1[4];
	uint8_t parent_name[VHD_PARENT_NAME_SIZE];	/* UTF-16BE */
	struct vhd_locator_raw locators[VHD_NLOCATORS];
	uint8_t reserved2[256];
};
_Static_assert(sizeof(struct vhd_dyn_header_raw) == 1024, "spec: 1024");
_Static_assert(offsetof(struct vhd_dyn_header_raw, checksum) == 36, "spec");
_Static_assert(offsetof(struct vhd_dyn_header_raw, parent_name) == 64,
	       "spec");
_Static_assert(offsetof(struct vhd_dyn_header_raw, locators) == 576, "spec");

/* Decoded footer: native byte order. */
struct vhd_footer {
	uint32_t features;
	uint32_t version;
	uint64_t data_offset;	/* dynamic header, or all ones (fixed) */
	uint32_t timestamp;	/* seconds since 2000-01-01 UTC */
	uint32_t creator_app;
	uint32_t creator_ver;
	uint32_t creator_os;
	uint64_t orig_size;
	uint64_t cur_size;	/* the virtual size (not CHS) */
	uint32_t geometry;
	uint32_t disk_type;	/* enum vhd_disk_type */
	uint8_t uuid[16];	/* text order */
	uint8_t saved_state;
};

struct vhd_locator {
	uint32_t code;
	uint32_t data_space;	/* Windows: bytes; the spec: sectors */
	uint32_t data_length;	/* bytes */
	uint64_t data_offset;	/* absolute file offset */
};

/* Decoded dynamic disk header: native byte order. */
struct vhd_dyn_header {
	uint64_t data_offset;	/* spec: unused, all ones */
	uint64_t table_offset;
	uint32_t version;
	uint32_t max_table_entries;
	uint32_t block_size;
	uint8_t parent_uuid[16];	/* text order */
	uint32_t parent_timestamp;
	uint8_t parent_name[512];	/* UTF-16BE, as stored */
	struct vhd_locator locators[VHD_NLOCATORS];
};

/* Why a decoder refused its input: "<problem> (<value>)", for the log. */
struct vhd_problem {
	char msg[128];
};

/* A parent reference to record: unicode name and locators (codec.c). */
struct vhd_new_locator {
	uint32_t code;
	uint8_t *data;		/* owned: UTF-16LE */
	size_t len;
};

struct vhd_new_parent {
	uint8_t *name;		/* owned: UTF-16BE file name, no NUL */
	size_t name_len;
	struct vhd_new_locator loc[2];	/* W2ku, then W2ru */
	unsigned nloc;
};

/* ---- codec.c: pure, no I/O, silent ---------------------------------------- */

/*
 * One's complement of the byte sum of buf[0..len), skipping the 4-byte
 * checksum field at csum_off (spec: "Checksum").
 */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off);

/*
 * The last 512 bytes of a file: the length of the footer that ends it,
 * 512, or 511 (Virtual PC before 2004: then moved to buf[0..511) and
 * buf[511] zeroed), or 0: no "conectix" cookie where a footer would be.
 */
size_t vhd_footer_locate(uint8_t *buf);

/* Every field of a 512-byte footer, whatever it holds (no checks). */
void vhd_footer_unpack(const uint8_t *buf, struct vhd_footer *f);

/*
 * Decode a 512-byte footer.  Silent (the caller logs, naming the file):
 *   -EINVAL  no "conectix" cookie (not a VHD)
 *   -EBADMSG checksum mismatch
 *   -ENOTSUP unknown version or disk type
 * On error *why (if not NULL) says what and the value; *f is written only
 * on success.
 */
int vhd_footer_decode(const uint8_t *buf, struct vhd_footer *f,
		      struct vhd_problem *why);

/* Encode f into the 512 bytes at buf with its checksum; the reserved
 * bytes are left as buf holds them. */
void vhd_footer_encode(const struct vhd_footer *f, uint8_t *buf);

/* The footer of a new disk of this type and size (creator: codec.c). */
void vhd_footer_new(struct vhd_footer *f, uint32_t type, uint64_t size,
		    uint32_t stamp, const uint8_t uuid[16]);

/*
 * The footer's disk geometry field (cylinders << 16 | heads << 8 | sectors
 * per track) for a disk of size bytes: the spec's "CHS Calculation".
 */
uint32_t vhd_chs_geometry(uint64_t size);

/* A time stamp field: seconds since 2000-01-01 UTC, clamped. */
uint32_t vhd_time_encode(time_t t);

/*
 * Decode a 1024-byte dynamic disk header.  Silent:
 *   -EUCLEAN bad cookie, or a block size that is not a power of two >= 512
 *   -EBADMSG checksum mismatch
 *   -ENOTSUP unknown header version
 *   -EFBIG   block size or table entries over this implementation's caps
 */
int vhd_dyn_header_decode(const uint8_t *buf, struct vhd_dyn_header *h,
			  struct vhd_problem *why);

/* Encode h into the 1024 bytes at buf with its checksum; the reserved
 * fields (the locators' too) are left as buf holds them. */
void vhd_dyn_header_encode(const struct vhd_dyn_header *h, uint8_t *buf);

/* n BAT entries: big-endian raw <-> native (decode may work in place). */
void vhd_bat_decode(const uint8_t *raw, uint64_t n, uint32_t *bat);
void vhd_bat_encode(const uint32_t *bat, uint64_t n, uint8_t *raw);

/* Bytes of the sector bitmap before each block's data. */
uint32_t vhd_bitmap_size(uint32_t block_size);

/*
 * Length of the run of equal bits in a sector bitmap (bit 7 of byte 0 is
 * sector 0) that starts at bit start, at most max (> 0) bits.  *set gets
 * the run's state.  Whole 0x00/0xff bytes and words are skipped at once.
 */
uint64_t vhd_bitmap_run(const uint8_t *bm, uint64_t start, uint64_t max,
			bool *set);

/* "W2ru", "MacX", ...: a known platform code's name, or NULL. */
const char *vhd_locator_name(uint32_t code);

/*
 * The path in a W2ru, W2ku (UTF-16LE) or MacX (file URL) locator's n
 * bytes of data, as UTF-8 (malloc'd), and its kind.  *out is NULL for any
 * other code.  0, -EILSEQ (not valid UTF-16) or -ENOMEM.
 */
int vhd_locator_decode(uint32_t code, const uint8_t *d, size_t n, char **out,
		       enum img_ref_kind *kind);

/* The header's parent unicode name (512 bytes of UTF-16BE) as UTF-8. */
int vhd_parent_name_decode(const uint8_t *name, char **out);

/* A relative path as W2ru text: "sub/p.vhd" -> ".\sub\p.vhd" (malloc'd). */
char *vhd_w2ru_encode(const char *rel);

/*
 * What a differencing disk records of its parent's path: the file name
 * (rel, else abs) as the unicode name, a W2ku locator (abs, if not NULL)
 * and a W2ru one (rel, if not NULL).  0, or -EINVAL (no usable path),
 * -ENAMETOOLONG, -EILSEQ, -ENOMEM; *np is empty then.
 */
int vhd_parent_refs_encode(const char *rel, const char *abs,
			   struct vhd_new_parent *np);
void vhd_new_parent_clear(struct vhd_new_parent *np);

/* h's locators: np's, their data from off on, each in whole sectors. */
void vhd_locators_place(struct vhd_dyn_header *h,
			const struct vhd_new_parent *np, uint64_t off);

/*
 * The bytes of a new dynamic or differencing file up to its footer:
 * footer copy, dynamic header (blocks of bs, the parent's id, time stamp
 * and np's name and locators, np may be NULL), a BAT all unused, then
 * each locator's data in whole sectors.  f is the footer, encoded into
 * footer (512 bytes) too.  *out is malloc'd, *out_len its length.
 */
int vhd_layout_encode(uint8_t **out, uint64_t *out_len, uint8_t *footer,
		      const struct vhd_footer *f, uint32_t bs,
		      const uint8_t parent_uuid[16], uint32_t pstamp,
		      const struct vhd_new_parent *np);

/* ---- the driver's state ----------------------------------------------------- */

/* Sector bitmaps up to this total are kept in memory (read at open, and
 * for new blocks of a writable image); beyond it they are read from the
 * file on each lookup. */
#define VHD_BITMAP_PRELOAD_MAX (64u << 20)

/* Memory the in-memory sector bitmaps live in, freed all at once. */
struct vhd_chunk {
	struct vhd_chunk *next;	/* owned */
	uint8_t data[];
};

struct vhd_rw;

struct vhd {
	struct vhd_footer footer;
	uint8_t footer_raw[VHD_FOOTER_SIZE]; /* as read; rewritten at the new
					      * end when a block is added */
	bool footer_at_end;	/* a whole valid footer ends the file */
	bool footer_copy_used;	/* none at the end: the copy at offset 0 */
	uint64_t limit;		/* where the payload ends (footer at end) */
	struct vhd_dyn_header header;	/* dynamic, differencing */
	uint32_t block_size;	/* dynamic, differencing */
	uint32_t bitmap_size;	/* bitmap bytes before each block's data */
	uint64_t nblocks;	/* BAT entries in use: ceil(size / block) */
	uint64_t nalloc;	/* of them allocated at open */
	uint64_t table_offset;	/* the BAT in the file */
	uint32_t *bat;		/* owned: nblocks sector numbers (native);
				 * written only under the writer's
				 * allocation lock, read with acquire loads */
	uint8_t **bm;		/* owned array (nblocks): each block's sector
				 * bitmap in chunks, or NULL: in the file
				 * only.  NULL array: none in memory */
	struct vhd_chunk *chunks; /* owned list */
	uint64_t bm_bytes;	/* bitmap bytes in chunks */
	struct img_parent parent; /* differencing: owns its paths */
	struct vhd_rw *rw;	/* owned by write.c: writable images only */
};

/* ---- open.c: the read side ------------------------------------------------ */

/* ->open, ->close without the writer (driver.c adds it). */
int vhd_open(struct img *img);
void vhd_close(struct img *img);
int vhd_probe(const struct img_probe *p);
int vhd_parent(struct img *img, struct img_parent *p);
int vhd_map_extent(struct img *img, uint64_t off, uint64_t len,
		   struct img_extent *ext);
/* pread of what (for the log); past the end of the file: -EUCLEAN */
int vhd_pread(struct img *img, void *buf, size_t n, uint64_t off,
	      const char *what);
/* len zeroed bytes that live until close (bitmap memory). */
uint8_t *vhd_chunk_alloc(struct vhd *s, uint64_t len);

/* ---- write.c: ->write, ->zero, ->flush and the writable open ------------- */

/* After vhd_open of a writable image: refuse what cannot be written
 * safely, repair a cut-off end, set up the dirty tracking.  0 or -errno. */
int vhd_rw_open(struct img *img);
/* Write the dirty metadata back and free the writer's state (no-op when
 * none).  Before vhd_close. */
void vhd_rw_close(struct img *img);
int vhd_write(struct img *img, const void *buf, size_t n, uint64_t off,
	      const struct img_below *below);
int vhd_zero(struct img *img, uint64_t off, uint64_t n,
	     const struct img_below *below);
int vhd_flush(struct img *img);

/*
 * Test hook: when not NULL, the write and flush paths call it after each
 * step below, so a unit test can stop a forked writer (_exit) between any
 * two steps and check what a crash there leaves in the file.  Never set
 * in programs.
 */
enum vhd_step {
	VHD_STEP_ALLOC_FOOTER = 1,	/* footer written at the new end */
	VHD_STEP_ALLOC_BITMAP,		/* a new block's bitmap written to
					 * the file (bitmaps not in memory) */
	VHD_STEP_ALLOC_DATA,		/* a new block's written sectors */
	VHD_STEP_ALLOC_PUBLISH,		/* new blocks published in memory */
	VHD_STEP_DATA,			/* sectors written in an allocated
					 * block, bits not set yet */
	VHD_STEP_BITMAP,		/* their bits set (in memory, or one
					 * bitmap sector rewritten in the file) */
	VHD_STEP_FLUSH_BITMAP,		/* flush: one dirty bitmap written */
	VHD_STEP_FLUSH_SYNC1,		/* flush: bitmaps and data durable */
	VHD_STEP_FLUSH_BAT,		/* flush: one run of BAT sectors */
	VHD_STEP_FLUSH_SYNC2,		/* flush: the BAT durable */
	VHD_STEP_MAX = VHD_STEP_FLUSH_SYNC2,
};
extern void (*vhd_test_hook)(enum vhd_step step);

/* ---- create.c, parent.c, check.c ------------------------------------------- */

/* ->create (fixed or dynamic base image) and ->create_diff */
int vhd_create(const char *path, const struct img_create_opts *o);
int vhd_create_diff(const char *path, const struct img_create_parent *par,
		    const struct img_create_opts *o);
/* The parent time stamp a child records for parent p: a VHD's footer time
 * stamp, else the file's mtime.  0 or -errno (fstat). */
int vhd_parent_time_get(const struct img *p, uint32_t *ts);
/* ->set_parent */
int vhd_set_parent(struct img *img, const struct img_create_parent *parent);
/* ->check, a structural check (repairs the footer) */
int vhd_check(struct img *img, bool repair, struct img_check *res);


#endif
