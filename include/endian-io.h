/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * endian-io.h: explicit little/big-endian loads and stores on byte buffers.
 * memcpy-based, so there are no alignment or aliasing assumptions about
 * untrusted buffers.
 */
#ifndef LAYERFS_ENDIAN_IO_H
#define LAYERFS_ENDIAN_IO_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

#define DEFINE_GET_PUT(bits, end)                                        \
	static inline uint##bits##_t get_##end##bits(const void *p)      \
	{                                                                \
		uint##bits##_t v;                                        \
		memcpy(&v, p, sizeof(v));                                \
		return end##bits##toh(v);                                \
	}                                                                \
	static inline void put_##end##bits(void *p, uint##bits##_t v)    \
	{                                                                \
		v = hto##end##bits(v);                                   \
		memcpy(p, &v, sizeof(v));                                \
	}

DEFINE_GET_PUT(16, le)
DEFINE_GET_PUT(32, le)
DEFINE_GET_PUT(64, le)
DEFINE_GET_PUT(16, be)
DEFINE_GET_PUT(32, be)
DEFINE_GET_PUT(64, be)

#undef DEFINE_GET_PUT

#endif
