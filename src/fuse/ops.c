// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * ops.c: the FUSE operations of the layerfs daemon.
 *
 * Read-only chains never change, so their entries and attributes are
 * cached by the kernel for a day, their directories are cached too
 * (FOPEN_CACHE_DIR), and their files keep their page cache across opens
 * (FOPEN_KEEP_CACHE).  In a writable chain the partition files follow the
 * partition table (partwatch.c): handlers settle a chain's table before
 * they look at its partitions.  Entries of a writable chain's directory
 * are not cached (timeout 0).
 *
 * Read path: the request pins the chain's current shape (chain_view_get:
 * one atomic increment under the chain's lock, released at once), is
 * resolved into extents of that view (chain_view_map), then answered in
 * one of three ways:
 *   - splice: a fuse_bufvec whose CHAIN_EXT_HOST runs are file-descriptor
 *     buffers (the kernel moves the layer file's pages, no user copy),
 *     ZERO runs point into a read-only zero mapping and CHAIN_EXT_READ
 *     runs are read into the thread's buffer;
 *   - copy: everything is read into the thread's buffer (small requests,
 *     where pread + one copy beats three splice calls, or no splice);
 *   - one ZERO run: straight from the zero mapping.
 * The thread's buffers are allocated once per worker thread, so the
 * common case allocates nothing and takes no lock but the chain's, for a
 * moment.  The view is put once the reply is sent: a zero-copy reply's
 * file descriptors stay open even if the chain switches to a new top
 * meanwhile, and no lock is held while the kernel takes the data.  A
 * partition is the same window read with a different base.
 */
#include <errno.h>
#include <linux/falloc.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "fs-priv.h"
#include "layers.h"
#include "log.h"

/*
 * A text snapshot, taken when .layerfs.log or info is opened.  The open
 * file holds one reference and a READ another until its reply is sent:
 * the kernel can complete the READ, and the client close the file, while
 * fuse_reply_buf has not returned yet, so RELEASE (on another worker)
 * must not free the text under it.
 */
struct fs_logsnap {
	char *text;		/* owned */
	size_t len;
	unsigned refcnt;	/* atomic */
};

static void logsnap_put(struct fs_logsnap *snap)
{
	if (!snap || __atomic_sub_fetch(&snap->refcnt, 1, __ATOMIC_ACQ_REL))
		return;
	free(snap->text);
	free(snap);
}

int fs_errno(int r)
{
	if (r >= 0)
		return EIO;
	switch (-r) {
	case EUCLEAN:		/* corrupt metadata */
	case EBADMSG:		/* checksum mismatch */
	case ESTALE:		/* parent identity mismatch, a stale partition */
		return EIO;
	}
	return -r;
}

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

void fs_thread_free(void *p)
{
	struct fs_thread *t = p;

	if (!t)
		return;
	free(t->buf);
	free(t->bv);
	free(t);
}

/* ---- the info file ------------------------------------------------------- */

static int sbuf_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
	__printf(4, 5);

static int sbuf_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*buf ? *buf + *len : NULL, *buf ? *cap - *len : 0,
			      fmt, ap);
		va_end(ap);
		if (n < 0)
			return -EINVAL;
		if (*buf && *len + (size_t)n < *cap) {
			*len += (size_t)n;
			return 0;
		}
		size_t ncap = MAX(*cap * 2, *len + (size_t)n + 256);
		char *b = realloc(*buf, ncap);

		if (!b)
			return -ENOMEM;
		*buf = b;
		*cap = ncap;
	}
}

/*
 * What a chain is, as text: its layers top to bottom and the partitions
 * of its disk.  Under tree_lock (read).  NULL when out of memory.
 */
