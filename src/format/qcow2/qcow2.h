/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2.h: private to src/format/qcow2/.  QCOW2 (versions 2 and 3) and
 * QCOW (version 1) on-disk layouts, the codec (codec.c), the read side
 * (open.c, cluster.c, qcow.c, info.c), the write side (refcount.c,
 * write.c) and the hooks create.c, parent.c, check.c and driver.c add.
 * Dependencies point one way: codec <- read side <- write side, create,
 * parent, check <- driver.c (the driver struct).
 *
 * Layout facts are from qemu's docs/interop/qcow2.txt (v2/v3) and the
 * layout used by qemu's block/qcow.c (v1).  All fields are big-endian.
 */
#ifndef LAYERFS_QCOW2_H
#define LAYERFS_QCOW2_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "img.h"

#define QCOW_MAGIC "QFI\xfb"

/* ---- QCOW2 header (spec: "Header"), v2 ends at 72, v3 at >= 104 ---- */
struct qcow2_header_raw {
	uint8_t magic[4], version[4], backing_file_offset[8];
	uint8_t backing_file_size[4], cluster_bits[4], size[8];
	uint8_t crypt_method[4], l1_size[4], l1_table_offset[8];
	uint8_t refcount_table_offset[8], refcount_table_clusters[4];
	uint8_t nb_snapshots[4], snapshots_offset[8];
	/* version 3 */
	uint8_t incompatible_features[8], compatible_features[8];
	uint8_t autoclear_features[8], refcount_order[4], header_length[4];
	/* additional field, present when header_length > 104 */
	uint8_t compression_type, padding[7];
};
_Static_assert(sizeof(struct qcow2_header_raw) == 112, "spec: 104 + 8");
_Static_assert(offsetof(struct qcow2_header_raw, snapshots_offset) == 64,
	       "spec");
_Static_assert(offsetof(struct qcow2_header_raw, incompatible_features) == 72,
	       "spec");
_Static_assert(offsetof(struct qcow2_header_raw, header_length) == 100,
	       "spec");
_Static_assert(offsetof(struct qcow2_header_raw, compression_type) == 104,
	       "spec");

#define QCOW2_V2_HEADER_LEN 72u
#define QCOW2_V3_HEADER_MIN 104u
#define QCOW2_MIN_CLUSTER_BITS 9u
#define QCOW2_MAX_CLUSTER_BITS 21u	/* qemu's 2 MiB limit */
#define QCOW2_MAX_L1_BYTES (32u << 20)	/* qemu's 32 MiB L1 limit */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

/* ---- header extensions (spec: "Header extensions") ---- */
struct qcow2_ext_raw {
	uint8_t type[4], len[4];	/* data follows, padded to 8 */
};
_Static_assert(sizeof(struct qcow2_ext_raw) == 8, "spec");

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

struct qcow2_feature_raw {	/* spec: "Feature name table" entry */
	uint8_t type, bit, name[46];
};
_Static_assert(sizeof(struct qcow2_feature_raw) == 48, "spec");

/* feature types of the feature name table */
#define QCOW2_FEAT_INCOMPAT 0u
#define QCOW2_FEAT_COMPAT 1u
#define QCOW2_FEAT_AUTOCLEAR 2u
/* the table this code writes: qemu's names for the bits it knows */
#define QCOW2_FEATURE_TABLE_ENTRIES 8u
#define QCOW2_FEATURE_TABLE_LEN \
	(QCOW2_FEATURE_TABLE_ENTRIES * sizeof(struct qcow2_feature_raw))

/* ---- L1/L2 entries (spec: "Cluster mapping") ---- */
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull	/* bits 9..55 */
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull	/* bits 9..55 */
#define QCOW2_L2E_ZERO (1ull << 0)	/* v3, standard L2 entries only */
#define QCOW2_L2E_COMPRESSED (1ull << 62)
#define QCOW2_L2E_COPIED (1ull << 63)
#define QCOW2_L1E_COPIED (1ull << 63)
#define QCOW2_L1E_RESERVED 0x7f000000000001feull	/* bits 1-8, 56-62 */
#define QCOW2_L2E_STD_RESERVED 0x3f000000000001feull	/* bits 1-8, 56-61 */
#define QCOW2_SUBCLUSTERS 32u
#define QCOW2_SC_ALL 0xffffffffull	/* every subcluster of a bitmap half */

