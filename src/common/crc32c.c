// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * crc32c.c: CRC-32C, with the SSE4.2 crc32 instruction when the CPU has it
 * and slicing-by-8 tables otherwise.  Both take and return the finished
 * (inverted) CRC, so calls chain.
 */
#include <pthread.h>
#include <string.h>

#include "crc32c.h"
#include "endian-io.h"

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define CRC32C_HAVE_X86 1
#endif

#define CRC32C_POLY 0x82f63b78u	/* reflected Castagnoli polynomial */

static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
		crc_table[0][n] = c;
	}
	/* table[k][n]: the CRC of byte n followed by k zero bytes */
	for (uint32_t n = 0; n < 256; n++)
		for (int k = 1; k < 8; k++)
			crc_table[k][n] = (crc_table[k - 1][n] >> 8) ^
					  crc_table[0][crc_table[k - 1][n] & 0xff];
}

uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t c = ~crc;

	pthread_once(&crc_table_once, crc_table_init);
	while (len && ((uintptr_t)p & 7)) {
		c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
		len--;
	}
	while (len >= 8) {
		uint32_t lo = get_le32(p) ^ c, hi = get_le32(p + 4);

		c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		    crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		    crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		    crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
	return ~c;
}

#ifdef CRC32C_HAVE_X86
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
	uint32_t c = ~crc;

	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8(c, *p++);
		len--;
	}
#ifdef __x86_64__
	{
		uint64_t c64 = c;

		while (len >= 8) {
			c64 = _mm_crc32_u64(c64, get_le64(p));
			p += 8;
			len -= 8;
		}
		c = (uint32_t)c64;
	}
#endif
	while (len >= 4) {
		c = _mm_crc32_u32(c, get_le32(p));
		p += 4;
		len -= 4;
	}
	while (len--)
		c = _mm_crc32_u8(c, *p++);
	return ~c;
}
#endif

bool crc32c_hw_available(void)
{
#ifdef CRC32C_HAVE_X86
	static int have = -1;	/* -1: not asked yet */
	int h = __atomic_load_n(&have, __ATOMIC_RELAXED);

	if (h < 0) {
		__builtin_cpu_init();
		h = __builtin_cpu_supports("sse4.2") ? 1 : 0;
		__atomic_store_n(&have, h, __ATOMIC_RELAXED);
	}
	return h;
#else
	return false;
#endif
}

uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
#ifdef CRC32C_HAVE_X86
	return crc32c_sse42(crc, buf, len);
#else
	return crc32c_sw(crc, buf, len);
#endif
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
	if (crc32c_hw_available())
		return crc32c_hw(crc, buf, len);
	return crc32c_sw(crc, buf, len);
}