static char *info_text(const struct fs_cstate *cst, size_t *lenp)
{
	const struct chain *c = cst->chain;
	const struct part_table *t = cst->table;
	struct chain_view *v = chain_view_get(cst->chain);
	char *b = NULL;
	size_t len = 0, cap = 0;
	int r;

	r = sbuf_add(&b, &len, &cap,
		     "chain: %s\nsize: %llu\nsector_size: %u\nwritable: %s\n"
		     "layers: %u (top first)\n",
		     c->name, (unsigned long long)c->size, c->sector_size,
		     c->writable ? "yes" : "no", v->depth);
	for (unsigned i = 0; r == 0 && i < v->depth; i++) {
		const struct chain_layer *l = &v->layers[i];
		char tag[16];

		layer_tag_format(&l->tag, tag, sizeof(tag));
		r = sbuf_add(&b, &len, &cap,
			     "  %u: %s format=%s subtype=%s level=%s "
			     "virtual_size=%llu sector_size=%u\n",
			     i, l->img->path, l->img->drv->name,
			     l->img->subtype[0] ? l->img->subtype : "-",
			     tag[0] ? tag : "-",
			     (unsigned long long)l->img->size,
			     l->img->sector_size);
	}
	if (r == 0)
		r = sbuf_add(&b, &len, &cap, "partition_table: %s%s%s\n",
			     t && t->type[0] ? t->type : "none",
			     t && t->id[0] ? " id=" : "", t ? t->id : "");
	if (r == 0)
		r = sbuf_add(&b, &len, &cap, "partitions: %zu\n",
			     t ? t->nparts : 0);
	for (size_t i = 0; r == 0 && t && i < t->nparts; i++) {
		const struct part *p = &t->parts[i];

		r = sbuf_add(&b, &len, &cap,
			     "  p%u: start=%llu size=%llu type=%s%s%s%s%s%s%s%s%s"
			     "%s%s%s\n",
			     p->number, (unsigned long long)p->start,
			     (unsigned long long)p->size, p->type,
			     p->container ? " extended" : "",
			     p->uuid[0] ? " uuid=" : "", p->uuid,
			     p->name[0] ? " name=\"" : "", p->name,
			     p->name[0] ? "\"" : "",
			     p->fstype[0] ? " fs=" : "", p->fstype,
			     p->label[0] ? " label=\"" : "", p->label,
			     p->label[0] ? "\"" : "");
	}
	chain_view_put(v);
	if (r < 0) {
		free(b);
		return NULL;
	}
	*lenp = len;
	return b;
}

/* ---- attributes --------------------------------------------------------- */

static size_t journal_len(void)
{
	size_t len = 0;
	char *j = log_journal_copy(&len);

	free(j);
	return j ? len : 0;
}

static size_t info_len(struct fs *fs, const struct fs_node *nd)
{
	size_t len = 0;
	char *s;

	pthread_rwlock_rdlock(&fs->tree_lock);
	s = info_text(nd->cst, &len);
	pthread_rwlock_unlock(&fs->tree_lock);
	free(s);
	return len;
}

/*
 * Bytes of a disk window that are not ZERO runs, so that st_blocks tells
 * cp(1) and du(1) the disk is sparse.  Walked once, on first use, and
 * capped: a chain too fragmented to walk quickly reports its full size.
 */
static uint64_t disk_alloc(const struct fs_node *nd)
{
	uint64_t *cache = (uint64_t *)&nd->alloc;	/* the one mutable field */
	uint64_t a = __atomic_load_n(cache, __ATOMIC_RELAXED);
	uint64_t pos = nd->base, end = nd->base + nd->size;
	struct chain_view *v;
	unsigned runs = 0;

	if (a != FS_ALLOC_UNKNOWN)
		return a;
	a = 0;
	v = chain_view_get(nd->chain);
	while (pos < end) {
		struct chain_extent e;

		if (++runs > FS_ALLOC_MAX_RUNS ||
		    chain_view_map(v, pos, end - pos, &e) < 0) {
			a = nd->size;
			break;
		}
		e.len = MIN(e.len, end - pos);
		if (e.type != CHAIN_EXT_ZERO)
			a += e.len;
		pos += e.len;
	}
	chain_view_put(v);
	__atomic_store_n(cache, a, __ATOMIC_RELAXED);
	return a;
}

static mode_t node_mode(const struct fs_node *nd)
{
	switch (nd->type) {
	case FS_NODE_DIR:
		return FS_MODE_DIR;
	case FS_NODE_LINK:
		return FS_MODE_LINK;
	case FS_NODE_DISK:
	case FS_NODE_PART:
		return nd->chain->writable ? FS_MODE_FILE_RW : FS_MODE_FILE;
	case FS_NODE_LOG:
	case FS_NODE_INFO:
		break;
	}
	return FS_MODE_FILE;
}

/* Directories' nsubdirs are read under tree_lock; info takes it itself. */
static void fill_attr(struct fs *fs, const struct fs_node *nd,
		      struct stat *st, bool locked)
{
	uint64_t size = 0, alloc = 0;

