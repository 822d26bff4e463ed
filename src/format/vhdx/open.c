// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/open.c: Hyper-V VHDX images (MS-VHDX v1.0): fixed, dynamic and
 * differencing; the read side's hooks (driver.c names them).
 *
 * open() validates the whole file once: the current header, the region
 * table, the metadata items, the BAT and the sector bitmaps of partially
 * present blocks, replaying a dirty log in memory first (log.c; the file
 * is never written).  After that map_extent() is a table lookup.  Writing
 * a top image: write.c; new files: create.c.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, (path) ? (path) : "-", ##__VA_ARGS__)

/* ---- open ---- */

int vhdx_probe(const struct img_probe *p)
{
	if (p->head_len >= 8 && !memcmp(p->head, "vhdxfile", 8))
		return 100;
	return 0;
}

static void vhdx_free(struct vhdx *s)
{
	if (!s)
		return;
	vhdx_bat_free(s);
	vhdx_overlay_free(&s->log);
	vhdx_locator_clear(&s->loc);
	free(s);
}

int vhdx_headers_read(struct vhdx *s, struct vhdx_header_choice *diag)
{
	struct vhdx_header_choice c;
	uint8_t *buf;
	int r;

	buf = malloc(2 * VHDX_HEADER_SIZE);
	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, buf, VHDX_HEADER_SIZE, VHDX_HEADER1_OFF);
	if (r == 0)
		r = vhdx_file_read(s, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE,
				   VHDX_HEADER2_OFF);
	if (r == 0) {
		vhdx_headers_choose(buf, buf + VHDX_HEADER_SIZE, &c);
		if (diag)
			*diag = c;
		if (diag && c.cur < 0)
			r = -EUCLEAN;
		else if (!diag)	/* the same choice, with its message */
			r = vhdx_headers_pick(s->path, buf,
					      buf + VHDX_HEADER_SIZE, &s->hdr);
	}
	free(buf);
	if (r < 0)
		return r;
	s->hdr = c.h[c.cur];
	s->hdr_slot = c.cur;
	if (diag)
		return 0;	/* the checker judges the rest itself */
	r = vhdx_header_check(s->path, &s->hdr);
	if (r < 0)
		return r;
	if (s->hdr.log_length &&
	    !range_within(s->hdr.log_offset, s->hdr.log_length, s->file_size))
		return vhdx_err(-EUCLEAN, s->path,
				"log lies past the end of the file (%llu)",
				(unsigned long long)s->hdr.log_offset);
	return 0;
}

static int vhdx_check_region(const struct vhdx *s, const char *name,
			     const struct vhdx_region *rg)
{
	if (!range_within(rg->off, rg->len, s->eff_size))
		return vhdx_err(-EUCLEAN, s->path,
				"%s region lies past the end of the file (%llu)",
				name, (unsigned long long)rg->off);
	if (s->hdr.log_length && ranges_overlap(rg->off, rg->len,
						s->hdr.log_offset,
						s->hdr.log_length))
		return vhdx_err(-EUCLEAN, s->path,
				"%s region overlaps the log (%llu)", name,
				(unsigned long long)rg->off);
	return 0;
}

