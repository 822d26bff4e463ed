// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/check.c: the structural check of a QCOW2 file (layerimg check).
 *
 * Works on the file alone, without the driver's open (which refuses what
 * this reports).  Every cluster's reference count is computed from what
 * points at it: the header cluster, the active L1 table and its L2 tables
 * and data clusters, the refcount table and blocks, the snapshot table and
 * each snapshot's L1/L2 tables, the persistent bitmap directory and
 * tables.  Then it is compared with the stored refcount, as qemu-img
 * check does (qemu block/qcow2-refcount.c is the model for what counts
 * as what):
 *   stored < computed   error (a cluster in use may be reused)
 *   stored > computed   leak (wasted space, harmless)
 * Also: L1/L2/refcount table entries aligned, inside the file, reserved
 * bits clear; the COPIED flag of the active tables equal to "refcount is
 * 1"; compressed clusters inside the file; extended L2 bitmaps valid.
 * --repair fixes leaks only, and only when no error was found: each leaked
 * cluster's stored refcount is lowered to what was computed.
 * Layout facts: qemu docs/interop/qcow2.txt.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
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

#define BME_OFFSET_MASK 0x00fffffffffffe00ull	/* bitmap table entry */
#define BME_RESERVED 0xff000000000001feull
#define CHECK_MAX_CLUSTERS (1ull << 27)	/* 1 GiB of counters at most */

struct checker {
	struct img *img;
	struct img_check *res;
	struct qcow2_header h;
	uint64_t cs;			/* cluster size */
	uint32_t cb;			/* cluster bits */
	uint64_t nclusters;		/* clusters of the file (last partial) */
	uint32_t *ref;			/* owned: computed refcounts */
	uint32_t *stored;		/* owned: stored refcounts (saturated) */
	uint64_t *rt;			/* owned: refcount table, native */
	uint64_t rt_entries;
	uint32_t rc_order;
	uint64_t rb_entries;		/* refcounts per refcount block */
	uint64_t rc_max;		/* largest storable refcount */
	bool rc_ok;			/* stored refcounts could be read */
	bool extl2;
	uint32_t entry_words;		/* 1, or 2 with extended L2 */
	uint64_t l2_entries;		/* entries per L2 table */
	bool data_file;			/* data clusters in another file */
	uint8_t *cl;			/* owned: one cluster buffer */
	uint64_t bm_dir_off, bm_dir_size;	/* bitmaps extension */
	uint32_t bm_count;
	bool has_bitmaps;
};

#define check_err(q, ...) \
	img_check_report((q)->res, true, "qcow2", (q)->img->path, __VA_ARGS__)
#define check_warn(q, ...) \
	img_check_report((q)->res, false, "qcow2", (q)->img->path, \
			 __VA_ARGS__)

/*
 * One more reference to every cluster of [off, off + len).  false (and
 * one error) if the range reaches a cluster past the end of the file.
 */
static bool check_count(struct checker *q, uint64_t off, uint64_t len,
		      const char *what, uint64_t idx)
{
	uint64_t first, last;

	if (!len)
		return true;
	first = off >> q->cb;
	if (!range_within(off, len, q->nclusters << q->cb)) {
		check_err(q, "%s %llu (%llu bytes at offset 0x%llx) lies past "
			"the end of the file (%llu bytes)", what,
			(unsigned long long)idx, (unsigned long long)len,
			(unsigned long long)off,
			(unsigned long long)q->img->file_size);
		return false;
	}
	last = (off + len - 1) >> q->cb;
	for (uint64_t c = first; c <= last; c++)
		if (q->ref[c] != UINT32_MAX)
			q->ref[c]++;
	return true;
}

/* Read len bytes of metadata at off (inside the file's clusters). */
static int check_read(struct checker *q, void *buf, size_t len, uint64_t off,
		    const char *what)
{
	int r = pread_zeropad(q->img->fd, buf, len, off);

	if (r < 0)
		return log_err_ret(r, "qcow2: %s: cannot read %s at offset "
				   "0x%llx (%s)", q->img->path, what,
				   (unsigned long long)off, strerror(-r));
	return 0;
}

static uint64_t check_stored(const struct checker *q, uint64_t off)
{
	return q->stored[off >> q->cb];
}

