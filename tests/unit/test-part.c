// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-part.c: part_scan against partition tables written by sfdisk and
 * fdisk, read back through a chain and compared with what sfdisk --json
 * (or fdisk -l for 4096-byte sectors) reports for the same file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "compiler.h"
#include "endian-io.h"
#include "fixtures.h"
#include "img.h"
#include "part.h"

#define MiB ((uint64_t)1 << 20)

static struct chain_opts opts;

/*
 * The oracle: "NUMBER START SIZE TYPE NAME" per partition (bytes, type
 * as 0xNN or a lower-case GUID), from sfdisk --json (ss 512) or
 * fdisk -b 4096 -l (ss 4096), into path.out.
 */
static const char oracle_py[] =
	"import json, re, subprocess, sys\n"
	"path, ss = sys.argv[1], int(sys.argv[2])\n"
	"def typ(t):\n"
	"    t = t.lower()\n"
	"    return t if '-' in t else '0x%02x' % int(t, 16)\n"
	"if ss == 512:\n"
	"    j = json.loads(subprocess.check_output(['sfdisk', '--json', path]))\n"
	"    pt = j['partitiontable']\n"
	"    print('TABLE', pt['label'])\n"
	"    for p in pt['partitions']:\n"
	"        n = re.search(r'(\\d+)$', p['node']).group(1)\n"
	"        print(n, p['start'] * ss, p['size'] * ss, typ(p['type']),\n"
	"              p.get('name', ''))\n"
	"else:\n"
	"    out = subprocess.check_output(['fdisk', '-b', str(ss), '-l', '-o',\n"
	"        'Device,Start,Sectors,Type-UUID,Name', path], text=True)\n"
	"    print('TABLE gpt')\n"
	"    rows = False\n"
	"    for l in out.splitlines():\n"
	"        if l.startswith('Device'):\n"
	"            rows = True\n"
	"            continue\n"
	"        if rows and l.strip():\n"
	"            f = l.split(None, 4)\n"
	"            n = re.search(r'(\\d+)$', f[0]).group(1)\n"
	"            print(n, int(f[1]) * ss, int(f[2]) * ss, typ(f[3]),\n"
	"                  f[4] if len(f) > 4 else '')\n";

static char *run_oracle(const char *disk, unsigned ss)
{
	char *py = fx_path("oracle.py"), *out = NULL, *txt;
	size_t len;

	free(fx_write_file("oracle.py", oracle_py, strlen(oracle_py)));
	ck_assert_int_ge(asprintf(&out, "%s.out", disk), 0);
	ck_assert_int_eq(fx_system("python3 '%s' '%s' %u >'%s'", py, disk, ss,
				   out),
			 0);
	txt = (char *)fx_read_file(out, &len);
	ck_assert_ptr_nonnull(txt);
	txt = realloc(txt, len + 1);
	txt[len] = '\0';
	free(py);
	free(out);
	return txt;
}

