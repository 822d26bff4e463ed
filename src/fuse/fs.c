// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fs.c: the node table and the FUSE operations of the layerfs daemon.
 *
 * The tree is static (see fs.h), so every entry and attribute is cached by
 * the kernel for a day, directories are cached too (FOPEN_CACHE_DIR), and
 * read-only chains keep their page cache across opens (FOPEN_KEEP_CACHE).
 *
 * Read path: the request is resolved into chain extents (chain_map) under
 * the chain's shared lock, then answered in one of three ways:
 *   - splice: a fuse_bufvec whose CHAIN_EXT_HOST runs are file-descriptor
 *     buffers (the kernel moves the layer file's pages, no user copy),
 *     ZERO runs point into a read-only zero mapping and CHAIN_EXT_READ
 *     runs are read into the thread's buffer;
 *   - copy: everything is read into the thread's buffer (small requests,
 *     where pread + one copy beats three splice calls, or no splice);
 *   - one ZERO run: straight from the zero mapping.
 * The thread's buffers are allocated once per worker thread, so the
 * common case allocates nothing and takes no lock but the chain's.
 */
#include <errno.h>
#include <linux/falloc.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "fs.h"
#include "log.h"

#define FS_TIMEOUT 86400.0	/* static tree: entries and attrs, one day */
#define FS_LOG_TIMEOUT 1.0	/* the log file grows */
#define FS_BLKSIZE 4096
#define FS_ZERO_LEN ((size_t)1 << 20)	/* read-only zeros for ZERO runs */
#define FS_BUFVEC_MAX 256	/* buffers in one reply, else read it all */
#define FS_SPLICE_MIN ((size_t)32 << 10)	/* below: pread + copy is cheaper */
#define FS_MAX_REQ_DEFAULT ((size_t)1 << 20)
#define FS_ALLOC_MAX_RUNS (1u << 20)	/* st_blocks: give up after this */
#define FS_MODE_DIR (S_IFDIR | 0555)
#define FS_MODE_FILE (S_IFREG | 0444)
#define FS_MODE_FILE_RW (S_IFREG | 0644)

/* Per worker thread, allocated on its first read (pthread key fs->tkey). */
struct fs_thread {
	uint8_t *buf;		/* owned: reply assembly, CHAIN_EXT_READ data */
	size_t cap;
	struct fuse_bufvec *bv;	/* owned: room for FS_BUFVEC_MAX buffers */
	struct chain_extent ext[FS_BUFVEC_MAX];
};

/* A snapshot of the log journal, taken when .layerfs.log is opened. */
struct fs_logsnap {
	char *text;		/* owned, from log_journal_copy() */
	size_t len;
};

int fs_errno(int r)
{
	if (r >= 0)
		return EIO;
	switch (-r) {
	case EUCLEAN:		/* corrupt metadata */
	case EBADMSG:		/* checksum mismatch */
	case ESTALE:		/* parent identity mismatch */
		return EIO;
	}
	return -r;
}

/* ---- node table -------------------------------------------------------- */

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static const struct fs_node *node_get(const struct fs *fs, fuse_ino_t ino)
{
	if (ino == 0 || ino > fs->nnodes)
		return NULL;
	return &fs->nodes[ino - 1];
}

static void fs_thread_free(void *p)
{
	struct fs_thread *t = p;

	if (!t)
		return;
	free(t->buf);
	free(t->bv);
	free(t);
}

struct fs *fs_new(void)
{
	struct fs *fs = calloc(1, sizeof(*fs));
	long ps = sysconf(_SC_PAGESIZE);
	void *z;

