/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs.h: the FUSE layer of the layerfs daemon (low-level libfuse API).
 *
 * The mount is a node table:
 *
 *   /                  FS_NODE_DIR   ino 1
 *   /.layerfs.log      FS_NODE_LOG   the mount's own log (journal snapshot)
 *   /<chain>/          FS_NODE_DIR   one per chain, named chain->name
 *   /<chain>/disk      FS_NODE_DISK  the flat raw view: chain, base 0, size
 *   /<chain>/info      FS_NODE_INFO  text: layers, partitions (at open)
 *   /<chain>/pN        FS_NODE_PART  partition N: chain, base = its start
 *   /<chain>/by-name/  FS_NODE_DIR   GPT partition names  -> ../pN
 *   /<chain>/by-label/ FS_NODE_DIR   file system labels   -> ../pN
 *   /<chain>/by-name/X FS_NODE_LINK  symlinks "../pN" (by-label too)
 *
 * A file node is a window {chain, base, size} into a chain.  The static
 * part (root, chain directories, disk, info, log) is built before the
 * session starts.  Partitions come from part_scan at mount, and again
 * after a write touches the partition table of a writable chain: then
 * new nodes are added and the chain directory's list of children is
 * replaced under fs->tree_lock.  A node's name, type and window never
 * change, and no node is freed before unmount (a partition whose window
 * changed gets a new node; the old one is marked stale and kept, a few
 * hundred bytes per changed partition per rescan), so handlers use a node
 * pointer without a lock, and an inode number is never reused.  Inode
 * number = index + 1.
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
#include "part.h"

#define FS_LOG_NAME ".layerfs.log"
#define FS_DISK_NAME "disk"
#define FS_INFO_NAME "info"
#define FS_BYNAME_NAME "by-name"
#define FS_BYLABEL_NAME "by-label"
#define FS_ALLOC_UNKNOWN UINT64_MAX

enum fs_node_type {
	FS_NODE_DIR,
	FS_NODE_DISK,		/* a window into a chain: chain, base, size */
	FS_NODE_LOG,		/* the log journal, snapshot at open */
	FS_NODE_PART,		/* a partition: a window like DISK */
	FS_NODE_INFO,		/* the chain's description, text at open */
	FS_NODE_LINK,		/* a symlink (by-name, by-label) */
};

struct fs_cstate;
struct fs_gone;

struct fs_node {
	fuse_ino_t ino;		/* index + 1 */
	fuse_ino_t parent;	/* the root is its own parent */
	char *name;		/* owned */
	enum fs_node_type type;
	struct chain *chain;	/* borrowed from the chainset; NULL if none */
	struct fs_cstate *cst;	/* borrowed: the chain's state, or NULL */
	uint64_t base;		/* DISK, PART: first chain byte of the window */
	uint64_t size;		/* DISK, PART: window length */
	unsigned partno;	/* PART: the partition number */
	bool stale;		/* PART, LINK: gone from the table (atomic) */
	char *target;		/* LINK: owned, "../pN" */
	uint64_t alloc;		/* DISK, PART: bytes not ZERO, for st_blocks; a cache
				 * filled on first use (atomic), else
				 * FS_ALLOC_UNKNOWN */
	struct timespec mtime;
	fuse_ino_t *kids;	/* DIR: owned, sorted by name (after finish);
				 * replaced under tree_lock in chain dirs */
	size_t nkids, kids_cap;
	unsigned nsubdirs;	/* DIR: for st_nlink */
};

/* Per chain: its partition table and what the tree shows of it. */
struct fs_cstate {
	struct chain *chain;	/* borrowed */
	fuse_ino_t dir, disk, info;	/* its static nodes */
	fuse_ino_t byname, bylabel;	/* 0 until first needed */
	struct part_table *table;	/* owned; replaced under tree_lock */
	unsigned gen;		/* table generation, bumped by each scan */
	bool dirty;		/* atomic: a write touched the table */
	bool fsdirty;		/* atomic: ... or where a label lives */
	bool notify;		/* atomic: the kernel's cache needs dropping */
	pthread_mutex_t scan_lock;	/* one scan of this chain at a time */
	struct fs_gone *gone;	/* owned: names to invalidate (scan_lock) */
	size_t ngone;
};

#define FS_CHUNK_BITS 10	/* node pointers per chunk: 1024 */
#define FS_MAX_CHUNKS 4096	/* at most 4 M nodes */

struct fs {
	/* nodes[ino - 1] is chunks[i >> FS_CHUNK_BITS][i & mask]; a node is
	 * published by the release store of nnodes and lives until fs_free */
	struct fs_node **chunks[FS_MAX_CHUNKS];	/* owned */
	size_t nnodes;		/* atomic */
	bool finished;		/* fs_tree_finish() ran */
	pthread_rwlock_t tree_lock;	/* dirs' kids, cstate tables */
	struct fs_cstate **cst;	/* owned array, one per chain directory */
	size_t ncst;
	struct fuse_session *se;	/* borrowed, set by fs_start */
	pthread_t rescan_thread;	/* rescans and kernel notifications */
	bool rescan_running;
	bool rescan_stop;	/* under rescan_mutex */
	bool rescan_kick;	/* under rescan_mutex */
	pthread_mutex_t rescan_mutex;
	pthread_cond_t rescan_cond;
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
/*
 * One directory per chain holding `disk`, `info` and the partitions found
 * by part_scan, plus the root's log file.
 */
int fs_add_chainset(struct fs *fs, const struct chainset *cs);
/* Sort directories and freeze the table; the root's mtime is imagedir's. */
int fs_tree_finish(struct fs *fs, const char *imagedir);
/* fs_free(NULL) is a no-op; the chains stay the caller's. */
void fs_free(struct fs *fs);
/*
 * After fuse_daemonize (threads do not survive a fork): start the thread
 * that rescans partition tables written to and tells the kernel to drop
 * its cached entries.  fs_stop ends it (before the session is destroyed).
 */
int fs_start(struct fs *fs, struct fuse_session *se);
void fs_stop(struct fs *fs);

/* The operations table; userdata is the struct fs. */
extern const struct fuse_lowlevel_ops fs_ops;

/* Kernel error for a -errno from the layers below (EUCLEAN... -> EIO). */
int fs_errno(int r);

#endif