/* ---- refcount table entry (spec: "Host cluster management") ---- */
#define QCOW2_RTE_OFFSET_MASK 0xfffffffffffffe00ull	/* bits 9..63 */
#define QCOW2_RTE_RESERVED 0x1ffull			/* bits 0-8 */

/* ---- snapshot table entry (spec: "Snapshots"), then extra, id, name ---- */
struct qcow2_snapshot_raw {
	uint8_t l1_table_offset[8], l1_size[4], id_str_size[2], name_size[2];
	uint8_t date_sec[4], date_nsec[4], vm_clock_nsec[8];
	uint8_t vm_state_size[4], extra_data_size[4];
};
_Static_assert(sizeof(struct qcow2_snapshot_raw) == 40, "spec");

/* ---- QCOW version 1 header (qemu block/qcow.c layout) ---- */
struct qcow_header_raw {
	uint8_t magic[4], version[4], backing_file_offset[8];
	uint8_t backing_file_size[4], mtime[4], size[8];
	uint8_t cluster_bits, l2_bits, padding[2], crypt_method[4];
	uint8_t l1_table_offset[8];
};
_Static_assert(sizeof(struct qcow_header_raw) == 48, "qcow v1 layout");
_Static_assert(offsetof(struct qcow_header_raw, cluster_bits) == 32,
	       "qcow v1 layout");
_Static_assert(offsetof(struct qcow_header_raw, l1_table_offset) == 40,
	       "qcow v1 layout");

/* The decoded QCOW2 header (native byte order). */
struct qcow2_header {
	uint32_t version;		/* 2 or 3 */
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t cluster_bits;		/* 9..21 */
	uint64_t size;
	uint32_t crypt_method;
	uint32_t l1_size;
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible_features;	/* 0 for version 2 */
	uint64_t compatible_features;
	uint64_t autoclear_features;
	uint32_t refcount_order;	/* 4 for version 2 */
	uint32_t header_length;		/* 72 for version 2 */
	uint8_t compression_type;	/* 0 zlib, 1 zstd */
};

/* A problem a decoder found, logged by the caller if it is returned. */
struct qcow2_bad {
	const char *what;
	uint64_t value;
};

/* ==== codec.c: pure decode and encode, no I/O, no state ==== */

/*
 * Decode and check the fixed header in buf (len bytes, the start of the
 * file).  Checks only what the header alone decides: magic and version,
 * cluster_bits, header_length, refcount_order, encryption.  Returns 0,
 * -EINVAL silently when this is not a QCOW2 file (wrong magic, version
 * 1), or logs one line naming path and returns -EUCLEAN / -ENOTSUP (a
 * version other than 1, 2 and 3 is -ENOTSUP).
 */
int qcow2_header_decode(const char *path, const uint8_t *buf, size_t len,
			struct qcow2_header *h);
/* The header's fields into buf: 72 bytes (v2) or h->header_length (v3,
 * at most sizeof(struct qcow2_header_raw) of them written), magic too. */
void qcow2_header_encode(const struct qcow2_header *h, uint8_t *buf);

/* One header extension, decoded in place. */
struct qcow2_ext {
	uint32_t type;
	uint32_t len;
	const uint8_t *data;		/* borrowed: inside the buffer */
	size_t next;			/* offset of the next one (may be past
					 * the end of the area) */
};

/*
 * The extension at buf[off, end): 1 (decoded), 0 (the end marker; next
 * is just past it), -ENODATA (no room for an extension header at off),
 * -EUCLEAN (its data runs past end; type and len are set).
 */
int qcow2_ext_decode(const uint8_t *buf, size_t off, size_t end,
		     struct qcow2_ext *e);
/* Append extension (type, data, zero-padded to 8) at *pos of buf and
 * advance *pos (the caller checked room). */
void qcow2_ext_encode(uint8_t *buf, size_t *pos, uint32_t type,
		      const void *data, size_t len);

/* The name of feature (type, bit) in a feature name table (the
 * extension's data, len bytes) into out; false if the table lacks it. */
bool qcow2_feature_name_find(const uint8_t *table, size_t len, uint8_t type,
			     uint8_t bit, char *out, size_t outlen);
