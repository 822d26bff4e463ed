// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/open.c: QCOW2 images, versions 2 and 3: probe, open, close,
 * parent, map_extent and read (the read side; the driver struct that adds
 * the write side is in driver.c).
 *
 * Facts are from qemu's docs/interop/qcow2.txt.  open() validates the
 * header, the header extensions (all inside the first cluster), the
 * incompatible feature bits, the backing file name, the L1 table and every
 * L2 table offset it holds, and that header, L1 and refcount tables do not
 * overlap.  L2 tables are loaded on demand through the shared, bounded L2
 * cache (cluster.c); host offsets found in them are checked against
 * the file size when they are mapped.  Compressed clusters (zlib or zstd)
 * are DATA runs without a host offset, inflated by ->read.  Snapshots are
 * listed (qcow2_snapshot_list) but only the active state is a disk.
 * On-disk structures are decoded by codec.c.  Writing and allocation
 * live in write.c and refcount.c, which call down into this file and never
 * the other way; an image opened writable may change under the read
 * path, which therefore loads L1/L2 entries atomically (see qcow2.h).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"

/*
 * The magic with any version but 1 (the qcow driver's) is ours: open
 * reads versions 2 and 3 and refuses the others with -ENOTSUP, so that a
 * QCOW2 file of a later version is never served as a raw disk.
 */
int qcow2_probe(const struct img_probe *p)
{
	if (p->head_len < 8 || memcmp(p->head, QCOW_MAGIC, 4) != 0)
		return 0;
	return get_be32(p->head + 4) != 1 ? 100 : 0;
}

/*
 * Backing formats as qemu names them, and our driver for each.  Android
 * sparse has no qemu name: qemu cannot read it, so an overlay over one
 * records no backing format (and qemu would probe it as raw).
 */
static const struct {
	const char *qemu, *ours;
} qcow2_formats[] = {
	{ "qcow2", "qcow2" }, { "raw", "raw" }, { "vpc", "vhd" },
	{ "vhdx", "vhdx" }, { "qcow", "qcow" },
};

static const char *qcow2_map_format(const char *qemu_name)
{
	for (size_t i = 0; i < ARRAY_SIZE(qcow2_formats); i++)
		if (!strcmp(qcow2_formats[i].qemu, qemu_name))
			return qcow2_formats[i].ours;
	return NULL;
}

const char *qcow2_format_qemu_name(const char *driver)
{
	for (size_t i = 0; driver && i < ARRAY_SIZE(qcow2_formats); i++)
		if (!strcmp(qcow2_formats[i].ours, driver))
			return qcow2_formats[i].qemu;
	return NULL;
}

/* A malloc'd NUL-terminated copy of a string field (stops at a NUL). */
static char *qcow2_strndup(const uint8_t *p, size_t n)
{
	return strndup((const char *)p, n);
}

/* Parse the header extensions in cl[start, end): the first cluster. */
static int qcow2_read_extensions(struct img *img, struct qcow2 *s,
				 const uint8_t *cl, size_t start, size_t end,
				 const uint8_t **ftable, size_t *ftable_len)
{
	struct qcow2_ext e;
	size_t off = start;
	int r;

	while ((r = qcow2_ext_decode(cl, off, end, &e)) > 0 ||
	       r == -EUCLEAN) {
		if (r < 0)
			return log_err_ret(-EUCLEAN, "qcow2: %s: header extension 0x%08x runs past the first cluster (length %u)",
					   img->path, e.type, e.len);
		switch (e.type) {
		case QCOW2_EXT_BACKING_FORMAT:
			free(s->backing_fmt_name);
			s->backing_fmt_name = qcow2_strndup(e.data, e.len);
			if (!s->backing_fmt_name)
				return -ENOMEM;
			s->backing_fmt = qcow2_map_format(s->backing_fmt_name);
			break;
		case QCOW2_EXT_FEATURE_TABLE:
			*ftable = e.data;
			*ftable_len = e.len;
			break;
		case QCOW2_EXT_DATA_FILE:
			free(s->data_name);
			s->data_name = qcow2_strndup(e.data, e.len);
			if (!s->data_name)
				return -ENOMEM;
			break;
		case QCOW2_EXT_CRYPTO:
			return log_err_ret(-ENOTSUP, "qcow2: %s: encrypted images are not supported (encryption header extension)",
					   img->path);
		case QCOW2_EXT_BITMAPS:	/* dirty bitmaps: not needed to read */
		default:		/* unknown: safe to ignore (spec) */
			break;
		}
		off = e.next;
	}
	return 0;
}

