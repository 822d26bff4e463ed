// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/create.c: new QCOW2 images: ->create_diff (an overlay, or an
 * empty image) and ->create (a base image).
 *
 * A dynamic image is what qcow2_create_diff() writes without a parent:
 * header cluster, refcount table and blocks, an empty L1 table.  A fixed
 * one has its metadata preallocated, as qemu-img's preallocation=metadata
 * lays it out: every L2 table exists and every guest cluster is mapped,
 * in order, to a host cluster after the L2 tables (refcount 1, so L1 and
 * L2 entries carry the COPIED flag: spec, "Cluster mapping"); the data
 * clusters are reserved with fallocate where the file system can, and
 * read as zeros.  The header cluster is the one qcow2_create_diff() wrote
 * (version 3, refcount order 4, the feature name table, extended L2
 * entries when it chose them), with the table offsets of the larger
 * layout:
 *   header | refcount table | refcount blocks | L1 | L2 tables | data
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"

#define DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))
#define CREATE_EXTL2_MIN_CLUSTER 16384u	/* qemu's minimum for extended L2 */

struct create_layout {
	uint64_t cs;		/* cluster size */
	uint64_t l2e;		/* bytes per L2 entry: 8, 16 (extended L2) */
	uint64_t ndata;		/* guest clusters */
	uint64_t l1n;		/* L1 entries = L2 tables */
	uint64_t l1c, rtc, nblk; /* clusters of L1, refcount table, blocks */
	uint64_t total;		/* clusters in the file */
	uint64_t rb_off, l1_off, l2_off, data_off;
};

static void layout_compute(struct create_layout *L, uint64_t cs, uint64_t size,
		       bool extl2)
{
	uint64_t rbe = cs * 8 / 16;	/* 16-bit refcounts per block */

	L->cs = cs;
	L->l2e = extl2 ? 16 : 8;
	L->ndata = DIV_ROUND_UP(size, cs);
	L->l1n = DIV_ROUND_UP(L->ndata, cs / L->l2e);
	L->l1c = DIV_ROUND_UP(L->l1n * 8, cs);
	L->rtc = 1;
	L->nblk = 1;
	for (;;) {	/* enough refcount blocks to count every cluster */
		uint64_t nb, nr;

		L->total = 1 + L->rtc + L->nblk + L->l1c + L->l1n + L->ndata;
		nb = DIV_ROUND_UP(L->total, rbe);
		nr = DIV_ROUND_UP(nb * 8, cs);
		if (nb == L->nblk && nr == L->rtc)
			break;
		L->nblk = nb;
		L->rtc = nr;
	}
	L->rb_off = (1 + L->rtc) * cs;
	L->l1_off = L->rb_off + L->nblk * cs;
	L->l2_off = L->l1_off + L->l1c * cs;
	L->data_off = L->l2_off + L->l1n * cs;
}

/* Write every table of the preallocated layout, one cluster at a time. */
static int tables_write(int fd, const struct create_layout *L)
{
	const uint64_t cs = L->cs, per = cs / 8, rbe = cs / 2;
	uint8_t *cl = malloc(cs);
	uint64_t i, k;
	int r = 0;

	if (!cl)
		return -ENOMEM;
	/* refcount table: block i at rb_off + i * cs */
	for (i = 0; i < L->rtc && r == 0; i++) {
		memset(cl, 0, cs);
		for (k = 0; k < per && i * per + k < L->nblk; k++)
			put_be64(cl + k * 8, L->rb_off + (i * per + k) * cs);
		r = pwrite_full(fd, cl, cs, cs + i * cs);
	}
	/* refcount blocks: 1 for every cluster of the file */
	for (i = 0; i < L->nblk && r == 0; i++) {
		memset(cl, 0, cs);
		for (k = 0; k < rbe && i * rbe + k < L->total; k++)
			qcow2_rc_set(cl, 4, k, 1);
		r = pwrite_full(fd, cl, cs, L->rb_off + i * cs);
	}
	/* L1: L2 table i at l2_off + i * cs */
	for (i = 0; i < L->l1c && r == 0; i++) {
		memset(cl, 0, cs);
		for (k = 0; k < per && i * per + k < L->l1n; k++) {
			struct qcow2_l1e e = {
				.l2_off = L->l2_off + (i * per + k) * cs,
				.copied = true,
			};

			put_be64(cl + k * 8, qcow2_l1e_encode(&e));
		}
		r = pwrite_full(fd, cl, cs, L->l1_off + i * cs);
	}
	/* L2 tables: guest cluster d at data_off + d * cs; with extended
	 * L2 entries every subcluster allocated (spec: "Extended L2
	 * Entries", allocation bits 0-31 of the bitmap) */
	for (i = 0; i < L->l1n && r == 0; i++) {
		const uint64_t l2per = cs / L->l2e;

		memset(cl, 0, cs);
		for (k = 0; k < l2per && i * l2per + k < L->ndata; k++) {
			struct qcow2_l2e e = {
				.host = L->data_off + (i * l2per + k) * cs,
				.copied = true,
				.alloc = (uint32_t)QCOW2_SC_ALL,
			};
			uint64_t bm;

			put_be64(cl + k * L->l2e, qcow2_l2e_encode(&e, &bm));
			if (L->l2e == 16)
				put_be64(cl + k * 16 + 8, bm);
		}
		r = pwrite_full(fd, cl, cs, L->l2_off + i * cs);
	}
	free(cl);
	return r;
}

