// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * vhdx/log.c: replaying a VHDX metadata log in memory (MS-VHDX 2.3).
 *
 * The log is a circular buffer of 4 KiB sectors holding entries: a header
 * ("loge"), descriptors ("desc" for one 4 KiB file sector, whose bytes
 * follow in a "data" sector, or "zero" for a run of zeroed sectors) and
 * the data sectors.  Entries of one log sequence follow each other in
 * the buffer with sequence numbers that grow by one; the newest entry
 * (the head) names the oldest one still needed (its Tail).  The active
 * sequence is the valid one with the highest head sequence number.
 *
 * A writer that crashed left the file's metadata (BAT, bitmaps, metadata
 * region) as it was before the active sequence, so every reader has to
 * replay it.  A read-only open must not write the file, so the replayed
 * sectors are kept here as an overlay that every read of the file goes
 * through (MS-VHDX Appendix A note: replay in memory for read-only).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "compiler.h"
#include "crc32c.h"
#include "endian-io.h"
#include "io.h"
#include "log.h"
#include "img.h"
#include "vhdx.h"

#define vhdx_err(err, path, fmt, ...) \
	log_err_ret(err, "vhdx: %s: " fmt, path, ##__VA_ARGS__)

struct log_entry {
	uint32_t pos;		/* first sector in the log */
	uint32_t nsec;		/* EntryLength / 4 KiB */
	uint32_t tail;		/* sector of the sequence's tail */
	uint32_t ndesc;
	uint64_t seq;
	uint64_t flushed;	/* FlushedFileOffset */
	uint64_t last;		/* LastFileOffset */
	int64_t succ;		/* the next entry of the sequence, or -1 */
	int64_t end;		/* the last entry reached through succ */
	size_t dist;		/* entries from here to end */
};

struct log_scan {
	const uint8_t *log;
	uint32_t nsect;		/* 4 KiB sectors in the log */
	struct log_entry *e;	/* owned */
	size_t ne;
	int64_t *at;		/* owned: sector -> entry index, or -1 */
	uint8_t *torn;		/* owned: sector holds a "loge" header with
				 * our LogGuid that fails its checksum */
	uint64_t crc_budget;	/* bytes left to checksum while searching */
};

struct log_op {
	uint64_t off, len;
	const uint8_t *data;	/* a 4 KiB page, or NULL for zeros */
};

static const uint8_t *sector(const struct log_scan *ls, uint64_t i)
{
	return ls->log + (i % ls->nsect) * VHDX_LOG_SECTOR;
}

static uint64_t desc_sectors(uint32_t ndesc)
{
	/* the 64-byte header and 32-byte descriptors, in 4 KiB sectors */
	return (64 + 32 * (uint64_t)ndesc + VHDX_LOG_SECTOR - 1) /
	       VHDX_LOG_SECTOR;
}

static bool entry_crc_ok(const struct log_scan *ls, uint32_t pos,
			 uint32_t nsec)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
	(void)ls, (void)pos, (void)nsec;
	return true;
#else
	static const uint8_t zero[4];
	const uint8_t *p = sector(ls, pos);
	uint32_t c;

	/* 2.3.1.1: over the whole entry, the Checksum field taken as 0 */
	c = crc32c(0, p, 4);
	c = crc32c(c, zero, 4);
	c = crc32c(c, p + 8, VHDX_LOG_SECTOR - 8);
	for (uint32_t k = 1; k < nsec; k++)
		c = crc32c(c, sector(ls, (uint64_t)pos + k), VHDX_LOG_SECTOR);
	return c == get_le32(p + 4);
#endif
}

static int seq_desc(const void *a, const void *b, void *arg)
{
	const struct log_entry *e = arg;
	uint64_t x = e[*(const size_t *)a].seq, y = e[*(const size_t *)b].seq;

	return x > y ? -1 : x < y;
}

/*
 * Following succ from any entry leads to exactly one last entry (the
 * sequence numbers only grow): note it and the distance, newest first,
 * so checking a head's tail costs nothing.
 */
