// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fs.c: the node table and the FUSE operations of the layerfs daemon.
 *
 * Read-only chains never change, so their entries and attributes are
 * cached by the kernel for a day, their directories are cached too
 * (FOPEN_CACHE_DIR), and their files keep their page cache across opens
 * (FOPEN_KEEP_CACHE).  In a writable chain the partition files follow the
 * partition table: a write that touches a watched range of the table
 * (part_table_touches) marks the chain dirty; the next lookup, readdir or
 * partition I/O in that chain rescans it first, and the rescan thread
 * rescans it anyway and tells the kernel to drop what it cached
 * (fuse_lowlevel_notify_inval_*), always with none of our locks held.
 * Entries of a writable chain's directory are not cached (timeout 0).
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
#include <pthread.h>
#include <stdarg.h>
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
#include "layers.h"
#include "log.h"

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

/* Per worker thread, allocated on its first read (pthread key fs->tkey). */
struct fs_thread {
	uint8_t *buf;		/* owned: reply assembly, CHAIN_EXT_READ data */
	size_t cap;
	struct fuse_bufvec *bv;	/* owned: room for FS_BUFVEC_MAX buffers */
	struct chain_extent ext[FS_BUFVEC_MAX];
};

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

/* A name the kernel may have cached that no longer means the same node */
struct fs_gone {
	fuse_ino_t parent;
	char *name;		/* owned */
};

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

/* ---- node table -------------------------------------------------------- */

static struct fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct fs_node *node_at(const struct fs *fs, fuse_ino_t ino)
{
	size_t i = ino - 1;

	return fs->chunks[i >> FS_CHUNK_BITS][i & FS_CHUNK_MASK];
}

static const struct fs_node *node_get(const struct fs *fs, fuse_ino_t ino)
{
	size_t n = __atomic_load_n(&fs->nnodes, __ATOMIC_ACQUIRE);

	if (ino == 0 || ino > n)
		return NULL;
	return node_at(fs, ino);
}

static bool is_window(const struct fs_node *nd)
{
	return nd->type == FS_NODE_DISK || nd->type == FS_NODE_PART;
}

static bool node_stale(const struct fs_node *nd)
{
	return __atomic_load_n(&nd->stale, __ATOMIC_ACQUIRE);
}