/* qemu's feature name table of the bits known here, into dst
 * (QCOW2_FEATURE_TABLE_LEN bytes). */
void qcow2_feature_table_encode(uint8_t *dst);

/*
 * The backing file name of h in the first cluster (cl, cl_len bytes read
 * of it), not before min_off: *name is a malloc'd copy, or NULL when
 * there is none (an empty name is none, as qemu).  0, -ENOMEM, or
 * -EUCLEAN with *bad.
 */
int qcow2_backing_decode(const uint8_t *cl, size_t cl_len,
			 const struct qcow2_header *h, size_t min_off,
			 char **name, struct qcow2_bad *bad);

/* An L1 entry (spec: "L1 table entry"). */
struct qcow2_l1e {
	uint64_t l2_off;		/* 0: no L2 table */
	bool copied;			/* refcount 1 */
	uint64_t reserved;		/* reserved bits that are set */
};
void qcow2_l1e_decode(uint64_t e, struct qcow2_l1e *d);
uint64_t qcow2_l1e_encode(const struct qcow2_l1e *d);

/* An L2 entry and, with extended L2, its subcluster bitmap (spec: "L2
 * table entry", "Extended L2 Entries", "Compressed Clusters
 * Descriptor"). */
struct qcow2_l2e {
	bool compressed;
	bool copied;
	/* standard cluster */
	uint64_t host;			/* bits 9..55: 0 = unallocated */
	bool zero;			/* bit 0: reads as zeros (v3) */
	uint64_t reserved;		/* reserved bits that are set */
	uint32_t alloc, zeros;		/* extended L2: bitmap halves */
	/* compressed cluster */
	uint64_t coff;			/* host offset of the data */
	size_t csize;			/* bytes from coff to the end of its
					 * last 512-byte sector */
};
void qcow2_l2e_decode(unsigned cluster_bits, uint64_t e, uint64_t bitmap,
		      struct qcow2_l2e *d);
/* A standard entry (bitmap, if not NULL, gets the bitmap word). */
uint64_t qcow2_l2e_encode(const struct qcow2_l2e *d, uint64_t *bitmap);
/* Compressed descriptor: host offset and byte count, and back. */
void qcow2_comp_decode(unsigned cluster_bits, uint64_t e, uint64_t *coff,
		       size_t *csize);
uint64_t qcow2_comp_encode(unsigned cluster_bits, uint64_t coff,
			   size_t csize);
/* Bits first..last of a subcluster bitmap half. */
uint64_t qcow2_sc_mask(unsigned first, unsigned last);

/*
 * Refcount entry i of a refcount block p of 2^order-bit entries (spec:
 * "Refcount block entry"; big-endian, sub-byte entries from bit 0 up),
 * read and set; i must lie inside the block.
 */
uint64_t qcow2_rc_get(const uint8_t *p, unsigned order, uint64_t i);
void qcow2_rc_set(uint8_t *p, unsigned order, uint64_t i, uint64_t v);

/* The fixed part of a snapshot table entry, and its extra data. */
struct qcow2_snapshot_hdr {
	uint64_t l1_table_offset;
	uint32_t l1_size;
	uint16_t id_len, name_len;	/* the strings follow the extra data */
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t vm_state_size;		/* extra data overrides (64 bits) */
	uint32_t extra_len;
	uint64_t disk_size;		/* from the extra data, or 0 */
};
/* buf: sizeof(struct qcow2_snapshot_raw) bytes */
void qcow2_snapshot_decode(const uint8_t *buf, struct qcow2_snapshot_hdr *d);
void qcow2_snapshot_extra_decode(const uint8_t *extra, size_t len,
				 struct qcow2_snapshot_hdr *d);
/* The whole entry, padded to 8 bytes. */
uint64_t qcow2_snapshot_entry_len(const struct qcow2_snapshot_hdr *d);
void qcow2_snapshot_encode(const struct qcow2_snapshot_hdr *d, uint8_t *buf);