/* One L2 table: count its data clusters; COPIED against stored refs. */
static int check_l2(struct checker *q, uint64_t l2_off, uint64_t l1_idx,
		       bool active)
{
	const char *tbl = active ? "" : "snapshot ";
	int r = check_read(q, q->cl, (size_t)q->cs, l2_off, "an L2 table");

	if (r < 0)
		return r;
	for (uint64_t j = 0; j < q->l2_entries; j++) {
		const uint8_t *p = q->cl + j * 8 * q->entry_words;
		uint64_t e = get_be64(p), bm = q->extl2 ? get_be64(p + 8) : 0;
		uint64_t idx = l1_idx * q->l2_entries + j, off;
		struct qcow2_l2e d;

		qcow2_l2e_decode(q->cb, e, bm, &d);
		if (d.compressed) {
			uint64_t start;

			if (d.copied)
				check_err(q, "%sL2 entry %llu (L1 index %llu): "
					"compressed cluster has the COPIED "
					"flag (0x%016llx)", tbl,
					(unsigned long long)idx,
					(unsigned long long)l1_idx,
					(unsigned long long)e);
			if (bm)
				check_err(q, "%sL2 entry %llu: compressed "
					"cluster has a subcluster bitmap "
					"(0x%016llx)", tbl,
					(unsigned long long)idx,
					(unsigned long long)bm);
			start = d.coff & ~511ull;
			if (q->data_file)
				continue;
			if (check_count(q, start, d.csize + (d.coff & 511),
					"compressed cluster of guest cluster",
					idx) && active)
				q->res->allocated += d.csize;
			continue;
		}
		off = d.host;
		if (d.reserved)
			check_err(q, "%sL2 entry %llu (L1 index %llu): reserved "
				"bits set (0x%016llx)", tbl,
				(unsigned long long)idx,
				(unsigned long long)l1_idx,
				(unsigned long long)e);
		if (q->extl2 && (d.alloc & d.zeros))
			check_err(q, "%sL2 entry %llu: subclusters both "
				"allocated and zero (bitmap 0x%016llx)", tbl,
				(unsigned long long)idx,
				(unsigned long long)bm);
		if (q->data_file)	/* raw data file: offset 0 is data */
			continue;
		if (!off) {
			if (q->extl2 && d.alloc)
				check_err(q, "%sL2 entry %llu: unallocated "
					"cluster with allocated subclusters "
					"(bitmap 0x%016llx)", tbl,
					(unsigned long long)idx,
					(unsigned long long)bm);
			if (d.copied)
				check_warn(q, "%sL2 entry %llu: COPIED flag on "
					 "an unallocated cluster", tbl,
					 (unsigned long long)idx);
			continue;
		}
		if (off & (q->cs - 1)) {
			check_err(q, "%sL2 entry %llu (L1 index %llu): data "
				"cluster offset 0x%llx is not cluster "
				"aligned", tbl, (unsigned long long)idx,
				(unsigned long long)l1_idx,
				(unsigned long long)off);
			continue;
		}
		if (!check_count(q, off, q->cs, "data cluster of guest cluster",
			       idx))
			continue;
		if (!active)
			continue;
		q->res->allocated += q->cs;
		if (q->rc_ok && d.copied != (check_stored(q, off) == 1))
			check_err(q, "L2 entry %llu (L1 index %llu): COPIED flag "
				"%s but the data cluster at 0x%llx has "
				"refcount %llu", (unsigned long long)idx,
				(unsigned long long)l1_idx,
				d.copied ? "set" : "clear",
				(unsigned long long)off,
				(unsigned long long)check_stored(q, off));
	}
	return 0;
}

