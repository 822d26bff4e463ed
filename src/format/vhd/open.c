// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhd.c: Microsoft Virtual Hard Disk images: fixed, dynamic, differencing.
 *
 * Everything read from the file is checked at open: the footer (the one at
 * the end, or the copy at offset 0 of a dynamic disk), the dynamic header,
 * the BAT, every allocated block and the parent locators.
 *
 *   fixed         the file is the disk, then the footer
 *   dynamic       an allocated block is data as a whole (qemu: its sector
 *                 bitmap is not consulted); an unused BAT entry is a hole
 *   differencing  an allocated block holds the sectors its bitmap marks;
 *                 every other sector comes from the parent
 *
 * The virtual size is the footer's current size, never the CHS geometry.
 * A VHD names no format for its parent: the chain probes the parent file,
 * so a VHD may sit on a qcow2, VHDX or raw parent.  An all-zero parent
 * unique id means "not recorded" (what create_diff writes over a parent
 * that has no identity) and is not checked.
 *
 * Writing (a top image opened writable).  Fixed disks are written in place.
 * Dynamic and differencing disks are written sector-granular (nothing is
 * ever copied from the parent): the data goes to the file at once, the
 * metadata that points at it (sector-bitmap bits, BAT entries) is kept in
 * memory, dirty, and written back by ->flush, as qemu's metadata caches
 * do.  Readers see the in-memory metadata, which is published only after
 * the data it points at is written (the page cache serves the rest).
 *
 * A write into an unused BAT entry allocates whole blocks (the run of
 * unused blocks the write starts in, at most VHD_ALLOC_BATCH) where the
 * footer at the end of the file is, under alloc_lock:
 *
 *   a. the footer is written at the new end of the file (the space before
 *      it is a hole, which reads as zeros): the file always ends in a
 *      valid footer when the process dies, and the old footer, in the
 *      middle now, lies in space nothing points at;
 *   b. the written sectors go into the new blocks (their bitmaps too, if
 *      bitmaps are not kept in memory);
 *   c. the bitmaps (the written sectors' bits; all bits on a dynamic disk)
 *      and BAT entries are published in memory with release stores, the
 *      bitmap first, and marked dirty.
 *
 * In an allocated block the sectors are written, then their bits are
 * ORed into the in-memory bitmap (atomic; readers copy it with atomic
 * loads) and the block is marked dirty.  A write whose bits are all set
 * already, and that no other writer of the block is setting (inflight),
 * is one pwrite.  Bits only go from 0 to 1 (VHD cannot give a sector
 * back).  Without bitmaps in memory (more than VHD_BITMAP_PRELOAD_MAX
 * allocated) the bitmap sector is rewritten in the file (read-modify-write
 * under a stripe lock) instead: no fdatasync, ->flush orders it.
 *
 * ->flush (flush_lock: one at a time; writes go on meanwhile):
 *
 *   1. under alloc_lock, take the dirty BAT entries (their values, into
 *      bat_disk) and the dirty bitmaps: every block taken was published,
 *      so its data, bitmap and the footer past it were written before;
 *   2. write each dirty bitmap (cleared dirty first, then copied: bits a
 *      concurrent writer sets after the copy mark it dirty again);
 *   3. fdatasync: data, bitmaps, footer and file size are durable;
 *   4. write the BAT sectors holding the taken entries, merged into runs,
 *      from bat_disk (entries published after step 1 stay dirty: their
 *      data may not be durable);
 *   5. fdatasync.  Nothing dirty: step 3 only.
 *
 * Crash (process killed, or power lost) at any instant: the BAT in the
 * file points only at blocks whose bitmaps and data were durable before
 * it was written, inside a file that was as long; a BAT entry still
 * unused reads from the parent, so a lost allocation loses only writes no
 * flush acknowledged.  A killed process leaves a file that ends in a
 * valid footer (step a).  After a power failure the end of the file may
 * be a hole or torn: a writable open then repairs it (the only file this
 * driver ever modifies is the top layer): it writes the footer copy from
 * offset 0 after the last block the BAT references (or after the
 * metadata) and cuts the file there, dropping space no entry points at.
 * A read-only open reads such a file through the copy and writes nothing.
 * Between data and bits there is no barrier: after a power failure a
 * sector written since the last flush may read as what the block held
 * before (zeros in blocks this driver allocated) rather than old or new.
 *
 * close writes the dirty metadata back (a flush).  Dirty metadata is
 * bounded: a writer that finds more than dirty_max dirty blocks (4096 BAT
 * entries, or 16 MiB of bitmaps) runs
 * the flush itself.  A failed write of metadata or a failed fdatasync
 * marks the image broken: every later write and flush fails with -EIO
 * (the page cache may have dropped what was written; carrying on could
 * lie about durability).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "registry.h"
#include "utf16.h"
#include "vhd.h"

/* Sector bitmaps up to this total are kept in memory (read at open, and
 * for new blocks of a writable image); beyond it they are read from the
 * file on each lookup. */
#define VHD_BITMAP_PRELOAD_MAX (64u << 20)
/* Bitmap bytes read per lookup when not in memory (4096 sectors). */
#define VHD_BITMAP_LAZY_BYTES 512u
/* Sectors one bitmap sector covers. */
#define VHD_BITS_PER_SECTOR (VHD_SECTOR * 8)
/* Stripes of the lock that serializes bitmap-sector rewrites per block. */
#define VHD_BM_LOCKS 64
/* Most blocks one allocation batch takes. */
#define VHD_ALLOC_BATCH 64
/* New blocks' data areas start on this boundary (or the block size). */
#define VHD_DATA_ALIGN 4096u
/* Dirty BAT entries (or bitmaps, and bitmap bytes) past which a writer
 * flushes itself. */
#define VHD_DIRTY_MAX 4096u
#define VHD_DIRTY_BYTES (16u << 20)

void (*vhd_test_hook)(enum vhd_step step);

/* Memory the in-memory sector bitmaps live in, freed all at once. */
struct vhd_chunk {
	struct vhd_chunk *next;	/* owned */
	uint8_t data[];
};

struct vhd {
	struct vhd_footer footer;
	uint8_t footer_raw[VHD_FOOTER_SIZE]; /* as read; rewritten at the new
					      * end when a block is added */
	uint32_t block_size;	/* dynamic, differencing */
	uint32_t bitmap_size;	/* bitmap bytes before each block's data */
	uint64_t nblocks;	/* BAT entries in use: ceil(size / block) */
	uint64_t table_offset;	/* the BAT in the file */
	uint32_t *bat;		/* owned: nblocks sector numbers (native);
				 * written only under alloc_lock, read with
				 * acquire loads */
	uint8_t **bm;		/* owned array (nblocks): each block's sector
				 * bitmap in chunks, or NULL: in the file
				 * only.  NULL array: none in memory */
	struct vhd_chunk *chunks; /* owned list */
	uint64_t bm_bytes;	/* bitmap bytes in chunks */
	struct img_parent parent; /* differencing: owns its paths */
	/* writable only: */
	bool rw;		/* open for writing (img->writable) */
	bool repair;		/* no valid footer at the end: write one */
	bool broken;		/* a metadata write failed: no more writes */
	uint64_t next;		/* file offset of the footer at the end:
				 * where the next block goes (alloc_lock) */
	uint32_t *bat_disk;	/* owned: the BAT as flushed (native); taken
				 * under alloc_lock, written under flush_lock */
	uint8_t *bat_dirty;	/* owned: per block (alloc_lock) */
	uint32_t *bat_list;	/* owned: the dirty entries (alloc_lock) */
	uint64_t bat_n;
	uint8_t *bm_dirty;	/* owned: per block (atomic exchange) */
	uint32_t *bm_list;	/* owned: blocks whose in-memory bitmap is
				 * newer than the file's (dirty_lock) */
	uint64_t bm_n;
	uint64_t dirty_max;	/* bound on bat_n and bm_n */
	unsigned inflight[VHD_BM_LOCKS]; /* writers setting bits (atomic) */
	pthread_mutex_t alloc_lock;	/* before dirty_lock */
	pthread_mutex_t dirty_lock;
	pthread_mutex_t flush_lock;	/* one flush at a time */
	pthread_mutex_t bm_lock[VHD_BM_LOCKS];
};

static void vhd_hook(enum vhd_step step)
{
	if (vhd_test_hook)
		vhd_test_hook(step);
}

static int problem(struct vhd_problem *why, int err, const char *fmt, ...)
	__printf(3, 4);

static int problem(struct vhd_problem *why, int err, const char *fmt, ...)
{
	va_list ap;

	if (why) {
		va_start(ap, fmt);
		vsnprintf(why->msg, sizeof(why->msg), fmt, ap);
		va_end(ap);
	}
	return err;
}

uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < len; i++)
		if (i < csum_off || i >= csum_off + 4)
			sum += buf[i];
	return ~sum;
}

int vhd_footer_decode(const uint8_t *buf, struct vhd_footer *f,
		      struct vhd_problem *why)
{
	const struct vhd_footer_raw *r = (const void *)buf; /* bytes only */
	struct vhd_footer d;
	uint32_t stored, sum;

