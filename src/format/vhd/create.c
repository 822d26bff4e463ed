// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * create.c: new VHD files: ->create (fixed or dynamic base image) and
 * ->create_diff (a differencing disk over any parent).
 *
 * Both lay out the file with codec.c's vhd_layout_encode(): footer copy,
 * dynamic header, an all-unused BAT, the parent locators (differencing),
 * then the footer.  A dynamic disk has disk type 3 and no parent: the
 * header's parent fields stay zero, as the spec wants for a dynamic disk.
 * A fixed disk is the raw data followed by the footer alone (disk type 2,
 * data offset all ones: spec, "Hard Disk Footer Format").  The footer's
 * current size is the size asked for (as Hyper-V writes it); its CHS
 * geometry is the spec's calculation; its creator: see codec.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "checked.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "registry.h"
#include "vhd.h"

/*
 * The checks a new image's geometry passes: 512-byte sectors ss, a block
 * size bs that is a power of two from 512 to VHD_MAX_BLOCK_SIZE, a size of
 * 1 byte to 2040 GiB and, for a dynamic or differencing disk, at most
 * VHD_MAX_BAT_ENTRIES blocks.  *size is rounded up to whole sectors.  0,
 * or -errno logged as "vhd: PATH: ...".
 */
static int vhd_geometry_check(const char *path, uint64_t *size, uint32_t bs,
			      uint32_t ss, bool dynamic)
{
	uint64_t n = *size;

	if (ss != VHD_SECTOR)
		return log_err_ret(-ENOTSUP, "vhd: %s: VHD has 512-byte "
				   "sectors only (%u asked)", path, ss);
	if (bs < VHD_SECTOR || !is_pow2(bs) || bs > VHD_MAX_BLOCK_SIZE)
		return log_err_ret(-EINVAL, "vhd: %s: block size must be a "
				   "power of two from 512 to %u (%u)", path,
				   VHD_MAX_BLOCK_SIZE, bs);
	if (!n || n > VHD_MAX_DISK_SIZE)
		return log_err_ret(n ? -EFBIG : -EINVAL, "vhd: %s: size "
				   "must be 1 byte to 2040 GiB (%llu)", path,
				   (unsigned long long)n);
	n = (n + VHD_SECTOR - 1) & ~(uint64_t)(VHD_SECTOR - 1);
	if (dynamic && n / bs + !!(n % bs) > VHD_MAX_BAT_ENTRIES)
		return log_err_ret(-EFBIG, "vhd: %s: %llu bytes need more than "
				   "%u blocks of %u bytes", path,
				   (unsigned long long)n,
				   VHD_MAX_BAT_ENTRIES, bs);
	*size = n;
	return 0;
}

/* A new unique id (RFC 4122 version 4). */
static int vhd_uuid_new(uint8_t uuid[16])
{
	int r;

	if (getrandom(uuid, 16, 0) != 16) {
		r = -errno;
		return log_err_ret(r ? r : -EIO, "vhd: no random bytes for a "
				   "unique id (%s)", strerror(-r));
	}
	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
	return 0;
}

/* A VHD parent's footer time stamp; else the parent file's mtime. */
int vhd_parent_time_get(const struct img *p, uint32_t *ts)
{
	struct stat st;

	if (p->drv == &vhd_driver) {
		*ts = ((const struct vhd *)p->priv)->footer.timestamp;
		return 0;
	}
	if (fstat(p->fd, &st) < 0)
		return -errno;
	*ts = vhd_time_encode(st.st_mtime);
	return 0;
}

/* Write the new file: the layout (a fixed disk: its data space), then the
 * footer; complete and durable, or removed. */
static int vhd_file_write(const char *path, const uint8_t *buf, uint64_t len,
			  const uint8_t *footer, bool fixed)
{
	int fd = file_create(path, "vhd"), r;

	if (fd < 0)
		return fd;
	/* a fixed disk: the data, reserved where the file system can */
	r = fixed ? file_reserve(fd, 0, len)
		  : pwrite_full(fd, buf, (size_t)len, 0);
	if (r == 0)
		r = pwrite_full(fd, footer, VHD_FOOTER_SIZE, len);
	return file_create_end(fd, path, r, "vhd");
}

