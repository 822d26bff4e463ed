// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-vhd.c: the VHD driver.
 *
 * Decoders on byte arrays (the libvhdi samples when present, one damaged
 * field per case); the driver on images made at test time by qemu-img
 * (fixed, dynamic) and by tests/tools/mkvhd.py (differencing chains,
 * written from the spec independently of vhd.c); the real-world vectors;
 * malformed files made by patching a good image.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "compiler.h"
#include "fixtures.h"
#include "guid.h"
#include "img.h"
#include "vhd.h"

extern const struct img_driver vhd_driver;

#define MKVHD SOURCE_DIR "/tests/tools/mkvhd.py"

/*
 * Images every test reads but none writes, made once before the tests
 * fork (an unchecked fixture) in a directory of their own: the mkvhd.py
 * chain c0..c5 and the small differencing pair s-base.vhd/s-diff.vhd.
 */
static char *shared;

static char *shared_path(const char *name)
{
	char *p;

	ck_assert_int_ge(asprintf(&p, "%s/%s", shared, name), 0);
	return p;
}

/* ---- helpers ---------------------------------------------------------- */

static void put_be(uint8_t *p, unsigned width, uint64_t v)
{
	for (unsigned i = 0; i < width; i++)
		p[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
}

static uint64_t load_be(const uint8_t *p, unsigned width)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < width; i++)
		v = v << 8 | p[i];
	return v;
}

/* The spec's checksum, written here again so the tests do not trust vhd.c */
static uint32_t t_sum(const uint8_t *b, size_t n, size_t field)
{
	uint32_t s = 0;

	for (size_t i = 0; i < n; i++)
		s += b[i];
	for (size_t i = field; i < field + 4; i++)
		s -= b[i];
	return ~s;
}

static void fix_footer(uint8_t *f)
{
	put_be(f + 64, 4, t_sum(f, 512, 64));
}

static void fix_header(uint8_t *h)
{
	put_be(h + 36, 4, t_sum(h, 1024, 36));
}

static off_t file_size(const char *path)
{
	struct stat st;

	ck_assert_int_eq(stat(path, &st), 0);
	return st.st_size;
}

static int open_vhd(const char *path, struct img **out)
{
	return img_open(path, &vhd_driver, false, out);
}

/* Decompress a vector into the private directory; NULL without vectors. */
static char *unpack(const char *rel, const char *cmd, const char *name)
{
	char *src = fx_vector(rel), *dst;

	if (!src)
		return NULL;
	dst = fx_path(name);
	if (cmd)
		ck_assert_int_eq(fx_system("%s '%s' > '%s'", cmd, src, dst), 0);
	else
		ck_assert_int_eq(fx_system("cp '%s' '%s'", src, dst), 0);
	free(src);
	return dst;
}

/*
 * Read [off, off + len) through layers[i..n) the way a chain does: DATA is
 * read at its host offset, UNALLOC is asked of the next layer, and past the
 * bottom (or past a smaller layer's end) reads zeros.
 */
static void layers_read(struct img **l, unsigned i, unsigned n, uint8_t *buf,
			uint64_t off, uint64_t len)
{
	while (len) {
		struct img_extent e;

		if (i == n || off >= l[i]->size) {
			memset(buf, 0, len);
			return;
		}
		ck_assert_int_eq(img_map(l[i], off, len, &e), 0);
		ck_assert(e.len >= 1 && e.len <= len);
		switch (e.type) {
		case IMG_EXT_DATA:
			ck_assert(e.host_off != IMG_HOST_NONE);
			/* inside the file (a writable one grows) */
			if (l[i]->writable) {
				struct stat st;

				ck_assert_int_eq(fstat(e.fd, &st), 0);
				ck_assert(e.host_off + e.len <=
					  (uint64_t)st.st_size);
			} else {
				ck_assert(e.host_off + e.len <=
					  l[i]->file_size);
			}
			ck_assert_int_eq(pread(e.fd, buf, e.len,
					       (off_t)e.host_off),
					 (ssize_t)e.len);
			break;
		case IMG_EXT_ZERO:
			memset(buf, 0, e.len);
			break;
		case IMG_EXT_UNALLOC:
			layers_read(l, i + 1, n, buf, off, e.len);
			break;
		}
		buf += e.len;
		off += e.len;
		len -= e.len;
	}
}

/* The whole top image, read in pseudo-random, unaligned pieces. */
static uint8_t *flatten(struct img **l, unsigned n, uint32_t seed)
{
	uint64_t size = l[0]->size, off = 0;
	uint8_t *buf = malloc(size ? size : 1);
	uint32_t x = seed | 1;

	ck_assert_ptr_nonnull(buf);
	while (off < size) {
		uint64_t piece;

		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		piece = MIN(size - off, 1 + (uint64_t)(x % (3u << 20)));
		layers_read(l, 0, n, buf + off, off, piece);
		off += piece;
	}
	return buf;
}

static void assert_same_as_file(const uint8_t *buf, uint64_t size,
				const char *path)
{
	size_t len;
	uint8_t *want = fx_read_file(path, &len);

	ck_assert_ptr_nonnull(want);
	ck_assert_uint_eq(len, size);
	for (size_t i = 0; i < len; i++)
		if (buf[i] != want[i])
			ck_abort_msg("%s: first difference at byte %zu "
				     "(got 0x%02x, want 0x%02x)", path, i,
				     buf[i], want[i]);
	free(want);
}

static void assert_sha256(const uint8_t *buf, uint64_t size, const char *hex)
{
	char *p = fx_write_file("flat.sha", buf, size);

	ck_assert_msg(fx_system("echo '%s  %s' | sha256sum -c --status", hex,
				p) == 0, "sha256 of the flat image is not %s",
		      hex);
	unlink(p);
	free(p);
}

/* Open one image alone, flatten it, compare with a sha256. */
static void check_vector_sha(const char *path, uint64_t size,
			     const char *subtype, const char *hex)
{
	struct img *img;
	uint8_t *flat;

	ck_assert_ptr_eq(img_probe_file(path), &vhd_driver);
	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	ck_assert_ptr_eq(img->drv, &vhd_driver);
	ck_assert_uint_eq(img->size, size);
	ck_assert_str_eq(img->subtype, subtype);
	flat = flatten(&img, 1, 7);
	assert_sha256(flat, img->size, hex);
	free(flat);
	img_unref(img);
}

/* ---- decoders --------------------------------------------------------- */

/* A footer and a dynamic header built here when the samples are absent. */
static void own_footer(uint8_t *f)
{
	memset(f, 0, 512);
	memcpy(f, "conectix", 8);
	put_be(f + 8, 4, 2);
	put_be(f + 12, 4, 0x00010000);
	put_be(f + 16, 8, 512);
	memcpy(f + 28, "test", 4);
	put_be(f + 48, 8, 1 << 20);
	put_be(f + 60, 4, 3);
	for (int i = 0; i < 16; i++)
		f[68 + i] = (uint8_t)(0x10 + i);
	fix_footer(f);
}

static void own_header(uint8_t *h)
{
	memset(h, 0, 1024);
	memcpy(h, "cxsparse", 8);
	put_be(h + 8, 8, UINT64_MAX);
	put_be(h + 16, 8, 0x600);
	put_be(h + 24, 4, 0x00010000);
	put_be(h + 28, 4, 256);
	put_be(h + 32, 4, 2 << 20);
	fix_header(h);
}

static bool sample(const char *name, uint8_t *buf, size_t n)
{
	char *p = fx_vector(name);
	size_t len;
	uint8_t *data;

	if (!p)
		return false;
	data = fx_read_file(p, &len);
	ck_assert_ptr_nonnull(data);
	ck_assert_uint_eq(len, n);
	memcpy(buf, data, n);
	free(data);
	free(p);
	return true;
}

START_TEST(footer_sample_decodes)
{
	uint8_t buf[512];
	struct vhd_footer f;
	struct vhd_problem why;
	struct guid g;
	char s[GUID_STR_LEN + 1];

	if (!sample("libvhdi-structs/file_footer.1", buf, sizeof(buf)))
		return;
	ck_assert_uint_eq(vhd_checksum(buf, 512, 64), load_be(buf + 64, 4));
	ck_assert_int_eq(vhd_footer_decode(buf, &f, &why), 0);
	ck_assert_uint_eq(f.disk_type, VHD_TYPE_DIFF);
	ck_assert_uint_eq(f.cur_size, 0x20000000);
	ck_assert_uint_eq(f.orig_size, 0x20000000);
	ck_assert_uint_eq(f.data_offset, 512);
	ck_assert_uint_eq(f.version, 0x00010000);
	ck_assert_uint_eq(f.creator_app, 0x76706320);	/* "vpc " */
	ck_assert_uint_eq(f.timestamp, 0x192215f0);
	guid_from_be(&g, f.uuid);
	guid_to_str(&g, s);
	ck_assert_str_eq(s, "40d56d36-9ab8-4fe4-a31a-121fe2bf15eb");
}
END_TEST

START_TEST(dyn_header_sample_decodes)
{
	uint8_t buf[1024];
	struct vhd_dyn_header h;
	struct guid g;
	char s[GUID_STR_LEN + 1];

	if (!sample("libvhdi-structs/dynamic_disk_header.1", buf, sizeof(buf)))
		return;
	ck_assert_int_eq(vhd_dyn_header_decode(buf, &h, NULL), 0);
	ck_assert_uint_eq(h.table_offset, 0x600);
	ck_assert_uint_eq(h.max_table_entries, 256);
	ck_assert_uint_eq(h.block_size, 2 << 20);
	ck_assert_uint_eq(h.parent_timestamp, 0x1922077c);
	guid_from_be(&g, h.parent_uuid);
	guid_to_str(&g, s);
	ck_assert_str_eq(s, "d49c5c80-350a-4a89-898a-5ad6d10f6578");
	ck_assert_int_eq(memcmp(h.parent_name, "\0d\0y\0n\0a\0m\0i\0c", 14),
			 0);
	/* Virtual PC left slots 0-3 empty and used 4-7 */
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(h.locators[i].code, VHD_PLAT_NONE);
	ck_assert_uint_eq(h.locators[4].code, VHD_PLAT_W2KU);
	ck_assert_uint_eq(h.locators[4].data_space, 0x200);
	ck_assert_uint_eq(h.locators[4].data_length, 0x2a);
	ck_assert_uint_eq(h.locators[4].data_offset, 0x1200);
	ck_assert_uint_eq(h.locators[5].code, VHD_PLAT_W2RU);
	ck_assert_uint_eq(h.locators[5].data_length, 0x1a);
	ck_assert_uint_eq(h.locators[5].data_offset, 0x1000);
	ck_assert_uint_eq(h.locators[6].code, VHD_PLAT_WI2K);
	ck_assert_uint_eq(h.locators[7].code, VHD_PLAT_WI2R);
}
END_TEST

/* One damaged field per case: offset, width, value, recompute checksum. */
static const struct damage {
	unsigned off, width;
	uint64_t val;
	bool fix;
	int err;
} footer_bad[] = {
	{ 0, 1, 'X', true, -EINVAL },		/* cookie: not a VHD */
	{ 7, 1, 'Y', true, -EINVAL },
	{ 64, 4, 0x12345678, false, -EBADMSG },	/* the checksum itself */
	{ 66, 1, 0, false, -EBADMSG },
	{ 40, 1, 0x55, false, -EBADMSG },	/* data, checksum stale */
	{ 500, 1, 1, false, -EBADMSG },		/* reserved bytes count */
	{ 12, 4, 0x00020000, true, -ENOTSUP },	/* version 2.0 */
	{ 12, 4, 0, true, -ENOTSUP },
	{ 60, 4, 0, true, -ENOTSUP },		/* disk type none */
	{ 60, 4, 1, true, -ENOTSUP },		/* reserved (obsolete) */
	{ 60, 4, 5, true, -ENOTSUP },
	{ 60, 4, 6, true, -ENOTSUP },
	{ 60, 4, 0x80000003, true, -ENOTSUP },
	{ 60, 4, 2, true, 0 },			/* fixed: fine */
	{ 60, 4, 4, true, 0 },			/* differencing: fine */
	{ 12, 4, 0x00010005, true, 0 },		/* a minor version */
	{ 48, 8, 0, true, 0 },			/* size: checked at open */
};

START_TEST(footer_rejects_corruption)
{
	const struct damage *d = &footer_bad[_i];
	uint8_t buf[512];
	struct vhd_footer f = { .disk_type = 77 };
	struct vhd_problem why = { "" };
	int r;

	if (!sample("libvhdi-structs/file_footer.1", buf, sizeof(buf)))
		own_footer(buf);
	ck_assert_int_eq(vhd_footer_decode(buf, &f, NULL), 0);
	f.disk_type = 77;
	put_be(buf + d->off, d->width, d->val);
	if (d->fix)
		fix_footer(buf);
	r = vhd_footer_decode(buf, &f, &why);
	ck_assert_int_eq(r, d->err);
	if (r < 0) {
		ck_assert_uint_eq(f.disk_type, 77);	/* untouched */
		ck_assert_msg(why.msg[0], "no reason given");
	} else {
		ck_assert_uint_eq(f.disk_type, load_be(buf + 60, 4));
	}
}
END_TEST

static const struct damage header_bad[] = {
	{ 0, 1, 'X', true, -EUCLEAN },		/* cookie */
	{ 36, 4, 0, false, -EBADMSG },		/* the checksum itself */
	{ 100, 1, 0x41, false, -EBADMSG },	/* parent name, stale sum */
	{ 1000, 1, 1, false, -EBADMSG },	/* reserved bytes count */
	{ 24, 4, 0x00020000, true, -ENOTSUP },	/* header version 2.0 */
	{ 32, 4, 0, true, -EUCLEAN },		/* block size 0 */
	{ 32, 4, 256, true, -EUCLEAN },		/* below a sector */
	{ 32, 4, 3000, true, -EUCLEAN },	/* not a power of two */
	{ 32, 4, (2 << 20) + 512, true, -EUCLEAN },
	{ 32, 4, 0x80000000, true, -EFBIG },	/* 2 GiB blocks */
	{ 32, 4, 1u << 30, true, -EFBIG },
	{ 28, 4, 0x40000001, true, -EFBIG },	/* afl5's table entries */
	{ 28, 4, 0xffffffff, true, -EFBIG },
	{ 32, 4, 512, true, 0 },		/* the smallest block */
	{ 32, 4, 256 << 20, true, 0 },		/* the largest we take */
	{ 28, 4, 1u << 24, true, 0 },
	{ 28, 4, 0, true, 0 },			/* checked at open */
};

