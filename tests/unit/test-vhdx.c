// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-vhdx.c: the VHDX driver.
 *
 * Decoders are tested on byte arrays (libvhdi's real fragments where they
 * exist), one damaged field per case.  The driver is tested on images
 * made by qemu-img (compared with qemu-img convert -O raw), on real
 * images with recorded sums (../shared/vectors), and on differencing
 * chains and dirty logs written by tests/tools/mkvhdx.py, an independent
 * Python writer that also writes the expected flat content.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chain.h"
#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "fixtures.h"
#include "guid.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "registry.h"
#include "utf16.h"
#include "vhdx.h"

#define MiB (1024ull * 1024)
#define KiB 1024ull
#define MKVHDX SOURCE_DIR "/tests/tools/mkvhdx.py"
#define VHDXCHECK SOURCE_DIR "/tests/tools/vhdxcheck.py"

/* ---- helpers ---- */

static unsigned nerrors;	/* ERR messages since the last reset */
static char last_err[1024];
static char last_info[1024];

static void sink(enum log_level lvl, const char *msg)
{
	if (lvl == LOG_LVL_ERR) {
		nerrors++;
		snprintf(last_err, sizeof(last_err), "%s", msg);
	} else if (lvl == LOG_LVL_INFO) {
		snprintf(last_info, sizeof(last_info), "%s", msg);
	}
}

static void setup(void)
{
	log_set_sink(sink);
	nerrors = 0;
	last_err[0] = last_info[0] = '\0';
}

static bool have(const char *tool)
{
	return fx_system("command -v %s >/dev/null 2>&1", tool) == 0;
}

static void fix_crc(uint8_t *buf, size_t len, size_t at)
{
	put_le32(buf + at, 0);
	put_le32(buf + at, crc32c(0, buf, len));
}

static void run(const char *fmt, const char *a, const char *b)
{
	ck_assert_int_eq(fx_system(fmt, a, b), 0);
}

/* Decompress a vector into the private directory; NULL if absent. */
static char *vector(const char *rel, const char *tool, const char *name)
{
	char *src = fx_vector(rel), *dst;

	if (!src)
		return NULL;
	dst = fx_path(name);
	if (tool)
		ck_assert_int_eq(fx_system("%s -dc '%s' > '%s'", tool, src, dst),
				 0);
	else
		ck_assert_int_eq(fx_system("cp '%s' '%s'", src, dst), 0);
	free(src);
	return dst;
}

static struct img *open_ok(const char *path)
{
	struct img *img = NULL;

	ck_assert_msg(img_open(path, NULL, false, &img) == 0, "open %s: %s",
		      path, last_err);
	ck_assert_str_eq(img->drv->name, "vhdx");
	return img;
}

/* Read [off, off+len) through layers[0..n) the way a chain does: a run
 * that is UNALLOC in one layer comes from the next, zeros at the end. */
static void read_layers(struct img **l, unsigned n, uint8_t *buf,
			uint64_t off, uint64_t len)
{
	while (len) {
		struct img_extent e;
		uint64_t bs;

		if (!n || off >= l[0]->size) {
			memset(buf, 0, len);
			return;
		}
		ck_assert_int_eq(img_map(l[0], off, len, &e), 0);
		/* a run never crosses a block boundary */
		bs = l[0]->block_size;	/* 0: raw, no blocks */
		if (bs)
			ck_assert_uint_eq(off / bs, (off + e.len - 1) / bs);
		switch (e.type) {
		case IMG_EXT_DATA:
			if (e.host_off == IMG_HOST_NONE)
				ck_assert_int_eq(l[0]->drv->read(l[0], buf,
								 e.len, off), 0);
			else
				ck_assert_int_eq(pread_full(e.fd, buf, e.len,
							    e.host_off), 0);
			break;
		case IMG_EXT_ZERO:
			memset(buf, 0, e.len);
			break;
		case IMG_EXT_UNALLOC:
			read_layers(l + 1, n - 1, buf, off, e.len);
			break;
		}
		buf += e.len;
		off += e.len;
		len -= e.len;
	}
}

/* What read_layers would give is all zeros: DATA runs are read and
 * checked, ZERO runs are fine, UNALLOC runs are asked below. */
static void check_zero_layers(struct img **l, unsigned n, uint64_t off,
			      uint64_t len)
{
	static uint8_t buf[MiB];

	while (len && n && off < l[0]->size) {
		struct img_extent e;

		ck_assert_int_eq(img_map(l[0], off, len, &e), 0);
		if (e.type == IMG_EXT_UNALLOC)
			check_zero_layers(l + 1, n - 1, off, e.len);
		for (uint64_t done = 0; e.type == IMG_EXT_DATA && done < e.len;) {
			size_t k = (size_t)MIN(e.len - done, (uint64_t)MiB);

			read_layers(l, 1, buf, off + done, k);
			ck_assert_msg(!buf[0] && !memcmp(buf, buf + 1, k - 1),
				      "data where zeros belong at %llu",
				      (unsigned long long)(off + done));
			done += k;
		}
		off += e.len;
		len -= e.len;
	}
}

/* Compare the layers' flat content with a (sparse) file: its data in
 * odd-sized steps, so runs start and end inside sectors; its holes by
 * the extents alone. */
static void check_flat(struct img **l, unsigned n, const char *want_path)
{
	size_t step = 300007;
	uint8_t *want = malloc(step), *buf = malloc(step);
	int fd = open(want_path, O_RDONLY);
	struct stat st;
	uint64_t off = 0, size;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	size = (uint64_t)st.st_size;
	ck_assert_uint_eq(l[0]->size, size);
	while (off < size) {
		off_t d = lseek(fd, (off_t)off, SEEK_DATA);
		uint64_t data = d < 0 ? size : (uint64_t)d, hole;

		check_zero_layers(l, n, off, data - off);
		if (data >= size)
			break;
		hole = (uint64_t)lseek(fd, (off_t)data, SEEK_HOLE);
		for (off = data; off < hole;) {
			size_t len = (size_t)MIN((uint64_t)step, hole - off);

			ck_assert_int_eq(pread_full(fd, want, len, off), 0);
			read_layers(l, n, buf, off, len);
			if (memcmp(buf, want, len) != 0) {
				size_t i = 0;

				while (buf[i] == want[i])
					i++;
				ck_abort_msg("%s: differs at byte %llu (0x%02x, "
					     "want 0x%02x)", want_path,
					     (unsigned long long)(off + i),
					     buf[i], want[i]);
			}
			off += len;
		}
	}
	close(fd);
	free(buf);
	free(want);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return !n || (!p[0] && !memcmp(p, p + 1, n - 1));
}

/* sha256 of an image's flat content (no parent), by sha256sum. */
static void flat_sha(struct img *img, char *out)
{
	char *sum = fx_path("sum.txt"), *cmd;
	size_t chunk = 4 * MiB, n;
	uint8_t *buf = malloc(chunk);
	FILE *p;

	ck_assert_int_ge(asprintf(&cmd, "sha256sum > '%s'", sum), 0);
	p = popen(cmd, "w");
	ck_assert_ptr_nonnull(p);
	for (uint64_t off = 0; off < img->size; off += n) {
		n = (size_t)MIN((uint64_t)chunk, img->size - off);
		read_layers(&img, 1, buf, off, n);
		ck_assert_uint_eq(fwrite(buf, 1, n, p), n);
	}
	ck_assert_int_eq(pclose(p), 0);
	free(buf);
	buf = fx_read_file(sum, &n);
	ck_assert_uint_ge(n, 64);
	memcpy(out, buf, 64);
	out[64] = '\0';
	free(buf);
	free(cmd);
	free(sum);
}

/* ---- CRC and headers (2.2.2) ---- */

/* A real header when the vectors are there, else one made here. */
static void base_header(uint8_t *h)
{
	char *p = fx_vector("libvhdi-structs/image_header.1");

	if (p) {
		size_t len;
		uint8_t *b = fx_read_file(p, &len);

		ck_assert_uint_eq(len, 4096);
		memcpy(h, b, 4096);
		free(b);
		free(p);
		return;
	}
	memset(h, 0, 4096);
	memcpy(h, "head", 4);
	put_le64(h + 8, 6);
	fx_fill_random(h + 16, 32, 5);
	put_le16(h + 66, 1);
	put_le32(h + 68, 1 << 20);
	put_le64(h + 72, 1 << 20);
	fix_crc(h, 4096, 4);
}

START_TEST(header_decode_real)
{
	uint8_t h[4096];
	struct vhdx_header hd;

	setup();
	base_header(h);
	ck_assert_int_eq(vhdx_header_decode(h, &hd), 0);
	ck_assert_int_eq(vhdx_header_check("h", &hd), 0);
	ck_assert_uint_eq(hd.version, 1);
	ck_assert_uint_eq(hd.log_offset, 1 << 20);
	ck_assert_uint_eq(hd.log_length, 1 << 20);
	ck_assert(guid_is_zero(&hd.log_guid));
	ck_assert(!guid_is_zero(&hd.data_write_guid));
}
END_TEST

static const struct {
	const char *what;
	size_t off;
	uint8_t val;
	bool stale;		/* leave the checksum as it was */
	int decode, check;
} hdr_bad[] = {
	{ "signature", 0, 'H', false, -EINVAL, 0 },
	{ "checksum field", 5, 0x5a, true, -EBADMSG, 0 },
	{ "reserved byte, checksum stale", 300, 1, true, -EBADMSG, 0 },
	{ "sequence, checksum stale", 8, 0x77, true, -EBADMSG, 0 },
	{ "version 2", 66, 2, false, 0, -ENOTSUP },
	{ "version 0", 66, 0, false, 0, -ENOTSUP },
	{ "log version 1", 64, 1, false, 0, -ENOTSUP },
	{ "log length not MiB", 68, 0x10, false, 0, -EUCLEAN },
	{ "log offset not MiB", 73, 0x80, false, 0, -EUCLEAN },
	{ "log offset in header section", 74, 0x00, false, 0, -EUCLEAN },
	{ "empty log, log GUID set", 70, 0x00, false, 0, -EUCLEAN },
	{ "sequence number 0 is fine", 8, 0, false, 0, 0 },
};

START_TEST(header_rejects_corruption)
{
	uint8_t h[4096];
	struct vhdx_header hd;
	int r;

	setup();
	base_header(h);
	h[hdr_bad[_i].off] = hdr_bad[_i].val;
	if (!strcmp(hdr_bad[_i].what, "empty log, log GUID set"))
		h[50] = 0x42;
	if (!hdr_bad[_i].stale)
		fix_crc(h, 4096, 4);
	r = vhdx_header_decode(h, &hd);
	ck_assert_msg(r == hdr_bad[_i].decode, "%s: decode %d",
		      hdr_bad[_i].what, r);
	if (r == 0)
		ck_assert_msg(vhdx_header_check("h", &hd) == hdr_bad[_i].check,
			      "%s: check", hdr_bad[_i].what);
	if (r == 0 && hdr_bad[_i].check)
		ck_assert_uint_eq(nerrors, 1);
}
END_TEST

/* Current header: valid, highest sequence; ties only when identical. */
static const struct {
	const char *what;
	uint64_t s1, s2;
	int bad1, bad2;		/* 0 ok, 1 bad checksum, 2 no signature */
	bool same;		/* h2 a byte copy of h1 */
	int err;
	uint64_t want;
} pick[] = {
	{ "second newer", 5, 6, 0, 0, false, 0, 6 },
	{ "first newer", 9, 2, 0, 0, false, 0, 9 },
	{ "first damaged", 9, 2, 1, 0, false, 0, 2 },
	{ "second damaged", 9, 12, 0, 1, false, 0, 9 },
	{ "second unsigned", 1, 12, 0, 2, false, 0, 1 },
	{ "Disk2VHD tie, identical", 1, 1, 0, 0, true, 0, 1 },
	{ "tie, different", 4, 4, 0, 0, false, -EUCLEAN, 0 },
	{ "both damaged", 1, 2, 1, 1, false, -EBADMSG, 0 },
	{ "one damaged, one unsigned", 1, 2, 2, 1, false, -EBADMSG, 0 },
	{ "neither signed", 1, 2, 2, 2, false, -EUCLEAN, 0 },
};

static void mk_pick_header(uint8_t *h, uint64_t seq, int bad, uint32_t seed)
{
	base_header(h);
	put_le64(h + 8, seq);
	fx_fill_random(h + 16, 16, seed);	/* FileWriteGuid */
	fix_crc(h, 4096, 4);
	if (bad == 1)
		h[1000] ^= 1;
	else if (bad == 2)
		h[0] = 'x';
}

START_TEST(headers_pick_current)
{
	uint8_t h1[4096], h2[4096];
	struct vhdx_header hd;
	int r;

	setup();
	mk_pick_header(h1, pick[_i].s1, pick[_i].bad1, 1);
	if (pick[_i].same)
		memcpy(h2, h1, sizeof(h1));
	else
		mk_pick_header(h2, pick[_i].s2, pick[_i].bad2, 2);
	r = vhdx_headers_pick("p", h1, h2, &hd);
	ck_assert_msg(r == pick[_i].err, "%s: %d", pick[_i].what, r);
	if (r == 0)
		ck_assert_uint_eq(hd.sequence, pick[_i].want);
	ck_assert_uint_eq(nerrors, r ? 1 : 0);
}
END_TEST

