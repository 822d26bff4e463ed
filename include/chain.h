/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * chain.h: resolved parent chains and the directory scan that builds them.
 *
 * A chain is an image and every ancestor it names, top first.  Images are
 * opened once per scan and shared (reference counted) between the chains
 * that contain them.  Reads walk the layers: a layer is asked only for the
 * ranges the layer above left UNALLOC, and a parent smaller than the chain
 * reads as zeros past its end.
 */
#ifndef LAYERFS_CHAIN_H
#define LAYERFS_CHAIN_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "img.h"
#include "layers.h"

#define CHAIN_MAX_DEPTH_DEFAULT 64

struct chain_opts {
	bool writable;		/* open writable tops O_RDWR (-o rw) */
	bool allow_outside;	/* parents may resolve outside IMAGEDIR */
	bool ignore_parent_id;	/* mount despite a parent identity mismatch */
	bool strict_layers;	/* layer-rule violations are errors */
	unsigned max_depth;	/* 0: CHAIN_MAX_DEPTH_DEFAULT */
	/* A new top layer over one chain, made at scan time (implies it is
	 * the writable one): the chain's name, the new file's name (NULL: the
	 * next free layer name) and format (NULL: follows the chain). */
	const char *new_layer_of;
	const char *new_layer_name;
	const char *new_layer_format;
};

struct chain_layer {
	struct img *img;	/* owned reference */
	struct layer_tag tag;
	char *parent_ref;	/* owned: the reference as written, or NULL */
	const char *parent_ref_what; /* static: which locator resolved */
	int id_check;		/* 1 matched, 0 not recorded, -1 mismatch
				 * (allowed by ignore_parent_id) */
};

struct chain {
	char *name;		/* owned: directory name in the mount */
	char *top_path;		/* owned: path of the top image */
	struct chain_layer *layers; /* owned array, [0] is the top */
	unsigned depth;
	uint64_t size;		/* the top image's virtual size */
	uint32_t sector_size;	/* the top image's logical sector size */
	bool writable;		/* top opened O_RDWR and has ->write: no
				 * other image depends on it */
	bool is_parent;		/* another image in IMAGEDIR uses the top */
	pthread_mutex_t rmw_lock; /* serializes sub-sector writes */
	unsigned nwarnings;	/* layer-rule warnings */
	pthread_rwlock_t lock;	/* map/read shared; write/flush exclusive */
};

enum chain_ext_type {
	CHAIN_EXT_HOST,		/* pread(fd, host_off) */
	CHAIN_EXT_READ,		/* the layer's driver ->read */
	CHAIN_EXT_ZERO,		/* zeros */
};

struct chain_extent {
	uint64_t len;
	enum chain_ext_type type;
	unsigned layer;		/* index into layers (HOST, READ) */
	int fd;			/* HOST */
	uint64_t host_off;	/* HOST */
	bool allocated;		/* false: nothing in any layer (a hole) */
};

/*
 * Resolve the run that starts at off (< size), at most len bytes, through
 * all layers.  Caller holds the chain's lock (shared).  0 or -errno.
 */
int chain_map(struct chain *c, uint64_t off, uint64_t len,
	      struct chain_extent *e);
/* Read a resolved extent's first n bytes (n <= e->len) at chain offset off */
int chain_read_extent(struct chain *c, const struct chain_extent *e,
		      void *buf, size_t n, uint64_t off);
/* Read n bytes at off; bytes past the chain's size read as zeros. */
int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off);

/*
 * Write n bytes at off (any alignment: partial sectors are read, merged and
 * written whole).  -EROFS if the chain is not writable, -ENOSPC past its
 * end.  Takes the chain's lock shared.  0 or -errno.
 */
int chain_pwrite(struct chain *c, const void *buf, size_t n, uint64_t off);
/* [off, off + n) reads as zeros afterwards (discard, zero-range). */
int chain_zero(struct chain *c, uint64_t off, uint64_t n);
/* fsync: every completed write is durable when this returns 0. */
int chain_flush(struct chain *c);

/*
 * Open one image file and resolve its whole parent chain.  dir is the
 * directory parents must stay inside (NULL: the image's own directory).
 */
int chain_open_file(const char *path, const char *dir,
		    const struct chain_opts *o, struct chain **out);
void chain_free(struct chain *c);

/* All chains of a directory: one per image whose chain resolved. */
struct chainset {
	char *dir;		/* owned: IMAGEDIR as given */
	struct chain **chains;	/* owned, sorted by name */
	size_t nchains;
	unsigned nfailed;	/* images or chains left out (logged) */
};

/*
 * Scan dir: open every regular, non-hidden file by content, resolve each
 * image's parents, check identities and layer rules, and build one chain
 * per image that resolved.  Problems with single files are logged (one
 * line naming the file) and leave that chain out.  Fails only if dir
 * cannot be read.
 */
int chainset_scan(const char *dir, const struct chain_opts *o,
		  struct chainset **out);
void chainset_free(struct chainset *cs);

/* The directory part of path ("." if it has none, "/" at the root).  malloc'd. */
char *chain_path_dir(const char *path);
/*
 * to as a path relative to the directory from_dir ("../b/x.vhd"), both
 * canonical (absolute, no "." or ".." parts, no trailing '/').  malloc'd,
 * or NULL when out of memory.
 */
char *chain_path_relative(const char *from_dir, const char *to);

#endif
