/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * img.h: the one interface every on-disk format implements.
 *
 * A format driver knows one file format.  It never opens another file and
 * never calls FUSE: it describes its parent (struct img_parent) and the
 * chain layer finds and checks it.  Extent semantics follow qemu's block
 * status: map_extent reports one run that starts at off, 1 <= len <= asked.
 *   IMG_EXT_DATA    the bytes are in this image: at host_off in fd, or
 *                   (host_off == IMG_HOST_NONE) produced by ->read
 *                   (compressed clusters, sparse FILL chunks, ...)
 *   IMG_EXT_ZERO    zeros, whatever the parent holds
 *   IMG_EXT_UNALLOC not here: ask the layer below (zeros at the bottom)
 * ZERO and UNALLOC are never merged: differencing images depend on it.
 */
#ifndef LAYERFS_IMG_H
#define LAYERFS_IMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "compiler.h"
#include "guid.h"

#define IMG_HOST_NONE UINT64_MAX
#define IMG_PROBE_HEAD 65536	/* bytes of the file start given to probe */
#define IMG_PROBE_TAIL 512	/* bytes of the file end given to probe */
#define IMG_PARENT_MAX_REFS 8

enum img_ext_type { IMG_EXT_DATA, IMG_EXT_ZERO, IMG_EXT_UNALLOC };

struct img_extent {
	uint64_t len;
	uint64_t host_off;	/* DATA only; IMG_HOST_NONE: use ->read */
	int fd;			/* DATA with host_off: file to pread */
	enum img_ext_type type;
};

struct img_probe {
	const char *path;
	const uint8_t *head;	/* the first head_len bytes of the file */
	size_t head_len;
	const uint8_t *tail;	/* the last tail_len bytes of the file */
	size_t tail_len;
	uint64_t file_size;
};

/* How a parent reference was written in the child. */
enum img_ref_kind {
	IMG_REF_RELATIVE,	/* relative to the child's directory */
	IMG_REF_ABSOLUTE,	/* absolute path (Windows or POSIX) */
	IMG_REF_NAME,		/* a bare file name, or name hint only */
};

enum img_id_kind {
	IMG_ID_NONE,
	IMG_ID_VHD_UUID,	/* VHD parent unique id (text order) */
	IMG_ID_VHDX_LINKAGE,	/* VHDX parent_linkage: data write GUID */
};

struct img_parent_ref {
	enum img_ref_kind kind;
	char *path;		/* owned; UTF-8, separators as written */
	const char *what;	/* static: "W2ru", "relative_path", ... */
};

/* What a child says about its parent.  Filled by ->parent. */
struct img_parent {
	unsigned nrefs;
	struct img_parent_ref refs[IMG_PARENT_MAX_REFS]; /* preference order */
	enum img_id_kind id_kind;
	struct guid id;		/* expected identity of the parent */
	bool has_id2;		/* VHDX parent_linkage2 */
	struct guid id2;
	bool has_timestamp;	/* VHD parent time stamp */
	uint32_t timestamp;
	const char *format;	/* static driver name if recorded, or NULL */
};

struct img_driver;

struct img {
	const struct img_driver *drv;
	char *path;		/* owned: path the image was opened by */
	int fd;			/* owned */
	bool writable;		/* opened O_RDWR (top layer only) */
	dev_t dev;
	ino_t ino;
	uint64_t file_size;	/* set before ->open */
	/* writable images (img_health_check): */
	uint64_t end;		/* atomic: the file is at least this long:
				 * its size after ->open, raised by the
				 * writer as it extends it (img_end_grow) */
	bool broken;		/* atomic: no more writes (img_broken_set) */
	uint64_t polled;	/* atomic: img_health_poll's last check
				 * (CLOCK_MONOTONIC_COARSE, ns) */
	/* set by ->open: */
	uint64_t size;		/* virtual size in bytes */
	uint32_t sector_size;	/* logical sector size, 512 if none */
	uint32_t phys_sector_size;
	uint32_t block_size;	/* block/cluster size, 0 if none */
	bool has_id;		/* identity children compare against */
	struct guid id;
	char subtype[24];	/* "fixed", "dynamic", "differencing", ... */
	void *priv;		/* owned by the driver */
	unsigned refcnt;	/* img_ref/img_unref */
};

