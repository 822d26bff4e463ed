// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-asparse.c: Android sparse images.
 *
 * Decoders on byte arrays (one damaged field per case); the driver on
 * images made by img2simg (AOSP) and by tests/tools/mksimg.py (all four
 * chunk types, CRC32 chunks, padded headers), each compared byte for byte
 * with the raw input and with simg2img's expansion; the real vectors; and
 * malformed images, which must fail with one log line and the right errno.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "asparse.h"
#include "compiler.h"
#include "endian-io.h"
#include "fixtures.h"
#include "img.h"
#include "log.h"
#include "registry.h"

#define MKSIMG SOURCE_DIR "/tests/tools/mksimg.py"

/* ---- log capture: a bad file gives one error line ---- */

static unsigned nerr;
static char last_err[1024];

static void capture(enum log_level lvl, const char *msg)
{
	if (lvl != LOG_LVL_ERR)
		return;
	nerr++;
	snprintf(last_err, sizeof(last_err), "%s", msg);
}

static void capture_start(void)
{
	nerr = 0;
	last_err[0] = '\0';
	log_set_sink(capture);
}

/* ---- helpers ---- */

/* Store val at off (width 2 or 4); width 1 XORs a byte with val. */
static void put(uint8_t *buf, size_t off, unsigned width, uint32_t val)
{
	if (width == 1)
		buf[off] ^= (uint8_t)val;	/* a flip: always a change */
	else if (width == 2)
		put_le16(buf + off, (uint16_t)val);
	else
		put_le32(buf + off, val);
}

struct flat_stats {
	unsigned host, read, zero, unalloc;
};

/* Expand an image through img_map: pread, ->read or zeros per extent. */
static uint8_t *flatten(struct img *img, uint64_t step, struct flat_stats *st)
{
	uint8_t *out = malloc(img->size ? img->size : 1);
	uint64_t off = 0;

	ck_assert_ptr_nonnull(out);
	memset(out, 0x5c, img->size);	/* not zero: every byte is written */
	memset(st, 0, sizeof(*st));
	while (off < img->size) {
		struct img_extent e;
		size_t n;

		ck_assert_int_eq(img_map(img, off, step, &e), 0);
		ck_assert(e.len >= 1 && e.len <= MIN(step, img->size - off));
		n = (size_t)e.len;
		switch (e.type) {
		case IMG_EXT_DATA:
			if (e.host_off != IMG_HOST_NONE) {
				ck_assert_int_eq(pread(e.fd, out + off, n,
						       (off_t)e.host_off),
						 (ssize_t)n);
				st->host++;
			} else {
				ck_assert_ptr_nonnull(img->drv->read);
				ck_assert_int_eq(img->drv->read(img, out + off,
								n, off), 0);
				st->read++;
			}
			break;
		case IMG_EXT_ZERO:
			memset(out + off, 0, n);
			st->zero++;
			break;
		case IMG_EXT_UNALLOC:	/* no parent: zeros */
			memset(out + off, 0, n);
			st->unalloc++;
			break;
		}
		off += e.len;
	}
	return out;
}

static int open_sparse(const char *path, struct img **img)
{
	return img_open(path, &asparse_driver, false, img);
}

static void check_sha256(const uint8_t *data, size_t len, const char *sha)
{
	char *p = fx_write_file("flat.sha", data, len);

	ck_assert_msg(fx_system("echo '%s  %s' | sha256sum -c --status", sha,
				p) == 0, "sha256 of the expansion is not %s",
		      sha);
	unlink(p);
	free(p);
}

/* simg2img's expansion of path (the independent reader). */
static uint8_t *simg2img(const char *path, size_t *len)
{
	char *out = fx_path("simg2img.out");
	uint8_t *data;

	ck_assert_msg(fx_system("simg2img '%s' '%s'", path, out) == 0,
		      "simg2img failed (is it installed?)");
	data = fx_read_file(out, len);
	ck_assert_ptr_nonnull(data);
	unlink(out);
	free(out);
	return data;
}

/*
 * A raw disk of 24 blocks of 4 KiB with content for every chunk kind:
 * random, zeros, 0xaa, 4-byte patterns, a pattern with one byte off, and
 * a block that is zero but for its first bytes.
 */
#define TRAW_BLK 4096
#define TRAW_NBLK 24
static uint8_t *test_raw(size_t *len)
{
	static const char *layout = "RRZZAAPPPZZZZZrQZZZAXRZR";
	uint8_t *d = calloc(TRAW_NBLK, TRAW_BLK);

	ck_assert_ptr_nonnull(d);
	ck_assert_int_eq(strlen(layout), TRAW_NBLK);
	for (size_t i = 0; i < TRAW_NBLK; i++) {
		uint8_t *b = d + i * TRAW_BLK;

		switch (layout[i]) {
		case 'R':	/* random */
			fx_fill_random(b, TRAW_BLK, 100 + (uint32_t)i);
			break;
		case 'r':	/* some random bytes, then zeros */
			fx_fill_random(b, 100, 7);
			break;
		case 'A':
			memset(b, 0xaa, TRAW_BLK);
			break;
		case 'P':	/* 01 02 03 04 ...: phase matters */
		case 'Q':	/* "ABCD" ... */
		case 'X':	/* the pattern but for its last byte */
			for (size_t j = 0; j < TRAW_BLK; j++)
				b[j] = layout[i] == 'Q' ? (uint8_t)('A' + j % 4)
							: (uint8_t)(1 + j % 4);
			if (layout[i] == 'X')
				b[TRAW_BLK - 1] = 0x77;
			break;
		default:	/* 'Z' */
			break;
		}
	}
	*len = TRAW_NBLK * TRAW_BLK;
	return d;
}

static const uint64_t steps[] = { UINT64_MAX, 1000, 4097, 1 << 20 };

