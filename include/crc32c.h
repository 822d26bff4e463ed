/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * crc32c.h: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of VHDX headers, region tables, metadata and log entries.
 *
 * crc32c(0, "123456789", 9) == 0xE3069283.  The running value is the
 * finished CRC of what came before, so crc32c(crc32c(0, a, n), b, m) is
 * the CRC of a followed by b (the zlib crc32() convention).
 */
#ifndef LAYERFS_CRC32C_H
#define LAYERFS_CRC32C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The SSE4.2 crc32 instruction when the CPU has it, tables otherwise. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The two implementations, for tests and benchmarks. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* Only valid when crc32c_hw_available() is true. */
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len);
bool crc32c_hw_available(void);

#endif
