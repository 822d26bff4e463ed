/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* compiler.h: small language helpers shared by every module. */
#ifndef LAYERFS_COMPILER_H
#define LAYERFS_COMPILER_H

#include <stdlib.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define __unused __attribute__((unused))
#define __printf(f, a) __attribute__((format(printf, f, a)))
#define __must_check __attribute__((warn_unused_result))

static inline void cleanup_free_fn(void *p)
{
	free(*(void **)p);
}

/* For local temporaries only (see STYLE.md: ownership). */
#define _cleanup_free_ __attribute__((cleanup(cleanup_free_fn)))

#endif