/* Compare a scan with the oracle's lines, partition by partition. */
static void expect_like_oracle(const struct part_table *t, const char *disk,
			       unsigned ss)
{
	char *txt = run_oracle(disk, ss), *save = NULL, *line;
	size_t i = 0;

	for (line = strtok_r(txt, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		unsigned n;
		unsigned long long st, sz;
		char type[64], name[160] = "";

		if (!strncmp(line, "TABLE ", 6)) {
			ck_assert_str_eq(t->type, line + 6);
			continue;
		}
		ck_assert_int_ge(sscanf(line, "%u %llu %llu %63s %159[^\n]", &n,
					&st, &sz, type, name),
				 4);
		ck_assert_uint_lt(i, t->nparts);
		ck_assert_uint_eq(t->parts[i].number, n);
		ck_assert_uint_eq(t->parts[i].start, st);
		ck_assert_uint_eq(t->parts[i].size, sz);
		ck_assert_str_eq(t->parts[i].type, type);
		ck_assert_str_eq(t->parts[i].name, name);
		i++;
	}
	ck_assert_uint_eq(i, t->nparts);
	free(txt);
}

static struct part_table *scan_file(const char *path, uint32_t want_ss)
{
	struct chain *c;
	struct part_table *t = NULL;

	ck_assert_int_eq(chain_open_file(path, NULL, &opts, &c), 0);
	ck_assert_uint_eq(c->sector_size, want_ss);
	ck_assert_int_eq(part_scan(c, &t), 0);
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_eq(t->sector_size, want_ss);
	chain_free(c);
	return t;
}

static char *blank_disk(const char *name, uint64_t size)
{
	char *p = fx_path(name);

	ck_assert_int_eq(fx_system("rm -f '%s' && truncate -s %llu '%s'", p,
				   (unsigned long long)size, p),
			 0);
	return p;
}

START_TEST(gpt_512_like_sfdisk)
{
	char *d = blank_disk("gpt.img", 64 * MiB);
	char *fsimg = fx_path("fs.ext4");
	struct part_table *t;

	ck_assert_int_eq(
		fx_system("printf 'label: gpt\\n"
			  "size=8M, name=\"EFI system\", type=U\\n"
			  "size=16M, name=\"root/fs\"\\n"
			  "size=4M, type=S\\n"
			  "size=5M, name=\"data\"\\n' | sfdisk -q '%s'",
			  d),
		0);
	/* an ext4 file system with a label in partition 2 */
	ck_assert_int_eq(fx_system("mkfs.ext4 -q -F -L rootlbl '%s' 16M >/dev/null && "
				   "dd if='%s' of='%s' bs=1M seek=9 "
				   "conv=notrunc status=none",
				   fsimg, fsimg, d),
			 0);
	t = scan_file(d, 512);
	ck_assert_str_eq(t->type, "gpt");
	ck_assert_uint_eq(t->nparts, 4);
	expect_like_oracle(t, d, 512);
	ck_assert_uint_eq(t->parts[1].start, 9 * MiB);
	ck_assert_str_eq(t->parts[1].fstype, "ext4");
	ck_assert_str_eq(t->parts[1].label, "rootlbl");
	ck_assert_str_eq(t->parts[0].fstype, "");
	ck_assert_uint_eq(strlen(t->parts[0].uuid), 36);
	ck_assert_uint_eq(strlen(t->id), 36);
	/* watched: pMBR, primary header + entries, backup entries + header */
	ck_assert(part_table_touches(t, 0, 1));
	ck_assert(part_table_touches(t, 512, 512));
	ck_assert(part_table_touches(t, 1024, 1));
	ck_assert(part_table_touches(t, 33 * 512, 512));
	ck_assert(part_table_touches(t, 64 * MiB - 512, 512));
	ck_assert(part_table_touches(t, 64 * MiB - 33 * 512, 512));
	/* but not partition data */
	ck_assert(!part_table_touches(t, 9 * MiB, 1 * MiB));
	ck_assert(!part_table_touches(t, 40 * MiB, 0));
	part_table_free(t);
	free(d);
	free(fsimg);
}
END_TEST

START_TEST(mbr_logicals_like_sfdisk)
{
	char *d = blank_disk("mbr.img", 64 * MiB);
	struct part_table *t;

	ck_assert_int_eq(
		fx_system("printf 'label: dos\\n"
			  "start=2048, size=8M, type=83\\n"
			  "start=18432, size=40M, type=5\\n"
			  "start=20480, size=4M, type=83\\n"
			  "start=30720, size=6M, type=82\\n"
			  "start=45056, size=3M, type=7\\n' | sfdisk -q '%s'",
			  d),
		0);
	t = scan_file(d, 512);
	ck_assert_str_eq(t->type, "dos");
	ck_assert_uint_eq(t->nparts, 5);
	expect_like_oracle(t, d, 512);
	ck_assert(t->parts[1].container);
	ck_assert(!t->parts[2].container);
	ck_assert_uint_eq(t->parts[2].number, 5);
	ck_assert_uint_eq(t->parts[4].number, 7);
	/* the EBRs sit one sector before each logical (sfdisk's layout) */
	ck_assert(part_table_touches(t, 18432 * 512, 512));
	/* the MBR and three EBRs, each inside the extended partition and
	 * in front of the logical it describes */
	ck_assert_uint_eq(t->nwatch, 4);
	for (size_t i = 0; i < t->nwatch; i++) {
		const struct part_range *w = &t->watch[i];

		if (w->off == 0)
			continue;
		ck_assert_uint_ge(w->off, t->parts[1].start);
		ck_assert_uint_lt(w->off, t->parts[1].start + t->parts[1].size);
		ck_assert_uint_eq(w->len, 512);
	}
	ck_assert(!part_table_touches(t, 2048 * 512, 512));
	part_table_free(t);
	free(d);
}
END_TEST

/* Copy a raw file's non-zero 64 KiB chunks into an open, writable chain */
static void raw_into_chain(struct chain *c, const char *raw)
{
	size_t len;
	uint8_t *buf = fx_read_file(raw, &len);

	ck_assert_ptr_nonnull(buf);
	ck_assert_uint_le(len, c->size);
	for (size_t off = 0; off < len; off += 65536) {
		size_t n = MIN(len - off, (size_t)65536);
		bool zero = true;

		for (size_t i = 0; i < n && zero; i++)
			zero = buf[off + i] == 0;
		if (!zero)
			ck_assert_int_eq(chain_pwrite(c, buf + off, n, off), 0);
	}
	ck_assert_int_eq(chain_flush(c), 0);
	free(buf);
}

START_TEST(gpt_4096_in_vhdx)
{
	char *raw = blank_disk("gpt4k.raw", 64 * MiB);
	char *vdir = fx_path("v4k");
	char *vhdx = fx_path("v4k/gpt4k.vhdx");
	struct chainset *cs;
	const struct img_driver *drv = img_driver_find("vhdx");
	struct img_create_opts co = { .size = 64 * MiB, .sector_size = 4096 };
	struct chain_opts wo = opts;
	struct chain *c;
	struct part_table *t;

	/* fdisk knows 4096-byte sectors for a file (sfdisk 2.38 does not) */
	ck_assert_int_eq(fx_system("printf 'g\\nn\\n1\\n\\n+8M\\nn\\n2\\n\\n"
				   "+16M\\nn\\n3\\n\\n+2M\\nx\\nn\\n1\\nalpha\\n"
				   "n\\n2\\nbeta two\\nr\\nw\\n' | "
				   "fdisk -b 4096 '%s' >/dev/null",
				   raw),
			 0);
	ck_assert_ptr_nonnull(drv);
	ck_assert_ptr_nonnull(drv->create);
	ck_assert_int_eq(mkdir(vdir, 0755), 0);
	ck_assert_int_eq(drv->create(vhdx, &co), 0);
	/* a writable chain comes from a directory scan with -o rw */
	wo.writable = true;
	wo.rw_base = "gpt4k";	/* a base: written only when named */
	ck_assert_int_eq(chainset_scan(vdir, &wo, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 1);
	c = cs->chains[0];
	ck_assert(c->writable);
	ck_assert_uint_eq(c->sector_size, 4096);
	raw_into_chain(c, raw);
	chainset_free(cs);

	t = scan_file(vhdx, 4096);
	ck_assert_str_eq(t->type, "gpt");
	ck_assert_uint_eq(t->nparts, 3);
	expect_like_oracle(t, raw, 4096);
	ck_assert_str_eq(t->parts[1].name, "beta two");
	/* headers at LBA 1 and the last LBA, in 4096-byte sectors */
	ck_assert(part_table_touches(t, 4096, 1));
	ck_assert(part_table_touches(t, 64 * MiB - 4096, 1));
	part_table_free(t);

	/* the same bytes read with 512-byte sectors hold no valid GPT */
	t = scan_file(raw, 512);
	ck_assert_uint_eq(t->nparts, 0);
	part_table_free(t);
	free(raw);
	free(vdir);
	free(vhdx);
}
END_TEST

START_TEST(no_table_watches_both_ends)
{
	char *d = blank_disk("empty.img", 16 * MiB);
	struct part_table *t = scan_file(d, 512);

	ck_assert_str_eq(t->type, "");
	ck_assert_uint_eq(t->nparts, 0);
	/* sector 0, a GPT header and entries (LBA 1-33), the backup GPT
	 * (last 33 sectors); nothing else, so that random writes into a
	 * disk without a table do not keep rescanning it */
	ck_assert(part_table_touches(t, 0, 512));
	ck_assert(part_table_touches(t, 33 * 512 + 511, 1));
	ck_assert(!part_table_touches(t, 34 * 512, 512));
	ck_assert(!part_table_touches(t, MiB - 1, 1));
	ck_assert(part_table_touches(t, 16 * MiB - 33 * 512, 1));
	ck_assert(!part_table_touches(t, 16 * MiB - 34 * 512, 512));
	ck_assert(part_table_touches(t, 16 * MiB - 512, 512));
	ck_assert(!part_table_touches(t, 8 * MiB, MiB));
	part_table_free(t);
	free(d);
}
END_TEST

static void mbr_entry(uint8_t *sec, unsigned slot, uint8_t type, uint32_t lba,
		      uint32_t n)
{
	uint8_t *e = sec + 446 + 16 * slot;

	e[4] = type;
	put_le32(e + 8, lba);
	put_le32(e + 12, n);
	sec[510] = 0x55;
	sec[511] = 0xaa;
}

/* Hand-made tables: damage an independent tool would refuse to write. */
START_TEST(untrusted_tables)
{
	char *d = blank_disk("bad.img", 16 * MiB);
	uint8_t s[512] = { 0 }, e[512] = { 0 };
	struct part_table *t;

	/* p1 fits; p2 runs past the 16 MiB end (32768 sectors) */
	mbr_entry(s, 0, 0x83, 2048, 2048);
	mbr_entry(s, 1, 0x83, 8192, 65536);
	/* p3: an extended partition whose EBR links back to itself */
	mbr_entry(s, 2, 0x05, 20480, 8192);
	mbr_entry(e, 0, 0x83, 2048, 1024);	/* logical at 20480 + 2048 */
	mbr_entry(e, 1, 0x05, 0, 8192);		/* next EBR: itself */
	put_le32(s + 440, 0x12345678);
	fx_pwrite(d, s, sizeof(s), 0);
	fx_pwrite(d, e, sizeof(e), 20480 * 512);
	t = scan_file(d, 512);
	ck_assert_str_eq(t->type, "dos");
	for (size_t i = 0; i < t->nparts; i++) {
		ck_assert_uint_le(t->parts[i].start + t->parts[i].size,
				  16 * MiB);
		ck_assert_uint_ne(t->parts[i].number, 2);
	}
	ck_assert_uint_ge(t->nparts, 2);
	ck_assert_uint_eq(t->parts[0].number, 1);
	ck_assert_uint_eq(t->parts[0].start, 2048 * 512);
	ck_assert_uint_eq(t->parts[0].size, 2048 * 512);
	ck_assert_uint_eq(t->parts[1].number, 3);
	ck_assert(t->parts[1].container);
	ck_assert(part_table_touches(t, 20480 * 512, 1));
	part_table_free(t);

	/* an extended partition whose EBR lies past the disk end */
	memset(s, 0, sizeof(s));
	mbr_entry(s, 0, 0x0f, 1u << 30, 8);
	fx_pwrite(d, s, sizeof(s), 0);
	t = scan_file(d, 512);
	ck_assert_uint_eq(t->nparts, 0);
	part_table_free(t);

	/* a GPT header whose entry array points far outside the disk */
	ck_assert_int_eq(fx_system("printf 'label: gpt\\nsize=1M\\n' | "
				   "sfdisk -q '%s'",
				   d),
			 0);
	memset(s, 0, sizeof(s));
	put_le64(s, 0);
	{
		int fd = open(d, O_RDWR);
		uint8_t h[512];

		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(pread(fd, h, 512, 512), 512);
		put_le64(h + 72, UINT64_MAX / 256);	/* entries LBA */
		put_le32(h + 80, 0xffffffffu);		/* entries */
		ck_assert_int_eq(pwrite(fd, h, 512, 512), 512);
		close(fd);
	}
	t = scan_file(d, 512);	/* the backup GPT still describes p1 */
	ck_assert_str_eq(t->type, "gpt");
	ck_assert_uint_eq(t->nparts, 1);
	ck_assert_uint_eq(t->parts[0].size, MiB);
	part_table_free(t);
	free(d);
}
END_TEST

START_TEST(tiny_disk)
{
	char *d = blank_disk("tiny.img", 512);
	struct part_table *t = scan_file(d, 512);

	ck_assert_uint_eq(t->nparts, 0);
	ck_assert_str_eq(t->type, "");
	part_table_free(t);
	free(d);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("part");
	TCase *tc = tcase_create("part");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, gpt_512_like_sfdisk);
	tcase_add_test(tc, mbr_logicals_like_sfdisk);
	tcase_add_test(tc, gpt_4096_in_vhdx);
	tcase_add_test(tc, no_table_watches_both_ends);
	tcase_add_test(tc, untrusted_tables);
	tcase_add_test(tc, tiny_disk);
	suite_add_tcase(s, tc);
	return s;
}