static int chain_ends(struct log_scan *ls)
{
	size_t *order = malloc(ls->ne * sizeof(*order) + 1);

	if (!order)
		return -ENOMEM;
	for (size_t k = 0; k < ls->ne; k++)
		order[k] = k;
	qsort_r(order, ls->ne, sizeof(*order), seq_desc, ls->e);
	for (size_t k = 0; k < ls->ne; k++) {
		struct log_entry *e = &ls->e[order[k]];

		if (e->succ < 0) {
			e->end = (int64_t)order[k];
			e->dist = 0;
		} else {	/* a higher sequence number: done already */
			e->end = ls->e[e->succ].end;
			e->dist = ls->e[e->succ].dist + 1;
		}
	}
	free(order);
	return 0;
}

/* Collect the valid entries that carry log_guid (2.3.1.1). */
static int scan_entries(struct log_scan *ls, const struct guid *log_guid,
			uint64_t log_len)
{
	ls->e = calloc(ls->nsect, sizeof(*ls->e));
	ls->at = malloc(ls->nsect * sizeof(*ls->at));
	ls->torn = calloc(ls->nsect, 1);
	if (!ls->e || !ls->at || !ls->torn)
		return -ENOMEM;
	for (uint32_t i = 0; i < ls->nsect; i++) {
		struct log_entry *e = &ls->e[ls->ne];
		struct vhdx_log_hdr h;
		uint32_t len;

		ls->at[i] = -1;
		vhdx_log_entry_decode(sector(ls, i), &h);
		if (!h.is_entry)
			continue;
		if (!guid_equal(&h.log_guid, log_guid))
			continue;	/* an older log's leftovers */
		len = h.entry_length;
		e->pos = i;
		e->nsec = len / VHDX_LOG_SECTOR;
		e->tail = h.tail / VHDX_LOG_SECTOR;
		e->seq = h.sequence;
		e->ndesc = h.descriptor_count;
		e->flushed = h.flushed_file_offset;
		e->last = h.last_file_offset;
		e->succ = -1;
		if (len == 0 || len % VHDX_LOG_SECTOR || len > log_len ||
		    e->seq == 0 || h.tail % VHDX_LOG_SECTOR ||
		    h.tail >= log_len || desc_sectors(e->ndesc) > e->nsec)
			continue;	/* not an entry header */
		/* Real entries barely overlap; headers that each claim most
		 * of the log would make the search quadratic. */
		if (len > ls->crc_budget)
			return -E2BIG;
		ls->crc_budget -= len;
		if (!entry_crc_ok(ls, i, e->nsec)) {
			ls->torn[i] = 1;
			continue;
		}
		ls->at[i] = (int64_t)ls->ne++;
	}
	for (size_t k = 0; k < ls->ne; k++) {
		struct log_entry *e = &ls->e[k];
		int64_t n = ls->at[((uint64_t)e->pos + e->nsec) % ls->nsect];

		if (n >= 0 && ls->e[n].seq == e->seq + 1)
			e->succ = n;
	}
	return chain_ends(ls);
}

/*
 * The entries from the tail a head names to that head.  Returns their
 * number (the sequence is valid), or 0 and *broken, the log sector where
 * the chain of entries from the tail stops short of the head.
 */
static size_t sequence_len(const struct log_scan *ls, size_t head,
			   uint32_t *broken)
{
	int64_t t = ls->at[ls->e[head].tail];
	const struct log_entry *end;

	if (t < 0) {
		*broken = ls->e[head].tail;
		return 0;
	}
	if (ls->e[t].end == (int64_t)head)
		return ls->e[t].dist + 1;
	end = &ls->e[ls->e[t].end];
	*broken = (uint32_t)(((uint64_t)end->pos + end->nsec) % ls->nsect);
	return 0;
}