int vhd_create(const char *path, const struct img_create_opts *o)
{
	uint64_t size = o->size, len = 0;
	uint32_t bs = o->block_size ? o->block_size : VHD_DEFAULT_BLOCK_SIZE;
	static const uint8_t none[16];
	uint8_t footer[VHD_FOOTER_SIZE], uuid[16], *buf = NULL;
	struct vhd_footer f;
	int r;

	r = vhd_geometry_check(path, &size, bs,
			       o->sector_size ? o->sector_size : VHD_SECTOR,
			       !o->fixed);
	if (r == 0)
		r = vhd_uuid_new(uuid);
	if (r < 0)
		return r;
	vhd_footer_new(&f, o->fixed ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC, size,
		       vhd_time_encode(time(NULL)), uuid);
	if (o->fixed) {
		memset(footer, 0, sizeof(footer));
		vhd_footer_encode(&f, footer);
		return vhd_file_write(path, NULL, size, footer, true);
	}
	r = vhd_layout_encode(&buf, &len, footer, &f, bs, none, 0, NULL);
	if (r == 0)
		r = vhd_file_write(path, buf, len, footer, false);
	free(buf);
	return r;
}

/*
 * A new, empty differencing VHD over parent.  It records the parent's
 * identity (its unique id: a VHD's footer id, whatever identity another
 * format gives; none: all zeros, "not recorded"), its time stamp (a VHD
 * parent's footer time stamp, else the file's mtime), its file name and
 * two locators: W2ku (the absolute POSIX path as given: Windows falls back
 * to W2ru) and W2ru (the relative path, with backslashes).  The data space
 * of a locator is in sectors, as the spec says (Windows writes bytes;
 * readers take both).
 */
int vhd_create_diff(const char *path, const struct img_create_parent *par,
		    const struct img_create_opts *o)
{
	const struct img *pimg = par->img;
	uint64_t size = o && o->size ? o->size : pimg->size, len = 0;
	uint32_t bs = o && o->block_size ? o->block_size
					  : VHD_DEFAULT_BLOCK_SIZE;
	uint32_t ss = o && o->sector_size ? o->sector_size : pimg->sector_size;
	const char *ref = par->rel_path ? par->rel_path : par->abs_path;
	struct vhd_new_parent np;
	struct guid pid = { { 0 } };
	uint8_t footer[VHD_FOOTER_SIZE], uuid[16], *buf = NULL;
	struct vhd_footer f;
	uint32_t pstamp = 0;
	int r;

	if (!ref || (par->rel_path && par->rel_path[0] == '/'))
		return log_err_ret(-EINVAL, "vhd: %s: no relative or absolute "
				   "path of the parent", path);
	r = vhd_geometry_check(path, &size, bs, ss, true);
	if (r < 0)
		return r;
	if (pimg->has_id)
		pid = pimg->id;
	r = vhd_parent_time_get(pimg, &pstamp);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot stat the parent %s (%s)",
				   path, pimg->path, strerror(-r));
	r = vhd_parent_refs_encode(par->rel_path, par->abs_path, &np);
	if (r < 0)
		return log_err_ret(r, "vhd: %s: cannot record the parent path "
				   "%s (%s)", path, ref, strerror(-r));
	r = vhd_uuid_new(uuid);
	if (r < 0)
		goto out;
	vhd_footer_new(&f, VHD_TYPE_DIFF, size, vhd_time_encode(time(NULL)),
		       uuid);
	r = vhd_layout_encode(&buf, &len, footer, &f, bs, pid.b, pstamp, &np);
	if (r == 0)
		r = vhd_file_write(path, buf, len, footer, false);
out:
	vhd_new_parent_clear(&np);
	free(buf);
	return r;
}