static int qcow2_check_features(struct img *img, struct qcow2 *s,
				const uint8_t *ftable, size_t ftable_len)
{
	const struct qcow2_header *h = &s->h;
	uint64_t unknown = h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN;

	if (unknown) {
		unsigned bit = (unsigned)__builtin_ctzll(unknown);
		char name[48];

		if (!qcow2_feature_name_find(ftable, ftable_len,
					     QCOW2_FEAT_INCOMPAT, (uint8_t)bit,
					     name, sizeof(name)))
			snprintf(name, sizeof(name), "unknown");
		return log_err_ret(-ENOTSUP, "qcow2: %s: unsupported incompatible feature bit %u \"%s\" (0x%llx)",
				   img->path, bit, name,
				   (unsigned long long)h->incompatible_features);
	}
	if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
		if (h->compression_type == 0)
			return log_err_ret(-EUCLEAN, "qcow2: %s: compression type bit set but compression_type is zlib (%u)",
					   img->path, h->compression_type);
	} else if (h->compression_type != 0) {
		return log_err_ret(-EUCLEAN, "qcow2: %s: compression_type set without its feature bit (%u)",
				   img->path, h->compression_type);
	}
	switch (h->compression_type) {
	case 0:
		s->comp = QCOW2_COMP_ZLIB;
		break;
	case 1:
		s->comp = QCOW2_COMP_ZSTD;
		break;
	default:
		return log_err_ret(-ENOTSUP, "qcow2: %s: unsupported compression type (%u)",
				   img->path, h->compression_type);
	}
	if (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) {
		/* 32 subclusters of at least 512 bytes (spec: >= 16 KiB) */
		if (s->cluster_bits < 14)
			return log_err_ret(-EUCLEAN, "qcow2: %s: extended L2 entries need 16 KiB clusters (cluster_bits %u)",
					   img->path, s->cluster_bits);
		s->extl2 = true;
	}
	return 0;
}

/* The backing file name: inside the first cluster, at most 1023 bytes. */
static int qcow2_read_backing(struct img *img, struct qcow2 *s,
			      const uint8_t *cl, size_t cl_len, size_t hdr_end)
{
	struct qcow2_bad bad = { NULL, 0 };
	int r;

	r = qcow2_backing_decode(cl, cl_len, &s->h, hdr_end, &s->backing,
				 &bad);
	if (r == -EUCLEAN)
		return log_err_ret(r, "qcow2: %s: %s (%llu)", img->path,
				   bad.what, (unsigned long long)bad.value);
	return r;
}