/*
 * Layout of a new image, as qemu lays one out: the header cluster, the
 * refcount table, the refcount blocks counting every cluster of the file,
 * then the L1 table (zeros: nothing allocated, all reads go to the
 * backing file).  Refcount order 4, no lazy refcounts; extended L2
 * entries over a parent with clusters of 16 KiB or more.
 */
int qcow2_create_diff(const char *path, const struct img_create_parent *parent,
		      const struct img_create_opts *o)
{
	uint64_t cs = o->block_size ? o->block_size : 65536, size = o->size;
	const char *name = NULL, *fmt = NULL;
	uint64_t l1n, l1c, rtc = 1, nblk = 1, total, rbe, span;
	size_t pos = sizeof(struct qcow2_header_raw), name_len = 0;
	uint8_t ftable[QCOW2_FEATURE_TABLE_LEN];
	struct qcow2_header h = {
		.version = 3,
		.refcount_order = 4,
		.header_length = sizeof(struct qcow2_header_raw),
	};
	uint8_t *cl = NULL, *rt = NULL, *blocks = NULL;
	bool extl2;
	unsigned cb;
	int fd, r;

	if (!is_pow2(cs) || cs < 512 || cs > (2u << 20))
		return log_err_ret(-EINVAL, "qcow2: %s: cluster size must be a power of two from 512 bytes to 2 MiB (%llu)",
				   path, (unsigned long long)cs);
	if (parent) {
		const char *drv = parent->format ? parent->format :
			parent->img ? parent->img->drv->name : NULL;

		name = parent->rel_path ? parent->rel_path : parent->abs_path;
		if (!name || !*name)
			return log_err_ret(-EINVAL, "qcow2: %s: no path for the backing file",
					   path);
		name_len = strlen(name);
		if (name_len > QCOW2_MAX_BACKING_NAME)
			return log_err_ret(-ENAMETOOLONG, "qcow2: %s: backing file name too long (%zu)",
					   path, name_len);
		fmt = qcow2_format_qemu_name(drv);
		if (!fmt)
			log_warn("qcow2: %s: qemu cannot read the backing file's format (%s); no backing format recorded",
				 path, drv ? drv : "unknown");
		if (!size && parent->img)	/* past its end: zeros */
			size = (parent->img->size + 511) & ~511ull;
	}
	if (size & 511)
		return log_err_ret(-EINVAL, "qcow2: %s: virtual size is not a multiple of 512 (%llu)",
				   path, (unsigned long long)size);
	cb = (unsigned)__builtin_ctzll(cs);
	/* a differencing layer gets extended L2 entries (32 subclusters per
	 * cluster, qemu >= 5.2) where qemu allows them: copy-on-write per
	 * subcluster, so a 4 KiB write into a fresh cluster reads nothing
	 * from below; a base image keeps standard entries (any reader) */
	extl2 = parent && cs >= CREATE_EXTL2_MIN_CLUSTER;
	span = 1ull << (cb + cb - (extl2 ? 4 : 3));	/* per L2 table */
	l1n = size / span + (size % span != 0);
	if (l1n > QCOW2_MAX_L1_BYTES / 8)
		return log_err_ret(-EFBIG, "qcow2: %s: virtual size too big for %llu-byte clusters (%llu)",
				   path, (unsigned long long)cs,
				   (unsigned long long)size);
	l1c = DIV_ROUND_UP(l1n * 8, cs);
	rbe = cs * 8 / 16;
	for (;;) {		/* enough blocks to count every cluster */
		uint64_t nb, nr;

		total = 1 + rtc + nblk + l1c;
		nb = DIV_ROUND_UP(total, rbe);
		nr = DIV_ROUND_UP(nb * 8, cs);
		if (nb == nblk && nr == rtc)
			break;
		nblk = nb;
		rtc = nr;
	}

	cl = calloc(1, cs);
	rt = calloc(rtc, cs);
	blocks = calloc(nblk, cs);
	if (!cl || !rt || !blocks) {
		r = -ENOMEM;
		goto out;
	}
	if (fmt)
		qcow2_ext_encode(cl, &pos, QCOW2_EXT_BACKING_FORMAT, fmt,
				 strlen(fmt));
	/* the feature name table is optional: left out if it does not fit
	 * (512-byte clusters), as qemu does */
	if (pos + 8 + sizeof(ftable) + 8 + name_len <= cs) {
		qcow2_feature_table_encode(ftable);
		qcow2_ext_encode(cl, &pos, QCOW2_EXT_FEATURE_TABLE, ftable,
				 sizeof(ftable));
	}
	pos += sizeof(struct qcow2_ext_raw);	/* end of extensions */
	if (pos + name_len > cs) {
		r = log_err_ret(-ENAMETOOLONG, "qcow2: %s: backing file name does not fit in one %llu-byte cluster",
				path, (unsigned long long)cs);
		goto out;
	}
	if (name) {
		memcpy(cl + pos, name, name_len);
		h.backing_file_offset = pos;
		h.backing_file_size = (uint32_t)name_len;
	}
	h.cluster_bits = cb;
	h.size = size;
	h.l1_size = (uint32_t)l1n;
	h.l1_table_offset = (1 + rtc + nblk) * cs;
	h.refcount_table_offset = cs;
	h.refcount_table_clusters = (uint32_t)rtc;
	if (extl2)
		h.incompatible_features = QCOW2_INCOMPAT_EXTL2;
	qcow2_header_encode(&h, cl);
	for (uint64_t i = 0; i < nblk; i++)
		put_be64(rt + i * 8, (1 + rtc + i) * cs);
	/* 1 for every cluster: block c / rbe, entry c % rbe */
	for (uint64_t c = 0; c < total; c++)
		qcow2_rc_set(blocks, h.refcount_order, c, 1);

	fd = file_create(path, "qcow2");
	if (fd < 0) {
		r = fd;
		goto out;
	}
	r = pwrite_full(fd, cl, cs, 0);
	if (r == 0)
		r = pwrite_full(fd, rt, rtc * cs, cs);
	if (r == 0)
		r = pwrite_full(fd, blocks, nblk * cs, (1 + rtc) * cs);
	if (r == 0 && ftruncate(fd, (off_t)(total * cs)) < 0)
		r = -errno;
	r = file_create_end(fd, path, r, "qcow2");
out:
	free(cl);
	free(rt);
	free(blocks);
	return r;
}