/*
 * Reads from the layers below a top image (for copy-on-write).  read()
 * returns 0 or -errno; bytes past the lower chain's end read as zeros.
 */
struct img_below {
	int (*read)(void *ctx, void *buf, size_t n, uint64_t off);
	void *ctx;
};

/* What a new differencing image records about its parent. */
struct img_create_parent {
	struct img *img;	/* the parent image, open (read-only) */
	const char *rel_path;	/* parent path relative to the new file's
				 * directory, '/' separators ("base.vhd") */
	const char *abs_path;	/* absolute POSIX path of the parent */
	const char *format;	/* the parent's driver name */
};

struct img_create_opts {
	uint64_t size;		/* virtual size; 0: the parent's */
	uint32_t block_size;	/* block/cluster size; 0: format default */
	uint32_t sector_size;	/* logical sector size; 0: the parent's */
	bool fixed;		/* ->create: fully allocated (VHD/VHDX fixed,
				 * raw written out, qcow2 preallocated) */
};

/*
 * What ->check found.  The driver logs each finding as one line naming the
 * file (log_err for errors, log_warn for leaks and warnings) and counts it
 * here.
 */
struct img_check {
	uint64_t errors;	/* corruption: the image cannot be trusted */
	uint64_t leaks;		/* allocated but unused space (harmless) */
	uint64_t warnings;	/* odd but valid */
	uint64_t repaired;	/* findings fixed by a repair */
	uint64_t allocated;	/* bytes of data the image holds */
};

/*
 * For ->check: log one finding as "MOD: PATH: message" (an error when
 * error is true, else a warning) and count it in res->errors or
 * res->warnings.
 */
void img_check_report(struct img_check *res, bool error, const char *mod,
		      const char *path, const char *fmt, ...) __printf(5, 6);

/*
 * Format facts beyond struct img, for `layerimg info` (the way qemu's block
 * drivers answer bdrv_get_specific_info).  Filled by ->info; every part is
 * optional and format-neutral, so the front ends never include a format's
 * private header.  Free with img_info_clear().
 */
struct img_snapshot {			/* an internal snapshot (QCOW2) */
	char *id;			/* owned, NUL-terminated */
	char *name;			/* owned, NUL-terminated */
	uint32_t date_sec;		/* seconds since the Epoch */
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;		/* guest run time */
	uint64_t vm_state_size;		/* bytes, 0 if none */
	uint64_t disk_size;		/* virtual size, 0 if not recorded */
};

struct img_log_state {			/* a metadata journal (VHDX log) */
	bool dirty;			/* entries still to replay (a log GUID) */
	struct guid guid;		/* the log GUID when dirty */
	uint64_t offset, length;	/* the log region in the file */
	unsigned entries;		/* entries replayed in memory at open */
};

#define IMG_INFO_FACTS_MAX 16
struct img_info_fact {			/* one named number of the format */
	const char *key;		/* static string, snake_case */
	uint64_t value;
};

struct img_info {
	bool has_log;			/* the format keeps a journal */
	struct img_log_state log;
	bool has_snapshots;		/* the format keeps internal snapshots */
	int snapshots_err;		/* 0, or -errno: the table is unreadable */
	struct img_snapshot *snapshots;	/* owned, nsnapshots entries */
	size_t nsnapshots;
	unsigned nfacts;		/* facts[0..nfacts) in display order */
	struct img_info_fact facts[IMG_INFO_FACTS_MAX];
};