/* The decoded QCOW version 1 header. */
struct qcow_header {
	uint32_t version;
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t mtime;
	uint64_t size;
	uint8_t cluster_bits, l2_bits;
	uint32_t crypt_method;
	uint64_t l1_table_offset;
};
/* buf: sizeof(struct qcow_header_raw) bytes; the magic is the caller's */
void qcow_header_decode(const uint8_t *buf, struct qcow_header *h);
void qcow_header_encode(const struct qcow_header *h, uint8_t *buf);
/* v1 compressed entry: offset and the compressed size in bytes */
void qcow_comp_decode(unsigned cluster_bits, uint64_t e, uint64_t *coff,
		      size_t *csize);

/* ==== the read side ==== */

/* ---- internal snapshots, listed for the CLI (never exposed as disks) ---- */
struct qcow2_snapshot {
	char *id;			/* owned, NUL-terminated */
	char *name;			/* owned, NUL-terminated */
	uint64_t l1_table_offset;
	uint32_t l1_size;
	uint32_t date_sec;		/* seconds since the Epoch */
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;		/* guest run time */
	uint64_t vm_state_size;		/* bytes, 0 if none */
	uint64_t disk_size;		/* virtual size, 0 if not recorded */
};

/*
 * Read the snapshot table of an image opened by the qcow2 driver.
 * *out (owned by the caller, free with qcow2_snapshot_list_free) and *n
 * are written only on success; *out is NULL when there are none.
 * 0, -EINVAL (not a qcow2 image), -EUCLEAN, -EFBIG or -ENOMEM.
 */
int qcow2_snapshot_list(struct img *img, struct qcow2_snapshot **out,
			size_t *n);
void qcow2_snapshot_list_free(struct qcow2_snapshot *list, size_t n);

/* ---- info.c: the ->info hook ---- */
struct img_info;
int qcow2_info(struct img *img, struct img_info *out);

/* ---- qcow.c: QCOW version 1, and what both drivers share ---- */

/*
 * Describe a backing file name as a parent (qcow and qcow2 alike):
 * relative to the image unless it starts with '/'; format may be NULL.
 * Returns 1 (a parent), 0 (backing NULL) or -errno.
 */
int qcow2_backing_describe(struct img_parent *p, const char *backing,
			   const char *format);

/* ---- cluster.c: shared by the qcow2 and qcow drivers ---- */

/* A process-unique id for one open image: the key of its cached data. */
uint64_t qcow2_owner_new(void);

/*
 * The L2 table cache is shared by every open image and bounded in bytes
 * (QCOW2_L2_CACHE_DEFAULT, or LAYERFS_QCOW2_L2_CACHE=<bytes> at start).
 * It is sharded by key with one mutex per shard; a lookup holds the
 * shard's lock only for the hash probe and pins the table, so the scan of
 * entries runs unlocked.  Pinned tables are never evicted.
 */
#define QCOW2_L2_CACHE_DEFAULT (64u << 20)

struct qcow2_l2_ref {
	const uint64_t *table;		/* native byte order; borrowed */
	void *slot;			/* private */
};

/*
 * Pin the table (owner, index) of nwords 64-bit big-endian words stored at
 * host_off in fd, loading it on a miss.  The caller checked host_off and
 * the size at open.  0, or -errno (logged as "<drv>: <path>: ...").
 */
int qcow2_l2_get(uint64_t owner, uint64_t index, size_t nwords, int fd,
		 uint64_t host_off, const char *drv, const char *path,
		 struct qcow2_l2_ref *ref);
/*
 * The same, for an image that is being written: gen is the image's L2
 * generation, which a writer bumps after it changed an entry of the pinned
 * cached table (the file gets it at the next flush; the table stays pinned
 * until then).  A table read from disk while gen moved may be stale and is
 * read again instead of being cached.
 */
int qcow2_l2_get_gen(uint64_t owner, uint64_t index, size_t nwords, int fd,
		     uint64_t host_off, const char *drv, const char *path,
		     const unsigned *gen, struct qcow2_l2_ref *ref);
void qcow2_l2_put(struct qcow2_l2_ref *ref);
/* Store word i of a pinned table (atomic, release): writers only. */
void qcow2_l2_store(struct qcow2_l2_ref *ref, size_t i, uint64_t v);
/*
 * Insert and pin a new all-zero table (owner, index) that is not on disk
 * yet (a writer's new L2 table; any cached copy is replaced).  0 or
 * -ENOMEM.
 */