int vhdx_regions_read(struct vhdx *s, struct vhdx_region_choice *diag)
{
	uint8_t *buf = malloc(2 * VHDX_REGION_SIZE);
	uint8_t *t[2] = { buf, buf + VHDX_REGION_SIZE };
	struct vhdx_region_choice c;
	int r;

	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, t[0], VHDX_REGION_SIZE, VHDX_REGION1_OFF);
	if (r == 0)
		r = vhdx_file_read(s, t[1], VHDX_REGION_SIZE, VHDX_REGION2_OFF);
	if (r < 0)
		goto out;
	vhdx_region_tables_choose(t[0], t[1], &c);
	if (diag)
		*diag = c;
	if (c.use < 0 && diag) {
		r = -EUCLEAN;	/* the checker reports each copy */
		goto out;
	}
	if (c.use == 1 && !diag)
		log_warn("vhdx: %s: first region table damaged, using the "
			 "second (%llu)", s->path,
			 (unsigned long long)VHDX_REGION2_OFF);
	/* both damaged: the first one's message */
	r = vhdx_region_table_decode(s->path, t[c.use < 0 ? 0 : c.use], false,
				     &s->rg);
	if (r == -EINVAL)
		r = -EUCLEAN;	/* a VHDX file, just a broken one */
	if (r < 0 || diag)
		goto out;	/* the checker places the regions itself */
	r = vhdx_check_region(s, "BAT", &s->rg.bat);
	if (r == 0)
		r = vhdx_check_region(s, "metadata", &s->rg.meta);
out:
	free(buf);
	return r;
}

int vhdx_meta_item_read(const struct vhdx *s, const struct vhdx_meta_item *it,
			uint8_t **out)
{
	uint8_t *buf = malloc(it->len ? it->len : 1);
	int r;

	if (!buf)
		return -ENOMEM;
	r = vhdx_file_read(s, buf, it->len, s->rg.meta.off + it->off);
	if (r < 0) {
		free(buf);
		return r;
	}
	*out = buf;
	return 0;
}

int vhdx_meta_read(struct vhdx *s, struct vhdx_meta_table *mt)
{
	uint8_t *table = malloc(VHDX_META_TABLE_SIZE);
	int r;

	if (!table)
		return -ENOMEM;
	r = vhdx_file_read(s, table, VHDX_META_TABLE_SIZE, s->rg.meta.off);
	if (r == 0)
		r = vhdx_meta_table_decode(s->path, table, s->rg.meta.len, mt);
	free(table);
	return r;
}

int vhdx_params_read(struct vhdx *s, const struct vhdx_meta_table *mt)
{
	uint8_t *fp = NULL, *ds = NULL, *ls = NULL, *ps = NULL;
	int r;

	r = vhdx_meta_item_read(s, &mt->file_params, &fp);
	if (r == 0)
		r = vhdx_meta_item_read(s, &mt->disk_size, &ds);
	if (r == 0)
		r = vhdx_meta_item_read(s, &mt->logical_sector, &ls);
	if (r == 0)
		r = vhdx_meta_item_read(s, &mt->physical_sector, &ps);
	if (r == 0)
		r = vhdx_params_decode(s->path, fp, ds, ls, ps, &s->p);
	free(fp);
	free(ds);
	free(ls);
	free(ps);
	return r;
}

int vhdx_locator_read(struct vhdx *s, const struct vhdx_meta_table *mt)
{
	uint8_t *loc = NULL;
	int r;

	r = vhdx_meta_item_read(s, &mt->parent_locator, &loc);
	if (r == 0)
		r = vhdx_locator_decode(s->path, loc, mt->parent_locator.len,
					&s->loc);
	free(loc);
	return r;
}

static int vhdx_read_metadata(struct vhdx *s)
{
	struct vhdx_meta_table *mt = malloc(sizeof(*mt));
	int r;

	if (!mt)
		return -ENOMEM;
	r = vhdx_meta_read(s, mt);
	if (r == 0)
		r = vhdx_params_read(s, mt);
	if (r == 0 && s->p.has_parent && !mt->parent_locator.present)
		r = vhdx_err(-EUCLEAN, s->path,
			     "differencing file without a parent locator "
			     "(%u)", 0);
	if (r == 0 && s->p.has_parent)
		r = vhdx_locator_read(s, mt);
	free(mt);
	return r;
}