START_TEST(dyn_header_rejects_corruption)
{
	const struct damage *d = &header_bad[_i];
	uint8_t buf[1024];
	struct vhd_dyn_header h = { .block_size = 77 };
	struct vhd_problem why = { "" };
	int r;

	if (!sample("libvhdi-structs/dynamic_disk_header.1", buf, sizeof(buf)))
		own_header(buf);
	put_be(buf + d->off, d->width, d->val);
	if (d->fix)
		fix_header(buf);
	r = vhd_dyn_header_decode(buf, &h, &why);
	ck_assert_int_eq(r, d->err);
	if (r < 0)
		ck_assert_msg(why.msg[0], "no reason given");
	else
		ck_assert_uint_eq(h.block_size, load_be(buf + 32, 4));
}
END_TEST

static bool ref_bit(const uint8_t *bm, uint64_t i)
{
	return bm[i / 8] & (0x80 >> (i % 8));
}

START_TEST(bitmap_runs_match_a_bitwise_scan)
{
	enum { NBYTES = 4096 };
	static uint8_t bm[NBYTES];
	uint32_t x = 12345;

	/* long runs of 0x00 and 0xff bytes, with odd bytes between them */
	for (size_t i = 0; i < NBYTES;) {
		size_t n;
		uint8_t v;

		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		n = 1 + x % 100;
		v = (x >> 8) % 3 == 0 ? 0x00 : (x >> 8) % 3 == 1 ? 0xff
							       : (uint8_t)(x >> 16);
		for (size_t k = 0; k < n && i < NBYTES; k++)
			bm[i++] = v;
	}
	for (int t = 0; t < 20000; t++) {
		uint64_t start, max, want = 0, got;
		bool set, want_set;

		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		start = x % (NBYTES * 8);
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		max = 1 + x % (NBYTES * 8 - start);
		want_set = ref_bit(bm, start);
		while (want < max && ref_bit(bm, start + want) == want_set)
			want++;
		got = vhd_bitmap_run(bm, start, max, &set);
		ck_assert_uint_eq(set, want_set);
		ck_assert_uint_eq(got, want);
	}
	/* edge cases: one bit; a full word of ones; a clipped run */
	memset(bm, 0xff, 16);
	bm[16] = 0x7f;
	ck_assert_uint_eq(vhd_bitmap_run(bm, 0, 1, &(bool){ 0 }), 1);
	ck_assert_uint_eq(vhd_bitmap_run(bm, 0, 200, &(bool){ 0 }), 128);
	ck_assert_uint_eq(vhd_bitmap_run(bm, 3, 70, &(bool){ 0 }), 70);
	ck_assert_uint_eq(vhd_bitmap_run(bm, 128, 50, &(bool){ 1 }), 1);
	ck_assert_uint_eq(vhd_bitmap_run(bm, 129, 50, &(bool){ 0 }), 7);
}
END_TEST

START_TEST(probe_scores)
{
	static uint8_t head[65536], tail[512];
	struct img_probe p = { .path = "x", .head = head, .head_len = 65536,
			       .tail = tail, .tail_len = 512,
			       .file_size = 1 << 20 };

	ck_assert_int_eq(vhd_driver.probe(&p), 0);
	memcpy(tail, "conectix", 8);		/* fixed: footer at the end */
	ck_assert_int_eq(vhd_driver.probe(&p), 100);
	memset(tail, 0, sizeof(tail));
	memcpy(tail + 1, "conectix", 8);	/* the 511-byte footer */
	ck_assert_int_eq(vhd_driver.probe(&p), 100);
	memset(tail, 0, sizeof(tail));
	memcpy(head, "conectix", 8);		/* the copy at offset 0 */
	ck_assert_int_eq(vhd_driver.probe(&p), 100);
	p.head_len = 100;			/* a tiny file */
	p.tail_len = 100;
	ck_assert_int_eq(vhd_driver.probe(&p), 0);
}
END_TEST

/* ---- images made by qemu-img ------------------------------------------ */

/* 7 MiB + 3 sectors: random, zero and patterned regions; block 2 (of
 * 2 MiB) is all zero. */
static char *make_pattern_raw(const char *name, uint64_t *size)
{
	uint64_t n = (7 << 20) + 3 * 512;
	uint8_t *d = calloc(1, n);
	char *p;

	ck_assert_ptr_nonnull(d);
	fx_fill_random(d, 300000, 11);			/* block 0 */
	memset(d + (2 << 20) + 4096, 0x5a, 512);	/* block 1, one sector */
	fx_fill_random(d + n - 70000, 70000, 12);	/* the partial tail */
	p = fx_write_file(name, d, n);
	free(d);
	*size = n;
	return p;
}