int qcow2_l2_new(uint64_t owner, uint64_t index, size_t nwords,
		 struct qcow2_l2_ref *ref);
/* Forget every table of owner (at close; none may be pinned). */
void qcow2_l2_cache_drop(uint64_t owner);
/* Change the bound (bytes); evicts at once if over.  For tests/daemon. */
void qcow2_l2_cache_set_budget(size_t bytes);
/* Bytes of tables cached now (for tests). */
size_t qcow2_l2_cache_used(void);

enum qcow2_comp {
	QCOW2_COMP_ZLIB,		/* raw deflate */
	QCOW2_COMP_ZSTD,		/* zstd frame(s) */
};

/* One compressed cluster to inflate. */
struct qcow2_zreq {
	const char *drv;		/* "qcow2" or "qcow": log prefix */
	const char *path;
	int fd;
	uint64_t file_size;
	uint64_t owner;			/* with key: the thread cache's tag */
	uint64_t key;			/* the L2 entry is unique per image */
	uint64_t coff;			/* compressed bytes */
	size_t csize;
	size_t cluster_size;		/* exactly this much comes out */
	enum qcow2_comp type;
};

/*
 * Inflate one cluster.  With dst, into dst (cluster_size bytes).  Without,
 * into the calling thread's one-cluster cache (reused when owner and key
 * match the last call), and *out points there until the thread's next
 * call.  Compressed bytes past the end of the file read as zeros (the last
 * sector may be partial); a start past the end, or data that does not
 * inflate to exactly one cluster, is -EUCLEAN (logged).
 */
int qcow2_cluster_inflate(const struct qcow2_zreq *z, uint8_t *dst,
			  const uint8_t **out);

/*
 * The ->read side of a compressed cluster: copy len bytes from in_cl into
 * that cluster to dst.  A whole cluster inflates straight into dst; a part
 * goes through the thread's cache.  Errors as qcow2_cluster_inflate().
 */
int qcow2_cluster_read(const struct qcow2_zreq *z, uint8_t *dst, size_t in_cl,
		       size_t len);

/* ---- open.c: the qcow2 driver's state and its read side; nothing
 *      outside the folder uses it ---- */

struct qcow2_w;

struct qcow2 {
	struct qcow2_header h;
	uint64_t owner;			/* cache key, see qcow2_owner_new */
	uint32_t cluster_bits;
	uint64_t cluster_size;
	uint32_t l2_bits;		/* log2 of entries per L2 table */
	uint32_t l2_words;		/* 64-bit words per L2 table */
	uint32_t entry_words;		/* 1, or 2 with extended L2 */
	uint32_t sc_bits;		/* log2 of the subcluster size */
	bool extl2;
	bool l1_shared;			/* an L1 entry lacks COPIED */
	uint32_t l1_entries;		/* L1 entries covering the disk */
	uint64_t *l1;			/* owned: L2 table offsets, 0 = none;
					 * entries go 0 -> offset once, with an
					 * atomic store (write.c) */
	enum qcow2_comp comp;
	char *backing;			/* owned, NUL-terminated, or NULL */
	const char *backing_fmt;	/* static driver name, or NULL */
	char *backing_fmt_name;		/* owned: the format as qemu wrote it */
	char *data_name;		/* owned: external data file, or NULL */
	int data_fd;			/* owned, -1 without a data file */
	uint64_t data_size;		/* size of the file data lives in */
	uint64_t file_end;		/* atomic: bytes of the image file that
					 * mapped data may reach (grows) */
	unsigned l2_gen;		/* atomic: bumped after each L2 update,
					 * see qcow2_l2_get_gen */
	unsigned seq;			/* atomic: odd while an extended L2
					 * entry pair is being replaced */
	struct qcow2_w *w;		/* owned: write state, NULL read-only */
};

/*
 * ->open and ->close of the read side: open sets img->priv but never
 * img->writable's write state (driver.c adds it, see qcow2_write_open);
 * close frees what open made, after driver.c dropped the write state.
 */
int qcow2_probe(const struct img_probe *p);
int qcow2_open(struct img *img);
void qcow2_close(struct img *img);
int qcow2_parent(struct img *img, struct img_parent *p);
int qcow2_map_extent(struct img *img, uint64_t off, uint64_t len,
		     struct img_extent *ext);