/* Entries that can change: everything in a writable chain but its disk. */
static bool node_volatile(const struct fs_node *nd)
{
	return nd->cst && nd->chain->writable && nd->type != FS_NODE_DISK;
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
	pthread_rwlock_init(&fs->tree_lock, NULL);
	pthread_mutex_init(&fs->rescan_mutex, NULL);
	pthread_cond_init(&fs->rescan_cond, NULL);
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

static void cstate_free(struct fs_cstate *cst)
{
	if (!cst)
		return;
	part_table_free(cst->table);
	for (size_t i = 0; i < cst->ngone; i++)
		free(cst->gone[i].name);
	free(cst->gone);
	pthread_mutex_destroy(&cst->scan_lock);
	free(cst);
}

void fs_free(struct fs *fs)
{
	if (!fs)
		return;
	fs_stop(fs);
	for (size_t i = 1; i <= fs->nnodes; i++) {
		struct fs_node *nd = node_at(fs, i);

		free(nd->name);
		free(nd->kids);
		free(nd->target);
		free(nd);
	}
	for (size_t i = 0; i < FS_MAX_CHUNKS && fs->chunks[i]; i++)
		free(fs->chunks[i]);
	for (size_t i = 0; i < fs->ncst; i++)
		cstate_free(fs->cst[i]);
	free(fs->cst);
	if (fs->tkey_ok) {
		/* workers are gone; with -s the main thread served requests */
		fs_thread_free(pthread_getspecific(fs->tkey));
		pthread_setspecific(fs->tkey, NULL);
		pthread_key_delete(fs->tkey);
	}
	if (fs->zeros)
		munmap((void *)fs->zeros, FS_ZERO_LEN);
	pthread_rwlock_destroy(&fs->tree_lock);
	pthread_mutex_destroy(&fs->rescan_mutex);
	pthread_cond_destroy(&fs->rescan_cond);
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
static void chain_mtime(struct chain *c, struct timespec *ts)
{
	struct chain_view *v = chain_view_get(c);
	struct stat st;

	if (v->depth && fstat(v->layers[0].img->fd, &st) == 0)
		*ts = st.st_mtim;
	else
		now(ts);
	chain_view_put(v);
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

/*
 * A new node, published in the table but in no directory yet.  Before
 * fs_tree_finish single-threaded; after it, under tree_lock (write).
 */
static struct fs_node *node_create(struct fs *fs, fuse_ino_t parent,
				   const char *name, enum fs_node_type type,
				   struct chain *c, uint64_t base,
				   uint64_t size)
{
	size_t i = fs->nnodes, ch = i >> FS_CHUNK_BITS;
	struct fs_node *nd;

	if (ch >= FS_MAX_CHUNKS) {
		log_err("fuse: more than %zu nodes", i);
		return NULL;
	}
	if (!fs->chunks[ch]) {
		fs->chunks[ch] = calloc(FS_CHUNK_MASK + 1, sizeof(*fs->chunks[ch]));
		if (!fs->chunks[ch])
			return NULL;
	}
	nd = calloc(1, sizeof(*nd));
	if (!nd)
		return NULL;
	nd->name = strdup(name);
	if (!nd->name) {
		free(nd);
		return NULL;
	}
	nd->ino = i + 1;
	nd->parent = parent ? parent : nd->ino;
	nd->type = type;
	nd->chain = c;
	nd->base = is_window(nd) ? base : 0;
	nd->size = is_window(nd) ? size : 0;
	nd->alloc = FS_ALLOC_UNKNOWN;
	if (c)
		chain_mtime(c, &nd->mtime);
	else
		now(&nd->mtime);
	fs->chunks[ch][i & FS_CHUNK_MASK] = nd;
	__atomic_store_n(&fs->nnodes, i + 1, __ATOMIC_RELEASE);
	return nd;
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
		    node_at(fs, parent)->type != FS_NODE_DIR)
			return log_err_ret(-EINVAL, "fuse: %s: bad parent %lu",
					   name, (unsigned long)parent);
		if (!name_ok(name))
			return log_err_ret(-EINVAL,
					   "fuse: \"%s\": not a usable file name",
					   name);
		dir = node_at(fs, parent);
		for (size_t i = 0; i < dir->nkids; i++)
			if (!strcmp(node_at(fs, dir->kids[i])->name, name))
				return log_err_ret(-EEXIST,
						   "fuse: %s: name used twice",
						   name);
	}
	if ((type == FS_NODE_DISK || type == FS_NODE_PART) &&
	    (!c || __builtin_add_overflow(base, size, &end) || end > c->size))
		return log_err_ret(-EINVAL, "fuse: %s: window outside the chain",
				   name);
	if (dir && kid_add(dir, fs->nnodes + 1) < 0)
		return -ENOMEM;
	nd = node_create(fs, dir ? parent : 0, name, type, c, base, size);
	if (!nd) {
		if (dir)
			dir->nkids--;
		return -ENOMEM;
	}
	if (dir && type == FS_NODE_DIR)
		dir->nsubdirs++;
	if (ino)
		*ino = nd->ino;
	return 0;
}

static int kid_cmp(const void *a, const void *b, void *arg)
{
	const struct fs *fs = arg;

	return strcmp(node_at(fs, *(const fuse_ino_t *)a)->name,
		      node_at(fs, *(const fuse_ino_t *)b)->name);
}

static void kids_sort(struct fs *fs, struct fs_node *dir)
{
	if (dir->nkids > 1)
		qsort_r(dir->kids, dir->nkids, sizeof(*dir->kids), kid_cmp, fs);
}

/* ---- partitions ---------------------------------------------------------- */

/*
 * A partition name or label as a file name: '/' and control characters
 * become '_'; "", "." and ".." are not usable.  buf holds NAME_MAX + 1.
 */
static bool link_name(const char *in, char *buf)
{
	size_t n = 0;

	for (; *in && n < NAME_MAX; in++) {
		unsigned char ch = (unsigned char)*in;

		buf[n++] = ch < 0x20 || ch == 0x7f || ch == '/' ? '_' : (char)ch;
	}
	buf[n] = '\0';
	return name_ok(buf);
}

/* The kids a chain directory (or its by-name, by-label) is being given */
struct kidlist {
	fuse_ino_t *v;		/* owned */
	size_t n, cap;
};

static int kidlist_add(struct kidlist *l, fuse_ino_t ino)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		fuse_ino_t *v = reallocarray(l->v, cap, sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = ino;
	return 0;
}

static bool kidlist_has_name(const struct fs *fs, const struct kidlist *l,
			     const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(node_at(fs, l->v[i])->name, name))
			return true;
	return false;
}