	if (memcmp(r->cookie, VHD_COOKIE, sizeof(r->cookie)) != 0)
		return problem(why, -EINVAL, "no \"conectix\" footer cookie "
			       "(0x%016llx)",
			       (unsigned long long)get_be64(r->cookie));
	stored = get_be32(r->checksum);
	sum = vhd_checksum(buf, sizeof(*r),
			   offsetof(struct vhd_footer_raw, checksum));
	if (stored != sum)
		return problem(why, -EBADMSG,
			       "footer checksum mismatch (stored 0x%08x, "
			       "computed 0x%08x)", stored, sum);
	d.version = get_be32(r->version);
	if (d.version >> 16 != 1)
		return problem(why, -ENOTSUP,
			       "unsupported footer version (0x%08x)",
			       d.version);
	d.disk_type = get_be32(r->disk_type);
	if (d.disk_type < VHD_TYPE_FIXED || d.disk_type > VHD_TYPE_DIFF)
		return problem(why, -ENOTSUP, "unsupported disk type (%u)",
			       d.disk_type);
	d.features = get_be32(r->features);
	d.data_offset = get_be64(r->data_offset);
	d.timestamp = get_be32(r->timestamp);
	d.creator_app = get_be32(r->creator_app);
	d.orig_size = get_be64(r->orig_size);
	d.cur_size = get_be64(r->cur_size);
	d.geometry = get_be32(r->geometry);
	memcpy(d.uuid, r->uuid, sizeof(d.uuid));
	d.saved_state = r->saved_state;
	*f = d;
	return 0;
}

int vhd_dyn_header_decode(const uint8_t *buf, struct vhd_dyn_header *h,
			  struct vhd_problem *why)
{
	const struct vhd_dyn_header_raw *r = (const void *)buf;
	uint32_t stored, sum;

	if (memcmp(r->cookie, VHD_DYN_COOKIE, sizeof(r->cookie)) != 0)
		return problem(why, -EUCLEAN, "no \"cxsparse\" dynamic header "
			       "cookie (0x%016llx)",
			       (unsigned long long)get_be64(r->cookie));
	stored = get_be32(r->checksum);
	sum = vhd_checksum(buf, sizeof(*r),
			   offsetof(struct vhd_dyn_header_raw, checksum));
	if (stored != sum)
		return problem(why, -EBADMSG,
			       "dynamic header checksum mismatch (stored "
			       "0x%08x, computed 0x%08x)", stored, sum);
	h->version = get_be32(r->version);
	if (h->version >> 16 != 1)
		return problem(why, -ENOTSUP,
			       "unsupported dynamic header version (0x%08x)",
			       h->version);
	h->block_size = get_be32(r->block_size);
	if (h->block_size < VHD_SECTOR || !is_pow2(h->block_size))
		return problem(why, -EUCLEAN,
			       "block size is not a power of two >= 512 (%u)",
			       h->block_size);
	if (h->block_size > VHD_MAX_BLOCK_SIZE)
		return problem(why, -EFBIG, "block size too large (%u)",
			       h->block_size);
	h->max_table_entries = get_be32(r->max_table_entries);
	if (h->max_table_entries > VHD_MAX_BAT_ENTRIES)
		return problem(why, -EFBIG, "max table entries too large (%u)",
			       h->max_table_entries);
	h->table_offset = get_be64(r->table_offset);
	memcpy(h->parent_uuid, r->parent_uuid, sizeof(h->parent_uuid));
	h->parent_timestamp = get_be32(r->parent_timestamp);
	memcpy(h->parent_name, r->parent_name, sizeof(h->parent_name));
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator_raw *l = &r->locators[i];

		h->locators[i].code = get_be32(l->code);
		h->locators[i].data_space = get_be32(l->data_space);
		h->locators[i].data_length = get_be32(l->data_length);
		h->locators[i].data_offset = get_be64(l->data_offset);
	}
	return 0;
}

static inline bool bm_bit(const uint8_t *bm, uint64_t i)
{
	return (bm[i >> 3] >> (7 - (i & 7))) & 1;	/* MSB first */
}

uint64_t vhd_bitmap_run(const uint8_t *bm, uint64_t start, uint64_t max,
			bool *set)
{
	const bool state = bm_bit(bm, start);
	const uint8_t fill = state ? 0xff : 0x00;
	const uint64_t word = state ? UINT64_MAX : 0;
	uint64_t i = start, end = start + max;

	*set = state;
	while (i < end && (i & 7)) {	/* up to a byte boundary */
		if (bm_bit(bm, i) != state)
			return i - start;
		i++;
	}
	while (end - i >= 64) {		/* whole words of one state */
		uint64_t w;

		memcpy(&w, bm + (i >> 3), sizeof(w));
		if (w != word)
			break;
		i += 64;
	}
	while (end - i >= 8 && bm[i >> 3] == fill)
		i += 8;
	while (i < end && bm_bit(bm, i) == state)
		i++;
	return i - start;
}

static int vhd_pread(struct img *img, void *buf, size_t n, uint64_t off,
		     const char *what)
{
	int r = pread_full(img->fd, buf, n, off);

	if (r == -ENODATA)
		return log_err_ret(-EUCLEAN, "vhd: %s: %s lies past the end "
				   "of the file (%llu)", img->path, what,
				   (unsigned long long)off);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot read %s (%s)",
				   img->path, what, strerror(-r));
	return 0;
}

/*
 * Find the footer: the one at the end of the file, or (dynamic and
 * differencing disks) the copy at offset 0.  *limit is where the file's
 * payload ends: the footer at the end is never data.  *at_end: a whole
 * valid 512-byte footer ends the file (its bytes are in raw).  *copy: the
 * copy at offset 0 was used (no valid footer at the end).
 */
static int vhd_read_footer(struct img *img, struct vhd_footer *f,
			   uint8_t *raw, uint64_t *limit, bool *at_end,
			   bool *copy_used)
{
	uint8_t buf[VHD_FOOTER_SIZE];
	struct vhd_problem end_why = { "" }, copy_why = { "" };
	struct vhd_footer end, copy;
	uint64_t end_len = 0;
	int end_r, copy_r, r;

	if (img->file_size < VHD_FOOTER_SIZE)
		return log_err_ret(-EINVAL, "vhd: %s: file too small for a "
				   "footer (%llu)", img->path,
				   (unsigned long long)img->file_size);
	r = vhd_pread(img, buf, sizeof(buf), img->file_size - sizeof(buf),
		      "footer");
	if (r < 0)
		return r;
	end_r = vhd_footer_decode(buf, &end, &end_why);
	if (end_r != -EINVAL) {
		end_len = VHD_FOOTER_SIZE;
	} else if (!memcmp(buf + 1, VHD_COOKIE, 8)) {
		/* Virtual PC before 2004: a 511-byte footer */
		memmove(buf, buf + 1, VHD_FOOTER_OLD_SIZE);
		buf[VHD_FOOTER_OLD_SIZE] = 0;
		end_r = vhd_footer_decode(buf, &end, &end_why);
		end_len = VHD_FOOTER_OLD_SIZE;
	}
	*limit = img->file_size - end_len;
	*at_end = end_r == 0 && end_len == VHD_FOOTER_SIZE;
	*copy_used = false;
	if (end_r == 0) {
		memcpy(raw, buf, sizeof(buf));
		*f = end;
		return 0;
	}

	r = vhd_pread(img, buf, sizeof(buf), 0, "footer copy");
	if (r < 0)
		return r;
	copy_r = vhd_footer_decode(buf, &copy, &copy_why);
	if (copy_r == 0 && copy.disk_type != VHD_TYPE_FIXED) {
		*copy_used = true;
		if (end_len)
			log_warn("vhd: %s: %s at the end; using the footer "
				 "copy at offset 0", img->path, end_why.msg);
		else
			log_warn("vhd: %s: no footer at the end of the file; "
				 "using the footer copy at offset 0",
				 img->path);
		memcpy(raw, buf, sizeof(buf));
		*f = copy;
		return 0;
	}
	if (end_len)
		return log_err_ret(end_r, "vhd: %s: %s", img->path,
				   end_why.msg);
	if (copy_r == 0)
		return log_err_ret(-EUCLEAN, "vhd: %s: fixed disk without a "
				   "footer at the end of the file (%llu)",
				   img->path,
				   (unsigned long long)img->file_size);
	if (copy_r != -EINVAL)
		return log_err_ret(copy_r, "vhd: %s: %s", img->path,
				   copy_why.msg);
	return log_err_ret(-EINVAL, "vhd: %s: %s", img->path, end_why.msg);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* "file://localhost/a%20b" -> "/a b" (absolute); "a/b" -> relative */
static int vhd_macx_path(const uint8_t *d, size_t n, char **out,
			 enum img_ref_kind *kind)
{
	const char *s = (const char *)d;
	size_t len = strnlen(s, n), o = 0;
	char *p;

	*kind = IMG_REF_RELATIVE;
	if (len >= 7 && !strncmp(s, "file://", 7)) {
		*kind = IMG_REF_ABSOLUTE;
		s += 7;
		len -= 7;
		if (len >= 10 && !strncmp(s, "localhost/", 10)) {
			s += 9;
			len -= 9;
		}
	}
	p = malloc(len + 1);
	if (!p)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++) {
		int hi = i + 2 < len ? hex_digit(s[i + 1]) : -1;
		int lo = i + 2 < len ? hex_digit(s[i + 2]) : -1;

		if (s[i] == '%' && hi >= 0 && lo >= 0 && (hi | lo)) {
			p[o++] = (char)(hi << 4 | lo);	/* never a NUL */
			i += 2;
			continue;
		}
		p[o++] = s[i];
	}
	p[o] = '\0';
	*out = p;
	return 0;
}

static const char *vhd_plat_name(uint32_t code)
{
	switch (code) {
	case VHD_PLAT_W2RU:
		return "W2ru";
	case VHD_PLAT_W2KU:
		return "W2ku";
	case VHD_PLAT_MACX:
		return "MacX";
	case VHD_PLAT_WI2R:
		return "Wi2r";
	case VHD_PLAT_WI2K:
		return "Wi2k";
	case VHD_PLAT_MAC:
		return "Mac";
	}
	return NULL;
}