static int image_preallocate(const char *path, uint64_t cs, uint64_t size)
{
	struct qcow2_header h;
	struct create_layout L;
	uint8_t *cl = NULL;
	int fd, r;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return log_err_ret(-errno, "qcow2: %s: cannot reopen (%s)", path,
				   strerror(errno));
	cl = malloc(cs);
	r = cl ? pread_full(fd, cl, cs, 0) : -ENOMEM;
	if (r == 0)
		r = qcow2_header_decode(path, cl, cs, &h);
	if (r == 0) {
		layout_compute(&L, cs, size,
			       h.incompatible_features & QCOW2_INCOMPAT_EXTL2);
		if (L.rtc * cs > QCOW2_MAX_REFTABLE_BYTES)
			r = log_err_ret(-EFBIG, "qcow2: %s: too big to "
					"preallocate with %llu-byte clusters "
					"(%llu bytes)", path,
					(unsigned long long)cs,
					(unsigned long long)size);
	}
	if (r == 0) {
		if (h.l1_size != L.l1n || h.refcount_table_offset != cs)
			r = -EPROTO;	/* not the layout computed here */
	}
	if (r == 0) {
		h.l1_table_offset = L.l1_off;
		h.refcount_table_clusters = (uint32_t)L.rtc;
		qcow2_header_encode(&h, cl);
		r = ftruncate(fd, 0) < 0 ? -errno : 0;
	}
	if (r == 0)
		r = pwrite_full(fd, cl, cs, 0);
	if (r == 0)
		r = tables_write(fd, &L);
	if (r == 0 && ftruncate(fd, (off_t)(L.total * cs)) < 0)
		r = -errno;
	if (r == 0)
		r = file_reserve(fd, L.data_off, L.ndata * cs);
	if (r == 0 && fdatasync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	free(cl);
	if (r < 0)
		log_err("qcow2: %s: cannot preallocate the new image (%s)",
			path, strerror(-r));
	return r;
}

int qcow2_create(const char *path, const struct img_create_opts *o)
{
	uint64_t cs = o->block_size ? o->block_size : 65536;
	int r;

	if (!o->size)
		return log_err_ret(-EINVAL, "qcow2: %s: a base image needs a "
				   "size", path);
	if (o->sector_size && o->sector_size != 512)
		return log_err_ret(-ENOTSUP, "qcow2: %s: QCOW2 has no sector "
				   "size setting (%u asked)", path,
				   o->sector_size);
	r = qcow2_create_diff(path, NULL, o);	/* checks size and clusters */
	if (r < 0 || !o->fixed)
		return r;
	r = image_preallocate(path, cs, o->size);
	if (r < 0)
		unlink(path);
	return r;
}