	memset(st, 0, sizeof(*st));
	st->st_ino = nd->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	if (nd->type != FS_NODE_DIR) {	/* fixed; a directory's below */
		st->st_atim = nd->mtime;
		st->st_mtim = nd->mtime;
		st->st_ctim = nd->mtime;
	}
	st->st_blksize = FS_BLKSIZE;
	st->st_mode = node_mode(nd);
	st->st_nlink = 1;
	fs_perm_attr(nd, st);	/* windows, info, log: from the files */
	switch (nd->type) {
	case FS_NODE_DIR:
		if (!locked)
			pthread_rwlock_rdlock(&fs->tree_lock);
		st->st_nlink = 2 + nd->nsubdirs;
		st->st_atim = nd->mtime;	/* a rescan sets it */
		st->st_mtim = nd->mtime;
		st->st_ctim = nd->mtime;
		if (!locked)
			pthread_rwlock_unlock(&fs->tree_lock);
		st->st_size = FS_BLKSIZE;
		return;
	case FS_NODE_DISK:
	case FS_NODE_PART:
		size = nd->size;
		/* a writable chain changes: no cached allocation figure */
		alloc = nd->chain->writable ? size : disk_alloc(nd);
		break;
	case FS_NODE_LOG:
		size = journal_len();
		alloc = size;
		break;
	case FS_NODE_INFO:
		if (!locked) {
			size = info_len(fs, nd);
		} else {	/* the same text, already under the lock */
			size_t n = 0;

			free(info_text(nd->cst, &n));
			size = n;
		}
		alloc = size;
		break;
	case FS_NODE_LINK:
		size = strlen(nd->target);
		break;
	}
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((alloc + 511) / 512);
}

static double attr_timeout(const struct fs_node *nd)
{
	if (nd->type == FS_NODE_LOG || nd->type == FS_NODE_INFO)
		return FS_LOG_TIMEOUT;
	return fs_node_volatile(nd) ? 0.0 : FS_TIMEOUT;
}

static void fill_entry(struct fs *fs, const struct fs_node *nd,
		       struct fuse_entry_param *e, bool locked)
{
	memset(e, 0, sizeof(*e));
	e->ino = nd->ino;
	e->generation = 1;
	fill_attr(fs, nd, &e->attr, locked);
	e->attr_timeout = attr_timeout(nd);
	e->entry_timeout = fs_node_volatile(nd) ? 0.0 : FS_TIMEOUT;
}

/* ---- session ------------------------------------------------------------ */

/* The largest pipe a worker thread can get (libfuse grows its own). */
static size_t probe_pipe_max(const struct fs *fs)
{
	size_t want = fs->max_req + fs->pagesize * (FS_BUFVEC_MAX + 3);
	size_t got = 0;
	int p[2];
	int r;

	if (pipe2(p, O_CLOEXEC) < 0)
		return 0;
	r = fcntl(p[0], F_SETPIPE_SZ, (int)want);
	if (r < 0) {
		/* unprivileged: up to /proc/sys/fs/pipe-max-size */
		FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
		unsigned long max = 0;

		if (f) {
			if (fscanf(f, "%lu", &max) != 1)
				max = 0;
			fclose(f);
		}
		if (max && max <= INT_MAX)
			r = fcntl(p[0], F_SETPIPE_SZ, (int)max);
	}
	if (r > 0)
		got = (size_t)r;
	close(p[0]);
	close(p[1]);
	return got;
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct fs *fs = userdata;
	size_t max_req;

	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	/*
	 * O_DIRECT requests from aio/io_uring are sent to us as they are
	 * submitted instead of one at a time under the inode lock: writes
	 * at queue depth 16 run in parallel.
	 */
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	/*
	 * libfuse already capped max_write at its buffer (1 MiB) and derives
	 * max_pages from it, which bounds READs too: leave it as large.
	 */
	max_req = conn->max_write;
	if (conn->max_read && conn->max_read < max_req)
		max_req = conn->max_read;
	max_req = (max_req + fs->pagesize - 1) / fs->pagesize * fs->pagesize;
	fs->max_req = MAX(max_req, FS_MAX_REQ_DEFAULT);
	fs->splice = conn->proto_minor >= 14 &&
		     (conn->want & FUSE_CAP_SPLICE_WRITE);
	fs->pipe_max = fs->splice ? probe_pipe_max(fs) : 0;
	DBG(FUSE, "init: protocol 7.%u, max_write %u, max_read %u",
	    conn->proto_minor, conn->max_write, conn->max_read);
	DBG(FUSE, "init: max_readahead %u, splice %s, pipes up to %zu bytes",
	    conn->max_readahead, fs->splice ? "on" : "off", fs->pipe_max);
}