static void check_qemu_subformat(const char *sub)
{
	uint64_t size;
	char *raw = make_pattern_raw("pattern.raw", &size);
	char *vhd = fx_path("qemu.vhd"), *oracle = fx_path("oracle.raw");
	struct img *img;
	struct img_extent e;
	uint8_t *flat;
	bool saw_unalloc = false;

	ck_assert_int_eq(fx_system("qemu-img convert -q -f raw -O vpc -o "
				   "subformat=%s,force_size=on '%s' '%s'",
				   sub, raw, vhd), 0);
	ck_assert_int_eq(fx_system("qemu-img convert -q -f vpc -O raw "
				   "'%s' '%s'", vhd, oracle), 0);
	ck_assert_ptr_eq(img_probe_file(vhd), &vhd_driver);
	ck_assert_int_eq(img_open(vhd, NULL, false, &img), 0);
	ck_assert_str_eq(img->subtype, sub);
	ck_assert_uint_eq(img->size, size);
	ck_assert_uint_eq(img->sector_size, 512);
	ck_assert(img->has_id && !guid_is_zero(&img->id));
	ck_assert_int_eq(vhd_driver.parent(img, &(struct img_parent){ 0 }),
			 0);
	flat = flatten(&img, 1, 3);
	assert_same_as_file(flat, img->size, oracle);
	assert_same_as_file(flat, img->size, raw);
	if (!strcmp(sub, "dynamic")) {
		ck_assert_uint_eq(img->block_size, 2 << 20);
		/* block 1 holds one sector: allocated as a whole block */
		ck_assert_int_eq(img_map(img, 2 << 20, 2 << 20, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_DATA);
		ck_assert_uint_eq(e.len, 2 << 20);
		for (uint64_t off = 0; off < img->size; off += e.len) {
			ck_assert_int_eq(img_map(img, off, img->size - off, &e),
					 0);
			saw_unalloc |= e.type == IMG_EXT_UNALLOC;
		}
		ck_assert(saw_unalloc);	/* qemu leaves zero blocks out */
	} else {
		ck_assert_int_eq(img_map(img, 512, img->size - 512, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_DATA);
		ck_assert_uint_eq(e.host_off, 512);
		ck_assert_uint_eq(e.len, img->size - 512);
	}
	free(flat);
	img_unref(img);
	free(raw);
	free(vhd);
	free(oracle);
}

START_TEST(qemu_fixed_reads_like_qemu)
{
	check_qemu_subformat("fixed");
}
END_TEST

START_TEST(qemu_dynamic_reads_like_qemu)
{
	check_qemu_subformat("dynamic");
}
END_TEST

/* ---- differencing chains made by mkvhd.py ----------------------------- */

#define CHAIN_DEPTH 6	/* a base and five differencing children */

static const struct {
	const char *block;	/* the layer's block size */
	const char *extra;	/* more mkvhd options */
} chain_spec[CHAIN_DEPTH] = {
	{ "64K", "" },
	{ "64K", "--random-writes 40 --seed 1" },
	{ "2M", "--random-writes 40 --seed 2 --writes 0+1,6000+3=0xab" },
	{ "4K", "--random-writes 60 --seed 3 --data-space sectors" },
	{ "512", "--random-writes 25 --seed 4" },
	{ "32K", "--random-writes 40 --seed 5 --writes 6143+3=0x11" },
};

/* layer k is c<k>.vhd with expected flat content c<k>.raw (k=0: base) */
static void make_chain(const char *dir)
{
	uint8_t *d;
	size_t n = (3 << 20) + 5 * 512;	/* a partial last block */
	char *p = shared_path("c0.raw");
	FILE *fp;

	d = calloc(1, n);
	ck_assert_ptr_nonnull(d);
	for (size_t off = 0; off < n; off += 7 * 4096)
		fx_fill_random(d + off, MIN((size_t)3000, n - off),
			       (uint32_t)off + 1);
	fp = fopen(p, "wb");
	ck_assert_ptr_nonnull(fp);
	ck_assert_uint_eq(fwrite(d, 1, n, fp), n);
	fclose(fp);
	free(d);
	free(p);
	ck_assert_int_eq(fx_system("cd '%s' && python3 '%s' create-dynamic "
				   "c0.vhd --from c0.raw --block-size %s",
				   dir, MKVHD, chain_spec[0].block), 0);
	for (int k = 1; k < CHAIN_DEPTH; k++)
		ck_assert_int_eq(
			fx_system("cd '%s' && python3 '%s' create-diff c%d.vhd "
				  "--parent c%d.vhd --expect-in c%d.raw "
				  "--expect-out c%d.raw --block-size %s %s",
				  dir, MKVHD, k, k - 1, k - 1, k,
				  chain_spec[k].block, chain_spec[k].extra),
			0);
}

static void open_chain(struct img **l, int top)
{
	for (int k = top; k >= 0; k--) {
		char name[32], *p;

		snprintf(name, sizeof(name), "c%d.vhd", k);
		p = shared_path(name);
		ck_assert_int_eq(img_open(p, NULL, false, &l[top - k]), 0);
		free(p);
	}
}

static uint32_t footer_timestamp(const char *path)
{
	size_t len;
	uint8_t *d = fx_read_file(path, &len);
	uint32_t ts;

	ck_assert_ptr_nonnull(d);
	ts = (uint32_t)load_be(d + len - 512 + 24, 4);
	free(d);
	return ts;
}

START_TEST(diff_chain_reads_every_layer)
{
	struct img *l[CHAIN_DEPTH];

	for (int top = 0; top < CHAIN_DEPTH; top++) {
		char name[32], *want;
		uint8_t *flat;

		open_chain(l, top);
		snprintf(name, sizeof(name), "c%d.raw", top);
		want = shared_path(name);
		flat = flatten(l, (unsigned)top + 1, (uint32_t)top + 100);
		assert_same_as_file(flat, l[0]->size, want);
		free(flat);
		free(want);
		for (int k = 0; k <= top; k++)
			img_unref(l[k]);
	}
}
END_TEST

START_TEST(diff_parent_description)
{
	struct img *l[CHAIN_DEPTH];

	open_chain(l, CHAIN_DEPTH - 1);
	for (int i = 0; i < CHAIN_DEPTH; i++) {
		struct img_parent p = { 0 };
		int k = CHAIN_DEPTH - 1 - i;	/* file c<k>.vhd */
		char want[64], *ppath;

		ck_assert_str_eq(l[i]->subtype, k ? "differencing" : "dynamic");
		if (k == 0) {
			ck_assert_int_eq(vhd_driver.parent(l[i], &p), 0);
			continue;
		}
		ck_assert_int_eq(vhd_driver.parent(l[i], &p), 1);
		ck_assert_uint_eq(p.nrefs, 3);
		snprintf(want, sizeof(want), ".\\c%d.vhd", k - 1);
		ck_assert_int_eq(p.refs[0].kind, IMG_REF_RELATIVE);
		ck_assert_str_eq(p.refs[0].what, "W2ru");
		ck_assert_str_eq(p.refs[0].path, want);
		snprintf(want, sizeof(want), "C:\\images\\c%d.vhd", k - 1);
		ck_assert_int_eq(p.refs[1].kind, IMG_REF_ABSOLUTE);
		ck_assert_str_eq(p.refs[1].what, "W2ku");
		ck_assert_str_eq(p.refs[1].path, want);
		snprintf(want, sizeof(want), "c%d.vhd", k - 1);
		ck_assert_int_eq(p.refs[2].kind, IMG_REF_NAME);
		ck_assert_str_eq(p.refs[2].path, want);
		ck_assert_int_eq(p.id_kind, IMG_ID_VHD_UUID);
		ck_assert(guid_equal(&p.id, &l[i + 1]->id));
		ck_assert(!guid_equal(&p.id, &l[i]->id));
		ppath = shared_path(want);
		ck_assert(p.has_timestamp);
		ck_assert_uint_eq(p.timestamp, footer_timestamp(ppath));
		ck_assert_ptr_null(p.format);	/* the chain probes */
		free(ppath);
		img_parent_clear(&p);
	}
	for (int i = 0; i < CHAIN_DEPTH; i++)
		img_unref(l[i]);
}
END_TEST

/* Exact runs on the sector bitmap, from unaligned offsets too. */
START_TEST(diff_runs_follow_the_bitmap)
{
	const char *dir = fx_tmpdir();
	char *top = fx_path("top.vhd");
	struct img *img;
	struct img_extent e;
	uint8_t buf[1024];

	ck_assert_int_eq(fx_system("cd '%s' && head -c 1048576 /dev/zero > "
				   "z.raw && python3 '%s' create-dynamic "
				   "base.vhd --from z.raw && python3 '%s' "
				   "create-diff top.vhd --parent base.vhd "
				   "--expect-in z.raw --expect-out top.raw "
				   "--block-size 64K --writes "
				   "3+2=0xab,127+2=0xcd,300+1=0xef",
				   dir, MKVHD, MKVHD), 0);
	ck_assert_int_eq(open_vhd(top, &img), 0);
	ck_assert_uint_eq(img->block_size, 65536);
	/* block 0: sectors 3-4 and 127 present, the rest poison */
	ck_assert_int_eq(img_map(img, 0, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 3 * 512);
	ck_assert_int_eq(img_map(img, 100, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 3 * 512 - 100);
	ck_assert_int_eq(img_map(img, 3 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 2 * 512);
	ck_assert_int_eq(pread(e.fd, buf, 1024, (off_t)e.host_off), 1024);
	for (int i = 0; i < 1024; i++)
		ck_assert_uint_eq(buf[i], 0xab);
	ck_assert_int_eq(img_map(img, 4 * 512 + 7, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 512 - 7);
	ck_assert_int_eq(img_map(img, 3 * 512, 100, &e), 0);	/* clipped */
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 100);
	ck_assert_int_eq(img_map(img, 5 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 122 * 512);
	/* sector 127 ends block 0; 128 starts block 1: runs stop there */
	ck_assert_int_eq(img_map(img, 127 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 512);
	ck_assert_int_eq(img_map(img, 128 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 512);
	ck_assert_int_eq(pread(e.fd, buf, 512, (off_t)e.host_off), 512);
	ck_assert_uint_eq(buf[0], 0xcd);
	ck_assert_uint_eq(buf[511], 0xcd);
	/* sector 300 in block 2: 256..299 parent's, 300 here, then parent */
	ck_assert_int_eq(img_map(img, 256 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 44 * 512);
	ck_assert_int_eq(img_map(img, 301 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, (384 - 301) * 512);
	/* block 3 is not allocated */
	ck_assert_int_eq(img_map(img, 384 * 512, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 65536);
	img_unref(img);
	free(top);
}
END_TEST

struct thread_arg {
	struct img **l;
	unsigned n;
	const uint8_t *want;
	uint32_t seed;
	int bad;
};

static void *reader(void *p)
{
	struct thread_arg *a = p;
	uint8_t *flat = flatten(a->l, a->n, a->seed);

	a->bad = memcmp(flat, a->want, a->l[0]->size) != 0;
	free(flat);
	return NULL;
}

START_TEST(diff_chain_concurrent_readers)
{
	struct img *l[CHAIN_DEPTH];
	struct thread_arg a[4];
	pthread_t t[4];
	char *want_path;
	size_t len;
	uint8_t *want;

	open_chain(l, CHAIN_DEPTH - 1);
	want_path = shared_path("c5.raw");
	want = fx_read_file(want_path, &len);
	ck_assert_ptr_nonnull(want);
	for (int i = 0; i < 4; i++) {
		a[i] = (struct thread_arg){ l, CHAIN_DEPTH, want,
					    (uint32_t)i * 77 + 1, -1 };
		ck_assert_int_eq(pthread_create(&t[i], NULL, reader, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ck_assert_int_eq(a[i].bad, 0);
	}
	for (int i = 0; i < CHAIN_DEPTH; i++)
		img_unref(l[i]);
	free(want);
	free(want_path);
}
END_TEST

/* Through the chain resolver, once src/chain/scan.c resolves parents. */
START_TEST(diff_chain_through_chain_layer)
{
	struct chain_opts o = { 0 };
	struct chain *c;
	char *top, *want_path;
	uint8_t *buf, *want;
	size_t len;
	int r;

	top = shared_path("c5.vhd");
	r = chain_open_file(top, NULL, &o, &c);
	if (r == -ENOSYS) {	/* the resolver is not there yet */
		free(top);
		return;
	}
	ck_assert_int_eq(r, 0);
	ck_assert_uint_eq(c->depth, CHAIN_DEPTH);
	want_path = shared_path("c5.raw");
	want = fx_read_file(want_path, &len);
	ck_assert_uint_eq(c->size, len);
	buf = malloc(len);
	ck_assert_int_eq(chain_pread(c, buf, len, 0), 0);
	assert_same_as_file(buf, len, want_path);
	chain_free(c);
	free(buf);
	free(want);
	free(want_path);
	free(top);
}
END_TEST

/* A parent made again (a new unique id) no longer matches its child. */
START_TEST(chain_refuses_a_replaced_parent)
{
	const char *dir = fx_tmpdir();
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	char *top = fx_path("rt.vhd");
	int r;

	ck_assert_int_eq(fx_system("cd '%s' && head -c 131072 /dev/urandom > "
				   "r.raw && python3 '%s' create-dynamic "
				   "rb.vhd --from r.raw --block-size 64K && "
				   "python3 '%s' create-diff rt.vhd --parent "
				   "rb.vhd --expect-in r.raw --expect-out "
				   "rt.raw --writes 5+2", dir, MKVHD, MKVHD),
			 0);
	r = chain_open_file(top, NULL, &o, &c);
	if (r == -ENOSYS) {	/* the resolver is not there yet */
		free(top);
		return;
	}
	ck_assert_int_eq(r, 0);
	ck_assert_uint_eq(c->depth, 2);
	chain_free(c);
	ck_assert_int_eq(fx_system("cd '%s' && python3 '%s' create-dynamic "
				   "rb.vhd --from r.raw --block-size 64K",
				   dir, MKVHD), 0);
	ck_assert_int_eq(chain_open_file(top, NULL, &o, &c), -ESTALE);
	free(top);
}
END_TEST

/*
 * More than 64 MiB of sector bitmaps: they are read on demand, not at open.
 * 65600 blocks of 4 MiB, each with a 1 KiB bitmap, all allocated, in a
 * sparse file: the bitmaps read as zero except where written here.
 */
enum { BIG_BS = 4 << 20, BIG_NBLK = 65600, BIG_BMP = 1024 };
#define BIG_FIRST ((512 + 1024 + BIG_NBLK * 4 + 511) & ~511ull)
#define BIG_STRIDE ((uint64_t)BIG_BMP + BIG_BS)

/*
 * A differencing disk of 65600 blocks of 4 MiB (1 KiB bitmaps, 64.1 MiB in
 * all: over the preload cap), every block allocated but block `unused`
 * (-1: none), block b at BIG_FIRST + b * BIG_STRIDE, in a sparse file whose
 * bitmaps read as zeros.  Its parent is named "p.vhd".  Returns an fd.
 */
static int make_big_diff(const char *path, int64_t unused)
{
	const uint64_t size = (uint64_t)BIG_NBLK * BIG_BS;
	uint8_t *meta = calloc(1, BIG_FIRST), foot[512];
	int fd;

	ck_assert_ptr_nonnull(meta);
	own_footer(foot);
	put_be(foot + 48, 8, size);
	put_be(foot + 60, 4, VHD_TYPE_DIFF);
	fix_footer(foot);
	memcpy(meta, foot, 512);
	own_header(meta + 512);
	put_be(meta + 512 + 16, 8, 1536);
	put_be(meta + 512 + 28, 4, BIG_NBLK);
	put_be(meta + 512 + 32, 4, BIG_BS);
	for (int i = 0; i < 16; i++)
		meta[512 + 40 + i] = (uint8_t)(0xa0 + i);
	memcpy(meta + 512 + 64, "\0p\0.\0v\0h\0d", 10);	/* UTF-16BE */
	fix_header(meta + 512);
	for (int64_t b = 0; b < BIG_NBLK; b++)
		put_be(meta + 1536 + 4 * b, 4, b == unused ? 0xffffffffu :
			(BIG_FIRST + (uint64_t)b * BIG_STRIDE) / 512);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, meta, BIG_FIRST, 0), (ssize_t)BIG_FIRST);
	ck_assert_int_eq(pwrite(fd, foot, 512,
				(off_t)(BIG_FIRST + BIG_NBLK * BIG_STRIDE)),
			 512);
	free(meta);
	return fd;
}

START_TEST(diff_bitmaps_on_demand)
{
	enum { BS = BIG_BS, BMP = BIG_BMP };
	const uint64_t size = (uint64_t)BIG_NBLK * BS;
	const uint64_t first = BIG_FIRST, stride = BIG_STRIDE;
	uint8_t bm[BMP];
	char *path = fx_path("lazy.vhd");
	struct img *img;
	struct img_extent e;
	uint64_t b7 = first + 7 * stride, b9 = first + 9 * stride, off;
	int fd = make_big_diff(path, -1);

	/* block 7: sectors 4000..4200 present (across byte 512 of the
	 * bitmap), and sector 8191; block 9: all present */
	memset(bm, 0, sizeof(bm));
	for (int sct = 4000; sct <= 4200; sct++)
		bm[sct / 8] |= (uint8_t)(0x80 >> (sct % 8));
	bm[1023] = 0x01;
	ck_assert_int_eq(pwrite(fd, bm, BMP, (off_t)b7), BMP);
	memset(bm, 0xff, sizeof(bm));
	ck_assert_int_eq(pwrite(fd, bm, BMP, (off_t)b9), BMP);
	close(fd);

	ck_assert_int_eq(open_vhd(path, &img), 0);
	ck_assert_uint_eq(img->size, size);
	off = 7ull * BS;
	ck_assert_int_eq(img_map(img, off + 3000 * 512 + 9, BS, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 1000 * 512 - 9);
	ck_assert_int_eq(img_map(img, off + 4000 * 512, BS, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 201 * 512);
	ck_assert_uint_eq(e.host_off, b7 + BMP + 4000 * 512);
	ck_assert_int_eq(img_map(img, off + 4001 * 512 + 1, BS, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 200 * 512 - 1);
	ck_assert_int_eq(img_map(img, off + 4100 * 512, BS, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 101 * 512);
	ck_assert_int_eq(img_map(img, off + 8191 * 512, BS, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, 512);
	/* block 7 from its start: UNALLOC up to sector 4000, in pieces */
	for (uint64_t o = off; o < off + 4000 * 512; o += e.len) {
		ck_assert_int_eq(img_map(img, o, BS, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
		ck_assert_uint_le(o + e.len, off + 4000 * 512);
	}
	/* block 9: all DATA, however it is cut */
	off = 9ull * BS;
	for (uint64_t o = off; o < off + BS; o += e.len) {
		ck_assert_int_eq(img_map(img, o, size - o, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_DATA);
		ck_assert_uint_eq(e.host_off, b9 + BMP + (o - off));
		ck_assert_uint_le(o + e.len, off + BS);
	}
	ck_assert_int_eq(img_map(img, 8ull * BS, BS, &e), 0);	/* zeros */
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_le(e.len, BS);	/* maybe cut where a read stopped */
	img_unref(img);
	unlink(path);
	free(path);
}
END_TEST

/* A dynamic disk's allocated block is data whatever its bitmap says. */
START_TEST(dynamic_ignores_the_bitmap)
{
	char *raw = fx_path("dz.raw"), *p = fx_path("dz.vhd");
	uint8_t d[128 << 10], *f;
	size_t len;
	uint32_t sector;
	struct img *img;
	uint8_t *flat;

	fx_fill_random(d, sizeof(d), 21);
	free(fx_write_file("dz.raw", d, sizeof(d)));
	ck_assert_int_eq(fx_system("python3 '%s' create-dynamic '%s' --from "
				   "'%s' --block-size 64K", MKVHD, p, raw), 0);
	f = fx_read_file(p, &len);
	sector = (uint32_t)load_be(f + 1536, 4);	/* block 0 */
	ck_assert_uint_ne(sector, 0xffffffff);
	memset(f + (size_t)sector * 512, 0, 512);	/* bitmap: nothing */
	free(fx_write_file("dz.vhd", f, len));
	ck_assert_int_eq(open_vhd(p, &img), 0);
	flat = flatten(&img, 1, 2);
	assert_same_as_file(flat, img->size, raw);
	free(flat);
	img_unref(img);
	free(f);
	free(p);
	free(raw);
}
END_TEST

/* ---- writing and creating --------------------------------------------- */

#define VHDCHECK SOURCE_DIR "/tests/tools/vhdcheck.py"

/* VHD never reads the layers below (no copy-up): a call fails the test. */
static int below_never(void *ctx, void *buf, size_t n, uint64_t off)
{
	(void)ctx;
	(void)buf;
	ck_abort_msg("vhd read %zu bytes at %llu from below", n,
		     (unsigned long long)off);
	return -EIO;
}

static const struct img_below no_below = { below_never, NULL };

static uint32_t xs(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* A raw file of size bytes: random runs with zero gaps; then a dynamic
 * VHD of it: mkvhd's with block size `block`, or qemu-img's (block NULL:
 * 2 MiB, quicker than Python).  Returns the raw's content. */
static uint8_t *make_vhd_base(const char *name, uint64_t size,
			      const char *block, uint32_t seed)
{
	const char *dir = fx_tmpdir();
	uint8_t *d = calloc(1, size);
	char raw[64];

	ck_assert_ptr_nonnull(d);
	for (uint64_t off = 0; off < size; off += 40960)
		fx_fill_random(d + off, MIN((uint64_t)24576, size - off),
			       seed + (uint32_t)off);
	snprintf(raw, sizeof(raw), "%s.raw", name);
	free(fx_write_file(raw, d, size));
	if (block)
		ck_assert_int_eq(fx_system("cd '%s' && python3 '%s' "
					   "create-dynamic %s --from %s "
					   "--block-size %s", dir, MKVHD, name,
					   raw, block), 0);
	else
		ck_assert_int_eq(fx_system("cd '%s' && qemu-img convert -q -f "
					   "raw -O vpc -o subformat=dynamic,"
					   "force_size=on %s %s", dir, raw,
					   name), 0);
	return d;
}

/* create_diff of child (in the private directory) over parent (open). */
static int create_child(const char *child, struct img *parent,
			uint64_t size, uint32_t block)
{
	char *path = fx_path(child);
	const char *base = strrchr(parent->path, '/');
	struct img_create_parent par = {
		.img = parent,
		.rel_path = base ? base + 1 : parent->path,
		.abs_path = parent->path,
		.format = parent->drv->name,
	};
	struct img_create_opts o = { .size = size, .block_size = block };
	int r = vhd_driver.create_diff(path, &par, &o);

	free(path);
	return r;
}

static void assert_model(struct img **l, unsigned n, const uint8_t *model,
			 uint32_t seed)
{
	uint8_t *flat = flatten(l, n, seed);

	for (uint64_t i = 0; i < l[0]->size; i++)
		if (flat[i] != model[i])
			ck_abort_msg("%s: first difference at byte %llu "
				     "(sector %llu): got 0x%02x, want 0x%02x",
				     l[0]->path, (unsigned long long)i,
				     (unsigned long long)i / 512, flat[i],
				     model[i]);
	free(flat);
}

static int vhdcheck(const char *path, const char *parent)
{
	/* its report to stderr: stdout is TAP */
	if (parent)
		return fx_system("python3 '%s' -q '%s' --parent '%s' >&2",
				 VHDCHECK, path, parent);
	return fx_system("python3 '%s' -q '%s' >&2", VHDCHECK, path);
}

/* Steps seen by the counting hook. */
static unsigned steps[VHD_STEP_MAX + 1];

static void count_steps(enum vhd_step s)
{
	steps[s]++;
}

/*
 * Random writes (and zeroings) through the driver, applied to the model
 * too: 1..300 sectors, every third one across a block boundary.
 */
static void random_ops(struct img *img, uint8_t *model, uint32_t seed,
		       int nops, bool zeros)
{
	const uint64_t nsec = img->size / 512;
	const uint64_t bsec = img->block_size ? img->block_size / 512 : 4096;
	uint8_t *buf = malloc(300 * 512);
	uint32_t x = seed | 1;

	ck_assert_ptr_nonnull(buf);
	for (int i = 0; i < nops; i++) {
		uint64_t count = 1 + xs(&x) % MIN((uint64_t)300, nsec), sec;

		if (i % 3 == 1 && nsec / bsec > 1) {
			uint64_t edge = bsec * (1 + xs(&x) % (nsec / bsec - 1));

			sec = edge - 1 - MIN(edge - 1, xs(&x) % count);
			sec = MIN(sec, nsec - count);
		} else {
			sec = xs(&x) % (nsec - count + 1);
		}
		if (zeros && i % 7 == 3) {
			ck_assert_int_eq(img->drv->zero(img, sec * 512,
							count * 512,
							&no_below), 0);
			memset(model + sec * 512, 0, count * 512);
			continue;
		}
		fx_fill_random(buf, count * 512, xs(&x));
		ck_assert_int_eq(img->drv->write(img, buf, count * 512,
						 sec * 512, &no_below), 0);
		memcpy(model + sec * 512, buf, count * 512);
	}
	free(buf);
}

/*
 * A base layer has no parent name: vhd_build() gets name = NULL and must not
 * hand it to memcpy (UBSan: "null pointer passed as argument 2"; found by
 * the write exerciser on an ASan/UBSan build).
 */
START_TEST(create_a_base_layer)
{
	char *path = fx_path("base.vhd");
	struct img_create_opts o = { .size = 1 << 20 };
	struct img *img;

	ck_assert_int_eq(vhd_driver.create(path, &o), 0);
	ck_assert_int_eq(open_vhd(path, &img), 0);
	ck_assert_uint_eq(img->size, 1 << 20);
	img_unref(img);
	free(path);
}
END_TEST

START_TEST(create_over_a_vhd_parent)
{
	const uint64_t size = (3 << 20) + 5 * 512;
	uint8_t *want = make_vhd_base("p.vhd", size, "64K", 3), *f, *h;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *l[2];
	struct img_parent ref = { 0 };
	struct chain_opts o = { 0 };
	struct chain *c;
	size_t len, len2;
	uint8_t *again;
	int r;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 0), 0);

	/* the bytes, read here without vhd.c */
	f = fx_read_file(cp, &len);
	ck_assert_ptr_nonnull(f);
	/* footer, header, a 1-sector BAT, two 1-sector locators, footer */
	ck_assert_uint_eq(len, 512 + 1024 + 512 + 2 * 512 + 512);
	ck_assert_int_eq(memcmp(f, f + len - 512, 512), 0);
	ck_assert_int_eq(memcmp(f, "conectix", 8), 0);
	ck_assert_uint_eq(load_be(f + 8, 4), 2);		/* features */
	ck_assert_uint_eq(load_be(f + 12, 4), 0x00010000);
	ck_assert_uint_eq(load_be(f + 16, 8), 512);
	ck_assert_int_eq(memcmp(f + 28, "lyfs", 4), 0);
	ck_assert_int_eq(memcmp(f + 36, "Wi2k", 4), 0);
	ck_assert_uint_eq(load_be(f + 40, 8), size);
	ck_assert_uint_eq(load_be(f + 48, 8), size);
	ck_assert_uint_eq(load_be(f + 60, 4), 4);
	ck_assert_uint_eq(load_be(f + 64, 4), t_sum(f, 512, 64));
	ck_assert_uint_eq(f[68 + 6] >> 4, 4);		/* random uuid */
	ck_assert(time(NULL) - 946684800 - (time_t)load_be(f + 24, 4) < 60);
	h = f + 512;
	ck_assert_int_eq(memcmp(h, "cxsparse", 8), 0);
	ck_assert_uint_eq(load_be(h + 8, 8), UINT64_MAX);
	ck_assert_uint_eq(load_be(h + 16, 8), 1536);
	ck_assert_uint_eq(load_be(h + 28, 4), 2);		/* entries */
	ck_assert_uint_eq(load_be(h + 32, 4), 2 << 20);
	ck_assert_uint_eq(load_be(h + 36, 4), t_sum(h, 1024, 36));
	ck_assert_uint_eq(load_be(h + 56, 4), footer_timestamp(pp));
	ck_assert_int_eq(memcmp(h + 64, "\0p\0.\0v\0h\0d\0\0", 12), 0);
	ck_assert_int_eq(memcmp(h + 576, "W2ku", 4), 0);
	ck_assert_uint_eq(load_be(h + 576 + 4, 4), 1);	/* sectors */
	ck_assert_uint_eq(load_be(h + 576 + 8, 4), 2 * strlen(pp));
	ck_assert_uint_eq(load_be(h + 576 + 16, 8), 2048);
	ck_assert_int_eq(memcmp(h + 600, "W2ru", 4), 0);
	ck_assert_uint_eq(load_be(h + 600 + 8, 4), 14);	/* ".\p.vhd" */
	ck_assert_uint_eq(load_be(h + 600 + 16, 8), 2560);
	ck_assert_int_eq(memcmp(f + 2560, ".\0\\\0p\0.\0v\0h\0d\0", 14), 0);
	for (int i = 0; i < 128; i++)	/* the BAT, padding too: unused */
		ck_assert_uint_eq(load_be(f + 1536 + 4 * i, 4), 0xffffffff);
	ck_assert_uint_eq(load_be(f + 56, 4), vhd_chs_geometry(size));

	/* through the driver */
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	ck_assert_str_eq(img->subtype, "differencing");
	ck_assert_uint_eq(img->size, size);
	ck_assert_uint_eq(img->block_size, 2 << 20);
	ck_assert(!guid_equal(&img->id, &par->id));
	ck_assert_int_eq(vhd_driver.parent(img, &ref), 1);
	ck_assert_uint_eq(ref.nrefs, 3);
	ck_assert_str_eq(ref.refs[0].what, "W2ru");
	ck_assert_str_eq(ref.refs[0].path, ".\\p.vhd");
	ck_assert_str_eq(ref.refs[1].what, "W2ku");
	ck_assert_str_eq(ref.refs[1].path, pp);	/* the POSIX path */
	ck_assert_int_eq(ref.refs[2].kind, IMG_REF_NAME);
	ck_assert_str_eq(ref.refs[2].path, "p.vhd");
	ck_assert_int_eq(ref.id_kind, IMG_ID_VHD_UUID);
	ck_assert(guid_equal(&ref.id, &par->id));
	ck_assert(ref.has_timestamp);
	ck_assert_uint_eq(ref.timestamp, footer_timestamp(pp));
	img_parent_clear(&ref);
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, want, 1);
	img_unref(img);
	r = chain_open_file(cp, NULL, &o, &c);
	if (r != -ENOSYS) {	/* the resolver: found, and the id checked */
		ck_assert_int_eq(r, 0);
		ck_assert_uint_eq(c->depth, 2);
		ck_assert_int_eq(c->layers[0].id_check, 1);
		chain_free(c);
	}

	/* independent readers: the checker, mkvhd's info, 7-Zip */
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(fx_system("cd '%s' && test \"$(python3 '%s' info "
				   "c.vhd | grep parent_unique_id)\" = "
				   "\"$(python3 '%s' info p.vhd | grep "
				   "'\"unique_id' | sed 's/unique_id/"
				   "parent_unique_id/')\"", fx_tmpdir(),
				   MKVHD, MKVHD), 0);
	ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhd c.vhd "
				   "2>/dev/null | cmp - p.vhd.raw",
				   fx_tmpdir()), 0);

	/* O_EXCL: an existing file is left alone */
	ck_assert_int_eq(create_child("c.vhd", par, 0, 0), -EEXIST);
	again = fx_read_file(cp, &len2);
	ck_assert_uint_eq(len2, len);
	ck_assert_int_eq(memcmp(again, f, len), 0);
	free(again);
	free(f);
	img_unref(par);
	free(want);
	free(pp);
	free(cp);
}
END_TEST

static const struct {
	uint64_t size;
	uint32_t block, sector;
	bool no_paths;
	int err;
} create_bad[] = {
	{ 0, 3000, 0, false, -EINVAL },		/* not a power of two */
	{ 0, 256, 0, false, -EINVAL },		/* under a sector */
	{ 0, 512u << 20, 0, false, -EINVAL },	/* over the reader's cap */
	{ 0, 0, 4096, false, -ENOTSUP },	/* VHD sectors are 512 */
	{ 2041ull << 30, 0, 0, false, -EFBIG },	/* over 2040 GiB */
	{ 1ull << 40, 512, 0, false, -EFBIG },	/* 2^31 BAT entries */
	{ 0, 0, 0, true, -EINVAL },		/* no way to the parent */
};

START_TEST(create_refuses_bad_options)
{
	uint8_t *want = make_vhd_base("p.vhd", 1 << 20, NULL, 4);
	char *pp = fx_path("p.vhd"), *cp = fx_path("bad.vhd");
	struct img *par;
	struct img_create_parent p;
	struct img_create_opts o = { 0 };

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	p = (struct img_create_parent){ par, "p.vhd", pp, "vhd" };
	if (create_bad[_i].no_paths)
		p.rel_path = p.abs_path = NULL;
	o.size = create_bad[_i].size;
	o.block_size = create_bad[_i].block;
	o.sector_size = create_bad[_i].sector;
	ck_assert_int_eq(vhd_driver.create_diff(cp, &p, &o),
			 create_bad[_i].err);
	ck_assert_int_ne(access(cp, F_OK), 0);	/* nothing left behind */
	img_unref(par);
	free(want);
	free(pp);
	free(cp);
}
END_TEST

/* A size of the caller's (rounded up to a sector), a block size too. */
START_TEST(create_with_size_and_block_size)
{
	uint8_t *want = make_vhd_base("p.vhd", 1 << 20, NULL, 5), *model;
	const uint64_t size = (2 << 20) + 512;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *l[2];

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, size - 100, 4096), 0);
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	ck_assert_uint_eq(img->size, size);
	ck_assert_uint_eq(img->block_size, 4096);
	model = calloc(1, size);	/* the parent, then zeros */
	memcpy(model, want, 1 << 20);
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, model, 2);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	img_unref(img);
	img_unref(par);
	free(model);
	free(want);
	free(pp);
	free(cp);
}
END_TEST

/*
 * Over a raw, a qcow2 and a VHDX parent: the parent's identity if it has
 * one (VHDX: its data write GUID), else all zeros (not checked); the
 * parent file's mtime as time stamp; the chain finds the parent, probes
 * its format and checks the identity; writes and zeroing through the
 * driver.
 */
static void check_foreign_parent(const char *fmt)
{
	const uint64_t size = 2 << 20;
	uint8_t *d = malloc(size), *model;
	char *rp = fx_path("p.raw"), *pp, *cp = fx_path("c.vhd");
	struct img *par, *img, *l[2];
	struct img_parent ref = { 0 };
	struct chain_opts o = { 0 };
	struct chain *c;
	struct stat st;
	int r;

	fx_fill_random(d, size, 77);
	free(fx_write_file("p.raw", d, size));
	if (!strcmp(fmt, "raw")) {
		pp = strdup(rp);
	} else {
		char name[16];

		snprintf(name, sizeof(name), "p.%s", fmt);
		pp = fx_path(name);
		ck_assert_int_eq(fx_system("qemu-img convert -q -f raw -O "
					   "%s '%s' '%s'", fmt, rp, pp), 0);
	}
	ck_assert_int_eq(img_open(pp, NULL, false, &par), 0);
	ck_assert_str_eq(par->drv->name, fmt);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 64 << 10), 0);
	ck_assert_int_eq(vhdcheck(cp, NULL), 0);

	ck_assert_int_eq(open_vhd(cp, &img), 0);
	ck_assert_int_eq(vhd_driver.parent(img, &ref), 1);
	if (par->has_id) {
		ck_assert_int_eq(ref.id_kind, IMG_ID_VHD_UUID);
		ck_assert(guid_equal(&ref.id, &par->id));
	} else {
		ck_assert_int_eq(ref.id_kind, IMG_ID_NONE); /* zeros: none */
	}
	ck_assert_ptr_null(ref.format);
	ck_assert_int_eq(stat(pp, &st), 0);
	ck_assert_uint_eq(ref.timestamp, (uint32_t)(st.st_mtime - 946684800));
	img_parent_clear(&ref);
	img_unref(img);

	r = chain_open_file(cp, NULL, &o, &c);
	if (r != -ENOSYS) {
		ck_assert_int_eq(r, 0);
		ck_assert_uint_eq(c->depth, 2);
		ck_assert_str_eq(c->layers[1].img->drv->name, fmt);
		ck_assert_int_eq(c->layers[0].id_check, par->has_id);
		model = malloc(size);
		ck_assert_int_eq(chain_pread(c, model, size, 0), 0);
		ck_assert_int_eq(memcmp(model, d, size), 0);
		free(model);
		chain_free(c);
	}

	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	random_ops(img, d, 9, 60, true);
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, d, 3);
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	l[0] = img;
	assert_model(l, 2, d, 4);
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, NULL), 0);
	img_unref(par);
	free(d);
	free(rp);
	free(pp);
	free(cp);
}

START_TEST(create_over_a_raw_parent)
{
	check_foreign_parent("raw");
}
END_TEST

START_TEST(create_over_a_qcow2_parent)
{
	check_foreign_parent("qcow2");
}
END_TEST

START_TEST(create_over_a_vhdx_parent)
{
	check_foreign_parent("vhdx");
}
END_TEST

/*
 * Random writes and zeroing on a writable image, against a model: after
 * each round through the same handle, through a second read-only handle
 * (write-through: nothing waits for a flush), and after reopening.  Then
 * vhdcheck and an independent reader: 7-Zip for a differencing child,
 * qemu-img for dynamic and fixed disks.
 */
static const struct {
	const char *what;
	const char *block;	/* mkvhd base block size; NULL: qemu-img */
	const char *qemu;	/* qemu-img's vpc subformat */
	uint32_t child_block;	/* differencing child: 0 = none */
	uint64_t size;
} write_cfg[] = {
	{ "diff 64K", "64K", NULL, 64 << 10, (3 << 20) + 7 * 512 },
	{ "diff 2M", "2M", NULL, 2 << 20, (5 << 20) + 3 * 512 },
	{ "diff 4K", "4K", NULL, 4096, 512 << 10 },
	{ "diff over qemu", NULL, "dynamic", 1 << 20, 3 << 20 },
	{ "dynamic 64K", "64K", NULL, 0, (3 << 20) + 7 * 512 },
	{ "dynamic qemu", NULL, "dynamic", 0, (5 << 20) + 512 },
	{ "fixed qemu", NULL, "fixed", 0, (1 << 20) + 512 },
};

START_TEST(writes_match_a_model)
{
	const char *dir = fx_tmpdir();
	uint64_t size = write_cfg[_i].size;
	uint8_t *model;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd"), *top;
	struct img *par = NULL, *img, *ro, *l[2];
	unsigned n = 1;

	if (write_cfg[_i].block) {
		model = make_vhd_base("p.vhd", size, write_cfg[_i].block, 6);
	} else {	/* force_size: qemu reads the size, not CHS */
		model = calloc(1, size);
		fx_fill_random(model, size / 3, 6);
		free(fx_write_file("p.raw", model, size));
		ck_assert_int_eq(fx_system("cd '%s' && qemu-img convert -q -f "
					   "raw -O vpc -o subformat=%s,"
					   "force_size=on p.raw p.vhd", dir,
					   write_cfg[_i].qemu), 0);
	}
	top = pp;
	if (write_cfg[_i].child_block) {
		ck_assert_int_eq(open_vhd(pp, &par), 0);
		ck_assert_int_eq(create_child("c.vhd", par, 0,
					      write_cfg[_i].child_block), 0);
		top = cp;
		n = 2;
	}
	ck_assert_int_eq(img_open(top, NULL, true, &img), 0);
	ck_assert(img->writable);
	l[0] = img;
	l[1] = par;
	for (int round = 0; round < 3; round++) {
		random_ops(img, model, (uint32_t)round * 1000 + 1, 40, true);
		assert_model(l, n, model, (uint32_t)round);
		/* another open sees what a flush wrote back */
		ck_assert_int_eq(img->drv->flush(img), 0);
		ck_assert_int_eq(open_vhd(top, &ro), 0);
		l[0] = ro;
		assert_model(l, n, model, 11);
		img_unref(ro);
		l[0] = img;
	}
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);
	ck_assert_int_eq(open_vhd(top, &img), 0);
	l[0] = img;
	assert_model(l, n, model, 12);
	img_unref(img);
	ck_assert_int_eq(vhdcheck(top, par ? pp : NULL), 0);
	free(fx_write_file("model.raw", model, size));
	if (!par && write_cfg[_i].qemu)	/* qemu reads what it made */
		ck_assert_int_eq(fx_system("cd '%s' && qemu-img convert -f vpc "
					   "-O raw p.vhd q.raw && cmp q.raw "
					   "model.raw", dir), 0);
	else	/* 7-Zip reads chains, and mkvhd's sizes */
		ck_assert_int_eq(fx_system("cd '%s' && 7zz e -so -tvhd %s "
					   "2>/dev/null | cmp - model.raw",
					   dir, par ? "c.vhd" : "p.vhd"), 0);
	img_unref(par);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/*
 * Zeroing: a new block of a differencing disk gets its bits and no data
 * (the space is a hole); an unused block of a dynamic disk stays unused.
 */
START_TEST(zero_writes_no_data_where_it_can)
{
	const uint64_t size = 4 << 20;
	uint8_t *model = make_vhd_base("p.vhd", size, NULL, 8);
	char *ep = fx_path("e.vhd");
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *l[2];
	struct img_extent e;
	off_t before;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 1 << 20), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	vhd_test_hook = count_steps;
	/* blocks 1-2 whole, block 0 from sector 5 */
	ck_assert_int_eq(img->drv->zero(img, 5 * 512, (3 << 20) - 5 * 512,
					&no_below), 0);
	memset(model + 5 * 512, 0, (3 << 20) - 5 * 512);
	ck_assert_uint_eq(steps[VHD_STEP_ALLOC_BITMAP], 0); /* in memory */
	ck_assert_uint_eq(steps[VHD_STEP_ALLOC_DATA], 0);
	ck_assert_uint_eq(steps[VHD_STEP_ALLOC_FOOTER], 1);	/* one batch */
	ck_assert_uint_eq(steps[VHD_STEP_ALLOC_PUBLISH], 1);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC1], 0);	/* no syncs */
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, model, 1);
	ck_assert_int_eq(img_map(img, 0, size, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);	/* the parent's */
	ck_assert_uint_eq(e.len, 5 * 512);
	ck_assert_int_eq(img_map(img, 5 * 512, size, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);		/* zeros, here */
	ck_assert_uint_eq(e.len, (1 << 20) - 5 * 512);
	/* zeros over written sectors of an allocated block are written */
	ck_assert_int_eq(img->drv->write(img, model, 4096, 1 << 20,
					 &no_below), 0);
	memcpy(model + (1 << 20), model, 4096);
	ck_assert_int_eq(img->drv->zero(img, (1 << 20) + 512, 1024, &no_below),
			 0);
	memset(model + (1 << 20) + 512, 0, 1024);
	assert_model(l, 2, model, 2);
	vhd_test_hook = NULL;
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	img_unref(par);

	/* dynamic: zeroing an unused block changes nothing */
	ck_assert_int_eq(fx_system("qemu-img create -q -f vpc -o subformat="
				   "dynamic,force_size=on '%s' 4M", ep), 0);
	ck_assert_int_eq(img_open(ep, NULL, true, &img), 0);
	before = file_size(ep);
	ck_assert_int_eq(img->drv->zero(img, 3 << 20, 1 << 20, &no_below), 0);
	ck_assert_int_eq(file_size(ep), before);
	ck_assert_int_eq(img_map(img, 3 << 20, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 1 << 20);	/* the rest of block 1 */
	img_unref(img);
	free(ep);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/*
 * Four writers on disjoint runs of 3 sectors, interleaved so that they
 * share blocks (allocation races, one bitmap sector for many writers),
 * while two readers check that every sector reads as the parent's or as
 * its final content, never anything else.
 */
struct cw_ctx {
	struct img *l[2];
	const uint8_t *old, *new;
	uint64_t nruns;
	int stop;
};

struct cw_thread {
	struct cw_ctx *c;
	unsigned t;
	int err;
	uint64_t bad, reads;
};

#define CW_WRITERS 4
#define CW_RUN 3

static bool cw_written(uint64_t run)
{
	return run % 5 != 4;	/* some sectors stay the parent's */
}

static void *cw_writer(void *p)
{
	struct cw_thread *w = p;
	struct cw_ctx *c = w->c;
	uint64_t n = 0, *order = malloc(c->nruns * sizeof(*order));
	uint32_t x = w->t * 7919 + 1;

	for (uint64_t r = w->t; r < c->nruns; r += CW_WRITERS)
		if (cw_written(r))
			order[n++] = r;
	for (uint64_t i = n; i > 1; i--) {	/* shuffle */
		uint64_t j = xs(&x) % i, t = order[i - 1];

		order[i - 1] = order[j];
		order[j] = t;
	}
	for (uint64_t i = 0; i < n && !w->err; i++) {
		uint64_t off = order[i] * CW_RUN * 512;
		uint64_t len = MIN((uint64_t)CW_RUN * 512,
				   c->l[0]->size - off);

		w->err = c->l[0]->drv->write(c->l[0], c->new + off, len, off,
					     &no_below);
	}
	free(order);
	return NULL;
}

static void *cw_reader(void *p)
{
	struct cw_thread *rd = p;
	struct cw_ctx *c = rd->c;
	uint64_t nsec = c->l[0]->size / 512;
	uint8_t buf[64 * 512];
	uint32_t x = rd->t * 31 + 5;

	while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
		uint64_t n = 1 + xs(&x) % 64, s = xs(&x) % (nsec - n + 1);

		layers_read(c->l, 0, 2, buf, s * 512, n * 512);
		for (uint64_t k = 0; k < n; k++) {
			const uint8_t *got = buf + k * 512;
			uint64_t at = (s + k) * 512;

			if (memcmp(got, c->old + at, 512) &&
			    memcmp(got, c->new + at, 512))
				rd->bad++;
		}
		rd->reads++;
	}
	return NULL;
}

/* Flushes in a loop while the writers run: a write completing during a
 * flush is neither lost nor written half (the reopened file must match). */
static void *cw_flusher(void *p)
{
	struct cw_thread *f = p;
	struct cw_ctx *c = f->c;

	while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE) && !f->err) {
		f->err = c->l[0]->drv->flush(c->l[0]);
		f->reads++;
	}
	return NULL;
}

START_TEST(concurrent_writers_and_readers)
{
	const uint64_t size = 4 << 20;
	uint8_t *old = make_vhd_base("p.vhd", size, NULL, 10), *new;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img;
	struct cw_ctx c = { .old = old };
	struct cw_thread w[CW_WRITERS], rd[2], fl;
	pthread_t tw[CW_WRITERS], tr[2], tf;

	new = malloc(size);
	memcpy(new, old, size);
	c.nruns = (size / 512 + CW_RUN - 1) / CW_RUN;
	for (uint64_t r = 0; r < c.nruns; r++)
		if (cw_written(r))
			fx_fill_random(new + r * CW_RUN * 512,
				       MIN((uint64_t)CW_RUN * 512,
					   size - r * CW_RUN * 512),
				       (uint32_t)r + 99);
	c.new = new;
	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 64 << 10), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	c.l[0] = img;
	c.l[1] = par;
	for (unsigned i = 0; i < 2; i++) {
		rd[i] = (struct cw_thread){ &c, i, 0, 0, 0 };
		ck_assert_int_eq(pthread_create(&tr[i], NULL, cw_reader,
						&rd[i]), 0);
	}
	fl = (struct cw_thread){ &c, 0, 0, 0, 0 };
	ck_assert_int_eq(pthread_create(&tf, NULL, cw_flusher, &fl), 0);
	for (unsigned i = 0; i < CW_WRITERS; i++) {
		w[i] = (struct cw_thread){ &c, i, 0, 0, 0 };
		ck_assert_int_eq(pthread_create(&tw[i], NULL, cw_writer, &w[i]),
				 0);
	}
	for (unsigned i = 0; i < CW_WRITERS; i++) {
		pthread_join(tw[i], NULL);
		ck_assert_int_eq(w[i].err, 0);
	}
	__atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
	pthread_join(tf, NULL);
	ck_assert_int_eq(fl.err, 0);
	ck_assert_uint_gt(fl.reads, 0);		/* flushes ran */
	for (unsigned i = 0; i < 2; i++) {
		pthread_join(tr[i], NULL);
		ck_assert_uint_eq(rd[i].bad, 0);
		ck_assert_uint_gt(rd[i].reads, 0);
	}
	assert_model(c.l, 2, new, 1);
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	c.l[0] = img;
	assert_model(c.l, 2, new, 2);
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	img_unref(par);
	free(old);
	free(new);
	free(pp);
	free(cp);
}
END_TEST

/*
 * A crash between any two steps of the write and flush paths (the forked
 * writer _exits there: the page cache keeps what it wrote, as after a
 * killed process): the file passes vhdcheck, opens for writing again, and
 * each of the two writes in flight reads as wholly old or wholly new, as
 * the step says; the write flushed before the crash always reads back.
 * Write A goes into allocated block 0, write B allocates blocks 1 and 2
 * in one batch, then a flush.  Before the flush nothing of A or B is in
 * the file's metadata: both read old.
 */
static const struct {
	enum vhd_step step;
	bool a_new, b_new;
} crash_at[] = {
	{ VHD_STEP_DATA, false, false },	/* A's data, no bits */
	{ VHD_STEP_BITMAP, false, false },	/* A's bits in memory only */
	{ VHD_STEP_ALLOC_FOOTER, false, false },
	{ VHD_STEP_ALLOC_DATA, false, false },
	{ VHD_STEP_ALLOC_PUBLISH, false, false }, /* killed before fsync */
	{ VHD_STEP_FLUSH_BITMAP, true, false },	/* block 0's bitmap */
	{ VHD_STEP_FLUSH_SYNC1, true, false },
	{ VHD_STEP_FLUSH_BAT, true, true },	/* the BAT points at B */
	{ VHD_STEP_FLUSH_SYNC2, true, true },
};

static enum vhd_step crash_step;

static void crash_hook(enum vhd_step s)
{
	if (s == crash_step)
		_exit(42);
}

START_TEST(crash_between_steps)
{
	const uint64_t size = 1 << 20;
	uint8_t *model = make_vhd_base("p.vhd", size, NULL, 12), *after;
	uint8_t a[10 * 512], b[20 * 512];
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	const uint64_t a_off = 20 * 512, b_off = 250 * 512; /* 128/block */
	struct img *par, *img, *l[2];
	int status;
	pid_t pid;

	fx_fill_random(a, sizeof(a), 1);
	fx_fill_random(b, sizeof(b), 2);
	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 64 << 10), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	ck_assert_int_eq(img->drv->write(img, b, 10 * 512, 0, &no_below), 0);
	memcpy(model, b, 10 * 512);
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);

	fflush(NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		crash_step = crash_at[_i].step;
		vhd_test_hook = crash_hook;
		if (img_open(cp, NULL, true, &img) < 0 ||
		    img->drv->write(img, a, sizeof(a), a_off, &no_below) < 0 ||
		    img->drv->write(img, b, sizeof(b), b_off, &no_below) < 0 ||
		    img->drv->flush(img) < 0)
			_exit(1);
		_exit(0);	/* the step never came */
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 42);

	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	after = malloc(size);
	memcpy(after, model, size);
	if (crash_at[_i].a_new)
		memcpy(after + a_off, a, sizeof(a));
	if (crash_at[_i].b_new)
		memcpy(after + b_off, b, sizeof(b));
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, after, 1);
	img_unref(img);

	/* writable again (a valid footer ends the file); redo, reread */
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	ck_assert_int_eq(img->drv->write(img, a, sizeof(a), a_off, &no_below),
			 0);
	ck_assert_int_eq(img->drv->write(img, b, sizeof(b), b_off, &no_below),
			 0);
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);
	memcpy(model + a_off, a, sizeof(a));
	memcpy(model + b_off, b, sizeof(b));
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	l[0] = img;
	assert_model(l, 2, model, 2);
	img_unref(img);
	img_unref(par);
	free(after);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/*
 * Flush cost: with nothing dirty, one fdatasync and no write; sequential
 * writes into new and allocated blocks take no fdatasync at all, and
 * their metadata reaches the file only at the flush (or at close).
 */