/* The external data file: a plain name in the image's own directory. */
static int qcow2_open_data_file(struct img *img, struct qcow2 *s)
{
	const char *slash = strrchr(img->path, '/');
	char *dir;
	struct stat st;
	int dfd, r;

	if (!s->data_name)
		return log_err_ret(-ENOTSUP, "qcow2: %s: external data file bit set but no data file name (0x%llx)",
				   img->path,
				   (unsigned long long)s->h.incompatible_features);
	if (!s->data_name[0] || strchr(s->data_name, '/') ||
	    !strcmp(s->data_name, ".") || !strcmp(s->data_name, ".."))
		return log_err_ret(-ENOTSUP, "qcow2: %s: external data file must be a plain name in the image's directory (\"%s\")",
				   img->path, s->data_name);
	if (slash)
		dir = strndup(img->path, (size_t)(slash - img->path) + 1);
	else
		dir = strdup(".");
	if (!dir)
		return -ENOMEM;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = -errno;
	free(dir);
	if (dfd < 0)
		return log_err_ret(r, "qcow2: %s: cannot open the image's directory (%s)",
				   img->path, strerror(-r));
	/* O_NOFOLLOW: a symlink could lead out of the directory */
	s->data_fd = openat(dfd, s->data_name,
			    O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	r = -errno;
	close(dfd);
	if (s->data_fd < 0)
		return log_err_ret(r, "qcow2: %s: cannot open external data file \"%s\" (%s)",
				   img->path, s->data_name, strerror(-r));
	if (fstat(s->data_fd, &st) < 0 || !S_ISREG(st.st_mode))
		return log_err_ret(-EINVAL, "qcow2: %s: external data file is not a regular file (\"%s\")",
				   img->path, s->data_name);
	s->data_size = (uint64_t)st.st_size;
	return 0;
}

/* L1 table, refcount table, snapshot table: offsets, caps, overlaps. */
static int qcow2_check_tables(struct img *img, struct qcow2 *s)
{
	const struct qcow2_header *h = &s->h;
	uint64_t cs = s->cluster_size, l1_bytes, rt_bytes, need, span;
	unsigned shift = s->cluster_bits + s->l2_bits;

	/* L1 entries needed for the virtual size (shift <= 39: no overflow) */
	span = 1ull << shift;
	need = (h->size >> shift) + ((h->size & (span - 1)) != 0);
	if (need > QCOW2_MAX_L1_BYTES / 8 || h->l1_size > QCOW2_MAX_L1_BYTES / 8)
		return log_err_ret(-EFBIG, "qcow2: %s: L1 table too big (%llu entries)",
				   img->path, (unsigned long long)MAX(need,
					(uint64_t)h->l1_size));
	if (h->l1_size < need)
		return log_err_ret(-EUCLEAN, "qcow2: %s: L1 table too small for the virtual size (%u entries)",
				   img->path, h->l1_size);
	s->l1_entries = (uint32_t)need;
	l1_bytes = (uint64_t)h->l1_size * 8;
	if (l1_bytes && (h->l1_table_offset & (cs - 1)))
		return log_err_ret(-EUCLEAN, "qcow2: %s: L1 table offset misaligned (%llu)",
				   img->path,
				   (unsigned long long)h->l1_table_offset);
	if (!range_within(h->l1_table_offset, (uint64_t)need * 8,
			  img->file_size))
		return log_err_ret(-EUCLEAN, "qcow2: %s: L1 table lies past the end of the file (offset %llu)",
				   img->path,
				   (unsigned long long)h->l1_table_offset);

	if (h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES / cs)
		return log_err_ret(-EFBIG, "qcow2: %s: refcount table too big (%u clusters)",
				   img->path, h->refcount_table_clusters);
	rt_bytes = (uint64_t)h->refcount_table_clusters * cs;
	if (h->refcount_table_offset & (cs - 1))
		return log_err_ret(-EUCLEAN, "qcow2: %s: refcount table offset misaligned (%llu)",
				   img->path,
				   (unsigned long long)h->refcount_table_offset);
	if (!range_within(h->refcount_table_offset, rt_bytes, UINT64_MAX))
		return log_err_ret(-EUCLEAN, "qcow2: %s: refcount table offset out of range (%llu)",
				   img->path,
				   (unsigned long long)h->refcount_table_offset);

	if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return log_err_ret(-EFBIG, "qcow2: %s: too many snapshots (%u)",
				   img->path, h->nb_snapshots);
	if (h->nb_snapshots &&
	    ((h->snapshots_offset & (cs - 1)) ||
	     h->snapshots_offset >= img->file_size))
		return log_err_ret(-EUCLEAN, "qcow2: %s: snapshot table offset invalid (%llu)",
				   img->path,
				   (unsigned long long)h->snapshots_offset);

	/* header cluster, L1 table and refcount table must not overlap */
	if (l1_bytes && ranges_overlap(0, cs, h->l1_table_offset, l1_bytes))
		return log_err_ret(-EUCLEAN, "qcow2: %s: L1 table overlaps the header (offset %llu)",
				   img->path,
				   (unsigned long long)h->l1_table_offset);
	if (rt_bytes && ranges_overlap(0, cs, h->refcount_table_offset,
				       rt_bytes))
		return log_err_ret(-EUCLEAN, "qcow2: %s: refcount table overlaps the header (offset %llu)",
				   img->path,
				   (unsigned long long)h->refcount_table_offset);
	if (l1_bytes && rt_bytes &&
	    ranges_overlap(h->l1_table_offset, l1_bytes,
			   h->refcount_table_offset, rt_bytes))
		return log_err_ret(-EUCLEAN, "qcow2: %s: L1 table overlaps the refcount table (offset %llu)",
				   img->path,
				   (unsigned long long)h->l1_table_offset);
	return 0;
}

/* Load the L1 entries covering the disk; check every L2 table offset. */
static int qcow2_load_l1(struct img *img, struct qcow2 *s)
{
	const struct qcow2_header *h = &s->h;
	uint64_t cs = s->cluster_size;
	uint64_t l1_bytes = (uint64_t)h->l1_size * 8;
	uint64_t rt_bytes = (uint64_t)h->refcount_table_clusters * cs;
	int r;

	if (!s->l1_entries)
		return 0;
	s->l1 = malloc((size_t)s->l1_entries * 8);
	if (!s->l1)
		return -ENOMEM;
	r = pread_full(img->fd, s->l1, (size_t)s->l1_entries * 8,
		       h->l1_table_offset);
	if (r < 0)
		return log_err_ret(r == -ENODATA ? -EUCLEAN : r, "qcow2: %s: cannot read the L1 table (%s)",
				   img->path, strerror(-r));
	for (uint32_t i = 0; i < s->l1_entries; i++) {
		struct qcow2_l1e e;
		uint64_t l2;

		qcow2_l1e_decode(be64toh(s->l1[i]), &e);
		s->l1[i] = l2 = e.l2_off;
		if (!l2)
			continue;
		if (!e.copied)
			s->l1_shared = true;	/* refcount != 1: snapshots */
		if (l2 & (cs - 1))
			return log_err_ret(-EUCLEAN, "qcow2: %s: L2 table offset misaligned (%llu)",
					   img->path, (unsigned long long)l2);
		if (!range_within(l2, cs, img->file_size))
			return log_err_ret(-EUCLEAN, "qcow2: %s: L2 table lies past the end of the file (%llu)",
					   img->path, (unsigned long long)l2);
		if (ranges_overlap(l2, cs, 0, cs) ||
		    ranges_overlap(l2, cs, h->l1_table_offset, l1_bytes) ||
		    (rt_bytes && ranges_overlap(l2, cs,
						h->refcount_table_offset,
						rt_bytes)))
			return log_err_ret(-EUCLEAN, "qcow2: %s: L2 table overlaps the header, L1 or refcount table (%llu)",
					   img->path, (unsigned long long)l2);
	}
	return 0;
}

static void qcow2_subtype(struct img *img, const struct qcow2 *s)
{
	char *p = img->subtype;
	size_t room = sizeof(img->subtype);
	const char *tags[3];
	unsigned n = 0;

	if (s->comp == QCOW2_COMP_ZSTD)
		tags[n++] = " zstd";
	if (s->extl2)
		tags[n++] = " extended_l2";
	if (s->data_fd >= 0)
		tags[n++] = " data_file";
	snprintf(p, room, "v%u", s->h.version);
	for (unsigned i = 0; i < n; i++) {
		size_t used = strlen(p);

		if (used + strlen(tags[i]) < room)
			memcpy(p + used, tags[i], strlen(tags[i]) + 1);
	}
}

static void qcow2_free(struct qcow2 *s)
{
	if (!s)
		return;
	if (s->owner)
		qcow2_l2_cache_drop(s->owner);
	if (s->data_fd >= 0)
		close(s->data_fd);
	free(s->l1);
	free(s->backing);
	free(s->backing_fmt_name);
	free(s->data_name);
	free(s);
}

int qcow2_open(struct img *img)
{
	uint8_t hbuf[sizeof(struct qcow2_header_raw)];
	const uint8_t *ftable = NULL;
	size_t hlen, cl_len, ext_start, ext_end, ftable_len = 0;
	uint8_t *cl = NULL;
	struct qcow2 *s;
	int r;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->data_fd = -1;
	hlen = (size_t)MIN(img->file_size, (uint64_t)sizeof(hbuf));
	r = pread_full(img->fd, hbuf, hlen, 0);
	if (r < 0) {
		log_err("qcow2: %s: cannot read the header (%s)", img->path,
			strerror(-r));
		goto fail;
	}
	r = qcow2_header_decode(img->path, hbuf, hlen, &s->h);
	if (r == -EINVAL)
		log_err("qcow2: %s: not a QCOW2 image (magic 0x%08x, version %u)",
			img->path, hlen >= 4 ? get_be32(hbuf) : 0,
			hlen >= 8 ? get_be32(hbuf + 4) : 0);
	if (r < 0)
		goto fail;
	s->cluster_bits = s->h.cluster_bits;
	s->cluster_size = 1ull << s->cluster_bits;

	/* the first cluster holds the header, extensions, backing name */
	cl_len = (size_t)MIN(img->file_size, s->cluster_size);
	if (cl_len < s->h.header_length) {
		r = log_err_ret(-EUCLEAN, "qcow2: %s: file too short for the header (%zu bytes)",
				img->path, cl_len);
		goto fail;
	}
	cl = malloc(cl_len);
	if (!cl) {
		r = -ENOMEM;
		goto fail;
	}
	r = pread_full(img->fd, cl, cl_len, 0);
	if (r < 0) {
		log_err("qcow2: %s: cannot read the first cluster (%s)",
			img->path, strerror(-r));
		goto fail;
	}
	ext_start = s->h.header_length;
	ext_end = cl_len;
	if (s->h.backing_file_offset && s->h.backing_file_offset < ext_end)
		ext_end = (size_t)s->h.backing_file_offset;
	if (ext_start <= ext_end) {
		/* version 2 images carry extensions too (backing format) */
		r = qcow2_read_extensions(img, s, cl, ext_start, ext_end,
					  &ftable, &ftable_len);
		if (r < 0)
			goto fail;
	}
	r = qcow2_check_features(img, s, ftable, ftable_len);
	if (r < 0)
		goto fail;
	r = qcow2_read_backing(img, s, cl, cl_len, s->h.header_length);
	if (r < 0)
		goto fail;
	free(cl);
	cl = NULL;

	s->entry_words = s->extl2 ? 2 : 1;
	s->l2_bits = s->cluster_bits - (s->extl2 ? 4 : 3);
	s->l2_words = (uint32_t)(s->cluster_size / 8);
	s->sc_bits = s->cluster_bits - 5;	/* 32 subclusters */
	s->data_size = img->file_size;
	if (s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
		r = qcow2_open_data_file(img, s);
		if (r < 0)
			goto fail;
	}
	r = qcow2_check_tables(img, s);
	if (r < 0)
		goto fail;
	r = qcow2_load_l1(img, s);
	if (r < 0)
		goto fail;
	s->owner = qcow2_owner_new();
	s->file_end = img->file_size;

	img->priv = s;
	img->size = s->h.size & ~511ull;	/* whole sectors, as qemu */
	img->sector_size = 512;
	img->phys_sector_size = 512;
	img->block_size = (uint32_t)s->cluster_size;
	qcow2_subtype(img, s);
	/* warnings only once the image is known to be usable */
	if (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
		log_warn("qcow2: %s: image is marked corrupt; reading it anyway (read-only)",
			 img->path);
	if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)
		DBG(FORMAT, "qcow2: %s: dirty bit set (refcounts not needed to read)",
		    img->path);
	if (s->backing && s->backing_fmt_name && !s->backing_fmt)
		log_warn("qcow2: %s: backing format is not one layerfs reads; probing the backing file instead (\"%s\")",
			 img->path, s->backing_fmt_name);
	return 0;
fail:
	free(cl);
	qcow2_free(s);
	return r;
}

void qcow2_close(struct img *img)
{
	struct qcow2 *s = img->priv;

	assert(!s || !s->w);	/* driver.c dropped the write state */
	qcow2_free(s);
	img->priv = NULL;
}

int qcow2_parent(struct img *img, struct img_parent *p)
{
	const struct qcow2 *s = img->priv;

	return qcow2_backing_describe(p, s->backing, s->backing_fmt);
}

/* One subcluster's state from the extended L2 bitmap halves. */
static enum qcow2_run_kind qcow2_sc_kind(uint32_t abits, uint32_t zbits,
				     unsigned sc)
{
	if ((abits >> sc) & 1)
		return QCOW2_RUN_DATA;
	return (zbits >> sc) & 1 ? QCOW2_RUN_ZERO : QCOW2_RUN_UNALLOC;
}

int qcow2_entry_classify(const struct qcow2 *s, uint64_t cl, uint64_t entry,
			 uint64_t bitmap, uint64_t in_cl, struct qcow2_run *run,
			 struct qcow2_bad *bad)
{
	uint64_t cs = s->cluster_size, host, guest = cl << s->cluster_bits;
	bool alloc;

	if (entry & QCOW2_L2E_COMPRESSED) {
		/* compressed: one whole cluster, no subclusters (spec) */
		uint64_t coff, end;
		size_t csize;

		if (s->data_fd >= 0) {
			bad->what = "compressed cluster in an image with an external data file";
			bad->value = guest;
			return -EUCLEAN;
		}
		qcow2_comp_decode(s->cluster_bits, entry, &coff, &csize);
		if (coff >= s->data_size || ADD_OVERFLOW(coff, csize, &end) ||
		    end > ((s->data_size + 511) & ~511ull)) {
			bad->what = "compressed cluster lies past the end of the file";
			bad->value = coff;
			return -EUCLEAN;
		}
		run->kind = QCOW2_RUN_COMP;
		run->len = cs - in_cl;
		return 0;
	}
	host = entry & QCOW2_L2E_OFFSET_MASK;
	/* offset 0 is unallocated, except in an external data file, where
	 * COPIED marks guest cluster 0 stored at host 0 */
	alloc = host || (s->data_fd >= 0 && (entry & QCOW2_L2E_COPIED));
	if (!s->extl2) {
		if (entry & QCOW2_L2E_ZERO) {
			if (s->h.version < 3) {
				bad->what = "zero cluster in a version 2 image";
				bad->value = guest;
				return -EUCLEAN;
			}
			run->kind = QCOW2_RUN_ZERO;	/* zeros, not the backing */
		} else {
			run->kind = alloc ? QCOW2_RUN_DATA : QCOW2_RUN_UNALLOC;
		}
		run->len = cs - in_cl;
	} else {
		uint32_t abits = (uint32_t)bitmap, zbits = (uint32_t)(bitmap >> 32);
		unsigned sc = (unsigned)(in_cl >> s->sc_bits), k;

		if (!alloc && abits) {
			bad->what = "allocated subclusters in an unallocated cluster";
			bad->value = guest;
			return -EUCLEAN;
		}
		if (abits & zbits) {
			bad->what = "subcluster both allocated and zero";
			bad->value = guest;
			return -EUCLEAN;
		}
		/* spec, extended L2: allocated -> data, zero bit -> zeros,
		 * neither -> the backing file */
		run->kind = qcow2_sc_kind(abits, zbits, sc);
		for (k = sc + 1; k < QCOW2_SUBCLUSTERS; k++)
			if (qcow2_sc_kind(abits, zbits, k) != run->kind)
				break;
		run->len = ((uint64_t)k << s->sc_bits) - in_cl;
	}
	if (run->kind != QCOW2_RUN_DATA)
		return 0;
	if (host & (cs - 1)) {
		bad->what = "data cluster offset misaligned";
		bad->value = host;
		return -EUCLEAN;
	}
	if (s->data_fd >= 0 && host != guest) {
		bad->what = "external data file offset differs from the guest offset";
		bad->value = host;
		return -EUCLEAN;
	}
	run->host = host + in_cl;
	return 0;
}

int qcow2_map_extent(struct img *img, uint64_t off, uint64_t len,
		      struct img_extent *ext)
{
	const struct qcow2 *s = img->priv;
	unsigned cb = s->cluster_bits, shift = cb + s->l2_bits;
	uint64_t l1i = off >> shift, end = off + len, l2_end, pos, total = 0;
	uint64_t cmask = s->cluster_size - 1;
	struct qcow2_run first = { QCOW2_RUN_UNALLOC, 0, 0 };
	struct qcow2_bad bad = { NULL, 0 };
	struct qcow2_l2_ref ref;
	uint64_t l2off = qcow2_l1_get(s, l1i);
	int r = 0;

	if (!l2off) {
		/* no L2 table: unallocated, and so are the next empty ones */
		uint64_t cover = (l1i + 1) << shift;

		while (cover < end && l1i + 1 < s->l1_entries &&
		       !qcow2_l1_get(s, l1i + 1)) {
			l1i++;
			cover += 1ull << shift;
		}
		ext->type = IMG_EXT_UNALLOC;
		ext->len = MIN(end, cover) - off;
		return 0;
	}
	r = qcow2_l2_get_gen(s->owner, l1i, s->l2_words, img->fd, l2off,
			     "qcow2", img->path, &s->l2_gen, &ref);
	if (r < 0)
		return r;
	l2_end = (l1i + 1) << shift;
	end = MIN(end, l2_end);
	for (pos = off; pos < end;) {
		uint64_t idx = (pos >> cb) & ((1ull << s->l2_bits) - 1);
		uint64_t in_cl = pos & cmask, step, lim, e, b;
		struct qcow2_run run = { QCOW2_RUN_UNALLOC, 0, 0 };

		qcow2_entry_load(s, ref.table, idx, &e, &b);
		r = qcow2_entry_classify(s, pos >> cb, e, b, in_cl, &run, &bad);
		if (r < 0)
			break;
		if (total && (run.kind != first.kind ||
			      (run.kind == QCOW2_RUN_DATA &&
			       run.host != first.host + total)))
			break;
		step = MIN(run.len, end - pos);
		if (run.kind == QCOW2_RUN_DATA) {
			/* after the entry: a writer grows file_end before it
			 * publishes an entry (release/acquire) */
			lim = s->data_fd >= 0 ? s->data_size :
				__atomic_load_n(&s->file_end, __ATOMIC_ACQUIRE);
			if (!range_within(run.host, step, lim)) {
				bad.what = "data cluster lies past the end of the file";
				bad.value = run.host;
				r = -EUCLEAN;
				break;
			}
		}
		if (!total)
			first = run;
		total += step;
		pos += step;
		if (in_cl + run.len < s->cluster_size)
			break;	/* the state changes inside this cluster */
	}
	qcow2_l2_put(&ref);
	if (!total) {
		/* the problem is at off itself: report it */
		return log_err_ret(r, "qcow2: %s: %s (%llu)", img->path,
				   bad.what, (unsigned long long)bad.value);
	}
	ext->len = total;
	switch (first.kind) {
	case QCOW2_RUN_UNALLOC:
		ext->type = IMG_EXT_UNALLOC;	/* spec: read the backing file */
		break;
	case QCOW2_RUN_ZERO:
		ext->type = IMG_EXT_ZERO;	/* spec: zeros, not the backing */
		break;
	case QCOW2_RUN_DATA:
		ext->type = IMG_EXT_DATA;
		ext->host_off = first.host;
		ext->fd = s->data_fd >= 0 ? s->data_fd : img->fd;
		break;
	case QCOW2_RUN_COMP:
		ext->type = IMG_EXT_DATA;	/* inflated by ->read */
		ext->host_off = IMG_HOST_NONE;
		break;
	}
	return 0;
}

/*
 * A writer replaced the compressed cluster the caller mapped (COW or
 * zero): read what the entry says now, [off, off + n) inside one cluster.
 */
static int qcow2_read_replaced(struct img *img, uint64_t entry,
			       uint64_t bitmap, uint8_t *p, size_t n,
			       uint64_t off)
{
	const struct qcow2 *s = img->priv;
	uint64_t cmask = s->cluster_size - 1;
	struct qcow2_bad bad = { NULL, 0 };

	while (n) {
		struct qcow2_run run = { QCOW2_RUN_UNALLOC, 0, 0 };
		size_t step;
		int r;

		r = qcow2_entry_classify(s, off >> s->cluster_bits, entry, bitmap,
				   off & cmask, &run, &bad);
		if (r < 0)
			return log_err_ret(r, "qcow2: %s: %s (%llu)", img->path,
					   bad.what,
					   (unsigned long long)bad.value);
		step = (size_t)MIN((uint64_t)n, run.len);
		if (run.kind == QCOW2_RUN_ZERO) {
			memset(p, 0, step);
		} else if (run.kind == QCOW2_RUN_DATA) {
			r = pread_full(img->fd, p, step, run.host);
			if (r < 0)
				return log_err_ret(r == -ENODATA ? -EUCLEAN : r, "qcow2: %s: cannot read cluster at %llu (%s)",
						   img->path,
						   (unsigned long long)run.host,
						   strerror(-r));
		} else {
			return log_err_ret(-EIO, "qcow2: %s: read of a cluster that is not compressed (%llu)",
					   img->path, (unsigned long long)off);
		}
		p += step;
		n -= step;
		off += step;
	}
	return 0;
}

/* Compressed runs only: inflate cluster by cluster. */
int qcow2_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct qcow2 *s = img->priv;
	unsigned cb = s->cluster_bits, shift = cb + s->l2_bits;
	struct qcow2_l2_ref ref = { NULL, NULL };
	uint64_t ref_l1i = UINT64_MAX;
	uint8_t *p = buf;
	int r = 0;

	while (n) {
		uint64_t cl = off >> cb, l1i = off >> shift, in_cl, entry, bitmap;
		size_t chunk;
		struct qcow2_zreq z;

		if (l1i >= s->l1_entries || !qcow2_l1_get(s, l1i)) {
			r = log_err_ret(-EIO, "qcow2: %s: read of a cluster that is not compressed (%llu)",
					img->path, (unsigned long long)off);
			break;
		}
		if (l1i != ref_l1i) {
			qcow2_l2_put(&ref);
			r = qcow2_l2_get_gen(s->owner, l1i, s->l2_words,
					     img->fd, qcow2_l1_get(s, l1i),
					     "qcow2", img->path, &s->l2_gen,
					     &ref);
			if (r < 0)
				break;
			ref_l1i = l1i;
		}
		qcow2_entry_load(s, ref.table, cl & ((1ull << s->l2_bits) - 1),
				 &entry, &bitmap);
		in_cl = off & (s->cluster_size - 1);
		chunk = (size_t)MIN((uint64_t)n, s->cluster_size - in_cl);
		if (!(entry & QCOW2_L2E_COMPRESSED)) {
			if (!s->w) {
				r = log_err_ret(-EIO, "qcow2: %s: read of a cluster that is not compressed (%llu)",
						img->path,
						(unsigned long long)off);
				break;
			}
			r = qcow2_read_replaced(img, entry, bitmap, p, chunk,
						off);
			if (r < 0)
				break;
			goto next;
		}
		z = (struct qcow2_zreq){
			.drv = "qcow2", .path = img->path, .fd = img->fd,
			.file_size = img->file_size, .owner = s->owner,
			.key = entry, .cluster_size = (size_t)s->cluster_size,
			.type = s->comp,
		};
		qcow2_comp_decode(s->cluster_bits, entry, &z.coff, &z.csize);
		r = qcow2_cluster_read(&z, p, in_cl, chunk);
		if (r < 0)
			break;
next:
		p += chunk;
		n -= chunk;
		off += chunk;
	}
	qcow2_l2_put(&ref);
	return r;
}

