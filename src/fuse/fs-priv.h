/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs-priv.h: what the files of the daemon's FUSE layer share, private to
 * src/fuse/ (main.c includes fs.h only):
 *
 *   nodes.c      the node table: building the tree, lookups, fs_new/fs_free
 *   partwatch.c  partition tables: scans, by-name/by-label links, the
 *                rescan thread and the kernel cache invalidation
 *   ops.c        the FUSE operations, attributes and the read path
 *   perm.c       owner and modes shown, the caller's access at open
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
 * number = index + 1.  The partition tables live here, not on the chain:
 * a rescan changes the tree (under tree_lock), not the chain's shape.
 *
 * Lock order: tree_lock, then a chain's shape lock (chain.c); never the
 * other way round.
 */
#ifndef LAYERFS_FUSE_FS_PRIV_H
#define LAYERFS_FUSE_FS_PRIV_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "fs.h"
#include "part.h"

#define FS_LOG_NAME ".layerfs.log"
#define FS_DISK_NAME "disk"
#define FS_INFO_NAME "info"
#define FS_BYNAME_NAME "by-name"
#define FS_BYLABEL_NAME "by-label"
#define FS_ALLOC_UNKNOWN UINT64_MAX
#define FS_TIMEOUT 86400.0	/* static tree: entries and attrs, one day */
#define FS_LOG_TIMEOUT 1.0	/* the log file grows */
#define FS_BLKSIZE 4096
#define FS_ZERO_LEN ((size_t)1 << 20)	/* read-only zeros for ZERO runs */
#define FS_BUFVEC_MAX 256	/* buffers in one reply, else read it all */
#define FS_SPLICE_MIN ((size_t)32 << 10)	/* below: pread + copy is cheaper */
#define FS_MAX_REQ_DEFAULT ((size_t)1 << 20)
#define FS_ALLOC_MAX_RUNS (1u << 20)	/* st_blocks: give up after this */
#define FS_RESCAN_DELAY_US 20000	/* gather a tool's writes, then scan */
#define FS_MODE_DIR (S_IFDIR | 0555)
#define FS_MODE_FILE (S_IFREG | 0444)
#define FS_MODE_FILE_RW (S_IFREG | 0644)
#define FS_MODE_LINK (S_IFLNK | 0777)
#define FS_CHUNK_MASK (((size_t)1 << FS_CHUNK_BITS) - 1)

enum fs_node_type {
	FS_NODE_DIR,
	FS_NODE_DISK,		/* a window into a chain: chain, base, size */
	FS_NODE_LOG,		/* the log journal, snapshot at open */
	FS_NODE_PART,		/* a partition: a window like DISK */
	FS_NODE_INFO,		/* the chain's description, text at open */
	FS_NODE_LINK,		/* a symlink (by-name, by-label) */
};

struct fs_cstate;

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

/* Per worker thread, allocated on its first read (pthread key fs->tkey). */
struct fs_thread {
	uint8_t *buf;		/* owned: reply assembly, CHAIN_EXT_READ data */
	size_t cap;
	struct fuse_bufvec *bv;	/* owned: room for FS_BUFVEC_MAX buffers */
	struct chain_extent ext[FS_BUFVEC_MAX];
};

/* A name the kernel may have cached that no longer means the same node */
struct fs_gone {
	fuse_ino_t parent;
	char *name;		/* owned */
};

static inline struct fs_node *fs_node_at(const struct fs *fs, fuse_ino_t ino)
{
	size_t i = ino - 1;

	return fs->chunks[i >> FS_CHUNK_BITS][i & FS_CHUNK_MASK];
}

static inline const struct fs_node *fs_node_get(const struct fs *fs,
						fuse_ino_t ino)
{
	size_t n = __atomic_load_n(&fs->nnodes, __ATOMIC_ACQUIRE);

	if (ino == 0 || ino > n)
		return NULL;
	return fs_node_at(fs, ino);
}

static inline bool fs_node_is_window(const struct fs_node *nd)
{
	return nd->type == FS_NODE_DISK || nd->type == FS_NODE_PART;
}

static inline bool fs_node_stale(const struct fs_node *nd)
{
	return __atomic_load_n(&nd->stale, __ATOMIC_ACQUIRE);
}

/* Entries that can change: everything in a writable chain but its disk. */
static inline bool fs_node_volatile(const struct fs_node *nd)
{
	return nd->cst && nd->chain->writable && nd->type != FS_NODE_DISK;
}

/* nodes.c */
bool fs_name_ok(const char *name);
void fs_now(struct timespec *ts);
/*
 * A new node, published in the table but in no directory yet.  Before
 * fs_tree_finish single-threaded; after it, under tree_lock (write).
 */
struct fs_node *fs_node_create(struct fs *fs, fuse_ino_t parent,
			       const char *name, enum fs_node_type type,
			       struct chain *c, uint64_t base, uint64_t size);
/*
 * Add a node under parent (an existing DIR).  Names must be unique in a
 * directory and may not be "", ".", ".." or contain '/': -EEXIST/-EINVAL,
 * logged.  *ino (if not NULL) receives the new inode number.  0 or -errno.
 */
int fs_node_add(struct fs *fs, fuse_ino_t parent, const char *name,
		enum fs_node_type type, struct chain *c, uint64_t base,
		uint64_t size, fuse_ino_t *ino);
void fs_kids_sort(struct fs *fs, struct fs_node *dir);
/* Child of dir by name (binary search: kids are sorted), or NULL.  Under
 * tree_lock (read). */
const struct fs_node *fs_node_lookup(const struct fs *fs,
				     const struct fs_node *dir,
				     const char *name);

/* partwatch.c */
/*
 * Scan cst's chain and make its directory show what was found: disk,
 * info, pN (a node kept where its window is unchanged), by-name/, by-label/.
 */
int fs_part_refresh(struct fs *fs, struct fs_cstate *cst);
/*
 * Called in a handler before it looks at a chain's partitions: a table
 * written to is rescanned first (labels too, when a listing or the info
 * file is asked for: labels).  Takes no lock the caller holds.
 */
void fs_part_settle(struct fs *fs, struct fs_cstate *cst, bool labels);
/* After a write of [off, off + len) of cst's disk completed. */
void fs_part_written(struct fs *fs, struct fs_cstate *cst, uint64_t off,
		     uint64_t len);

/* perm.c */
/*
 * Owner, group and mode bits of nd's attributes from its image files
 * (a window, info, the log; other nodes are left alone).  0, or -errno
 * (logged) with no permission bits left in st_mode.
 */
int fs_perm_attr(const struct fs_node *nd, struct stat *st);
/*
 * May the caller of req open nd (to write too, if write)?  Checks every
 * layer file with the caller's credentials.  0, -EACCES or -errno.
 */
int fs_perm_open(fuse_req_t req, const struct fs *fs,
		 const struct fs_node *nd, bool write);

/* ops.c */
/* The pthread key's destructor: a worker's read buffers. */
void fs_thread_free(void *p);

#endif