START_TEST(writes_defer_metadata_to_flush)
{
	const uint64_t size = 4 << 20;
	uint8_t *model = make_vhd_base("p.vhd", size, NULL, 14), *buf;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *ro, *l[2];
	struct img_extent e;
	uint8_t *before, *mid;
	size_t len0, len1;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 1 << 20), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	memset(steps, 0, sizeof(steps));
	vhd_test_hook = count_steps;
	ck_assert_int_eq(img->drv->flush(img), 0);	/* nothing dirty */
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC1], 1);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_BITMAP], 0);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC2], 0);
	before = fx_read_file(cp, &len0);
	buf = malloc(256 << 10);
	for (uint64_t off = 0; off < (3 << 20); off += 256 << 10) {
		fx_fill_random(buf, 256 << 10, (uint32_t)off);
		ck_assert_int_eq(img->drv->write(img, buf, 256 << 10, off,
						 &no_below), 0);
		memcpy(model + off, buf, 256 << 10);
	}
	ck_assert_uint_eq(steps[VHD_STEP_ALLOC_FOOTER], 3);  /* one a block */
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC1], 1);   /* none more */
	/* the file's metadata is unchanged: a reader sees the parent */
	mid = fx_read_file(cp, &len1);
	ck_assert_uint_gt(len1, len0);
	ck_assert_int_eq(memcmp(before, mid, len0), 0);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(open_vhd(cp, &ro), 0);
	l[0] = ro;
	l[1] = par;
	for (uint64_t off = 0; off < size; off += 1 << 20) {
		ck_assert_int_eq(img_map(ro, off, size - off, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_UNALLOC); /* no block yet */
		ck_assert_uint_eq(e.len, 1 << 20);
	}
	img_unref(ro);
	/* the writer itself reads its own writes */
	l[0] = img;
	assert_model(l, 2, model, 1);
	ck_assert_int_eq(img->drv->flush(img), 0);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC1], 2);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_BITMAP], 3);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_BAT], 1);    /* one run */
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC2], 1);
	ck_assert_int_eq(open_vhd(cp, &ro), 0);
	l[0] = ro;
	assert_model(l, 2, model, 2);
	img_unref(ro);
	/* rewriting written sectors dirties nothing */
	ck_assert_int_eq(img->drv->write(img, buf, 4096, 8192, &no_below), 0);
	memcpy(model + 8192, buf, 4096);
	ck_assert_int_eq(img->drv->flush(img), 0);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_BITMAP], 3);
	ck_assert_uint_eq(steps[VHD_STEP_FLUSH_SYNC2], 1);
	/* close writes dirty metadata back */
	ck_assert_int_eq(img->drv->write(img, buf, 4096, 3 << 20, &no_below),
			 0);
	memcpy(model + (3 << 20), buf, 4096);
	vhd_test_hook = NULL;
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(open_vhd(cp, &ro), 0);
	l[0] = ro;
	assert_model(l, 2, model, 3);
	img_unref(ro);
	img_unref(par);
	free(before);
	free(mid);
	free(buf);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/*
 * A file whose end is not a valid footer (a power failure after the file
 * grew and before its new footer was durable): a read-only open reads it
 * through the footer copy and leaves it as it is; a writable open writes
 * the footer after the last block and cuts the file there, which gives
 * back exactly the file as it was before the damage.
 */