/* A live kid of dir named name (of that type), or NULL. */
static struct fs_node *kid_named(const struct fs *fs,
				 const struct fs_node *dir, const char *name,
				 enum fs_node_type type)
{
	for (size_t i = 0; dir && i < dir->nkids; i++) {
		struct fs_node *k = node_at(fs, dir->kids[i]);

		if (k->type == type && !strcmp(k->name, name))
			return k;
	}
	return NULL;
}

static int gone_add(struct fs_cstate *cst, fuse_ino_t parent,
		    const char *name)
{
	struct fs_gone *g = reallocarray(cst->gone, cst->ngone + 1, sizeof(*g));

	if (!g)
		return -ENOMEM;
	cst->gone = g;
	g[cst->ngone].parent = parent;
	g[cst->ngone].name = strdup(name);
	if (!g[cst->ngone].name)
		return -ENOMEM;
	cst->ngone++;
	return 0;
}

/*
 * Old kids of dir that are not in new: marked stale (partitions, links)
 * and remembered for the kernel.  Then dir gets the new list.
 */
static void kids_replace(struct fs *fs, struct fs_cstate *cst,
			 struct fs_node *dir, struct kidlist *l)
{
	unsigned nsub = 0;

	for (size_t i = 0; i < dir->nkids; i++) {
		struct fs_node *k = node_at(fs, dir->kids[i]);
		bool kept = false;

		for (size_t j = 0; j < l->n && !kept; j++)
			kept = l->v[j] == k->ino;
		if (kept)
			continue;
		if (k->type == FS_NODE_PART || k->type == FS_NODE_LINK)
			__atomic_store_n(&k->stale, true, __ATOMIC_RELEASE);
		if (gone_add(cst, dir->ino, k->name) < 0)
			log_warn("fuse: %s: out of memory", cst->chain->name);
	}
	free(dir->kids);
	dir->kids = l->v;
	dir->nkids = l->n;
	dir->kids_cap = l->cap;
	*l = (struct kidlist){ 0 };
	kids_sort(fs, dir);
	for (size_t i = 0; i < dir->nkids; i++)
		nsub += node_at(fs, dir->kids[i])->type == FS_NODE_DIR;
	dir->nsubdirs = nsub;
}

/*
 * The symlinks of one by-name or by-label directory: for each partition with a usable
 * name (field), "NAME" -> "../pN"; the first partition (by number) wins
 * a name used twice.  *dirino is created on first use.
 */
static int links_build(struct fs *fs, struct fs_cstate *cst,
		       const struct part_table *t, size_t field,
		       const char *dirname, fuse_ino_t *dirino,
		       struct kidlist *chainkids)
{
	struct kidlist l = { 0 };
	struct fs_node *dir = *dirino ? node_at(fs, *dirino) : NULL;
	char name[NAME_MAX + 1], target[32];
	int r = 0;

	for (size_t i = 0; t && i < t->nparts; i++) {
		const struct part *p = &t->parts[i];
		struct fs_node *k;

		if (p->container || !link_name((const char *)p + field, name))
			continue;
		if (kidlist_has_name(fs, &l, name)) {
			DBG(FUSE, "%s/%s/%s: name used twice, p%u left out",
			    cst->chain->name, dirname, name, p->number);
			continue;
		}
		snprintf(target, sizeof(target), "../p%u", p->number);
		if (!dir) {
			dir = node_create(fs, cst->dir, dirname, FS_NODE_DIR,
					  cst->chain, 0, 0);
			if (!dir) {
				r = -ENOMEM;
				goto out;
			}
			dir->cst = cst;
			*dirino = dir->ino;
		}
		k = kid_named(fs, dir, name, FS_NODE_LINK);
		if (!k || strcmp(k->target, target) != 0) {
			k = node_create(fs, dir->ino, name, FS_NODE_LINK,
					cst->chain, 0, 0);
			if (!k || !(k->target = strdup(target))) {
				r = -ENOMEM;
				goto out;
			}
			k->cst = cst;
		}
		r = kidlist_add(&l, k->ino);
		if (r < 0)
			goto out;
	}
	if (l.n)
		r = kidlist_add(chainkids, dir->ino);
	if (r == 0 && dir)
		kids_replace(fs, cst, dir, &l);
out:
	free(l.v);
	return r;
}

