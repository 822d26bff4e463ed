// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * part.c: the partitions of a chain's flat disk, found with libblkid.
 *
 * libblkid wants a file descriptor.  Rather than letting it read the chain
 * through FUSE (which would need free FUSE workers and could deadlock), we
 * give it a sparse private copy: a memfd as large as the disk, holding only
 * what a partition table parser and a superblock prober read:
 *   - the first and last MiB of the disk (MBR, primary and backup GPT),
 *   - the GPT entry arrays wherever the headers put them,
 *   - every EBR of the MBR extended-partition chains (walked here, bounded
 *     and loop-safe, so that libblkid finds each one in the copy),
 *   - the first MiB and last 64 KiB of each partition (superblocks).
 * tmpfs keeps the rest of the memfd as holes, which read as zeros.  Every
 * value taken from the disk is checked against the disk size.
 */
#include <blkid/blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "checked.h"
#include "compiler.h"
#include "endian-io.h"
#include "log.h"
#include "part.h"

#define PART_HEAD_LEN ((uint64_t)1 << 20)	/* disk start and end copied */
#define PART_COPY_CHUNK ((size_t)64 << 10)
#define PART_MAX_EBR 256		/* logical partitions followed, at most */
#define PART_GPT_MAX_ARRAY ((uint64_t)4 << 20)	/* entry array bytes */
#define PART_MAX_WATCH (8 + PART_MAX_EBR)

struct scan {
	struct chain *c;
	int fd;			/* the memfd */
	uint64_t size;		/* disk size */
	uint32_t ss;		/* logical sector size */
	uint8_t *buf;		/* PART_COPY_CHUNK bytes */
	struct part_range watch[PART_MAX_WATCH];
	size_t nwatch;
};

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Copy [off, off + len) of the disk (clamped to it) into the memfd. */
static int copy_in(struct scan *s, uint64_t off, uint64_t len)
{
	uint64_t end;

	if (off >= s->size)
		return 0;
	if (ADD_OVERFLOW(off, len, &end) || end > s->size)
		end = s->size;
	while (off < end) {
		size_t n = (size_t)MIN(end - off, (uint64_t)PART_COPY_CHUNK);
		int r = chain_pread(s->c, s->buf, n, off);

		if (r < 0)
			return r;
		/* the memfd already reads zeros there: keep it sparse */
		if (!all_zero(s->buf, n) &&
		    pwrite(s->fd, s->buf, n, (off_t)off) != (ssize_t)n) {
			r = -errno;
			log_err("part: %s: cannot copy to the probe file: %s",
				s->c->name, strerror(errno));
			return r ? r : -EIO;
		}
		off += n;
	}
	return 0;
}

static void watch_add(struct scan *s, uint64_t off, uint64_t len)
{
	if (s->nwatch == PART_MAX_WATCH || off >= s->size || !len)
		return;
	if (!range_within(off, len, s->size))
		len = s->size - off;
	s->watch[s->nwatch++] = (struct part_range){ off, len };
}

/*
 * A GPT header at lba: note it and its entry array, and copy the array in.
 * Returns the header's alternate LBA, or 0 when there is no header there.
 * libblkid checks the CRCs; we only need the locations, bounded.
 */
static int gpt_header_at(struct scan *s, uint64_t lba, uint64_t *alt)
{
	uint8_t h[512];
	uint64_t off, arr_lba, arr_off, arr_len;
	uint32_t n, esz;
	int r;

	*alt = 0;
	if (MUL_OVERFLOW(lba, s->ss, &off) || !range_within(off, 512, s->size))
		return 0;
	r = chain_pread(s->c, h, sizeof(h), off);
	if (r < 0)
		return r;
	if (memcmp(h, "EFI PART", 8) != 0)
		return 0;
	watch_add(s, off, s->ss);
	*alt = get_le64(h + 32);
	arr_lba = get_le64(h + 72);
	n = get_le32(h + 80);
	esz = get_le32(h + 84);
	if (MUL_OVERFLOW((uint64_t)n, (uint64_t)esz, &arr_len) ||
	    arr_len > PART_GPT_MAX_ARRAY ||
	    MUL_OVERFLOW(arr_lba, s->ss, &arr_off) ||
	    !range_within(arr_off, arr_len, s->size)) {
		log_warn("part: %s: GPT header at LBA %llu: entry array out of "
			 "bounds (LBA %llu, %u x %u bytes)",
			 s->c->name, (unsigned long long)lba,
			 (unsigned long long)arr_lba, n, esz);
		return 0;
	}
	watch_add(s, arr_off, arr_len);
	return copy_in(s, arr_off, arr_len);
}

