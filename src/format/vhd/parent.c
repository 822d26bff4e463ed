// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * parent.c: ->set_parent for differencing VHDs: point a child at a
 * (moved, renamed or different) parent.
 *
 * What is recorded is what vhd_create_diff records (create.c): the parent's unique
 * id (whatever identity the parent image has; none: all zeros), its time
 * stamp (a VHD parent's footer time stamp, else the file's mtime), its
 * file name as the parent unicode name, and two locators: W2ku (the
 * absolute POSIX path) and W2ru (the relative path, with backslashes).
 * Every other locator entry is cleared.
 *
 * Crash safety.  The dynamic header holds all of this, and its one
 * checksum covers both of its sectors, so it cannot be rewritten in place
 * atomically.  The footer points at it (data offset) from a single
 * sector, so the new header goes to new space and the footer is switched:
 *
 *   1. the footer at the end is written again, unchanged, past the new
 *      space (the file grows by the header and the locators); fdatasync.
 *      The file still ends in a valid footer naming the old header.
 *   2. the new header and its locators go into that space (where the
 *      footer was); fdatasync.  Nothing refers to them yet.
 *   3. the footer at the end, now naming the new header (one sector);
 *      fdatasync.  Readers that start from the end (this driver, 7-Zip,
 *      Windows) see the new parent.
 *   4. the footer copy at offset 0, the same; fdatasync.  Readers that
 *      start at offset 0 (qemu) see it too.
 *
 * A crash before 3 leaves the old parent reference and some unreferenced
 * space before the footer; between 3 and 4 the two footers differ (each
 * names a complete header: one the new parent, one the old), and running
 * the rebase again finishes it.  The old header and locators stay in the
 * file, unreferenced (a few KiB per rebase).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "vhd.h"

#define vhd_err(err, img, fmt, ...) \
	log_err_ret(err, "vhd: %s: " fmt, (img)->path, ##__VA_ARGS__)

static uint64_t vhd_sectors(uint64_t n)
{
	return (n + VHD_SECTOR - 1) / VHD_SECTOR;
}

int vhd_set_parent(struct img *img, const struct img_create_parent *par)
{
	uint8_t footer[VHD_FOOTER_SIZE], hdr[VHD_DYN_HEADER_SIZE];
	struct vhd_dyn_header_raw *hr = (void *)hdr;	/* bytes only */
	struct vhd_problem why = { "" };
	struct vhd_new_parent np = { 0 };
	struct vhd_footer f;
	struct vhd_dyn_header h;
	const char *ref = par->rel_path ? par->rel_path : par->abs_path;
	uint8_t *area = NULL;
	uint64_t fsize, foot, area_len;
	uint32_t pstamp = 0;
	struct stat st;
	int r;

	if (!img->writable)
		return vhd_err(-EROFS, img, "not opened for writing");
	if (fstat(img->fd, &st) < 0)
		return vhd_err(-errno, img, "cannot stat: %s", strerror(errno));
	fsize = (uint64_t)st.st_size;
	if (fsize < 2 * VHD_FOOTER_SIZE + VHD_DYN_HEADER_SIZE ||
	    fsize % VHD_SECTOR)
		return vhd_err(-EUCLEAN, img, "file size is not a whole number "
			       "of sectors holding a dynamic disk (%llu)",
			       (unsigned long long)fsize);
	foot = fsize - VHD_FOOTER_SIZE;
	r = pread_full(img->fd, footer, sizeof(footer), foot);
	if (r < 0)
		return vhd_err(r == -ENODATA ? -EUCLEAN : r, img,
			       "cannot read the footer: %s", strerror(-r));
	r = vhd_footer_decode(footer, &f, &why);
	if (r < 0)
		return vhd_err(r, img, "footer at the end: %s", why.msg);
	if (f.disk_type != VHD_TYPE_DIFF)
		return vhd_err(-EINVAL, img, "not a differencing disk (type %u): "
			       "it has no parent to change", f.disk_type);
	if (!range_within(f.data_offset, VHD_DYN_HEADER_SIZE, foot))
		return vhd_err(-EUCLEAN, img, "dynamic header outside the file "
			       "(%llu)", (unsigned long long)f.data_offset);
	r = pread_full(img->fd, hdr, sizeof(hdr), f.data_offset);
	if (r < 0)
		return vhd_err(r == -ENODATA ? -EUCLEAN : r, img,
			       "cannot read the dynamic header: %s",
			       strerror(-r));
	r = vhd_dyn_header_decode(hdr, &h, &why);
	if (r < 0)
		return vhd_err(r, img, "dynamic header: %s", why.msg);

	r = vhd_parent_time_get(par->img, &pstamp);
	if (r < 0)
		return vhd_err(r, img, "cannot stat the parent %s: %s",
			       par->img->path, strerror(-r));
	if (!ref || (par->rel_path && par->rel_path[0] == '/'))
		return vhd_err(-EINVAL, img, "no relative or absolute path of "
			       "the parent");
	r = vhd_parent_refs_encode(par->rel_path, par->abs_path, &np);
	if (r < 0)
		return vhd_err(r, img, "cannot record the parent path %s: %s",
			       ref, strerror(-r));

	/* The new header at the old footer's place, then the locators. */
	area_len = VHD_DYN_HEADER_SIZE;
	for (unsigned i = 0; i < np.nloc; i++)
		area_len += vhd_sectors(np.loc[i].len) * VHD_SECTOR;
	area = calloc(1, (size_t)area_len);
	if (!area) {
		r = -ENOMEM;
		goto out;
	}
	if (img->has_id && par->img->has_id && !memcmp(&par->img->id, &img->id,
							sizeof(img->id))) {
		r = vhd_err(-ELOOP, img, "cannot name itself as its parent");
		goto out;
	}
	memset(h.parent_uuid, 0, sizeof(h.parent_uuid));
	if (par->img->has_id)	/* text order, as create_diff */
		memcpy(h.parent_uuid, par->img->id.b, sizeof(h.parent_uuid));
	h.parent_timestamp = pstamp;
	memset(h.parent_name, 0, sizeof(h.parent_name));
	memcpy(h.parent_name, np.name, np.name_len);
	vhd_locators_place(&h, &np, foot + VHD_DYN_HEADER_SIZE);
	for (unsigned i = 0; i < np.nloc; i++)
		memcpy(area + (h.locators[i].data_offset - foot),
		       np.loc[i].data, np.loc[i].len);
	memset(hr->locators, 0, sizeof(hr->locators));	/* reserved too */
	vhd_dyn_header_encode(&h, hdr);
	memcpy(area, hdr, sizeof(hdr));

	/* 1: the unchanged footer at the new end */
	r = img_write_sync(img, footer, sizeof(footer), foot + area_len,
			   "the footer at the new end");
	/* 2: the new header and locators where the footer was */
	if (r == 0)
		r = img_write_sync(img, area, (size_t)area_len, foot,
				   "the new dynamic header");
	/* 3, 4: switch the footer at the end, then its copy at 0 */
	if (r == 0) {
		f.data_offset = foot;
		vhd_footer_encode(&f, footer);
		r = img_write_sync(img, footer, sizeof(footer), foot + area_len,
				   "the footer");
	}
	if (r == 0)
		r = img_write_sync(img, footer, sizeof(footer), 0,
				   "the footer copy at offset 0");
	if (r == 0)
		r = img_reopen(img, "parent");
out:
	vhd_new_parent_clear(&np);
	free(area);
	return r;
}
