// SPDX-License-Identifier: LGPL-2.1-or-later
/* test-crc32c.c: CRC-32C against published vectors; both paths agree. */
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "crc32c.h"
#include "fixtures.h"

static uint32_t (*const impl[])(uint32_t, const void *, size_t) = {
	crc32c, crc32c_sw, crc32c_hw,
};

static bool impl_usable(int i)
{
	return i != 2 || crc32c_hw_available();
}

/* RFC 3720 B.4 (iSCSI) and the usual check value */
START_TEST(crc32c_known_vectors)
{
	uint8_t buf[48];

	if (!impl_usable(_i))
		return;
	ck_assert_uint_eq(impl[_i](0, "123456789", 9), 0xe3069283);
	ck_assert_uint_eq(impl[_i](0, "", 0), 0);
	ck_assert_uint_eq(impl[_i](0, "a", 1), 0xc1d04330);
	memset(buf, 0, 32);
	ck_assert_uint_eq(impl[_i](0, buf, 32), 0x8a9136aa);
	memset(buf, 0xff, 32);
	ck_assert_uint_eq(impl[_i](0, buf, 32), 0x62a8ab43);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	ck_assert_uint_eq(impl[_i](0, buf, 32), 0x46dd794e);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	ck_assert_uint_eq(impl[_i](0, buf, 32), 0x113fdb5c);
	/* an iSCSI READ(10) command PDU */
	static const uint8_t pdu[48] = {
		0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
		0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};
	ck_assert_uint_eq(impl[_i](0, pdu, sizeof(pdu)), 0xd9963a56);
}
END_TEST

/* Chaining: the CRC of a||b from the CRC of a, at every split point. */
START_TEST(crc32c_chains)
{
	uint8_t buf[300];
	uint32_t whole;

	if (!impl_usable(_i))
		return;
	fx_fill_random(buf, sizeof(buf), 7);
	whole = impl[_i](0, buf, sizeof(buf));
	for (size_t cut = 0; cut <= sizeof(buf); cut++)
		ck_assert_uint_eq(impl[_i](impl[_i](0, buf, cut), buf + cut,
					   sizeof(buf) - cut), whole);
}
END_TEST

/* Table and instruction paths give the same answer on random buffers of
 * every length and alignment (the SSE4.2 path has head/tail loops). */
START_TEST(crc32c_paths_agree)
{
	size_t max = 1 << 16;
	uint8_t *buf = malloc(max + 16);

	if (!crc32c_hw_available()) {
		free(buf);
		return;	/* only the table path exists here */
	}
	ck_assert_ptr_nonnull(buf);
	fx_fill_random(buf, max + 16, 2024);
	for (size_t len = 0; len < 600; len++)
		for (size_t align = 0; align < 8; align++)
			ck_assert_uint_eq(crc32c_sw(len, buf + align, len),
					  crc32c_hw(len, buf + align, len));
	for (uint32_t seed = 1; seed < 40; seed++) {
		size_t len = (seed * 2654435761u) % max;

		fx_fill_random(buf, len + 8, seed);
		ck_assert_uint_eq(crc32c_sw(seed, buf + seed % 8, len),
				  crc32c_hw(seed, buf + seed % 8, len));
	}
	free(buf);
}
END_TEST

/* A real VHDX header (libvhdi test data) carries a valid CRC-32C. */
START_TEST(crc32c_vhdx_header_vector)
{
	char *p = fx_vector("libvhdi-structs/image_header.1");
	uint8_t *buf, zero[4] = { 0 };
	uint32_t want, c;
	size_t len;

	if (!p)
		return;
	buf = fx_read_file(p, &len);
	ck_assert_uint_eq(len, 4096);
	want = (uint32_t)buf[4] | (uint32_t)buf[5] << 8 |
	       (uint32_t)buf[6] << 16 | (uint32_t)buf[7] << 24;
	c = crc32c(0, buf, 4);
	c = crc32c(c, zero, 4);
	c = crc32c(c, buf + 8, len - 8);
	ck_assert_uint_eq(c, want);
	buf[100] ^= 1;
	c = crc32c_sw(crc32c_sw(crc32c_sw(0, buf, 4), zero, 4), buf + 8,
		      len - 8);
	ck_assert_uint_ne(c, want);
	free(buf);
	free(p);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("crc32c");
	TCase *tc = tcase_create("crc32c");

	tcase_add_loop_test(tc, crc32c_known_vectors, 0, ARRAY_SIZE(impl));
	tcase_add_loop_test(tc, crc32c_chains, 0, ARRAY_SIZE(impl));
	tcase_add_test(tc, crc32c_paths_agree);
	tcase_add_test(tc, crc32c_vhdx_header_vector);
	suite_add_tcase(s, tc);
	return s;
}