/*
 * Read and decode locator i.  *out is NULL for a locator this driver does
 * not use (the deprecated ANSI ones, Mac aliases) or an empty one.  The
 * data space is ignored: Windows writes it in bytes, the spec in sectors,
 * and only the offset and length say where the path is.
 */
static int vhd_read_locator(struct img *img, const struct vhd_locator *l,
			    unsigned i, uint64_t limit, char **out,
			    enum img_ref_kind *kind)
{
	const char *name = vhd_plat_name(l->code);
	uint8_t *data;
	char what[32];
	int r;

	*out = NULL;
	if (!name || !l->data_length)
		return 0;	/* none, or an unknown code: nothing to read */
	if (l->data_length > VHD_MAX_LOCATOR_LEN)
		return log_err_ret(-EFBIG, "vhd: %s: parent locator %u (%s) "
				   "too long (%u)", img->path, i, name,
				   l->data_length);
	if (!range_within(l->data_offset, l->data_length, limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: parent locator %u (%s) "
				   "lies past the end of the file (%llu)",
				   img->path, i, name,
				   (unsigned long long)l->data_offset);
	if (l->code != VHD_PLAT_W2RU && l->code != VHD_PLAT_W2KU &&
	    l->code != VHD_PLAT_MACX)
		return 0;
	data = malloc(l->data_length);
	if (!data)
		return -ENOMEM;
	snprintf(what, sizeof(what), "parent locator %u", i);
	r = vhd_pread(img, data, l->data_length, l->data_offset, what);
	if (r < 0)
		goto out;
	if (l->code == VHD_PLAT_MACX) {
		r = vhd_macx_path(data, l->data_length, out, kind);
		goto out;
	}
	*kind = l->code == VHD_PLAT_W2RU ? IMG_REF_RELATIVE : IMG_REF_ABSOLUTE;
	r = utf16_to_utf8(data, l->data_length, false, out);
	if (r == -EILSEQ)
		r = log_err_ret(-EUCLEAN, "vhd: %s: parent locator %u (%s) "
				"is not valid UTF-16 (%u bytes)", img->path,
				i, name, l->data_length);
out:
	free(data);
	return r;
}

/* Differencing: decode the parent's identity and references at open. */
static int vhd_load_parent(struct img *img, struct vhd *s,
			   const struct vhd_dyn_header *h, uint64_t limit)
{
	static const uint32_t order[] = {	/* preference order */
		VHD_PLAT_W2RU, VHD_PLAT_W2KU, VHD_PLAT_MACX,
	};
	struct img_parent *p = &s->parent;
	char *paths[VHD_NLOCATORS] = { NULL }, *name = NULL;
	enum img_ref_kind kinds[VHD_NLOCATORS] = { IMG_REF_NAME };
	int r = 0;

	/* Check and decode every locator, then collect them in order. */
	for (unsigned i = 0; i < VHD_NLOCATORS && r == 0; i++)
		r = vhd_read_locator(img, &h->locators[i], i, limit,
				     &paths[i], &kinds[i]);
	if (r < 0)
		goto out;
	r = utf16_to_utf8(h->parent_name, sizeof(h->parent_name), true, &name);
	if (r == -EILSEQ)
		r = log_err_ret(-EUCLEAN, "vhd: %s: parent unicode name is "
				"not valid UTF-16 (%u bytes)", img->path,
				(unsigned)sizeof(h->parent_name));
	if (r < 0)
		goto out;
	for (size_t k = 0; k < ARRAY_SIZE(order) && r != -ENOMEM; k++)
		for (unsigned i = 0; i < VHD_NLOCATORS && r != -ENOMEM; i++)
			if (h->locators[i].code == order[k] && paths[i] &&
			    *paths[i])
				r = img_parent_add_ref(p, kinds[i],
						       vhd_plat_name(order[k]),
						       paths[i]);
	if (r != -ENOMEM && *name)
		r = img_parent_add_ref(p, IMG_REF_NAME, "parent_name", name);
	if (r == -ENOMEM)
		goto out;
	r = 0;	/* -E2BIG: more references than fit; the first ones win */
	guid_from_be(&p->id, h->parent_uuid);
	p->id_kind = guid_is_zero(&p->id) ? IMG_ID_NONE : IMG_ID_VHD_UUID;
	p->has_timestamp = true;
	p->timestamp = h->parent_timestamp;
	/* The spec means a VHD parent, but nothing in the file names the
	 * format: leave it to the probe (create_diff writes VHDs over qcow2,
	 * VHDX and raw parents; the unique id still checks a VHD parent). */
	p->format = NULL;
out:
	for (unsigned i = 0; i < VHD_NLOCATORS; i++)
		free(paths[i]);
	free(name);
	return r;
}

/* ---- sector bitmaps in memory ---------------------------------------- */

/* len zeroed bytes that live until close. */
static uint8_t *vhd_chunk_alloc(struct vhd *s, uint64_t len)
{
	struct vhd_chunk *c = calloc(1, sizeof(*c) + (size_t)len);

	if (!c)
		return NULL;
	c->next = s->chunks;
	s->chunks = c;
	s->bm_bytes += len;
	return c->data;
}

/* Bits [lo, hi) of one bitmap byte, 0 <= lo < hi <= 8 (MSB first). */
static inline uint8_t bm_mask(unsigned lo, unsigned hi)
{
	return (uint8_t)((0xffu >> lo) & (0xffu << (8 - hi)));
}

/* Are bits [first, first + n) all set?  (Atomic loads: bits may be set
 * concurrently; sequentially consistent, see vhd_mark.) */
static bool bm_all_set(const uint8_t *bm, uint64_t first, uint64_t n)
{
	const uint64_t end = first + n;

	for (uint64_t i = first; i < end;) {
		uint64_t byte = i / 8;
		unsigned hi = (unsigned)MIN((uint64_t)8, end - byte * 8);
		uint8_t m = bm_mask((unsigned)(i % 8), hi);

		if ((__atomic_load_n(&bm[byte], __ATOMIC_SEQ_CST) & m) != m)
			return false;
		i = byte * 8 + hi;
	}
	return true;
}

/* Set bits [first, first + n), each byte with one atomic OR (release: the
 * sectors they mark are written before; sequentially consistent, see
 * vhd_mark). */
static void bm_set(uint8_t *bm, uint64_t first, uint64_t n)
{
	const uint64_t end = first + n;

	for (uint64_t i = first; i < end;) {
		uint64_t byte = i / 8;
		unsigned hi = (unsigned)MIN((uint64_t)8, end - byte * 8);

		__atomic_fetch_or(&bm[byte], bm_mask((unsigned)(i % 8), hi),
				  __ATOMIC_SEQ_CST);
		i = byte * 8 + hi;
	}
}

/* Keep every allocated block's bitmap in memory if they are few. */
static int vhd_load_bitmaps(struct img *img, struct vhd *s, uint64_t nalloc)
{
	uint64_t total;
	uint8_t *p;
	int r;

	if (MUL_OVERFLOW(nalloc, (uint64_t)s->bitmap_size, &total) ||
	    total > VHD_BITMAP_PRELOAD_MAX) {
		DBG(FORMAT, "vhd: %s: %llu blocks allocated: sector bitmaps "
		    "read on demand", img->path, (unsigned long long)nalloc);
		return 0;
	}
	s->bm = calloc((size_t)s->nblocks + 1, sizeof(*s->bm));
	p = vhd_chunk_alloc(s, total);
	if (!s->bm || !p)
		return -ENOMEM;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		r = vhd_pread(img, p, s->bitmap_size,
			      (uint64_t)s->bat[b] * VHD_SECTOR,
			      "sector bitmap");
		if (r < 0)
			return r;
		s->bm[b] = p;
		p += s->bitmap_size;
	}
	return 0;
}

/* ---- checks for writing ------------------------------------------------ */

struct vhd_region {
	uint64_t off, len;
	const char *what;	/* static; NULL: block blk */
	uint64_t blk;
};

