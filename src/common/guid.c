// SPDX-License-Identifier: LGPL-2.1-or-later
/* guid.c: GUID byte orders and text form. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "guid.h"

/* Windows GUID: Data1 (LE32), Data2 (LE16), Data3 (LE16), Data4[8]. */
void guid_from_le(struct guid *g, const uint8_t *raw)
{
	static const int order[16] = { 3, 2, 1, 0, 5, 4, 7, 6,
					8, 9, 10, 11, 12, 13, 14, 15 };

	for (int i = 0; i < 16; i++)
		g->b[i] = raw[order[i]];
}

void guid_to_le(const struct guid *g, uint8_t *raw)
{
	/* the permutation is its own inverse */
	struct guid tmp;

	guid_from_le(&tmp, g->b);
	memcpy(raw, tmp.b, 16);
}

void guid_from_be(struct guid *g, const uint8_t *raw)
{
	memcpy(g->b, raw, 16);
}

bool guid_is_zero(const struct guid *g)
{
	for (int i = 0; i < 16; i++)
		if (g->b[i])
			return false;
	return true;
}

bool guid_equal(const struct guid *a, const struct guid *b)
{
	return memcmp(a->b, b->b, 16) == 0;
}

void guid_to_str(const struct guid *g, char *buf)
{
	const uint8_t *b = g->b;

	snprintf(buf, GUID_STR_LEN + 1,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
		 "%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
		 b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int guid_parse(const char *s, struct guid *g)
{
	struct guid out;
	size_t len = strlen(s);
	int n = 0;

	if (len == GUID_STR_LEN + 2 && s[0] == '{' && s[len - 1] == '}') {
		s++;
		len -= 2;
	}
	if (len != GUID_STR_LEN)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return -EINVAL;
			continue;
		}
		int hi = hexval((unsigned char)s[i]);
		int lo = hexval((unsigned char)s[i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out.b[n++] = (uint8_t)(hi << 4 | lo);
		i++;
	}
	*g = out;
	return 0;
}
