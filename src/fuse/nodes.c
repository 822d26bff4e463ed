// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * nodes.c: the node table of the layerfs daemon (see fs-priv.h): creating
 * and freeing it, adding nodes, the chain directories, lookups.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compiler.h"
#include "fs-priv.h"
#include "log.h"

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
		struct fs_node *nd = fs_node_at(fs, i);

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

bool fs_name_ok(const char *name)
{
	return *name && strcmp(name, ".") && strcmp(name, "..") &&
	       !strchr(name, '/') && strlen(name) <= NAME_MAX;
}

void fs_now(struct timespec *ts)
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
		fs_now(ts);
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
struct fs_node *fs_node_create(struct fs *fs, fuse_ino_t parent,
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
	nd->base = fs_node_is_window(nd) ? base : 0;
	nd->size = fs_node_is_window(nd) ? size : 0;
	nd->alloc = FS_ALLOC_UNKNOWN;
	if (c)
		chain_mtime(c, &nd->mtime);
	else
		fs_now(&nd->mtime);
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
		    fs_node_at(fs, parent)->type != FS_NODE_DIR)
			return log_err_ret(-EINVAL, "fuse: %s: bad parent %lu",
					   name, (unsigned long)parent);
		if (!fs_name_ok(name))
			return log_err_ret(-EINVAL,
					   "fuse: \"%s\": not a usable file name",
					   name);
		dir = fs_node_at(fs, parent);
		for (size_t i = 0; i < dir->nkids; i++)
			if (!strcmp(fs_node_at(fs, dir->kids[i])->name, name))
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
	nd = fs_node_create(fs, dir ? parent : 0, name, type, c, base, size);
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

	return strcmp(fs_node_at(fs, *(const fuse_ino_t *)a)->name,
		      fs_node_at(fs, *(const fuse_ino_t *)b)->name);
}

void fs_kids_sort(struct fs *fs, struct fs_node *dir)
{
	if (dir->nkids > 1)
		qsort_r(dir->kids, dir->nkids, sizeof(*dir->kids), kid_cmp, fs);
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
		fs_node_at(fs, dir)->cst = cst;
		fs_node_at(fs, cst->disk)->cst = cst;
		fs_node_at(fs, cst->info)->cst = cst;
		fs->total_size += c->size;
		/* an unreadable table leaves the disk shown without parts */
		r = fs_part_refresh(fs, cst);
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
		struct fs_node *nd = fs_node_at(fs, i);

		if (nd->type == FS_NODE_DIR)
			fs_kids_sort(fs, nd);
	}
	if (imagedir && stat(imagedir, &st) == 0)
		fs_node_at(fs, FUSE_ROOT_ID)->mtime = st.st_mtim;
	fs->finished = true;
	return 0;
}

/* Child of dir by name (binary search: kids are sorted), or NULL.  Under
 * tree_lock (read). */
const struct fs_node *fs_node_lookup(const struct fs *fs,
					 const struct fs_node *dir,
					 const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct fs_node *k = fs_node_at(fs, dir->kids[mid]);
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
