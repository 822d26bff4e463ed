/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * chain.h: resolved parent chains and the directory scan that builds them.
 *
 * A chain is an image and every ancestor it names, top first.  Images are
 * opened once per scan and shared (reference counted) between the chains
 * that contain them.  Reads walk the layers: a layer is asked only for the
 * ranges the layer above left UNALLOC, and a parent smaller than the chain
 * reads as zeros past its end.
 *
 * Shape and locking.  The chain's shape (which layers, which top) is a
 * reference-counted view, struct chain_view.  A read pins the current view
 * (chain_view_get: a shared lock held for one pointer load and one atomic
 * increment) and reads through it; while the view is held its layers stay
 * open, so the extents it maps (and the file descriptors in them) stay
 * valid, e.g. across a zero-copy reply, even if the chain switches to a new
 * top meanwhile.  A write or zero holds the shape lock shared for its
 * duration, so it lands in the top of the shape it started in and a shape
 * change waits for it.  A shape change (chain_set_top) takes the lock
 * exclusive, only to swap the view pointer; the lock prefers writers, so a
 * stream of reads and writes cannot starve it.  The lock guards the shape,
 * not the data: drivers serialize their own allocation and flush, and no
 * allocation or fdatasync ever holds it exclusive.  It lives in chain.c
 * and is never taken recursively: no function below takes it while
 * holding it.
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
	const char *rw_base;	/* NAME[:NAME...]: standalone images that
				 * writable opens in place (-o rw_base) */
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

struct chain_shape;		/* chain.c only: the shape lock, the view */

struct chain {
	char *name;		/* owned: directory name in the mount */
	char *top_path;		/* owned: path of the top image at scan */
	/*
	 * The current shape, borrowed from the current view: for code that no
	 * shape change can run beside (the CLI, the daemon before its session
	 * starts).  Everything else reads through a chain_view.
	 */
	struct chain_layer *layers; /* [0] is the top */
	unsigned depth;
	uint64_t size;		/* the top image's virtual size (fixed) */
	uint32_t sector_size;	/* the top image's logical sector size */
	bool writable;		/* top opened O_RDWR and has ->write: no
				 * other image depends on it */
	bool is_parent;		/* another image in IMAGEDIR uses the top */
	unsigned nwarnings;	/* layer-rule warnings */
	struct chain_shape *shape; /* owned, chain.c only */
};

/*
 * One shape of a chain, pinned: its layers stay open while a reference is
 * held.  Immutable but for the reference count and the retired top.
 */
struct chain_view {
	struct chain_layer *layers; /* owned array, [0] is the top */
	unsigned depth;
	uint64_t size;		/* the chain's size */
	unsigned refcnt;	/* atomic: chain_view_get/chain_view_put */
	/* owned reference, under retired_lock: the top this shape replaced,
	 * until a flush made it durable; NULL if none */
	struct img *retired;
	pthread_mutex_t retired_lock;
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
 * Pin the chain's current shape: a new reference to its view, never NULL.
 * Costs a shared lock held for one load and an atomic increment.
 */
struct chain_view *chain_view_get(struct chain *c);
/* Drop a reference; the last one closes the layers no other view holds. */
void chain_view_put(struct chain_view *v);

/*
 * Resolve the run that starts at off (< v->size), at most len bytes,
 * through all layers of v.  The extent (its fd) is valid while v is
 * held.  0 or -errno.
 */
int chain_view_map(const struct chain_view *v, uint64_t off, uint64_t len,
		   struct chain_extent *e);
/* Read a resolved extent's first n bytes (n <= e->len) at chain offset off */
int chain_view_read_extent(const struct chain_view *v,
			   const struct chain_extent *e, void *buf, size_t n,
			   uint64_t off);
/* Read n bytes at off through v; bytes past the end read as zeros. */
int chain_view_pread(const struct chain_view *v, void *buf, size_t n,
		     uint64_t off);
/* The same through the current shape (a view held for the call). */
int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off);

/*
 * Write n bytes at off (any alignment: partial sectors are read, merged and
 * written whole) to the current top.  -EROFS if the chain is not writable,
 * -ENOSPC past its end, -EIO once the top's file changed behind us (cut
 * shorter, removed, replaced: see img_health_check; an fstat around each
 * flush, before each allocation, and at most once per clock tick before
 * writes and zeros).  Holds the shape lock shared.  0 or -errno.
 */
int chain_pwrite(struct chain *c, const void *buf, size_t n, uint64_t off);
/* [off, off + n) reads as zeros afterwards (discard, zero-range). */
int chain_zero(struct chain *c, uint64_t off, uint64_t n);
/*
 * fsync: every completed write is durable when this returns 0 (the top,
 * and a top that a shape change retired if it was not flushed since).
 * Holds a view, not the lock, across the fdatasync.
 */
int chain_flush(struct chain *c);

/*
 * Change the chain's shape: top becomes layer 0, over the current layers
 * without their first drop ones (0: a new layer over the chain, the live
 * checkpoint; 1: top replaces the current top).  The chain takes its own
 * reference to top, which must have the chain's size and sector size, and
 * be opened writable with ->write if the chain is writable.  Waits for the
 * writes in flight (the lock, exclusive, for a pointer swap only); views
 * held elsewhere keep the old layers until they are put.  A writable
 * old top is flushed before this returns.  0, or -EINVAL/-EROFS (nothing
 * changed), or the old top's flush error (the shape changed; the next
 * chain_flush retries it).
 */
int chain_set_top(struct chain *c, struct img *top, unsigned drop);

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