/* ---- region table (2.2.3) ---- */

static void base_region(uint8_t *t)
{
	static const uint8_t bat[16] = { 0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6,
		0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
	static const uint8_t meta[16] = { 0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47,
		0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
	char *p = fx_vector("libvhdi-structs/region_table.1");

	memset(t, 0, 64 * KiB);
	memcpy(t, "regi", 4);
	put_le32(t + 8, 2);
	memcpy(t + 16, bat, 16);
	put_le64(t + 32, 3 * MiB);
	put_le32(t + 40, MiB);
	put_le32(t + 44, 1);
	memcpy(t + 48, meta, 16);
	put_le64(t + 64, 2 * MiB);
	put_le32(t + 72, MiB);
	put_le32(t + 76, 1);
	fix_crc(t, 64 * KiB, 4);
	if (p) {	/* Windows wrote the same table, checksum included */
		size_t len;
		uint8_t *b = fx_read_file(p, &len);

		ck_assert_uint_eq(len, 80);
		ck_assert_mem_eq(b, t, 80);
		free(b);
		free(p);
	}
}

static const struct {
	const char *what;
	size_t off;
	uint8_t len;		/* bytes of val, little-endian */
	uint64_t val;
	bool stale;
	int err;
} rt_bad[] = {
	{ "signature", 0, 1, 'R', false, -EINVAL },
	{ "checksum", 6, 1, 0x11, true, -EBADMSG },
	{ "entry byte, checksum stale", 70, 1, 0x01, true, -EBADMSG },
	{ "2048 entries", 8, 4, 2048, false, -EUCLEAN },
	{ "BAT offset not MiB", 32, 8, 3 * MiB + 4096, false, -EUCLEAN },
	{ "BAT offset in header section", 32, 8, 512 * KiB, false, -EUCLEAN },
	{ "BAT length 0", 40, 4, 0, false, -EUCLEAN },
	{ "BAT length not MiB", 40, 4, MiB + 512, false, -EUCLEAN },
	{ "metadata made a second BAT", 48, 8, 0x4200f6232dc27766ull, false,
	  -EUCLEAN },
	{ "unknown required region", 48, 1, 0x07, false, -ENOTSUP },
	{ "unknown optional region, no metadata", 76, 4, 0, false, -EUCLEAN },
	{ "regions overlap", 64, 8, 3 * MiB, false, -EUCLEAN },
	{ "one entry only", 8, 4, 1, false, -EUCLEAN },
	{ "optional unknown entry is ignored", 8, 4, 3, false, 0 },
};

START_TEST(region_table_rejects_corruption)
{
	uint8_t *t = malloc(64 * KiB);
	struct vhdx_regions rg;
	int r;

	setup();
	base_region(t);
	for (unsigned k = 0; k < rt_bad[_i].len; k++)
		t[rt_bad[_i].off + k] = (uint8_t)(rt_bad[_i].val >> (8 * k));
	if (!strcmp(rt_bad[_i].what, "unknown optional region, no metadata"))
		t[48] ^= 0x40;
	if (!strcmp(rt_bad[_i].what, "metadata made a second BAT"))
		put_le64(t + 56, 0x084afd9b5e11649dull);
	if (!rt_bad[_i].stale)
		fix_crc(t, 64 * KiB, 4);
	r = vhdx_region_table_decode("rt", t, false, &rg);
	ck_assert_msg(r == rt_bad[_i].err, "%s: %d", rt_bad[_i].what, r);
	ck_assert_uint_eq(nerrors, r ? 1 : 0);
	if (r == 0) {
		ck_assert_uint_eq(rg.bat.off, 3 * MiB);
		ck_assert_uint_eq(rg.meta.off, 2 * MiB);
		ck_assert_uint_eq(rg.bat.len, MiB);
	}
	/* quiet mode says nothing, same code */
	nerrors = 0;
	ck_assert_int_eq(vhdx_region_table_decode("rt", t, true, &rg), r);
	ck_assert_uint_eq(nerrors, 0);
	free(t);
}
END_TEST

/* ---- metadata (2.6) ---- */

static const uint8_t g_fp[16] = { 0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43,
	0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
static const uint8_t g_ds[16] = { 0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76,
	0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
static const uint8_t g_p83[16] = { 0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23,
	0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 };
static const uint8_t g_lss[16] = { 0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09,
	0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f };
static const uint8_t g_pss[16] = { 0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71,
	0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 };
static const uint8_t g_loc[16] = { 0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d,
	0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };

static void meta_entry(uint8_t *t, unsigned i, const uint8_t *g, uint32_t off,
		       uint32_t len, uint32_t flags)
{
	uint8_t *e = t + 32 + 32 * i;

	memcpy(e, g, 16);
	put_le32(e + 16, off);
	put_le32(e + 20, len);
	put_le32(e + 24, flags);
}

static void base_meta(uint8_t *t)
{
	char *p = fx_vector("libvhdi-structs/metadata_table_entry.1");

	memset(t, 0, 64 * KiB);
	memcpy(t, "metadata", 8);
	put_le16(t + 10, 6);
	meta_entry(t, 0, g_fp, 0x10000, 8, 4);
	meta_entry(t, 1, g_ds, 0x10008, 8, 6);
	meta_entry(t, 2, g_p83, 0x10010, 16, 6);
	meta_entry(t, 3, g_lss, 0x10020, 4, 6);
	meta_entry(t, 4, g_pss, 0x10028, 4, 6);
	meta_entry(t, 5, g_loc, 0x10030, 0x22a, 4);
	if (p) {	/* Windows' file parameters entry is the same */
		size_t len;
		uint8_t *b = fx_read_file(p, &len);

		ck_assert_mem_eq(b, t + 32, 32);
		free(b);
		free(p);
	}
}

static const struct {
	const char *what;
	size_t off;
	uint8_t len;
	uint64_t val;
	int err;
} mt_bad[] = {
	{ "signature", 0, 1, 'M', -EUCLEAN },
	{ "2048 entries", 10, 2, 2048, -EUCLEAN },
	{ "item inside the table", 32 + 16, 4, 0x8000, -EUCLEAN },
	{ "file parameters 9 bytes", 32 + 20, 4, 9, -EUCLEAN },
	{ "item past the region", 96 + 16, 4, MiB - 8, -EUCLEAN },
	{ "item over 1 MiB", 192 + 20, 4, MiB + 8, -EUCLEAN },
	{ "empty item with offset", 192 + 20, 4, 0, -EUCLEAN },
	{ "unknown required item", 192, 1, 0x77, -ENOTSUP },
	{ "unknown required user item", 192 + 24, 4, 5, -ENOTSUP },
	{ "duplicate file parameters", 64, 8, 0x4d43fa36caa16737ull,
	  -EUCLEAN },
	{ "logical sector size GUID damaged", 128, 1, 0x77, -ENOTSUP },
	{ "page 83 data 4 bytes", 96 + 20, 4, 4, -EUCLEAN },
	{ "parent locator 10 bytes", 192 + 20, 4, 10, -EUCLEAN },
	{ "no physical sector size (4 entries)", 10, 2, 4, -EUCLEAN },
	{ "unknown optional item is ignored", 192 + 24, 4, 0, 0 },
};

START_TEST(meta_table_rejects_corruption)
{
	uint8_t *t = malloc(64 * KiB);
	struct vhdx_meta_table mt;
	int r;

	setup();
	base_meta(t);
	for (unsigned k = 0; k < mt_bad[_i].len; k++)
		t[mt_bad[_i].off + k] = (uint8_t)(mt_bad[_i].val >> (8 * k));
	if (!strcmp(mt_bad[_i].what, "duplicate file parameters"))
		put_le64(t + 72, 0x6be744aaf033b6b3ull);
	if (!strcmp(mt_bad[_i].what, "unknown optional item is ignored"))
		t[192] ^= 0x10;
	r = vhdx_meta_table_decode("mt", t, MiB, &mt);
	ck_assert_msg(r == mt_bad[_i].err, "%s: %d", mt_bad[_i].what, r);
	ck_assert_uint_eq(nerrors, r ? 1 : 0);
	if (r == 0) {
		ck_assert(mt.file_params.present && mt.disk_size.present);
		ck_assert_uint_eq(mt.logical_sector.off, 0x10020);
		ck_assert(!mt.parent_locator.present);
	}
	free(t);
}
END_TEST

START_TEST(meta_table_good)
{
	uint8_t *t = malloc(64 * KiB);
	struct vhdx_meta_table mt;

	setup();
	base_meta(t);
	ck_assert_int_eq(vhdx_meta_table_decode("mt", t, MiB, &mt), 0);
	ck_assert(mt.parent_locator.present);
	ck_assert_uint_eq(mt.parent_locator.len, 0x22a);
	ck_assert_uint_eq(mt.page83.off, 0x10010);
	/* a region too small for the locator */
	ck_assert_int_eq(vhdx_meta_table_decode("mt", t, 0x10100, &mt),
			 -EUCLEAN);
	free(t);
}
END_TEST

static const struct {
	uint32_t bs, flags;
	uint64_t size;
	uint32_t lss, pss;
	int err;
} params[] = {
	{ 32 * MiB, 0, 10 * MiB, 512, 4096, 0 },
	{ MiB, 1, 4096, 4096, 512, 0 },
	{ 256 * MiB, 2, 64ull << 40, 512, 512, 0 },
	{ 0, 0, 10 * MiB, 512, 512, -EUCLEAN },
	{ 512 * KiB, 0, 10 * MiB, 512, 512, -EUCLEAN },
	{ 3 * MiB, 0, 10 * MiB, 512, 512, -EUCLEAN },
	{ 512 * MiB, 0, 10 * MiB, 512, 512, -EUCLEAN },
	{ MiB, 4, 10 * MiB, 512, 512, -ENOTSUP },
	{ MiB, 0x80000000u, 10 * MiB, 512, 512, -ENOTSUP },
	{ MiB, 0, 10 * MiB, 1024, 512, -EUCLEAN },
	{ MiB, 0, 10 * MiB, 0, 512, -EUCLEAN },
	{ MiB, 0, 10 * MiB, 512, 2048, -EUCLEAN },
	{ MiB, 0, 0, 512, 512, -EUCLEAN },
	{ MiB, 0, 10 * MiB + 1000, 512, 512, -EUCLEAN },
	{ MiB, 0, 10 * MiB + 512, 4096, 512, -EUCLEAN },
	{ MiB, 0, (64ull << 40) + 512, 512, 512, -EFBIG },
	{ MiB, 0, UINT64_MAX - 511, 512, 512, -EFBIG },
};

START_TEST(params_decode_cases)
{
	uint8_t fp[8], ds[8], lss[4], pss[4];
	struct vhdx_params p;
	int r;

	setup();
	put_le32(fp, params[_i].bs);
	put_le32(fp + 4, params[_i].flags);
	put_le64(ds, params[_i].size);
	put_le32(lss, params[_i].lss);
	put_le32(pss, params[_i].pss);
	r = vhdx_params_decode("p", fp, ds, lss, pss, &p);
	ck_assert_int_eq(r, params[_i].err);
	ck_assert_uint_eq(nerrors, r ? 1 : 0);
	if (r == 0) {
		ck_assert_uint_eq(p.block_size, params[_i].bs);
		ck_assert_uint_eq(p.disk_size, params[_i].size);
		ck_assert_int_eq(p.leave_allocated, params[_i].flags & 1);
		ck_assert_int_eq(p.has_parent, !!(params[_i].flags & 2));
	}
}
END_TEST

/* ---- parent locator (2.6.2.6) ---- */

struct kv {
	const char *k, *v;
};

static size_t mk_locator(uint8_t *buf, size_t cap, const struct kv *kv,
			 unsigned n)
{
	static const uint8_t type[16] = { 0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1,
		0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13 };
	size_t pos = 20 + 12 * (size_t)n;

	memset(buf, 0, cap);
	memcpy(buf, type, 16);
	put_le16(buf + 18, (uint16_t)n);
	for (unsigned i = 0; i < n; i++) {
		uint8_t *k16, *v16;
		size_t kl, vl;

		ck_assert_int_eq(utf8_to_utf16(kv[i].k, false, &k16, &kl), 0);
		ck_assert_int_eq(utf8_to_utf16(kv[i].v, false, &v16, &vl), 0);
		ck_assert_uint_le(pos + kl + vl, cap);
		put_le32(buf + 20 + 12 * i, (uint32_t)pos);
		memcpy(buf + pos, k16, kl);
		put_le32(buf + 24 + 12 * i, (uint32_t)(pos + kl));
		memcpy(buf + pos + kl, v16, vl);
		put_le16(buf + 28 + 12 * i, (uint16_t)kl);
		put_le16(buf + 30 + 12 * i, (uint16_t)vl);
		pos += kl + vl;
		free(k16);
		free(v16);
	}
	return pos;
}

#define LINK "{ff34003b-11ed-4cf8-a166-b2be05e20b80}"
#define ZERO_GUID "{00000000-0000-0000-0000-000000000000}"

static const struct kv loc_good[] = {
	{ "parent_linkage", LINK },
	{ "parent_linkage2", ZERO_GUID },
	{ "relative_path", ".\\base.vhdx" },
	{ "volume_path", "\\\\?\\Volume{0a2b}\\img\\base.vhdx" },
	{ "absolute_win32_path", "C:\\img\\base.vhdx" },
};

START_TEST(locator_good)
{
	static const struct kv upper[] = {
		{ "relative_path", "..\\Äpfel\\base.vhdx" },
		{ "x-unknown-key", "ignored" },
		{ "parent_linkage", "{FF34003B-11ED-4CF8-A166-B2BE05E20B80}" },
		{ "parent_linkage2", "{12345678-1234-5678-9abc-def012345678}" },
	};
	uint8_t buf[1024];
	struct vhdx_locator loc;
	struct guid want;
	size_t len;

	setup();
	ck_assert_int_eq(guid_parse(LINK, &want), 0);
	len = mk_locator(buf, sizeof(buf), loc_good, ARRAY_SIZE(loc_good));
	ck_assert_int_eq(vhdx_locator_decode("l", buf, len, &loc), 0);
	ck_assert(guid_equal(&loc.linkage, &want));
	ck_assert(!loc.has_linkage2);	/* a zero GUID names nothing */
	ck_assert_str_eq(loc.relative_path, ".\\base.vhdx");
	ck_assert_str_eq(loc.absolute_win32_path, "C:\\img\\base.vhdx");
	ck_assert_str_eq(loc.volume_path, "\\\\?\\Volume{0a2b}\\img\\base.vhdx");
	vhdx_locator_clear(&loc);

	len = mk_locator(buf, sizeof(buf), upper, ARRAY_SIZE(upper));
	ck_assert_int_eq(vhdx_locator_decode("l", buf, len, &loc), 0);
	ck_assert(guid_equal(&loc.linkage, &want));
	ck_assert(loc.has_linkage2);
	ck_assert_str_eq(loc.relative_path, "..\\Äpfel\\base.vhdx");
	ck_assert_ptr_null(loc.volume_path);
	ck_assert_uint_eq(nerrors, 0);
	vhdx_locator_clear(&loc);
}
END_TEST

static const struct {
	const char *what;
	struct kv kv[4];
	unsigned n;
	int err;
} loc_sets[] = {
	{ "no parent_linkage", { { "relative_path", "a.vhdx" } }, 1,
	  -EUCLEAN },
	{ "parent_linkage not a GUID",
	  { { "parent_linkage", "{ff34003b}" }, { "relative_path", "a" } }, 2,
	  -EUCLEAN },
	{ "duplicate relative_path",
	  { { "parent_linkage", LINK }, { "relative_path", "a" },
	    { "relative_path", "b" } }, 3, -EUCLEAN },
	{ "duplicate parent_linkage",
	  { { "parent_linkage", LINK }, { "parent_linkage", LINK },
	    { "relative_path", "b" } }, 3, -EUCLEAN },
	{ "no path at all", { { "parent_linkage", LINK } }, 1, -EUCLEAN },
	{ "only an empty path",
	  { { "parent_linkage", LINK }, { "volume_path", "" } }, 2, -EUCLEAN },
};

START_TEST(locator_rejects_sets)
{
	uint8_t buf[1024];
	struct vhdx_locator loc;
	size_t len;

	setup();
	len = mk_locator(buf, sizeof(buf), loc_sets[_i].kv, loc_sets[_i].n);
	ck_assert_msg(vhdx_locator_decode("l", buf, len, &loc) ==
		      loc_sets[_i].err, "%s", loc_sets[_i].what);
	ck_assert_uint_eq(nerrors, 1);
}
END_TEST

static const struct {
	const char *what;
	size_t off;
	uint8_t len;
	uint64_t val;
	int err;
} loc_bad[] = {
	{ "locator type", 3, 1, 0x00, -ENOTSUP },
	{ "no entries", 18, 2, 0, -EUCLEAN },
	{ "300 entries", 18, 2, 300, -EUCLEAN },
	{ "more entries than bytes", 18, 2, 200, -EUCLEAN },
	{ "key past the end", 20, 4, 5000, -EUCLEAN },
	{ "value offset wraps", 24, 4, 0xfffffff0u, -EUCLEAN },
	{ "odd value length", 30, 2, 77, -EUCLEAN },
	{ "empty key", 28, 2, 0, -EUCLEAN },
	{ "value past the end", 30, 2, 0xfffe, -EUCLEAN },
	{ "lone surrogate in a value", 0, 0, 0, -EUCLEAN },
};

START_TEST(locator_rejects_corruption)
{
	uint8_t buf[1024];
	struct vhdx_locator loc;
	size_t len;

	setup();
	len = mk_locator(buf, sizeof(buf), loc_good, ARRAY_SIZE(loc_good));
	for (unsigned k = 0; k < loc_bad[_i].len; k++)
		buf[loc_bad[_i].off + k] = (uint8_t)(loc_bad[_i].val >> (8 * k));
	if (!loc_bad[_i].len)	/* relative_path's first unit */
		put_le16(buf + get_le32(buf + 20 + 24 + 4), 0xd800);
	ck_assert_msg(vhdx_locator_decode("l", buf, len, &loc) ==
		      loc_bad[_i].err, "%s", loc_bad[_i].what);
	ck_assert_uint_eq(nerrors, 1);
	ck_assert_int_eq(vhdx_locator_decode("l", buf, 19, &loc), -EUCLEAN);
}
END_TEST

/* libvhdi's fragments: the file identifier probes, the locator header
 * names the VHDX locator type (cut short, it has no entries). */
START_TEST(libvhdi_fragments)
{
	char *p = fx_vector("libvhdi-structs/file_identifier.1");
	char *q = fx_vector("libvhdi-structs/parent_locator_header.1");
	struct img_probe pr = { .path = "x" };
	struct vhdx_locator loc;
	uint8_t *b;
	size_t len;

	setup();
	if (!p || !q)
		return;
	b = fx_read_file(p, &len);
	pr.head = b;
	pr.head_len = len;
	pr.file_size = 4 * MiB;
	ck_assert_int_eq(vhdx_driver.probe(&pr), 100);
	b[7] = 'E';
	ck_assert_int_eq(vhdx_driver.probe(&pr), 0);
	free(b);
	b = fx_read_file(q, &len);
	ck_assert_uint_eq(len, 20);
	ck_assert_int_eq(vhdx_locator_decode("l", b, len, &loc), -EUCLEAN);
	ck_assert_msg(strstr(last_err, "entry count (5)"), "%s", last_err);
	free(b);
	free(p);
	free(q);
}
END_TEST

/* ---- the log (2.3), on logs built here in memory ---- */

struct tdesc {
	char kind;		/* 'd' data sector, 'z' zero run */
	uint64_t off, len;	/* len: zero runs only */
	uint8_t fill;		/* the data sector's bytes */
};

#define LOG_LEN MiB
#define LOG_OFF MiB
#define FILE_LEN (8 * MiB)

/* One log entry; returns its length.  The data sector of a 'd' holds
 * fill in every byte (the first 8 and last 4 go to the descriptor). */
static size_t t_entry(uint8_t *out, uint64_t seq, uint32_t tail,
		      const struct guid *g, const struct tdesc *d, unsigned n)
{
	size_t dsec = (64 + 32 * n + 4095) / 4096, ndata = 0, len;

	for (unsigned j = 0; j < n; j++)
		ndata += d[j].kind == 'd';
	len = (dsec + ndata) * 4096;
	memset(out, 0, len);
	memcpy(out, "loge", 4);
	put_le32(out + 8, (uint32_t)len);
	put_le32(out + 12, tail);
	put_le64(out + 16, seq);
	put_le32(out + 24, n);
	guid_to_le(g, out + 32);
	put_le64(out + 48, FILE_LEN);		/* FlushedFileOffset */
	put_le64(out + 56, FILE_LEN);		/* LastFileOffset */
	for (unsigned j = 0, di = 0; j < n; j++) {
		uint8_t *p = out + 64 + 32 * j, *q;

		memcpy(p, d[j].kind == 'z' ? "zero" : "desc", 4);
		put_le64(p + 16, d[j].off);
		put_le64(p + 24, seq);
		if (d[j].kind == 'z') {
			put_le64(p + 8, d[j].len);
			continue;
		}
		memset(p + 4, d[j].fill, 12);	/* trailing, leading */
		q = out + (dsec + di++) * 4096;
		memcpy(q, "data", 4);
		put_le32(q + 4, (uint32_t)(seq >> 32));
		memset(q + 8, d[j].fill, 4084);
		put_le32(q + 4092, (uint32_t)seq);
	}
	fix_crc(out, len, 4);
	return len;
}

/* Copy an entry into the circular log at byte pos; returns the end. */
static size_t t_put(uint8_t *log, size_t pos, const uint8_t *e, size_t len)
{
	for (size_t k = 0; k < len; k += 4096) {
		memcpy(log + pos, e + k, 4096);
		pos = (pos + 4096) % LOG_LEN;
	}
	return pos;
}

/* What the overlay holds at off: the fill byte, 0 for zeros, -1 none. */
static int t_at(const struct vhdx_overlay *ov, uint64_t off)
{
	uint8_t b = 0x99;

	if (!vhdx_overlay_touches(ov, off, 1))
		return -1;
	vhdx_overlay_apply(ov, &b, 1, off);
	return b;
}

static const struct {
	const char *what;
	int err;
	unsigned entries;
} logc[] = {
	{ "one entry, its own tail", 0, 1 },
	{ "three entries wrapping the end", 0, 3 },
	{ "newer sequence wins", 0, 1 },
	{ "later zero run over earlier data", 0, 2 },
	{ "torn entry after the head", 0, 1 },
	{ "entries of another log only", 0, 0 },
	{ "entry longer than the log", 0, 0 },
	{ "tail names no entry", -EUCLEAN, 0 },
	{ "checksum broken inside the sequence", -EBADMSG, 0 },
	{ "descriptor signature", -EUCLEAN, 0 },
	{ "descriptor sequence number", -EUCLEAN, 0 },
	{ "data sector signature", -EUCLEAN, 0 },
	{ "data sector sequence number", -EUCLEAN, 0 },
	{ "unaligned file offset", -EUCLEAN, 0 },
	{ "unaligned zero length", -EUCLEAN, 0 },
	{ "descriptor over the headers", -EUCLEAN, 0 },
	{ "descriptor over the log", -EUCLEAN, 0 },
	{ "descriptor past any file", -EUCLEAN, 0 },
	{ "file shorter than flushed", -EUCLEAN, 0 },
	{ "last file offset absurd", -EUCLEAN, 0 },
	{ "more data descriptors than sectors", -EUCLEAN, 0 },
};

START_TEST(log_build_cases)
{
	uint8_t *log = calloc(1, LOG_LEN), *e = malloc(64 * 4096);
	struct tdesc d[3] = { { 'd', 4 * MiB, 0, 0xa1 },
			      { 'z', 5 * MiB, 8192, 0 },
			      { 'd', 5 * MiB + 4096, 0, 0xb2 } };
	struct vhdx_overlay ov = { 0 };
	struct guid g, other;
	size_t len, pos;
	int r;

	setup();
	fx_fill_random(g.b, 16, 11);
	fx_fill_random(other.b, 16, 12);
	switch (_i) {
	case 0:
		t_put(log, 8192, e, t_entry(e, 7, 8192, &g, d, 3));
		break;
	case 1:	/* tail at the last sector; entries wrap to the start */
		pos = LOG_LEN - 4096;
		pos = t_put(log, pos, e, t_entry(e, 100, LOG_LEN - 4096, &g,
						 d, 1));
		pos = t_put(log, pos, e, t_entry(e, 101, LOG_LEN - 4096, &g,
						 d + 1, 1));
		t_put(log, pos, e, t_entry(e, 102, LOG_LEN - 4096, &g, d + 2,
					   1));
		break;
	case 2:	/* an older flushed sequence, then a newer one */
		t_put(log, 0, e, t_entry(e, 5, 0, &g, d, 1));
		d[0].fill = 0xc3;
		t_put(log, 65536, e, t_entry(e, 9, 65536, &g, d, 1));
		break;
	case 3:
		d[1].off = 4 * MiB;
		pos = t_put(log, 0, e, t_entry(e, 3, 0, &g, d, 1));
		t_put(log, pos, e, t_entry(e, 4, 0, &g, d + 1, 1));
		break;
	case 4:
		pos = t_put(log, 0, e, t_entry(e, 3, 0, &g, d, 1));
		len = t_entry(e, 4, 0, &g, d + 2, 1);
		e[5000] ^= 1;
		t_put(log, pos, e, len);
		break;
	case 5:
		t_put(log, 0, e, t_entry(e, 3, 0, &other, d, 1));
		break;
	case 6:
		len = t_entry(e, 3, 0, &g, d, 1);
		put_le32(e + 8, 2 * MiB);
		fix_crc(e, len, 4);
		t_put(log, 0, e, len);
		break;
	case 7:
		t_put(log, 0, e, t_entry(e, 3, 40960, &g, d, 1));
		break;
	case 8:
		len = t_entry(e, 3, 0, &g, d, 1);
		e[len - 7] ^= 1;
		pos = t_put(log, 0, e, len);
		t_put(log, pos, e, t_entry(e, 4, 0, &g, d + 1, 1));
		break;
	default:
		len = t_entry(e, 3, 0, &g, d, 1);
		if (_i == 9)
			e[64] = 'x';
		else if (_i == 10)
			put_le64(e + 64 + 24, 4);
		else if (_i == 11)
			e[4096] = 'x';
		else if (_i == 12)
			put_le32(e + 4096 + 4092, 5);
		else if (_i == 13)
			put_le64(e + 64 + 16, 4 * MiB + 512);
		else if (_i == 14)
			len = t_entry(e, 3, 0, &g, (struct tdesc[]){
				{ 'z', 4 * MiB, 1000, 0 } }, 1);
		else if (_i == 15)
			put_le64(e + 64 + 16, 128 * KiB);
		else if (_i == 16)
			put_le64(e + 64 + 16, LOG_OFF + 8192);
		else if (_i == 17)
			put_le64(e + 64 + 16, 1ull << 62);
		else if (_i == 18)
			put_le64(e + 48, FILE_LEN + MiB);
		else if (_i == 19)
			put_le64(e + 56, 1ull << 60);
		else if (_i == 20) {	/* one data descriptor, no sector */
			put_le32(e + 8, 4096);
			len = 4096;
		}
		fix_crc(e, len, 4);
		t_put(log, 0, e, len);
		break;
	}
	r = vhdx_log_build("log", log, LOG_LEN, LOG_OFF, &g, FILE_LEN, &ov);
	ck_assert_msg(r == logc[_i].err, "%s: %d (%s)", logc[_i].what, r,
		      last_err);
	ck_assert_uint_eq(nerrors, r ? 1 : 0);
	ck_assert_uint_eq(ov.entries, logc[_i].entries);
	if (_i == 0) {
		ck_assert_int_eq(t_at(&ov, 4 * MiB), 0xa1);
		ck_assert_int_eq(t_at(&ov, 4 * MiB + 4095), 0xa1);
		ck_assert_int_eq(t_at(&ov, 4 * MiB + 4096), -1);
		ck_assert_int_eq(t_at(&ov, 5 * MiB), 0);
		ck_assert_int_eq(t_at(&ov, 5 * MiB + 4096), 0xb2);
		ck_assert_int_eq(t_at(&ov, 5 * MiB + 8191), 0xb2);
		ck_assert_int_eq(t_at(&ov, 5 * MiB + 8192), -1);
		ck_assert_uint_eq(ov.end, FILE_LEN);
	} else if (_i == 1) {
		ck_assert_int_eq(t_at(&ov, 4 * MiB + 100), 0xa1);
		ck_assert_int_eq(t_at(&ov, 5 * MiB + 100), 0);
		ck_assert_int_eq(t_at(&ov, 5 * MiB + 4196), 0xb2);
	} else if (_i == 2) {
		ck_assert_int_eq(t_at(&ov, 4 * MiB), 0xc3);
	} else if (_i == 3 || _i == 4) {
		ck_assert_int_eq(t_at(&ov, 4 * MiB), _i == 3 ? 0 : 0xa1);
	}
	vhdx_overlay_free(&ov);
	free(log);
	free(e);
}
END_TEST

/* ---- images made by qemu-img, compared with qemu-img convert ---- */

static const struct {
	const char *fmt;	/* subformat */
	unsigned block_mib;
	uint64_t size;
	const char *zero;	/* block_state_zero */
} qemu_imgs[] = {
	{ "dynamic", 1, 13 * MiB + 3 * 512, "on" },
	{ "dynamic", 8, 21 * MiB + 4096, "off" },
	{ "fixed", 1, 5 * MiB + 512, "on" },
	{ "fixed", 32, 40 * MiB + 512, "on" },
	{ "dynamic", 32, 70 * MiB, "on" },
	{ "dynamic", 256, 300 * MiB + 1024, "on" },
	{ "fixed", 256, 257 * MiB, "off" },
};

START_TEST(qemu_images_match)
{
	char *raw = fx_path("in.raw"), *vhdx = fx_path("q.vhdx");
	char *oracle = fx_path("oracle.raw");
	uint64_t size = qemu_imgs[_i].size, bs = qemu_imgs[_i].block_mib * MiB;
	uint8_t *buf = malloc(MiB + 4096);
	struct img *img;

	setup();
	if (!have("qemu-img"))
		return;
	/* data at the start, across a block boundary, a run of written
	 * zeros, and the last sector */
	ck_assert_int_eq(truncate(raw, 0) == 0 || errno == ENOENT, 1);
	fx_fill_random(buf, MiB + 4096, (uint32_t)_i + 1);
	fx_pwrite(raw, buf, 65536 + 512, 0);
	fx_pwrite(raw, buf + 7, MiB, bs - 4096);
	memset(buf, 0, 8192);
	fx_pwrite(raw, buf, 8192, MIN(3 * bs, size - 8192));
	fx_fill_random(buf, 512, 99);
	fx_pwrite(raw, buf, 512, size - 512);
	ck_assert_int_eq(truncate(raw, (off_t)size), 0);
	ck_assert_int_eq(fx_system("qemu-img convert -q -f raw -O vhdx -o "
				   "subformat=%s,block_size=%uM,"
				   "block_state_zero=%s '%s' '%s'",
				   qemu_imgs[_i].fmt, qemu_imgs[_i].block_mib,
				   qemu_imgs[_i].zero, raw, vhdx), 0);
	run("qemu-img convert -q -f vhdx -O raw '%s' '%s'", vhdx, oracle);
	img = open_ok(vhdx);
	ck_assert_uint_eq(img->size, size);
	ck_assert_uint_eq(img->block_size, bs);
	ck_assert_uint_eq(img->sector_size, 512);
	ck_assert_str_eq(img->subtype, qemu_imgs[_i].fmt);
	ck_assert(img->has_id);
	check_flat(&img, 1, oracle);
	check_flat(&img, 1, raw);
	img_unref(img);
	ck_assert_uint_eq(nerrors, 0);
	free(buf);
	free(raw);
	free(vhdx);
	free(oracle);
}
END_TEST

/* ---- real images with recorded sums (../shared/vectors) ---- */

static const struct {
	const char *rel, *tool, *sha, *subtype;
	uint32_t block_size, lss, pss;
} real[] = {
	{ "dissect.hypervisor/fixed.vhdx.gz", "gzip",
	  "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62",
	  "fixed", 2 << 20, 512, 4096 },
	{ "dissect.hypervisor/dynamic.vhdx.gz", "gzip",
	  "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac",
	  "dynamic", 32 << 20, 512, 4096 },
	{ "qemu-iotests/iotest-dynamic-1G.vhdx.bz2", "bzip2",
	  "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478",
	  "dynamic", 32 << 20, 512, 4096 },
	{ "qemu-iotests/test-disk2vhd.vhdx.bz2", "bzip2",
	  "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a",
	  "dynamic", 2 << 20, 512, 512 },
};

START_TEST(real_vectors_sum)
{
	char *path = vector(real[_i].rel, real[_i].tool, "real.vhdx");
	char sum[65];
	struct img *img;

	setup();
	if (!path)
		return;
	img = open_ok(path);
	ck_assert_str_eq(img->subtype, real[_i].subtype);
	ck_assert_uint_eq(img->block_size, real[_i].block_size);
	ck_assert_uint_eq(img->sector_size, real[_i].lss);
	ck_assert_uint_eq(img->phys_sector_size, real[_i].pss);
	ck_assert_int_eq(img->drv->parent(img, NULL), 0);
	flat_sha(img, sum);
	ck_assert_str_eq(sum, real[_i].sha);
	ck_assert_uint_eq(nerrors, 0);
	ck_assert_str_eq(last_info, "");	/* stale log entries ignored */
	img_unref(img);
	free(path);
}
END_TEST

/* qemu's dirty-log sample: 10 GiB; the log adds the 18th block of 0xa5.
 * The whole sum (179cefe8...) is for an integration test. */
START_TEST(real_dirty_log_replayed)
{
	char *path = vector("qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
			    "bzip2", "dirty.vhdx");
	uint8_t *before, *after, *buf;
	size_t len, len2;
	struct img_extent e;
	struct img *img;

	setup();
	if (!path)
		return;
	before = fx_read_file(path, &len);
	img = open_ok(path);
	ck_assert_msg(strstr(last_info, "replayed 1 log entries in memory "
				       "(file not modified)"), "%s", last_info);
	ck_assert_uint_eq(img->size, 10ull << 30);
	buf = malloc(20 * MiB);
	read_layers(&img, 1, buf, 0, 20 * MiB);
	for (size_t i = 0; i < 18 * MiB; i++)
		if (buf[i] != 0xa5)
			ck_abort_msg("byte %zu is 0x%02x", i, buf[i]);
	ck_assert_msg(all_zero(buf + 18 * MiB, 2 * MiB), "zeros after 18 MiB");
	/* the stale file (log ignored) has only 17 blocks: block 17 comes
	 * from the replayed BAT */
	ck_assert_int_eq(img_map(img, 17 * MiB, MiB, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_int_eq(img_map(img, 18 * MiB, MiB, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	read_layers(&img, 1, buf, 5ull << 30, MiB);
	read_layers(&img, 1, buf + MiB, (10ull << 30) - MiB, MiB);
	ck_assert_msg(all_zero(buf, 2 * MiB), "zeros at 5 GiB and the end");
	img_unref(img);
	after = fx_read_file(path, &len2);
	ck_assert_uint_eq(len, len2);
	ck_assert_mem_eq(before, after, len);	/* never written */
	ck_assert_uint_eq(nerrors, 0);
	free(before);
	free(after);
	free(buf);
	free(path);
}
END_TEST

/* A Hyper-V checkpoint whose parent is not shipped: the locator and the
 * partially present blocks. */
START_TEST(real_differencing_avhdx)
{
	char *path = vector("dissect.hypervisor/differencing.avhdx.gz", "gzip",
			    "Generation 1 child.avhdx");
	struct img_parent p;
	struct guid want;
	uint64_t data = 0, runs = 0;
	struct img *img;

	setup();
	if (!path)
		return;
	img = open_ok(path);
	ck_assert_str_eq(img->subtype, "differencing");
	ck_assert_uint_eq(img->size, 8ull << 30);
	ck_assert_int_eq(img->drv->parent(img, &p), 1);
	ck_assert_int_eq(p.id_kind, IMG_ID_VHDX_LINKAGE);
	ck_assert_int_eq(guid_parse("ff34003b-11ed-4cf8-a166-b2be05e20b80",
				    &want), 0);
	ck_assert(guid_equal(&p.id, &want));
	ck_assert(!p.has_id2);	/* Hyper-V wrote a zero parent_linkage2 */
	ck_assert_uint_eq(p.nrefs, 3);
	ck_assert_str_eq(p.refs[0].what, "relative_path");
	ck_assert_int_eq(p.refs[0].kind, IMG_REF_RELATIVE);
	ck_assert_str_eq(p.refs[1].what, "absolute_win32_path");
	ck_assert_int_eq(p.refs[1].kind, IMG_REF_ABSOLUTE);
	ck_assert_str_eq(p.refs[2].what, "volume_path");
	ck_assert_int_eq(p.refs[2].kind, IMG_REF_ABSOLUTE);
	for (unsigned i = 0; i < 3; i++)
		ck_assert_msg(strstr(p.refs[i].path, "Generation 1_49C4BAF3-"
				     "4B25-4406-8C4B-D39E65C32385.avhdx"),
			      "%s", p.refs[i].path);
	ck_assert_ptr_null(p.format);
	img_parent_clear(&p);
	/* Walk the map: partial blocks give sector-aligned runs, here or
	 * in the parent, never zeros. */
	for (uint64_t off = 0; off < img->size;) {
		struct img_extent e;

		ck_assert_int_eq(img_map(img, off, 1ull << 40, &e), 0);
		ck_assert_int_ne(e.type, IMG_EXT_ZERO);
		if (e.type == IMG_EXT_DATA) {
			ck_assert_uint_eq(off % 512, 0);
			ck_assert_uint_eq(e.len % 512, 0);
			ck_assert_uint_ne(e.host_off, IMG_HOST_NONE);
			data += e.len;
			runs++;
		}
		off += e.len;
	}
	ck_assert_uint_gt(runs, 32);
	ck_assert_uint_lt(data, 64ull * 2 * MiB);
	img_unref(img);
	ck_assert_uint_eq(nerrors, 0);
	free(path);
}
END_TEST

/* ---- chains written by mkvhdx.py ---- */

static const struct {
	unsigned depth, lss, block_mib;
	const char *size, *flags;
} chains[] = {
	{ 5, 512, 1, "8404992", "" },
	{ 5, 4096, 1, "8404992", "--upper-guid" },
	{ 3, 512, 2, "20m", "--fixed --stale-log" },
	{ 2, 4096, 32, "70m", "--undefined" },
	{ 3, 512, 1, "8404992", "--undefined --plain" },
	{ 6, 512, 4, "9m", "--stale-log" },
	{ 3, 512, 1, "4104m", "" },	/* two chunks: two bitmap blocks */
	{ 2, 4096, 16, "32800m", "--undefined" },
};

START_TEST(mkvhdx_chain_layers)
{
	char *dir = fx_path("chain"), *p;
	struct img *l[8];
	unsigned depth = chains[_i].depth;

	setup();
	ck_assert_int_eq(fx_system("python3 '%s' chain '%s' --depth %u --lss "
				   "%u --block-mib %u --size %s --seed %d %s "
				   ">/dev/null", MKVHDX, dir, depth,
				   chains[_i].lss, chains[_i].block_mib,
				   chains[_i].size, 40 + _i, chains[_i].flags),
			 0);
	for (unsigned k = 0; k <= depth; k++) {
		ck_assert_int_ge(asprintf(&p, "%s/d%u.vhdx", dir, k), 0);
		l[depth - k] = open_ok(p);	/* l[0] is the top */
		free(p);
	}
	for (unsigned k = 0; k <= depth; k++) {
		struct img *img = l[depth - k];
		struct img_parent par;
		char *raw, want[32];

		ck_assert_uint_eq(img->sector_size, chains[_i].lss);
		ck_assert_uint_eq(img->block_size, chains[_i].block_mib * MiB);
		ck_assert_int_ge(asprintf(&raw, "%s/d%u.vhdx.raw", dir, k), 0);
		/* layer k over everything below it */
		check_flat(&l[depth - k], k + 1, raw);
		if (have("7zz") && img->size < 256 * MiB)	/* the generator's
								 * own check */
			ck_assert_int_eq(fx_system("7zz e -so '%s/d%u.vhdx' "
						   "2>/dev/null | cmp -s - "
						   "'%s'", dir, k, raw), 0);
		free(raw);
		if (k == 0) {
			ck_assert_int_eq(img->drv->parent(img, &par), 0);
			ck_assert_str_eq(img->subtype,
					 strstr(chains[_i].flags, "--fixed") ?
					 "fixed" : "dynamic");
			continue;
		}
		ck_assert_str_eq(img->subtype, "differencing");
		ck_assert_int_eq(img->drv->parent(img, &par), 1);
		ck_assert_int_eq(par.id_kind, IMG_ID_VHDX_LINKAGE);
		ck_assert(guid_equal(&par.id, &l[depth - k + 1]->id));
		ck_assert_uint_eq(par.nrefs, 3);
		snprintf(want, sizeof(want), ".\\d%u.vhdx", k - 1);
		ck_assert_str_eq(par.refs[0].path, want);
		ck_assert_int_eq(par.refs[0].kind, IMG_REF_RELATIVE);
		snprintf(want, sizeof(want), "C:\\images\\d%u.vhdx", k - 1);
		ck_assert_str_eq(par.refs[1].path, want);
		ck_assert_str_eq(par.refs[2].what, "volume_path");
		img_parent_clear(&par);
	}
	for (unsigned k = 0; k <= depth; k++)
		img_unref(l[k]);
	ck_assert_uint_eq(nerrors, 0);
	free(dir);
}
END_TEST

/* The whole chain through the chain layer (parents found by locator and
 * checked by linkage GUID), read with chain_pread. */
START_TEST(mkvhdx_chain_open_file)
{
	char *dir = fx_path("cof"), *top, *raw;
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	uint8_t *want, *buf;
	size_t len;
	int r;

	setup();
	ck_assert_int_eq(fx_system("python3 '%s' chain '%s' --depth 5 --seed 77 "
				   "--upper-guid >/dev/null", MKVHDX, dir), 0);
	ck_assert_int_ge(asprintf(&top, "%s/d5.vhdx", dir), 0);
	ck_assert_int_ge(asprintf(&raw, "%s/d5.vhdx.raw", dir), 0);
	r = chain_open_file(top, dir, &o, &c);
	if (r == -ENOSYS || r == -EOPNOTSUPP)	/* not written yet */
		goto out;
	ck_assert_msg(r == 0, "chain_open_file: %d (%s)", r, last_err);
	ck_assert_uint_eq(c->depth, 6);
	for (unsigned i = 1; i < c->depth; i++)
		ck_assert_int_eq(c->layers[i - 1].id_check, 1);
	want = fx_read_file(raw, &len);
	ck_assert_uint_eq(c->size, len);
	buf = malloc(len);
	ck_assert_int_eq(chain_pread(c, buf, len, 0), 0);
	ck_assert_mem_eq(buf, want, len);
	free(buf);
	free(want);
	chain_free(c);
out:
	free(top);
	free(raw);
	free(dir);
}
END_TEST

/* A mixed chain: a VHDX child (mkvhdx.py) over a dynamic VHD made by
 * qemu-img, found through its locator and checked by the VHD's UUID as
 * parent_linkage.  Needs the VHD driver. */
START_TEST(mixed_vhdx_over_vhd)
{
	char *raw = fx_path("in.raw"), *vhd = fx_path("base.vhd");
	char *praw = fx_path("base.raw"), *child = fx_path("child.vhdx");
	char *want = fx_path("child.vhdx.raw"), id[GUID_STR_LEN + 1];
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	struct img *base;
	uint8_t *buf = malloc(2 * MiB), *exp;
	size_t len;

	setup();
	if (!have("qemu-img"))
		return;
	fx_fill_random(buf, 2 * MiB, 3);
	fx_pwrite(raw, buf, 2 * MiB, 0);
	fx_pwrite(raw, buf, MiB + 512, 9 * MiB - 512);
	ck_assert_int_eq(truncate(raw, 16 * MiB), 0);
	run("qemu-img convert -q -f raw -O vpc -o subformat=dynamic,"
	    "force_size=on '%s' '%s'", raw, vhd);
	run("qemu-img convert -q -f vpc -O raw '%s' '%s'", vhd, praw);
	if (img_open(vhd, NULL, false, &base) < 0 ||
	    strcmp(base->drv->name, "vhd") != 0)
		return;	/* no VHD driver yet: nothing to chain to */
	ck_assert(base->has_id);
	guid_to_str(&base->id, id);
	img_unref(base);
	ck_assert_int_eq(fx_system("python3 '%s' child '%s' --parent-raw '%s' "
				   "--parent-name base.vhd --parent-id %s "
				   "--seed 8", MKVHDX, child, praw, id), 0);
	ck_assert_msg(chain_open_file(child, fx_tmpdir(), &o, &c) == 0, "%s",
		      last_err);
	ck_assert_uint_eq(c->depth, 2);
	ck_assert_str_eq(c->layers[1].img->drv->name, "vhd");
	ck_assert_int_eq(c->layers[0].id_check, 1);
	exp = fx_read_file(want, &len);
	ck_assert_uint_eq(len, 16 * MiB);
	free(buf);
	buf = malloc(len);
	ck_assert_int_eq(chain_pread(c, buf, len, 0), 0);
	ck_assert_mem_eq(buf, exp, len);
	chain_free(c);
	free(exp);
	free(buf);
	free(raw);
	free(vhd);
	free(praw);
	free(child);
	free(want);
}
END_TEST

/* A mixed chain: a qcow2 overlay (qemu-img, backing format vhdx) over a
 * differencing VHDX chain; qemu-img convert of the overlay reads only
 * the overlay and its VHDX base, so the base here is a plain VHDX.
 * Needs the qcow2 driver. */
START_TEST(mixed_qcow2_over_vhdx)
{
	char *dir = fx_path("q2"), *base, *top, *oracle = fx_path("o.raw");
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	uint8_t *buf, *exp;
	struct img *probe;
	size_t len;

	setup();
	if (!have("qemu-img") || !have("qemu-io"))
		return;
	ck_assert_int_eq(fx_system("python3 '%s' chain '%s' --depth 0 --seed 4 "
				   ">/dev/null", MKVHDX, dir), 0);
	ck_assert_int_ge(asprintf(&base, "%s/d0.vhdx", dir), 0);
	ck_assert_int_ge(asprintf(&top, "%s/top.qcow2", dir), 0);
	run("qemu-img create -q -f qcow2 -b d0.vhdx -F vhdx '%s'%s", top, "");
	run("qemu-io -f qcow2 -c 'write -P 0x5a 1000k 300k' -c 'write -z 3M "
	    "1M' -c 'write -P 0x11 8M 8k' '%s' >/dev/null%s", top, "");
	run("qemu-img convert -q -f qcow2 -O raw '%s' '%s'", top, oracle);
	if (img_open(top, NULL, false, &probe) < 0)
		return;	/* no qcow2 driver yet */
	img_unref(probe);
	ck_assert_msg(chain_open_file(top, dir, &o, &c) == 0, "%s", last_err);
	ck_assert_uint_eq(c->depth, 2);
	ck_assert_str_eq(c->layers[1].img->drv->name, "vhdx");
	exp = fx_read_file(oracle, &len);
	ck_assert_uint_eq(c->size, len);
	buf = malloc(len);
	ck_assert_int_eq(chain_pread(c, buf, len, 0), 0);
	ck_assert_mem_eq(buf, exp, len);
	chain_free(c);
	free(exp);
	free(buf);
	free(base);
	free(top);
	free(oracle);
	free(dir);
}
END_TEST

/* ---- dirty logs written by mkvhdx.py ---- */

static const struct {
	const char *kind;
	bool wrap;
	const char *torn;
	unsigned lss;
	int err;
	unsigned entries;	/* replayed */
} dirty[] = {
	{ "bat", false, "none", 512, 0, 1 },
	{ "data", false, "none", 512, 0, 2 },
	{ "extend", false, "none", 4096, 0, 1 },
	{ "all", false, "none", 512, 0, 4 },
	{ "all", true, "none", 4096, 0, 4 },
	{ "data", true, "none", 512, 0, 2 },
	{ "all", false, "after", 512, 0, 4 },
	{ "all", true, "only", 512, 0, 0 },
	{ "all", false, "middle", 512, -EBADMSG, 0 },
	{ "data", true, "middle", 512, -EBADMSG, 0 },
};

START_TEST(mkvhdx_dirty_log)
{
	char *path = fx_path("dirty.vhdx"), *raw = fx_path("dirty.vhdx.raw");
	uint8_t *before, *after;
	size_t len, len2;
	struct img *img = NULL;
	char want[80];
	int r;

	setup();
	ck_assert_int_eq(fx_system("python3 '%s' dirtylog '%s' --kind %s %s "
				   "--torn %s --lss %u --seed %d", MKVHDX, path,
				   dirty[_i].kind, dirty[_i].wrap ? "--wrap" : "",
				   dirty[_i].torn, dirty[_i].lss, _i + 3), 0);
	before = fx_read_file(path, &len);
	r = img_open(path, NULL, false, &img);
	ck_assert_msg(r == dirty[_i].err, "%d: %s", r, last_err);
	if (r == 0) {
		ck_assert_uint_eq(nerrors, 0);
		if (dirty[_i].entries) {
			snprintf(want, sizeof(want), "replayed %u log entries "
				 "in memory (file not modified)",
				 dirty[_i].entries);
			ck_assert_msg(strstr(last_info, want), "%s", last_info);
		} else {
			ck_assert_str_eq(last_info, "");
		}
		check_flat(&img, 1, raw);
		img_unref(img);
	} else {
		ck_assert_uint_eq(nerrors, 1);
		ck_assert_msg(strstr(last_err, "checksum mismatch"), "%s",
			      last_err);
	}
	after = fx_read_file(path, &len2);
	ck_assert_uint_eq(len, len2);
	ck_assert_mem_eq(before, after, len);
	/* qemu replays by writing the file; for a log that does not wrap
	 * (its search ignores the tail) it is a second oracle */
	if (!r && !dirty[_i].wrap && have("qemu-img") &&
	    (!strcmp(dirty[_i].kind, "bat") || !strcmp(dirty[_i].kind, "data"))) {
		char *q = fx_path("q.vhdx"), *qr = fx_path("q.raw");

		ck_assert_int_eq(fx_system("cp '%s' '%s' && qemu-img check -q "
					   "-r all -f vhdx '%s' >/dev/null "
					   "2>&1; true", path, q, q), 0);
		run("qemu-img convert -q -f vhdx -O raw '%s' '%s'", q, qr);
		run("cmp -s '%s' '%s'", qr, raw);
		free(q);
		free(qr);
	}
	free(before);
	free(after);
	free(path);
	free(raw);
}
END_TEST

/* ---- damaged files: one field each, one clear error ---- */

enum fixup { FIX_NONE, FIX_H1, FIX_RT, FIX_RT1 };

static const struct {
	const char *what;
	unsigned file;		/* d0 (base) or d1 (child), --plain */
	uint64_t off;
	uint8_t len;
	uint64_t val;
	enum fixup fix;
	int err;
	const char *msg;
} damage[] = {
	{ "not VHDX", 0, 7, 1, 'X', FIX_NONE, -EINVAL, "not a VHDX file" },
	{ "header version 2", 0, 64 * KiB + 66, 2, 2, FIX_H1, -ENOTSUP,
	  "unsupported version (2)" },
	{ "log version 1", 0, 64 * KiB + 64, 2, 1, FIX_H1, -ENOTSUP,
	  "log version" },
	{ "log past the end", 0, 64 * KiB + 72, 8, 1ull << 40, FIX_H1,
	  -EUCLEAN, "log lies past the end" },
	{ "both headers damaged", 0, 64 * KiB + 900, 1, 1, FIX_NONE, -EBADMSG,
	  "checksum mismatch" },
	{ "current header damaged: the other is used", 0, 64 * KiB + 900, 1,
	  2, FIX_NONE, 0, NULL },
	{ "first region table damaged: the second is used", 0,
	  192 * KiB + 100, 1, 1, FIX_NONE, 0, NULL },
	{ "both region tables damaged", 0, 192 * KiB + 100, 1, 3, FIX_NONE,
	  -EBADMSG, "region table checksum" },
	{ "BAT region past the end", 0, 192 * KiB + 32, 8, 1ull << 36, FIX_RT,
	  -EUCLEAN, "BAT region lies past the end" },
	{ "BAT region on the log", 0, 192 * KiB + 32, 8, MiB, FIX_RT, -EUCLEAN,
	  "overlaps the log" },
	{ "metadata region over BAT", 0, 192 * KiB + 64, 8, 3 * MiB, FIX_RT,
	  -EUCLEAN, "overlap" },
	{ "unknown required region", 0, 192 * KiB + 16, 1, 0x11, FIX_RT,
	  -ENOTSUP, "unknown required region" },
	{ "metadata signature", 0, 2 * MiB, 1, 'M', FIX_NONE, -EUCLEAN,
	  "metadata table signature" },
	{ "unknown required metadata", 0, 2 * MiB + 32 + 64, 1, 0x55, FIX_NONE,
	  -ENOTSUP, "unknown required metadata" },
	{ "block size 3 MiB", 0, 2 * MiB + 0x10000, 4, 3 * MiB, FIX_NONE,
	  -EUCLEAN, "bad block size (3145728)" },
	{ "logical sector 1024", 0, 2 * MiB + 0x10020, 4, 1024, FIX_NONE,
	  -EUCLEAN, "logical sector size (1024)" },
	{ "disk size over 64 TiB", 0, 2 * MiB + 0x10008, 8, 65ull << 40,
	  FIX_NONE, -EFBIG, "64 TiB" },
	{ "disk larger than the BAT", 0, 2 * MiB + 0x10008, 8, 1ull << 40,
	  FIX_NONE, -EUCLEAN, "BAT region too small" },
	{ "HasParent without a locator", 0, 2 * MiB + 0x10004, 4, 2, FIX_NONE,
	  -EUCLEAN, "without a parent locator" },
	{ "block state 4", 0, 3 * MiB, 8, 4, FIX_NONE, -EUCLEAN,
	  "reserved state" },
	{ "partial block in a base", 0, 3 * MiB, 8, 7 | (4ull << 20),
	  FIX_NONE, -EUCLEAN, "without a parent" },
	{ "block past the end", 0, 3 * MiB, 8, 6 | (4096ull << 20), FIX_NONE,
	  -EUCLEAN, "past the end of the file" },
	{ "block at offset 0", 0, 3 * MiB, 8, 6, FIX_NONE, -EUCLEAN,
	  "overlaps the file's metadata" },
	{ "block on the BAT", 0, 3 * MiB + 8, 8, 6 | (3ull << 20), FIX_NONE,
	  -EUCLEAN, "overlaps the file's metadata" },
	{ "zero block keeps a junk offset", 0, 3 * MiB, 8, 2 | (999ull << 20),
	  FIX_NONE, 0, NULL },
	{ "two blocks share their space", 0, 3 * MiB, 8, 6 | (4ull << 20),
	  FIX_NONE, -EUCLEAN, "shares its file space" },
	{ "sector bitmap missing", 1, 3 * MiB + 8 * 4096, 8, 0, FIX_NONE,
	  -EUCLEAN, "without a sector bitmap" },
	{ "sector bitmap state 3", 1, 3 * MiB + 8 * 4096, 8, 3, FIX_NONE,
	  -EUCLEAN, "reserved state in sector bitmap" },
	{ "sector bitmap past the end", 1, 3 * MiB + 8 * 4096, 8,
	  6 | (5000ull << 20), FIX_NONE, -EUCLEAN, "sector bitmap 0 lies past" },
	{ "locator type", 1, 2 * MiB + 0x10030, 1, 0, FIX_NONE, -ENOTSUP,
	  "unknown parent locator type" },
	{ "locator without linkage", 1, 2 * MiB + 0x10030 + 20 + 8, 2, 2,
	  FIX_NONE, -EUCLEAN, "parent_linkage" },
};

/* The pair every damaged_files case starts from, made once (in the
 * runner, before the cases fork) in a directory of its own. */
static char dmg_dir[256];

static void dmg_setup(void)
{
	const char *t = getenv("TMPDIR");
	char cmd[600];

	snprintf(dmg_dir, sizeof(dmg_dir), "%s/vhdx-dmg-XXXXXX", t ? t : "/tmp");
	if (!mkdtemp(dmg_dir))
		abort();
	snprintf(cmd, sizeof(cmd), "python3 '%s' chain '%s' --depth 1 --plain "
		 "--seed 12 >/dev/null", MKVHDX, dmg_dir);
	if (system(cmd) != 0)
		dmg_dir[0] = '\0';	/* the cases fail on the missing files */
}

static void dmg_teardown(void)
{
	char cmd[300];

	if (dmg_dir[0] && !getenv("FX_KEEP")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dmg_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dmg_dir);
	}
}

START_TEST(damaged_files)
{
	char *src, *path;
	struct img *img = NULL;
	uint8_t buf[64 * KiB];
	int fd, r;

	setup();
	ck_assert_msg(dmg_dir[0], "mkvhdx.py failed");
	ck_assert_int_ge(asprintf(&src, "%s/d%u.vhdx", dmg_dir,
				  damage[_i].file), 0);
	path = fx_path("damaged.vhdx");
	run("cp '%s' '%s'", src, path);
	fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	for (unsigned k = 0; k < damage[_i].len; k++) {
		uint8_t b = (uint8_t)(damage[_i].val >> (8 * k));

		ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)damage[_i].off + k),
				 1);
	}
	if (!strcmp(damage[_i].what, "two blocks share their space"))
		ck_assert_int_eq(pwrite_full(fd, "\x06\0\x40\0\0\0\0\0", 8,
					     3 * MiB + 8), 0);
	if (!strcmp(damage[_i].what, "both headers damaged") ||
	    !strcmp(damage[_i].what, "both region tables damaged")) {
		uint64_t other = damage[_i].off + 64 * KiB;

		ck_assert_int_eq(pwrite(fd, "\x01", 1, (off_t)other), 1);
	}
	if (damage[_i].fix == FIX_H1) {
		ck_assert_int_eq(pread_full(fd, buf, 4096, 64 * KiB), 0);
		fix_crc(buf, 4096, 4);
		ck_assert_int_eq(pwrite_full(fd, buf, 4096, 64 * KiB), 0);
	}
	if (damage[_i].fix == FIX_RT) {	/* both copies, as a writer would */
		ck_assert_int_eq(pread_full(fd, buf, sizeof(buf), 192 * KiB), 0);
		fix_crc(buf, sizeof(buf), 4);
		ck_assert_int_eq(pwrite_full(fd, buf, sizeof(buf), 192 * KiB), 0);
		ck_assert_int_eq(pwrite_full(fd, buf, sizeof(buf), 256 * KiB), 0);
	}
	close(fd);
	r = img_open(path, &vhdx_driver, false, &img);
	ck_assert_msg(r == damage[_i].err, "%s: %d (%s)", damage[_i].what, r,
		      last_err);
	if (r == 0 && damage[_i].off == 3 * MiB) {
		struct img_extent e;	/* the offset is not looked at */

		ck_assert_int_eq(img_map(img, 0, MiB, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_ZERO);
		img_unref(img);
	} else if (r == 0) {
		char *raw;

		ck_assert_int_ge(asprintf(&raw, "%s.raw", src), 0);
		check_flat(&img, 1, raw);	/* the same content */
		img_unref(img);
		free(raw);
	} else {
		/* one line: "vhdx: <path>: <problem> (<value>)" */
		ck_assert_uint_eq(nerrors, 1);
		ck_assert_msg(!strncmp(last_err, "vhdx: ", 6) &&
			      strstr(last_err, path) &&
			      strstr(last_err, damage[_i].msg),
			      "%s: %s", damage[_i].what, last_err);
	}
	free(src);
	free(path);
}
END_TEST

START_TEST(truncated_files)
{
	char *dir = fx_path("trunc"), *path;
	struct img *img;
	struct stat st;

	setup();
	ck_assert_int_eq(fx_system("python3 '%s' chain '%s' --depth 0 --plain "
				   "--seed 5 --fixed >/dev/null", MKVHDX, dir),
			 0);
	ck_assert_int_ge(asprintf(&path, "%s/d0.vhdx", dir), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	/* the last block is cut off */
	ck_assert_int_eq(truncate(path, st.st_size - (off_t)MiB + 4096), 0);
	ck_assert_int_eq(img_open(path, NULL, false, &img), -EUCLEAN);
	ck_assert_msg(strstr(last_err, "past the end of the file"), "%s",
		      last_err);
	/* only the header section is left */
	ck_assert_int_eq(truncate(path, 512 * KiB), 0);
	ck_assert_int_eq(img_open(path, NULL, false, &img), -EUCLEAN);
	ck_assert_msg(strstr(last_err, "shorter than the header section"),
		      "%s", last_err);
	ck_assert_int_eq(truncate(path, 8), 0);
	ck_assert_int_eq(img_open(path, &vhdx_driver, false, &img), -EUCLEAN);
	ck_assert_uint_eq(nerrors, 3);
	free(path);
	free(dir);
}
END_TEST

/* ---- writing (vhdx-write.c) ---- */

/* A tiny xorshift for write patterns. */
static uint32_t wr_rand(uint32_t *st)
{
	*st ^= *st << 13;
	*st ^= *st >> 17;
	*st ^= *st << 5;
	return *st;
}

/* Make a parent of the given kind in dir; *flat gets its flat content
 * (a file), *name its file name.  false: the tool is missing. */
static bool mk_parent(const char *dir, int kind, uint64_t size, char **ppath,
		      char **flat)
{
	uint8_t *buf = malloc(2 * MiB);

	fx_fill_random(buf, 2 * MiB, 11 + (uint32_t)kind);
	ck_assert_int_eq(fx_system("mkdir -p '%s'", dir), 0);
	switch (kind) {
	case 0:		/* mkvhdx.py: a dynamic VHDX with data */
		ck_assert_int_eq(fx_system("python3 '%s' chain '%s' --depth 0 "
					   "--size %llu --seed 5 >/dev/null",
					   MKVHDX, dir,
					   (unsigned long long)size), 0);
		ck_assert_int_ge(asprintf(ppath, "%s/d0.vhdx", dir), 0);
		ck_assert_int_ge(asprintf(flat, "%s/d0.vhdx.raw", dir), 0);
		break;
	case 1:		/* qemu-img: a dynamic VHD */
		free(buf);
		if (!have("qemu-img"))
			return false;
		buf = malloc(2 * MiB);
		fx_fill_random(buf, 2 * MiB, 12);
		ck_assert_int_ge(asprintf(flat, "%s/in.raw", dir), 0);
		ck_assert_int_ge(asprintf(ppath, "%s/base.vhd", dir), 0);
		fx_pwrite(*flat, buf, 2 * MiB, 0);
		fx_pwrite(*flat, buf, MiB + 512, 9 * MiB - 512);
		ck_assert_int_eq(truncate(*flat, (off_t)size), 0);
		run("qemu-img convert -q -f raw -O vpc -o subformat=dynamic,"
		    "force_size=on '%s' '%s'", *flat, *ppath);
		run("qemu-img convert -q -f vpc -O raw '%s' '%s'", *ppath,
		    *flat);
		break;
	default:	/* raw, sparse */
		ck_assert_int_ge(asprintf(ppath, "%s/base.img", dir), 0);
		fx_pwrite(*ppath, buf, 2 * MiB, MiB / 2);
		fx_pwrite(*ppath, buf, MiB, size - MiB - 3 * 512);
		ck_assert_int_eq(truncate(*ppath, (off_t)size), 0);
		*flat = strdup(*ppath);
		break;
	}
	free(buf);
	return true;
}

/* Compare [off, off+len) of the layers with the model file. */
static void cmp_model(struct img **l, unsigned n, int mfd, uint64_t off,
		      uint64_t len)
{
	uint8_t *a = malloc(MiB), *b = malloc(MiB);

	while (len) {
		size_t k = (size_t)MIN(len, (uint64_t)MiB);

		ck_assert_int_eq(pread_zeropad(mfd, b, k, off), 0);
		read_layers(l, n, a, off, k);
		if (memcmp(a, b, k)) {
			size_t i = 0;

			while (a[i] == b[i])
				i++;
			ck_abort_msg("differs from the model at %llu (0x%02x, "
				     "want 0x%02x)",
				     (unsigned long long)(off + i), a[i], b[i]);
		}
		off += k;
		len -= k;
	}
	free(a);
	free(b);
}

/* The same through chain_open_file + chain_pread (a read-only reopen). */
static void cmp_chain(const char *child, const char *dir, int mfd,
		      const uint64_t *win, unsigned nwin, int want_id)
{
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	uint8_t *a = malloc(MiB), *b = malloc(MiB);

	ck_assert_msg(chain_open_file(child, dir, &o, &c) == 0, "%s",
		      last_err);
	ck_assert_uint_eq(c->depth, 2);
	ck_assert_int_eq(c->layers[0].id_check, want_id);
	for (unsigned w = 0; w < nwin; w++) {
		uint64_t off = win[2 * w], len = win[2 * w + 1];

		while (len) {
			size_t k = (size_t)MIN(len, (uint64_t)MiB);

			ck_assert_int_eq(pread_zeropad(mfd, b, k, off), 0);
			ck_assert_int_eq(chain_pread(c, a, k, off), 0);
			ck_assert_msg(!memcmp(a, b, k), "chain differs in "
				      "[%llu, +%zu)", (unsigned long long)off,
				      k);
			off += k;
			len -= k;
		}
	}
	chain_free(c);
	free(a);
	free(b);
}

static const struct {
	int kind;		/* 0 VHDX, 1 VHD, 2 raw */
	uint32_t lss, bs;	/* 0: defaults (parent's, 2 MiB) */
	uint64_t size;
} wcases[] = {
	{ 0, 0, 0, 24 * MiB },
	{ 0, 4096, MiB, 24 * MiB },
	{ 1, 0, MiB, 24 * MiB },
	{ 1, 4096, 0, 24 * MiB },
	{ 2, 512, MiB, 24 * MiB + 3 * 512 },	/* size not a block multiple */
	{ 2, 4096, 4 * MiB, 20 * MiB },
	{ 2, 512, 256 * MiB, 4 * 1024 * MiB + 8 * MiB }, /* two chunks */
};

/*
 * create_diff over a VHDX, a VHD and a raw parent; the reader gives back
 * the locator and the identity; writes at odd sector offsets and sizes
 * (crossing blocks, and chunks in the large case), zeroing, and writes
 * into zeroed blocks match an in-memory model: through the writable
 * image, after a reopen through the chain, and by 7-Zip.
 */
START_TEST(diff_create_and_write)
{
	char *dir, *ppath, *flat, *child, *model, *abs, *rel, want[600];
	const struct img_driver *vd = img_driver_find("vhdx");
	struct img *par, *cimg, *l[2];
	struct img_create_parent cp;
	struct img_create_opts co = { 0 };
	struct img_parent ip;
	uint64_t size = wcases[_i].size, win[2 * 64];
	unsigned nwin = 0;
	uint32_t st = 1234 + (uint32_t)_i, lss;
	uint8_t *buf = malloc(8 * MiB);
	bool big = size > 256 * MiB;
	int mfd;

	setup();
	ck_assert_int_ge(asprintf(&dir, "%s/w%d", fx_tmpdir(), _i), 0);
	if (!mk_parent(dir, wcases[_i].kind, size, &ppath, &flat))
		return;
	ck_assert_int_eq(img_open(ppath, wcases[_i].kind == 2 ?
				  img_driver_find("raw") : NULL, false, &par),
			 0);
	if (wcases[_i].kind == 1 && strcmp(par->drv->name, "vhd"))
		return;
	ck_assert_int_ge(asprintf(&child, "%s/child.vhdx", dir), 0);
	abs = realpath(ppath, NULL);
	rel = strrchr(ppath, '/') + 1;
	cp = (struct img_create_parent){ par, rel, abs, par->drv->name };
	co.block_size = wcases[_i].bs;
	co.sector_size = wcases[_i].lss;
	ck_assert_msg(vd->create_diff(child, &cp, &co) == 0, "%s", last_err);
	ck_assert_int_eq(vd->create_diff(child, &cp, &co), -EEXIST);
	nerrors = 0;

	/* the reader gives back what was recorded */
	cimg = open_ok(child);
	lss = wcases[_i].lss ? wcases[_i].lss : 512;
	ck_assert_uint_eq(cimg->sector_size, lss);
	ck_assert_uint_eq(cimg->block_size, wcases[_i].bs ? wcases[_i].bs :
			  2 * MiB);
	ck_assert_uint_eq(cimg->size, (size + lss - 1) / lss * lss);
	ck_assert_str_eq(cimg->subtype, "differencing");
	ck_assert_int_eq(cimg->drv->parent(cimg, &ip), 1);
	if (par->has_id) {
		ck_assert_int_eq(ip.id_kind, IMG_ID_VHDX_LINKAGE);
		ck_assert(guid_equal(&ip.id, &par->id));
	} else {	/* a zero parent_linkage: nothing to check */
		ck_assert_int_eq(ip.id_kind, IMG_ID_NONE);
		ck_assert(guid_is_zero(&ip.id));
	}
	ck_assert_uint_eq(ip.nrefs, 2);
	snprintf(want, sizeof(want), ".\\%s", rel);
	ck_assert_str_eq(ip.refs[0].path, want);
	ck_assert_str_eq(ip.refs[0].what, "relative_path");
	for (char *q = abs; *q; q++)
		if (*q == '/')
			*q = '\\';
	ck_assert_str_eq(ip.refs[1].path, abs);
	img_parent_clear(&ip);
	img_unref(cimg);
	if (have("7zz") && wcases[_i].kind == 0)	/* empty: the parent */
		ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhdx "
					   "child.vhdx 2>/dev/null | cmp -s - "
					   "'%s'", dir, flat), 0);

	/* the model: a sparse copy of the parent's flat content */
	ck_assert_int_ge(asprintf(&model, "%s/model.raw", dir), 0);
	run("cp --sparse=always '%s' '%s'", flat, model);
	ck_assert_int_eq(truncate(model, (off_t)((size + lss - 1) / lss *
						  lss)), 0);
	mfd = open(model, O_RDWR);
	ck_assert_int_ge(mfd, 0);

	ck_assert_msg(img_open(child, NULL, true, &cimg) == 0, "%s", last_err);
	ck_assert(cimg->writable);
	l[0] = cimg;
	l[1] = par;
	{
		uint64_t bs = cimg->block_size, ns = cimg->size / lss;
		uint64_t chunk = (1ull << 23) * 512;	/* at lss 512 */
		/* a whole block, where buf holds one */
		uint64_t wb = MIN(bs, 8 * MiB) / lss;
		struct { uint64_t sec, n; int zero; } ops[40];
		unsigned nops = 0;

		/* fixed cases: across a block boundary, a whole block, the
		 * last sector, a chunk boundary, zeroing a whole block and
		 * then writing into it, zeroing a part */
		ops[nops++] = (typeof(ops[0])){ bs / lss - 3, 5, 0 };
		ops[nops++] = (typeof(ops[0])){ bs / lss * 2, wb, 0 };
		ops[nops++] = (typeof(ops[0])){ ns - 1, 1, 0 };
		if (big)
			ops[nops++] = (typeof(ops[0])){ chunk / lss - 7, 9, 0 };
		ops[nops++] = (typeof(ops[0])){ 0, wb, 1 };
		ops[nops++] = (typeof(ops[0])){ 5, 3, 0 };
		ops[nops++] = (typeof(ops[0])){ bs / lss * 3 + 1, 17, 1 };
		while (nops < ARRAY_SIZE(ops)) {
			uint64_t n = 1 + wr_rand(&st) % (3 * MiB / lss);
			uint64_t sec = big && nops % 2 ?
				(chunk - 2 * MiB) / lss + wr_rand(&st) %
				(4 * MiB / lss) : wr_rand(&st) % MIN(ns,
					(uint64_t)24 * MiB / lss);

			if (sec + n > ns)
				n = ns - sec;
			ops[nops++] = (typeof(ops[0])){ sec, n, 0 };
		}
		for (unsigned i = 0; i < nops; i++) {
			uint64_t off = ops[i].sec * lss, len = ops[i].n * lss;

			if (ops[i].zero) {
				memset(buf, 0, len);
				ck_assert_int_eq(cimg->drv->zero(cimg, off, len,
								 NULL), 0);
			} else {
				fx_fill_random(buf, len, 100 + i);
				ck_assert_int_eq(cimg->drv->write(cimg, buf, len,
								  off, NULL),
						 0);
			}
			ck_assert_int_eq(pwrite_full(mfd, buf, len, off), 0);
			if (ops[i].zero && !ops[i].sec && wb * lss == bs) {
				struct img_extent e;

				ck_assert_int_eq(img_map(cimg, 0, bs, &e), 0);
				ck_assert_int_eq(e.type, IMG_EXT_ZERO);
			}
			if (nwin < ARRAY_SIZE(win) / 2) {
				uint64_t a = off > bs ? off - bs : 0;

				win[2 * nwin] = a;
				win[2 * nwin + 1] = MIN(off + len + bs,
							cimg->size) - a;
				nwin++;
			}
		}
		ck_assert_int_eq(cimg->drv->flush(cimg), 0);
	}
	if (big) {
		for (unsigned w = 0; w < nwin; w++)
			cmp_model(l, 2, mfd, win[2 * w], win[2 * w + 1]);
	} else {
		win[0] = 0;
		win[1] = cimg->size;
		nwin = 1;
		cmp_model(l, 2, mfd, 0, cimg->size);
	}
	img_unref(cimg);
	/* reopened, through the chain: parent found by relative_path */
	cmp_chain(child, dir, mfd, win, nwin, par->has_id ? 1 : 0);
	/* an independent reader */
	if (have("7zz") && wcases[_i].kind == 0)
		ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhdx "
					   "child.vhdx 2>/dev/null | cmp - "
					   "'%s'", dir, model), 0);
	ck_assert_uint_eq(nerrors, 0);
	close(mfd);
	img_unref(par);
	free(buf);
	free(abs);
	free(model);
	free(child);
	free(ppath);
	free(flat);
	free(dir);
}
END_TEST

/* A dirty log: reads work, a writable open is refused with -EROFS. */
START_TEST(dirty_log_not_writable)
{
	char *path = fx_path("dlw.vhdx");
	struct img *img = NULL;
	uint8_t *before, *after;
	size_t len, len2;

	setup();
	ck_assert_int_eq(fx_system("python3 '%s' dirtylog '%s' --kind all "
				   "--seed 3 >/dev/null", MKVHDX, path), 0);
	before = fx_read_file(path, &len);
	img_unref(open_ok(path));
	ck_assert_int_eq(img_open(path, NULL, true, &img), -EROFS);
	ck_assert_ptr_nonnull(strstr(last_err, "log is not empty"));
	after = fx_read_file(path, &len2);
	ck_assert_uint_eq(len, len2);
	ck_assert_mem_eq(before, after, len);	/* not written */
	free(before);
	free(after);
	free(path);
}
END_TEST

#include <pthread.h>

struct cc {
	struct img *img, *par;
	unsigned t;
	const uint8_t *want;	/* final content */
	const uint8_t *pflat;	/* parent content */
	uint64_t size;
	int err;
};

#define CC_RUN 3	/* sectors per run; run r belongs to thread r % 4 */

static int cc_writing;	/* writers still running (atomic) */

/* Flushes in a loop while the writers run: a write completing during a
 * flush is neither lost nor written half (the reopened file must match). */
static void *cc_flusher(void *arg)
{
	struct cc *c = arg;
	unsigned n = 0;

	while (__atomic_load_n(&cc_writing, __ATOMIC_ACQUIRE) && !c->err) {
		c->err = c->img->drv->flush(c->img);
		n++;
	}
	if (!c->err && !n)
		c->err = -EAGAIN;	/* no flush ran: the test proves nothing */
	return NULL;
}

static void *cc_writer(void *arg)
{
	struct cc *c = arg;
	uint64_t nruns = c->size / 512 / CC_RUN;

	/* from both ends, so allocations race with bitmap updates */
	for (uint64_t k = 0; k < nruns && !c->err; k++) {
		uint64_t r = k % 2 ? nruns - 1 - k / 2 : k / 2;

		if (r % 4 != c->t || r % 5 == 0)	/* some stay parent */
			continue;
		c->err = c->img->drv->write(c->img, c->want + r * CC_RUN * 512,
					    CC_RUN * 512, r * CC_RUN * 512,
					    NULL);
	}
	__atomic_fetch_sub(&cc_writing, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void *cc_reader(void *arg)
{
	struct cc *c = arg;
	struct img *l[2] = { c->img, c->par };
	uint8_t *buf = malloc(MiB);
	uint32_t st = 99 + c->t;

	for (int i = 0; i < 300 && !c->err; i++) {
		uint64_t off = wr_rand(&st) % (c->size / 512) * 512;
		uint64_t len = MIN((uint64_t)MiB, c->size - off);

		read_layers(l, 2, buf, off, len);
		for (uint64_t s = 0; s < len; s += 512)
			if (memcmp(buf + s, c->want + off + s, 512) &&
			    memcmp(buf + s, c->pflat + off + s, 512))
				c->err = -EIO;	/* neither old nor new */
	}
	free(buf);
	return NULL;
}

/* Four writers on interleaved 3-sector runs (same blocks, same bitmap
 * bytes) and two readers: no lost bits, readers see old or new. */
START_TEST(concurrent_writes)
{
	char *dir, *ppath, *flat, *child;
	const struct img_driver *vd = img_driver_find("vhdx");
	struct img *par, *img;
	struct img_create_parent cp;
	struct img_create_opts co = { .block_size = MiB };
	uint64_t size = 24 * MiB;
	uint8_t *want, *pflat, *got;
	size_t len;
	pthread_t th[7];
	struct cc c[7];

	setup();
	ck_assert_int_ge(asprintf(&dir, "%s/cc", fx_tmpdir()), 0);
	ck_assert(mk_parent(dir, 0, size, &ppath, &flat));
	img = open_ok(ppath);
	par = img;
	ck_assert_int_ge(asprintf(&child, "%s/child.vhdx", dir), 0);
	cp = (struct img_create_parent){ par, "d0.vhdx", NULL, "vhdx" };
	ck_assert_int_eq(vd->create_diff(child, &cp, &co), 0);
	ck_assert_int_eq(img_open(child, NULL, true, &img), 0);
	pflat = fx_read_file(flat, &len);
	ck_assert_uint_eq(len, size);
	want = malloc(size);
	fx_fill_random(want, size, 4242);
	for (uint64_t r = 0; r < size / 512 / CC_RUN; r++)
		if (r % 5 == 0)
			memcpy(want + r * CC_RUN * 512, pflat + r * CC_RUN * 512,
			       CC_RUN * 512);
	memcpy(want + size / 512 / CC_RUN * CC_RUN * 512,
	       pflat + size / 512 / CC_RUN * CC_RUN * 512,
	       size % (CC_RUN * 512));
	cc_writing = 4;
	for (unsigned t = 0; t < 7; t++) {
		c[t] = (struct cc){ img, par, t, want, pflat, size, 0 };
		ck_assert_int_eq(pthread_create(&th[t], NULL,
						t < 4 ? cc_writer :
						t < 6 ? cc_reader : cc_flusher,
						&c[t]), 0);
	}
	for (unsigned t = 0; t < 7; t++) {
		pthread_join(th[t], NULL);
		ck_assert_msg(c[t].err == 0, "thread %u: %d", t, c[t].err);
	}
	got = malloc(size);
	{
		struct img *l[2] = { img, par };

		read_layers(l, 2, got, 0, size);
		ck_assert_mem_eq(got, want, size);
		ck_assert_int_eq(img->drv->flush(img), 0);
		img_unref(img);
		/* the bits reached the file too */
		l[0] = open_ok(child);
		memset(got, 0, size);
		read_layers(l, 2, got, 0, size);
		ck_assert_mem_eq(got, want, size);
		img_unref(l[0]);
	}
	if (have("7zz")) {
		char *wf;

		ck_assert_int_ge(asprintf(&wf, "%s/want.raw", dir), 0);
		fx_pwrite(wf, want, size, 0);
		ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhdx "
					   "child.vhdx 2>/dev/null | cmp - "
					   "'%s'", dir, wf), 0);
		free(wf);
	}
	ck_assert_uint_eq(nerrors, 0);
	img_unref(par);
	free(got);
	free(want);
	free(pflat);
	free(child);
	free(ppath);
	free(flat);
	free(dir);
}
END_TEST

/*
 * Metadata is written back at flush, not at write: a writer killed
 * (_exit: the page cache keeps what it wrote) after a flush and more
 * writes leaves a file that vhdxcheck.py accepts, where everything
 * flushed reads back and every sector written since reads old or new;
 * the blocks those writes allocated, the bits they set and the block they
 * zeroed are not in the file's metadata yet (they read old), and the
 * file takes writes again.  Another open sees new blocks only after the
 * writer's flush; close writes dirty metadata back.
 */
START_TEST(metadata_written_at_flush)
{
	char *dir, *ppath, *flat, *child;
	const struct img_driver *vd = img_driver_find("vhdx");
	struct img *par, *img, *ro, *l[2];
	struct img_create_parent cp;
	struct img_create_opts co = { .block_size = MiB };
	const uint64_t size = 24 * MiB;
	uint8_t *old, *new, *got, *buf = malloc(3 * MiB);
	size_t len;
	int status;
	pid_t pid;
	/* round 1 (flushed): a partial block, two whole blocks */
	static const struct { uint64_t off, len; } r1[] = {
		{ 5 * 512, 7 * 512 }, { 4 * MiB, 2 * MiB },
	};
	/* round 2 (killed): into the full block, new bits in the partial
	 * one, a new block, across into another */
	static const struct { uint64_t off, len; bool lands; } r2[] = {
		{ 4 * MiB + 512, 4096, true },		/* FULLY_PRESENT */
		{ 64 * 512, 9 * 512, false },		/* bits not written */
		{ 10 * MiB + 4096, 8192, false },	/* no BAT entry */
		{ 12 * MiB - 4096, 8192, false },
	};

	setup();
	ck_assert_int_ge(asprintf(&dir, "%s/kf", fx_tmpdir()), 0);
	ck_assert(mk_parent(dir, 0, size, &ppath, &flat));
	par = open_ok(ppath);
	ck_assert_int_ge(asprintf(&child, "%s/child.vhdx", dir), 0);
	cp = (struct img_create_parent){ par, "d0.vhdx", NULL, "vhdx" };
	ck_assert_int_eq(vd->create_diff(child, &cp, &co), 0);
	old = fx_read_file(flat, &len);
	ck_assert_uint_eq(len, size);
	got = malloc(size);
	l[1] = par;

	ck_assert_int_eq(img_open(child, NULL, true, &img), 0);
	for (unsigned i = 0; i < ARRAY_SIZE(r1); i++) {
		fx_fill_random(buf, r1[i].len, 50 + i);
		ck_assert_int_eq(img->drv->write(img, buf, r1[i].len,
						 r1[i].off, NULL), 0);
		memcpy(old + r1[i].off, buf, r1[i].len);
	}
	/* not flushed: another open sees none of it, the writer all */
	ro = open_ok(child);
	l[0] = ro;
	read_layers(l, 2, got, 0, size);
	ck_assert_mem_ne(got + 4 * MiB, old + 4 * MiB, 4096);
	img_unref(ro);
	l[0] = img;
	read_layers(l, 2, got, 0, size);
	ck_assert_mem_eq(got, old, size);
	ck_assert_int_eq(img->drv->flush(img), 0);
	ro = open_ok(child);
	l[0] = ro;
	read_layers(l, 2, got, 0, size);
	ck_assert_mem_eq(got, old, size);
	img_unref(ro);
	img_unref(img);

	new = malloc(size);
	memcpy(new, old, size);
	for (unsigned i = 0; i < ARRAY_SIZE(r2); i++) {
		fx_fill_random(buf, r2[i].len, 70 + i);
		memcpy(new + r2[i].off, buf, r2[i].len);
	}
	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (img_open(child, NULL, true, &img) < 0)
			_exit(1);
		for (unsigned i = 0; i < ARRAY_SIZE(r2); i++)
			if (img->drv->write(img, new + r2[i].off, r2[i].len,
					    r2[i].off, NULL) < 0)
				_exit(1);
		if (img->drv->zero(img, 4 * MiB, MiB, NULL) < 0) /* ZERO */
			_exit(1);
		_exit(42);	/* killed: no flush, no close */
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 42);
	ck_assert_int_eq(fx_system("python3 '%s' -q '%s' >&2", VHDXCHECK,
				   child), 0);
	ro = open_ok(child);
	l[0] = ro;
	read_layers(l, 2, got, 0, size);
	img_unref(ro);
	for (unsigned i = 0; i < ARRAY_SIZE(r2); i++) {
		const uint8_t *w = r2[i].lands ? new : old;

		ck_assert_mem_eq(got + r2[i].off, w + r2[i].off, r2[i].len);
		memcpy(got + r2[i].off, old + r2[i].off, r2[i].len);
	}
	ck_assert_mem_eq(got, old, size);	/* the rest: as flushed */
	if (have("7zz")) {
		char *wf;

		ck_assert_int_ge(asprintf(&wf, "%s/got.raw", dir), 0);
		ro = open_ok(child);
		l[0] = ro;
		read_layers(l, 2, got, 0, size);
		img_unref(ro);
		fx_pwrite(wf, got, size, 0);
		ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhdx "
					   "child.vhdx 2>/dev/null | cmp - "
					   "'%s'", dir, wf), 0);
		free(wf);
	}

	/* writable again; the same writes, closed without a flush */
	ck_assert_int_eq(img_open(child, NULL, true, &img), 0);
	for (unsigned i = 0; i < ARRAY_SIZE(r2); i++)
		ck_assert_int_eq(img->drv->write(img, new + r2[i].off,
						 r2[i].len, r2[i].off, NULL),
				 0);
	img_unref(img);
	ck_assert_int_eq(fx_system("python3 '%s' -q '%s' >&2", VHDXCHECK,
				   child), 0);
	ro = open_ok(child);
	l[0] = ro;
	read_layers(l, 2, got, 0, size);
	ck_assert_mem_eq(got, new, size);
	img_unref(ro);
	ck_assert_uint_eq(nerrors, 0);
	img_unref(par);
	free(buf);
	free(got);
	free(old);
	free(new);
	free(child);
	free(ppath);
	free(flat);
	free(dir);
}
END_TEST