/* Open path and compare its expansion, at several request sizes. */
static struct img *check_image(const char *path, const uint8_t *want,
			       size_t want_len, struct flat_stats *st)
{
	struct img *img;

	ck_assert_int_eq(open_sparse(path, &img), 0);
	ck_assert_str_eq(img->subtype, "sparse");
	ck_assert_uint_eq(img->size, want_len);
	for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
		uint8_t *got = flatten(img, steps[i], st);

		ck_assert_msg(!memcmp(got, want, want_len),
			      "%s: expansion differs (step %llu)", path,
			      (unsigned long long)steps[i]);
		free(got);
	}
	return img;
}

/* ---- decoders ---- */

static const uint8_t good_hdr[28] = {
	0x3a, 0xff, 0x26, 0xed,	/* magic */
	1, 0, 0, 0,		/* version 1.0 */
	28, 0, 12, 0,		/* header sizes */
	0x00, 0x10, 0, 0,	/* blk_sz 4096 */
	5, 0, 0, 0,		/* total_blks */
	5, 0, 0, 0,		/* total_chunks */
	0x78, 0x56, 0x34, 0x12,	/* image_checksum */
};

START_TEST(header_decodes)
{
	struct asparse_header h;
	uint8_t buf[28];

	ck_assert_int_eq(asparse_header_decode(good_hdr, 28, &h), 0);
	ck_assert_uint_eq(h.major, 1);
	ck_assert_uint_eq(h.minor, 0);
	ck_assert_uint_eq(h.file_hdr_sz, 28);
	ck_assert_uint_eq(h.chunk_hdr_sz, 12);
	ck_assert_uint_eq(h.blk_sz, 4096);
	ck_assert_uint_eq(h.total_blks, 5);
	ck_assert_uint_eq(h.total_chunks, 5);
	ck_assert_uint_eq(h.image_checksum, 0x12345678);
	ck_assert_int_eq(asparse_header_decode(good_hdr, 27, &h), -EINVAL);

	/* later minor versions and larger header sizes are accepted */
	memcpy(buf, good_hdr, sizeof(buf));
	put(buf, 6, 2, 3);
	put(buf, 8, 2, 64);
	put(buf, 10, 2, 16);
	put(buf, 12, 4, 4);
	ck_assert_int_eq(asparse_header_decode(buf, 28, &h), 0);
	ck_assert_uint_eq(h.minor, 3);
	ck_assert_uint_eq(h.file_hdr_sz, 64);
	ck_assert_uint_eq(h.chunk_hdr_sz, 16);
	ck_assert_uint_eq(h.blk_sz, 4);
}
END_TEST

static const struct {
	size_t off;
	unsigned width;
	uint32_t val;
	int err;
} bad_hdr[] = {
	{ 0, 1, 0x01, -EINVAL },	/* magic */
	{ 3, 1, 0xff, -EINVAL },
	{ 4, 2, 2, -ENOTSUP },		/* major 2 */
	{ 4, 2, 0, -ENOTSUP },
	{ 4, 2, 0x0101, -ENOTSUP },
	{ 8, 2, 27, -EUCLEAN },		/* file_hdr_sz */
	{ 8, 2, 0, -EUCLEAN },
	{ 10, 2, 11, -EUCLEAN },	/* chunk_hdr_sz */
	{ 10, 2, 0, -EUCLEAN },
	{ 12, 4, 0, -EUCLEAN },		/* blk_sz */
	{ 12, 4, 4094, -EUCLEAN },
	{ 12, 4, 1, -EUCLEAN },
	{ 12, 4, 0x80000002, -EUCLEAN },
};

START_TEST(header_rejects_corruption)
{
	struct asparse_header h = { .blk_sz = 777 };
	struct asparse_diag d = { 0 };
	uint8_t buf[28];

	memcpy(buf, good_hdr, sizeof(buf));
	put(buf, bad_hdr[_i].off, bad_hdr[_i].width, bad_hdr[_i].val);
	ck_assert_int_eq(asparse_header_decode(buf, sizeof(buf), &h),
			 bad_hdr[_i].err);
	ck_assert_uint_eq(h.blk_sz, 777);	/* untouched on failure */
	ck_assert_int_eq(asparse_header_decode_diag(buf, sizeof(buf), &h, &d),
			 bad_hdr[_i].err);
	ck_assert_ptr_nonnull(d.what);
}
END_TEST

static const struct {
	uint16_t chunk_hdr_sz;
	uint16_t type;
	uint32_t nblocks, total_sz;
	int err;
} chunks[] = {
	{ 12, ASPARSE_CHUNK_RAW, 1, 4108, 0 },
	{ 12, ASPARSE_CHUNK_RAW, 0, 12, 0 },
	{ 12, ASPARSE_CHUNK_RAW, 3, 12300, 0 },
	{ 12, ASPARSE_CHUNK_RAW, 1, 4107, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_RAW, 1, 4109, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_RAW, 2, 4108, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_RAW, 0x100000, 12, -EUCLEAN }, /* 2^32 + 12 */
	{ 12, ASPARSE_CHUNK_RAW, 0xffffffff, 0xfffff00c, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_FILL, 7, 16, 0 },
	{ 12, ASPARSE_CHUNK_FILL, 7, 12, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_FILL, 7, 20, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_DONT_CARE, 9, 12, 0 },
	{ 12, ASPARSE_CHUNK_DONT_CARE, 9, 16, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_CRC32, 0, 16, 0 },
	{ 12, ASPARSE_CHUNK_CRC32, 1, 16, -EUCLEAN },
	{ 12, ASPARSE_CHUNK_CRC32, 0, 12, -EUCLEAN },
	{ 12, 0xcac5, 1, 12, -EUCLEAN },
	{ 12, 0xcac0, 1, 12, -EUCLEAN },
	{ 12, 0, 0, 12, -EUCLEAN },
	{ 20, ASPARSE_CHUNK_RAW, 1, 4116, 0 },	/* larger chunk headers */
	{ 20, ASPARSE_CHUNK_RAW, 1, 4108, -EUCLEAN },
	{ 20, ASPARSE_CHUNK_FILL, 1, 24, 0 },
	{ 20, ASPARSE_CHUNK_FILL, 1, 16, -EUCLEAN },
	{ 20, ASPARSE_CHUNK_DONT_CARE, 1, 20, 0 },
	{ 20, ASPARSE_CHUNK_CRC32, 0, 24, 0 },
};