/*
 * Scan cst's chain and make its directory show what was found: disk,
 * info, pN (a node kept where its window is unchanged), by-name/, by-label/.
 */
static int chain_refresh(struct fs *fs, struct fs_cstate *cst)
{
	struct part_table *t = NULL;
	struct kidlist l = { 0 };
	struct fs_node *dir;
	int r;

	pthread_mutex_lock(&cst->scan_lock);
	/* cleared first: a write during the scan asks for another one */
	__atomic_store_n(&cst->dirty, false, __ATOMIC_SEQ_CST);
	__atomic_store_n(&cst->fsdirty, false, __ATOMIC_SEQ_CST);
	r = part_scan(cst->chain, &t);
	if (r < 0) {
		log_warn("%s: partitions not scanned: %s", cst->chain->name,
			 strerror(-r));
		pthread_mutex_unlock(&cst->scan_lock);
		return r;
	}
	if (fs->finished)
		pthread_rwlock_wrlock(&fs->tree_lock);
	dir = node_at(fs, cst->dir);
	r = kidlist_add(&l, cst->disk);
	if (r == 0)
		r = kidlist_add(&l, cst->info);
	for (size_t i = 0; r == 0 && i < t->nparts; i++) {
		const struct part *p = &t->parts[i];
		char name[32];
		struct fs_node *k;

		snprintf(name, sizeof(name), "p%u", p->number);
		k = kid_named(fs, dir, name, FS_NODE_PART);
		if (!k || k->base != p->start || k->size != p->size) {
			k = node_create(fs, cst->dir, name, FS_NODE_PART,
					cst->chain, p->start, p->size);
			if (!k) {
				r = -ENOMEM;
				break;
			}
			k->cst = cst;
			k->partno = p->number;
		}
		r = kidlist_add(&l, k->ino);
	}
	if (r == 0)
		r = links_build(fs, cst, t, offsetof(struct part, name),
				FS_BYNAME_NAME, &cst->byname, &l);
	if (r == 0)
		r = links_build(fs, cst, t, offsetof(struct part, label),
				FS_BYLABEL_NAME, &cst->bylabel, &l);
	if (r == 0) {
		kids_replace(fs, cst, dir, &l);
		part_table_free(cst->table);
		cst->table = t;
		t = NULL;
		cst->gen++;
		now(&dir->mtime);
	}
	if (fs->finished)
		pthread_rwlock_unlock(&fs->tree_lock);
	if (r == 0 && fs->finished)
		__atomic_store_n(&cst->notify, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&cst->scan_lock);
	free(l.v);
	part_table_free(t);
	if (r < 0)
		log_err("%s: cannot show the partitions: %s", cst->chain->name,
			strerror(-r));
	else
		DBG(FUSE, "%s: %zu partition(s) shown (scan %u)",
		    cst->chain->name, cst->table->nparts, cst->gen);
	return r;
}

static void rescan_kick(struct fs *fs)
{
	pthread_mutex_lock(&fs->rescan_mutex);
	fs->rescan_kick = true;
	pthread_cond_signal(&fs->rescan_cond);
	pthread_mutex_unlock(&fs->rescan_mutex);
}

/*
 * Called in a handler before it looks at a chain's partitions: a table
 * written to is rescanned first (labels too, when a listing or the info
 * file is asked for: labels).  Takes no lock the caller holds.
 */
