/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhd.h: Microsoft Virtual Hard Disk (VHD) on-disk layout and the pure
 * helpers of vhd.c (exported for the unit tests only).
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
#define VHD_CREATOR_APP "lyfs"
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

/*
 * One's complement of the byte sum of buf[0..len), skipping the 4-byte
 * checksum field at csum_off (spec: "Checksum").
 */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off);

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

/*
 * Decode a 1024-byte dynamic disk header.  Silent:
 *   -EUCLEAN bad cookie, or a block size that is not a power of two >= 512
 *   -EBADMSG checksum mismatch
 *   -ENOTSUP unknown header version
 *   -EFBIG   block size or table entries over this implementation's caps
 */
int vhd_dyn_header_decode(const uint8_t *buf, struct vhd_dyn_header *h,
			  struct vhd_problem *why);

/*
 * Length of the run of equal bits in a sector bitmap (bit 7 of byte 0 is
 * sector 0) that starts at bit start, at most max (> 0) bits.  *set gets
 * the run's state.  Whole 0x00/0xff bytes and words are skipped at once.
 */
uint64_t vhd_bitmap_run(const uint8_t *bm, uint64_t start, uint64_t max,
			bool *set);

/*
 * The footer's disk geometry field (cylinders << 16 | heads << 8 | sectors
 * per track) for a disk of size bytes: the spec's "CHS Calculation".
 */
uint32_t vhd_chs_geometry(uint64_t size);

/* vhd-check.c: ->check, a structural check (repairs the footer) */
struct img;
struct img_check;
int vhd_check(struct img *img, bool repair, struct img_check *res);

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

/*
 * vhd.c: the bytes of a new file up to its footer (footer copy, dynamic
 * header, BAT all unused, then each of the nloc parent locators) for a
 * disk of size bytes and blocks of bs; the footer (512 bytes, disk type
 * differencing, a new unique id) is written to footer too.  *out is
 * malloc'd, *out_len its length.  vhd-create.c builds base images from it.
 */
struct guid;
struct vhd_new_locator;
int vhd_build(uint8_t **out, uint64_t *out_len, uint8_t *footer,
	      uint64_t size, uint32_t bs, const struct guid *pid,
	      uint32_t pstamp, const uint8_t *name, size_t name_len,
	      struct vhd_new_locator *loc, unsigned nloc);

/*
 * vhd.c: the checks a new image's geometry passes (512-byte sectors ss, a
 * block size bs that is a power of two from 512 to VHD_MAX_BLOCK_SIZE, a
 * size of 1 byte to 2040 GiB and, for a dynamic or differencing disk, at
 * most VHD_MAX_BAT_ENTRIES blocks), for vhd.c's ->create_diff and
 * vhd-create.c.  *size is rounded up to whole sectors.  0, or -errno
 * logged as "vhd: PATH: ...".
 */
int vhd_new_geometry(const char *path, uint64_t *size, uint32_t bs,
		     uint32_t ss, bool dynamic);

/* vhd-create.c: the driver's ->create (fixed or dynamic base image) */
struct img_create_opts;
int vhd_create(const char *path, const struct img_create_opts *o);

/*
 * vhd.c, shared with vhd-parent.c (->set_parent): a time stamp field
 * (seconds since 2000-01-01 UTC, clamped), the parent time stamp a child
 * records for parent p (a VHD's footer time stamp, else the file's mtime;
 * 0 or -errno), and a relative path as W2ru text (malloc'd, or NULL).
 */
struct img;
uint32_t vhd_stamp(time_t t);
int vhd_parent_stamp(const struct img *p, uint32_t *ts);
char *vhd_w2ru_text(const char *rel);
/* vhd-parent.c: the driver's ->set_parent */
struct img_create_parent;
int vhd_set_parent(struct img *img, const struct img_create_parent *parent);

#endif
