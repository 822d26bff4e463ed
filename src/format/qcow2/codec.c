// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/codec.c: pure decode and encode of the QCOW2 (v2/v3) and QCOW (v1)
 * on-disk structures: the header, header extensions, the feature name
 * table, the backing file name, L1/L2 entries (standard, extended and
 * compressed), refcount entries of every width and snapshot table
 * entries.  No I/O and no state: everything works on byte buffers the
 * caller read or will write, and is unit-tested on byte arrays.
 *
 * Layout facts are from qemu's docs/interop/qcow2.txt (v2/v3) and the
 * layout qemu's block/qcow.c writes (v1).  All fields are big-endian.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "log.h"
#include "qcow2.h"

/* ---- header ---- */

int qcow2_header_decode(const char *path, const uint8_t *buf, size_t len,
			struct qcow2_header *h)
{
	const struct qcow2_header_raw *r = (const void *)buf;
	struct qcow2_header d;
	size_t need;

	if (len < 8 || memcmp(r->magic, QCOW_MAGIC, 4) != 0)
		return -EINVAL;		/* not ours: silent */
	memset(&d, 0, sizeof(d));
	d.version = get_be32(r->version);
	if (d.version == 1)
		return -EINVAL;		/* QCOW version 1: the qcow driver */
	if (d.version != 2 && d.version != 3)
		return log_err_ret(-ENOTSUP, "qcow2: %s: unsupported qcow2 version %u (layerfs reads 2 and 3)",
				   path, d.version);
	need = d.version == 2 ? QCOW2_V2_HEADER_LEN : QCOW2_V3_HEADER_MIN;
	if (len < need)
		return log_err_ret(-EUCLEAN, "qcow2: %s: file too short for the header (%zu bytes)",
				   path, len);
	d.backing_file_offset = get_be64(r->backing_file_offset);
	d.backing_file_size = get_be32(r->backing_file_size);
	d.cluster_bits = get_be32(r->cluster_bits);
	d.size = get_be64(r->size);
	d.crypt_method = get_be32(r->crypt_method);
	d.l1_size = get_be32(r->l1_size);
	d.l1_table_offset = get_be64(r->l1_table_offset);
	d.refcount_table_offset = get_be64(r->refcount_table_offset);
	d.refcount_table_clusters = get_be32(r->refcount_table_clusters);
	d.nb_snapshots = get_be32(r->nb_snapshots);
	d.snapshots_offset = get_be64(r->snapshots_offset);
	d.refcount_order = 4;
	d.header_length = QCOW2_V2_HEADER_LEN;
	if (d.version >= 3) {
		d.incompatible_features = get_be64(r->incompatible_features);
		d.compatible_features = get_be64(r->compatible_features);
		d.autoclear_features = get_be64(r->autoclear_features);
		d.refcount_order = get_be32(r->refcount_order);
		d.header_length = get_be32(r->header_length);
	}
	if (d.cluster_bits < QCOW2_MIN_CLUSTER_BITS)
		return log_err_ret(-EUCLEAN, "qcow2: %s: cluster_bits out of range (%u)",
				   path, d.cluster_bits);
	if (d.cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return log_err_ret(-ENOTSUP, "qcow2: %s: cluster size over 2 MiB is not supported (cluster_bits %u)",
				   path, d.cluster_bits);
	if (d.version >= 3) {
		if (d.header_length < QCOW2_V3_HEADER_MIN)
			return log_err_ret(-EUCLEAN, "qcow2: %s: header_length too small (%u)",
					   path, d.header_length);
		if (d.header_length > (1u << d.cluster_bits))
			return log_err_ret(-EUCLEAN, "qcow2: %s: header_length exceeds the first cluster (%u)",
					   path, d.header_length);
		if (d.refcount_order > 6)
			return log_err_ret(-EUCLEAN, "qcow2: %s: refcount_order out of range (%u)",
					   path, d.refcount_order);
		/* additional field: present when the header reaches it */
		if (d.header_length > offsetof(struct qcow2_header_raw,
					       compression_type) &&
		    len > offsetof(struct qcow2_header_raw, compression_type))
			d.compression_type = r->compression_type;
	}
	if (d.crypt_method != 0)
		return log_err_ret(-ENOTSUP, "qcow2: %s: encrypted images are not supported (crypt_method %u)",
				   path, d.crypt_method);
	*h = d;
	return 0;
}

void qcow2_header_encode(const struct qcow2_header *h, uint8_t *buf)
{
	struct qcow2_header_raw *r = (void *)buf;	/* bytes only */
	size_t len = h->version >= 3 ? h->header_length : QCOW2_V2_HEADER_LEN;

	memset(buf, 0, MIN(len, sizeof(*r)));
	memcpy(r->magic, QCOW_MAGIC, 4);
	put_be32(r->version, h->version);
	put_be64(r->backing_file_offset, h->backing_file_offset);
	put_be32(r->backing_file_size, h->backing_file_size);
	put_be32(r->cluster_bits, h->cluster_bits);
	put_be64(r->size, h->size);
	put_be32(r->crypt_method, h->crypt_method);
	put_be32(r->l1_size, h->l1_size);
	put_be64(r->l1_table_offset, h->l1_table_offset);
	put_be64(r->refcount_table_offset, h->refcount_table_offset);
	put_be32(r->refcount_table_clusters, h->refcount_table_clusters);
	put_be32(r->nb_snapshots, h->nb_snapshots);
	put_be64(r->snapshots_offset, h->snapshots_offset);
	if (h->version < 3)
		return;
	put_be64(r->incompatible_features, h->incompatible_features);
	put_be64(r->compatible_features, h->compatible_features);
	put_be64(r->autoclear_features, h->autoclear_features);
	put_be32(r->refcount_order, h->refcount_order);
	put_be32(r->header_length, h->header_length);
	if (h->header_length > offsetof(struct qcow2_header_raw,
					compression_type))
		r->compression_type = h->compression_type;
}

/* ---- header extensions ---- */

int qcow2_ext_decode(const uint8_t *buf, size_t off, size_t end,
		     struct qcow2_ext *e)
{
	const struct qcow2_ext_raw *x = (const void *)(buf + off);