static int vhd_region_cmp(const void *a, const void *b)
{
	const struct vhd_region *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static void vhd_region_name(const struct vhd_region *r, char *buf, size_t len)
{
	if (r->what)
		snprintf(buf, len, "%s", r->what);
	else
		snprintf(buf, len, "block %llu", (unsigned long long)r->blk);
}

/*
 * A writable dynamic or differencing disk: no two structures this driver
 * writes may overlap each other or what it must not overwrite.  Reading
 * tolerates overlaps; writing into one would corrupt the other.  Every
 * range is already inside the file (checked at open).  Sorted by offset,
 * two regions overlap if and only if two neighbours do.
 */
static int vhd_check_layout(struct img *img, const struct vhd *s,
			    const struct vhd_dyn_header *h, uint64_t nalloc)
{
	struct vhd_region *v;
	size_t n = 0;
	int r = 0;

	v = malloc(((size_t)nalloc + 3 + VHD_NLOCATORS) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	v[n++] = (struct vhd_region){ 0, VHD_FOOTER_SIZE, "the footer copy",
				      0 };
	v[n++] = (struct vhd_region){ s->footer.data_offset,
				      VHD_DYN_HEADER_SIZE,
				      "the dynamic header", 0 };
	if (s->nblocks)
		v[n++] = (struct vhd_region){ s->table_offset, s->nblocks * 4,
					      "the BAT", 0 };
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator *l = &h->locators[i];

		/* the ones vhd_read_locator checked against the file */
		if (s->footer.disk_type == VHD_TYPE_DIFF &&
		    vhd_plat_name(l->code) && l->data_length)
			v[n++] = (struct vhd_region){ l->data_offset,
						      l->data_length,
						      "a parent locator", 0 };
	}
	for (uint64_t b = 0; b < s->nblocks; b++)
		if (s->bat[b] != VHD_BAT_UNUSED)
			v[n++] = (struct vhd_region){
				(uint64_t)s->bat[b] * VHD_SECTOR,
				s->bitmap_size +
					MIN((uint64_t)s->block_size,
					    img->size - b * s->block_size),
				NULL, b };
	qsort(v, n, sizeof(*v), vhd_region_cmp);
	for (size_t i = 1; i < n && r == 0; i++) {
		char a[48], b[48];

		if (v[i].off >= v[i - 1].off + v[i - 1].len)
			continue;
		vhd_region_name(&v[i - 1], a, sizeof(a));
		vhd_region_name(&v[i], b, sizeof(b));
		r = log_err_ret(-EROFS, "vhd: %s: cannot write: %s overlaps %s "
				"(offset %llu); read-only only", img->path, a,
				b, (unsigned long long)v[i].off);
	}
	free(v);
	return r;
}

/* Refuse to write what this driver could not write safely.  No valid
 * footer at the end, the copy at offset 0 good: repaired (s->repair). */
static int vhd_check_writable(struct img *img, struct vhd *s, bool at_end,
			      bool copy_used, uint64_t limit)
{
	if (!at_end && !copy_used &&
	    img->file_size - limit == VHD_FOOTER_OLD_SIZE)
		return log_err_ret(-EROFS, "vhd: %s: cannot write: the file "
				   "ends in a 511-byte footer (Virtual PC "
				   "before 2004); read-only only", img->path);
	if (!at_end && !copy_used)	/* not reached: no footer at all */
		return log_err_ret(-EROFS, "vhd: %s: cannot write: no valid "
				   "footer at the end of the file; read-only "
				   "only", img->path);
	s->repair = !at_end;
	if (s->footer.saved_state)
		return log_err_ret(-EROFS, "vhd: %s: cannot write: the disk is "
				   "in a saved state (%u); read-only only",
				   img->path, s->footer.saved_state);
	return 0;
}

/* The dirty-metadata tracking of a writable dynamic/differencing disk. */
static int vhd_rw_alloc(struct vhd *s)
{
	const size_t n = (size_t)s->nblocks + 1;

	s->bat_disk = malloc(n * sizeof(*s->bat_disk));
	s->bat_list = malloc(n * sizeof(*s->bat_list));
	s->bm_list = malloc(n * sizeof(*s->bm_list));
	s->bat_dirty = calloc(n, 1);
	s->bm_dirty = calloc(n, 1);
	if (!s->bat_disk || !s->bat_list || !s->bm_list || !s->bat_dirty ||
	    !s->bm_dirty)
		return -ENOMEM;
	memcpy(s->bat_disk, s->bat, (size_t)s->nblocks * sizeof(*s->bat));
	s->dirty_max = MIN((uint64_t)VHD_DIRTY_MAX,
			   MAX((uint64_t)1, VHD_DIRTY_BYTES / s->bitmap_size));
	return 0;
}

/*
 * A writable open of a file without a valid footer at its end (a crash
 * after the file grew and before the new footer was durable): the copy
 * at offset 0 was read and checked.  Everything the file holds ends at
 * the last block the BAT references, or at the end of the header, BAT and
 * locators: the footer goes right after that (sector-aligned) and the
 * file is cut there, dropping space nothing points at (blocks of writes
 * no flush acknowledged).  Made durable before any write.
 */
static int vhd_repair_tail(struct img *img, struct vhd *s,
			   const struct vhd_dyn_header *h)
{
	uint64_t end = s->footer.data_offset + VHD_DYN_HEADER_SIZE, pos;
	int r;

	end = MAX(end, s->table_offset + s->nblocks * 4);
	for (unsigned i = 0; i < VHD_NLOCATORS; i++) {
		const struct vhd_locator *l = &h->locators[i];

		/* the ones vhd_read_locator checked against the file */
		if (s->footer.disk_type == VHD_TYPE_DIFF &&
		    vhd_plat_name(l->code) && l->data_length)
			end = MAX(end, l->data_offset + l->data_length);
	}
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t start = (uint64_t)s->bat[b] * VHD_SECTOR, e;

		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		/* a whole block if the file holds it (as written here);
		 * else the part open() checked: up to the virtual size */
		e = start + s->bitmap_size + s->block_size;
		if (e > img->file_size)
			e = start + s->bitmap_size +
			    MIN((uint64_t)s->block_size,
				img->size - b * s->block_size);
		end = MAX(end, e);
	}
	pos = (end + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
	log_warn("vhd: %s: repairing the end of the file: the footer copy "
		 "from offset 0 written at %llu, after the last block (file "
		 "size %llu)", img->path, (unsigned long long)pos,
		 (unsigned long long)img->file_size);
	r = pwrite_full(img->fd, s->footer_raw, VHD_FOOTER_SIZE, pos);
	if (r == 0 && ftruncate(img->fd, (off_t)(pos + VHD_FOOTER_SIZE)) < 0)
		r = -errno;
	if (r == 0 && fdatasync(img->fd) < 0)
		r = -errno;
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot repair the footer at the "
				   "end of the file (%s)", img->path,
				   strerror(-r));
	s->next = pos;
	s->repair = false;
	return 0;
}

static int vhd_open_dynamic(struct img *img, struct vhd *s, uint64_t limit)
{
	uint8_t buf[VHD_DYN_HEADER_SIZE];
	struct vhd_dyn_header h;
	struct vhd_problem why;
	uint64_t off = s->footer.data_offset, nalloc = 0;
	uint32_t spb;
	int r;

	if (!range_within(off, sizeof(buf), limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: dynamic header lies "
				   "past the end of the file (%llu)",
				   img->path, (unsigned long long)off);
	r = vhd_pread(img, buf, sizeof(buf), off, "dynamic header");
	if (r < 0)
		return r;
	r = vhd_dyn_header_decode(buf, &h, &why);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: %s", img->path, why.msg);

	s->block_size = h.block_size;
	spb = h.block_size / VHD_SECTOR;
	/* one bit per sector, padded to a sector (spec: "Sector Bitmap") */
	s->bitmap_size = ((spb + 7) / 8 + VHD_SECTOR - 1) & ~(VHD_SECTOR - 1);
	s->nblocks = img->size / h.block_size + !!(img->size % h.block_size);
	s->table_offset = h.table_offset;
	if (s->nblocks > h.max_table_entries)
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "too small for the virtual size (%u "
				   "entries, %llu needed)", img->path,
				   h.max_table_entries,
				   (unsigned long long)s->nblocks);
	/* nblocks <= VHD_MAX_BAT_ENTRIES: no overflow below */
	if (!range_within(h.table_offset, s->nblocks * 4, limit))
		return log_err_ret(-EUCLEAN, "vhd: %s: block allocation table "
				   "lies past the end of the file (%llu)",
				   img->path,
				   (unsigned long long)h.table_offset);
	s->bat = malloc((size_t)s->nblocks * sizeof(*s->bat) + 1);
	if (!s->bat)
		return -ENOMEM;
	r = vhd_pread(img, s->bat, (size_t)s->nblocks * 4, h.table_offset,
		      "block allocation table");
	if (r < 0)
		return r;
	for (uint64_t b = 0; b < s->nblocks; b++) {
		uint64_t data_len, start;

		s->bat[b] = get_be32(&s->bat[b]);
		if (s->bat[b] == VHD_BAT_UNUSED)
			continue;
		/* the last block only needs to cover the virtual size */
		data_len = MIN((uint64_t)h.block_size,
			       img->size - b * h.block_size);
		start = (uint64_t)s->bat[b] * VHD_SECTOR;
		if (!range_within(start, s->bitmap_size + data_len, limit))
			return log_err_ret(-EUCLEAN, "vhd: %s: block %llu lies "
					   "past the end of the file (sector "
					   "%u)", img->path,
					   (unsigned long long)b, s->bat[b]);
		nalloc++;
	}
	img->block_size = h.block_size;
	/* differencing: for the reads; writable: to keep the bits current */
	if (s->footer.disk_type == VHD_TYPE_DIFF || s->rw) {
		r = vhd_load_bitmaps(img, s, nalloc);
		if (r < 0)
			return r;
	}
	if (s->footer.disk_type == VHD_TYPE_DIFF) {
		r = vhd_load_parent(img, s, &h, limit);
		if (r < 0)
			return r;
	}
	if (!s->rw)
		return 0;
	r = vhd_check_layout(img, s, &h, nalloc);
	if (r == 0)
		r = vhd_rw_alloc(s);
	if (r < 0 || !s->repair) {
		/* new blocks go where the footer is (the file's end) */
		s->next = img->file_size - VHD_FOOTER_SIZE;
		return r;
	}
	return vhd_repair_tail(img, s, &h);
}

static bool vhd_is_broken(const struct vhd *s);
static int vhd_flush_meta(struct img *img, struct vhd *s);

