/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* utf16.h: UTF-16 (LE or BE) to UTF-8, for parent locators. */
#ifndef LAYERFS_UTF16_H
#define LAYERFS_UTF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Convert nbytes of UTF-16 at src to a malloc'd NUL-terminated UTF-8
 * string.  Stops at the first NUL code unit.  Unpaired surrogates and an
 * odd byte count give -EILSEQ.  Returns 0 or -errno.
 */
int utf16_to_utf8(const uint8_t *src, size_t nbytes, bool big_endian,
		  char **out);
/*
 * Convert a NUL-terminated UTF-8 string to UTF-16 (no terminator).
 * *out is malloc'd, *nbytes its length.  Returns 0 or -EILSEQ/-ENOMEM.
 */
int utf8_to_utf16(const char *src, bool big_endian, uint8_t **out,
		  size_t *nbytes);

#endif