/* Fill *out from img's driver (zeroed when it has no ->info): 0 or -errno. */
int img_info_get(struct img *img, struct img_info *out);
/* Append a fact; silently ignored past IMG_INFO_FACTS_MAX (a driver bug). */
void img_info_add_fact(struct img_info *inf, const char *key, uint64_t value);
void img_info_clear(struct img_info *inf);

struct img_driver {
	const char *name;
	const char *desc;
	/* score 0..100; never fails, never logs */
	int (*probe)(const struct img_probe *p);
	/* validate everything, set size/sector_size/priv; 0 or -errno */
	int (*open)(struct img *img);
	void (*close)(struct img *img);
	/* 1 and *p filled if the image has a parent, 0 if not, -errno */
	int (*parent)(struct img *img, struct img_parent *p);
	/* off < size, 0 < len, off + len <= size: checked by the caller */
	int (*map_extent)(struct img *img, uint64_t off, uint64_t len,
			  struct img_extent *ext);
	/* DATA runs with host_off == IMG_HOST_NONE; [off, off+n) in one run */
	int (*read)(struct img *img, void *buf, size_t n, uint64_t off);
	/*
	 * Writes (optional; NULL: the chain answers -EROFS).  Only ever
	 * called on a top image opened with writable set.  The chain
	 * guarantees: off and n are multiples of img->sector_size, the
	 * range lies inside img->size, n > 0, and it holds the chain's shape
	 * lock shared (the top cannot change under a write; reads hold no
	 * lock), so disjoint writes and reads run concurrently: the driver
	 * serializes its own allocation and publishes new metadata only
	 * after the data it points to is written (readers never see a
	 * half-allocated block).  Return after pwrite (write-through, no
	 * fsync): durability comes from ->flush.  0 or -errno.
	 */
	int (*write)(struct img *img, const void *buf, size_t n, uint64_t off,
		     const struct img_below *below);
	/*
	 * Make every completed write durable (fdatasync and whatever the
	 * format needs to order metadata).  Called without the chain's lock,
	 * beside writes in flight, and on a top a shape change retired.
	 * 0 or -errno.
	 */
	int (*flush)(struct img *img);
	/*
	 * Optional: [off, off + n) (sector-aligned) must read as zeros.  The
	 * driver records ZERO state where the format has one, or writes
	 * zeros.  NULL: the chain writes zeros through ->write.
	 */
	int (*zero)(struct img *img, uint64_t off, uint64_t n,
		    const struct img_below *below);
	/*
	 * Optional: create a new, empty differencing image at path (which
	 * must not exist: O_CREAT|O_EXCL) over parent, recording the parent
	 * reference the way other tools expect.  The file is complete and
	 * fdatasync'ed when this returns 0.
	 */
	int (*create_diff)(const char *path, const struct img_create_parent *parent,
			   const struct img_create_opts *o);
	/*
	 * Optional: create a new base image (no parent) at path (O_CREAT|
	 * O_EXCL) of o->size bytes, dynamic (sparse) unless o->fixed.  The
	 * file is complete and fdatasync'ed when this returns 0.
	 */
	int (*create)(const char *path, const struct img_create_opts *o);
	/*
	 * Optional: structural check of one file.  img has path, fd (O_RDONLY,
	 * or O_RDWR when repair is true: fix only what is safe to fix) and
	 * file_size set, but ->open has NOT run (priv is NULL): the checker
	 * reads the file itself, so it can report on files open refuses.
	 * Fills *res; returns 0 when the check ran (whatever it found),
	 * -errno when it could not run.
	 */
	int (*check)(struct img *img, bool repair, struct img_check *res);
	/*
	 * Optional: rewrite the parent reference of img (opened writable)
	 * to name parent, the way create_diff records it (locators, linkage
	 * or UUID and time stamp, backing file name).  Atomic with respect to
	 * crashes where the format allows it.  The driver rewrites the file,
	 * then closes and reopens its own state on the same fd; if that
	 * reopen fails it sets img->drv to NULL and only img_unref is safe.
	 * 0 or -errno.
	 */
	int (*set_parent)(struct img *img, const struct img_create_parent *parent);
	/*
	 * Optional: format facts for the front ends (see struct img_info),
	 * on an opened image; *out is zeroed by the caller.  0 or -errno.
	 */
	int (*info)(struct img *img, struct img_info *out);
};