static const struct {
	const char *what;
	bool empty;		/* no block allocated */
	long cut;		/* bytes cut off the end */
	long zeros;		/* then zero bytes appended (a hole) */
	long junk;		/* then random bytes appended */
	int flip;		/* a footer byte flipped (-1: none) */
} tails[] = {
	{ "footer cut off", false, 512, 0, 0, -1 },
	{ "footer cut in two", false, 200, 0, 0, -1 },
	{ "footer a hole", false, 512, 512, 0, -1 },
	{ "an unfinished block", false, 512, 4096, 100 << 10, -1 },
	{ "footer checksum bad", false, 0, 0, 0, 64 },
	{ "footer cookie bad", false, 0, 0, 0, 0 },
	{ "empty, footer cut off", true, 512, 0, 0, -1 },
	{ "empty, footer a hole", true, 512, 1536, 0, -1 },
};

START_TEST(writable_open_repairs_the_tail)
{
	const uint64_t size = 3 << 20;
	uint8_t *model = make_vhd_base("p.vhd", size, NULL, 15), *orig, *bad;
	uint8_t *got, buf[8192];
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *l[2];
	size_t olen, blen, glen;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 1 << 20), 0);
	if (!tails[_i].empty) {
		ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
		fx_fill_random(buf, sizeof(buf), 7);
		ck_assert_int_eq(img->drv->write(img, buf, sizeof(buf),
						 (1 << 20) + 512, &no_below),
				 0);
		ck_assert_int_eq(img->drv->write(img, buf, sizeof(buf),
						 (2 << 20) - 4096, &no_below),
				 0);
		ck_assert_int_eq(img->drv->flush(img), 0);
		img_unref(img);
		memcpy(model + (1 << 20) + 512, buf, sizeof(buf));
		memcpy(model + (2 << 20) - 4096, buf, sizeof(buf));
	}
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	orig = fx_read_file(cp, &olen);
	bad = malloc(olen + (size_t)tails[_i].zeros + (size_t)tails[_i].junk);
	memcpy(bad, orig, olen);
	blen = olen - (size_t)tails[_i].cut;
	if (tails[_i].flip >= 0)
		bad[olen - 512 + (size_t)tails[_i].flip] ^= 0x10;
	memset(bad + blen, 0, (size_t)tails[_i].zeros);
	blen += (size_t)tails[_i].zeros;
	fx_fill_random(bad + blen, (size_t)tails[_i].junk, 9);
	blen += (size_t)tails[_i].junk;
	free(fx_write_file("c.vhd", bad, blen));
	ck_assert_int_ne(vhdcheck(cp, pp), 0);	/* the checker sees it */

	/* read-only: the copy at offset 0, the same disk, not one byte
	 * written */
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	l[0] = img;
	l[1] = par;
	assert_model(l, 2, model, 1);
	img_unref(img);
	got = fx_read_file(cp, &glen);
	ck_assert_uint_eq(glen, blen);
	ck_assert_int_eq(memcmp(got, bad, blen), 0);
	free(got);

	/* writable: repaired at open, before any write */
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	got = fx_read_file(cp, &glen);
	ck_assert_uint_eq(glen, olen);
	ck_assert_int_eq(memcmp(got, orig, olen), 0);
	free(got);
	l[0] = img;
	assert_model(l, 2, model, 2);
	/* and it takes writes: a new block goes after the repaired end */
	fx_fill_random(buf, sizeof(buf), 8);
	ck_assert_int_eq(img->drv->write(img, buf, sizeof(buf), 4096,
					 &no_below), 0);
	memcpy(model + 4096, buf, sizeof(buf));
	ck_assert_int_eq(img->drv->flush(img), 0);
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(open_vhd(cp, &img), 0);
	l[0] = img;
	assert_model(l, 2, model, 3);
	img_unref(img);
	img_unref(par);
	free(orig);
	free(bad);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/*
 * Dirty metadata is bounded: with 4 KiB blocks, writes into more than
 * 4096 new blocks make a writer run the flush itself, so another open
 * sees the first blocks without an explicit flush.
 */