/* One L1 table (the active one, or a snapshot's). */
static int check_l1(struct checker *q, uint64_t l1_off, uint32_t l1_size,
		       bool active, uint32_t snap)
{
	char what[48];
	uint8_t *l1;
	int r = 0;

	if (active)
		snprintf(what, sizeof(what), "L1 table");
	else
		snprintf(what, sizeof(what), "L1 table of snapshot");
	if (!l1_size)
		return 0;
	if (l1_off & (q->cs - 1)) {
		check_err(q, "%s %u: offset 0x%llx is not cluster aligned",
			what, active ? 0 : snap, (unsigned long long)l1_off);
		return 0;
	}
	if ((uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES) {
		check_err(q, "%s %u: %u entries, over the 32 MiB limit", what,
			active ? 0 : snap, l1_size);
		return 0;
	}
	if (!check_count(q, l1_off, (uint64_t)l1_size * 8, what,
		       active ? 0 : snap))
		return 0;
	l1 = malloc((size_t)l1_size * 8);
	if (!l1)
		return -ENOMEM;
	r = check_read(q, l1, (size_t)l1_size * 8, l1_off, what);
	for (uint32_t i = 0; i < l1_size && r == 0; i++) {
		uint64_t e = get_be64(l1 + (size_t)i * 8), l2;
		struct qcow2_l1e d;

		qcow2_l1e_decode(e, &d);
		l2 = d.l2_off;
		if (d.reserved)
			check_err(q, "%s%s entry %u: reserved bits set "
				"(0x%016llx)", active ? "" : "snapshot ",
				"L1", i, (unsigned long long)e);
		if (!l2) {
			continue;
		}
		if (l2 & (q->cs - 1)) {
			check_err(q, "%sL1 entry %u: L2 table offset 0x%llx is "
				"not cluster aligned", active ? "" :
				"snapshot ", i, (unsigned long long)l2);
			continue;
		}
		if (!check_count(q, l2, q->cs, active ? "L2 table of L1 entry" :
			       "snapshot L2 table of L1 entry", i))
			continue;
		if (active && q->rc_ok &&
		    d.copied != (check_stored(q, l2) == 1))
			check_err(q, "L1 entry %u: COPIED flag %s but the L2 "
				"table at 0x%llx has refcount %llu", i,
				d.copied ? "set" : "clear",
				(unsigned long long)l2,
				(unsigned long long)check_stored(q, l2));
		r = check_l2(q, l2, i, active);
	}
	free(l1);
	return r;
}

/* The refcount table and blocks: read the stored refcounts. */
static int check_refcounts(struct checker *q)
{
	uint64_t off = q->h.refcount_table_offset;
	uint64_t len = (uint64_t)q->h.refcount_table_clusters << q->cb;
	uint8_t *buf;
	int r;

	q->rc_order = q->h.refcount_order;
	q->rb_entries = (q->cs * 8) >> q->rc_order;
	q->rc_max = q->rc_order == 6 ? UINT64_MAX :
		    (1ull << (1u << q->rc_order)) - 1;
	if (off & (q->cs - 1)) {
		check_err(q, "refcount table offset 0x%llx is not cluster "
			"aligned", (unsigned long long)off);
		return 0;
	}
	if (!len) {
		check_err(q, "refcount table has no clusters (%u)",
			q->h.refcount_table_clusters);
		return 0;
	}
	if (len > QCOW2_MAX_REFTABLE_BYTES)
		return log_err_ret(-EFBIG, "qcow2: %s: refcount table too "
				   "large to check (%llu bytes)", q->img->path,
				   (unsigned long long)len);
	if (!check_count(q, off, len, "refcount table", 0))
		return 0;
	buf = malloc((size_t)len);
	q->rt = malloc((size_t)len);
	if (!buf || !q->rt) {
		free(buf);
		return -ENOMEM;
	}
	r = check_read(q, buf, (size_t)len, off, "the refcount table");
	if (r < 0) {
		free(buf);
		return r;
	}
	q->rt_entries = len / 8;
	for (uint64_t i = 0; i < q->rt_entries; i++)
		q->rt[i] = get_be64(buf + i * 8);
	free(buf);

	for (uint64_t i = 0; i < q->rt_entries; i++) {
		uint64_t e = q->rt[i], b = e & QCOW2_RTE_OFFSET_MASK;
		uint64_t first = i * q->rb_entries;

		if (e & QCOW2_RTE_RESERVED)
			check_err(q, "refcount table entry %llu: reserved bits "
				"set (0x%016llx)", (unsigned long long)i,
				(unsigned long long)e);
		q->rt[i] = 0;
		if (!b)
			continue;
		if (b & (q->cs - 1)) {
			check_err(q, "refcount table entry %llu: refcount block "
				"offset 0x%llx is not cluster aligned",
				(unsigned long long)i, (unsigned long long)b);
			continue;
		}
		if (!check_count(q, b, q->cs, "refcount block", i))
			continue;
		q->rt[i] = b;
		if (first >= q->nclusters)
			continue;	/* counts clusters past the end only */
		r = check_read(q, q->cl, (size_t)q->cs, b, "a refcount block");
		if (r < 0)
			return r;
		for (uint64_t k = 0; k < q->rb_entries &&
				     first + k < q->nclusters; k++) {
			uint64_t v = qcow2_rc_get(q->cl, q->rc_order, k);

			q->stored[first + k] = v > UINT32_MAX ? UINT32_MAX :
					       (uint32_t)v;
		}
	}
	q->rc_ok = true;
	return 0;
}

/* Header extensions (first cluster): data file, bitmaps. */
static void check_extensions(struct checker *q, const uint8_t *cl, size_t end)
{
	size_t off = q->h.header_length;
	struct qcow2_ext e;
	int r;

	while ((r = qcow2_ext_decode(cl, off, end, &e)) > 0) {
		if (e.type == QCOW2_EXT_DATA_FILE)
			q->data_file = true;
		if (e.type == QCOW2_EXT_BITMAPS) {
			if (e.len < 24) {
				check_err(q, "bitmaps extension too short (%u)",
					  e.len);
			} else {
				q->bm_count = get_be32(e.data);
				q->bm_dir_size = get_be64(e.data + 8);
				q->bm_dir_off = get_be64(e.data + 16);
				q->has_bitmaps = true;
			}
		}
		off = e.next;
	}
	if (r == -EUCLEAN)
		check_err(q, "header extension 0x%08x at offset %zu runs "
			  "past the first cluster (length %u)", e.type, off,
			  e.len);
}

/* The persistent bitmaps: directory, bitmap tables, bitmap data. */
static int check_bitmaps(struct checker *q)
{
	uint8_t *dir;
	size_t pos = 0;
	int r;

	if (!q->has_bitmaps)
		return 0;
	if (!(q->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
		check_warn(q, "bitmaps extension without its autoclear bit: the "
			 "bitmaps are stale");
		return 0;
	}
	if (q->bm_dir_size > (64u << 20) || (q->bm_dir_off & (q->cs - 1))) {
		check_err(q, "bitmap directory: bad size or alignment (%llu "
			"bytes at 0x%llx)", (unsigned long long)q->bm_dir_size,
			(unsigned long long)q->bm_dir_off);
		return 0;
	}
	if (!check_count(q, q->bm_dir_off, q->bm_dir_size, "bitmap directory",
		       0))
		return 0;
	dir = malloc((size_t)q->bm_dir_size + 1);
	if (!dir)
		return -ENOMEM;
	r = check_read(q, dir, (size_t)q->bm_dir_size, q->bm_dir_off,
		     "the bitmap directory");
	for (uint32_t i = 0; i < q->bm_count && r == 0; i++) {
		uint64_t toff, need;
		uint32_t tsize, extra;
		uint16_t nsize;
		uint8_t *t;

		if (pos + 24 > q->bm_dir_size) {
			check_err(q, "bitmap directory: entry %u past its end",
				i);
			break;
		}
		toff = get_be64(dir + pos);
		tsize = get_be32(dir + pos + 8);
		nsize = get_be16(dir + pos + 18);
		extra = get_be32(dir + pos + 20);
		need = ((24ull + extra + nsize) + 7) & ~7ull;
		pos += need;
		if (toff & (q->cs - 1)) {
			check_err(q, "bitmap %u: table offset 0x%llx is not "
				"cluster aligned", i, (unsigned long long)toff);
			continue;
		}
		if ((uint64_t)tsize * 8 > (64u << 20) ||
		    !check_count(q, toff, (uint64_t)tsize * 8, "bitmap table",
			       i))
			continue;
		t = malloc((size_t)tsize * 8 + 1);
		if (!t) {
			r = -ENOMEM;
			break;
		}
		r = check_read(q, t, (size_t)tsize * 8, toff, "a bitmap table");
		for (uint32_t k = 0; k < tsize && r == 0; k++) {
			uint64_t e = get_be64(t + (size_t)k * 8);
			uint64_t d = e & BME_OFFSET_MASK;

			if (e & BME_RESERVED)
				check_err(q, "bitmap %u table entry %u: reserved "
					"bits set (0x%016llx)", i, k,
					(unsigned long long)e);
			else if (d && (d & (q->cs - 1)))
				check_err(q, "bitmap %u table entry %u: offset "
					"0x%llx is not cluster aligned", i, k,
					(unsigned long long)d);
			else if (d)
				check_count(q, d, q->cs, "bitmap data cluster",
					  k);
		}
		free(t);
	}
	free(dir);
	return r;
}

/* The snapshot table and each snapshot's tables. */
static int check_snapshots(struct checker *q)
{
	uint64_t off = q->h.snapshots_offset, pos = 0;
	uint8_t e[sizeof(struct qcow2_snapshot_raw)];
	int r = 0;

	if (!q->h.nb_snapshots)
		return 0;
	if (q->h.nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
		check_err(q, "too many snapshots (%u)", q->h.nb_snapshots);
		return 0;
	}
	if (off & (q->cs - 1)) {
		check_err(q, "snapshot table offset 0x%llx is not cluster "
			"aligned", (unsigned long long)off);
		return 0;
	}
	for (uint32_t i = 0; i < q->h.nb_snapshots; i++) {
		struct qcow2_snapshot_hdr sn;

		if (!range_within(off + pos, sizeof(e), q->img->file_size) ||
		    pos > QCOW2_MAX_SNAPSHOT_TABLE) {
			check_err(q, "snapshot %u: entry at 0x%llx lies past the "
				"end of the file", i,
				(unsigned long long)(off + pos));
			return 0;
		}
		r = check_read(q, e, sizeof(e), off + pos, "a snapshot entry");
		if (r < 0)
			return r;
		qcow2_snapshot_decode(e, &sn);
		if (sn.extra_len > QCOW2_MAX_SNAPSHOT_EXTRA) {
			check_err(q, "snapshot %u: extra data too large (%u)",
				  i, sn.extra_len);
			return 0;
		}
		pos += qcow2_snapshot_entry_len(&sn);
		r = check_l1(q, sn.l1_table_offset, sn.l1_size, false, i);
		if (r < 0)
			return r;
	}
	check_count(q, off, pos, "snapshot table", 0);
	return 0;
}

/* Compare stored and computed refcounts; fix leaks if asked and safe. */
static int check_compare(struct checker *q, bool repair)
{
	uint64_t leaks = 0;
	int r = 0;

	for (uint64_t c = 0; c < q->nclusters; c++) {
		uint64_t st = q->stored[c], cm = q->ref[c];

		if (cm > q->rc_max) {
			check_err(q, "cluster %llu (offset 0x%llx): %llu "
				"references, over the refcount limit %llu",
				(unsigned long long)c,
				(unsigned long long)(c << q->cb),
				(unsigned long long)cm,
				(unsigned long long)q->rc_max);
		} else if (st < cm) {
			check_err(q, "cluster %llu (offset 0x%llx): refcount %llu "
				"but %llu references", (unsigned long long)c,
				(unsigned long long)(c << q->cb),
				(unsigned long long)st, (unsigned long long)cm);
		} else if (st > cm) {
			log_warn("qcow2: %s: cluster %llu (offset 0x%llx): "
				 "leaked: refcount %llu but %llu references",
				 q->img->path, (unsigned long long)c,
				 (unsigned long long)(c << q->cb),
				 (unsigned long long)st, (unsigned long long)cm);
			leaks++;
		}
	}
	q->res->leaks += leaks;
	if (!repair || !leaks)
		return 0;
	if (q->res->errors) {
		log_warn("qcow2: %s: not repairing the leaks: the image has "
			 "errors (%llu)", q->img->path,
			 (unsigned long long)q->res->errors);
		return 0;
	}
	/* each refcount block holding a leak, rewritten with the counts */
	for (uint64_t i = 0; i < q->rt_entries && r == 0; i++) {
		uint64_t first = i * q->rb_entries, fixed = 0;

		if (!q->rt[i] || first >= q->nclusters)
			continue;
		r = check_read(q, q->cl, (size_t)q->cs, q->rt[i],
			     "a refcount block");
		for (uint64_t k = 0; r == 0 && k < q->rb_entries &&
				     first + k < q->nclusters; k++) {
			uint64_t c = first + k;

			if (q->stored[c] > q->ref[c] &&
			    qcow2_rc_get(q->cl, q->rc_order, k) == q->stored[c]) {
				qcow2_rc_set(q->cl, q->rc_order, k, q->ref[c]);
				fixed++;
			}
		}
		if (r == 0 && fixed) {
			r = pwrite_full(q->img->fd, q->cl, (size_t)q->cs,
					q->rt[i]);
			if (r < 0)
				log_err("qcow2: %s: cannot write the refcount "
					"block at 0x%llx (%s)", q->img->path,
					(unsigned long long)q->rt[i],
					strerror(-r));
			else
				q->res->repaired += fixed;
		}
	}
	if (r == 0 && fdatasync(q->img->fd) < 0)
		r = log_err_ret(-errno, "qcow2: %s: fdatasync: %s",
				q->img->path, strerror(errno));
	return r;
}

int qcow2_check(struct img *img, bool repair, struct img_check *res)
{
	struct checker q = { .img = img, .res = res };
	uint8_t hb[sizeof(struct qcow2_header_raw)] = { 0 };
	uint64_t unknown, need_l1, l2_cover;
	size_t hlen = (size_t)MIN(img->file_size, (uint64_t)sizeof(hb));
	struct qcow2_bad bad = { NULL, 0 };
	char *backing = NULL;
	size_t first;
	int r;

	r = pread_full(img->fd, hb, hlen, 0);
	if (r < 0)
		return log_err_ret(r, "qcow2: %s: cannot read the header (%s)",
				   img->path, strerror(-r));
	r = qcow2_header_decode(img->path, hb, hlen, &q.h);
	if (r == -EUCLEAN) {
		res->errors++;	/* logged by the decoder */
		return 0;
	}
	if (r < 0)
		return r == -EINVAL ? log_err_ret(r, "qcow2: %s: not a QCOW2 "
						  "v2/v3 file", img->path) : r;
	unknown = q.h.incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
	if (unknown)
		return log_err_ret(-ENOTSUP, "qcow2: %s: unknown incompatible "
				   "feature bits (0x%llx): cannot check",
				   img->path, (unsigned long long)unknown);
	q.cb = q.h.cluster_bits;
	q.cs = 1ull << q.cb;
	q.extl2 = q.h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
	q.entry_words = q.extl2 ? 2 : 1;
	q.l2_entries = q.cs / 8 / q.entry_words;
	q.nclusters = (img->file_size + q.cs - 1) >> q.cb;
	if (q.nclusters > CHECK_MAX_CLUSTERS)
		return log_err_ret(-EFBIG, "qcow2: %s: too many clusters to "
				   "check (%llu)", img->path,
				   (unsigned long long)q.nclusters);
	if (q.h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		check_err(&q, "the image is marked corrupt (incompatible "
			"feature bit 1)");
	if (q.h.incompatible_features & QCOW2_INCOMPAT_DIRTY)
		check_warn(&q, "the dirty bit is set (lazy refcounts): "
			 "refcounts may be out of date");
	if (q.extl2 && q.cb < 14)
		check_err(&q, "extended L2 entries with clusters under 16 KiB "
			"(cluster_bits %u)", q.cb);

	q.ref = calloc(q.nclusters + 1, sizeof(*q.ref));
	q.stored = calloc(q.nclusters + 1, sizeof(*q.stored));
	q.cl = malloc((size_t)q.cs);
	if (!q.ref || !q.stored || !q.cl) {
		r = -ENOMEM;
		goto out;
	}
	/* the header cluster: header, extensions, backing file name */
	first = (size_t)MIN(img->file_size, q.cs);
	r = check_read(&q, q.cl, first, 0, "the header cluster");
	if (r < 0)
		goto out;
	check_count(&q, 0, q.cs, "header cluster", 0);
	if (q.h.version >= 3)
		check_extensions(&q, q.cl, first);
	r = qcow2_backing_decode(q.cl, first, &q.h, 0, &backing, &bad);
	free(backing);
	if (r == -ENOMEM)
		goto out;
	if (r < 0)
		check_err(&q, "backing file name (%u bytes at %llu) is not "
			  "inside the first cluster: %s",
			  q.h.backing_file_size,
			  (unsigned long long)q.h.backing_file_offset,
			  bad.what);
	if (q.data_file)
		check_warn(&q, "external data file: its clusters are not "
			 "checked");

	/* the L1 table must cover the virtual size */
	l2_cover = q.l2_entries << q.cb;
	need_l1 = q.h.size / l2_cover + !!(q.h.size % l2_cover);
	if (q.h.l1_size < need_l1)
		check_err(&q, "L1 table has %u entries, the virtual size %llu "
			"needs %llu", q.h.l1_size,
			(unsigned long long)q.h.size,
			(unsigned long long)need_l1);

	r = check_refcounts(&q);
	if (r == 0)
		r = check_l1(&q, q.h.l1_table_offset, q.h.l1_size, true, 0);
	if (r == 0)
		r = check_snapshots(&q);
	if (r == 0)
		r = check_bitmaps(&q);
	if (r == 0 && q.rc_ok)
		r = check_compare(&q, repair);
out:
	free(q.ref);
	free(q.stored);
	free(q.rt);
	free(q.cl);
	return r;
}