/* ---- lookup, attributes, directories ----------------------------------- */

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *dir = fs_node_get(fs, parent), *nd;
	struct fuse_entry_param e;

	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	if (dir->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	fs_part_settle(fs, dir->cst, true);
	pthread_rwlock_rdlock(&fs->tree_lock);
	nd = fs_node_lookup(fs, dir, name);
	if (!nd) {
		/* a negative entry, cached unless the directory can change */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs_node_volatile(dir) ? 0.0 : FS_TIMEOUT;
	} else {
		fill_entry(fs, nd, &e, true);
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	fuse_reply_entry(req, &e);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino __unused,
		      uint64_t nlookup __unused)
{
	fuse_reply_none(req);	/* nodes live as long as the mount */
}

static void fs_forget_multi(fuse_req_t req, size_t count __unused,
			    struct fuse_forget_data *forgets __unused)
{
	fuse_reply_none(req);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi __unused)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	struct stat st;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR || nd->type == FS_NODE_INFO)
		fs_part_settle(fs, nd->cst, true);
	fill_attr(fs, nd, &st, false);
	fuse_reply_attr(req, &st, attr_timeout(nd));
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi __unused)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	struct stat st;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (!fs_node_is_window(nd) || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	/* a disk keeps its size; times and modes are not stored */
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != nd->size)
		return (void)fuse_reply_err(req, EPERM);
	fill_attr(fs, nd, &st, false);
	fuse_reply_attr(req, &st, attr_timeout(nd));
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	const struct fs_node *nd = fs_node_get(fs_of(req), ino);

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_LINK)
		return (void)fuse_reply_err(req, EINVAL);
	fuse_reply_readlink(req, nd->target);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	fs_part_settle(fs, nd->cst, true);
	/* a writable chain's directory changes with its partition table */
	fi->cache_readdir = !fs_node_volatile(nd);
	fi->keep_cache = !fs_node_volatile(nd);
	fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, bool plus)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *dir = fs_node_get(fs, ino);
	_cleanup_free_ char *buf = NULL;
	size_t used = 0;

	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	if (dir->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	buf = malloc(size ? size : 1);
	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	fs_part_settle(fs, dir->cst, true);
	pthread_rwlock_rdlock(&fs->tree_lock);
	/* entry i: 0 ".", 1 "..", then the kids; its next offset is i + 1 */
	for (uint64_t i = (uint64_t)off; i < dir->nkids + 2; i++) {
		const struct fs_node *nd;
		const char *name;
		size_t ent;

		if (i == 0) {
			nd = dir;
			name = ".";
		} else if (i == 1) {
			nd = fs_node_get(fs, dir->parent);
			name = "..";
		} else {
			nd = fs_node_get(fs, dir->kids[i - 2]);
			name = nd->name;
		}
		if (plus) {
			struct fuse_entry_param e;

			fill_entry(fs, nd, &e, true);
			ent = fuse_add_direntry_plus(req, buf + used,
						     size - used, name, &e,
						     (off_t)(i + 1));
		} else {
			struct stat st = { .st_ino = nd->ino };

			st.st_mode = node_mode(nd);
			ent = fuse_add_direntry(req, buf + used, size - used,
						name, &st, (off_t)(i + 1));
		}
		if (ent > size - used)
			break;	/* did not fit: the kernel asks again */
		used += ent;
	}
	pthread_rwlock_unlock(&fs->tree_lock);
	fuse_reply_buf(req, buf, used);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, struct fuse_file_info *fi __unused)
{
	do_readdir(req, ino, size, off, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi __unused)
{
	do_readdir(req, ino, size, off, true);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino __unused,
			  struct fuse_file_info *fi __unused)
{
	fuse_reply_err(req, 0);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino __unused)
{
	const struct fs *fs = fs_of(req);
	struct statvfs s;

	memset(&s, 0, sizeof(s));
	s.f_bsize = FS_BLKSIZE;
	s.f_frsize = FS_BLKSIZE;
	s.f_blocks = (fsblkcnt_t)((fs->total_size + FS_BLKSIZE - 1) /
				  FS_BLKSIZE);
	s.f_files = (fsfilcnt_t)__atomic_load_n(&fs->nnodes, __ATOMIC_ACQUIRE);
	s.f_namemax = NAME_MAX;
	fuse_reply_statfs(req, &s);
}

/* ---- open, read, seek --------------------------------------------------- */

/* A partition node still in the table (after any pending rescan)? */
static bool part_live(struct fs *fs, const struct fs_node *nd)
{
	if (nd->type != FS_NODE_PART)
		return true;
	fs_part_settle(fs, nd->cst, false);
	return !fs_node_stale(nd);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	struct fs_logsnap *snap;
	bool wr;
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (nd->type == FS_NODE_LINK)	/* the kernel follows links itself */
		return (void)fuse_reply_err(req, ELOOP);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, ESTALE);
	wr = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	if (wr) {
		if (!fs_node_is_window(nd) || !nd->chain->writable)
			return (void)fuse_reply_err(req, EROFS);
		if (fi->flags & O_TRUNC)	/* a disk keeps its size */
			return (void)fuse_reply_err(req, EPERM);
	}
	/* the files decide, whoever the layers belong to (perm.c) */
	r = fs_perm_open(req, fs, nd, wr);
	if (r < 0)
		return (void)fuse_reply_err(req, -r);
	/* nothing to flush on close, unless the chain takes writes */
	fi->noflush = !fs_node_is_window(nd) || !nd->chain->writable;
	if (nd->type == FS_NODE_LOG || nd->type == FS_NODE_INFO) {
		snap = calloc(1, sizeof(*snap));
		if (snap && nd->type == FS_NODE_LOG) {
			snap->text = log_journal_copy(&snap->len);
		} else if (snap) {
			fs_part_settle(fs, nd->cst, true);
			pthread_rwlock_rdlock(&fs->tree_lock);
			snap->text = info_text(nd->cst, &snap->len);
			pthread_rwlock_unlock(&fs->tree_lock);
		}
		if (!snap || !snap->text) {
			free(snap);
			return (void)fuse_reply_err(req, ENOMEM);
		}
		snap->refcnt = 1;	/* the open file's */
		fi->fh = (uintptr_t)snap;
		fi->direct_io = 1;	/* the size changes: no page cache */
		if (fuse_reply_open(req, fi) != 0)
			logsnap_put(snap);	/* interrupted: no release */
		return;
	}
	/*
	 * A read-only chain never changes under us: keep its page cache.
	 * O_DIRECT needs nothing here: the kernel sends such reads and
	 * writes straight to us, uncached, whatever we answer.
	 */
	fi->keep_cache = !nd->chain->writable;
	/*
	 * An O_DIRECT open of a writable disk gets FOPEN_DIRECT_IO, which
	 * changes nothing for it (its I/O bypasses the page cache anyway)
	 * but the path the kernel takes: without it, aio/io_uring writes
	 * reach us one at a time (each waits for the last under the inode
	 * lock); with it, queue-depth-16 writes arrive in parallel.
	 */
	if ((fi->flags & O_DIRECT) && nd->chain->writable)
		fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	const struct fs_node *nd = fs_node_get(fs_of(req), ino);

	if (nd && (nd->type == FS_NODE_LOG || nd->type == FS_NODE_INFO))
		logsnap_put((void *)(uintptr_t)fi->fh);	/* a READ may hold it */
	fuse_reply_err(req, 0);
}

