/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs.h: the FUSE layer of the layerfs daemon (low-level libfuse API).
 *
 * The mount is a static node table built before the session starts:
 *
 *   /                  FS_NODE_DIR   ino 1
 *   /.layerfs.log      FS_NODE_LOG   the mount's own log (journal snapshot)
 *   /<chain>/          FS_NODE_DIR   one per chain, named chain->name
 *   /<chain>/disk      FS_NODE_DISK  the flat raw view: chain, base 0, size
 *
 * A file node is a window {chain, base, size} into a chain, so partitions
 * (p1, p2, ...: base = partition start) and per-chain text files are added
 * later as more nodes of the same table.  Inode number = index + 1.  Nodes
 * are only ever added before fs_tree_finish(); after that the table is
 * read-only (but for the alloc cache) and handlers read it without a lock.
 *
 * This directory is the only includer of fuse_lowlevel.h, and the only
 * place where errno values are translated for the kernel.
 */
#ifndef LAYERFS_FUSE_FS_H
#define LAYERFS_FUSE_FS_H

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 312	/* fuse_loop_cfg_*, lseek: libfuse >= 3.12 */
#endif
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "chain.h"

#define FS_LOG_NAME ".layerfs.log"
#define FS_DISK_NAME "disk"
#define FS_ALLOC_UNKNOWN UINT64_MAX

enum fs_node_type {
	FS_NODE_DIR,
	FS_NODE_DISK,		/* a window into a chain: chain, base, size */
	FS_NODE_LOG,		/* the log journal, snapshot at open */
};

struct fs_node {
	fuse_ino_t ino;		/* index + 1 */
	fuse_ino_t parent;	/* the root is its own parent */
	char *name;		/* owned */
	enum fs_node_type type;
	struct chain *chain;	/* borrowed from the chainset; NULL if none */
	uint64_t base;		/* DISK: first chain byte of the window */
	uint64_t size;		/* DISK: window length */
	uint64_t alloc;		/* DISK: bytes not ZERO, for st_blocks; a cache
				 * filled on first use (atomic), else
				 * FS_ALLOC_UNKNOWN */
	struct timespec mtime;
	fuse_ino_t *kids;	/* DIR: owned, sorted by name (after finish) */
	size_t nkids, kids_cap;
	unsigned nsubdirs;	/* DIR: for st_nlink */
};

struct fs {
	struct fs_node *nodes;	/* owned array: nodes[ino - 1] */
	size_t nnodes, cap;
	bool finished;		/* fs_tree_finish() ran: table is frozen */
	uid_t uid;		/* owner of every node: the mounting user */
	gid_t gid;
	uint64_t total_size;	/* sum of the disk nodes, for statfs */
	const uint8_t *zeros;	/* owned mapping: FS_ZERO_LEN read-only zeros */
	pthread_key_t tkey;	/* per-thread read buffers (struct fs_thread) */
	bool tkey_ok;
	/* set in fs_init, from what the kernel and libfuse agreed: */
	bool splice;		/* FUSE_CAP_SPLICE_WRITE in use */
	size_t pipe_max;	/* largest pipe a worker can get, in bytes */
	size_t max_req;		/* largest READ the kernel sends */
	size_t pagesize;
};

/* Tree building, before the session starts (not thread-safe). */
struct fs *fs_new(void);
/*
 * Add a node under parent (an existing DIR).  Names must be unique in a
 * directory and may not be "", ".", ".." or contain '/': -EEXIST/-EINVAL,
 * logged.  *ino (if not NULL) receives the new inode number.  0 or -errno.
 */
int fs_node_add(struct fs *fs, fuse_ino_t parent, const char *name,
		enum fs_node_type type, struct chain *c, uint64_t base,
		uint64_t size, fuse_ino_t *ino);
/* One directory per chain holding `disk`, plus the root's log file. */
int fs_add_chainset(struct fs *fs, const struct chainset *cs);
/* Sort directories and freeze the table; the root's mtime is imagedir's. */
int fs_tree_finish(struct fs *fs, const char *imagedir);
/* fs_free(NULL) is a no-op; the chains stay the caller's. */
void fs_free(struct fs *fs);

/* The operations table; userdata is the struct fs. */
extern const struct fuse_lowlevel_ops fs_ops;

/* Kernel error for a -errno from the layers below (EUCLEAN... -> EIO). */
int fs_errno(int r);

#endif