	if (!fs)
		return NULL;
	fs->uid = getuid();
	fs->gid = getgid();
	fs->pagesize = ps > 0 ? (size_t)ps : 4096;
	fs->max_req = FS_MAX_REQ_DEFAULT;
	/* Anonymous and read-only: every page is the kernel's zero page. */
	z = mmap(NULL, FS_ZERO_LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	if (z == MAP_FAILED) {
		log_err("fuse: cannot map the zero area: %s", strerror(errno));
		goto fail;
	}
	fs->zeros = z;
	if (pthread_key_create(&fs->tkey, fs_thread_free) != 0) {
		log_err("fuse: cannot create a thread key");
		goto fail;
	}
	fs->tkey_ok = true;
	if (fs_node_add(fs, 0, "", FS_NODE_DIR, NULL, 0, 0, NULL) < 0)
		goto fail;
	return fs;
fail:
	fs_free(fs);
	return NULL;
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	for (size_t i = 0; i < fs->nnodes; i++) {
		free(fs->nodes[i].name);
		free(fs->nodes[i].kids);
	}
	free(fs->nodes);
	if (fs->tkey_ok) {
		/* workers are gone; with -s the main thread served requests */
		fs_thread_free(pthread_getspecific(fs->tkey));
		pthread_setspecific(fs->tkey, NULL);
		pthread_key_delete(fs->tkey);
	}
	if (fs->zeros)
		munmap((void *)fs->zeros, FS_ZERO_LEN);
	free(fs);
}

static bool name_ok(const char *name)
{
	return *name && strcmp(name, ".") && strcmp(name, "..") &&
	       !strchr(name, '/') && strlen(name) <= NAME_MAX;
}

static void now(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

/* The top image's mtime: what changed last in the chain. */
static void chain_mtime(const struct chain *c, struct timespec *ts)
{
	struct stat st;

	if (c->depth && fstat(c->layers[0].img->fd, &st) == 0)
		*ts = st.st_mtim;
	else
		now(ts);
}

static int kid_add(struct fs_node *dir, fuse_ino_t ino)
{
	if (dir->nkids == dir->kids_cap) {
		size_t cap = dir->kids_cap ? dir->kids_cap * 2 : 8;
		fuse_ino_t *k = reallocarray(dir->kids, cap, sizeof(*k));

		if (!k)
			return -ENOMEM;
		dir->kids = k;
		dir->kids_cap = cap;
	}
	dir->kids[dir->nkids++] = ino;
	return 0;
}

int fs_node_add(struct fs *fs, fuse_ino_t parent, const char *name,
		enum fs_node_type type, struct chain *c, uint64_t base,
		uint64_t size, fuse_ino_t *ino)
{
	struct fs_node *nd, *dir = NULL;
	uint64_t end;

	if (fs->finished)
		return log_err_ret(-EBUSY, "fuse: %s: tree already frozen",
				   name);
	if (fs->nnodes) {	/* everything but the root has a parent */
		if (parent == 0 || parent > fs->nnodes ||
		    fs->nodes[parent - 1].type != FS_NODE_DIR)
			return log_err_ret(-EINVAL, "fuse: %s: bad parent %lu",
					   name, (unsigned long)parent);
		if (!name_ok(name))
			return log_err_ret(-EINVAL,
					   "fuse: \"%s\": not a usable file name",
					   name);
		dir = &fs->nodes[parent - 1];
		for (size_t i = 0; i < dir->nkids; i++)
			if (!strcmp(fs->nodes[dir->kids[i] - 1].name, name))
				return log_err_ret(-EEXIST,
						   "fuse: %s: name used twice",
						   name);
	}
	if (type == FS_NODE_DISK &&
	    (!c || __builtin_add_overflow(base, size, &end) || end > c->size))
		return log_err_ret(-EINVAL, "fuse: %s: window outside the chain",
				   name);
	if (fs->nnodes == fs->cap) {
		size_t cap = fs->cap ? fs->cap * 2 : 64;
		struct fs_node *v = reallocarray(fs->nodes, cap, sizeof(*v));

		if (!v)
			return -ENOMEM;
		fs->nodes = v;
		fs->cap = cap;
		if (dir)	/* the array moved */
			dir = &fs->nodes[parent - 1];
	}
	nd = &fs->nodes[fs->nnodes];
	memset(nd, 0, sizeof(*nd));
	nd->name = strdup(name);
	if (!nd->name)
		return -ENOMEM;
	nd->ino = fs->nnodes + 1;
	nd->parent = dir ? parent : nd->ino;
	if (dir && kid_add(dir, nd->ino) < 0) {
		free(nd->name);
		return -ENOMEM;
	}
	nd->type = type;
	nd->chain = c;
	nd->base = type == FS_NODE_DISK ? base : 0;
	nd->size = type == FS_NODE_DISK ? size : 0;
	nd->alloc = FS_ALLOC_UNKNOWN;
	if (c)
		chain_mtime(c, &nd->mtime);
	else
		now(&nd->mtime);
	if (dir && type == FS_NODE_DIR)
		dir->nsubdirs++;
	fs->nnodes++;
	if (ino)
		*ino = nd->ino;
	return 0;
}

int fs_add_chainset(struct fs *fs, const struct chainset *cs)
{
	int r;

	r = fs_node_add(fs, FUSE_ROOT_ID, FS_LOG_NAME, FS_NODE_LOG, NULL, 0,
			0, NULL);
	if (r < 0)
		return r;
	for (size_t i = 0; i < cs->nchains; i++) {
		struct chain *c = cs->chains[i];
		fuse_ino_t dir;

		r = fs_node_add(fs, FUSE_ROOT_ID, c->name, FS_NODE_DIR, c, 0, 0,
				&dir);
		if (r == -ENOMEM)
			return r;
		if (r < 0) {	/* logged: a name the tree cannot hold */
			log_warn("%s: left out of the mount", c->top_path);
			continue;
		}
		r = fs_node_add(fs, dir, FS_DISK_NAME, FS_NODE_DISK, c, 0,
				c->size, NULL);
		if (r < 0)
			return r;
		fs->total_size += c->size;
		DBG(FUSE, "%s/%s: %llu bytes, %u layer(s), top %s", c->name,
		    FS_DISK_NAME, (unsigned long long)c->size, c->depth,
		    c->top_path);
	}
	return 0;
}

static int kid_cmp(const void *a, const void *b, void *arg)
{
	const struct fs *fs = arg;

	return strcmp(fs->nodes[*(const fuse_ino_t *)a - 1].name,
		      fs->nodes[*(const fuse_ino_t *)b - 1].name);
}

int fs_tree_finish(struct fs *fs, const char *imagedir)
{
	struct stat st;

	for (size_t i = 0; i < fs->nnodes; i++) {
		struct fs_node *nd = &fs->nodes[i];

		if (nd->type == FS_NODE_DIR && nd->nkids > 1)
			qsort_r(nd->kids, nd->nkids, sizeof(*nd->kids), kid_cmp,
				fs);
	}
	if (imagedir && stat(imagedir, &st) == 0)
		fs->nodes[0].mtime = st.st_mtim;
	fs->finished = true;
	return 0;
}

/* Child of dir by name (binary search: kids are sorted), or NULL. */
static const struct fs_node *node_lookup(const struct fs *fs,
					 const struct fs_node *dir,
					 const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct fs_node *k = &fs->nodes[dir->kids[mid] - 1];
		int c = strcmp(name, k->name);

		if (!c)
			return k;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* ---- attributes --------------------------------------------------------- */

static size_t journal_len(void)
{
	size_t len = 0;
	char *j = log_journal_copy(&len);

	free(j);
	return j ? len : 0;
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
	unsigned runs = 0;

	if (a != FS_ALLOC_UNKNOWN)
		return a;
	a = 0;
	pthread_rwlock_rdlock(&nd->chain->lock);
	while (pos < end) {
		struct chain_extent e;

		if (++runs > FS_ALLOC_MAX_RUNS ||
		    chain_map(nd->chain, pos, end - pos, &e) < 0) {
			a = nd->size;
			break;
		}
		e.len = MIN(e.len, end - pos);
		if (e.type != CHAIN_EXT_ZERO)
			a += e.len;
		pos += e.len;
	}
	pthread_rwlock_unlock(&nd->chain->lock);
	__atomic_store_n(cache, a, __ATOMIC_RELAXED);
	return a;
}

static void fill_attr(const struct fs *fs, const struct fs_node *nd,
		      struct stat *st)
{
	uint64_t size = 0, alloc = 0;

	memset(st, 0, sizeof(*st));
	st->st_ino = nd->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_atim = nd->mtime;
	st->st_mtim = nd->mtime;
	st->st_ctim = nd->mtime;
	st->st_blksize = FS_BLKSIZE;
	switch (nd->type) {
	case FS_NODE_DIR:
		st->st_mode = FS_MODE_DIR;
		st->st_nlink = 2 + nd->nsubdirs;
		st->st_size = FS_BLKSIZE;
		return;
	case FS_NODE_DISK:
		size = nd->size;
		/* a writable chain changes: no cached allocation figure */
		alloc = nd->chain->writable ? size : disk_alloc(nd);
		break;
	case FS_NODE_LOG:
		size = journal_len();
		alloc = size;
		break;
	}
	st->st_mode = nd->type == FS_NODE_DISK && nd->chain->writable
			      ? FS_MODE_FILE_RW
			      : FS_MODE_FILE;
	st->st_nlink = 1;
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((alloc + 511) / 512);
}

static double attr_timeout(const struct fs_node *nd)
{
	return nd->type == FS_NODE_LOG ? FS_LOG_TIMEOUT : FS_TIMEOUT;
}

static void fill_entry(const struct fs *fs, const struct fs_node *nd,
		       struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = nd->ino;
	e->generation = 1;
	fill_attr(fs, nd, &e->attr);
	e->attr_timeout = attr_timeout(nd);
	e->entry_timeout = FS_TIMEOUT;
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
	const struct fs *fs = fs_of(req);
	const struct fs_node *dir = node_get(fs, parent), *nd;
	struct fuse_entry_param e;

	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	if (dir->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	nd = node_lookup(fs, dir, name);
	if (!nd) {
		/* a negative entry: the tree never changes */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = FS_TIMEOUT;
		return (void)fuse_reply_entry(req, &e);
	}
	fill_entry(fs, nd, &e);
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
	const struct fs *fs = fs_of(req);
	const struct fs_node *nd = node_get(fs, ino);
	struct stat st;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	fill_attr(fs, nd, &st);
	fuse_reply_attr(req, &st, attr_timeout(nd));
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi __unused)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = node_get(fs, ino);
	struct stat st;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DISK || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	/* a disk keeps its size; times and modes are not stored */
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != nd->size)
		return (void)fuse_reply_err(req, EPERM);
	fill_attr(fs, nd, &st);
	fuse_reply_attr(req, &st, attr_timeout(nd));
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	const struct fs_node *nd = node_get(fs_of(req), ino);

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	fi->cache_readdir = 1;	/* static tree */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, bool plus)
{
	const struct fs *fs = fs_of(req);
	const struct fs_node *dir = node_get(fs, ino);
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
	/* entry i: 0 ".", 1 "..", then the kids; its next offset is i + 1 */
	for (uint64_t i = (uint64_t)off; i < dir->nkids + 2; i++) {
		const struct fs_node *nd;
		const char *name;
		size_t ent;

		if (i == 0) {
			nd = dir;
			name = ".";
		} else if (i == 1) {
			nd = node_get(fs, dir->parent);
			name = "..";
		} else {
			nd = node_get(fs, dir->kids[i - 2]);
			name = nd->name;
		}
		if (plus) {
			struct fuse_entry_param e;

			fill_entry(fs, nd, &e);
			ent = fuse_add_direntry_plus(req, buf + used,
						     size - used, name, &e,
						     (off_t)(i + 1));
		} else {
			struct stat st = { .st_ino = nd->ino };

			st.st_mode = nd->type == FS_NODE_DIR ? FS_MODE_DIR
							     : FS_MODE_FILE;
			ent = fuse_add_direntry(req, buf + used, size - used,
						name, &st, (off_t)(i + 1));
		}
		if (ent > size - used)
			break;	/* did not fit: the kernel asks again */
		used += ent;
	}
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
	s.f_files = (fsfilcnt_t)fs->nnodes;
	s.f_namemax = NAME_MAX;
	fuse_reply_statfs(req, &s);
}

/* ---- open, read, seek --------------------------------------------------- */

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	const struct fs_node *nd = node_get(fs_of(req), ino);
	struct fs_logsnap *snap;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		if (nd->type != FS_NODE_DISK || !nd->chain->writable)
			return (void)fuse_reply_err(req, EROFS);
		if (fi->flags & O_TRUNC)	/* a disk keeps its size */
			return (void)fuse_reply_err(req, EPERM);
	}
	/* nothing to flush on close, unless the chain takes writes */
	fi->noflush = nd->type != FS_NODE_DISK || !nd->chain->writable;
	if (nd->type == FS_NODE_LOG) {
		snap = calloc(1, sizeof(*snap));
		if (snap)
			snap->text = log_journal_copy(&snap->len);
		if (!snap || !snap->text) {
			free(snap);
			return (void)fuse_reply_err(req, ENOMEM);
		}
		fi->fh = (uintptr_t)snap;
		fi->direct_io = 1;	/* the size changes: no page cache */
		if (fuse_reply_open(req, fi) != 0) {
			free(snap->text);	/* interrupted: no release */
			free(snap);
		}
		return;
	}
	/* A read-only chain never changes under us: keep its page cache. */
	fi->keep_cache = !nd->chain->writable;
	fuse_reply_open(req, fi);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	const struct fs_node *nd = node_get(fs_of(req), ino);