static struct fs_thread *thread_get(struct fs *fs, size_t n)
{
	struct fs_thread *t = pthread_getspecific(fs->tkey);

	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t)
			return NULL;
		t->bv = malloc(sizeof(*t->bv) +
			       (FS_BUFVEC_MAX - 1) * sizeof(t->bv->buf[0]));
		if (!t->bv || pthread_setspecific(fs->tkey, t) != 0) {
			fs_thread_free(t);
			return NULL;
		}
	}
	if (t->cap < n) {	/* first read of this thread, or a huge one */
		size_t cap = MAX(n, fs->max_req);
		uint8_t *b = malloc(cap);

		if (!b)
			return NULL;
		free(t->buf);
		t->buf = b;
		t->cap = cap;
	}
	return t;
}

/*
 * Resolve [off, off + n) into ext[]: the number of runs, 0 if more than
 * max are needed, or -errno.  The range lies inside the chain.
 */
static int map_range(const struct chain_view *v, uint64_t off, size_t n,
		     struct chain_extent *ext, unsigned max)
{
	unsigned cnt = 0;

	while (n) {
		int r;

		if (cnt == max)
			return 0;
		r = chain_view_map(v, off, n, &ext[cnt]);
		if (r < 0)
			return r;
		ext[cnt].len = MIN(ext[cnt].len, (uint64_t)n);
		off += ext[cnt].len;
		n -= (size_t)ext[cnt].len;
		cnt++;
	}
	return (int)cnt;
}