int vhdx_open(struct img *img)
{
	struct vhdx *s;
	char sig[8];
	int r;

	if (img->file_size < sizeof(sig) ||
	    pread_full(img->fd, sig, sizeof(sig), VHDX_FILE_ID_OFF) < 0 ||
	    memcmp(sig, "vhdxfile", 8) != 0)
		return vhdx_err(-EINVAL, img->path, "not a VHDX file (%s)",
				"no \"vhdxfile\" signature");
	if (img->file_size < VHDX_HEADER_SECTION)
		return vhdx_err(-EUCLEAN, img->path,
				"file is shorter than the header section (%llu)",
				(unsigned long long)img->file_size);
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->path = img->path;
	s->fd = img->fd;
	s->file_size = img->file_size;
	s->eff_size = img->file_size;
	r = vhdx_headers_read(s, NULL);
	if (r == 0 && !guid_is_zero(&s->hdr.log_guid))
		r = vhdx_log_replay(s);
	if (r == 0)
		r = vhdx_regions_read(s, NULL);
	if (r == 0)
		r = vhdx_read_metadata(s);
	if (r == 0)
		r = vhdx_bat_geometry(s);
	if (r == 0)
		r = vhdx_bat_load(s);
	if (r < 0) {
		vhdx_free(s);
		return r;
	}
	img->priv = s;
	img->size = s->p.disk_size;
	img->sector_size = s->p.logical_sector;
	img->phys_sector_size = s->p.physical_sector;
	img->block_size = s->p.block_size;
	img->has_id = true;
	img->id = s->hdr.data_write_guid;
	strcpy(img->subtype, s->p.has_parent ? "differencing" :
			     s->p.leave_allocated ? "fixed" : "dynamic");
	return 0;
}

void vhdx_close(struct img *img)
{
	vhdx_free(img->priv);
	img->priv = NULL;
}

int vhdx_parent(struct img *img, struct img_parent *p)
{
	const struct vhdx *s = img->priv;
	struct img_parent out;
	int r = 0;

	if (!s->p.has_parent)
		return 0;
	memset(&out, 0, sizeof(out));
	/* A zero parent_linkage names nothing: what create_diff writes over
	 * a parent without an identity (raw, qcow2); not checked. */
	out.id_kind = guid_is_zero(&s->loc.linkage) ? IMG_ID_NONE :
		      IMG_ID_VHDX_LINKAGE;
	out.id = s->loc.linkage;
	out.has_id2 = s->loc.has_linkage2;
	out.id2 = s->loc.linkage2;
	/* MS-VHDX 2.6.2.6.2: relative_path first; then the absolute forms. */
	if (s->loc.relative_path)
		r = img_parent_add_ref(&out, IMG_REF_RELATIVE, "relative_path",
				       s->loc.relative_path);
	if (r == 0 && s->loc.absolute_win32_path)
		r = img_parent_add_ref(&out, IMG_REF_ABSOLUTE,
				       "absolute_win32_path",
				       s->loc.absolute_win32_path);
	if (r == 0 && s->loc.volume_path)
		r = img_parent_add_ref(&out, IMG_REF_ABSOLUTE, "volume_path",
				       s->loc.volume_path);
	if (r < 0) {
		img_parent_clear(&out);
		return r;
	}
	*p = out;
	return 1;
}

/* Bitmap bytes are loaded atomically: a writable image sets bits while
 * others read (write.c). */
static uint8_t vhdx_bm_byte(const uint8_t *bm, uint64_t i)
{
	return __atomic_load_n(&bm[i], __ATOMIC_ACQUIRE);
}

static bool vhdx_bit(const uint8_t *bm, uint64_t i)
{
	return vhdx_bm_byte(bm, i >> 3) >> (i & 7) & 1;	/* LSB first (2.4) */
}

/* A payload BAT entry: a writable image publishes them with release
 * stores once what they point at is written. */
static uint64_t vhdx_bat_get(const struct vhdx *s, uint64_t blk)
{
	return __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
}