START_TEST(chunk_decode_table)
{
	struct asparse_header h;
	struct asparse_chunk c = { .type = 1 };
	uint8_t buf[12];
	int r;

	ck_assert_int_eq(asparse_header_decode(good_hdr, 28, &h), 0);
	h.chunk_hdr_sz = chunks[_i].chunk_hdr_sz;
	put(buf, 0, 2, chunks[_i].type);
	put(buf, 2, 2, 0xbeef);		/* reserved: ignored */
	put(buf, 4, 4, chunks[_i].nblocks);
	put(buf, 8, 4, chunks[_i].total_sz);
	r = asparse_chunk_decode(buf, sizeof(buf), &h, &c);
	ck_assert_int_eq(r, chunks[_i].err);
	if (r < 0) {
		ck_assert_uint_eq(c.type, 1);	/* untouched */
		return;
	}
	ck_assert_uint_eq(c.type, chunks[_i].type);
	ck_assert_uint_eq(c.nblocks, chunks[_i].nblocks);
	ck_assert_uint_eq(c.total_sz, chunks[_i].total_sz);
	ck_assert_uint_eq(c.data_sz,
			  chunks[_i].total_sz - chunks[_i].chunk_hdr_sz);
	ck_assert_int_eq(asparse_chunk_decode(buf, 11, &h, &c), -EINVAL);
}
END_TEST

/* The encoders write what the decoders read, byte for byte. */
START_TEST(codec_encodes)
{
	struct asparse_header h, h2;
	struct asparse_chunk c, c2;
	uint8_t buf[28];

	ck_assert_int_eq(asparse_header_decode(good_hdr, 28, &h), 0);
	memset(buf, 0xee, sizeof(buf));
	asparse_header_encode(&h, buf);
	ck_assert(!memcmp(buf, good_hdr, sizeof(buf)));
	h.minor = 3;
	h.file_hdr_sz = 40;
	h.chunk_hdr_sz = 20;
	asparse_header_encode(&h, buf);
	ck_assert_int_eq(asparse_header_decode(buf, 28, &h2), 0);
	ck_assert(!memcmp(&h, &h2, sizeof(h)));
	for (size_t i = 0; i < ARRAY_SIZE(chunks); i++) {
		if (chunks[i].err)
			continue;
		h.chunk_hdr_sz = chunks[i].chunk_hdr_sz;
		c.type = chunks[i].type;
		c.nblocks = chunks[i].nblocks;
		c.total_sz = chunks[i].total_sz;
		memset(buf, 0xee, sizeof(buf));
		asparse_chunk_encode(&c, buf);
		ck_assert_uint_eq(buf[2] | buf[3], 0);	/* reserved1 */
		ck_assert_uint_eq(buf[12], 0xee);	/* 12 bytes only */
		ck_assert_int_eq(asparse_chunk_decode(buf, 12, &h, &c2), 0);
		ck_assert_uint_eq(c2.type, c.type);
		ck_assert_uint_eq(c2.nblocks, c.nblocks);
		ck_assert_uint_eq(c2.total_sz, c.total_sz);
	}
	/* zlib's CRC-32, continued in pieces */
	ck_assert_uint_eq(asparse_crc32_update(0, "123456789", 9), 0xcbf43926);
	ck_assert_uint_eq(asparse_crc32_update(asparse_crc32_update(0,
							"1234", 4),
					       "56789", 5), 0xcbf43926);
}
END_TEST

/* The fill pattern keeps its phase from any output offset. */
START_TEST(codec_fill_expand)
{
	uint8_t buf[23];

	for (unsigned off = 0; off < 8; off++)
		for (size_t n = 0; n <= sizeof(buf); n++) {
			memset(buf, 0, sizeof(buf));
			asparse_fill_expand(buf, n, 0x44332211, off);
			for (size_t i = 0; i < n; i++)
				ck_assert_uint_eq(buf[i],
						  0x11 * (1 + (off + i) % 4));
			for (size_t i = n; i < sizeof(buf); i++)
				ck_assert_uint_eq(buf[i], 0);
		}
}
END_TEST

/* FILL and DONT_CARE CRCs, computed without expanding: as if streamed. */
START_TEST(codec_crc32_fill)
{
	static const uint32_t values[] = { 0, 0x44332211, 0xffffffff };
	static const uint64_t lens[] = { 0, 4, 8, 12, 4096, 65532, 1 << 20,
					 (3 << 20) + 4 };
	uint8_t *buf = malloc((3 << 20) + 4);

	ck_assert_ptr_nonnull(buf);
	for (size_t v = 0; v < ARRAY_SIZE(values); v++)
		for (size_t l = 0; l < ARRAY_SIZE(lens); l++) {
			uint32_t start = (uint32_t)(v * 0x9e3779b9u), want;

			asparse_fill_expand(buf, lens[l], values[v], 0);
			want = (uint32_t)crc32_z(start, buf, lens[l]);
			ck_assert_uint_eq(asparse_crc32_fill(start, values[v],
							     lens[l]), want);
		}
	free(buf);
}
END_TEST

START_TEST(probe_scores)
{
	struct img_probe p = { .path = "x", .head = good_hdr, .head_len = 28,
			       .file_size = 28 };
	uint8_t other[28] = { 0 };

	ck_assert_int_eq(asparse_driver.probe(&p), 100);
	p.head_len = 3;
	ck_assert_int_eq(asparse_driver.probe(&p), 0);
	p.head = other;
	p.head_len = sizeof(other);
	ck_assert_int_eq(asparse_driver.probe(&p), 0);
}
END_TEST

/* ---- a small image built here, and damaged one field at a time ---- */

/*
 * 64-byte blocks: RAW 1, FILL 0x11223344 1, DONT_CARE 2, RAW 1, CRC32.
 *   0 header | 28 RAW hdr, 40 data | 104 FILL hdr, 116 value |
 *   120 DONT_CARE | 132 RAW hdr, 144 data | 208 CRC hdr, 220 value | 224
 */
#define SM_BLK 64
#define SM_LEN 224
#define SM_OUT (5 * SM_BLK)

