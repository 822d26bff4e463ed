/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * guid.h: 16-byte identifiers.  A struct guid always holds the bytes in
 * RFC 4122 / text order (the order the usual {xxxxxxxx-xxxx-...} form
 * prints them).  VHDX stores GUIDs in the Windows mixed-endian layout:
 * decode those with guid_from_le().  VHD stores its UUIDs in text order.
 */
#ifndef LAYERFS_GUID_H
#define LAYERFS_GUID_H

#include <stdbool.h>
#include <stdint.h>

struct guid {
	uint8_t b[16];
};

#define GUID_STR_LEN 36	/* without braces and NUL */

void guid_from_le(struct guid *g, const uint8_t *raw);	/* Windows layout */
void guid_to_le(const struct guid *g, uint8_t *raw);
void guid_from_be(struct guid *g, const uint8_t *raw);	/* text order */
bool guid_is_zero(const struct guid *g);
bool guid_equal(const struct guid *a, const struct guid *b);
/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower case; buf >= 37 bytes */
void guid_to_str(const struct guid *g, char *buf);
/* accepts with or without braces, any case; 0 or -EINVAL */
int guid_parse(const char *s, struct guid *g);

#endif