int qcow2_snapshot_list(struct img *img, struct qcow2_snapshot **out,
			size_t *n)
{
	const struct qcow2 *s;
	struct qcow2_snapshot *list = NULL;
	uint64_t pos, start;
	uint32_t count;
	int r = 0;

	/* a qcow2 image is one whose map_extent is this file's (the driver
	 * struct is driver.c's, above the read side) */
	if (!img || !img->drv || img->drv->map_extent != qcow2_map_extent ||
	    !img->priv)
		return -EINVAL;
	s = img->priv;
	count = s->h.nb_snapshots;
	start = pos = s->h.snapshots_offset;
	if (count) {
		list = calloc(count, sizeof(*list));
		if (!list)
			return -ENOMEM;
	}
	for (uint32_t i = 0; i < count; i++) {
		uint8_t raw[sizeof(struct qcow2_snapshot_raw)];
		struct qcow2_snapshot *sn = &list[i];
		uint8_t extra[QCOW2_MAX_SNAPSHOT_EXTRA];
		struct qcow2_snapshot_hdr e;
		uint64_t need, at = pos;

		if (!range_within(pos, sizeof(raw), img->file_size)) {
			r = log_err_ret(-EUCLEAN, "qcow2: %s: snapshot table lies past the end of the file (%llu)",
					img->path, (unsigned long long)pos);
			goto fail;
		}
		r = pread_full(img->fd, raw, sizeof(raw), pos);
		if (r < 0)
			goto io_fail;
		qcow2_snapshot_decode(raw, &e);
		if (e.extra_len > sizeof(extra)) {
			r = log_err_ret(-EFBIG, "qcow2: %s: snapshot extra data too big (%u)",
					img->path, e.extra_len);
			goto fail;
		}
		need = sizeof(raw) + (uint64_t)e.extra_len + e.id_len +
		       e.name_len;
		/* the entry, not its padding to 8: qemu does not write the
		 * padding after the last entry, the file may end before it */
		if (!range_within(pos, need, img->file_size) ||
		    pos + need - start > QCOW2_MAX_SNAPSHOT_TABLE) {
			r = log_err_ret(-EUCLEAN, "qcow2: %s: snapshot table entry out of bounds (%llu)",
					img->path, (unsigned long long)pos);
			goto fail;
		}
		pos += sizeof(raw);
		r = pread_full(img->fd, extra, e.extra_len, pos);
		if (r < 0)
			goto io_fail;
		qcow2_snapshot_extra_decode(extra, e.extra_len, &e);
		pos += e.extra_len;
		sn->id = malloc((size_t)e.id_len + 1);
		sn->name = malloc((size_t)e.name_len + 1);
		if (!sn->id || !sn->name) {
			r = -ENOMEM;
			goto fail;
		}
		r = pread_full(img->fd, sn->id, e.id_len, pos);
		if (r == 0)
			r = pread_full(img->fd, sn->name, e.name_len,
				       pos + e.id_len);
		if (r < 0)
			goto io_fail;
		sn->id[e.id_len] = '\0';
		sn->name[e.name_len] = '\0';
		pos = at + qcow2_snapshot_entry_len(&e);
		sn->l1_table_offset = e.l1_table_offset;
		sn->l1_size = e.l1_size;
		sn->date_sec = e.date_sec;
		sn->date_nsec = e.date_nsec;
		sn->vm_clock_nsec = e.vm_clock_nsec;
		sn->vm_state_size = e.vm_state_size;
		sn->disk_size = e.disk_size;
	}
	*out = list;
	*n = count;
	return 0;
io_fail:
	log_err("qcow2: %s: cannot read the snapshot table (%s)", img->path,
		strerror(-r));
	if (r == -ENODATA)
		r = -EUCLEAN;
fail:
	qcow2_snapshot_list_free(list, count);
	return r;
}

void qcow2_snapshot_list_free(struct qcow2_snapshot *list, size_t n)
{
	if (!list)
		return;
	for (size_t i = 0; i < n; i++) {
		free(list[i].id);
		free(list[i].name);
	}
	free(list);
}
