// SPDX-License-Identifier: LGPL-2.1-or-later
/* utf16.c: UTF-16 <-> UTF-8 for parent locators. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian-io.h"
#include "utf16.h"

static unsigned get_unit(const uint8_t *p, bool be)
{
	return be ? get_be16(p) : get_le16(p);
}

int utf16_to_utf8(const uint8_t *src, size_t nbytes, bool be, char **out)
{
	size_t units = nbytes / 2, o = 0;
	char *s;

	if (nbytes % 2)
		return -EILSEQ;
	s = malloc(units * 3 + 1);	/* a unit gives at most 3 bytes */
	if (!s)
		return -ENOMEM;
	for (size_t i = 0; i < units; i++) {
		uint32_t c = get_unit(src + 2 * i, be);

		if (c == 0)
			break;
		if (c >= 0xd800 && c <= 0xdbff) {
			uint32_t lo;

			if (i + 1 >= units)
				goto bad;
			lo = get_unit(src + 2 * (i + 1), be);
			if (lo < 0xdc00 || lo > 0xdfff)
				goto bad;
			c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
			i++;
		} else if (c >= 0xdc00 && c <= 0xdfff) {
			goto bad;
		}
		if (c < 0x80) {
			s[o++] = (char)c;
		} else if (c < 0x800) {
			s[o++] = (char)(0xc0 | c >> 6);
			s[o++] = (char)(0x80 | (c & 0x3f));
		} else if (c < 0x10000) {
			s[o++] = (char)(0xe0 | c >> 12);
			s[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
			s[o++] = (char)(0x80 | (c & 0x3f));
		} else {
			/* a surrogate pair: 4 bytes from 2 units (<= 6) */
			s[o++] = (char)(0xf0 | c >> 18);
			s[o++] = (char)(0x80 | ((c >> 12) & 0x3f));
			s[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
			s[o++] = (char)(0x80 | (c & 0x3f));
		}
	}
	s[o] = '\0';
	*out = s;
	return 0;
bad:
	free(s);
	return -EILSEQ;
}

int utf8_to_utf16(const char *src, bool be, uint8_t **out, size_t *nbytes)
{
	const uint8_t *p = (const uint8_t *)src;
	size_t len = strlen(src), o = 0;
	uint8_t *d = malloc(len * 4 + 2);

	if (!d)
		return -ENOMEM;
	while (*p) {
		uint32_t c;
		int extra;

		if (*p < 0x80) {
			c = *p;
			extra = 0;
		} else if ((*p & 0xe0) == 0xc0) {
			c = *p & 0x1f;
			extra = 1;
		} else if ((*p & 0xf0) == 0xe0) {
			c = *p & 0x0f;
			extra = 2;
		} else if ((*p & 0xf8) == 0xf0) {
			c = *p & 0x07;
			extra = 3;
		} else {
			goto bad;
		}
		p++;
		for (int i = 0; i < extra; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				goto bad;
			c = c << 6 | (*p & 0x3f);
		}
		if (c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
			goto bad;
		if (c >= 0x10000) {
			uint32_t v = c - 0x10000;
			uint16_t hi = (uint16_t)(0xd800 + (v >> 10));
			uint16_t lo = (uint16_t)(0xdc00 + (v & 0x3ff));

			be ? put_be16(d + o, hi) : put_le16(d + o, hi);
			be ? put_be16(d + o + 2, lo) : put_le16(d + o + 2, lo);
			o += 4;
		} else {
			be ? put_be16(d + o, (uint16_t)c)
			   : put_le16(d + o, (uint16_t)c);
			o += 2;
		}
	}
	*out = d;
	*nbytes = o;
	return 0;
bad:
	free(d);
	return -EILSEQ;
}