static int gpt_locate(struct scan *s)
{
	uint64_t last = s->size / s->ss - 1, alt = 0, alt2;
	int r;

	r = gpt_header_at(s, 1, &alt);
	if (r < 0)
		return r;
	if (alt == 0 || alt > last)
		alt = last;	/* no usable primary: where the backup lives */
	return gpt_header_at(s, alt, &alt2);
}

static bool mbr_is_extended(uint8_t type)
{
	return type == 0x05 || type == 0x0f || type == 0x85;
}

/*
 * Walk the EBR chain of one extended partition starting at LBA base:
 * copy each EBR in and watch it.  Bounded by PART_MAX_EBR in all, and a
 * link that goes back to a visited EBR ends the walk.
 */
static int ebr_walk(struct scan *s, uint64_t base, uint64_t *seen,
		    unsigned *nseen)
{
	uint64_t cur = base;
	uint8_t e[512];

	for (;;) {
		uint64_t off, next = 0;
		bool linked = false;
		int r;

		if (*nseen >= PART_MAX_EBR) {
			log_warn("part: %s: more than %u logical partitions; "
				 "the rest are ignored", s->c->name,
				 PART_MAX_EBR);
			return 0;
		}
		for (unsigned i = 0; i < *nseen; i++)
			if (seen[i] == cur) {
				log_warn("part: %s: EBR chain loops back to "
					 "LBA %llu", s->c->name,
					 (unsigned long long)cur);
				return 0;
			}
		if (MUL_OVERFLOW(cur, s->ss, &off) ||
		    !range_within(off, s->ss, s->size)) {
			log_warn("part: %s: EBR at LBA %llu lies past the "
				 "disk end", s->c->name,
				 (unsigned long long)cur);
			return 0;
		}
		seen[(*nseen)++] = cur;
		r = chain_pread(s->c, e, sizeof(e), off);
		if (r < 0)
			return r;
		if (e[510] != 0x55 || e[511] != 0xaa)
			return 0;	/* not an EBR: the chain ends */
		watch_add(s, off, s->ss);
		r = copy_in(s, off, s->ss);
		if (r < 0)
			return r;
		for (unsigned i = 0; i < 4; i++) {
			const uint8_t *pe = e + 446 + 16 * i;

			if (mbr_is_extended(pe[4]) && get_le32(pe + 12)) {
				next = get_le32(pe + 8);
				linked = true;
				break;
			}
		}
		if (!linked || ADD_OVERFLOW(base, next, &cur))
			return 0;
	}
}