	if (off > end || end - off < sizeof(*x))
		return -ENODATA;
	e->type = get_be32(x->type);
	e->len = get_be32(x->len);
	e->data = buf + off + sizeof(*x);
	if (e->type == QCOW2_EXT_END) {
		e->next = off + sizeof(*x);
		return 0;
	}
	/* data is padded to a multiple of 8 */
	e->next = off + sizeof(*x) + (((size_t)e->len + 7) & ~(size_t)7);
	if (e->len > end - off - sizeof(*x))
		return -EUCLEAN;
	return 1;
}

void qcow2_ext_encode(uint8_t *buf, size_t *pos, uint32_t type,
		      const void *data, size_t len)
{
	struct qcow2_ext_raw *x = (void *)(buf + *pos);
	size_t padded = (len + 7) & ~(size_t)7;

	put_be32(x->type, type);
	put_be32(x->len, (uint32_t)len);
	if (len)
		memcpy(buf + *pos + sizeof(*x), data, len);
	memset(buf + *pos + sizeof(*x) + len, 0, padded - len);
	*pos += sizeof(*x) + padded;
}

/* ---- feature name table ---- */

/* qemu's names for the features, so tools can name a bit they lack */
static const struct {
	uint8_t type, bit;
	const char *name;
} qcow2_feature_names[QCOW2_FEATURE_TABLE_ENTRIES] = {
	{ QCOW2_FEAT_INCOMPAT, 0, "dirty bit" },
	{ QCOW2_FEAT_INCOMPAT, 1, "corrupt bit" },
	{ QCOW2_FEAT_INCOMPAT, 2, "external data file" },
	{ QCOW2_FEAT_INCOMPAT, 3, "compression type" },
	{ QCOW2_FEAT_INCOMPAT, 4, "extended L2 entries" },
	{ QCOW2_FEAT_COMPAT, 0, "lazy refcounts" },
	{ QCOW2_FEAT_AUTOCLEAR, 0, "bitmaps" },
	{ QCOW2_FEAT_AUTOCLEAR, 1, "raw external data" },
};

bool qcow2_feature_name_find(const uint8_t *table, size_t len, uint8_t type,
			     uint8_t bit, char *out, size_t outlen)
{
	for (size_t i = 0; i + sizeof(struct qcow2_feature_raw) <= len;
	     i += sizeof(struct qcow2_feature_raw)) {
		const struct qcow2_feature_raw *f = (const void *)(table + i);

		if (f->type == type && f->bit == bit) {
			snprintf(out, outlen, "%.*s",
				 (int)strnlen((const char *)f->name,
					      sizeof(f->name)),
				 (const char *)f->name);
			return true;
		}
	}
	return false;
}

void qcow2_feature_table_encode(uint8_t *dst)
{
	memset(dst, 0, QCOW2_FEATURE_TABLE_LEN);
	for (size_t i = 0; i < ARRAY_SIZE(qcow2_feature_names); i++) {
		struct qcow2_feature_raw *f = (void *)(dst + i * sizeof(*f));

		f->type = qcow2_feature_names[i].type;
		f->bit = qcow2_feature_names[i].bit;
		memcpy(f->name, qcow2_feature_names[i].name,
		       strlen(qcow2_feature_names[i].name));
	}
}

/* ---- backing file name ---- */

int qcow2_backing_decode(const uint8_t *cl, size_t cl_len,
			 const struct qcow2_header *h, size_t min_off,
			 char **name, struct qcow2_bad *bad)
{
	uint64_t off = h->backing_file_offset;
	uint32_t len = h->backing_file_size;
	char *n;

	*name = NULL;
	if (!off || !len)
		return 0;
	if (len > QCOW2_MAX_BACKING_NAME) {
		bad->what = "backing file name too long";
		bad->value = len;
		return -EUCLEAN;
	}
	if (off < min_off ||
	    !range_within(off, len, 1ull << h->cluster_bits)) {
		bad->what = "backing file name outside the first cluster";
		bad->value = off;
		return -EUCLEAN;
	}
	if (!range_within(off, len, cl_len)) {
		bad->what = "backing file name past the end of the file";
		bad->value = off;
		return -EUCLEAN;
	}
	n = strndup((const char *)cl + off, len);
	if (!n)
		return -ENOMEM;
	if (!n[0]) {
		free(n);	/* qemu: an empty name is no backing */
		return 0;
	}
	*name = n;
	return 0;
}

/* ---- L1 and L2 entries (spec: "Cluster mapping") ---- */

void qcow2_l1e_decode(uint64_t e, struct qcow2_l1e *d)
{
	d->l2_off = e & QCOW2_L1E_OFFSET_MASK;
	d->copied = (e & QCOW2_L1E_COPIED) != 0;
	d->reserved = e & QCOW2_L1E_RESERVED;
}

uint64_t qcow2_l1e_encode(const struct qcow2_l1e *d)
{
	return (d->l2_off & QCOW2_L1E_OFFSET_MASK) |
	       (d->copied ? QCOW2_L1E_COPIED : 0);
}

void qcow2_comp_decode(unsigned cluster_bits, uint64_t e, uint64_t *coff,
		       size_t *csize)
{
	unsigned x = 62 - (cluster_bits - 8);
	uint64_t nsec = ((e >> x) & ((1ull << (cluster_bits - 8)) - 1)) + 1;

	*coff = e & ((1ull << x) - 1);
	*csize = (size_t)(nsec * 512 - (*coff & 511));
}

uint64_t qcow2_comp_encode(unsigned cluster_bits, uint64_t coff,
			   size_t csize)
{
	unsigned x = 62 - (cluster_bits - 8);
	uint64_t nsec = ((coff & 511) + csize + 511) / 512;

	return QCOW2_L2E_COMPRESSED | (coff & ((1ull << x) - 1)) |
	       ((nsec - 1) << x);
}

void qcow2_l2e_decode(unsigned cluster_bits, uint64_t e, uint64_t bitmap,
		      struct qcow2_l2e *d)
{
	memset(d, 0, sizeof(*d));
	d->copied = (e & QCOW2_L2E_COPIED) != 0;
	if (e & QCOW2_L2E_COMPRESSED) {
		d->compressed = true;
		qcow2_comp_decode(cluster_bits, e, &d->coff, &d->csize);
		return;
	}
	d->host = e & QCOW2_L2E_OFFSET_MASK;
	d->zero = (e & QCOW2_L2E_ZERO) != 0;
	d->reserved = e & QCOW2_L2E_STD_RESERVED;
	d->alloc = (uint32_t)bitmap;		/* extended L2: bits 0-31 */
	d->zeros = (uint32_t)(bitmap >> 32);	/* bits 32-63 */
}

uint64_t qcow2_l2e_encode(const struct qcow2_l2e *d, uint64_t *bitmap)
{
	uint64_t e = (d->host & QCOW2_L2E_OFFSET_MASK) |
		     (d->zero ? QCOW2_L2E_ZERO : 0) |
		     (d->copied ? QCOW2_L2E_COPIED : 0);

	if (bitmap)
		*bitmap = (uint64_t)d->alloc | ((uint64_t)d->zeros << 32);
	return e;
}

uint64_t qcow2_sc_mask(unsigned first, unsigned last)
{
	return ((2ull << last) - 1) & ~((1ull << first) - 1);
}

/* ---- refcount block entries (spec: "Refcount block entry") ---- */

uint64_t qcow2_rc_get(const uint8_t *p, unsigned order, uint64_t i)
{
	unsigned bits = 1u << order;
	uint64_t bit;

	switch (order) {
	case 6:
		return get_be64(p + i * 8);
	case 5:
		return get_be32(p + i * 4);
	case 4:
		return get_be16(p + i * 2);
	case 3:
		return p[i];
	default:	/* sub-byte: bit 0 is the least significant bit */
		bit = i * bits;
		return (uint64_t)(p[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
	}
}

void qcow2_rc_set(uint8_t *p, unsigned order, uint64_t i, uint64_t v)
{
	unsigned bits = 1u << order, mask;
	uint64_t bit;

	switch (order) {
	case 6:
		put_be64(p + i * 8, v);
		break;
	case 5:
		put_be32(p + i * 4, (uint32_t)v);
		break;
	case 4:
		put_be16(p + i * 2, (uint16_t)v);
		break;
	case 3:
		p[i] = (uint8_t)v;
		break;
	default:	/* bits < 8 */
		mask = (1u << bits) - 1;
		bit = i * bits;
		p[bit / 8] = (uint8_t)((p[bit / 8] & ~(mask << (bit % 8))) |
				       ((v & mask) << (bit % 8)));
		break;
	}
}

/* ---- snapshot table entries (spec: "Snapshots") ---- */

void qcow2_snapshot_decode(const uint8_t *buf, struct qcow2_snapshot_hdr *d)
{
	const struct qcow2_snapshot_raw *r = (const void *)buf;

	d->l1_table_offset = get_be64(r->l1_table_offset);
	d->l1_size = get_be32(r->l1_size);
	d->id_len = get_be16(r->id_str_size);
	d->name_len = get_be16(r->name_size);
	d->date_sec = get_be32(r->date_sec);
	d->date_nsec = get_be32(r->date_nsec);
	d->vm_clock_nsec = get_be64(r->vm_clock_nsec);
	d->vm_state_size = get_be32(r->vm_state_size);
	d->extra_len = get_be32(r->extra_data_size);
	d->disk_size = 0;
}

void qcow2_snapshot_extra_decode(const uint8_t *extra, size_t len,
				 struct qcow2_snapshot_hdr *d)
{
	if (len >= 8)	/* the 64-bit VM state size overrides */
		d->vm_state_size = get_be64(extra);
	if (len >= 16)
		d->disk_size = get_be64(extra + 8);
}

uint64_t qcow2_snapshot_entry_len(const struct qcow2_snapshot_hdr *d)
{
	return (sizeof(struct qcow2_snapshot_raw) + (uint64_t)d->extra_len +
		d->id_len + d->name_len + 7) & ~7ull;
}

void qcow2_snapshot_encode(const struct qcow2_snapshot_hdr *d, uint8_t *buf)
{
	struct qcow2_snapshot_raw *r = (void *)buf;

	put_be64(r->l1_table_offset, d->l1_table_offset);
	put_be32(r->l1_size, d->l1_size);
	put_be16(r->id_str_size, d->id_len);
	put_be16(r->name_size, d->name_len);
	put_be32(r->date_sec, d->date_sec);
	put_be32(r->date_nsec, d->date_nsec);
	put_be64(r->vm_clock_nsec, d->vm_clock_nsec);
	put_be32(r->vm_state_size, (uint32_t)MIN(d->vm_state_size,
						 (uint64_t)UINT32_MAX));
	put_be32(r->extra_data_size, d->extra_len);
}

/* ---- QCOW version 1 ---- */

void qcow_header_decode(const uint8_t *buf, struct qcow_header *h)
{
	const struct qcow_header_raw *r = (const void *)buf;

	h->version = get_be32(r->version);
	h->backing_file_offset = get_be64(r->backing_file_offset);
	h->backing_file_size = get_be32(r->backing_file_size);
	h->mtime = get_be32(r->mtime);
	h->size = get_be64(r->size);
	h->cluster_bits = r->cluster_bits;
	h->l2_bits = r->l2_bits;
	h->crypt_method = get_be32(r->crypt_method);
	h->l1_table_offset = get_be64(r->l1_table_offset);
}

void qcow_header_encode(const struct qcow_header *h, uint8_t *buf)
{
	struct qcow_header_raw *r = (void *)buf;

	memset(r, 0, sizeof(*r));
	memcpy(r->magic, QCOW_MAGIC, 4);
	put_be32(r->version, h->version);
	put_be64(r->backing_file_offset, h->backing_file_offset);
	put_be32(r->backing_file_size, h->backing_file_size);
	put_be32(r->mtime, h->mtime);
	put_be64(r->size, h->size);
	r->cluster_bits = h->cluster_bits;
	r->l2_bits = h->l2_bits;
	put_be32(r->crypt_method, h->crypt_method);
	put_be64(r->l1_table_offset, h->l1_table_offset);
}

void qcow_comp_decode(unsigned cluster_bits, uint64_t e, uint64_t *coff,
		      size_t *csize)
{
	unsigned x = 63 - cluster_bits;

	*coff = e & ((1ull << x) - 1);
	*csize = (size_t)((e >> x) & ((1ull << cluster_bits) - 1));
}