	if (nd && nd->type == FS_NODE_LOG && fi->fh) {
		struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

		free(snap->text);
		free(snap);
	}
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
static int map_range(struct chain *c, uint64_t off, size_t n,
		     struct chain_extent *ext, unsigned max)
{
	unsigned cnt = 0;

	while (n) {
		int r;

		if (cnt == max)
			return 0;
		r = chain_map(c, off, n, &ext[cnt]);
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
static int reply_copy(fuse_req_t req, struct chain *c, struct fs_thread *t,
		      unsigned cnt, uint64_t off, size_t n)
{
	uint8_t *p = t->buf;

	for (unsigned i = 0; i < cnt; i++) {
		size_t len = (size_t)t->ext[i].len;
		int r = chain_read_extent(c, &t->ext[i], p, len, off);

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
static int reply_splice(fuse_req_t req, struct fs *fs, struct chain *c,
			struct fs_thread *t, unsigned cnt, uint64_t off,
			size_t n)
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
			r = chain_read_extent(c, e, t->buf + pos, len,
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

static int read_window(fuse_req_t req, struct fs *fs, struct chain *c,
		       uint64_t off, size_t n)
{
	struct fs_thread *t = thread_get(fs, n);
	bool host = false;
	int cnt, r;

	if (!t)
		return -ENOMEM;
	cnt = map_range(c, off, n, t->ext, FS_BUFVEC_MAX);
	if (cnt < 0)
		return cnt;
	if (cnt == 0) {		/* too fragmented for one vector */
		r = chain_pread(c, t->buf, n, off);
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
		r = reply_splice(req, fs, c, t, (unsigned)cnt, off, n);
		if (r <= 0)
			return r;
	}
	return reply_copy(req, c, t, (unsigned)cnt, off, n);
}

static void read_log(fuse_req_t req, size_t size, off_t off,
		     const struct fuse_file_info *fi)
{
	const struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

	if (!snap || (uint64_t)off >= snap->len)
		return (void)fuse_reply_buf(req, NULL, 0);
	fuse_reply_buf(req, snap->text + off,
		       MIN(size, snap->len - (size_t)off));
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = node_get(fs, ino);
	struct chain *c;
	size_t n;
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (off < 0)
		return (void)fuse_reply_err(req, EINVAL);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (nd->type == FS_NODE_LOG)
		return read_log(req, size, off, fi);
	if ((uint64_t)off >= nd->size || !size)
		return (void)fuse_reply_buf(req, NULL, 0);
	n = (size_t)MIN((uint64_t)size, nd->size - (uint64_t)off);
	DBG(IO, "read %s ino %lu: %zu at %lld", nd->name, (unsigned long)ino,
	    n, (long long)off);
	c = nd->chain;
	pthread_rwlock_rdlock(&c->lock);	/* held until the data is sent */
	r = read_window(req, fs, c, nd->base + (uint64_t)off, n);
	pthread_rwlock_unlock(&c->lock);
	if (r < 0)
		fuse_reply_err(req, fs_errno(r));
}

/*
 * SEEK_DATA/SEEK_HOLE within [base, base + size) of c.  ZERO runs are
 * holes whether a layer allocated them or not; anything else is data.
 */
static int seek_chain(struct chain *c, uint64_t base, uint64_t size,
		      uint64_t off, int whence, uint64_t *out)
{
	uint64_t pos = base + off, end = base + size;

	while (pos < end) {
		struct chain_extent e;
		bool hole;
		int r = chain_map(c, pos, end - pos, &e);

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
	const struct fs_node *nd = node_get(fs_of(req), ino);
	uint64_t size, res = 0;
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (whence != SEEK_DATA && whence != SEEK_HOLE)
		return (void)fuse_reply_err(req, EINVAL);
	if (nd->type == FS_NODE_LOG) {
		const struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

		size = snap ? snap->len : 0;
	} else {
		size = nd->size;
	}
	if (off < 0 || (uint64_t)off >= size)
		return (void)fuse_reply_err(req, ENXIO);
	if (nd->type == FS_NODE_LOG) {	/* all data */
		res = whence == SEEK_DATA ? (uint64_t)off : size;
		return (void)fuse_reply_lseek(req, (off_t)res);
	}
	pthread_rwlock_rdlock(&nd->chain->lock);
	r = seek_chain(nd->chain, nd->base, size, (uint64_t)off, whence, &res);
	pthread_rwlock_unlock(&nd->chain->lock);
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
	const struct fs_node *nd = node_get(fs_of(req), ino);
	int r = 0;

	if (nd && nd->type == FS_NODE_DISK && nd->chain->writable)
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
	fuse_reply_err(req, node_get(fs_of(req), ino) ? ENODATA : ENOENT);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	if (!node_get(fs_of(req), ino))
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
	const struct fs_node *nd = node_get(fs_of(req), ino);
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DISK || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	if (off < 0 || !range_within((uint64_t)off, size, nd->size))
		return (void)fuse_reply_err(req, ENOSPC);
	DBG(IO, "write %s ino %lu: %zu at %lld", nd->name, (unsigned long)ino,
	    size, (long long)off);
	r = chain_pwrite(nd->chain, buf, size, nd->base + (uint64_t)off);
	if (r < 0)
		return (void)fuse_reply_err(req, fs_errno(r));
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
	const struct fs_node *nd = node_get(fs_of(req), ino);
	int r = 0;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DISK || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
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
	}
	fuse_reply_err(req, r < 0 ? fs_errno(r) : 0);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
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