START_TEST(dirty_metadata_is_bounded)
{
	const uint64_t size = 24 << 20, nb = 5000;
	uint8_t *model = make_vhd_base("p.vhd", size, NULL, 16), buf[512];
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd");
	struct img *par, *img, *ro, *l[2];
	struct img_extent e;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 4096), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	memset(steps, 0, sizeof(steps));
	vhd_test_hook = count_steps;
	for (uint64_t b = 0; b < nb; b++) {
		fx_fill_random(buf, sizeof(buf), (uint32_t)b);
		ck_assert_int_eq(img->drv->write(img, buf, 512, b * 4096 + 512,
						 &no_below), 0);
		memcpy(model + b * 4096 + 512, buf, 512);
	}
	vhd_test_hook = NULL;
	ck_assert_uint_ge(steps[VHD_STEP_FLUSH_SYNC2], 1);
	ck_assert_uint_le(steps[VHD_STEP_FLUSH_SYNC2], 2);
	ck_assert_int_eq(open_vhd(cp, &ro), 0);
	ck_assert_int_eq(img_map(ro, 512, 512, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);		/* flushed by itself */
	img_unref(ro);
	img_unref(img);					/* close: the rest */
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	ck_assert_int_eq(open_vhd(cp, &ro), 0);
	l[0] = ro;
	l[1] = par;
	assert_model(l, 2, model, 1);
	img_unref(ro);
	img_unref(par);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/* Files the driver reads but will not write; it never changes a file it
 * only opens. */
START_TEST(writable_open_refusals)
{
	const char *dir = fx_tmpdir();
	uint8_t *model = make_vhd_base("p.vhd", 1 << 20, "64K", 13), *f, *g;
	char *pp = fx_path("p.vhd"), *bad = fx_path("bad.vhd");
	struct img *img;
	size_t len, len2;

	f = fx_read_file(pp, &len);
	ck_assert_ptr_nonnull(f);

	/* opened writable and closed: not one byte changes */
	ck_assert_int_eq(img_open(pp, NULL, true, &img), 0);
	img_unref(img);
	g = fx_read_file(pp, &len2);
	ck_assert_uint_eq(len2, len);
	ck_assert_int_eq(memcmp(f, g, len), 0);
	free(g);


	/* in a saved state */
	f[84] = f[len - 512 + 84] = 1;
	fix_footer(f);
	fix_footer(f + len - 512);
	free(fx_write_file("bad.vhd", f, len));
	ck_assert_int_eq(open_vhd(bad, &img), 0);
	img_unref(img);
	ck_assert_int_eq(img_open(bad, NULL, true, &img), -EROFS);
	f[84] = f[len - 512 + 84] = 0;
	fix_footer(f);
	fix_footer(f + len - 512);

	/* block 0 moved onto the BAT (sector 3), and onto block 1 */
	{
		uint64_t b0 = load_be(f + 1536, 4), b1 = load_be(f + 1540, 4);

		ck_assert_uint_ne(b0, 0xffffffff);
		ck_assert_uint_ne(b1, 0xffffffff);
		put_be(f + 1536, 4, 3);
		free(fx_write_file("bad.vhd", f, len));
		ck_assert_int_eq(open_vhd(bad, &img), 0);
		img_unref(img);
		ck_assert_int_eq(img_open(bad, NULL, true, &img), -EROFS);
		put_be(f + 1536, 4, b1 + 1);
		free(fx_write_file("bad.vhd", f, len));
		ck_assert_int_eq(open_vhd(bad, &img), 0);
		img_unref(img);
		ck_assert_int_eq(img_open(bad, NULL, true, &img), -EROFS);
		put_be(f + 1536, 4, b0);
	}
	free(fx_write_file("bad.vhd", f, len));
	ck_assert_int_eq(img_open(bad, NULL, true, &img), 0);
	img_unref(img);
	free(f);

	/* a 511-byte footer (Virtual PC before 2004) */
	ck_assert_int_eq(fx_system("cd '%s' && qemu-img convert -q -f raw -O "
				   "vpc -o subformat=fixed,force_size=on "
				   "p.vhd.raw f.vhd && truncate -s -1 f.vhd",
				   dir), 0);
	free(bad);
	bad = fx_path("f.vhd");
	ck_assert_int_eq(open_vhd(bad, &img), 0);
	img_unref(img);
	ck_assert_int_eq(img_open(bad, NULL, true, &img), -EROFS);
	free(model);
	free(pp);
	free(bad);
}
END_TEST

/*
 * Over the preload cap: bitmaps stay in the file, are read and rewritten
 * there, and a new block's bitmap is written there too.
 */
START_TEST(writable_with_bitmaps_on_disk)
{
	char *path = fx_path("big.vhd");
	int fd = make_big_diff(path, 11);
	struct img *img;
	struct img_extent e;
	static const uint8_t zeros[512];
	uint8_t buf[8 * 512], got[8 * 512];
	const uint64_t b7 = 7ull * BIG_BS, b11 = 11ull * BIG_BS;

	close(fd);
	fx_fill_random(buf, sizeof(buf), 3);
	ck_assert_int_eq(img_open(path, NULL, true, &img), 0);
	ck_assert_int_eq(img_map(img, b7 + 100 * 512, 512, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_int_eq(img->drv->write(img, buf, sizeof(buf),
					 b7 + 100 * 512, &no_below), 0);
	ck_assert_int_eq(img->drv->write(img, buf, sizeof(buf),
					 b11 + 4090 * 512, &no_below), 0);
	ck_assert_int_eq(img->drv->zero(img, b7 + 108 * 512, 512, &no_below),
			 0);
	for (int pass = 0; pass < 2; pass++) {
		ck_assert_int_eq(img_map(img, b7 + 99 * 512, BIG_BS, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
		ck_assert_uint_eq(e.len, 512);
		ck_assert_int_eq(img_map(img, b7 + 100 * 512, BIG_BS, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_DATA);
		ck_assert_uint_eq(e.len, 9 * 512);
		ck_assert_int_eq(pread(e.fd, got, sizeof(got),
				       (off_t)e.host_off),
				 (ssize_t)sizeof(got));
		ck_assert_int_eq(memcmp(got, buf, sizeof(buf)), 0);
		ck_assert_int_eq(pread(e.fd, got, 512,
				       (off_t)e.host_off + 8 * 512), 512);
		ck_assert_int_eq(memcmp(got, zeros, 512), 0);
		ck_assert_int_eq(img_map(img, b11, BIG_BS, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
		ck_assert_uint_eq(e.len, 4090 * 512);
		ck_assert_int_eq(img_map(img, b11 + 4090 * 512, BIG_BS, &e), 0);
		ck_assert_int_eq(e.type, IMG_EXT_DATA);
		ck_assert_uint_eq(e.len, 8 * 512);
		ck_assert_int_eq(pread(e.fd, got, sizeof(got),
				       (off_t)e.host_off),
				 (ssize_t)sizeof(got));
		ck_assert_int_eq(memcmp(got, buf, sizeof(buf)), 0);
		img_unref(img);
		ck_assert_int_eq(open_vhd(path, &img), 0);
	}
	img_unref(img);
	ck_assert_int_eq(vhdcheck(path, NULL), 0);
	unlink(path);
	free(path);
}
END_TEST

/* The geometry field against mkvhd.py's own reading of the spec. */
START_TEST(chs_geometry_matches_the_spec)
{
	static const uint64_t sizes[] = {
		512, 1 << 20, 100 << 20, 504ull << 20, 528482304ull,
		4ull << 30, 8422686720ull, 31ull << 30, 33ull << 30,
		127ull << 30, 136365211648ull, 2040ull << 30,
	};
	char list[1024] = "", *got, *out = fx_path("chs.txt");
	size_t len, o = 0;

	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%llu",
				      i ? "," : "",
				      (unsigned long long)sizes[i]);
	ck_assert_int_eq(fx_system("cd '%s' && python3 -c 'import sys; sys."
				   "path.insert(0, \"%s/tests/tools\"); import "
				   "mkvhd\nfor n in (%s):\n c, h, s = mkvhd."
				   "chs_geometry(n); print(c << 16 | h << 8 | "
				   "s)' > chs.txt", fx_tmpdir(), SOURCE_DIR,
				   list), 0);
	got = (char *)fx_read_file(out, &len);
	ck_assert_ptr_nonnull(got);
	got[len] = '\0';
	for (size_t i = 0, at = 0; i < ARRAY_SIZE(sizes); i++) {
		unsigned long want = strtoul(got + at, NULL, 10);

		ck_assert_msg(want == vhd_chs_geometry(sizes[i]),
			      "geometry of %llu bytes: 0x%08x, mkvhd 0x%08lx",
			      (unsigned long long)sizes[i],
			      vhd_chs_geometry(sizes[i]), want);
		at = (size_t)(strchr(got + at, '\n') - got) + 1;
	}
	free(got);
	free(out);
}
END_TEST

/* vhdcheck must be able to fail: one damage at a time on a written child. */
static const struct {
	const char *what;
	unsigned off, width;	/* from the file's start */
	uint64_t val;
} vc_damage[] = {
	{ "footer copy differs", 24, 1, 0x77 },
	{ "header checksum stale", 512 + 100, 1, 0x41 },
	{ "block 1 on block 0", 1540, 4, 0 },	/* copied from entry 0 */
	{ "block past the footer", 1536, 4, 0x100000 },
	{ "locator past the end", 512 + 576 + 16, 8, 1 << 30 },
	{ "odd W2ru length", 512 + 600 + 8, 4, 13 },
	{ "parent name bad UTF-16", 512 + 64, 2, 0xdc00 },
};

START_TEST(vhdcheck_finds_damage)
{
	uint8_t *model = make_vhd_base("p.vhd", 1 << 20, NULL, 14), *f;
	char *pp = fx_path("p.vhd"), *cp = fx_path("c.vhd"), *bad;
	struct img *par, *img;
	size_t len;

	ck_assert_int_eq(open_vhd(pp, &par), 0);
	ck_assert_int_eq(create_child("c.vhd", par, 0, 64 << 10), 0);
	ck_assert_int_eq(img_open(cp, NULL, true, &img), 0);
	ck_assert_int_eq(img->drv->write(img, model, 300 * 512, 0, &no_below),
			 0);	/* blocks 0-2 */
	random_ops(img, model, 5, 10, false);
	img_unref(img);
	ck_assert_int_eq(vhdcheck(cp, pp), 0);
	f = fx_read_file(cp, &len);
	for (size_t i = 0; i < ARRAY_SIZE(vc_damage); i++) {
		unsigned off = vc_damage[i].off;
		uint8_t *d = malloc(len);

		memcpy(d, f, len);
		if (off == 1540)
			memcpy(d + 1540, d + 1536, 4);
		else
			put_be(d + off, vc_damage[i].width, vc_damage[i].val);
		if (off < 512)
			fix_footer(d);
		else if (off >= 512 + 576 && off < 512 + 1024)
			fix_header(d + 512);
		else if (off == 512 + 64)
			fix_header(d + 512);
		bad = fx_write_file("bad.vhd", d, len);
		ck_assert_msg(vhdcheck(bad, NULL) == 1, "%s: not found",
			      vc_damage[i].what);
		free(bad);
		free(d);
	}
	img_unref(par);
	free(f);
	free(model);
	free(pp);
	free(cp);
}
END_TEST

/* ---- malformed files -------------------------------------------------- */

enum where {
	AT_FOOTERS,	/* both footer copies (offset 0 and the end) */
	AT_END,		/* the footer at the end only */
	AT_HEADER,	/* the dynamic header at 512 */
	AT_ABS,		/* an absolute file offset (BAT: no checksum) */
	AT_LOC1_DATA,	/* the data of locator 1 (W2ru) */
};

static const struct patch {
	const char *what;
	enum where at;
	unsigned off, width;
	uint64_t val;
	bool fix;
	int err;
} patches[] = {
	{ "intact", AT_ABS, 0, 0, 0, false, 0 },
	{ "footer cookie", AT_FOOTERS, 0, 1, 'X', true, -EINVAL },
	{ "footer checksum", AT_FOOTERS, 64, 4, 0x12345678, false, -EBADMSG },
	{ "footer data, stale sum", AT_FOOTERS, 40, 1, 0x55, false, -EBADMSG },
	{ "end footer only bad", AT_END, 64, 4, 0, false, 0 },
	{ "end footer cookie only", AT_END, 0, 1, 'Z', false, 0 },
	{ "disk type 5", AT_FOOTERS, 60, 4, 5, true, -ENOTSUP },
	{ "disk type 1", AT_FOOTERS, 60, 4, 1, true, -ENOTSUP },
	{ "footer version", AT_FOOTERS, 12, 4, 0x00020000, true, -ENOTSUP },
	{ "header past EOF", AT_FOOTERS, 16, 8, 1ull << 40, true, -EUCLEAN },
	{ "header offset ~0", AT_FOOTERS, 16, 8, UINT64_MAX, true, -EUCLEAN },
	{ "header cookie", AT_HEADER, 0, 1, 'X', true, -EUCLEAN },
	{ "header checksum", AT_HEADER, 36, 4, 0, false, -EBADMSG },
	{ "header data, stale sum", AT_HEADER, 100, 1, 1, false, -EBADMSG },
	{ "header version", AT_HEADER, 24, 4, 0x00020000, true, -ENOTSUP },
	{ "block size 0", AT_HEADER, 32, 4, 0, true, -EUCLEAN },
	{ "block size 3000", AT_HEADER, 32, 4, 3000, true, -EUCLEAN },
	{ "block size 1 GiB", AT_HEADER, 32, 4, 1u << 30, true, -EFBIG },
	{ "block size 2K: BAT too small", AT_HEADER, 32, 4, 2048, true,
	  -EUCLEAN },
	{ "max entries huge", AT_HEADER, 28, 4, 0x40000001, true, -EFBIG },
	{ "max entries too few", AT_HEADER, 28, 4, 63, true, -EUCLEAN },
	{ "max entries more", AT_HEADER, 28, 4, 65, true, 0 },
	{ "BAT past EOF", AT_HEADER, 16, 8, 1ull << 32, true, -EUCLEAN },
	{ "BAT offset ~0", AT_HEADER, 16, 8, UINT64_MAX - 3, true, -EUCLEAN },
	{ "BAT entry past EOF", AT_ABS, 1536, 4, 0x00ffffff, false, -EUCLEAN },
	{ "BAT entry in footer", AT_ABS, 1536, 4, 20, false, -EUCLEAN },
	{ "BAT entry 0xfffffffe", AT_ABS, 1536, 4, 0xfffffffe, false,
	  -EUCLEAN },
	{ "locator 0 offset past EOF", AT_HEADER, 576 + 16, 8, 1ull << 40,
	  true, -EUCLEAN },
	{ "locator 0 offset ~0", AT_HEADER, 576 + 16, 8, UINT64_MAX, true,
	  -EUCLEAN },
	{ "locator 1 length past EOF", AT_HEADER, 576 + 24 + 8, 4, 65536,
	  true, -EUCLEAN },
	{ "locator 1 length over cap", AT_HEADER, 576 + 24 + 8, 4, 1u << 20,
	  true, -EFBIG },
	{ "locator 1 odd length", AT_HEADER, 576 + 24 + 8, 4, 3, true,
	  -EUCLEAN },
	{ "locator 1 unpaired surrogate", AT_LOC1_DATA, 0, 2, 0x00d8, false,
	  -EUCLEAN },
	{ "parent name lone low surrogate", AT_HEADER, 64, 2, 0xdc00, true,
	  -EUCLEAN },
	{ "locator 0 data space 0", AT_HEADER, 576 + 4, 4, 0, true, 0 },
	{ "locator 2 unknown code", AT_HEADER, 576 + 48, 4, 0x41424344, true,
	  0 },
};

/* s-base.vhd (dynamic, 256 KiB) and s-diff.vhd (4K blocks, 2 allocated) */
static void make_small_diff(const char *dir)
{
	uint8_t d[256 << 10];
	char *p = shared_path("s-base.raw");
	FILE *fp = fopen(p, "wb");

	fx_fill_random(d, sizeof(d), 99);
	ck_assert_ptr_nonnull(fp);
	ck_assert_uint_eq(fwrite(d, 1, sizeof(d), fp), sizeof(d));
	fclose(fp);
	free(p);
	ck_assert_int_eq(fx_system("cd '%s' && python3 '%s' create-dynamic "
				   "s-base.vhd --from s-base.raw --block-size "
				   "64K && python3 '%s' create-diff s-diff.vhd "
				   "--parent s-base.vhd --expect-in s-base.raw "
				   "--expect-out s-diff.raw --block-size 4K "
				   "--writes 1+3,200+5", dir, MKVHD, MKVHD), 0);
}

static void shared_mkdir(void)
{
	const char *base = getenv("TMPDIR");

	ck_assert_int_ge(asprintf(&shared, "%s/layerfs-vhd-XXXXXX",
				  base ? base : "/tmp"), 0);
	ck_assert_ptr_nonnull(mkdtemp(shared));
}

static void setup_chain(void)
{
	shared_mkdir();
	make_chain(shared);
}

static void setup_small_diff(void)
{
	shared_mkdir();
	make_small_diff(shared);
}

static void shared_teardown(void)
{
	if (!getenv("FX_KEEP"))
		fx_system("rm -rf '%s'", shared);
	free(shared);
	shared = NULL;
}

START_TEST(malformed_files_fail_cleanly)
{
	const struct patch *pt = &patches[_i];
	char *good = shared_path("s-diff.vhd"), *bad;
	size_t len;
	uint8_t *f = fx_read_file(good, &len), *h, *end, *target = NULL;
	struct img *img = NULL;
	int r;

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(len, 12800);	/* mkvhd's layout, see below */
	h = f + 512;
	end = f + len - 512;
	switch (pt->at) {
	case AT_FOOTERS:
		put_be(f + pt->off, pt->width, pt->val);
		target = end;
		break;
	case AT_END:
		target = end;
		break;
	case AT_HEADER:
		target = h;
		break;
	case AT_ABS:
		target = f;
		break;
	case AT_LOC1_DATA:
		target = f + load_be(h + 576 + 24 + 16, 8);
		break;
	}
	if (pt->width)
		put_be(target + pt->off, pt->width, pt->val);
	if (pt->fix) {
		fix_footer(f);
		fix_footer(end);
		fix_header(h);
	}
	bad = fx_write_file("bad.vhd", f, len);
	r = open_vhd(bad, &img);
	ck_assert_msg(r == pt->err, "%s: got %d, want %d", pt->what, r,
		      pt->err);
	if (r == 0) {
		struct img *base;
		char *bp = shared_path("s-base.vhd");
		char *dp = shared_path("s-diff.raw");
		struct img *l[2];
		uint8_t *flat;

		ck_assert_int_eq(open_vhd(bp, &base), 0);
		l[0] = img;
		l[1] = base;
		flat = flatten(l, 2, 5);
		assert_same_as_file(flat, img->size, dp);
		free(flat);
		img_unref(base);
		img_unref(img);
		free(bp);
		free(dp);
	}
	free(f);
	free(good);
	free(bad);
}
END_TEST

/* Locator 1 turned into a Mac OS X file URL (UTF-8, percent-encoded). */
START_TEST(macx_locator)
{
	static const struct {
		const char *url, *path;
		enum img_ref_kind kind;
	} urls[] = {
		{ "file://localhost/Users/a/my%20disk.vhd",
		  "/Users/a/my disk.vhd", IMG_REF_ABSOLUTE },
		{ "file:///srv/p%2.vhd%", "/srv/p%2.vhd%", IMG_REF_ABSOLUTE },
		{ "sub/p%00.vhd", "sub/p%00.vhd", IMG_REF_RELATIVE },
	};
	char *good = shared_path("s-diff.vhd");
	size_t len;
	uint8_t *f = fx_read_file(good, &len);
	uint8_t *loc = f + 512 + 576 + 24;
	uint64_t data = load_be(loc + 16, 8);

	for (size_t i = 0; i < ARRAY_SIZE(urls); i++) {
		struct img_parent par = { 0 };
		struct img *img;
		char *p;

		memset(f + data, 0, 512);
		memcpy(f + data, urls[i].url, strlen(urls[i].url));
		memcpy(loc, "MacX", 4);
		put_be(loc + 8, 4, strlen(urls[i].url));
		fix_header(f + 512);
		p = fx_write_file("macx.vhd", f, len);
		ck_assert_int_eq(open_vhd(p, &img), 0);
		ck_assert_int_eq(vhd_driver.parent(img, &par), 1);
		ck_assert_uint_eq(par.nrefs, 3);
		ck_assert_str_eq(par.refs[0].what, "W2ku");
		ck_assert_str_eq(par.refs[1].what, "MacX");
		ck_assert_str_eq(par.refs[1].path, urls[i].path);
		ck_assert_int_eq(par.refs[1].kind, urls[i].kind);
		ck_assert_int_eq(par.refs[2].kind, IMG_REF_NAME);
		img_parent_clear(&par);
		img_unref(img);
		free(p);
	}
	free(f);
	free(good);
}
END_TEST

START_TEST(truncated_files_fail_cleanly)
{
	static const struct {
		off_t len;
		int err;
	} cut[] = {
		{ 12800 - 512, 0 },		/* footer gone: the copy */
		{ 12000, -EUCLEAN },		/* in the last block */
		{ 6000, -EUCLEAN },		/* in the first block */
		{ 1200, -EUCLEAN },		/* in the dynamic header */
		{ 511, -EINVAL },		/* not even a footer */
		{ 0, -EINVAL },
	};
	char *good = shared_path("s-diff.vhd"), *p = fx_path("cut.vhd");
	struct img *img;

	for (size_t i = 0; i < ARRAY_SIZE(cut); i++) {
		ck_assert_int_eq(fx_system("cp '%s' '%s'", good, p), 0);
		ck_assert_int_eq(truncate(p, cut[i].len), 0);
		ck_assert_int_eq(open_vhd(p, &img), cut[i].err);
		if (cut[i].err == 0)
			img_unref(img);
	}
	/* the limit: the last block may end right at the footer */
	ck_assert_int_eq(fx_system("cp '%s' '%s'", good, p), 0);
	ck_assert_int_eq(open_vhd(p, &img), 0);
	img_unref(img);
	free(good);
	free(p);
}
END_TEST

/* BAT entry 0 moved so that its block ends exactly at the footer, then
 * one sector later (into the footer). */
START_TEST(block_must_end_before_the_footer)
{
	char *good = shared_path("s-diff.vhd"), *p;
	size_t len;
	uint8_t *f = fx_read_file(good, &len);
	struct img *img;
	uint32_t last = (uint32_t)((len - 512 - 512 - 4096) / 512);

	put_be(f + 1536, 4, last);
	p = fx_write_file("edge.vhd", f, len);
	ck_assert_int_eq(open_vhd(p, &img), 0);
	img_unref(img);
	free(p);
	put_be(f + 1536, 4, last + 1);
	p = fx_write_file("edge.vhd", f, len);
	ck_assert_int_eq(open_vhd(p, &img), -EUCLEAN);
	free(p);
	free(f);
	free(good);
}
END_TEST

START_TEST(fixed_size_and_old_footer)
{
	const char *dir = fx_tmpdir();
	char *p = fx_path("f.vhd"), *raw = fx_path("f.raw");
	uint8_t d[64 << 10];
	size_t len;
	uint8_t *f;
	struct img *img;
	uint8_t *flat;

	fx_fill_random(d, sizeof(d), 5);
	free(fx_write_file("f.raw", d, sizeof(d)));
	ck_assert_int_eq(fx_system("cd '%s' && python3 '%s' create-fixed f.vhd "
				   "--from f.raw", dir, MKVHD), 0);
	ck_assert_int_eq(file_size(p), (off_t)sizeof(d) + 512);
	ck_assert_ptr_eq(img_probe_file(p), &vhd_driver);
	f = fx_read_file(p, &len);

	/* Virtual PC before 2004: the footer's last byte is missing */
	ck_assert_int_eq(truncate(p, (off_t)len - 1), 0);
	ck_assert_ptr_eq(img_probe_file(p), &vhd_driver);
	ck_assert_int_eq(open_vhd(p, &img), 0);
	ck_assert_str_eq(img->subtype, "fixed");
	flat = flatten(&img, 1, 9);
	assert_same_as_file(flat, img->size, raw);
	free(flat);
	img_unref(img);

	/* a size one sector larger than the file holds */
	put_be(f + len - 512 + 48, 8, sizeof(d) + 512);
	fix_footer(f + len - 512);
	free(fx_write_file("f.vhd", f, len));
	ck_assert_int_eq(open_vhd(p, &img), -EUCLEAN);
	/* the same, one sector smaller: fine */
	put_be(f + len - 512 + 48, 8, sizeof(d) - 512);
	fix_footer(f + len - 512);
	free(fx_write_file("f.vhd", f, len));
	ck_assert_int_eq(open_vhd(p, &img), 0);
	ck_assert_uint_eq(img->size, sizeof(d) - 512);
	img_unref(img);
	/* a fixed footer only at offset 0 is not a fixed disk */
	memmove(f, f + len - 512, 512);
	memset(f + len - 512, 0, 512);
	free(fx_write_file("f.vhd", f, len));
	ck_assert_int_eq(open_vhd(p, &img), -EUCLEAN);
	free(f);
	free(p);
	free(raw);
}
END_TEST

/* ---- real-world vectors ----------------------------------------------- */

START_TEST(vector_dissect_fixed_and_dynamic)
{
	char *p = unpack("dissect.hypervisor/fixed.vhd.gz", "gzip -dc",
			 "dissect-fixed.vhd");

	if (!p)
		return;
	check_vector_sha(p, 10485760, "fixed",
			 "459325ab1fcd1d5ec9854cba790ee263"
			 "78317cda177ffc1072008a1df88e6463");
	unlink(p);
	free(p);
	p = unpack("dissect.hypervisor/dynamic.vhd.gz", "gzip -dc",
		   "dissect-dynamic.vhd");
	check_vector_sha(p, 10485760, "dynamic",
			 "ecff2ef6615a3cddc6a6885f1c6d9cf1"
			 "3a232697e1dc6575f2c2f01f57247784");
	unlink(p);
	free(p);
}
END_TEST

START_TEST(vector_encrypt_cloud_image)
{
	char *p = unpack("encrypt-cloud-image/fixed.vhd.xz", "xz -dc",
			 "eci-fixed.vhd");

	if (!p)
		return;
	check_vector_sha(p, 1048576, "fixed",
			 "b5c66da804fc7b43323f390a265a9d1c"
			 "0968246229744985969eab02fad7f5fd");
	free(p);
	p = unpack("encrypt-cloud-image/dynamic.vhd.xz", "xz -dc",
		   "eci-dynamic.vhd");
	check_vector_sha(p, 1079296, "dynamic",
			 "d54b6ea49740fabc36021533e127990c"
			 "801e3249025afdc499984feee2ab674c");
	free(p);
	p = unpack("dfvfs/ext2.vhd.xz", "xz -dc", "ext2.vhd");
	check_vector_sha(p, 4212736, "dynamic",
			 "870be7ae16c1fa8faab05c6eb9205dc9"
			 "a7ae35c5f552c5cf8a267c0bc6a5cb99");
	free(p);
}
END_TEST

static const struct {
	const char *rel, *subtype, *sha;
	uint64_t size;
} qemu_made[] = {
	{ "gen-qemu-7.2/vpc-dynamic.vhd.xz", "dynamic",
	  "50c4fbc8dbf920ef1fb27708321c10d83f3052626b203df6a90f3bcf2a01c351",
	  16781312 },
	{ "gen-qemu-7.2/vpc-dynamic-forcesize.vhd.xz", "dynamic",
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f",
	  16777216 },
	{ "gen-qemu-7.2/vpc-fixed-forcesize.vhd.xz", "fixed",
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f",
	  16777216 },
};

START_TEST(vector_qemu_generated)
{
	char *p = unpack(qemu_made[_i].rel, "xz -dc", "gen.vhd");

	if (!p)
		return;
	check_vector_sha(p, qemu_made[_i].size, qemu_made[_i].subtype,
			 qemu_made[_i].sha);
	unlink(p);
	free(p);
}
END_TEST

/* 127 GiB, nothing allocated: every run is UNALLOC (reads as zeros). */
START_TEST(vector_hyperv_and_virtualpc_empty)
{
	static const char *const rel[] = {
		"qemu-iotests/hyperv2012r2-dynamic.vhd.bz2",
		"qemu-iotests/virtualpc-dynamic.vhd.bz2",
	};

	for (size_t i = 0; i < ARRAY_SIZE(rel); i++) {
		char *p = unpack(rel[i], "bzip2 -dc", "empty.vhd");
		struct img *img;
		struct img_extent e;
		uint64_t n = 0;

		if (!p)
			return;
		ck_assert_int_eq(img_open(p, NULL, false, &img), 0);
		ck_assert_ptr_eq(img->drv, &vhd_driver);
		ck_assert_uint_eq(img->size, 136365211648ull);	/* not CHS */
		ck_assert_uint_eq(img->block_size, 2 << 20);
		for (uint64_t off = 0; off < img->size; off += e.len, n++) {
			ck_assert_int_eq(img_map(img, off, img->size - off,
						 &e), 0);
			ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
			ck_assert_uint_eq(e.len, 2 << 20);
		}
		ck_assert_uint_eq(n, 65024);
		img_unref(img);
		free(p);
	}
}
END_TEST

START_TEST(vector_fat_differential_locators)
{
	char *p = unpack("dfvfs/fat-differential.vhd.xz", "xz -dc",
			 "fat-differential.vhd");
	struct img *img;
	struct img_parent par = { 0 };
	char s[GUID_STR_LEN + 1];
	uint8_t *flat;

	if (!p)
		return;
	ck_assert_int_eq(img_open(p, NULL, false, &img), 0);
	ck_assert_str_eq(img->subtype, "differencing");
	ck_assert_uint_eq(img->size, 4194304);
	guid_to_str(&img->id, s);
	ck_assert_str_eq(s, "f84f1636-cd9e-9041-a69e-dcc2380e416a");
	ck_assert_int_eq(vhd_driver.parent(img, &par), 1);
	ck_assert_uint_eq(par.nrefs, 3);
	ck_assert_int_eq(par.refs[0].kind, IMG_REF_RELATIVE);
	ck_assert_str_eq(par.refs[0].what, "W2ru");
	ck_assert_str_eq(par.refs[0].path, ".\\fat-parent.vhd");
	ck_assert_int_eq(par.refs[1].kind, IMG_REF_ABSOLUTE);
	ck_assert_str_eq(par.refs[1].what, "W2ku");
	ck_assert_str_eq(par.refs[1].path,
			 "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd");
	ck_assert_int_eq(par.refs[2].kind, IMG_REF_NAME);
	ck_assert_str_eq(par.refs[2].path,
			 "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd");
	ck_assert_int_eq(par.id_kind, IMG_ID_VHD_UUID);
	guid_to_str(&par.id, s);
	ck_assert_str_eq(s, "5fa21a55-f394-aa4d-9958-1951a67d5540");
	ck_assert(par.has_timestamp);
	ck_assert_uint_eq(par.timestamp, 0);	/* 2000-01-01 */
	img_parent_clear(&par);
	/* the child alone, parent's sectors as zeros: what qemu shows */
	flat = flatten(&img, 1, 1);
	assert_sha256(flat, img->size,
		      "9e96fac774e2e3606e0e3d5f1152844c"
		      "a3c6a45ed45e61f36586b2cd60b19d3f");
	free(flat);
	img_unref(img);
	free(p);
}
END_TEST

START_TEST(vector_bad_checksums_and_afl5)
{
	char *p = unpack("dfvfs/image-differential.vhd.xz", "xz -dc",
			 "image-differential.vhd");
	struct img *img;

	if (!p)
		return;
	ck_assert_ptr_eq(img_probe_file(p), &vhd_driver);
	ck_assert_int_eq(img_open(p, NULL, false, &img), -EBADMSG);
	free(p);
	p = unpack("dfvfs/image.vhd.xz", "xz -dc", "image.vhd");
	ck_assert_int_eq(img_open(p, NULL, false, &img), -EBADMSG);
	free(p);
	/* afl5: the footer copy at 0 is all there is, and the file ends
	 * 516 bytes into the dynamic header */
	p = fx_vector("qemu-iotests/afl5.img");
	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_eq(img_probe_file(p), &vhd_driver);
	ck_assert_int_eq(img_open(p, NULL, false, &img), -EUCLEAN);
	free(p);
}
END_TEST

/* afl5's header as qemu reads it (zero-padded): its table is too large */
START_TEST(vector_afl5_header)
{
	char *p = fx_vector("qemu-iotests/afl5.img");
	uint8_t h[1024] = { 0 }, *d;
	struct vhd_dyn_header dh;
	struct vhd_footer f;
	size_t len;

	if (!p)
		return;
	d = fx_read_file(p, &len);
	ck_assert_uint_eq(len, 1028);
	ck_assert_int_eq(vhd_footer_decode(d, &f, NULL), 0);
	ck_assert_uint_eq(f.disk_type, VHD_TYPE_DYNAMIC);
	ck_assert_uint_eq(f.data_offset, 512);
	memcpy(h, d + 512, len - 512);
	ck_assert_int_eq(vhd_dyn_header_decode(h, &dh, NULL), -EBADMSG);
	fix_header(h);
	ck_assert_int_eq(vhd_dyn_header_decode(h, &dh, NULL), -EFBIG);
	free(d);
	free(p);
}
END_TEST

/* A footer of another version is still a VHD: refused, never raw. */
START_TEST(unsupported_version_by_content)
{
	uint8_t buf[2048] = { 0 }, *f = buf + 1536;
	struct img *img = NULL;
	char *path;

	memcpy(f, "conectix", 8);
	put_be(f + 8, 4, 2);			/* features: reserved bit */
	put_be(f + 12, 4, 0x00020000);		/* version 2.0 */
	put_be(f + 16, 8, UINT64_MAX);		/* fixed: no data offset */
	put_be(f + 40, 8, 1536);
	put_be(f + 48, 8, 1536);
	put_be(f + 60, 4, VHD_TYPE_FIXED);
	put_be(f + 64, 4, t_sum(f, 512, 64));
	path = fx_write_file("v2.vhd", buf, sizeof(buf));
	ck_assert_ptr_eq(img_probe_file(path), &vhd_driver);
	ck_assert_int_eq(img_open(path, NULL, false, &img), -ENOTSUP);
	free(path);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("vhd");
	TCase *tc;

	tc = tcase_create("decode");
	tcase_add_test(tc, footer_sample_decodes);
	tcase_add_test(tc, unsupported_version_by_content);
	tcase_add_test(tc, dyn_header_sample_decodes);
	tcase_add_loop_test(tc, footer_rejects_corruption, 0,
			    ARRAY_SIZE(footer_bad));
	tcase_add_loop_test(tc, dyn_header_rejects_corruption, 0,
			    ARRAY_SIZE(header_bad));
	tcase_add_test(tc, bitmap_runs_match_a_bitwise_scan);
	tcase_add_test(tc, probe_scores);
	suite_add_tcase(s, tc);

	tc = tcase_create("qemu");
	tcase_add_test(tc, qemu_fixed_reads_like_qemu);
	tcase_add_test(tc, qemu_dynamic_reads_like_qemu);
	suite_add_tcase(s, tc);

	tc = tcase_create("diff");
	tcase_add_unchecked_fixture(tc, setup_chain, shared_teardown);
	tcase_add_test(tc, diff_chain_reads_every_layer);
	tcase_add_test(tc, diff_parent_description);
	tcase_add_test(tc, diff_runs_follow_the_bitmap);
	tcase_add_test(tc, diff_chain_concurrent_readers);
	tcase_add_test(tc, diff_chain_through_chain_layer);
	tcase_add_test(tc, chain_refuses_a_replaced_parent);
	tcase_add_test(tc, diff_bitmaps_on_demand);
	tcase_add_test(tc, dynamic_ignores_the_bitmap);
	suite_add_tcase(s, tc);

	tc = tcase_create("write");
	tcase_add_test(tc, create_a_base_layer);
	tcase_add_test(tc, create_over_a_vhd_parent);
	tcase_add_loop_test(tc, create_refuses_bad_options, 0,
			    ARRAY_SIZE(create_bad));
	tcase_add_test(tc, create_with_size_and_block_size);
	tcase_add_test(tc, create_over_a_raw_parent);
	tcase_add_test(tc, create_over_a_qcow2_parent);
	tcase_add_test(tc, create_over_a_vhdx_parent);
	tcase_add_loop_test(tc, writes_match_a_model, 0, ARRAY_SIZE(write_cfg));
	tcase_add_test(tc, zero_writes_no_data_where_it_can);
	tcase_add_test(tc, concurrent_writers_and_readers);
	tcase_add_loop_test(tc, crash_between_steps, 0, ARRAY_SIZE(crash_at));
	tcase_add_test(tc, writes_defer_metadata_to_flush);
	tcase_add_test(tc, dirty_metadata_is_bounded);
	tcase_add_loop_test(tc, writable_open_repairs_the_tail, 0,
			    ARRAY_SIZE(tails));
	tcase_add_test(tc, writable_open_refusals);
	tcase_add_test(tc, writable_with_bitmaps_on_disk);
	tcase_add_test(tc, chs_geometry_matches_the_spec);
	tcase_add_test(tc, vhdcheck_finds_damage);
	suite_add_tcase(s, tc);

	tc = tcase_create("malformed");
	tcase_add_unchecked_fixture(tc, setup_small_diff, shared_teardown);
	tcase_add_loop_test(tc, malformed_files_fail_cleanly, 0,
			    ARRAY_SIZE(patches));
	tcase_add_test(tc, macx_locator);
	tcase_add_test(tc, truncated_files_fail_cleanly);
	tcase_add_test(tc, block_must_end_before_the_footer);
	tcase_add_test(tc, fixed_size_and_old_footer);
	suite_add_tcase(s, tc);

	tc = tcase_create("vectors");
	tcase_add_test(tc, vector_dissect_fixed_and_dynamic);
	tcase_add_test(tc, vector_encrypt_cloud_image);
	tcase_add_loop_test(tc, vector_qemu_generated, 0,
			    ARRAY_SIZE(qemu_made));
	tcase_add_test(tc, vector_hyperv_and_virtualpc_empty);
	tcase_add_test(tc, vector_fat_differential_locators);
	tcase_add_test(tc, vector_bad_checksums_and_afl5);
	tcase_add_test(tc, vector_afl5_header);
	suite_add_tcase(s, tc);
	return s;
}
