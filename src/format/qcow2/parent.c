// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/parent.c: ->set_parent for QCOW2 (what `qemu-img rebase -u` does):
 * a new backing file name (the parent's path relative to the image's
 * directory, as create_diff writes it) and backing format extension.
 *
 * Everything lives in the first cluster: the header (the name's offset
 * and length in its first 24 bytes), the header extensions from
 * header_length on, ended by a zero extension, and the name, after the
 * extensions.  The extensions are kept as they are, in order; only the
 * backing format one is replaced (or added first, or dropped when qemu
 * has no name for the parent's format).  The new name goes after
 * everything the old header uses (extensions and old name), so it is
 * written into unused bytes first.
 *
 * Crash safety: 1. every changed byte past the first 512-byte sector
 * (the new name; extensions only if they changed size there), fdatasync;
 * 2. the first sector (name offset and length, and a backing format
 * extension that lies inside it), fdatasync.  Step 2 is a one-sector
 * write, so a crash leaves the old reference or the new one, whole.  That
 * holds whenever the extensions do not change past byte 512: always when
 * the format name stays the same or keeps its padded length (raw, qcow2,
 * vpc, vhdx: 8 bytes) and the backing format extension comes first (as
 * qemu and create_diff write it).  Otherwise the extension bytes past the
 * first sector are rewritten in place in step 1, and a crash between the
 * steps can leave extensions that do not match the header's name (the
 * image still opens; run the rebase again).
 */
#include <errno.h>
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

#define PARENT_SECTOR 512u

