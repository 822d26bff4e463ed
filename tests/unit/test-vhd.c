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
			ck_assert(e.host_off + e.len <= l[i]->file_size);
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
		ck_assert_str_eq(p.format, "vhd");
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
START_TEST(diff_bitmaps_on_demand)
{
	enum { BS = 4 << 20, NBLK = 65600, BMP = 1024 };
	const uint64_t size = (uint64_t)NBLK * BS;
	const uint64_t first = (512 + 1024 + NBLK * 4 + 511) & ~511ull;
	const uint64_t stride = BMP + BS;
	uint8_t *meta = calloc(1, first), foot[512], bm[BMP];
	char *path = fx_path("lazy.vhd");
	struct img *img;
	struct img_extent e;
	uint64_t b7 = first + 7 * stride, b9 = first + 9 * stride, off;
	int fd;

	ck_assert_ptr_nonnull(meta);
	own_footer(foot);
	put_be(foot + 48, 8, size);
	put_be(foot + 60, 4, VHD_TYPE_DIFF);
	fix_footer(foot);
	memcpy(meta, foot, 512);
	own_header(meta + 512);
	put_be(meta + 512 + 16, 8, 1536);
	put_be(meta + 512 + 28, 4, NBLK);
	put_be(meta + 512 + 32, 4, BS);
	for (int i = 0; i < 16; i++)
		meta[512 + 40 + i] = (uint8_t)(0xa0 + i);
	fix_header(meta + 512);
	for (uint64_t b = 0; b < NBLK; b++)	/* every block allocated */
		put_be(meta + 1536 + 4 * b, 4, (first + b * stride) / 512);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, meta, first, 0), (ssize_t)first);
	ck_assert_int_eq(pwrite(fd, foot, 512, (off_t)(first + NBLK * stride)),
			 512);
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
	free(meta);

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

Suite *unit_suite(void)
{
	Suite *s = suite_create("vhd");
	TCase *tc;

	tc = tcase_create("decode");
	tcase_add_test(tc, footer_sample_decodes);
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
