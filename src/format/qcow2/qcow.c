// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow.c: QCOW version 1 images, read-only.
 *
 * Layout as written by qemu's block/qcow.c: a 48-byte big-endian header,
 * an L1 table of 64-bit L2 table offsets covering the virtual size, and L2
 * tables of 2^l2_bits 64-bit entries.  An entry is 0 (unallocated: the
 * backing file), a host cluster offset, or, with bit 63 set, a compressed
 * cluster: offset in bits 0..62-cluster_bits and the compressed size in
 * bytes in the cluster_bits bits above, inflated with zlib (raw deflate).
 * L2 tables go through the shared L2 cache (cluster.c); the header and
 * entries are decoded by codec.c.  The backing file description here is
 * shared with the qcow2 driver.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"
#include "registry.h"

#define QCOW_VERSION 1u
#define QCOW_OFLAG_COMPRESSED (1ull << 63)
#define QCOW_MAX_L1_BYTES (32u << 20)	/* same cap as qcow2 */
#define QCOW_MAX_BACKING_NAME 1023u

struct qcow {
	uint64_t owner;			/* cache key */
	uint32_t cluster_bits;		/* 9..16 */
	uint64_t cluster_size;
	uint32_t l2_bits;		/* 6..13: log2 of entries per table */
	uint32_t l1_entries;
	uint64_t *l1;			/* owned: L2 table offsets, 0 = none */
	char *backing;			/* owned, or NULL */
	uint32_t mtime;
};

static int qcow_probe(const struct img_probe *p)
{
	if (p->head_len < 8 || memcmp(p->head, QCOW_MAGIC, 4) != 0)
		return 0;
	return get_be32(p->head + 4) == QCOW_VERSION ? 100 : 0;
}

static void qcow_free(struct qcow *s)
{
	if (!s)
		return;
	if (s->owner)
		qcow2_l2_cache_drop(s->owner);
	free(s->l1);
	free(s->backing);
	free(s);
}

int qcow2_backing_describe(struct img_parent *p, const char *backing,
			   const char *format)
{
	int r;

	if (!backing)
		return 0;
	memset(p, 0, sizeof(*p));
	r = img_parent_add_ref(p, backing[0] == '/' ? IMG_REF_ABSOLUTE
						    : IMG_REF_RELATIVE,
			       "backing file", backing);
	if (r < 0)
		return r;
	p->id_kind = IMG_ID_NONE;
	p->format = format;
	return 1;
}

static int qcow_read_backing(struct img *img, struct qcow *s,
			     const struct qcow_header *h)
{
	uint64_t off = h->backing_file_offset;
	uint32_t len = h->backing_file_size;
	int r;

	if (!off || !len)
		return 0;
	if (len > QCOW_MAX_BACKING_NAME)
		return log_err_ret(-EUCLEAN, "qcow: %s: backing file name too long (%u)",
				   img->path, len);
	if (off < sizeof(struct qcow_header_raw) ||
	    !range_within(off, len, img->file_size))
		return log_err_ret(-EUCLEAN, "qcow: %s: backing file name out of bounds (offset %llu)",
				   img->path, (unsigned long long)off);
	s->backing = calloc(1, (size_t)len + 1);
	if (!s->backing)
		return -ENOMEM;
	r = pread_full(img->fd, s->backing, len, off);
	if (r < 0)
		return log_err_ret(r, "qcow: %s: cannot read the backing file name (%s)",
				   img->path, strerror(-r));
	if (!s->backing[0]) {
		free(s->backing);
		s->backing = NULL;
	}
	return 0;
}

static int qcow_load_l1(struct img *img, struct qcow *s, uint64_t l1_off)
{
	uint64_t l2_bytes = 8ull << s->l2_bits;
	int r;

	if (!s->l1_entries)
		return 0;
	if (!range_within(l1_off, (uint64_t)s->l1_entries * 8,
			  img->file_size))
		return log_err_ret(-EUCLEAN, "qcow: %s: L1 table lies past the end of the file (offset %llu)",
				   img->path, (unsigned long long)l1_off);
	if (ranges_overlap(l1_off, (uint64_t)s->l1_entries * 8, 0,
			   sizeof(struct qcow_header_raw)))
		return log_err_ret(-EUCLEAN, "qcow: %s: L1 table overlaps the header (offset %llu)",
				   img->path, (unsigned long long)l1_off);
	s->l1 = malloc((size_t)s->l1_entries * 8);
	if (!s->l1)
		return -ENOMEM;
	r = pread_full(img->fd, s->l1, (size_t)s->l1_entries * 8, l1_off);
	if (r < 0)
		return log_err_ret(r == -ENODATA ? -EUCLEAN : r, "qcow: %s: cannot read the L1 table (%s)",
				   img->path, strerror(-r));
	for (uint32_t i = 0; i < s->l1_entries; i++) {
		uint64_t l2 = be64toh(s->l1[i]);

		s->l1[i] = l2;
		if (!l2)
			continue;
		if (!range_within(l2, l2_bytes, img->file_size))
			return log_err_ret(-EUCLEAN, "qcow: %s: L2 table lies past the end of the file (%llu)",
					   img->path, (unsigned long long)l2);
		if (ranges_overlap(l2, l2_bytes, 0,
				   sizeof(struct qcow_header_raw)) ||
		    ranges_overlap(l2, l2_bytes, l1_off,
				   (uint64_t)s->l1_entries * 8))
			return log_err_ret(-EUCLEAN, "qcow: %s: L2 table overlaps the header or L1 table (%llu)",
					   img->path, (unsigned long long)l2);
	}
	return 0;
}