static void vhdx_map_data(const struct vhdx *s, uint64_t e, uint64_t blk,
			  uint64_t in, struct img_extent *ext)
{
	ext->type = IMG_EXT_DATA;
	if (s->via_read && vhdx_bit(s->via_read, blk))
		ext->host_off = IMG_HOST_NONE;	/* replayed: ->read */
	else
		ext->host_off = VHDX_BAT_OFFSET(e) + in;
}

/* [in, in + run) of PARTIALLY_PRESENT block blk (entry e). */
static int vhdx_map_partial(struct vhdx *s, uint64_t e, uint64_t blk,
			    uint64_t in, uint64_t run, struct img_extent *ext)
{
	struct vhdx_slice *sl, *tmp = NULL;
	uint32_t lss = s->p.logical_sector;
	uint64_t sec = in / lss, end = sec + 1;
	uint64_t last = (in + run + lss - 1) / lss;
	const uint8_t *bm;
	bool here;
	int r;

	pthread_rwlock_rdlock(&s->sl.lock);
	r = vhdx_slice_get(s, blk, false, &sl, &tmp);
	if (r < 0) {
		pthread_rwlock_unlock(&s->sl.lock);
		return r;
	}
	bm = sl->bits;
	here = vhdx_bit(bm, sec);
	while (end < last) {
		if (!(end & 7) && end + 8 <= last &&
		    vhdx_bm_byte(bm, end >> 3) == (here ? 0xff : 0)) {
			end += 8;
			continue;
		}
		if (vhdx_bit(bm, end) != here)
			break;
		end++;
	}
	pthread_rwlock_unlock(&s->sl.lock);
	free(tmp);
	ext->len = MIN(in + run, end * lss) - in;
	if (here)
		vhdx_map_data(s, e, blk, in, ext);
	else
		ext->type = IMG_EXT_UNALLOC;
	return 0;
}

int vhdx_map_extent(struct img *img, uint64_t off, uint64_t len,
			   struct img_extent *ext)
{
	struct vhdx *s = img->priv;
	uint64_t bs = s->p.block_size, blk = off / bs, in = off % bs;
	uint64_t run = MIN(len, bs - in), e;

	assert(blk < s->nblocks);
	e = vhdx_bat_get(s, blk);
	ext->len = run;
	switch (VHDX_BAT_STATE(e)) {
	case VHDX_PAYLOAD_FULLY_PRESENT:	/* at FileOffsetMB */
		vhdx_map_data(s, e, blk, in, ext);
		return 0;
	case VHDX_PAYLOAD_PARTIALLY_PRESENT:	/* differencing only: per
						 * sector, bit 1 here, 0 parent */
		return vhdx_map_partial(s, e, blk, in, run, ext);
	case VHDX_PAYLOAD_ZERO:		/* zeros, whatever the parent holds */
		ext->type = IMG_EXT_ZERO;
		return 0;
	case VHDX_PAYLOAD_UNDEFINED:
	case VHDX_PAYLOAD_UNMAPPED:
	case VHDX_PAYLOAD_UNMAPPED_V095:
		/*
		 * "Not defined in the file, can contain arbitrary data" for
		 * every file type: in a differencing file we read zeros (as
		 * qemu does for both states) rather than reach through to a
		 * parent the child says nothing about; in a base file there
		 * is nothing below, so it is a hole either way.
		 */
		ext->type = s->p.has_parent ? IMG_EXT_ZERO : IMG_EXT_UNALLOC;
		return 0;
	default:	/* NOT_PRESENT: the parent's, or undefined (zeros) */
		ext->type = IMG_EXT_UNALLOC;
		return 0;
	}
}

int vhdx_read(struct img *img, void *buf, size_t n, uint64_t off)
{
	const struct vhdx *s = img->priv;
	uint64_t bs = s->p.block_size, blk = off / bs, in = off % bs;

	assert(blk < s->nblocks && in + n <= bs);
	return vhdx_file_read(s, buf, n,
			      VHDX_BAT_OFFSET(vhdx_bat_get(s, blk)) + in);
}