static int mbr_locate(struct scan *s)
{
	uint64_t seen[PART_MAX_EBR];
	unsigned nseen = 0;
	uint8_t m[512];
	int r;

	r = chain_pread(s->c, m, sizeof(m), 0);
	if (r < 0)
		return r;
	if (m[510] != 0x55 || m[511] != 0xaa)
		return 0;
	for (unsigned i = 0; i < 4; i++) {
		const uint8_t *pe = m + 446 + 16 * i;

		if (mbr_is_extended(pe[4]) && get_le32(pe + 12)) {
			r = ebr_walk(s, get_le32(pe + 8), seen, &nseen);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

/* TYPE and LABEL of what lies inside p (copied into the memfd first). */
static int probe_fs(struct scan *s, struct part *p)
{
	blkid_probe pr;
	const char *v;
	int r;

	r = copy_in(s, p->start, MIN(p->size, PART_FS_HEAD));
	if (r == 0 && p->size > PART_FS_TAIL)
		r = copy_in(s, p->start + p->size - PART_FS_TAIL, PART_FS_TAIL);
	if (r < 0)
		return r;
	pr = blkid_new_probe();
	if (!pr)
		return -ENOMEM;
	if (blkid_probe_set_device(pr, s->fd, (blkid_loff_t)p->start,
				   (blkid_loff_t)p->size) != 0) {
		blkid_free_probe(pr);
		return 0;	/* nothing to learn; not an error */
	}
	blkid_probe_set_sectorsize(pr, s->ss);
	blkid_probe_enable_partitions(pr, 0);
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE |
						      BLKID_SUBLKS_LABEL);
	if (blkid_do_safeprobe(pr) == 0) {
		if (blkid_probe_lookup_value(pr, "TYPE", &v, NULL) == 0)
			copy_str(p->fstype, sizeof(p->fstype), v);
		if (blkid_probe_lookup_value(pr, "LABEL", &v, NULL) == 0)
			copy_str(p->label, sizeof(p->label), v);
	}
	blkid_free_probe(pr);
	return 0;
}

static int part_cmp(const void *a, const void *b)
{
	const struct part *x = a, *y = b;

	return (x->number > y->number) - (x->number < y->number);
}

/* The partition list libblkid found, into t (sorted, checked). */
static int collect(struct scan *s, blkid_partlist ls, struct part_table *t)
{
	blkid_parttable tab = blkid_partlist_get_table(ls);
	int n = blkid_partlist_numof_partitions(ls);

	if (tab) {
		copy_str(t->type, sizeof(t->type), blkid_parttable_get_type(tab));
		copy_str(t->id, sizeof(t->id), blkid_parttable_get_id(tab));
	}
	if (n <= 0)
		return 0;
	t->parts = calloc((size_t)n, sizeof(*t->parts));
	if (!t->parts)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		blkid_partition bp = blkid_partlist_get_partition(ls, i);
		struct part *p = &t->parts[t->nparts];
		blkid_loff_t st, sz;
		int no;
		uint64_t end;

		if (!bp)
			continue;
		/* a nested label (BSD inside MBR, ...) is not the disk's */
		if (tab && blkid_partition_get_table(bp) != tab)
			continue;
		st = blkid_partition_get_start(bp);	/* 512-byte units */
		sz = blkid_partition_get_size(bp);
		no = blkid_partition_get_partno(bp);
		if (st < 0 || sz <= 0 || no <= 0)
			continue;
		if (MUL_OVERFLOW((uint64_t)st, 512, &p->start) ||
		    MUL_OVERFLOW((uint64_t)sz, 512, &p->size) ||
		    ADD_OVERFLOW(p->start, p->size, &end) || end > s->size) {
			log_warn("part: %s: partition %d (sectors %lld+%lld) "
				 "lies past the disk end; left out",
				 s->c->name, no, (long long)st, (long long)sz);
			continue;
		}
		p->number = (unsigned)no;
		if (blkid_partition_get_type_string(bp))
			copy_str(p->type, sizeof(p->type),
				 blkid_partition_get_type_string(bp));
		else
			snprintf(p->type, sizeof(p->type), "0x%02x",
				 (unsigned)blkid_partition_get_type(bp) & 0xff);
		for (char *q = p->type; *q; q++)
			if (*q >= 'A' && *q <= 'F')
				*q = (char)(*q - 'A' + 'a');
		copy_str(p->name, sizeof(p->name), blkid_partition_get_name(bp));
		copy_str(p->uuid, sizeof(p->uuid), blkid_partition_get_uuid(bp));
		p->container = blkid_partition_is_extended(bp) != 0;
		t->nparts++;
	}
	qsort(t->parts, t->nparts, sizeof(*t->parts), part_cmp);
	/* one number, one partition: libblkid never repeats one, but check */
	for (size_t i = 1; i < t->nparts; i++)
		if (t->parts[i].number == t->parts[i - 1].number) {
			log_warn("part: %s: partition number %u twice; the "
				 "second is left out", s->c->name,
				 t->parts[i].number);
			memmove(&t->parts[i], &t->parts[i + 1],
				(t->nparts - i - 1) * sizeof(*t->parts));
			t->nparts--;
			i--;
		}
	for (size_t i = 0; i < t->nparts; i++) {
		int r;

		if (t->parts[i].container)
			continue;
		r = probe_fs(s, &t->parts[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

static int table_probe(struct scan *s, struct part_table *t)
{
	blkid_probe pr = blkid_new_probe();
	blkid_partlist ls;
	int r = 0;

	if (!pr)
		return -ENOMEM;
	if (blkid_probe_set_device(pr, s->fd, 0, (blkid_loff_t)s->size) != 0) {
		log_err("part: %s: libblkid cannot use the probe file",
			s->c->name);
		blkid_free_probe(pr);
		return -EIO;
	}
	blkid_probe_set_sectorsize(pr, s->ss);
	blkid_probe_enable_superblocks(pr, 0);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	ls = blkid_probe_get_partitions(pr);
	if (ls)
		r = collect(s, ls, t);
	blkid_free_probe(pr);
	return r;
}

int part_scan(struct chain *c, struct part_table **out)
{
	struct scan s = { .c = c, .fd = -1, .size = c->size };
	struct part_table *t;
	int r;

	s.ss = c->sector_size;
	if (s.ss < 512 || !is_pow2(s.ss) || s.ss > 65536)
		s.ss = 512;
	t = calloc(1, sizeof(*t));
	s.buf = malloc(PART_COPY_CHUNK);
	if (!t || !s.buf) {
		r = -ENOMEM;
		goto fail;
	}
	t->sector_size = s.ss;
	if (s.size < 2 * (uint64_t)s.ss) {	/* no room for any table */
		free(s.buf);
		*out = t;
		return 0;
	}
	s.fd = memfd_create("layerfs-part", MFD_CLOEXEC);
	if (s.fd < 0) {
		r = -errno;
		log_err("part: %s: memfd_create: %s", c->name, strerror(errno));
		goto fail;
	}
	if (ftruncate(s.fd, (off_t)s.size) < 0) {
		r = -errno;
		log_err("part: %s: cannot size the probe file: %s", c->name,
			strerror(errno));
		goto fail;
	}
	r = copy_in(&s, 0, PART_HEAD_LEN);
	if (r == 0)
		r = copy_in(&s, s.size > PART_HEAD_LEN ? s.size - PART_HEAD_LEN
						       : 0,
			    PART_HEAD_LEN);
	if (r == 0)
		r = gpt_locate(&s);
	if (r == 0)
		r = mbr_locate(&s);
	if (r == 0)
		r = table_probe(&s, t);
	if (r < 0)
		goto fail;
	/* the MBR (or protective MBR) sector always counts */
	watch_add(&s, 0, s.ss);
	if (!t->type[0]) {
		/*
		 * No table yet: where one would appear.  An MBR or a
		 * protective MBR is sector 0 (libblkid finds no GPT without
		 * one), a GPT header and its 128 entries take LBA 1-33, the
		 * backup the last 33 sectors.  Not more: a fresh layer over a
		 * disk without a table takes random writes everywhere, and
		 * each rescan copies the disk's first and last MiB.
		 */
		uint64_t head = MIN(34 * (uint64_t)s.ss, s.size);
		uint64_t tail = MIN(33 * (uint64_t)s.ss, s.size);

		s.nwatch = 0;
		watch_add(&s, 0, head);
		watch_add(&s, s.size - tail, tail);
	}
	t->watch = calloc(s.nwatch ? s.nwatch : 1, sizeof(*t->watch));
	if (!t->watch) {
		r = -ENOMEM;
		goto fail;
	}
	memcpy(t->watch, s.watch, s.nwatch * sizeof(*t->watch));
	t->nwatch = s.nwatch;
	close(s.fd);
	free(s.buf);
	DBG(PART, "part: %s: table \"%s\", %zu partition(s), %zu watched "
		  "range(s)", c->name, t->type, t->nparts, t->nwatch);
	*out = t;
	return 0;
fail:
	if (s.fd >= 0)
		close(s.fd);
	free(s.buf);
	part_table_free(t);
	return r;
}

void part_table_free(struct part_table *t)
{
	if (!t)
		return;
	free(t->parts);
	free(t->watch);
	free(t);
}

bool part_table_touches(const struct part_table *t, uint64_t off,
			uint64_t len)
{
	if (!t || !len)
		return false;
	for (size_t i = 0; i < t->nwatch; i++)
		if (ranges_overlap(off, len, t->watch[i].off, t->watch[i].len))
			return true;
	return false;
}

bool part_table_touches_fs(const struct part_table *t, uint64_t off,
			   uint64_t len)
{
	if (!t || !len)
		return false;
	for (size_t i = 0; i < t->nparts; i++) {
		const struct part *p = &t->parts[i];
		uint64_t tail = p->size > PART_FS_TAIL ? PART_FS_TAIL : p->size;

		if (p->container)
			continue;
		if (ranges_overlap(off, len, p->start, MIN(p->size, PART_FS_HEAD)) ||
		    ranges_overlap(off, len, p->start + p->size - tail, tail))
			return true;
	}
	return false;
}