static void chain_settle(struct fs *fs, struct fs_cstate *cst, bool labels)
{
	if (!cst)
		return;
	if (!__atomic_load_n(&cst->dirty, __ATOMIC_SEQ_CST) &&
	    !(labels && __atomic_load_n(&cst->fsdirty, __ATOMIC_SEQ_CST)))
		return;
	if (chain_refresh(fs, cst) == 0)
		rescan_kick(fs);	/* the kernel's caches */
}

/* After a write of [off, off + len) of cst's disk completed. */
static void chain_written(struct fs *fs, struct fs_cstate *cst, uint64_t off,
			  uint64_t len)
{
	bool touch, fstouch = false;

	if (!cst)
		return;
	pthread_rwlock_rdlock(&fs->tree_lock);
	touch = part_table_touches(cst->table, off, len);
	if (!touch)
		fstouch = part_table_touches_fs(cst->table, off, len);
	pthread_rwlock_unlock(&fs->tree_lock);
	if (fstouch && !__atomic_load_n(&cst->fsdirty, __ATOMIC_RELAXED))
		__atomic_store_n(&cst->fsdirty, true, __ATOMIC_SEQ_CST);
	if (!touch)
		return;
	DBG(FUSE, "%s: write at %llu touches the partition table",
	    cst->chain->name, (unsigned long long)off);
	__atomic_store_n(&cst->dirty, true, __ATOMIC_SEQ_CST);
	rescan_kick(fs);
}

/* Drop the kernel's cached names and directory pages; no lock held. */
static void chain_notify(struct fs *fs, struct fs_cstate *cst)
{
	fuse_ino_t byname, bylabel;
	struct fs_gone *g;
	size_t n;

	if (!__atomic_exchange_n(&cst->notify, false, __ATOMIC_ACQ_REL))
		return;
	pthread_mutex_lock(&cst->scan_lock);
	g = cst->gone;
	n = cst->ngone;
	cst->gone = NULL;
	cst->ngone = 0;
	byname = cst->byname;
	bylabel = cst->bylabel;
	pthread_mutex_unlock(&cst->scan_lock);
	for (size_t i = 0; i < n; i++) {
		int r = fuse_lowlevel_notify_inval_entry(fs->se, g[i].parent,
							 g[i].name,
							 strlen(g[i].name));

		/* -ENOENT: the kernel had not cached it */
		if (r < 0 && r != -ENOENT)
			DBG(FUSE, "%s: dropping %s from the kernel's cache: %s",
			    cst->chain->name, g[i].name, strerror(-r));
		free(g[i].name);
	}
	free(g);
	fuse_lowlevel_notify_inval_inode(fs->se, cst->dir, 0, 0);
	if (byname)
		fuse_lowlevel_notify_inval_inode(fs->se, byname, 0, 0);
	if (bylabel)
		fuse_lowlevel_notify_inval_inode(fs->se, bylabel, 0, 0);
	fuse_lowlevel_notify_inval_inode(fs->se, cst->info, 0, 0);
}

static void *rescan_main(void *arg)
{
	struct fs *fs = arg;

	pthread_mutex_lock(&fs->rescan_mutex);
	for (;;) {
		while (!fs->rescan_kick && !fs->rescan_stop)
			pthread_cond_wait(&fs->rescan_cond, &fs->rescan_mutex);
		if (fs->rescan_stop)
			break;
		fs->rescan_kick = false;
		pthread_mutex_unlock(&fs->rescan_mutex);
		usleep(FS_RESCAN_DELAY_US);
		for (size_t i = 0; i < fs->ncst; i++) {
			struct fs_cstate *cst = fs->cst[i];

			if (__atomic_load_n(&cst->dirty, __ATOMIC_SEQ_CST))
				chain_refresh(fs, cst);
			chain_notify(fs, cst);
		}
		pthread_mutex_lock(&fs->rescan_mutex);
	}
	pthread_mutex_unlock(&fs->rescan_mutex);
	return NULL;
}

int fs_start(struct fs *fs, struct fuse_session *se)
{
	bool any = false;
	int r;

	fs->se = se;
	for (size_t i = 0; i < fs->ncst; i++)
		any |= fs->cst[i]->chain->writable;
	if (!any)		/* nothing will ever be rescanned */
		return 0;
	r = pthread_create(&fs->rescan_thread, NULL, rescan_main, fs);
	if (r != 0)
		return log_err_ret(-r, "fuse: cannot start the rescan thread: %s",
				   strerror(r));
	fs->rescan_running = true;
	return 0;
}