static void chunk_hdr(uint8_t *p, uint16_t type, uint32_t n, uint32_t total)
{
	put_le16(p, type);
	put_le16(p + 2, 0);
	put_le32(p + 4, n);
	put_le32(p + 8, total);
}

static void small_image(uint8_t img[SM_LEN], uint8_t out[SM_OUT])
{
	memcpy(img, good_hdr, 28);
	put_le32(img + 12, SM_BLK);
	put_le32(img + 24, 0);
	chunk_hdr(img + 28, ASPARSE_CHUNK_RAW, 1, 12 + SM_BLK);
	for (int i = 0; i < SM_BLK; i++)
		img[40 + i] = (uint8_t)(3 + 7 * i);
	chunk_hdr(img + 104, ASPARSE_CHUNK_FILL, 1, 16);
	put_le32(img + 116, 0x11223344);
	chunk_hdr(img + 120, ASPARSE_CHUNK_DONT_CARE, 2, 12);
	chunk_hdr(img + 132, ASPARSE_CHUNK_RAW, 1, 12 + SM_BLK);
	fx_fill_random(img + 144, SM_BLK, 42);
	chunk_hdr(img + 208, ASPARSE_CHUNK_CRC32, 0, 16);

	memcpy(out, img + 40, SM_BLK);
	for (int i = 0; i < SM_BLK; i++)	/* 44 33 22 11 repeated */
		out[SM_BLK + i] = (uint8_t)(0x44 - 0x11 * (i % 4));
	memset(out + 2 * SM_BLK, 0, 2 * SM_BLK);
	memcpy(out + 4 * SM_BLK, img + 144, SM_BLK);
	put_le32(img + 220, (uint32_t)crc32(0, out, SM_OUT));
}