int qcow2_read(struct img *img, void *buf, size_t n, uint64_t off);
/* qemu's name for one of our drivers as a backing format, or NULL */
const char *qcow2_format_qemu_name(const char *driver);

/* A run inside one cluster, as classified from its L2 entry. */
enum qcow2_run_kind {
	QCOW2_RUN_UNALLOC,
	QCOW2_RUN_ZERO,
	QCOW2_RUN_DATA,
	QCOW2_RUN_COMP,
};

struct qcow2_run {
	enum qcow2_run_kind kind;
	uint64_t len;			/* bytes to the end of the state */
	uint64_t host;			/* DATA: host offset of the start */
};

/*
 * The state at in_cl inside guest cluster cl, from its L2 entry (and
 * subcluster bitmap with extended L2), and how far it lasts in the cluster.
 * 0, or -EUCLEAN with *bad filled.
 */
int qcow2_entry_classify(const struct qcow2 *s, uint64_t cl, uint64_t entry,
			 uint64_t bitmap, uint64_t in_cl, struct qcow2_run *run,
			 struct qcow2_bad *bad);

/* The L2 table offset of L1 entry i (0: none); pairs with the writer's
 * release store. */
static inline uint64_t qcow2_l1_get(const struct qcow2 *s, uint64_t i)
{
	return __atomic_load_n(&s->l1[i], __ATOMIC_ACQUIRE);
}

/*
 * Entry idx of a pinned L2 table: *e and, with extended L2, the bitmap *b.
 * A writer replaces an extended pair inside a sequence lock (s->seq), so
 * the pair read here is always one the writer published whole.
 */