void fs_stop(struct fs *fs)
{
	if (!fs || !fs->rescan_running)
		return;
	pthread_mutex_lock(&fs->rescan_mutex);
	fs->rescan_stop = true;
	pthread_cond_signal(&fs->rescan_cond);
	pthread_mutex_unlock(&fs->rescan_mutex);
	pthread_join(fs->rescan_thread, NULL);
	fs->rescan_running = false;
}

int fs_add_chainset(struct fs *fs, const struct chainset *cs)
{
	int r;

	r = fs_node_add(fs, FUSE_ROOT_ID, FS_LOG_NAME, FS_NODE_LOG, NULL, 0,
			0, NULL);
	if (r < 0)
		return r;
	fs->cst = calloc(cs->nchains ? cs->nchains : 1, sizeof(*fs->cst));
	if (!fs->cst)
		return -ENOMEM;
	for (size_t i = 0; i < cs->nchains; i++) {
		struct chain *c = cs->chains[i];
		struct fs_cstate *cst;
		fuse_ino_t dir;

		r = fs_node_add(fs, FUSE_ROOT_ID, c->name, FS_NODE_DIR, c, 0, 0,
				&dir);
		if (r == -ENOMEM)
			return r;
		if (r < 0) {	/* logged: a name the tree cannot hold */
			log_warn("%s: left out of the mount", c->top_path);
			continue;
		}
		cst = calloc(1, sizeof(*cst));
		if (!cst)
			return -ENOMEM;
		pthread_mutex_init(&cst->scan_lock, NULL);
		fs->cst[fs->ncst++] = cst;
		cst->chain = c;
		cst->dir = dir;
		r = fs_node_add(fs, dir, FS_DISK_NAME, FS_NODE_DISK, c, 0,
				c->size, &cst->disk);
		if (r == 0)
			r = fs_node_add(fs, dir, FS_INFO_NAME, FS_NODE_INFO, c,
					0, 0, &cst->info);
		if (r < 0)
			return r;
		node_at(fs, dir)->cst = cst;
		node_at(fs, cst->disk)->cst = cst;
		node_at(fs, cst->info)->cst = cst;
		fs->total_size += c->size;
		/* an unreadable table leaves the disk shown without parts */
		r = chain_refresh(fs, cst);
		if (r == -ENOMEM)
			return r;
		DBG(FUSE, "%s/%s: %llu bytes, %u layer(s), top %s", c->name,
		    FS_DISK_NAME, (unsigned long long)c->size, c->depth,
		    c->top_path);
	}
	return 0;
}

int fs_tree_finish(struct fs *fs, const char *imagedir)
{
	struct stat st;

	for (size_t i = 1; i <= fs->nnodes; i++) {
		struct fs_node *nd = node_at(fs, i);

		if (nd->type == FS_NODE_DIR)
			kids_sort(fs, nd);
	}
	if (imagedir && stat(imagedir, &st) == 0)
		node_at(fs, FUSE_ROOT_ID)->mtime = st.st_mtim;
	fs->finished = true;
	return 0;
}

/* Child of dir by name (binary search: kids are sorted), or NULL.  Under
 * tree_lock (read). */
static const struct fs_node *node_lookup(const struct fs *fs,
					 const struct fs_node *dir,
					 const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct fs_node *k = node_at(fs, dir->kids[mid]);
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
	return node_volatile(nd) ? 0.0 : FS_TIMEOUT;
}

static void fill_entry(struct fs *fs, const struct fs_node *nd,
		       struct fuse_entry_param *e, bool locked)
{
	memset(e, 0, sizeof(*e));
	e->ino = nd->ino;
	e->generation = 1;
	fill_attr(fs, nd, &e->attr, locked);
	e->attr_timeout = attr_timeout(nd);
	e->entry_timeout = node_volatile(nd) ? 0.0 : FS_TIMEOUT;
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
	const struct fs_node *dir = node_get(fs, parent), *nd;
	struct fuse_entry_param e;