/* Decode the descriptors of one entry into ops (data pages into *pages). */
static int entry_ops(const char *path, const struct log_scan *ls,
		     const struct log_entry *e, struct log_op *ops, size_t *nops,
		     uint8_t **pages, uint64_t log_off, uint64_t log_len,
		     uint64_t *end)
{
	uint64_t dsec = desc_sectors(e->ndesc), ndata = 0;

	for (uint32_t j = 0; j < e->ndesc; j++) {
		uint64_t byte = 64 + 32 * (uint64_t)j;
		struct log_op *op = &ops[*nops];
		struct vhdx_log_desc d;
		uint64_t off, len, stop;

		vhdx_log_desc_decode(sector(ls, e->pos + byte / VHDX_LOG_SECTOR) +
				     byte % VHDX_LOG_SECTOR, &d);
		off = d.file_offset;
		if (d.sequence != e->seq)
			return vhdx_err(-EUCLEAN, path,
					"log descriptor %u of entry %llu has "
					"sequence number %llu", j,
					(unsigned long long)e->seq,
					(unsigned long long)d.sequence);
		if (off % VHDX_LOG_SECTOR)
			return vhdx_err(-EUCLEAN, path,
					"log descriptor %u of entry %llu: "
					"unaligned file offset (%llu)", j,
					(unsigned long long)e->seq,
					(unsigned long long)off);
		if (d.kind == VHDX_LOG_DESC_ZERO) {
			len = d.zero_length;
			if (len % VHDX_LOG_SECTOR)
				return vhdx_err(-EUCLEAN, path,
						"log zero descriptor of entry "
						"%llu: bad length (%llu)",
						(unsigned long long)e->seq,
						(unsigned long long)len);
			op->data = NULL;
		} else if (d.kind == VHDX_LOG_DESC_DATA) {
			const struct vhdx_log_data_raw *ds;
			uint8_t *page = *pages;

			if (dsec + ndata >= e->nsec)
				return vhdx_err(-EUCLEAN, path,
						"log entry %llu has more data "
						"descriptors than data sectors "
						"(%u)", (unsigned long long)e->seq,
						e->ndesc);
			ds = (const void *)sector(ls, e->pos + dsec + ndata);
			ndata++;
			if (!vhdx_log_data_ok((const uint8_t *)ds, e->seq))
				return vhdx_err(-EUCLEAN, path,
						"bad log data sector in entry "
						"%llu (descriptor %u)",
						(unsigned long long)e->seq, j);
			/* 2.3.1.3: the sector's first 8 and last 4 bytes are
			 * kept in the descriptor */
			memcpy(page, d.leading, 8);
			memcpy(page + 8, ds->data, VHDX_LOG_DATA_LEN);
			memcpy(page + 8 + VHDX_LOG_DATA_LEN, d.trailing, 4);
			*pages += VHDX_LOG_SECTOR;
			len = VHDX_LOG_SECTOR;
			op->data = page;
		} else {
			return vhdx_err(-EUCLEAN, path,
					"bad log descriptor signature in entry "
					"%llu (descriptor %u)",
					(unsigned long long)e->seq, j);
		}
		if (ADD_OVERFLOW(off, len, &stop) || stop > VHDX_FILE_MAX)
			return vhdx_err(-EUCLEAN, path,
					"log descriptor out of bounds (offset "
					"%llu)", (unsigned long long)off);
		if (!len)
			continue;	/* an empty zero run changes nothing */
		if (ranges_overlap(off, len, VHDX_HEADER1_OFF,
				   VHDX_REGION1_OFF - VHDX_HEADER1_OFF) ||
		    ranges_overlap(off, len, log_off, log_len))
			return vhdx_err(-EUCLEAN, path,
					"log descriptor writes over the headers "
					"or the log (offset %llu)",
					(unsigned long long)off);
		op->off = off;
		op->len = len;
		*end = MAX(*end, stop);
		(*nops)++;
	}
	return 0;
}

/* ---- the overlay: last writer wins, as a sorted list of extents ---- */