/* Everything into the thread's buffer, one reply copy. */
static int reply_copy(fuse_req_t req, const struct chain_view *v,
		      struct fs_thread *t, unsigned cnt, uint64_t off, size_t n)
{
	uint8_t *p = t->buf;

	for (unsigned i = 0; i < cnt; i++) {
		size_t len = (size_t)t->ext[i].len;
		int r = chain_view_read_extent(v, &t->ext[i], p, len, off);

		if (r < 0)
			return r;
		p += len;
		off += len;
	}
	fuse_reply_buf(req, (const char *)t->buf, n);
	return 0;
}

/*
 * Zero-copy reply.  Returns 1 (nothing sent) when the reply would not fit
 * the buffer vector or a pipe: the caller copies instead, rather than
 * letting libfuse allocate a bounce buffer.
 */
static int reply_splice(fuse_req_t req, struct fs *fs,
			const struct chain_view *v, struct fs_thread *t,
			unsigned cnt, uint64_t off, size_t n)
{
	struct fuse_buf *b = t->bv->buf;	/* FS_BUFVEC_MAX entries */
	size_t nb = 0, pos = 0;

	for (unsigned i = 0; i < cnt; i++)
		nb += t->ext[i].type == CHAIN_EXT_ZERO
			      ? (size_t)((t->ext[i].len + FS_ZERO_LEN - 1) /
					 FS_ZERO_LEN)
			      : 1;
	/* libfuse's own estimate of the pipe it needs for this reply */
	if (nb > FS_BUFVEC_MAX ||
	    fs->pagesize * (nb + 3) + n > fs->pipe_max)
		return 1;
	nb = 0;
	for (unsigned i = 0; i < cnt; i++) {
		const struct chain_extent *e = &t->ext[i];
		size_t len = (size_t)e->len;
		int r;

		switch (e->type) {
		case CHAIN_EXT_HOST:
			b[nb++] = (struct fuse_buf){
				.size = len,
				.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK,
				.fd = e->fd,
				.pos = (off_t)e->host_off,
			};
			break;
		case CHAIN_EXT_READ:
			r = chain_view_read_extent(v, e, t->buf + pos, len,
						   off + pos);
			if (r < 0)
				return r;
			b[nb++] = (struct fuse_buf){ .size = len,
						     .mem = t->buf + pos };
			break;
		case CHAIN_EXT_ZERO:
			for (size_t done = 0; done < len;) {
				size_t k = MIN(len - done, FS_ZERO_LEN);

				b[nb++] = (struct fuse_buf){
					.size = k,
					.mem = (void *)fs->zeros,
				};
				done += k;
			}
			break;
		}
		pos += len;
	}
	t->bv->count = nb;
	t->bv->idx = 0;
	t->bv->off = 0;
	fuse_reply_data(req, t->bv, FUSE_BUF_SPLICE_MOVE);
	return 0;
}

static int read_window(fuse_req_t req, struct fs *fs,
		       const struct chain_view *v, uint64_t off, size_t n)
{
	struct fs_thread *t = thread_get(fs, n);
	bool host = false;
	int cnt, r;

	if (!t)
		return -ENOMEM;
	cnt = map_range(v, off, n, t->ext, FS_BUFVEC_MAX);
	if (cnt < 0)
		return cnt;
	if (cnt == 0) {		/* too fragmented for one vector */
		r = chain_view_pread(v, t->buf, n, off);
		if (r < 0)
			return r;
		fuse_reply_buf(req, (const char *)t->buf, n);
		return 0;
	}
	if (cnt == 1 && t->ext[0].type == CHAIN_EXT_ZERO && n <= FS_ZERO_LEN) {
		fuse_reply_buf(req, (const char *)fs->zeros, n);
		return 0;
	}
	for (int i = 0; i < cnt; i++)
		host |= t->ext[i].type == CHAIN_EXT_HOST;
	if (host && fs->splice && n >= FS_SPLICE_MIN) {
		r = reply_splice(req, fs, v, t, (unsigned)cnt, off, n);
		if (r <= 0)
			return r;
	}
	return reply_copy(req, v, t, (unsigned)cnt, off, n);
}