#define parent_err(err, img, fmt, ...) \
	log_err_ret(err, "qcow2: %s: " fmt, (img)->path, ##__VA_ARGS__)

/*
 * Rebuild the extension area of cl (from hlen, at most to limit) into out:
 * the backing format one replaced by fmt (or dropped), or fmt added
 * first.  *old_end: where the old area ended (after its end marker);
 * *new_len: bytes written to out.
 */
static int ext_rebuild(struct img *img, const uint8_t *cl, size_t hlen,
			  size_t limit, const char *fmt, uint8_t *out,
			  size_t cap, size_t *old_end, size_t *new_len)
{
	size_t off = hlen, pos = 0, flen = fmt ? strlen(fmt) : 0;
	bool had_fmt = false;

	/* room check for one extension of len bytes, plus the end marker */
#define ROOM(len) (pos + 8 + (((len) + 7) & ~(size_t)7) + 8 <= cap)
	for (;;) {
		struct qcow2_ext e;
		int r = qcow2_ext_decode(cl, off, limit, &e);

		if (r == -ENODATA)
			return parent_err(-EUCLEAN, img, "header extensions run "
					  "into the backing file name (%zu)",
					  off);
		if (r == 0) {
			off = e.next;
			break;
		}
		if (r < 0)
			return parent_err(-EUCLEAN, img, "header extension "
					  "0x%08x runs past the first cluster "
					  "(length %u)", e.type, e.len);
		if (e.type == QCOW2_EXT_BACKING_FORMAT) {
			had_fmt = true;
			if (fmt) {
				if (!ROOM(flen))
					return -ENOSPC;
				qcow2_ext_encode(out, &pos, e.type, fmt, flen);
			}
		} else {
			if (!ROOM(e.len))
				return -ENOSPC;
			qcow2_ext_encode(out, &pos, e.type, e.data, e.len);
		}
		off = MIN(e.next, limit);
	}
	if (fmt && !had_fmt) {		/* first, as qemu writes it */
		size_t p0 = 0, elen = 8 + ((flen + 7) & ~(size_t)7);

		if (pos + elen + 8 > cap)
			return -ENOSPC;
		memmove(out + elen, out, pos);
		memset(out, 0, elen);
		qcow2_ext_encode(out, &p0, QCOW2_EXT_BACKING_FORMAT, fmt,
				 flen);
		pos += p0;
	}
#undef ROOM
	memset(out + pos, 0, 8);	/* the end marker */
	pos += 8;
	*old_end = off;
	*new_len = pos;
	return 0;
}

int qcow2_set_parent(struct img *img, const struct img_create_parent *par)
{
	uint8_t hbuf[sizeof(struct qcow2_header_raw)];
	struct qcow2_header h;
	const char *name, *drvname, *fmt;
	uint8_t *cl = NULL, *nw = NULL, *ext = NULL;
	size_t hlen, cl_len, limit, old_end = 0, ext_len = 0, name_len, used, at;
	size_t first = SIZE_MAX, last = 0;
	uint64_t cs;
	bool atomic = true;
	struct stat st;
	int r;

	if (!img->writable)
		return parent_err(-EROFS, img, "not opened for writing");
	name = par->rel_path ? par->rel_path : par->abs_path;
	if (!name || !*name)
		return parent_err(-EINVAL, img, "no path for the backing file");
	name_len = strlen(name);
	if (name_len > QCOW2_MAX_BACKING_NAME)
		return parent_err(-ENAMETOOLONG, img, "backing file name too long "
			      "(%zu)", name_len);
	drvname = par->format ? par->format
			      : par->img ? par->img->drv->name : NULL;
	fmt = qcow2_format_qemu_name(drvname);
	if (!fmt)
		log_warn("qcow2: %s: qemu cannot read the backing file's "
			 "format (%s); no backing format recorded", img->path,
			 drvname ? drvname : "unknown");
	if (fstat(img->fd, &st) < 0)
		return parent_err(-errno, img, "cannot stat: %s", strerror(errno));
	hlen = (size_t)MIN((uint64_t)st.st_size, (uint64_t)sizeof(hbuf));
	r = pread_full(img->fd, hbuf, hlen, 0);
	if (r < 0)
		return parent_err(r, img, "cannot read the header: %s",
			      strerror(-r));
	r = qcow2_header_decode(img->path, hbuf, hlen, &h);
	if (r < 0)
		return r == -EINVAL ? parent_err(r, img, "not a QCOW2 image") : r;
	cs = 1ull << h.cluster_bits;
	cl_len = (size_t)MIN((uint64_t)st.st_size, cs);
	if (cl_len < h.header_length + 8)
		return parent_err(-EUCLEAN, img, "file too short for the header "
			      "(%zu bytes)", cl_len);
	cl = malloc(cl_len);
	nw = malloc(cl_len);
	ext = calloc(1, cl_len);	/* extension padding stays zero */
	if (!cl || !nw || !ext) {
		r = -ENOMEM;
		goto out;
	}
	r = pread_full(img->fd, cl, cl_len, 0);
	if (r < 0) {
		parent_err(r, img, "cannot read the first cluster: %s",
		       strerror(-r));
		goto out;
	}
	limit = cl_len;
	if (h.backing_file_offset > h.header_length &&
	    h.backing_file_offset < limit)
		limit = (size_t)h.backing_file_offset;
	r = ext_rebuild(img, cl, h.header_length, limit, fmt, ext,
			   cl_len - h.header_length, &old_end, &ext_len);
	if (r == -ENOSPC) {
		r = parent_err(-ENAMETOOLONG, img, "the header extensions do not "
			   "fit in the first cluster (%llu bytes)",
			   (unsigned long long)cs);
		goto out;
	}
	if (r < 0)
		goto out;

	/* the new name: after everything the old header uses, if it fits */
	used = MAX(old_end, h.header_length + ext_len);
	if (h.backing_file_offset && h.backing_file_size &&
	    range_within(h.backing_file_offset, h.backing_file_size, cl_len))
		used = MAX(used, (size_t)(h.backing_file_offset +
					  h.backing_file_size));
	at = used;
	if (at + name_len > cl_len) {
		at = h.header_length + ext_len;		/* in place */
		atomic = false;
	}
	if (at + name_len > cl_len) {
		r = parent_err(-ENAMETOOLONG, img, "backing file name does not fit "
			   "in the first cluster (%llu bytes)",
			   (unsigned long long)cs);
		goto out;
	}
	memcpy(nw, cl, cl_len);
	memcpy(nw + h.header_length, ext, ext_len);
	memcpy(nw + at, name, name_len);
	h.backing_file_offset = at;
	h.backing_file_size = (uint32_t)name_len;
	qcow2_header_encode(&h, nw);	/* the same bytes but these two */

	/* what changed past the first sector; inside the old header's
	 * bytes that is not a one-sector switch */
	for (size_t i = PARENT_SECTOR; i < cl_len; i++) {
		if (nw[i] == cl[i])
			continue;
		first = MIN(first, i);
		last = i;
		if (i < used)
			atomic = false;
	}
	if (!atomic)
		DBG(FORMAT, "qcow2: %s: header extensions change past the "
		    "first sector: rewritten in place", img->path);
	if (first != SIZE_MAX) {
		r = img_write_sync(img, nw + first, last + 1 - first, first,
				   "the backing file name");
		if (r < 0)
			goto out;
	}
	r = img_write_sync(img, nw, MIN(cl_len, (size_t)PARENT_SECTOR), 0,
			   "the header");
	if (r == 0)
		r = img_reopen(img, "backing file");
out:
	free(cl);
	free(nw);
	free(ext);
	return r;
}