	if (!dir)
		return (void)fuse_reply_err(req, ENOENT);
	if (dir->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	chain_settle(fs, dir->cst, true);
	pthread_rwlock_rdlock(&fs->tree_lock);
	nd = node_lookup(fs, dir, name);
	if (!nd) {
		/* a negative entry, cached unless the directory can change */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = node_volatile(dir) ? 0.0 : FS_TIMEOUT;
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
	const struct fs_node *nd = node_get(fs, ino);
	struct stat st;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR || nd->type == FS_NODE_INFO)
		chain_settle(fs, nd->cst, true);
	fill_attr(fs, nd, &st, false);
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
	if (!is_window(nd) || !nd->chain->writable)
		return (void)fuse_reply_err(req, EROFS);
	/* a disk keeps its size; times and modes are not stored */
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != nd->size)
		return (void)fuse_reply_err(req, EPERM);
	fill_attr(fs, nd, &st, false);
	fuse_reply_attr(req, &st, attr_timeout(nd));
}

static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	const struct fs_node *nd = node_get(fs_of(req), ino);

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
	const struct fs_node *nd = node_get(fs, ino);

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type != FS_NODE_DIR)
		return (void)fuse_reply_err(req, ENOTDIR);
	chain_settle(fs, nd->cst, true);
	/* a writable chain's directory changes with its partition table */
	fi->cache_readdir = !node_volatile(nd);
	fi->keep_cache = !node_volatile(nd);
	fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, bool plus)
{
	struct fs *fs = fs_of(req);
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
	chain_settle(fs, dir->cst, true);
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
			nd = node_get(fs, dir->parent);
			name = "..";
		} else {
			nd = node_get(fs, dir->kids[i - 2]);
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
	chain_settle(fs, nd->cst, false);
	return !node_stale(nd);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = node_get(fs, ino);
	struct fs_logsnap *snap;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (nd->type == FS_NODE_DIR)
		return (void)fuse_reply_err(req, EISDIR);
	if (nd->type == FS_NODE_LINK)	/* the kernel follows links itself */
		return (void)fuse_reply_err(req, ELOOP);
	if (!part_live(fs, nd))
		return (void)fuse_reply_err(req, ESTALE);
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		if (!is_window(nd) || !nd->chain->writable)
			return (void)fuse_reply_err(req, EROFS);
		if (fi->flags & O_TRUNC)	/* a disk keeps its size */
			return (void)fuse_reply_err(req, EPERM);
	}
	/* nothing to flush on close, unless the chain takes writes */
	fi->noflush = !is_window(nd) || !nd->chain->writable;
	if (nd->type == FS_NODE_LOG || nd->type == FS_NODE_INFO) {
		snap = calloc(1, sizeof(*snap));
		if (snap && nd->type == FS_NODE_LOG) {
			snap->text = log_journal_copy(&snap->len);
		} else if (snap) {
			chain_settle(fs, nd->cst, true);
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
	const struct fs_node *nd = node_get(fs_of(req), ino);

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
	const struct fs_node *nd = node_get(fs, ino);
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
	v = chain_view_get(nd->chain);	/* its files open until the reply is sent */
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
	const struct fs_node *nd = node_get(fs, ino);
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
	if (!is_window(nd)) {
		const struct fs_logsnap *snap = (void *)(uintptr_t)fi->fh;

		size = snap ? snap->len : 0;
	} else {
		size = nd->size;
	}
	if (off < 0 || (uint64_t)off >= size)
		return (void)fuse_reply_err(req, ENXIO);
	if (!is_window(nd)) {	/* all data */
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
	const struct fs_node *nd = node_get(fs_of(req), ino);
	int r = 0;

	if (nd && is_window(nd) && nd->chain->writable)
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
	struct fs *fs = fs_of(req);
	const struct fs_node *nd = node_get(fs, ino);
	int r;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (!is_window(nd) || !nd->chain->writable)
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
	chain_written(fs, nd->cst, nd->base + (uint64_t)off, size);
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
	const struct fs_node *nd = node_get(fs, ino);
	int r = 0;

	if (!nd)
		return (void)fuse_reply_err(req, ENOENT);
	if (!is_window(nd) || !nd->chain->writable)
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
		chain_written(fs, nd->cst, nd->base + (uint64_t)offset,
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