static void vhd_close(struct img *img)
{
	struct vhd *s = img->priv;

	if (!s)
		return;
	if (s->rw && s->bat_list && (s->bat_n || s->bm_n) &&
	    !vhd_is_broken(s))
		(void)vhd_flush_meta(img, s);	/* logs its errors */
	free(s->bat);
	free(s->bm);
	while (s->chunks) {
		struct vhd_chunk *c = s->chunks;

		s->chunks = c->next;
		free(c);
	}
	img_parent_clear(&s->parent);
	free(s->bat_disk);
	free(s->bat_list);
	free(s->bm_list);
	free(s->bat_dirty);
	free(s->bm_dirty);
	pthread_mutex_destroy(&s->alloc_lock);
	pthread_mutex_destroy(&s->dirty_lock);
	pthread_mutex_destroy(&s->flush_lock);
	for (unsigned i = 0; i < VHD_BM_LOCKS; i++)
		pthread_mutex_destroy(&s->bm_lock[i]);
	free(s);
	img->priv = NULL;
}

static int vhd_open(struct img *img)
{
	static const char *const subtypes[] = {
		[VHD_TYPE_FIXED] = "fixed",
		[VHD_TYPE_DYNAMIC] = "dynamic",
		[VHD_TYPE_DIFF] = "differencing",
	};
	struct vhd *s;
	uint64_t limit;
	bool at_end, copy_used;
	int r;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	img->priv = s;
	pthread_mutex_init(&s->alloc_lock, NULL);
	pthread_mutex_init(&s->dirty_lock, NULL);
	pthread_mutex_init(&s->flush_lock, NULL);
	for (unsigned i = 0; i < VHD_BM_LOCKS; i++)
		pthread_mutex_init(&s->bm_lock[i], NULL);
	r = vhd_read_footer(img, &s->footer, s->footer_raw, &limit, &at_end,
			    &copy_used);
	if (r < 0)
		goto fail;
	/* the footer's current size, in whole sectors (as qemu reads it) */
	img->size = s->footer.cur_size & ~(uint64_t)(VHD_SECTOR - 1);
	img->sector_size = VHD_SECTOR;
	img->phys_sector_size = VHD_SECTOR;
	img->has_id = true;
	guid_from_be(&img->id, s->footer.uuid);
	snprintf(img->subtype, sizeof(img->subtype), "%s",
		 subtypes[s->footer.disk_type]);
	s->rw = img->writable;	/* every type can be written */
	if (s->rw) {
		r = vhd_check_writable(img, s, at_end, copy_used, limit);
		if (r < 0)
			goto fail;
	}

	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		/* spec: the disk's bytes, then the footer */
		if (img->size > limit) {
			r = log_err_ret(-EUCLEAN, "vhd: %s: file too short for "
					"the virtual size (%llu)", img->path,
					(unsigned long long)img->size);
			goto fail;
		}
		return 0;
	}
	r = vhd_open_dynamic(img, s, limit);
	if (r < 0)
		goto fail;
	return 0;
fail:
	vhd_close(img);
	return r;
}

static int vhd_probe(const struct img_probe *p)
{
	if (p->tail_len >= VHD_FOOTER_SIZE &&
	    (!memcmp(p->tail, VHD_COOKIE, 8) ||
	     !memcmp(p->tail + 1, VHD_COOKIE, 8)))	/* 511-byte footer */
		return 100;
	if (p->head_len >= VHD_FOOTER_SIZE && !memcmp(p->head, VHD_COOKIE, 8))
		return 100;	/* the copy of a dynamic disk's footer */
	return 0;
}

static int vhd_parent(struct img *img, struct img_parent *p)
{
	const struct vhd *s = img->priv;
	const struct img_parent *src = &s->parent;
	struct img_parent t = { 0 };
	int r;

	if (s->footer.disk_type != VHD_TYPE_DIFF)
		return 0;
	for (unsigned i = 0; i < src->nrefs; i++) {
		r = img_parent_add_ref(&t, src->refs[i].kind,
				       src->refs[i].what, src->refs[i].path);
		if (r < 0) {
			img_parent_clear(&t);
			return r;
		}
	}
	t.id_kind = src->id_kind;
	t.id = src->id;
	t.has_timestamp = src->has_timestamp;
	t.timestamp = src->timestamp;
	t.format = src->format;
	*p = t;
	return 1;
}

/* Differencing, allocated block: split on the sector bitmap. */
static int vhd_map_diff(struct img *img, const struct vhd *s, uint64_t blk,
			uint32_t sector, uint64_t in_blk, uint64_t avail,
			struct img_extent *ext)
{
	uint64_t block_off = (uint64_t)sector * VHD_SECTOR;
	uint64_t first = in_blk / VHD_SECTOR, start = first, run, end;
	uint64_t nsec = (in_blk + avail + VHD_SECTOR - 1) / VHD_SECTOR - first;
	uint8_t buf[VHD_BITMAP_LAZY_BYTES];
	const uint8_t *bm = s->bm ? __atomic_load_n(&s->bm[blk],
						    __ATOMIC_ACQUIRE)
				  : NULL;
	bool set;
	int r;

	/* read-only: the preloaded bitmap as it is; otherwise a copy of the
	 * bytes needed, from memory (writers set bits meanwhile) or the file */
	if (!bm || s->rw) {
		uint64_t byte0 = first / 8;
		uint64_t nbytes = MIN((uint64_t)sizeof(buf),
				      (first + nsec + 7) / 8 - byte0);

		if (bm) {
			for (uint64_t i = 0; i < nbytes; i++)
				buf[i] = __atomic_load_n(&bm[byte0 + i],
							 __ATOMIC_ACQUIRE);
		} else {
			r = pread_full(img->fd, buf, (size_t)nbytes,
				       block_off + byte0);
			if (r < 0) {
				log_err("vhd: %s: cannot read the sector "
					"bitmap of block %llu (%s)", img->path,
					(unsigned long long)blk, strerror(-r));
				return r == -ENODATA ? -EIO : r;
			}
		}
		bm = buf;
		start = first - byte0 * 8;
		nsec = MIN(nsec, nbytes * 8 - start);
	}
	run = vhd_bitmap_run(bm, start, nsec, &set);
	end = (first + run) * VHD_SECTOR;	/* > in_blk: run >= 1 */
	ext->len = MIN(end - in_blk, avail);
	if (!set) {
		ext->type = IMG_EXT_UNALLOC;	/* bit clear: the parent's */
		return 0;
	}
	ext->type = IMG_EXT_DATA;		/* bit set: in this block */
	ext->host_off = block_off + s->bitmap_size + in_blk;
	return 0;
}

static int vhd_map_extent(struct img *img, uint64_t off, uint64_t len,
			  struct img_extent *ext)
{
	const struct vhd *s = img->priv;
	uint64_t blk, in_blk;
	uint32_t sector;

	if (s->footer.disk_type == VHD_TYPE_FIXED) {
		ext->type = IMG_EXT_DATA;	/* spec: data, then footer */
		ext->len = len;
		ext->host_off = off;
		return 0;
	}
	blk = off / s->block_size;
	in_blk = off % s->block_size;
	assert(blk < s->nblocks);	/* off < size: checked by img_map */
	ext->len = MIN(len, s->block_size - in_blk);
	ext->type = IMG_EXT_UNALLOC;	/* BAT 0xFFFFFFFF: parent, or zeros */
	/* acquire: a block published by a writer is complete */
	sector = __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
	if (sector == VHD_BAT_UNUSED)
		return 0;
	if (s->footer.disk_type == VHD_TYPE_DIFF)
		return vhd_map_diff(img, s, blk, sector, in_blk, ext->len,
				    ext);
	/* dynamic: the whole block is data; its bitmap is not consulted */
	ext->type = IMG_EXT_DATA;
	ext->host_off = (uint64_t)sector * VHD_SECTOR + s->bitmap_size +
			in_blk;
	return 0;
}

/* ---- writing ------------------------------------------------------------ */

static const uint8_t vhd_zeros[65536];

/* n bytes of buf (NULL: zeros) at off; logged on failure */
static int vhd_pwrite(struct img *img, const uint8_t *buf, uint64_t n,
		      uint64_t off, const char *what)
{
	int r = 0;

	if (buf) {
		r = pwrite_full(img->fd, buf, (size_t)n, off);
	} else {
		for (uint64_t done = 0, k; done < n && r == 0; done += k) {
			k = MIN(n - done, (uint64_t)sizeof(vhd_zeros));
			r = pwrite_full(img->fd, vhd_zeros, (size_t)k,
					off + done);
		}
	}
	if (r < 0)
		log_err("vhd: %s: cannot write %s at %llu (%s)", img->path,
			what, (unsigned long long)off, strerror(-r));
	return r;
}

static int vhd_sync(struct img *img)
{
	int r;

	if (fdatasync(img->fd) == 0)
		return 0;
	r = -errno;
	log_err("vhd: %s: fdatasync: %s", img->path, strerror(-r));
	return r;
}

static bool vhd_is_broken(const struct vhd *s)
{
	return __atomic_load_n(&s->broken, __ATOMIC_ACQUIRE);
}

static void vhd_set_broken(struct img *img, struct vhd *s)
{
	if (!__atomic_exchange_n(&s->broken, true, __ATOMIC_ACQ_REL))
		log_err("vhd: %s: the file may no longer match what was "
			"written; refusing further writes", img->path);
}

/* Block blk's in-memory bitmap is newer than the file's: list it for the
 * next flush (once: the flag stays set until the flush takes it). */
