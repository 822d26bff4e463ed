// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/parent.c: ->set_parent for differencing VHDX files: a new parent
 * locator (MS-VHDX 2.6.2.6) naming a moved, renamed or different parent.
 *
 * The locator records what vhdx_create_diff records: parent_linkage (the
 * parent's identity: a VHDX parent's DataWriteGuid, a VHD parent's unique
 * id; none: the zero GUID), relative_path (".\" and backslashes) and
 * absolute_win32_path (the absolute POSIX path with backslashes).  Other
 * keys (parent_linkage2, volume_path) named the old parent and are
 * dropped.  The file's DataWriteGuid is kept: the image's own sectors do
 * not change, and its children still link to it.
 *
 * The locator is a metadata item; the log (2.3) is how Hyper-V updates
 * metadata, and this driver never writes the log (see write.c).  The
 * whole metadata region is rewritten to new space instead, and the
 * region tables (whose entry and checksum both lie in their first 512
 * bytes) switched to it:
 *
 *   0. FileWriteGuid changes before the first write to the file (2.2.2):
 *      a new header (sequence + 1) into the non-current slot, fdatasync,
 *      then (sequence + 2) into the other one, fdatasync.  A torn header
 *      fails its CRC and the other one is current.
 *   1. the new metadata region (table and every item, the locator
 *      replaced) at the end of the file, 1 MiB aligned; fdatasync.
 *      Nothing refers to it yet.
 *   2. region table 1: its first sector (header, checksum and the
 *      metadata entry), fdatasync; 3. region table 2 the same.
 *
 * A crash before 2 leaves the old locator and unreferenced space at the
 * end; between 2 and 3 the tables differ, both valid: readers use the
 * first (ours, qemu), which names the new region; running the rebase
 * again makes them equal.  The old metadata region stays in the file,
 * unreferenced (1 MiB per rebase).  Should the metadata entry lie past a
 * table's first sector (more than 14 regions), the table is written
 * whole, which a torn write could damage: the other copy then serves.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

#define SECTOR 512u
#define META_CAP (16 * VHDX_MiB)	/* a metadata region we rewrite */

#define vhdx_err(err, img, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (img)->path, ##__VA_ARGS__)

static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* Step 0: a new FileWriteGuid in both header slots, current one last. */
static int headers_renew(struct img *img, struct vhdx *s)
{
	static const uint64_t slot[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
	struct vhdx_header h = s->hdr;
	uint8_t *buf = malloc(VHDX_HEADER_SIZE);
	int cur = s->hdr_slot, r;	/* as open() picked it */

	if (!buf)
		return -ENOMEM;
	r = vhdx_guid_random(&h.file_write_guid);
	for (int k = 0; k < 2 && r == 0; k++) {
		h.sequence = s->hdr.sequence + 1 + (uint64_t)k;
		vhdx_header_encode(&h, buf);
		r = img_write_sync(img, buf, VHDX_HEADER_SIZE,
				   slot[k == 0 ? 1 - cur : cur], "a header");
	}
	if (r == 0)
		s->hdr = h;
	free(buf);
	return r;
}

/* The new locator item into buf (cap bytes); *len its length. */
static int locator_encode(struct img *img, const struct img_create_parent *par,
			  uint8_t *buf, size_t cap, size_t *len)
{
	struct vhdx_kv kv[3] = { { "parent_linkage", NULL },
				 { "relative_path", NULL },
				 { "absolute_win32_path", NULL } };
	char sid[GUID_STR_LEN + 1];
	struct guid id;
	unsigned n = 0;
	int r = -ENOMEM;

	memset(&id, 0, sizeof(id));
	if (par->img->has_id)
		id = par->img->id;
	guid_to_str(&id, sid);	/* lower case, as create_diff */
	if (asprintf(&kv[0].val, "{%s}", sid) < 0) {
		kv[0].val = NULL;
		goto out;
	}
	n = 1;
	if (par->rel_path) {
		bool dotted = !strncmp(par->rel_path, "./", 2) ||
			      !strncmp(par->rel_path, "../", 3);

		kv[n].val = vhdx_path_to_windows(dotted ? "" : ".\\",
						 par->rel_path);
		if (!kv[n++].val)
			goto out;
	}
	if (par->abs_path) {
		kv[n].key = "absolute_win32_path";
		kv[n].val = vhdx_path_to_windows("", par->abs_path);
		if (!kv[n++].val)
			goto out;
	}
	if (n == 1) {
		r = vhdx_err(-EINVAL, img, "no relative or absolute path of "
			     "the parent");
		goto out;
	}
	r = vhdx_locator_encode(kv, n, buf, cap, len);
	if (r < 0)
		vhdx_err(r, img, "cannot encode the parent locator: %s",
			 strerror(-r));
out:
	for (unsigned i = 0; i < 3; i++)
		free(kv[i].val);
	return r;
}

/*
 * Step 1's bytes: the table of the current region (old, olen bytes, as
 * the open path decodes it) kept in order, the items packed from 64 KiB
 * on, the parent locator replaced.  *out (malloc'd) gets *out_len bytes,
 * a multiple of 1 MiB.
 */
static int meta_rebuild(struct img *img, struct vhdx *s, const uint8_t *old,
			const struct img_create_parent *par, uint8_t **out,
			uint64_t *out_len)
{
	struct vhdx_meta_table *mt = malloc(sizeof(*mt));
	uint8_t *loc = NULL, *m = NULL;
	size_t loc_len = 0;
	uint64_t need = VHDX_META_TABLE_SIZE, mlen;
	int r;

	loc = calloc(1, VHDX_META_ITEM_MAX);	/* reserved bytes stay zero */
	if (!mt || !loc) {
		r = -ENOMEM;
		goto out;
	}
	r = vhdx_meta_read(s, mt);	/* logged */
	if (r == 0 && !mt->parent_locator.present)
		r = vhdx_err(-EUCLEAN, img, "no parent locator in the "
			     "metadata");
	if (r == 0)
		r = locator_encode(img, par, loc, VHDX_META_ITEM_MAX, &loc_len);
	if (r < 0)
		goto out;
	for (unsigned i = 0; i < mt->count; i++) {
		struct vhdx_meta_entry *e = &mt->ent[i];

		if (guid_equal(&e->id, &vhdx_meta_parent_locator))
			e->len = (uint32_t)loc_len;
		need += round_up(e->len, 8);
	}
	mlen = MAX(round_up(need, VHDX_MiB), VHDX_MiB);
	m = calloc(1, (size_t)mlen);
	if (!m) {
		r = -ENOMEM;
		goto out;
	}
	/* the header and the entries' reserved bytes as they were */
	memcpy(m, old, sizeof(struct vhdx_meta_hdr_raw) +
	       mt->count * sizeof(struct vhdx_meta_entry_raw));
	need = VHDX_META_TABLE_SIZE;
	for (unsigned i = 0; i < mt->count; i++) {
		struct vhdx_meta_entry e = mt->ent[i];
		const uint8_t *src = old + e.off;

		if (guid_equal(&e.id, &vhdx_meta_parent_locator))
			src = loc;
		e.off = e.len ? (uint32_t)need : 0;
		memcpy(m + e.off, src, e.len);
		vhdx_meta_entry_encode(m, i, &e);
		/* keep the entry's reserved field */
		memcpy(m + sizeof(struct vhdx_meta_hdr_raw) +
		       i * sizeof(struct vhdx_meta_entry_raw) +
		       offsetof(struct vhdx_meta_entry_raw, reserved),
		       old + sizeof(struct vhdx_meta_hdr_raw) +
		       i * sizeof(struct vhdx_meta_entry_raw) +
		       offsetof(struct vhdx_meta_entry_raw, reserved), 4);
		need += round_up(e.len, 8);
	}
	*out = m;
	*out_len = mlen;
	m = NULL;
out:
	free(mt);
	free(loc);
	free(m);
	return r;
}

/*
 * Steps 2 and 3: region table copy at `at`, the table in use (s->rg)
 * with its metadata entry naming [meta_off, +meta_len), encoded into t.
 */
static int region_table_switch(struct img *img, const struct vhdx *s,
			       uint64_t at, uint64_t meta_off,
			       uint64_t meta_len, uint8_t *t)
{
	struct vhdx_regions *rg = malloc(sizeof(*rg));
	size_t first = SIZE_MAX, last = 0;
	uint8_t *old;
	int r;

	old = malloc(VHDX_REGION_SIZE);
	if (!old || !rg) {
		r = -ENOMEM;
		goto out;
	}
	r = pread_full(img->fd, old, VHDX_REGION_SIZE, at);
	if (r < 0) {
		vhdx_err(r, img, "cannot read the region table at %llu: %s",
			 (unsigned long long)at, strerror(-r));
		goto out;
	}
	*rg = s->rg;
	for (uint32_t i = 0; i < rg->count; i++)
		if (guid_equal(&rg->ent[i].guid, &vhdx_region_meta)) {
			rg->ent[i].off = meta_off;
			rg->ent[i].len = (uint32_t)meta_len;
		}
	vhdx_region_table_encode(rg, t);
	for (size_t i = 0; i < VHDX_REGION_SIZE; i++)
		if (t[i] != old[i]) {
			first = MIN(first, i);
			last = i;
		}
	if (first == SIZE_MAX)
		goto out;	/* already names it */
	if (last < SECTOR)	/* one sector: atomic */
		r = img_write_sync(img, t, SECTOR, at, "a region table");
	else
		r = img_write_sync(img, t, VHDX_REGION_SIZE, at,
				   "a region table");
out:
	free(rg);
	free(old);
	return r;
}

int vhdx_set_parent(struct img *img, const struct img_create_parent *par)
{
	struct vhdx *s = img->priv;
	uint8_t *old = NULL, *m = NULL, *t = NULL;
	uint64_t mlen = 0, moff;
	struct stat st;
	int r;

	if (!img->writable || !s->w)
		return vhdx_err(-EROFS, img, "not opened for writing");
	if (!s->p.has_parent)
		return vhdx_err(-EINVAL, img, "not a differencing disk: it has "
				"no parent to change");
	if (par->img->has_id && guid_equal(&par->img->id,
					   &s->hdr.data_write_guid))
		return vhdx_err(-ELOOP, img, "cannot name itself as its "
				"parent");
	if (s->rg.meta.len > META_CAP)
		return vhdx_err(-EFBIG, img, "metadata region too large to "
				"rewrite (%llu)",
				(unsigned long long)s->rg.meta.len);
	old = malloc((size_t)s->rg.meta.len);
	t = malloc(VHDX_REGION_SIZE);
	if (!old || !t) {
		r = -ENOMEM;
		goto out;
	}
	r = pread_full(img->fd, old, (size_t)s->rg.meta.len, s->rg.meta.off);
	if (r < 0) {
		vhdx_err(r, img, "cannot read the metadata region: %s",
			 strerror(-r));
		goto out;
	}
	r = meta_rebuild(img, s, old, par, &m, &mlen);
	if (r < 0)
		goto out;
	if (fstat(img->fd, &st) < 0) {
		r = vhdx_err(-errno, img, "cannot stat: %s", strerror(errno));
		goto out;
	}
	moff = round_up((uint64_t)st.st_size, VHDX_ALIGN);
	r = headers_renew(img, s);					/* 0 */
	if (r == 0)
		r = img_write_sync(img, m, (size_t)mlen, moff,		/* 1 */
				   "the new metadata region");
	if (r == 0)
		r = region_table_switch(img, s, VHDX_REGION1_OFF, moff, mlen,
					t);				/* 2 */
	if (r == 0)
		r = region_table_switch(img, s, VHDX_REGION2_OFF, moff, mlen,
					t);				/* 3 */
	if (r == 0)
		r = img_reopen(img, "parent");
out:
	free(old);
	free(m);
	free(t);
	return r;
}