static int qcow_open(struct img *img)
{
	uint8_t raw[sizeof(struct qcow_header_raw)];
	struct qcow_header h;
	uint64_t size, span, need;
	unsigned shift;
	struct qcow *s;
	int r;

	if (img->file_size < sizeof(raw))
		return log_err_ret(-EINVAL, "qcow: %s: file too short for a QCOW header (%llu bytes)",
				   img->path,
				   (unsigned long long)img->file_size);
	r = pread_full(img->fd, raw, sizeof(raw), 0);
	if (r < 0)
		return log_err_ret(r, "qcow: %s: cannot read the header (%s)",
				   img->path, strerror(-r));
	qcow_header_decode(raw, &h);
	if (memcmp(raw, QCOW_MAGIC, 4) != 0 || h.version != QCOW_VERSION)
		return log_err_ret(-EINVAL, "qcow: %s: not a QCOW version 1 image (version %u)",
				   img->path, h.version);
	if (h.crypt_method != 0)
		return log_err_ret(-ENOTSUP, "qcow: %s: encrypted images are not supported (crypt_method %u)",
				   img->path, h.crypt_method);
	if (h.cluster_bits < 9 || h.cluster_bits > 16)
		return log_err_ret(-EUCLEAN, "qcow: %s: cluster_bits out of range (%u)",
				   img->path, h.cluster_bits);
	if (h.l2_bits < 9 - 3 || h.l2_bits > 16 - 3)
		return log_err_ret(-EUCLEAN, "qcow: %s: l2_bits out of range (%u)",
				   img->path, h.l2_bits);
	size = h.size;
	shift = h.cluster_bits + h.l2_bits;	/* <= 29 */
	span = 1ull << shift;
	need = (size >> shift) + ((size & (span - 1)) != 0);
	if (need > QCOW_MAX_L1_BYTES / 8)
		return log_err_ret(-EFBIG, "qcow: %s: L1 table too big (%llu entries)",
				   img->path, (unsigned long long)need);

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cluster_bits = h.cluster_bits;
	s->cluster_size = 1ull << h.cluster_bits;
	s->l2_bits = h.l2_bits;
	s->l1_entries = (uint32_t)need;
	s->mtime = h.mtime;
	r = qcow_read_backing(img, s, &h);
	if (r == 0)
		r = qcow_load_l1(img, s, h.l1_table_offset);
	if (r < 0) {
		qcow_free(s);
		return r;
	}
	s->owner = qcow2_owner_new();
	img->priv = s;
	img->size = size & ~511ull;	/* whole sectors, as qemu */
	img->sector_size = 512;
	img->phys_sector_size = 512;
	img->block_size = (uint32_t)s->cluster_size;
	img->writable = false;
	strcpy(img->subtype, "v1");
	return 0;
}

static void qcow_close(struct img *img)
{
	qcow_free(img->priv);
	img->priv = NULL;
}

static int qcow_parent(struct img *img, struct img_parent *p)
{
	const struct qcow *s = img->priv;

	/* v1 records no backing format */
	return qcow2_backing_describe(p, s->backing, NULL);
}

static int qcow_map_extent(struct img *img, uint64_t off, uint64_t len,
			   struct img_extent *ext)
{
	const struct qcow *s = img->priv;
	unsigned cb = s->cluster_bits, shift = cb + s->l2_bits;
	uint64_t l1i = off >> shift, end = off + len, pos, total = 0;
	uint64_t cs = s->cluster_size, first_host = 0;
	enum img_ext_type type = IMG_EXT_UNALLOC;
	bool comp = false;
	const char *bad = NULL;
	uint64_t bad_value = 0;
	struct qcow2_l2_ref ref;
	int r;

