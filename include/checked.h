/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* checked.h: overflow-checked arithmetic for values derived from disk. */
#ifndef LAYERFS_CHECKED_H
#define LAYERFS_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

/* Each returns true on overflow and leaves *r unspecified. */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow((a), (b), (r))

/* true if [off, off + len) lies inside [0, limit) without overflow */
static inline bool range_within(uint64_t off, uint64_t len, uint64_t limit)
{
	uint64_t end;

	if (ADD_OVERFLOW(off, len, &end))
		return false;
	return end <= limit;
}

/* true if the two ranges [a, a+alen) and [b, b+blen) overlap */
static inline bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
				  uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static inline bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

#endif
