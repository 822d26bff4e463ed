// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * qcow2/cluster.c: what the qcow2 and qcow drivers share on the read path:
 * the bounded L2 table cache and the inflation of compressed clusters.
 *
 * L2 cache: one cache for the whole process, bounded in bytes, split into
 * QCOW2_SHARDS shards by a hash of (owner, L1 index).  Each shard has its
 * own mutex, hash buckets and LRU list.  A lookup holds the shard lock only
 * to find the table and pin it (a reference count); the caller scans the
 * entries unlocked and unpins with one atomic decrement.  Eviction runs
 * after an insert, one shard lock at a time, and skips pinned tables.
 *
 * Compressed clusters: each thread keeps its last inflated cluster (tag:
 * image owner id + L2 entry), so a sequence of small reads inside one
 * compressed cluster inflates it once.  The zlib and zstd contexts are
 * per thread too and reused.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "checked.h"
#include "compiler.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"

uint64_t qcow2_owner_new(void)
{
	static uint64_t next;

	return __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* L2 table cache                                                      */

#define QCOW2_SHARDS 64u
#define QCOW2_BUCKETS 128u	/* per shard */

struct l2_slot {
	struct l2_slot *hnext;		/* bucket chain */
	struct l2_slot *prev, *next;	/* shard LRU: head is most recent */
	uint64_t owner, index;
	unsigned bucket;		/* index in the shard's buckets */
	size_t bytes;			/* accounted size */
	unsigned pins;			/* atomic; changed to >0 only locked */
	uint64_t table[];		/* native byte order */
};

struct l2_shard {
	pthread_mutex_t lock;
	struct l2_slot *buckets[QCOW2_BUCKETS];
	struct l2_slot *head, *tail;	/* LRU list */
} __attribute__((aligned(64)));		/* one cache line per lock */

static struct l2_shard shards[QCOW2_SHARDS];
static size_t cache_used;		/* atomic, bytes */
static size_t cache_budget;		/* atomic, bytes */
static unsigned trim_cursor;		/* atomic, next shard to trim */
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void cache_init(void)
{
	const char *env = getenv("LAYERFS_QCOW2_L2_CACHE");
	size_t budget = QCOW2_L2_CACHE_DEFAULT;

	for (unsigned i = 0; i < QCOW2_SHARDS; i++)
		pthread_mutex_init(&shards[i].lock, NULL);
	if (env && *env) {
		char *end;
		unsigned long long v = strtoull(env, &end, 0);

		if (!*end && v)
			budget = (size_t)v;
		else
			log_warn("qcow2: LAYERFS_QCOW2_L2_CACHE=%s is not a byte count; using %zu",
				 env, budget);
	}
	__atomic_store_n(&cache_budget, budget, __ATOMIC_RELAXED);
}

static uint64_t key_hash(uint64_t owner, uint64_t index)
{
	uint64_t h = owner * 0x9e3779b97f4a7c15ull ^ index;

	h ^= h >> 33;		/* murmur3 finaliser */
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

static void lru_unlink(struct l2_shard *sh, struct l2_slot *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		sh->head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		sh->tail = s->prev;
	s->prev = s->next = NULL;
}

static void lru_push_head(struct l2_shard *sh, struct l2_slot *s)
{
	s->prev = NULL;
	s->next = sh->head;
	if (sh->head)
		sh->head->prev = s;
	sh->head = s;
	if (!sh->tail)
		sh->tail = s;
}

/* Remove s from its bucket and the LRU list; caller holds sh->lock. */
static void slot_remove(struct l2_shard *sh, struct l2_slot *s)
{
	struct l2_slot **pp = &sh->buckets[s->bucket];

	while (*pp != s)
		pp = &(*pp)->hnext;
	*pp = s->hnext;
	lru_unlink(sh, s);
	__atomic_sub_fetch(&cache_used, s->bytes, __ATOMIC_RELAXED);
}

static struct l2_slot *bucket_find(struct l2_shard *sh, unsigned b,
				   uint64_t owner, uint64_t index)
{
	for (struct l2_slot *s = sh->buckets[b]; s; s = s->hnext)
		if (s->owner == owner && s->index == index)
			return s;
	return NULL;
}

/* Evict unpinned tables, least recent first, until under the budget. */
static void cache_trim(void)
{
	size_t budget = __atomic_load_n(&cache_budget, __ATOMIC_RELAXED);

	for (unsigned n = 0; n < QCOW2_SHARDS; n++) {
		unsigned i = __atomic_fetch_add(&trim_cursor, 1,
						__ATOMIC_RELAXED) % QCOW2_SHARDS;
		struct l2_shard *sh = &shards[i];
		struct l2_slot *s, *prev;

		if (__atomic_load_n(&cache_used, __ATOMIC_RELAXED) <= budget)
			return;
		pthread_mutex_lock(&sh->lock);
		for (s = sh->tail; s; s = prev) {
			prev = s->prev;
			if (__atomic_load_n(&cache_used, __ATOMIC_RELAXED) <=
			    budget)
				break;
			if (__atomic_load_n(&s->pins, __ATOMIC_ACQUIRE))
				continue;
			slot_remove(sh, s);
			free(s);
		}
		pthread_mutex_unlock(&sh->lock);
	}
}

static int l2_load(struct l2_slot *s, size_t nwords, int fd,
		   uint64_t host_off, const char *drv, const char *path)
{
	int r = pread_full(fd, s->table, nwords * 8, host_off);

	if (r == -ENODATA) {
		log_err("%s: %s: L2 table lies past the end of the file (%llu)",
			drv, path, (unsigned long long)host_off);
		return -EUCLEAN;
	}
	if (r < 0) {
		log_err("%s: %s: cannot read L2 table at %llu (%s)", drv, path,
			(unsigned long long)host_off, strerror(-r));
		return r;
	}
	for (size_t i = 0; i < nwords; i++)
		s->table[i] = be64toh(s->table[i]);
	return 0;
}

/* Put a new slot into bucket b of sh (locked), unlock, trim if over budget. */
static void slot_insert_unlock(struct l2_shard *sh, unsigned b,
			       struct l2_slot *s)
{
	s->hnext = sh->buckets[b];
	sh->buckets[b] = s;
	lru_push_head(sh, s);
	__atomic_add_fetch(&cache_used, s->bytes, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&sh->lock);
	if (__atomic_load_n(&cache_used, __ATOMIC_RELAXED) >
	    __atomic_load_n(&cache_budget, __ATOMIC_RELAXED))
		cache_trim();
}

int qcow2_l2_get(uint64_t owner, uint64_t index, size_t nwords, int fd,
		 uint64_t host_off, const char *drv, const char *path,
		 struct qcow2_l2_ref *ref)
{
	return qcow2_l2_get_gen(owner, index, nwords, fd, host_off, drv, path,
				NULL, ref);
}

/*
 * Why gen makes a miss safe against a writer: the writer pins the table
 * (which inserts it) before it changes an entry, bumps gen after, and
 * unpins only once the file holds the table as the cache does (the flush
 * writes a dirty table, then unpins it).  A loader that finds the key
 * cached uses that copy, which the writer keeps current.  A loader that
 * does not find it knows no writer holds a pin now; if gen is what it was
 * before the pread, no update finished since, so what it read is current.
 * Otherwise it reads again.
 */
int qcow2_l2_get_gen(uint64_t owner, uint64_t index, size_t nwords, int fd,
		     uint64_t host_off, const char *drv, const char *path,
		     const unsigned *gen, struct qcow2_l2_ref *ref)
{
	uint64_t h = key_hash(owner, index);
	struct l2_shard *sh = &shards[h % QCOW2_SHARDS];
	unsigned b = (unsigned)(h / QCOW2_SHARDS) % QCOW2_BUCKETS;
	struct l2_slot *s, *fresh;
	unsigned g0 = 0;
	int r;

	pthread_once(&cache_once, cache_init);
again:
	if (gen)
		g0 = __atomic_load_n(gen, __ATOMIC_ACQUIRE);
	pthread_mutex_lock(&sh->lock);
	s = bucket_find(sh, b, owner, index);
	if (s) {
		__atomic_add_fetch(&s->pins, 1, __ATOMIC_ACQUIRE);
		if (sh->head != s) {
			lru_unlink(sh, s);
			lru_push_head(sh, s);
		}
		pthread_mutex_unlock(&sh->lock);
		goto done;
	}
	pthread_mutex_unlock(&sh->lock);

	/* Miss: load outside the lock; a racing loader may win. */
	fresh = malloc(sizeof(*fresh) + nwords * 8);
	if (!fresh)
		return -ENOMEM;
	r = l2_load(fresh, nwords, fd, host_off, drv, path);
	if (r < 0) {
		free(fresh);
		return r;
	}
	fresh->owner = owner;
	fresh->index = index;
	fresh->bucket = b;
	fresh->bytes = sizeof(*fresh) + nwords * 8;
	fresh->pins = 1;
	pthread_mutex_lock(&sh->lock);
	s = bucket_find(sh, b, owner, index);
	if (s) {
		__atomic_add_fetch(&s->pins, 1, __ATOMIC_ACQUIRE);
		pthread_mutex_unlock(&sh->lock);
		free(fresh);
		goto done;
	}
	if (gen && __atomic_load_n(gen, __ATOMIC_ACQUIRE) != g0) {
		pthread_mutex_unlock(&sh->lock);
		free(fresh);		/* may predate an update: read again */
		goto again;
	}
	s = fresh;
	slot_insert_unlock(sh, b, s);
done:
	ref->table = s->table;
	ref->slot = s;
	return 0;
}

void qcow2_l2_put(struct qcow2_l2_ref *ref)
{
	struct l2_slot *s = ref->slot;

	if (!s)
		return;
	__atomic_sub_fetch(&s->pins, 1, __ATOMIC_RELEASE);
	ref->slot = NULL;
	ref->table = NULL;
}

void qcow2_l2_store(struct qcow2_l2_ref *ref, size_t i, uint64_t v)
{
	struct l2_slot *s = ref->slot;

	__atomic_store_n(&s->table[i], v, __ATOMIC_RELEASE);
}

int qcow2_l2_new(uint64_t owner, uint64_t index, size_t nwords,
		 struct qcow2_l2_ref *ref)
{
	uint64_t h = key_hash(owner, index);
	struct l2_shard *sh = &shards[h % QCOW2_SHARDS];
	unsigned b = (unsigned)(h / QCOW2_SHARDS) % QCOW2_BUCKETS;
	struct l2_slot *s, *fresh;

	pthread_once(&cache_once, cache_init);
	fresh = calloc(1, sizeof(*fresh) + nwords * 8);
	if (!fresh)
		return -ENOMEM;
	pthread_mutex_lock(&sh->lock);
	s = bucket_find(sh, b, owner, index);
	if (s) {
		/* not reachable through L1 yet, so nobody reads it */
		__atomic_add_fetch(&s->pins, 1, __ATOMIC_ACQUIRE);
		for (size_t i = 0; i < nwords; i++)
			__atomic_store_n(&s->table[i], 0, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&sh->lock);
		free(fresh);
		goto done;
	}
	s = fresh;
	s->owner = owner;
	s->index = index;
	s->bucket = b;
	s->bytes = sizeof(*s) + nwords * 8;
	s->pins = 1;
	slot_insert_unlock(sh, b, s);
done:
	ref->table = s->table;
	ref->slot = s;
	return 0;
}

void qcow2_l2_cache_drop(uint64_t owner)
{
	pthread_once(&cache_once, cache_init);
	for (unsigned i = 0; i < QCOW2_SHARDS; i++) {
		struct l2_shard *sh = &shards[i];

		pthread_mutex_lock(&sh->lock);
		for (unsigned b = 0; b < QCOW2_BUCKETS; b++) {
			struct l2_slot **pp = &sh->buckets[b];

			while (*pp) {
				struct l2_slot *s = *pp;

				if (s->owner != owner) {
					pp = &s->hnext;
					continue;
				}
				*pp = s->hnext;
				lru_unlink(sh, s);
				__atomic_sub_fetch(&cache_used, s->bytes,
						   __ATOMIC_RELAXED);
				free(s);
			}
		}
		pthread_mutex_unlock(&sh->lock);
	}
}

void qcow2_l2_cache_set_budget(size_t bytes)
{
	pthread_once(&cache_once, cache_init);
	__atomic_store_n(&cache_budget, bytes, __ATOMIC_RELAXED);
	cache_trim();
}

size_t qcow2_l2_cache_used(void)
{
	return __atomic_load_n(&cache_used, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* Compressed clusters                                                 */

struct zcache {
	uint64_t owner, key;		/* tag of out; owner 0: empty */
	uint8_t *out;			/* one cluster */
	size_t out_cap;
	uint8_t *in;			/* compressed bytes */
	size_t in_cap;
	z_stream zs;
	bool zs_ready;
	ZSTD_DCtx *zd;
};

static pthread_key_t zcache_key;
static pthread_once_t zcache_once = PTHREAD_ONCE_INIT;

static void zcache_free(void *p)
{
	struct zcache *zc = p;

	if (!zc)
		return;
	if (zc->zs_ready)
		inflateEnd(&zc->zs);
	ZSTD_freeDCtx(zc->zd);
	free(zc->out);
	free(zc->in);
	free(zc);
}

static void zcache_init(void)
{
	if (pthread_key_create(&zcache_key, zcache_free) != 0)
		abort();	/* out of keys at start-up: nothing to do */
}

static struct zcache *zcache_get(void)
{
	struct zcache *zc;

	pthread_once(&zcache_once, zcache_init);
	zc = pthread_getspecific(zcache_key);
	if (zc)
		return zc;
	zc = calloc(1, sizeof(*zc));
	if (!zc)
		return NULL;
	if (pthread_setspecific(zcache_key, zc) != 0) {
		free(zc);
		return NULL;
	}
	return zc;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
	uint8_t *p;

	if (*cap >= need)
		return 0;
	p = realloc(*buf, need);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = need;
	return 0;
}

/* Raw deflate: the output must fill exactly one cluster. */
static int inflate_zlib(struct zcache *zc, const uint8_t *in, size_t in_len,
			uint8_t *out, size_t out_len)
{
	int r;

	if (!zc->zs_ready) {
		memset(&zc->zs, 0, sizeof(zc->zs));
		/* -15: raw deflate, any window up to 32 KiB (qemu uses 4 KiB) */
		if (inflateInit2(&zc->zs, -15) != Z_OK)
			return -ENOMEM;
		zc->zs_ready = true;
	} else if (inflateReset(&zc->zs) != Z_OK) {
		return -EIO;
	}
	zc->zs.next_in = (Bytef *)in;
	zc->zs.avail_in = (uInt)in_len;
	zc->zs.next_out = out;
	zc->zs.avail_out = (uInt)out_len;
	r = inflate(&zc->zs, Z_FINISH);
	/* Z_BUF_ERROR: output full before the end marker; the input may
	 * also carry the rest of a sector that is not ours. */
	if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && zc->zs.avail_out == 0)
		return 0;
	return -EUCLEAN;
}

/* zstd: frames until exactly one cluster came out; no content size needed */
static int inflate_zstd(struct zcache *zc, const uint8_t *in, size_t in_len,
			uint8_t *out, size_t out_len)
{
	ZSTD_inBuffer ib = { in, in_len, 0 };
	ZSTD_outBuffer ob = { out, out_len, 0 };
	size_t r = 1;

	if (!zc->zd) {
		zc->zd = ZSTD_createDCtx();
		if (!zc->zd)
			return -ENOMEM;
	} else {
		ZSTD_DCtx_reset(zc->zd, ZSTD_reset_session_only);
	}
	while (ob.pos < ob.size) {
		size_t in_pos = ib.pos, out_pos = ob.pos;

		r = ZSTD_decompressStream(zc->zd, &ob, &ib);
		if (ZSTD_isError(r))
			return -EUCLEAN;
		if (ib.pos == in_pos && ob.pos == out_pos)
			return -EUCLEAN;	/* no progress: input ran out */
	}
	/* r > 0: the frame goes on past one cluster */
	return r == 0 ? 0 : -EUCLEAN;
}

int qcow2_cluster_inflate(const struct qcow2_zreq *z, uint8_t *dst,
			  const uint8_t **out)
{
	struct zcache *zc = zcache_get();
	uint64_t end, limit;
	size_t avail;
	int r;

	if (!zc)
		return -ENOMEM;
	if (!dst && zc->owner == z->owner && zc->key == z->key && zc->out) {
		*out = zc->out;
		return 0;
	}
	/* The last sector may reach past the end of the file (qemu does not
	 * pad it); anything further is a bad descriptor. */
	limit = (z->file_size + 511) & ~511ull;
	if (z->coff >= z->file_size || ADD_OVERFLOW(z->coff, z->csize, &end) ||
	    end > limit) {
		log_err("%s: %s: compressed cluster lies past the end of the file (%llu+%zu)",
			z->drv, z->path, (unsigned long long)z->coff, z->csize);
		return -EUCLEAN;
	}
	r = grow(&zc->in, &zc->in_cap, z->csize);
	if (!r && !dst)
		r = grow(&zc->out, &zc->out_cap, z->cluster_size);
	if (r < 0)
		return r;
	avail = (size_t)MIN((uint64_t)z->csize, z->file_size - z->coff);
	r = pread_full(z->fd, zc->in, avail, z->coff);
	if (r < 0) {
		log_err("%s: %s: cannot read compressed cluster at %llu (%s)",
			z->drv, z->path, (unsigned long long)z->coff,
			strerror(-r));
		return r == -ENODATA ? -EUCLEAN : r;
	}
	memset(zc->in + avail, 0, z->csize - avail);
	if (!dst)
		zc->owner = 0;		/* out is being overwritten */
	if (z->type == QCOW2_COMP_ZSTD)
		r = inflate_zstd(zc, zc->in, z->csize, dst ? dst : zc->out,
				 z->cluster_size);
	else
		r = inflate_zlib(zc, zc->in, z->csize, dst ? dst : zc->out,
				 z->cluster_size);
	if (r == -EUCLEAN)
		log_err("%s: %s: compressed cluster at %llu does not inflate to one cluster (%zu bytes in)",
			z->drv, z->path, (unsigned long long)z->coff,
			z->csize);
	if (r < 0)
		return r;
	if (!dst) {
		zc->owner = z->owner;
		zc->key = z->key;
		*out = zc->out;
	}
	return 0;
}

int qcow2_cluster_read(const struct qcow2_zreq *z, uint8_t *dst, size_t in_cl,
		       size_t len)
{
	const uint8_t *data;
	int r;

	if (len == z->cluster_size)
		return qcow2_cluster_inflate(z, dst, NULL);
	r = qcow2_cluster_inflate(z, NULL, &data);
	if (r == 0)
		memcpy(dst, data + in_cl, len);
	return r;
}
