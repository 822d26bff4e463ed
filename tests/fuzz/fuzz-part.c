// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * fuzz-part.c: libFuzzer target for the partition scan (src/part/part.c):
 * what it copies of a disk into its private memfd (MBR, EBR chains, GPT
 * headers and entry arrays wherever the headers put them, partition heads
 * and tails, all bounded by the disk) and what it makes of libblkid's
 * answer.
 *
 * An input describes a disk:
 *   bytes 0-3   disk size in sectors, LE32 (at least 2)
 *   byte  4     bit 0: 4096-byte sectors, else 512
 *   bytes 5-7   head length, LE24: that many payload bytes lie at the
 *               start of the disk, the rest of the payload at its end
 *   bytes 8-    payload; everything else reads as zeros
 * so a seed is a real disk's first and last sectors (a GPT's primary and
 * backup), however large the disk.  part_scan reads the disk through
 * chain_pread, which this file provides over the input (no image format,
 * no chain underneath).  Built outside meson by build-part.sh.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "endian-io.h"
#include "fuzz-common.h"
#include "log.h"
#include "part.h"

static const uint8_t *head, *tail;	/* the input's two parts */
static size_t head_len, tail_len;
static uint64_t disk_size;

/* Copy the part of [boff, boff + blen) that overlaps [off, off + n). */
static void overlay(uint8_t *buf, size_t n, uint64_t off, const uint8_t *b,
		    uint64_t boff, size_t blen)
{
	uint64_t lo = off > boff ? off : boff;
	uint64_t hi = off + n < boff + blen ? off + n : boff + blen;

	if (lo < hi)
		memcpy(buf + (lo - off), b + (lo - boff), (size_t)(hi - lo));
}

/* The disk: head at 0, tail at the end, zeros between (and past it). */
int chain_pread(struct chain *c, void *buf, size_t n, uint64_t off)
{
	(void)c;
	memset(buf, 0, n);
	overlay(buf, n, off, head, 0, head_len);
	overlay(buf, n, off, tail, disk_size - tail_len, tail_len);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct chain c;
	struct part_table *t;
	uint32_t ss;
	uint64_t sectors;
	size_t pay;

	if (!ready) {
		fuzz_log_init("fuzz-part");
		ready = true;
	}
	if (size < 8)
		return 0;
	sectors = get_le32(data);
	ss = data[4] & 1 ? 4096 : 512;
	if (sectors < 2)
		sectors = 2;
	disk_size = sectors * ss;	/* at most 2^44 */
	pay = size - 8;
	head_len = get_le32(data + 4) >> 8;
	if (head_len > pay)
		head_len = pay;
	if (head_len > disk_size)
		head_len = (size_t)disk_size;
	tail_len = pay - head_len;
	if (tail_len > disk_size - head_len)
		tail_len = (size_t)(disk_size - head_len);
	head = data + 8;
	tail = data + 8 + head_len;

	memset(&c, 0, sizeof(c));
	c.name = (char *)"fuzz";
	c.size = disk_size;
	c.sector_size = ss;
	if (part_scan(&c, &t) < 0)
		return 0;
	for (size_t i = 0; i < t->nparts; i++) {
		const struct part *p = &t->parts[i];

		if (p->size > disk_size || p->start > disk_size - p->size)
			abort();	/* a partition outside the disk */
		(void)part_table_touches(t, p->start, 1);
		(void)part_table_touches_fs(t, p->start + p->size - 1, 1);
	}
	for (size_t i = 0; i < t->nwatch; i++)
		if (t->watch[i].len > disk_size ||
		    t->watch[i].off > disk_size - t->watch[i].len)
			abort();	/* a watched range outside the disk */
	part_table_free(t);
	return 0;
}