static void vhd_bm_dirty(struct vhd *s, uint64_t blk)
{
	if (__atomic_exchange_n(&s->bm_dirty[blk], 1, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&s->dirty_lock);
	s->bm_list[s->bm_n++] = (uint32_t)blk;	/* each block at most once */
	pthread_mutex_unlock(&s->dirty_lock);
}

/*
 * Sectors [first, first + n) of block blk (at file sector `sector`) now
 * hold their data: set their bits.  In memory: atomic ORs, then the block
 * is marked dirty, with inflight[] counting the writers in between; a
 * writer that sees all its bits set and nobody in between knows that the
 * setter's dirty mark is done, so the next flush writes the bits (all of
 * it sequentially consistent).  Bitmaps not in memory: the bitmap sectors
 * are rewritten in the file (read-modify-write under the block's stripe
 * lock, so that two writers do not lose each other's bits).
 */
static int vhd_mark(struct img *img, struct vhd *s, uint64_t blk,
		    uint32_t sector, uint64_t first, uint64_t n)
{
	uint8_t *mem = s->bm ? __atomic_load_n(&s->bm[blk], __ATOMIC_ACQUIRE)
			     : NULL;
	unsigned *inflight = &s->inflight[blk % VHD_BM_LOCKS];
	pthread_mutex_t *lock = &s->bm_lock[blk % VHD_BM_LOCKS];
	const uint64_t base = (uint64_t)sector * VHD_SECTOR, end = first + n;
	int r = 0;

	if (mem) {
		if (bm_all_set(mem, first, n) &&
		    !__atomic_load_n(inflight, __ATOMIC_SEQ_CST))
			return 0;	/* the sectors were here already */
		__atomic_fetch_add(inflight, 1, __ATOMIC_SEQ_CST);
		bm_set(mem, first, n);
		vhd_hook(VHD_STEP_BITMAP);
		vhd_bm_dirty(s, blk);
		__atomic_fetch_sub(inflight, 1, __ATOMIC_SEQ_CST);
		return 0;
	}
	pthread_mutex_lock(lock);
	for (uint64_t k = first / VHD_BITS_PER_SECTOR;
	     k * VHD_BITS_PER_SECTOR < end && r == 0; k++) {
		uint64_t k0 = k * VHD_BITS_PER_SECTOR;
		uint64_t lo = MAX(first, k0);
		uint64_t hi = MIN(end, k0 + VHD_BITS_PER_SECTOR);
		uint8_t sec[VHD_SECTOR];

		r = vhd_pread(img, sec, sizeof(sec), base + k * VHD_SECTOR,
			      "sector bitmap");
		if (r < 0)
			break;
		if (bm_all_set(sec, lo - k0, hi - lo))
			continue;
		bm_set(sec, lo - k0, hi - lo);
		r = vhd_pwrite(img, sec, VHD_SECTOR, base + k * VHD_SECTOR,
			       "a sector bitmap");
		if (r < 0) {	/* a torn sector, maybe */
			vhd_set_broken(img, s);
			break;
		}
		vhd_hook(VHD_STEP_BITMAP);
	}
	pthread_mutex_unlock(lock);
	return r;
}

/* Too much dirty metadata: flush it here, unless a flush is running. */
static int vhd_bound_dirty(struct img *img, struct vhd *s)
{
	uint64_t n;
	int r;

	pthread_mutex_lock(&s->dirty_lock);
	n = s->bm_n;
	pthread_mutex_unlock(&s->dirty_lock);
	pthread_mutex_lock(&s->alloc_lock);
	n = MAX(n, s->bat_n);
	pthread_mutex_unlock(&s->alloc_lock);
	if (n < s->dirty_max || pthread_mutex_trylock(&s->flush_lock))
		return 0;
	r = vhd_flush_meta(img, s);
	pthread_mutex_unlock(&s->flush_lock);
	return r;
}

/*
 * Allocate the unused blocks that [off, off + n) starts in, as many as
 * follow each other (at most VHD_ALLOC_BATCH), write buf's sectors into
 * them (buf NULL: the sectors read as zeros, the space being a new hole)
 * and publish them, steps a-c at the top of this file.  *done: bytes of
 * the request written; 0 when another writer took the first block
 * meanwhile (the caller looks again).
 */
static int vhd_alloc(struct img *img, struct vhd *s, const uint8_t *buf,
		     uint64_t off, uint64_t n, uint64_t *done)
{
	const uint64_t bs = s->block_size, bms = s->bitmap_size;
	const uint64_t stride = bms + bs, blk0 = off / bs, end = off + n;
	const uint64_t align = MIN(bs, (uint64_t)VHD_DATA_ALIGN);
	uint8_t *maps, *tmp = NULL;
	uint64_t k = 0, start, foot;
	bool in_mem;
	int r = 0;

	*done = 0;
	pthread_mutex_lock(&s->alloc_lock);
	if (vhd_is_broken(s)) {
		r = -EIO;
		goto out;
	}
	while (k < VHD_ALLOC_BATCH && (blk0 + k) * bs < end &&
	       s->bat[blk0 + k] == VHD_BAT_UNUSED)
		k++;
	if (!k)
		goto out;
	/* where the footer is, the data areas aligned for the host's pages */
	start = (s->next + bms + align - 1) / align * align - bms;
	foot = start + k * stride;
	if ((foot - stride) / VHD_SECTOR >= VHD_BAT_UNUSED) {
		r = log_err_ret(-EFBIG, "vhd: %s: a new block would lie past "
				"the 2 TiB a BAT entry can address",
				img->path);
		goto out;
	}
	in_mem = s->bm && s->bm_bytes + k * bms <= VHD_BITMAP_PRELOAD_MAX;
	maps = in_mem ? vhd_chunk_alloc(s, k * bms)
		      : (tmp = calloc((size_t)k, (size_t)bms));
	if (!maps) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t i = 0; i < k; i++) {
		uint64_t b0 = (blk0 + i) * bs;
		uint64_t lo = MAX(off, b0), hi = MIN(end, b0 + bs);

		if (s->footer.disk_type == VHD_TYPE_DYNAMIC)
			bm_set(maps + i * bms, 0, bs / VHD_SECTOR); /* data */
		else
			bm_set(maps + i * bms, (lo - b0) / VHD_SECTOR,
			       (hi - lo) / VHD_SECTOR);
	}

	/* a: the file ends in a valid footer; the old one is left behind */
	r = vhd_pwrite(img, s->footer_raw, VHD_FOOTER_SIZE, foot,
		       "the footer");
	if (r < 0) {
		/* the old footer is intact: cut the file back to it */
		if (ftruncate(img->fd, (off_t)(s->next + VHD_FOOTER_SIZE)) < 0)
			vhd_set_broken(img, s);
		goto out;
	}
	vhd_hook(VHD_STEP_ALLOC_FOOTER);
	s->next = foot;	/* from here on the new footer ends the file */

	/* b: sectors (and bitmaps kept in the file only), into space
	 * nothing points at yet */
	for (uint64_t i = 0; i < k && r == 0; i++) {
		uint64_t b0 = (blk0 + i) * bs, at = start + i * stride;
		uint64_t lo = MAX(off, b0), hi = MIN(end, b0 + bs);

		if (!in_mem) {
			r = vhd_pwrite(img, maps + i * bms, bms, at,
				       "a sector bitmap");
			if (r < 0)
				break;
			vhd_hook(VHD_STEP_ALLOC_BITMAP);
		}
		if (!buf)
			continue;	/* zeros: the new space is a hole */
		r = vhd_pwrite(img, buf + (lo - off), hi - lo,
			       at + bms + (lo - b0), "data");
		if (r == 0)
			vhd_hook(VHD_STEP_ALLOC_DATA);
	}
	if (r < 0)
		goto out;	/* the new footer ends the file: skip it all */

	/* c: publish, the bitmap before the entry that leads to it; dirty */
	for (uint64_t i = 0; i < k; i++) {
		uint64_t b = blk0 + i;

		if (in_mem) {
			__atomic_store_n(&s->bm[b], maps + i * bms,
					 __ATOMIC_RELEASE);
			vhd_bm_dirty(s, b);
		}
		__atomic_store_n(&s->bat[b],
				 (uint32_t)((start + i * stride) / VHD_SECTOR),
				 __ATOMIC_RELEASE);
		if (!s->bat_dirty[b]) {
			s->bat_dirty[b] = 1;
			s->bat_list[s->bat_n++] = (uint32_t)b;
		}
	}
	vhd_hook(VHD_STEP_ALLOC_PUBLISH);
	*done = MIN(end, (blk0 + k) * bs) - off;
out:
	pthread_mutex_unlock(&s->alloc_lock);
	free(tmp);
	return r;
}

/* buf NULL: [off, off + n) must read as zeros */
static int vhd_write_range(struct img *img, struct vhd *s, const uint8_t *buf,
			   uint64_t n, uint64_t off)
{
	const uint64_t bs = s->block_size;
	bool allocated = false;
	int r;

	if (s->footer.disk_type == VHD_TYPE_FIXED)	/* the disk, in place */
		return vhd_pwrite(img, buf, n, off, "data");
	while (n) {
		uint64_t blk = off / bs, in_blk = off % bs;
		uint64_t piece = MIN(n, bs - in_blk), done = piece;
		uint32_t sector = __atomic_load_n(&s->bat[blk],
						  __ATOMIC_ACQUIRE);

		if (sector != VHD_BAT_UNUSED) {
			r = vhd_pwrite(img, buf, piece,
				       (uint64_t)sector * VHD_SECTOR +
					       s->bitmap_size + in_blk,
				       "data");
			if (r < 0)
				return r;
			vhd_hook(VHD_STEP_DATA);
			r = vhd_mark(img, s, blk, sector, in_blk / VHD_SECTOR,
				     piece / VHD_SECTOR);
			if (r < 0)
				return r;
		} else if (buf || s->footer.disk_type == VHD_TYPE_DIFF) {
			r = vhd_alloc(img, s, buf, off, n, &done);
			if (r < 0)
				return r;
			allocated = true;
		}
		/* else: zeros in an unused block of a dynamic disk: it reads
		 * as zeros already (it has no parent) */
		off += done;
		n -= done;
		if (buf)
			buf += done;
	}
	if (allocated ||
	    __atomic_load_n(&s->bm_n, __ATOMIC_RELAXED) >= s->dirty_max)
		return vhd_bound_dirty(img, s);
	return 0;
}