/*
 * A VHDX whose headers carry another version (or log version) is still a
 * VHDX: the probe claims it by its file type identifier and open refuses
 * it, never as raw.
 */
START_TEST(unsupported_version_by_content)
{
	static const struct {
		size_t at;
		uint16_t val;
		const char *msg;
	} v[] = {
		{ 66, 2, "unsupported version (2)" },
		{ 64, 1, "unsupported log version (1)" },
	};
	uint8_t *buf = calloc(1, 1 * MiB);
	struct img *img = NULL;
	char *path;

	ck_assert_ptr_nonnull(buf);
	memcpy(buf, "vhdxfile", 8);
	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		for (unsigned k = 0; k < 2; k++) {	/* both headers */
			uint8_t *h = buf + (k + 1) * 64 * KiB;

			memset(h, 0, 4096);
			memcpy(h, "head", 4);
			put_le64(h + 8, k + 1);		/* sequence */
			put_le16(h + 66, 1);
			put_le16(h + v[i].at, v[i].val);
			fix_crc(h, 4096, 4);
		}
		path = fx_write_file("v.vhdx", buf, 1 * MiB);
		setup();
		ck_assert_ptr_eq(img_probe_file(path), &vhdx_driver);
		ck_assert_int_eq(img_open(path, NULL, false, &img), -ENOTSUP);
		ck_assert_uint_eq(nerrors, 1);
		ck_assert_msg(strstr(last_err, v[i].msg), "%s", last_err);
		free(path);
	}
	free(buf);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("vhdx");
	TCase *dec = tcase_create("decoders");
	TCase *img = tcase_create("images");
	TCase *dmg = tcase_create("damaged");

	tcase_add_test(dec, header_decode_real);
	tcase_add_test(dec, unsupported_version_by_content);
	tcase_add_loop_test(dec, header_rejects_corruption, 0,
			    ARRAY_SIZE(hdr_bad));
	tcase_add_loop_test(dec, headers_pick_current, 0, ARRAY_SIZE(pick));
	tcase_add_loop_test(dec, region_table_rejects_corruption, 0,
			    ARRAY_SIZE(rt_bad));
	tcase_add_loop_test(dec, meta_table_rejects_corruption, 0,
			    ARRAY_SIZE(mt_bad));
	tcase_add_test(dec, meta_table_good);
	tcase_add_loop_test(dec, params_decode_cases, 0, ARRAY_SIZE(params));
	tcase_add_test(dec, locator_good);
	tcase_add_loop_test(dec, locator_rejects_sets, 0, ARRAY_SIZE(loc_sets));
	tcase_add_loop_test(dec, locator_rejects_corruption, 0,
			    ARRAY_SIZE(loc_bad));
	tcase_add_test(dec, libvhdi_fragments);
	tcase_add_loop_test(dec, log_build_cases, 0, ARRAY_SIZE(logc));
	suite_add_tcase(s, dec);

	tcase_set_timeout(img, 120);
	tcase_add_loop_test(img, qemu_images_match, 0, ARRAY_SIZE(qemu_imgs));
	tcase_add_loop_test(img, real_vectors_sum, 0, ARRAY_SIZE(real));
	tcase_add_test(img, real_dirty_log_replayed);
	tcase_add_test(img, real_differencing_avhdx);
	tcase_add_loop_test(img, mkvhdx_chain_layers, 0, ARRAY_SIZE(chains));
	tcase_add_test(img, mkvhdx_chain_open_file);
	tcase_add_test(img, mixed_vhdx_over_vhd);
	tcase_add_test(img, mixed_qcow2_over_vhdx);
	tcase_add_loop_test(img, mkvhdx_dirty_log, 0, ARRAY_SIZE(dirty));
	tcase_add_test(img, truncated_files);
	tcase_add_loop_test(img, diff_create_and_write, 0, ARRAY_SIZE(wcases));
	tcase_add_test(img, dirty_log_not_writable);
	tcase_add_test(img, concurrent_writes);
	tcase_add_test(img, metadata_written_at_flush);
	suite_add_tcase(s, img);

	tcase_add_unchecked_fixture(dmg, dmg_setup, dmg_teardown);
	tcase_add_loop_test(dmg, damaged_files, 0, ARRAY_SIZE(damage));
	suite_add_tcase(s, dmg);
	return s;
}