/*
 * The file is open while its READ is served, so the snapshot is alive
 * here; the reference keeps it alive until the reply has been sent.
 */
static void read_log(fuse_req_t req, size_t size, off_t off,
		     const struct fuse_file_info *fi)
{
	struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

	if (!snap || (uint64_t)off >= snap->len)
		return (void)fuse_reply_buf(req, NULL, 0);
	__atomic_add_fetch(&snap->refcnt, 1, __ATOMIC_RELAXED);
	fuse_reply_buf(req, snap->text + off,
		       MIN(size, snap->len - (size_t)off));
	logsnap_put(snap);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	struct chain_view *v;
	size_t n;
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (nd->type == FS_NODE_LOG || nd->type == FS_NODE_INFO)
		return read_log(req, size, off, fi);
	if (nd->type == FS_NODE_LINK)
		return (void)fuse_reply_err(req, EINVAL);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, fs_errno(-ESTALE));
	if ((uint64_t)off >= nd->size || !size)
		return (void)fuse_reply_buf(req, NULL, 0);
	n = (size_t)MIN((uint64_t)size, nd->size - (uint64_t)off);
	DBG(IO, "read %s ino %lu: %zu at %lld", nd->name, (unsigned long)ino,
	    n, (long long)off);
	v = chain_view_get(nd->chain);	/* files open until the reply is sent */
	r = read_window(req, fs, v, nd->base + (uint64_t)off, n);
	chain_view_put(v);
	if (r < 0)
		fuse_reply_err(req, fs_errno(r));
}

/*
 * SEEK_DATA/SEEK_HOLE within [base, base + size) of c.  ZERO runs are
 * holes whether a layer allocated them or not; anything else is data.
 */
static int seek_chain(const struct chain_view *v, uint64_t base,
		      uint64_t size, uint64_t off, int whence, uint64_t *out)
{
	uint64_t pos = base + off, end = base + size;

	while (pos < end) {
		struct chain_extent e;
		bool hole;
		int r = chain_view_map(v, pos, end - pos, &e);

		if (r < 0)
			return r;
		hole = e.type == CHAIN_EXT_ZERO;
		if (hole == (whence == SEEK_HOLE)) {
			*out = pos - base;
			return 0;
		}
		pos += MIN(e.len, end - pos);
	}
	if (whence == SEEK_DATA)
		return -ENXIO;
	*out = size;		/* the implicit hole at the end */
	return 0;
}

static void fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	struct chain_view *v;
	uint64_t size, res = 0;
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return (void)fuse_reply_err(req, EINVAL);
	if (nd->type == FS_NODE_LINK)
		return (void)fuse_reply_err(req, EINVAL);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, fs_errno(-ESTALE));
	if (!fs_node_is_window(nd)) {
		const struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

		size = snap ? snap->len : 0;
	} else {
		size = nd->size;
	}
	if (off < 0 || (uint64_t)off >= size)
		return (void)fuse_reply_err(req, ENXIO);
	if (!fs_node_is_window(nd)) {	/* all data */
		res = whence == SEEK_DATA ? (uint64_t)off : size;
		return (void)fuse_reply_lseek(req, (off_t)res);
	}
	v = chain_view_get(nd->chain);
	r = seek_chain(v, nd->base, size, (uint64_t)off, whence, &res);
	chain_view_put(v);
	if (r < 0)
		return (void)fuse_reply_err(req, fs_errno(r));
	DBG(IO, "lseek %s %s %lld -> %llu", nd->name,
	    whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", (long long)off,
	    (unsigned long long)res);
	fuse_reply_lseek(req, (off_t)res);
}

/* flush (close) and fsync both make the top file durable: fdatasync */
static void sync_node(fuse_req_t req, fuse_ino_t ino)
{
	const struct fs_node *nd = fs_node_get(fs_of(req), ino);
	int r = 0;

	if (nd && fs_node_is_window(nd) && nd->chain->writable)
		r = chain_flush(nd->chain);
	fuse_reply_err(req, r < 0 ? fs_errno(r) : 0);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino,
		     struct fuse_file_info *fi __unused)
{
	sync_node(req, ino);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync __unused,
		     struct fuse_file_info *fi __unused)
{
	sync_node(req, ino);
}