static inline void qcow2_entry_load(const struct qcow2 *s,
				    const uint64_t *table, uint64_t idx,
				    uint64_t *e, uint64_t *b)
{
	const uint64_t *p = table + idx * s->entry_words;
	unsigned s1;

	if (!s->extl2) {
		*e = __atomic_load_n(p, __ATOMIC_ACQUIRE);
		*b = 0;
		return;
	}
	for (;;) {
		s1 = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
		*e = __atomic_load_n(p, __ATOMIC_RELAXED);
		*b = __atomic_load_n(p + 1, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (!(s1 & 1) && __atomic_load_n(&s->seq, __ATOMIC_RELAXED) == s1)
			return;
		sched_yield();	/* a writer is between its two stores */
	}
}

/* ==== the write side (refcount.c, write.c) and the hooks on top ==== */

/* ---- write.c ---- */

/*
 * Called by driver.c after open when the image was opened writable.
 * 0: writes are supported (s->w set); -EROFS: not for this image (one warning logged
 * saying why; the image stays readable); other -errno: open fails.
 * Never modifies the file.
 */
int qcow2_write_open(struct img *img, struct qcow2 *s);
void qcow2_write_free(struct qcow2 *s);
int qcow2_write(struct img *img, const void *buf, size_t n, uint64_t off,
		const struct img_below *below);
int qcow2_zero(struct img *img, uint64_t off, uint64_t n,
	       const struct img_below *below);
int qcow2_flush(struct img *img);

/* ---- create.c: ->create_diff, and ->create, a base image (fixed:
 *      metadata preallocated) ---- */
int qcow2_create_diff(const char *path, const struct img_create_parent *parent,
		      const struct img_create_opts *o);
int qcow2_create(const char *path, const struct img_create_opts *o);
/* ---- check.c: ->check, a structural and refcount check ---- */
int qcow2_check(struct img *img, bool repair, struct img_check *res);
/* ---- parent.c: ->set_parent, the backing file name and format ---- */
int qcow2_set_parent(struct img *img, const struct img_create_parent *parent);

/* ---- refcount.c: host cluster allocation (under w->lock), called by
 *      write.c only; it never calls back up ---- */

/* A refcount block held in memory. */
struct qcow2_rblock {
	uint64_t t;			/* its refcount table index */
	uint64_t off;			/* host offset */
	uint8_t *raw;			/* owned: one cluster, as on disk */
	bool dirty;			/* changed since written */
	bool fresh;			/* new: the table on disk lacks it */
};

/* An L2 table changed in memory and not yet written back. */
struct qcow2_dirty_l2 {
	uint64_t l1i;
	uint64_t host;			/* the table's offset */
	struct qcow2_l2_ref ref;	/* pinned until written back */
	uint32_t lo, hi;		/* changed entries [lo, hi) */
	bool fresh;			/* new table: written whole, then its
					 * L1 entry */
};

/* Clusters to release once the references to them are durably gone. */
struct qcow2_release {
	uint64_t off, len;
};

/* Guest clusters [first, end) of a write step in flight. */
struct qcow2_span {
	uint64_t first, end;
};

struct qcow2_w {
	pthread_mutex_t lock;		/* allocation, metadata, flush */
	pthread_cond_t flight_done;	/* a step in flight finished */
	struct qcow2_span *flight;	/* owned: steps writing their data
					 * unlocked; nobody plans these */
	size_t nflight, flight_cap;
	uint64_t *rt;			/* owned: refcount table, native */
	uint64_t rt_entries;
	uint64_t rt_dlo, rt_dhi;	/* table entries [lo, hi) changed in
					 * memory (new blocks) */
	uint32_t rc_order;		/* refcount_bits = 1 << rc_order */
	uint64_t rb_entries;		/* refcounts per refcount block */
	uint64_t hw;			/* clusters: every cluster at or past
					 * hw is unused (refcount 0) */
	struct qcow2_rblock *rb;	/* owned: blocks in memory */
	size_t nrb, rb_cap;
	struct qcow2_dirty_l2 *dl2;	/* owned: dirty L2 tables */
	size_t ndl2, dl2_cap;
	struct qcow2_release *rel;	/* owned: releases after the flush */
	size_t nrel, rel_cap;
	bool hdr_done;			/* atomic: header ready for writes */
	bool broken;			/* a metadata write failed: -EIO */
	uint8_t *buf;			/* owned: one cluster, under lock */
	uint8_t *rbuf;			/* owned: one cluster for refcount
					 * blocks, under lock */
	uint8_t *zbuf;			/* owned: one cluster of zeros, never
					 * written after open */
};

/* Fresh clusters for one allocation step: [start, end) all get refcount 1.
 * The caller uses [start, start + nuser); new refcount blocks follow. */
struct qcow2_rc_plan {
	uint64_t start, nuser, end;	/* cluster indexes */
	uint64_t nblk;			/* new refcount blocks */
	uint64_t *blk_ti;		/* owned: reftable index of block i,
					 * stored at cluster start+nuser+i */
};

/* Load the refcount table, check it, find the high-water mark. */
int qcow2_rc_open(struct img *img, struct qcow2 *s);
void qcow2_rc_close(struct qcow2_w *w);
/*
 * Reserve nuser fresh clusters: 0 (hw moved past the plan at once), 1 if
 * the refcount table must grow first (*grow_to: the entries it needs;
 * the caller flushes and calls qcow2_rc_grow, then asks again), -errno.
 */
int qcow2_rc_reserve(struct img *img, struct qcow2 *s, uint64_t nuser,
		     struct qcow2_rc_plan *p, uint64_t *grow_to);
/*
 * Replace the refcount table by one of at least min_entries entries.
 * Only from a flushed state (nothing pending in memory): the caller
 * flushed.  Writes and syncs.
 */
int qcow2_rc_grow(struct img *img, struct qcow2 *s, uint64_t min_entries);
void qcow2_rc_plan_free(struct qcow2_rc_plan *p);
/* Count the plan's clusters in memory (new blocks too, and their refcount
 * table entries); nothing is written. */
int qcow2_rc_take(struct img *img, struct qcow2 *s,
		  const struct qcow2_rc_plan *p);
/* Drop one reference to each cluster in [off, off + len), in memory (the
 * references must be durably gone before the blocks are written). */
int qcow2_rc_release(struct img *img, struct qcow2 *s, uint64_t off,
		     uint64_t len);
/* Anything of the refcounts in memory not on disk yet? */
bool qcow2_rc_dirty(const struct qcow2_w *w);
/* Write what changed: new blocks, (barrier,) the table entries naming
 * them, the other changed blocks.  The caller's barrier follows. */
int qcow2_rc_flush(struct img *img, struct qcow2 *s);
/* fdatasync, logged on failure */
int qcow2_file_sync(struct img *img);

#endif