static int vhd_write_check(struct img *img, uint64_t off, uint64_t n)
{
	const struct vhd *s = img->priv;

	if (!s->rw)
		return -EROFS;
	/* the chain's promise: whole sectors inside the disk */
	if (off % VHD_SECTOR || n % VHD_SECTOR || !n ||
	    !range_within(off, n, img->size))
		return -EINVAL;
	return vhd_is_broken(s) ? -EIO : 0;
}

/* below is never read: VHD keeps single sectors, nothing is copied up */
static int vhd_write(struct img *img, const void *buf, size_t n, uint64_t off,
		     const struct img_below *below __unused)
{
	int r = vhd_write_check(img, off, n);

	return r < 0 ? r : vhd_write_range(img, img->priv, buf, n, off);
}

/* VHD has no zero state: zeros are written (a differencing disk must hide
 * its parent's sectors), except where a new block's hole gives them. */
static int vhd_zero(struct img *img, uint64_t off, uint64_t n,
		    const struct img_below *below __unused)
{
	int r = vhd_write_check(img, off, n);

	return r < 0 ? r : vhd_write_range(img, img->priv, NULL, n, off);
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Write the BAT sectors holding entries idx[0..n) (sorted) from bat_disk,
 * contiguous sectors in one pwrite. */
static int vhd_write_bat(struct img *img, struct vhd *s, const uint32_t *idx,
			 uint64_t n)
{
	const uint64_t per = VHD_SECTOR / 4;	/* entries per BAT sector */
	uint8_t *buf = NULL;
	size_t cap = 0;
	int r = 0;

	for (uint64_t i = 0; i < n && r == 0;) {
		uint64_t sec0 = idx[i] / per, sec1 = sec0, e0, e1;

		while (i < n && idx[i] / per <= sec1 + 1) {
			sec1 = idx[i] / per;
			i++;
		}
		e0 = sec0 * per;
		e1 = MIN((sec1 + 1) * per, s->nblocks);
		if ((e1 - e0) * 4 > cap) {
			uint8_t *nb = realloc(buf, (size_t)(e1 - e0) * 4);

			if (!nb) {
				r = -ENOMEM;
				break;
			}
			buf = nb;
			cap = (size_t)(e1 - e0) * 4;
		}
		for (uint64_t e = e0; e < e1; e++)
			put_be32(buf + 4 * (e - e0), s->bat_disk[e]);
		r = vhd_pwrite(img, buf, (e1 - e0) * 4, s->table_offset + 4 * e0,
			       "the BAT");
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_BAT);
	}
	free(buf);
	return r;
}

/* Steps 1-5 at the top of this file; flush_lock held. */
static int vhd_flush_meta(struct img *img, struct vhd *s)
{
	uint32_t *bat_idx = NULL, *bm_idx = NULL;
	uint64_t nbat = 0, nbm = 0;
	uint8_t *copy = NULL;
	int r = 0;

	if (vhd_is_broken(s))
		return -EIO;
	copy = malloc(s->bitmap_size);
	if (!copy)
		return -ENOMEM;
	/* 1: what is published now, and the bitmaps dirty now */
	pthread_mutex_lock(&s->alloc_lock);
	pthread_mutex_lock(&s->dirty_lock);
	if (s->bat_n)
		bat_idx = malloc((size_t)s->bat_n * sizeof(*bat_idx));
	if (s->bm_n)
		bm_idx = malloc((size_t)s->bm_n * sizeof(*bm_idx));
	if ((s->bat_n && !bat_idx) || (s->bm_n && !bm_idx)) {
		r = -ENOMEM;
	} else {
		nbat = s->bat_n;
		nbm = s->bm_n;
		for (uint64_t i = 0; i < nbat; i++) {
			uint32_t b = s->bat_list[i];

			bat_idx[i] = b;
			s->bat_disk[b] = s->bat[b];
			s->bat_dirty[b] = 0;
		}
		if (nbm)
			memcpy(bm_idx, s->bm_list, (size_t)nbm * sizeof(*bm_idx));
		s->bat_n = s->bm_n = 0;
	}
	pthread_mutex_unlock(&s->dirty_lock);
	pthread_mutex_unlock(&s->alloc_lock);
	if (r < 0)
		goto out;

	/* 2: the bitmaps (dirty flag cleared before the copy) */
	for (uint64_t i = 0; i < nbm && r == 0; i++) {
		uint32_t b = bm_idx[i];
		const uint8_t *bm = __atomic_load_n(&s->bm[b],
						    __ATOMIC_ACQUIRE);
		uint32_t sector = __atomic_load_n(&s->bat[b],
						  __ATOMIC_ACQUIRE);

		__atomic_store_n(&s->bm_dirty[b], 0, __ATOMIC_SEQ_CST);
		for (uint32_t k = 0; k < s->bitmap_size; k++)
			copy[k] = __atomic_load_n(&bm[k], __ATOMIC_SEQ_CST);
		r = vhd_pwrite(img, copy, s->bitmap_size,
			       (uint64_t)sector * VHD_SECTOR, "a sector bitmap");
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_BITMAP);
	}
	/* 3: data, bitmaps, footer, size */
	if (r == 0)
		r = vhd_sync(img);
	if (r == 0)
		vhd_hook(VHD_STEP_FLUSH_SYNC1);
	/* 4-5: the BAT entries taken in step 1 */
	if (r == 0 && nbat) {
		qsort(bat_idx, (size_t)nbat, sizeof(*bat_idx), u32_cmp);
		r = vhd_write_bat(img, s, bat_idx, nbat);
		if (r == 0)
			r = vhd_sync(img);
		if (r == 0)
			vhd_hook(VHD_STEP_FLUSH_SYNC2);
	}
	if (r < 0)
		vhd_set_broken(img, s);
out:
	free(copy);
	free(bat_idx);
	free(bm_idx);
	return r;
}

static int vhd_flush(struct img *img)
{
	struct vhd *s = img->priv;
	int r;

	if (!s->rw || !s->bat_list) {	/* nothing kept in memory */
		r = vhd_sync(img);
		if (r < 0 && s->rw)
			vhd_set_broken(img, s);
		return r < 0 ? r : vhd_is_broken(s) ? -EIO : 0;
	}
	pthread_mutex_lock(&s->flush_lock);
	r = vhd_flush_meta(img, s);
	pthread_mutex_unlock(&s->flush_lock);
	return r;
}

/* ---- creating a differencing disk ------------------------------------- */

uint32_t vhd_chs_geometry(uint64_t size)
{
	uint64_t total = MIN(size / VHD_SECTOR, 65535ull * 16 * 255), cth;
	uint32_t spt, heads;

	if (total >= 65535ull * 16 * 63) {
		spt = 255;
		heads = 16;
		cth = total / spt;
	} else {
		spt = 17;
		cth = total / spt;
		heads = (uint32_t)MAX((cth + 1023) / 1024, (uint64_t)4);
		if (cth >= heads * 1024ull || heads > 16) {
			spt = 31;
			heads = 16;
			cth = total / spt;
		}
		if (cth >= heads * 1024ull) {
			spt = 63;
			heads = 16;
			cth = total / spt;
		}
	}
	return (uint32_t)(cth / heads) << 16 | heads << 8 | spt;
}

/* seconds since 2000-01-01 UTC, clamped to the field */
uint32_t vhd_stamp(time_t t)
{
	if (t <= VHD_EPOCH)
		return 0;
	return (uint32_t)MIN((uint64_t)(t - VHD_EPOCH), (uint64_t)UINT32_MAX);
}

/* A VHD parent's footer time stamp; else the parent file's mtime. */
int vhd_parent_stamp(const struct img *p, uint32_t *ts)
{
	struct stat st;

	if (p->drv == &vhd_driver) {
		*ts = ((const struct vhd *)p->priv)->footer.timestamp;
		return 0;
	}
	if (fstat(p->fd, &st) < 0)
		return -errno;
	*ts = vhd_stamp(st.st_mtime);
	return 0;
}

/* "sub/p.vhd" -> ".\sub\p.vhd"; "../p.vhd" -> "..\p.vhd" (as Windows) */
char *vhd_w2ru_text(const char *rel)
{
	bool dotted = !strncmp(rel, "./", 2) || !strncmp(rel, "../", 3);
	char *t = malloc(strlen(rel) + 3), *o = t;

	if (!t)
		return NULL;
	if (!dotted) {
		*o++ = '.';
		*o++ = '\\';
	}
	for (const char *c = rel; *c; c++)
		*o++ = *c == '/' ? '\\' : *c;
	*o = '\0';
	return t;
}

struct vhd_new_locator {
	uint32_t code;
	uint8_t *data;		/* owned: UTF-16LE */
	size_t len;
	uint64_t off;
};

/*
 * The new file's bytes up to its footer: footer copy, dynamic header, BAT
 * (all unused), then each locator in a sector-aligned area of its own.
 */