START_TEST(small_image_reads)
{
	uint8_t buf[SM_LEN], want[SM_OUT], got[SM_OUT];
	struct flat_stats st;
	struct img_extent e;
	struct img *img;
	uint8_t *flat;
	char *path;

	small_image(buf, want);
	path = fx_write_file("small.simg", buf, sizeof(buf));
	capture_start();
	/* by content: the magic beats raw */
	ck_assert_ptr_eq(img_probe_file(path), &asparse_driver);
	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	ck_assert_ptr_eq(img->drv, &asparse_driver);
	ck_assert_uint_eq(img->size, SM_OUT);
	ck_assert_uint_eq(img->block_size, SM_BLK);
	ck_assert_uint_eq(img->sector_size, 512);
	ck_assert_ptr_null(img->drv->parent);
	ck_assert_ptr_null(img->drv->write);

	/* one run per chunk, each of the right kind */
	ck_assert_int_eq(img_map(img, 0, 1000, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.len, SM_BLK);
	ck_assert_uint_eq(e.host_off, 40);
	ck_assert_int_eq(img_map(img, 10, 1000, &e), 0);
	ck_assert_uint_eq(e.len, SM_BLK - 10);
	ck_assert_uint_eq(e.host_off, 50);
	ck_assert_int_eq(img_map(img, SM_BLK + 5, 1000, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.host_off, IMG_HOST_NONE);
	ck_assert_uint_eq(e.len, SM_BLK - 5);
	ck_assert_int_eq(img_map(img, 2 * SM_BLK, 1000, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 2 * SM_BLK);
	ck_assert_int_eq(img_map(img, 3 * SM_BLK + 1, 3, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 3);
	ck_assert_int_eq(img_map(img, 4 * SM_BLK, 1000, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.host_off, 144);
	ck_assert_uint_eq(e.len, SM_BLK);

	/* the fill pattern keeps its phase at any offset and length */
	for (size_t o = SM_BLK; o < 2 * SM_BLK; o++)
		for (size_t n = 1; o + n <= 2 * SM_BLK; n += 5) {
			memset(got, 0, sizeof(got));
			ck_assert_int_eq(img->drv->read(img, got, n, o), 0);
			ck_assert(!memcmp(got, want + o, n));
		}
	/* ->read also spans runs (it is what the CRC check uses) */
	ck_assert_int_eq(img->drv->read(img, got, SM_OUT, 0), 0);
	ck_assert(!memcmp(got, want, SM_OUT));
	ck_assert_int_eq(img->drv->read(img, got, 2, SM_OUT - 1), -EINVAL);

	flat = flatten(img, 7, &st);
	ck_assert(!memcmp(flat, want, SM_OUT));
	ck_assert_uint_gt(st.host, 0);
	ck_assert_uint_gt(st.read, 0);
	ck_assert_uint_gt(st.unalloc, 0);
	ck_assert_uint_eq(st.zero, 0);
	free(flat);
	img_unref(img);
	ck_assert_uint_eq(nerr, 0);
	free(path);
}
END_TEST

/* ->info: the header's numbers and the chunks by type (small_image) */
START_TEST(small_image_info)
{
	static const struct img_info_fact want[] = {
		{ "major_version", 1 }, { "minor_version", 0 },
		{ "block_size", SM_BLK }, { "total_blocks", 5 },
		{ "total_chunks", 5 }, { "raw_chunks", 2 },
		{ "fill_chunks", 1 }, { "dont_care_chunks", 1 },
		{ "crc32_chunks", 1 }, { "image_checksum", 0xdeadbeef },
	};
	uint8_t buf[SM_LEN], out[SM_OUT];
	struct img_info inf;
	struct img *img;
	char *path;

	small_image(buf, out);
	for (int set = 0; set < 2; set++) {
		unsigned n = ARRAY_SIZE(want) - !set;

		put_le32(buf + 24, set ? 0xdeadbeef : 0); /* not verified */
		path = fx_write_file("info.simg", buf, sizeof(buf));
		ck_assert_int_eq(open_sparse(path, &img), 0);
		ck_assert_int_eq(img_info_get(img, &inf), 0);
		ck_assert_uint_eq(inf.nfacts, n);
		for (unsigned i = 0; i < n; i++) {
			ck_assert_str_eq(inf.facts[i].key, want[i].key);
			ck_assert_uint_eq(inf.facts[i].value, want[i].value);
		}
		ck_assert(!inf.has_log && !inf.has_snapshots);
		img_info_clear(&inf);
		img_unref(img);
		free(path);
	}
}
END_TEST

static const struct {
	size_t off;
	unsigned width;
	uint32_t val;
	int err;
	size_t off2;		/* a second edit when width2 != 0 */
	unsigned width2;
	uint32_t val2;
} bad_img[] = {
	{ 0, 4, 0x12345678, -EINVAL, 0, 0, 0 },	/* bad magic */
	{ 4, 2, 2, -ENOTSUP, 0, 0, 0 },	/* major 2 */
	{ 4, 2, 0, -ENOTSUP, 0, 0, 0 },
	{ 6, 2, 7, 0, 0, 0, 0 },	/* minor: ignored */
	{ 8, 2, 27, -EUCLEAN, 0, 0, 0 },	/* file_hdr_sz < 28 */
	{ 8, 2, 29, -EUCLEAN, 0, 0, 0 },	/* chunks misread */
	{ 8, 2, 65535, -EUCLEAN, 0, 0, 0 },	/* past end of file */
	{ 10, 2, 11, -EUCLEAN, 0, 0, 0 },	/* chunk_hdr_sz < 12 */
	{ 10, 2, 20, -EUCLEAN, 0, 0, 0 },	/* RAW total_sz no match */
	{ 12, 4, 0, -EUCLEAN, 0, 0, 0 },	/* blk_sz 0 */
	{ 12, 4, 62, -EUCLEAN, 0, 0, 0 },	/* not a multiple of 4 */
	{ 12, 4, 128, -EUCLEAN, 0, 0, 0 },	/* RAW total_sz no match */
	{ 12, 4, 0xfffffffc, -EFBIG, 16, 4, 0xffffffff },	/* > 2^63 */
	{ 16, 4, 6, -EUCLEAN, 0, 0, 0 },	/* chunks short of total */
	{ 16, 4, 4, -EUCLEAN, 0, 0, 0 },	/* chunks beyond total */
	{ 16, 4, 0, -EUCLEAN, 0, 0, 0 },
	{ 20, 4, 6, -EUCLEAN, 0, 0, 0 },	/* chunk past end of file */
	{ 20, 4, 0xffffffff, -EUCLEAN, 0, 0, 0 },	/* huge total_chunks */
	{ 20, 4, 19, -EUCLEAN, 0, 0, 0 },	/* the most that fits: 16 */
	{ 20, 4, 4, 0, 0, 0, 0 },	/* trailing CRC32: unread */
	{ 24, 4, 0xdeadbeef, 0, 0, 0, 0 },	/* image_checksum: ignored */
	{ 30, 2, 0xffff, 0, 0, 0, 0 },	/* reserved1: ignored */
	{ 36, 4, 77, -EUCLEAN, 0, 0, 0 },	/* RAW total_sz + 1 */
	{ 36, 4, 0xffffffff, -EUCLEAN, 0, 0, 0 },
	{ 32, 4, 2, -EUCLEAN, 0, 0, 0 },	/* RAW blocks vs total_sz */
	{ 136, 4, 2, -EUCLEAN, 140, 4, 12 + 2 * SM_BLK },	/* past EOF */
	{ 28, 2, 0xcac5, -EUCLEAN, 0, 0, 0 },	/* unknown chunk type */
	{ 104, 2, 0, -EUCLEAN, 0, 0, 0 },
	{ 108, 4, 2, -EUCLEAN, 0, 0, 0 },	/* FILL past total_blks */
	{ 108, 4, 0xffffffff, -EUCLEAN, 0, 0, 0 },
	{ 112, 4, 20, -EUCLEAN, 0, 0, 0 },	/* FILL total_sz */
	{ 124, 4, 1, -EUCLEAN, 0, 0, 0 },	/* DONT_CARE: short of total */
	{ 128, 4, 16, -EUCLEAN, 0, 0, 0 },	/* DONT_CARE with data */
	{ 212, 4, 1, -EUCLEAN, 0, 0, 0 },	/* CRC32 covering blocks */
	{ 216, 4, 12, -EUCLEAN, 0, 0, 0 },	/* CRC32 total_sz */
	{ 220, 4, 0, -EBADMSG, 0, 0, 0 },	/* CRC32 value */
	{ 40, 1, 0x55, -EBADMSG, 0, 0, 0 },	/* RAW data vs CRC32 */
	{ 207, 1, 0x55, -EBADMSG, 0, 0, 0 },
	{ 116, 4, 0x11223345, -EBADMSG, 0, 0, 0 },	/* FILL vs CRC32 */
};

START_TEST(malformed_image)
{
	uint8_t buf[SM_LEN], out[SM_OUT];
	struct img *img = NULL;
	char *path;
	int r;

	small_image(buf, out);
	put(buf, bad_img[_i].off, bad_img[_i].width, bad_img[_i].val);
	if (bad_img[_i].width2)
		put(buf, bad_img[_i].off2, bad_img[_i].width2,
		    bad_img[_i].val2);
	path = fx_write_file("bad.simg", buf, sizeof(buf));
	capture_start();
	r = open_sparse(path, &img);
	ck_assert_msg(r == bad_img[_i].err, "case %d: got %d (%s), want %d",
		      _i, r, last_err, bad_img[_i].err);
	if (r == 0) {
		ck_assert_uint_eq(nerr, 0);
		img_unref(img);
	} else {
		char prefix[512];

		/* one line: "asparse: <path>: <problem> (<value>)" */
		ck_assert_uint_eq(nerr, 1);
		snprintf(prefix, sizeof(prefix), "asparse: %s: ", path);
		ck_assert_msg(!strncmp(last_err, prefix, strlen(prefix)),
			      "log line: %s", last_err);
		ck_assert_msg(strchr(last_err, '(') &&
			      last_err[strlen(last_err) - 1] == ')',
			      "log line: %s", last_err);
	}
	free(path);
}
END_TEST

/* Probing by content still picks the sparse driver, which then refuses. */
START_TEST(unsupported_version_by_content)
{
	uint8_t buf[SM_LEN], out[SM_OUT];
	struct img *img;
	char *path;

	small_image(buf, out);
	put(buf, 4, 2, 2);
	path = fx_write_file("v2.simg", buf, sizeof(buf));
	capture_start();
	ck_assert_int_eq(img_open(path, NULL, false, &img), -ENOTSUP);
	ck_assert_uint_eq(nerr, 1);
	ck_assert_ptr_nonnull(strstr(last_err, "major version (2)"));
	free(path);
}
END_TEST

static const size_t cuts[] = { 0, 3, 27, 28, 39, 40, 103, 104, 119,
			       131, 143, 207, 208, 219, 223 };

START_TEST(truncated_image)
{
	uint8_t buf[SM_LEN], out[SM_OUT];
	struct img *img;
	char *path;

	small_image(buf, out);
	path = fx_write_file("cut.simg", buf, cuts[_i]);
	capture_start();
	ck_assert_int_eq(open_sparse(path, &img), -EUCLEAN);
	ck_assert_uint_eq(nerr, 1);
	free(path);
}
END_TEST

/* total_chunks that a (sparse, 64 MiB) file could hold, but over the cap */
START_TEST(too_many_chunks)
{
	uint8_t buf[SM_LEN], out[SM_OUT];
	struct img *img;
	char *path;

	small_image(buf, out);
	put(buf, 20, 4, (1u << 22) + 1);
	path = fx_write_file("many.simg", buf, sizeof(buf));
	fx_pwrite(path, "", 1, (64u << 20) - 1);
	capture_start();
	ck_assert_int_eq(open_sparse(path, &img), -EFBIG);
	ck_assert_uint_eq(nerr, 1);
	free(path);
}
END_TEST

/* ->check as layerimg check runs it: ->open has not run. */
static int run_check(const char *path, struct img_check *res)
{
	struct img *img = calloc(1, sizeof(*img));
	int r;

	ck_assert_ptr_nonnull(img);
	img->refcnt = 1;
	img->path = strdup(path);
	img->fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert(img->path && img->fd >= 0);
	img->file_size = (uint64_t)lseek(img->fd, 0, SEEK_END);
	img->sector_size = img->phys_sector_size = 512;
	img->drv = &asparse_driver;
	memset(res, 0, sizeof(*res));
	r = asparse_driver.check(img, false, res);
	ck_assert_ptr_null(img->priv);
	img->drv = NULL;
	img_unref(img);
	return r;
}

/*
 * 56 bytes that describe 1 TiB of DONT_CARE and then a CRC32 chunk: the
 * checker once expanded the terabyte to compute the CRC (a hang found by
 * fuzz-asparse); FILL and DONT_CARE CRCs are now computed, not streamed.
 * A 64 MiB twin is checked against the CRC of its real expansion.
 */
START_TEST(check_huge_dont_care)
{
	static const struct {
		uint32_t blk_sz, blks, fill;
	} cases[] = {
		{ 1u << 28, 1u << 12, 0 },		/* 1 TiB of zeros */
		{ 0xfffffffc, 0xffffffff, 0x01020304 },	/* ~2^64 bytes */
		{ 1u << 20, 64, 0 },			/* 64 MiB */
		{ 1u << 20, 64, 0xa5a5a5a4 },
	};
	uint8_t f[60];
	struct img_check res;
	struct img *img;
	char *path;
	bool fill = cases[_i].fill != 0;
	size_t hdr = fill ? 16 : 12;

	memcpy(f, good_hdr, 28);
	put_le32(f + 12, cases[_i].blk_sz);
	put_le32(f + 16, cases[_i].blks);
	put_le32(f + 20, 2);
	put_le32(f + 24, 0);
	chunk_hdr(f + 28, fill ? ASPARSE_CHUNK_FILL : ASPARSE_CHUNK_DONT_CARE,
		  cases[_i].blks, (uint32_t)hdr);
	put_le32(f + 40, cases[_i].fill);
	chunk_hdr(f + 28 + hdr, ASPARSE_CHUNK_CRC32, 0, 16);
	put_le32(f + 40 + hdr, 0x12345678);	/* wrong */
	path = fx_write_file("huge.simg", f, 44 + hdr);
	capture_start();
	ck_assert_int_eq(run_check(path, &res), 0);
	ck_assert_uint_eq(res.errors, 1);
	ck_assert_ptr_nonnull(strstr(last_err, "chunk 1: CRC32 mismatch"));
	if ((uint64_t)cases[_i].blk_sz * cases[_i].blks <= (64u << 20)) {
		size_t n = (size_t)cases[_i].blk_sz * cases[_i].blks;
		uint8_t *out = malloc(n);

		ck_assert_ptr_nonnull(out);
		asparse_fill_expand(out, n, cases[_i].fill, 0);
		put_le32(f + 40 + hdr, (uint32_t)crc32_z(0, out, n));
		free(out);
		free(path);
		path = fx_write_file("huge.simg", f, 44 + hdr);
		ck_assert_int_eq(run_check(path, &res), 0);
		ck_assert_uint_eq(res.errors, 0);
		ck_assert_int_eq(open_sparse(path, &img), 0);
		img_unref(img);
	}
	free(path);
}
END_TEST

START_TEST(empty_image)
{
	uint8_t buf[28];
	struct img *img;
	char *path;

	memcpy(buf, good_hdr, sizeof(buf));
	put(buf, 16, 4, 0);
	put(buf, 20, 4, 0);
	path = fx_write_file("empty.simg", buf, sizeof(buf));
	ck_assert_int_eq(open_sparse(path, &img), 0);
	ck_assert_uint_eq(img->size, 0);
	img_unref(img);
	free(path);
}
END_TEST

/* ---- images made by img2simg (AOSP) ---- */

static const struct {
	unsigned blk;
	size_t extra;		/* bytes past the last whole 4 KiB block */
} i2s[] = {
	{ 4096, 0 }, { 1024, 0 }, { 2048, 0 }, { 4096, 1000 }, { 8192, 0 },
	/* img2simg 29 refuses blocks under 1024 bytes */
};

START_TEST(img2simg_images)
{
	size_t raw_len, exp_len;
	uint8_t *raw = test_raw(&raw_len), *exp, *want;
	struct flat_stats st;
	struct img *img;
	char *in, *out;

	/* an odd tail: img2simg pads the last block with zeros */
	want = calloc(1, raw_len + 8192);
	ck_assert_ptr_nonnull(want);
	memcpy(want, raw, raw_len);
	fx_fill_random(want + raw_len, i2s[_i].extra, 9);
	raw_len += i2s[_i].extra;
	in = fx_write_file("in.raw", want, raw_len);
	out = fx_path("i2s.simg");
	ck_assert_msg(fx_system("img2simg '%s' '%s' %u", in, out,
				i2s[_i].blk) == 0,
		      "img2simg failed (is it installed?)");
	exp = simg2img(out, &exp_len);
	ck_assert_uint_eq(exp_len % i2s[_i].blk, 0);
	ck_assert_uint_ge(exp_len, raw_len);
	ck_assert(!memcmp(exp, want, raw_len));	/* the rest is zero */
	ck_assert(!memcmp(exp + raw_len, want + raw_len, exp_len - raw_len));

	img = check_image(out, exp, exp_len, &st);
	ck_assert_uint_eq(img->block_size, i2s[_i].blk);
	ck_assert_uint_gt(st.host, 0);		/* RAW */
	ck_assert_uint_gt(st.read, 0);		/* FILL 0xaa, patterns */
	ck_assert_uint_gt(st.zero, 0);		/* img2simg: zeros are FILL 0 */
	img_unref(img);
	free(exp);
	free(raw);
	free(want);
	free(in);
	free(out);
}
END_TEST

/* ---- images made by mksimg.py: all four chunk types ---- */

static const struct {
	const char *opts;
	bool crc, zero, unalloc;
} mk[] = {
	{ "", false, false, true },
	{ "--crc", true, false, true },
	{ "--crc --crc-every 1 --hdr-pad 36 --chunk-pad 4", true, false, true },
	{ "--zero alternate --max-chunk-blocks 1 --crc", true, true, true },
	{ "--zero fill --block-size 1024 --crc --chunk-pad 1", true, true,
	  false },
	{ "--block-size 512 --chunk-pad 100 --hdr-pad 1000 --crc-every 2 --crc",
	  true, false, true },
	{ "--block-size 8192 --zero alternate", false, true, true },
};

START_TEST(mksimg_images)
{
	size_t raw_len, exp_len;
	uint8_t *raw = test_raw(&raw_len), *exp;
	struct flat_stats st;
	struct img *img;
	char *in, *out;

	in = fx_write_file("in.raw", raw, raw_len);
	out = fx_path("mk.simg");
	ck_assert_int_eq(fx_system("python3 '%s' '%s' '%s' %s", MKSIMG, in,
				   out, mk[_i].opts), 0);
	/* the generator, checked by AOSP's reader */
	exp = simg2img(out, &exp_len);
	ck_assert_uint_eq(exp_len, raw_len);
	ck_assert(!memcmp(exp, raw, raw_len));
	free(exp);

	capture_start();
	img = check_image(out, raw, raw_len, &st);
	ck_assert_uint_eq(nerr, 0);
	ck_assert_uint_gt(st.host, 0);
	ck_assert_uint_gt(st.read, 0);
	ck_assert(mk[_i].zero == (st.zero > 0));
	ck_assert(mk[_i].unalloc == (st.unalloc > 0));
	img_unref(img);
	free(raw);
	free(in);
	free(out);
}
END_TEST

START_TEST(mksimg_bad_crc)
{
	size_t raw_len;
	uint8_t *raw = test_raw(&raw_len);
	struct img *img;
	char *in, *out;

	in = fx_write_file("in.raw", raw, raw_len);
	out = fx_path("badcrc.simg");
	ck_assert_int_eq(fx_system("python3 '%s' '%s' '%s' %s", MKSIMG, in, out,
				   "--bad-crc --hdr-pad 4"), 0);
	capture_start();
	ck_assert_int_eq(open_sparse(out, &img), -EBADMSG);
	ck_assert_uint_eq(nerr, 1);
	ck_assert_ptr_nonnull(strstr(last_err, "CRC32 mismatch"));
	free(raw);
	free(in);
	free(out);
}
END_TEST

/* map and read from several threads at once: the table is immutable */
struct par_arg {
	struct img *img;
	const uint8_t *want;
	uint64_t step;
	int ok;
};

static void *par_flatten(void *p)
{
	struct par_arg *a = p;

	for (int k = 0; k < 8; k++) {
		uint64_t off = 0;
		uint8_t *buf = malloc(a->img->size);

		a->ok = 0;
		if (!buf)
			return NULL;
		while (off < a->img->size) {
			struct img_extent e;

			if (img_map(a->img, off, a->step, &e) < 0)
				break;
			if (e.type != IMG_EXT_DATA)
				memset(buf + off, 0, e.len);
			else if (e.host_off == IMG_HOST_NONE)
				a->img->drv->read(a->img, buf + off, e.len,
						  off);
			else if (pread(e.fd, buf + off, e.len,
				       (off_t)e.host_off) != (ssize_t)e.len)
				break;
			off += e.len;
		}
		a->ok = off == a->img->size &&
			!memcmp(buf, a->want, a->img->size);
		free(buf);
		if (!a->ok)
			break;
	}
	return NULL;
}

START_TEST(concurrent_reads)
{
	size_t raw_len;
	uint8_t *raw = test_raw(&raw_len);
	struct par_arg a[4];
	pthread_t t[4];
	struct img *img;
	char *in, *out;

	in = fx_write_file("in.raw", raw, raw_len);
	out = fx_path("par.simg");
	ck_assert_int_eq(fx_system("python3 '%s' '%s' '%s' %s", MKSIMG, in, out,
				   "--zero alternate --crc"), 0);
	ck_assert_int_eq(open_sparse(out, &img), 0);
	for (int i = 0; i < 4; i++) {
		a[i] = (struct par_arg){ img, raw, 333 + 1000 * i, 0 };
		ck_assert_int_eq(pthread_create(&t[i], NULL, par_flatten,
						&a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		ck_assert(a[i].ok);
	}
	img_unref(img);
	free(raw);
	free(in);
	free(out);
}
END_TEST

/* ---- real vectors ---- */

#define DECODED_SHA \
	"c38a0a456019f08f0c21e72f737c8d156a4972bbb8f33c758f228e88c828df78"

static const char *const rs_good[] = {
	"android-sparse-rs/hello.simg", "android-sparse-rs/crc.simg",
};

START_TEST(vector_android_sparse_rs)
{
	char *path = fx_vector(rs_good[_i]), *dec;
	size_t dec_len, s2i_len;
	uint8_t *want, *s2i, *got;
	struct flat_stats st;
	struct img_extent e;
	struct img *img;

	if (!path)
		return;		/* the vectors folder is absent */
	dec = fx_vector("android-sparse-rs/decoded.img");
	ck_assert_ptr_nonnull(dec);
	want = fx_read_file(dec, &dec_len);
	ck_assert_ptr_nonnull(want);
	check_sha256(want, dec_len, DECODED_SHA);
	s2i = simg2img(path, &s2i_len);
	ck_assert_uint_eq(s2i_len, dec_len);
	ck_assert(!memcmp(s2i, want, dec_len));

	capture_start();
	img = check_image(path, want, dec_len, &st);
	ck_assert_uint_eq(nerr, 0);
	got = flatten(img, UINT64_MAX, &st);
	check_sha256(got, img->size, DECODED_SHA);
	/* RAW, FILL 0xaa, DONT_CARE (2 blocks), RAW */
	ck_assert_uint_eq(st.host, 2);
	ck_assert_uint_eq(st.read, 1);
	ck_assert_uint_eq(st.unalloc, 1);
	ck_assert_int_eq(img_map(img, 8192, UINT64_MAX, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_UNALLOC);
	ck_assert_uint_eq(e.len, 8192);
	img_unref(img);
	free(got);
	free(s2i);
	free(want);
	free(dec);
	free(path);
}
END_TEST

START_TEST(vector_invalid_crc)
{
	char *path = fx_vector("android-sparse-rs/invalid_crc.simg");
	struct img *img;

	if (!path)
		return;
	capture_start();
	ck_assert_int_eq(img_open(path, NULL, false, &img), -EBADMSG);
	ck_assert_uint_eq(nerr, 1);
	ck_assert_ptr_nonnull(strstr(last_err, "stored 0x78563412"));
	ck_assert_ptr_nonnull(strstr(last_err, "computed 0xffb880a5"));
	free(path);
}
END_TEST

static const struct {
	const char *name;
	uint64_t size;
	const char *sha;
} gen[] = {
	{ "base-4096", 16777216,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f" },
	{ "base-1024", 16777216,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f" },
	{ "base-unaligned-4096", 16777216,
	  "8d8f6ab0e43b04fe9303137d56fedde983f5ac111ce1800d52cc23f707c39398" },
	{ "appended", 16842752,
	  "76baa66d732db289714f66d77f7cac5fabb47cbe18ea264cb2a8faa2f0cb568d" },
};

START_TEST(vector_img2simg_29)
{
	char rel[128], *xz, *path;
	struct flat_stats st;
	struct img *img;
	uint8_t *got;

	snprintf(rel, sizeof(rel), "gen-img2simg-29/%s.simg.xz", gen[_i].name);
	xz = fx_vector(rel);
	if (!xz)
		return;
	path = fx_path("gen.simg");
	ck_assert_int_eq(fx_system("xz -dc '%s' > '%s'", xz, path), 0);
	capture_start();
	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	ck_assert_ptr_eq(img->drv, &asparse_driver);
	ck_assert_uint_eq(img->size, gen[_i].size);
	got = flatten(img, 1 << 20, &st);
	check_sha256(got, img->size, gen[_i].sha);
	ck_assert_uint_gt(st.host, 0);
	ck_assert_uint_gt(st.zero, 0);
	ck_assert_uint_eq(nerr, 0);
	img_unref(img);
	unlink(path);
	free(got);
	free(path);
	free(xz);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("asparse");
	TCase *tc;

	tc = tcase_create("decode");
	tcase_add_test(tc, header_decodes);
	tcase_add_loop_test(tc, header_rejects_corruption, 0,
			    ARRAY_SIZE(bad_hdr));
	tcase_add_loop_test(tc, chunk_decode_table, 0, ARRAY_SIZE(chunks));
	tcase_add_test(tc, codec_encodes);
	tcase_add_test(tc, codec_fill_expand);
	tcase_add_test(tc, codec_crc32_fill);
	tcase_add_test(tc, probe_scores);
	suite_add_tcase(s, tc);

	tc = tcase_create("driver");
	tcase_add_test(tc, small_image_reads);
	tcase_add_test(tc, small_image_info);
	tcase_add_loop_test(tc, malformed_image, 0, ARRAY_SIZE(bad_img));
	tcase_add_test(tc, unsupported_version_by_content);
	tcase_add_loop_test(tc, truncated_image, 0, ARRAY_SIZE(cuts));
	tcase_add_test(tc, too_many_chunks);
	tcase_add_test(tc, empty_image);
	tcase_add_loop_test(tc, check_huge_dont_care, 0, 4);
	suite_add_tcase(s, tc);

	tc = tcase_create("tools");
	tcase_add_loop_test(tc, img2simg_images, 0, ARRAY_SIZE(i2s));
	tcase_add_loop_test(tc, mksimg_images, 0, ARRAY_SIZE(mk));
	tcase_add_test(tc, mksimg_bad_crc);
	tcase_add_test(tc, concurrent_reads);
	suite_add_tcase(s, tc);

	tc = tcase_create("vectors");
	tcase_add_loop_test(tc, vector_android_sparse_rs, 0,
			    ARRAY_SIZE(rs_good));
	tcase_add_test(tc, vector_invalid_crc);
	tcase_add_loop_test(tc, vector_img2simg_29, 0, ARRAY_SIZE(gen));
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}