/* registry.c */
extern const struct img_driver *const img_drivers[];
extern const size_t img_ndrivers;
const struct img_driver *img_driver_find(const char *name);

/*
 * Open path read-only (or O_RDWR when writable), identify its format by
 * content (or use drv when not NULL) and run the driver's open.  Errors are
 * logged once, naming the file.  0 or -errno.
 */
int img_open(const char *path, const struct img_driver *drv, bool writable,
	     struct img **out);
/*
 * img_open on a file the caller opened (O_RDONLY, or O_RDWR when
 * writable), e.g. confined beneath a directory (file_open_beneath).  path
 * names it in messages.  The img owns fd from the call on, even when it
 * fails (fd is closed then).
 */
int img_open_fd(int fd, const char *path, const struct img_driver *drv,
		bool writable, struct img **out);
/* Probe only: best driver for the file, or NULL.  Silent. */
const struct img_driver *img_probe_file(const char *path);
/* The same on an open file (its offset is not used). */
const struct img_driver *img_probe_fd(int fd, const char *path);
struct img *img_ref(struct img *img);
void img_unref(struct img *img);

void img_parent_clear(struct img_parent *p);
/* Append a reference (path copied); 0 or -ENOMEM/-E2BIG */
int img_parent_add_ref(struct img_parent *p, enum img_ref_kind kind,
		       const char *what, const char *path);

/* For drivers: map_extent with the caller's range checks applied. */
int img_map(struct img *img, uint64_t off, uint64_t len,
	    struct img_extent *ext);

/*
 * The health of a writable image, for the writers and the chain.  A file
 * changed behind the daemon (cut shorter, removed, or replaced by a
 * rename) would take writes that nothing reads back, or metadata that
 * points past its end: it is found, writes stop, the chain answers -EIO.
 *
 * img_end_grow: the writer extended the file to end (only after the
 * write that did it returned; img->end only ever goes up).
 * img_health_check: one fstat: the file shorter than img->end, or no
 * longer linked (st_nlink 0: removed, or replaced by `mv`), marks img
 * broken and logs once "FMT: PATH: the file changed behind layerfs (...):
 * writes stop".  0, or -EIO (also when img was broken already); 0 for a
 * read-only image.  The writers call it before they extend the file (an
 * allocation would grow a cut file back), the chain around each flush.
 * img_health_poll: the same for every write and zero (the chain's), at
 * most once per clock tick (1-10 ms: an fstat per 4 KiB write costs more
 * than 1%), else only the broken flag: an overwrite is refused within a
 * tick of the change, and the next flush sees it anyway.
 * img_broken_get: writes stop (a changed file, or a writer's failed
 * metadata write); img_broken_set: mark it, true the first time (the
 * caller logs why, once).
 */
void img_end_grow(struct img *img, uint64_t end);
int img_health_check(struct img *img);
int img_health_poll(struct img *img);
bool img_broken_get(const struct img *img);
bool img_broken_set(struct img *img);

/*
 * For set_parent: write n bytes at off and fdatasync them; a failure is
 * logged as "DRIVER: PATH: cannot write WHAT at OFF: ...".  0 or -errno.
 */
int img_write_sync(struct img *img, const void *buf, size_t n, uint64_t off,
		   const char *what);
/*
 * For set_parent, after the driver rewrote its file: close the driver's
 * state and open it again from the file (file_size re-read).  On failure
 * it logs "DRIVER: PATH: cannot reopen after the WHAT change: ..." and
 * sets img->drv to NULL (only img_unref is safe then).  0 or -errno.
 */
int img_reopen(struct img *img, const char *what);

#endif