int vhd_build(uint8_t **out, uint64_t *out_len, uint8_t *footer,
	      uint64_t size, uint32_t bs, const struct guid *pid,
	      uint32_t pstamp, const uint8_t *name, size_t name_len,
	      struct vhd_new_locator *loc, unsigned nloc)
{
	const uint64_t entries = size / bs + !!(size % bs);
	const uint64_t table = VHD_FOOTER_SIZE + VHD_DYN_HEADER_SIZE;
	const uint64_t pos_bat_end = table + ((entries * 4 + VHD_SECTOR - 1) &
					      ~(uint64_t)(VHD_SECTOR - 1));
	uint64_t pos = pos_bat_end;
	struct vhd_footer_raw *f = (void *)footer;	/* bytes only */
	struct vhd_dyn_header_raw *h;
	uint8_t uuid[16], *buf;
	int r;

	for (unsigned i = 0; i < nloc; i++) {
		loc[i].off = pos;
		pos += (loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
	}
	if (getrandom(uuid, sizeof(uuid), 0) != sizeof(uuid)) {
		r = -errno;
		return log_err_ret(r ? r : -EIO, "vhd: no random bytes for a "
				   "unique id (%s)", strerror(-r));
	}
	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);	/* RFC 4122 v4 */
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
	buf = calloc(1, (size_t)pos);
	if (!buf)
		return -ENOMEM;

	memset(footer, 0, VHD_FOOTER_SIZE);
	memcpy(f->cookie, VHD_COOKIE, sizeof(f->cookie));
	put_be32(f->features, VHD_FEATURES_RESERVED);
	put_be32(f->version, VHD_VERSION);
	put_be64(f->data_offset, VHD_FOOTER_SIZE);
	put_be32(f->timestamp, vhd_stamp(time(NULL)));
	memcpy(f->creator_app, VHD_CREATOR_APP, sizeof(f->creator_app));
	put_be32(f->creator_ver, VHD_VERSION);
	memcpy(f->creator_os, VHD_CREATOR_OS, sizeof(f->creator_os));
	put_be64(f->orig_size, size);
	put_be64(f->cur_size, size);
	put_be32(f->geometry, vhd_chs_geometry(size));
	put_be32(f->disk_type, VHD_TYPE_DIFF);
	memcpy(f->uuid, uuid, sizeof(f->uuid));
	put_be32(f->checksum, vhd_checksum(footer, VHD_FOOTER_SIZE,
					   offsetof(struct vhd_footer_raw,
						    checksum)));
	memcpy(buf, footer, VHD_FOOTER_SIZE);

	h = (void *)(buf + VHD_FOOTER_SIZE);
	memcpy(h->cookie, VHD_DYN_COOKIE, sizeof(h->cookie));
	put_be64(h->data_offset, UINT64_MAX);	/* spec: unused */
	put_be64(h->table_offset, table);
	put_be32(h->version, VHD_VERSION);
	put_be32(h->max_table_entries, (uint32_t)entries);
	put_be32(h->block_size, bs);
	memcpy(h->parent_uuid, pid->b, sizeof(h->parent_uuid)); /* text order */
	put_be32(h->parent_timestamp, pstamp);
	memcpy(h->parent_name, name, name_len);
	for (unsigned i = 0; i < nloc; i++) {
		struct vhd_locator_raw *l = &h->locators[i];
		size_t space = (loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR;

		put_be32(l->code, loc[i].code);
		put_be32(l->data_space, (uint32_t)space);  /* spec: sectors */
		put_be32(l->data_length, (uint32_t)loc[i].len);
		put_be64(l->data_offset, loc[i].off);
		memcpy(buf + loc[i].off, loc[i].data, loc[i].len);
	}
	put_be32(h->checksum, vhd_checksum((const uint8_t *)h,
					   VHD_DYN_HEADER_SIZE,
					   offsetof(struct vhd_dyn_header_raw,
						    checksum)));
	/* all unused, and the padding to the sector too (as qemu) */
	memset(buf + table, 0xff, (size_t)(pos_bat_end - table));
	*out = buf;
	*out_len = pos;
	return 0;
}

/* The checks of a new image's geometry (see vhd.h). */
int vhd_new_geometry(const char *path, uint64_t *size, uint32_t bs,
		     uint32_t ss, bool dynamic)
{
	uint64_t n = *size;

	if (ss != VHD_SECTOR)
		return log_err_ret(-ENOTSUP, "vhd: %s: VHD has 512-byte "
				   "sectors only (%u asked)", path, ss);
	if (bs < VHD_SECTOR || !is_pow2(bs) || bs > VHD_MAX_BLOCK_SIZE)
		return log_err_ret(-EINVAL, "vhd: %s: block size must be a "
				   "power of two from 512 to %u (%u)", path,
				   VHD_MAX_BLOCK_SIZE, bs);
	if (!n || n > VHD_MAX_DISK_SIZE)
		return log_err_ret(n ? -EFBIG : -EINVAL, "vhd: %s: size "
				   "must be 1 byte to 2040 GiB (%llu)", path,
				   (unsigned long long)n);
	n = (n + VHD_SECTOR - 1) & ~(uint64_t)(VHD_SECTOR - 1);
	if (dynamic && n / bs + !!(n % bs) > VHD_MAX_BAT_ENTRIES)
		return log_err_ret(-EFBIG, "vhd: %s: %llu bytes need more than "
				   "%u blocks of %u bytes", path,
				   (unsigned long long)n,
				   VHD_MAX_BAT_ENTRIES, bs);
	*size = n;
	return 0;
}

/*
 * A new, empty differencing VHD over parent.  It records the parent's
 * identity (its unique id: a VHD's footer id, whatever identity another
 * format gives; none: all zeros, "not recorded"), its time stamp (a VHD
 * parent's footer time stamp, else the file's mtime), its file name and
 * two locators: W2ku (the absolute POSIX path as given: Windows falls back
 * to W2ru) and W2ru (the relative path, with backslashes).  The data space
 * of a locator is in sectors, as the spec says (Windows writes bytes;
 * readers take both).
 */
static int vhd_create_diff(const char *path,
			   const struct img_create_parent *par,
			   const struct img_create_opts *o)
{
	const struct img *pimg = par->img;
	uint64_t size = o && o->size ? o->size : pimg->size, len = 0;
	uint32_t bs = o && o->block_size ? o->block_size
					  : VHD_DEFAULT_BLOCK_SIZE;
	uint32_t ss = o && o->sector_size ? o->sector_size : pimg->sector_size;
	struct vhd_new_locator loc[2] = { { 0 } };
	const char *ref = par->rel_path ? par->rel_path : par->abs_path;
	const char *base;
	struct guid pid = { { 0 } };
	uint8_t footer[VHD_FOOTER_SIZE], *buf = NULL, *name = NULL;
	size_t name_len = 0;
	unsigned nloc = 0;
	uint32_t pstamp = 0;
	char *text = NULL;
	int fd = -1, r;

	if (!ref || (par->rel_path && par->rel_path[0] == '/'))
		return log_err_ret(-EINVAL, "vhd: %s: no relative or absolute "
				   "path of the parent", path);
	r = vhd_new_geometry(path, &size, bs, ss, true);
	if (r < 0)
		return r;
	if (pimg->has_id)
		pid = pimg->id;
	r = vhd_parent_stamp(pimg, &pstamp);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot stat the parent %s (%s)",
				   path, pimg->path, strerror(-r));

	base = strrchr(ref, '/') ? strrchr(ref, '/') + 1 : ref;
	r = utf8_to_utf16(base, true, &name, &name_len);
	if (r == 0 && name_len > VHD_PARENT_NAME_SIZE)
		r = -ENAMETOOLONG;	/* a 255-byte name fits */
	if (r == 0 && par->abs_path) {
		loc[nloc].code = VHD_PLAT_W2KU;
		r = utf8_to_utf16(par->abs_path, false, &loc[nloc].data,
				  &loc[nloc].len);
		nloc++;
	}
	if (r == 0 && par->rel_path) {
		text = vhd_w2ru_text(par->rel_path);
		loc[nloc].code = VHD_PLAT_W2RU;
		r = text ? utf8_to_utf16(text, false, &loc[nloc].data,
					 &loc[nloc].len)
			 : -ENOMEM;
		nloc++;
	}
	for (unsigned i = 0; i < nloc && r == 0; i++)
		if (loc[i].len > VHD_MAX_LOCATOR_LEN)
			r = -ENAMETOOLONG;
	if (r < 0) {
		log_err("vhd: %s: cannot record the parent path %s (%s)", path,
			ref, strerror(-r));
		goto out;
	}
	r = vhd_build(&buf, &len, footer, size, bs, &pid, pstamp, name,
		      name_len, loc, nloc);
	if (r < 0)
		goto out;

	fd = file_create(path, "vhd");
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = pwrite_full(fd, buf, (size_t)len, 0);
	if (r == 0)
		r = pwrite_full(fd, footer, sizeof(footer), len);
	r = file_create_end(fd, path, r, "vhd");
out:
	for (unsigned i = 0; i < nloc; i++)
		free(loc[i].data);
	free(text);
	free(name);
	free(buf);
	return r;
}

const struct img_driver vhd_driver = {
	.name = "vhd",
	.desc = "Microsoft Virtual Hard Disk (fixed, dynamic, differencing)",
	.probe = vhd_probe,
	.open = vhd_open,
	.close = vhd_close,
	.parent = vhd_parent,
	.map_extent = vhd_map_extent,	/* DATA always has host_off */
	.write = vhd_write,
	.flush = vhd_flush,
	.zero = vhd_zero,
	.create_diff = vhd_create_diff,
	.check = vhd_check,		/* vhd-check.c */
	.create = vhd_create,		/* vhd-create.c */
	.set_parent = vhd_set_parent,	/* vhd-parent.c */
};