struct sweep_ev {
	uint64_t pos;
	uint32_t op;
	bool start;
};

static int ev_cmp(const void *a, const void *b)
{
	const struct sweep_ev *x = a, *y = b;

	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static void heap_push(uint32_t *h, size_t *n, uint32_t v)
{
	size_t i = (*n)++;

	while (i && h[(i - 1) / 2] < v) {	/* a later op wins */
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = v;
}

static void heap_pop(uint32_t *h, size_t *n)
{
	uint32_t v = h[--(*n)];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= *n)
			break;
		if (c + 1 < *n && h[c + 1] > h[c])
			c++;
		if (h[c] <= v)
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = v;
}

static int overlay_build(const struct log_op *ops, size_t nops,
			 struct vhdx_overlay *ov)
{
	struct sweep_ev *ev = malloc(2 * nops * sizeof(*ev) + 1);
	uint32_t *heap = malloc(nops * sizeof(*heap) + 1);
	uint8_t *ended = calloc(nops + 1, 1);
	size_t nev = 0, hn = 0;
	int r = -ENOMEM;

	ov->ext = malloc(2 * nops * sizeof(*ov->ext) + 1);
	if (!ev || !heap || !ended || !ov->ext)
		goto out;
	for (size_t i = 0; i < nops; i++) {
		ev[nev++] = (struct sweep_ev){ ops[i].off, (uint32_t)i, true };
		ev[nev++] = (struct sweep_ev){ ops[i].off + ops[i].len,
					       (uint32_t)i, false };
	}
	qsort(ev, nev, sizeof(*ev), ev_cmp);
	for (size_t i = 0; i < nev;) {
		uint64_t pos = ev[i].pos;
		const struct log_op *w;
		struct vhdx_overlay_ext *last;

		for (; i < nev && ev[i].pos == pos; i++) {
			if (ev[i].start)
				heap_push(heap, &hn, ev[i].op);
			else
				ended[ev[i].op] = 1;
		}
		while (hn && ended[heap[0]])
			heap_pop(heap, &hn);
		if (!hn || i == nev)
			continue;
		/* [pos, next) is covered by op heap[0] and no later one;
		 * all bounds are 4 KiB aligned, so a data op covers it
		 * exactly */
		w = &ops[heap[0]];
		last = ov->n ? &ov->ext[ov->n - 1] : NULL;
		if (!w->data && last && !last->data &&
		    last->off + last->len == pos) {
			last->len += ev[i].pos - pos;
			continue;
		}
		ov->ext[ov->n++] = (struct vhdx_overlay_ext){
			pos, ev[i].pos - pos, w->data };
	}
	r = 0;
out:
	free(ev);
	free(heap);
	free(ended);
	return r;
}

static void scan_free(struct log_scan *ls)
{
	free(ls->e);
	free(ls->at);
	free(ls->torn);
}

int vhdx_log_build(const char *path, const uint8_t *log, uint64_t log_len,
		   uint64_t log_off, const struct guid *log_guid,
		   uint64_t file_size, struct vhdx_overlay *ov)
{
	struct log_scan ls = { .log = log };
	struct vhdx_overlay out = { .end = file_size };
	struct log_op *ops = NULL;
	int64_t head = -1, bad = -1;
	size_t count = 0, nops = 0, total = 0;
	uint64_t sectors = 0;
	uint32_t bad_at = 0;
	uint8_t *pages;
	int r;

	if (log_len < VHDX_LOG_SECTOR || log_len % VHDX_LOG_SECTOR ||
	    log_len / VHDX_LOG_SECTOR > UINT32_MAX)
		return vhdx_err(-EUCLEAN, path, "bad log length (%llu)",
				(unsigned long long)log_len);
	ls.nsect = (uint32_t)(log_len / VHDX_LOG_SECTOR);
	ls.crc_budget = 8 * log_len;
	r = scan_entries(&ls, log_guid, log_len);
	if (r == -E2BIG)
		r = vhdx_err(-EUCLEAN, path, "log holds too many overlapping "
			     "entries to search (%llu bytes)",
			     (unsigned long long)log_len);
	if (r < 0)
		goto out;
	/* Heads end a run of entries; each must lead back to its tail. */
	for (size_t k = 0; k < ls.ne; k++) {
		uint32_t broken = 0;
		size_t n;

		if (ls.e[k].succ >= 0)
			continue;	/* not a head */
		n = sequence_len(&ls, k, &broken);
		if (n && (head < 0 || ls.e[k].seq > ls.e[head].seq)) {
			head = (int64_t)k;
			count = n;
		} else if (!n && (bad < 0 || ls.e[k].seq > ls.e[bad].seq)) {
			bad = (int64_t)k;
			bad_at = broken;
		}
	}
	if (bad >= 0 && (head < 0 || ls.e[bad].seq > ls.e[head].seq)) {
		/* The newest sequence does not hold together: something
		 * between its tail and its head was damaged after it was
		 * written.  Replaying less would show stale metadata. */
		r = vhdx_err(ls.torn[bad_at] ? -EBADMSG : -EUCLEAN, path,
			     "log sequence ending at entry %llu is broken at "
			     "log offset %llu%s", (unsigned long long)
			     ls.e[bad].seq,
			     (unsigned long long)bad_at * VHDX_LOG_SECTOR,
			     ls.torn[bad_at] ? " (checksum mismatch)" : "");
		goto out;
	}
	if (head < 0) {
		/* Nothing complete was logged (at most a torn first entry,
		 * which was never applied): the file is as it was. */
		log_warn("vhdx: %s: log GUID set but no complete log entry "
			 "carries it; nothing to replay (%zu entries)", path,
			 ls.ne);
		r = 0;
		goto out;
	}
	/* Descriptors of the sequence, tail to head: the entries of one
	 * sequence never overlap, so they fit in the log together. */
	for (int64_t k = ls.at[ls.e[head].tail], i = 0; i < (int64_t)count;
	     k = ls.e[k].succ, i++) {
		total += ls.e[k].ndesc;
		sectors += ls.e[k].nsec;
		if (sectors > ls.nsect) {
			r = vhdx_err(-EUCLEAN, path, "log sequence ending at "
				     "entry %llu is longer than the log (%llu "
				     "sectors)", (unsigned long long)
				     ls.e[head].seq,
				     (unsigned long long)sectors);
			goto out;
		}
		if (ls.e[k].flushed > file_size) {
			r = vhdx_err(-EUCLEAN, path,
				     "file is shorter than the log says it "
				     "was (%llu)",
				     (unsigned long long)ls.e[k].flushed);
			goto out;
		}
	}
	if (ls.e[head].last > VHDX_FILE_MAX) {
		r = vhdx_err(-EUCLEAN, path, "bad last file offset in log (%llu)",
			     (unsigned long long)ls.e[head].last);
		goto out;
	}
	/* at most 128 descriptors a log sector, and one data sector each
	 * for the "desc" ones: both bounded by the log size */
	ops = malloc(total * sizeof(*ops) + 1);
	out.pages = malloc(MIN(total, (size_t)ls.nsect) * VHDX_LOG_SECTOR + 1);
	r = -ENOMEM;
	if (!ops || !out.pages)
		goto out;
	pages = out.pages;
	out.end = MAX(file_size, ls.e[head].last);
	for (int64_t k = ls.at[ls.e[head].tail], i = 0; i < (int64_t)count;
	     k = ls.e[k].succ, i++) {
		r = entry_ops(path, &ls, &ls.e[k], ops, &nops, &pages, log_off,
			      log_len, &out.end);
		if (r < 0)
			goto out;
	}
	r = overlay_build(ops, nops, &out);
	if (r < 0)
		goto out;
	out.entries = (unsigned)count;
	*ov = out;
	out.ext = NULL;
	out.pages = NULL;
out:
	vhdx_overlay_free(&out);
	free(ops);
	scan_free(&ls);
	return r;
}

int vhdx_log_replay(struct vhdx *s)
{
	uint64_t len = s->hdr.log_length;
	uint8_t *buf;
	int r;

	if (len > VHDX_LOG_CAP)
		return vhdx_err(-EFBIG, s->path, "log too large to replay "
				"(%llu)", (unsigned long long)len);
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	/* in bounds: checked with the header */
	r = pread_full(s->fd, buf, len, s->hdr.log_offset);
	if (r < 0) {
		free(buf);
		return vhdx_err(r == -ENODATA ? -EUCLEAN : r, s->path,
				"cannot read the log (%llu)",
				(unsigned long long)s->hdr.log_offset);
	}
	r = vhdx_log_build(s->path, buf, len, s->hdr.log_offset,
			   &s->hdr.log_guid, s->file_size, &s->log);
	free(buf);
	if (r < 0 || !s->log.entries)
		return r;
	s->eff_size = s->log.end;
	log_info("vhdx: %s: replayed %u log entries in memory (file not "
		 "modified)", s->path, s->log.entries);
	return 0;
}

/* Index of the first extent that ends after off. */
static size_t overlay_find(const struct vhdx_overlay *ov, uint64_t off)
{
	size_t lo = 0, hi = ov->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ov->ext[mid].off + ov->ext[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void vhdx_overlay_apply(const struct vhdx_overlay *ov, uint8_t *buf,
			size_t n, uint64_t off)
{
	for (size_t i = overlay_find(ov, off);
	     i < ov->n && ov->ext[i].off < off + n; i++) {
		const struct vhdx_overlay_ext *x = &ov->ext[i];
		uint64_t a = MAX(off, x->off);
		uint64_t b = MIN(off + n, x->off + x->len);

		if (x->data)
			memcpy(buf + (a - off), x->data + (a - x->off), b - a);
		else
			memset(buf + (a - off), 0, b - a);
	}
}

bool vhdx_overlay_touches(const struct vhdx_overlay *ov, uint64_t off,
			  uint64_t len)
{
	size_t i = overlay_find(ov, off);

	return i < ov->n && ov->ext[i].off < off + len;
}

void vhdx_overlay_free(struct vhdx_overlay *ov)
{
	free(ov->ext);
	free(ov->pages);
	ov->ext = NULL;
	ov->pages = NULL;
	ov->n = 0;
}

int vhdx_file_read(const struct vhdx *s, void *buf, size_t n, uint64_t off)
{
	/* a writable image's file grows (write.c) */
	uint64_t eff = __atomic_load_n(&s->eff_size, __ATOMIC_ACQUIRE);
	uint64_t real = __atomic_load_n(&s->file_size, __ATOMIC_ACQUIRE);
	int r;

	if (!range_within(off, n, eff))
		return vhdx_err(-EIO, s->path, "read past the end (%llu)",
				(unsigned long long)off);
	if (off + n <= real)
		r = pread_full(s->fd, buf, n, off);
	else	/* the replay extends the file: zeros past its real end */
		r = pread_zeropad(s->fd, buf, n, off);
	if (r == -ENODATA)
		return vhdx_err(-EIO, s->path, "file shrank under us (%llu)",
				(unsigned long long)off);
	if (r < 0)
		return vhdx_err(r, s->path, "read error at %llu: %s",
				(unsigned long long)off, strerror(-r));
	vhdx_overlay_apply(&s->log, buf, n, off);
	return 0;
}

int vhdx_log_info(const struct img *img, struct vhdx_log_info *out)
{
	const struct vhdx *s;

	if (!img || !img->priv)
		return -EINVAL;
	s = img->priv;
	out->dirty = !guid_is_zero(&s->hdr.log_guid);
	out->log_guid = s->hdr.log_guid;
	out->log_offset = s->hdr.log_offset;
	out->log_length = s->hdr.log_length;
	out->entries = s->log.entries;
	return 0;
}