	if (!s->l1[l1i]) {
		uint64_t cover = (l1i + 1) << shift;

		while (cover < end && l1i + 1 < s->l1_entries &&
		       !s->l1[l1i + 1]) {
			l1i++;
			cover += 1ull << shift;
		}
		ext->type = IMG_EXT_UNALLOC;
		ext->len = MIN(end, cover) - off;
		return 0;
	}
	r = qcow2_l2_get(s->owner, l1i, 1u << s->l2_bits, img->fd, s->l1[l1i],
			 "qcow", img->path, &ref);
	if (r < 0)
		return r;
	end = MIN(end, (l1i + 1) << shift);
	for (pos = off; pos < end;) {
		uint64_t e = ref.table[(pos >> cb) & ((1ull << s->l2_bits) - 1)];
		uint64_t in_cl = pos & (cs - 1), step = MIN(cs - in_cl, end - pos);
		enum img_ext_type t;
		bool c = false;
		uint64_t host = 0;

		if (!e) {
			t = IMG_EXT_UNALLOC;	/* the backing file, or zeros */
		} else if (e & QCOW_OFLAG_COMPRESSED) {
			uint64_t coff, cend;
			size_t csize;

			qcow_comp_decode(s->cluster_bits, e, &coff, &csize);
			if (!csize || ADD_OVERFLOW(coff, csize, &cend) ||
			    cend > img->file_size) {
				bad = "compressed cluster lies past the end of the file";
				bad_value = coff;
				break;
			}
			t = IMG_EXT_DATA;
			c = true;
		} else {
			t = IMG_EXT_DATA;
			host = e + in_cl;
			if (!range_within(host, step, img->file_size)) {
				bad = "data cluster lies past the end of the file";
				bad_value = e;
				break;
			}
		}
		if (total && (t != type || c != comp ||
			      (t == IMG_EXT_DATA && !c &&
			       host != first_host + total)))
			break;
		if (!total) {
			type = t;
			comp = c;
			first_host = host;
		}
		total += step;
		pos += step;
	}
	qcow2_l2_put(&ref);
	if (!total)
		return log_err_ret(-EUCLEAN, "qcow: %s: %s (%llu)", img->path,
				   bad, (unsigned long long)bad_value);
	ext->len = total;
	ext->type = type;
	if (type == IMG_EXT_DATA)
		ext->host_off = comp ? IMG_HOST_NONE : first_host;
	return 0;
}

static int qcow_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct qcow *s = img->priv;
	unsigned cb = s->cluster_bits, shift = cb + s->l2_bits;
	struct qcow2_l2_ref ref = { NULL, NULL };
	uint64_t ref_l1i = UINT64_MAX;
	uint8_t *p = buf;
	int r = 0;

	while (n) {
		uint64_t l1i = off >> shift, in_cl, e;
		size_t chunk;
		struct qcow2_zreq z;

		if (l1i >= s->l1_entries || !s->l1[l1i]) {
			r = log_err_ret(-EIO, "qcow: %s: read of a cluster that is not compressed (%llu)",
					img->path, (unsigned long long)off);
			break;
		}
		if (l1i != ref_l1i) {
			qcow2_l2_put(&ref);
			r = qcow2_l2_get(s->owner, l1i, 1u << s->l2_bits,
					 img->fd, s->l1[l1i], "qcow", img->path,
					 &ref);
			if (r < 0)
				break;
			ref_l1i = l1i;
		}
		e = ref.table[(off >> cb) & ((1ull << s->l2_bits) - 1)];
		if (!(e & QCOW_OFLAG_COMPRESSED)) {
			r = log_err_ret(-EIO, "qcow: %s: read of a cluster that is not compressed (%llu)",
					img->path, (unsigned long long)off);
			break;
		}
		in_cl = off & (s->cluster_size - 1);
		chunk = (size_t)MIN((uint64_t)n, s->cluster_size - in_cl);
		z = (struct qcow2_zreq){
			.drv = "qcow", .path = img->path, .fd = img->fd,
			.file_size = img->file_size, .owner = s->owner,
			.key = e, .cluster_size = (size_t)s->cluster_size,
			.type = QCOW2_COMP_ZLIB,
		};
		qcow_comp_decode(s->cluster_bits, e, &z.coff, &z.csize);
		r = qcow2_cluster_read(&z, p, in_cl, chunk);
		if (r < 0)
			break;
		p += chunk;
		n -= chunk;
		off += chunk;
	}
	qcow2_l2_put(&ref);
	return r;
}

const struct img_driver qcow_driver = {
	.name = "qcow",
	.desc = "QEMU copy-on-write v1 (read-only)",
	.probe = qcow_probe,
	.open = qcow_open,
	.close = qcow_close,
	.parent = qcow_parent,
	.map_extent = qcow_map_extent,
	.read = qcow_read,		/* compressed clusters */
};
