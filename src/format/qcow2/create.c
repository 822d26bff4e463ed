// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2-create.c: new base QCOW2 images (the driver's ->create).
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

#define Q2C_DIV_UP(a, b) (((a) + (b) - 1) / (b))

struct q2c_layout {
	uint64_t cs;		/* cluster size */
	uint64_t l2e;		/* bytes per L2 entry: 8, 16 (extended L2) */
	uint64_t ndata;		/* guest clusters */
	uint64_t l1n;		/* L1 entries = L2 tables */
	uint64_t l1c, rtc, nblk; /* clusters of L1, refcount table, blocks */
	uint64_t total;		/* clusters in the file */
	uint64_t rb_off, l1_off, l2_off, data_off;
};

static void q2c_layout(struct q2c_layout *L, uint64_t cs, uint64_t size,
		       bool extl2)
{
	uint64_t rbe = cs * 8 / 16;	/* 16-bit refcounts per block */

	L->cs = cs;
	L->l2e = extl2 ? 16 : 8;
	L->ndata = Q2C_DIV_UP(size, cs);
	L->l1n = Q2C_DIV_UP(L->ndata, cs / L->l2e);
	L->l1c = Q2C_DIV_UP(L->l1n * 8, cs);
	L->rtc = 1;
	L->nblk = 1;
	for (;;) {	/* enough refcount blocks to count every cluster */
		uint64_t nb, nr;

		L->total = 1 + L->rtc + L->nblk + L->l1c + L->l1n + L->ndata;
		nb = Q2C_DIV_UP(L->total, rbe);
		nr = Q2C_DIV_UP(nb * 8, cs);
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
static int q2c_write_tables(int fd, const struct q2c_layout *L)
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
			put_be16(cl + k * 2, 1);
		r = pwrite_full(fd, cl, cs, L->rb_off + i * cs);
	}
	/* L1: L2 table i at l2_off + i * cs */
	for (i = 0; i < L->l1c && r == 0; i++) {
		memset(cl, 0, cs);
		for (k = 0; k < per && i * per + k < L->l1n; k++)
			put_be64(cl + k * 8, (L->l2_off + (i * per + k) * cs) |
					     QCOW2_L1E_COPIED);
		r = pwrite_full(fd, cl, cs, L->l1_off + i * cs);
	}
	/* L2 tables: guest cluster d at data_off + d * cs; with extended
	 * L2 entries every subcluster allocated (spec: "Extended L2
	 * Entries", allocation bits 0-31 of the bitmap) */
	for (i = 0; i < L->l1n && r == 0; i++) {
		const uint64_t l2per = cs / L->l2e;

		memset(cl, 0, cs);
		for (k = 0; k < l2per && i * l2per + k < L->ndata; k++) {
			put_be64(cl + k * L->l2e,
				 (L->data_off + (i * l2per + k) * cs) |
				 QCOW2_L2E_COPIED);
			if (L->l2e == 16)
				put_be64(cl + k * 16 + 8, QCOW2_SC_ALL);
		}
		r = pwrite_full(fd, cl, cs, L->l2_off + i * cs);
	}
	free(cl);
	return r;
}

static int q2c_preallocate(const char *path, uint64_t cs, uint64_t size)
{
	struct qcow2_header_raw *h;
	struct q2c_layout L;
	uint8_t *cl = NULL;
	int fd, r;

	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return log_err_ret(-errno, "qcow2: %s: cannot reopen (%s)", path,
				   strerror(errno));
	cl = malloc(cs);
	r = cl ? pread_full(fd, cl, cs, 0) : -ENOMEM;
	if (r == 0) {
		h = (void *)cl;		/* bytes only */
		q2c_layout(&L, cs, size, get_be64(h->incompatible_features) &
					 QCOW2_INCOMPAT_EXTL2);
		if (L.rtc * cs > QCOW2_MAX_REFTABLE_BYTES)
			r = log_err_ret(-EFBIG, "qcow2: %s: too big to "
					"preallocate with %llu-byte clusters "
					"(%llu bytes)", path,
					(unsigned long long)cs,
					(unsigned long long)size);
	}
	if (r == 0) {
		if (get_be32(h->l1_size) != L.l1n ||
		    get_be64(h->refcount_table_offset) != cs)
			r = -EPROTO;	/* not the layout computed here */
	}
	if (r == 0) {
		put_be64(h->l1_table_offset, L.l1_off);
		put_be32(h->refcount_table_clusters, (uint32_t)L.rtc);
		r = ftruncate(fd, 0) < 0 ? -errno : 0;
	}
	if (r == 0)
		r = pwrite_full(fd, cl, cs, 0);
	if (r == 0)
		r = q2c_write_tables(fd, &L);
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
	r = q2c_preallocate(path, cs, o->size);
	if (r < 0)
		unlink(path);
	return r;
}