/* ---- extended attributes: there are none -------------------------------- */

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size __unused)
{
	(void)name;
	fuse_reply_err(req, fs_node_get(fs_of(req), ino) ? ENODATA : ENOENT);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	if (!fs_node_get(fs_of(req), ino))
		return (void)fuse_reply_err(req, ENOENT);
	if (size == 0)
		fuse_reply_xattr(req, 0);	/* the empty list */
	else
		fuse_reply_buf(req, NULL, 0);
}

/* ---- everything that would change the tree or a disk -------------------- */

/* Written through: the reply goes out once the data is in the top file. */
static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi __unused)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (!fs_node_is_window(nd) || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, fs_errno(-ESTALE));
	if (off < 0 || !range_within((uint64_t)off, size, nd->size))
		return (void)fuse_reply_err(req, ENOSPC);
	DBG(IO, "write %s ino %lu: %zu at %lld", nd->name, (unsigned long)ino,
	    size, (long long)off);
	r = chain_pwrite(nd->chain, buf, size, nd->base + (uint64_t)off);
	if (r < 0)
		return (void)fuse_reply_err(req, fs_errno(r));
	/* the table changed: rescan before anyone looks at the parts again */
	fs_part_written(fs, nd->cst, nd->base + (uint64_t)off, size);
	fuse_reply_write(req, size);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent __unused,
		     const char *name __unused, mode_t mode __unused,
		     dev_t rdev __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent __unused,
		     const char *name __unused, mode_t mode __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent __unused,
		      const char *name __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_symlink(fuse_req_t req, const char *link __unused,
		       fuse_ino_t parent __unused, const char *name __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent __unused,
		      const char *name __unused, fuse_ino_t newparent __unused,
		      const char *newname __unused, unsigned int flags __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_link(fuse_req_t req, fuse_ino_t ino __unused,
		    fuse_ino_t newparent __unused, const char *newname __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent __unused,
		      const char *name __unused, mode_t mode __unused,
		      struct fuse_file_info *fi __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino __unused,
			const char *name __unused, const char *value __unused,
			size_t size __unused, int flags __unused)
{
	fuse_reply_err(req, EROFS);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino __unused,
			   const char *name __unused)
{
	fuse_reply_err(req, EROFS);
}

/*
 * PUNCH_HOLE and ZERO_RANGE make the range read as zeros (ZERO state or
 * zero clusters in the top layer where the format has them); a plain
 * allocation inside the disk has nothing to do.
 */
static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode,
			 off_t offset, off_t length,
			 struct fuse_file_info *fi __unused)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = fs_node_get(fs, ino);
	int r = 0;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (!fs_node_is_window(nd) || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, fs_errno(-ESTALE));
	if (offset < 0 || length <= 0 ||
	    !range_within((uint64_t)offset, (uint64_t)length, nd->size))
		return (void)fuse_reply_err(req, mode ? EINVAL : ENOSPC);
	if (mode & FALLOC_FL_PUNCH_HOLE) {
		if (!(mode & FALLOC_FL_KEEP_SIZE))
			return (void)fuse_reply_err(req, EINVAL);
		mode &= ~(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
		if (mode)
			return (void)fuse_reply_err(req, EOPNOTSUPP);
		r = chain_zero(nd->chain, nd->base + (uint64_t)offset,
			       (uint64_t)length);
	} else if (mode & FALLOC_FL_ZERO_RANGE) {
		if (mode & ~(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
			return (void)fuse_reply_err(req, EOPNOTSUPP);
		r = chain_zero(nd->chain, nd->base + (uint64_t)offset,
			       (uint64_t)length);
	} else if (mode & ~FALLOC_FL_KEEP_SIZE) {
		return (void)fuse_reply_err(req, EOPNOTSUPP);
	} else {
		return (void)fuse_reply_err(req, 0);	/* nothing changed */
	}
	if (r == 0)
		fs_part_written(fs, nd->cst, nd->base + (uint64_t)offset,
			      (uint64_t)length);
	fuse_reply_err(req, r < 0 ? fs_errno(r) : 0);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
	.readlink = fs_readlink,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.readdirplus = fs_readdirplus,
	.releasedir = fs_releasedir,
	.statfs = fs_statfs,
	.open = fs_open,
	.read = fs_read,
	.release = fs_release,
	.flush = fs_flush,
	.fsync = fs_fsync,
	.lseek = fs_lseek,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
	.write = fs_write,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_unlink,
	.symlink = fs_symlink,
	.rename = fs_rename,
	.link = fs_link,
	.create = fs_create,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
	.fallocate = fs_fallocate,
};
