// SPDX-License-Identifier: LGPL-2.1-or-later
/* test-common.c: endian helpers, GUIDs, UTF-16, whole-buffer I/O, log. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "checked.h"
#include "endian-io.h"
#include "fixtures.h"
#include "guid.h"
#include "io.h"
#include "log.h"
#include "utf16.h"

START_TEST(endian_loads_and_stores)
{
	const uint8_t b[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	uint8_t o[8];

	ck_assert_uint_eq(get_le16(b), 0x0201);
	ck_assert_uint_eq(get_be16(b), 0x0102);
	ck_assert_uint_eq(get_le32(b), 0x04030201);
	ck_assert_uint_eq(get_be32(b), 0x01020304);
	ck_assert_uint_eq(get_le64(b), 0x0807060504030201ull);
	ck_assert_uint_eq(get_be64(b), 0x0102030405060708ull);
	/* unaligned */
	ck_assert_uint_eq(get_be32(b + 1), 0x02030405);
	put_be64(o, 0x0102030405060708ull);
	ck_assert_int_eq(memcmp(o, b, 8), 0);
	put_le32(o, 0x04030201);
	ck_assert_int_eq(memcmp(o, b, 4), 0);
}
END_TEST

START_TEST(checked_ranges)
{
	uint64_t r;

	ck_assert(range_within(0, 10, 10));
	ck_assert(!range_within(1, 10, 10));
	ck_assert(!range_within(UINT64_MAX, 2, UINT64_MAX));
	ck_assert(ADD_OVERFLOW(UINT64_MAX, (uint64_t)1, &r));
	ck_assert(MUL_OVERFLOW((uint64_t)1 << 40, (uint64_t)1 << 30, &r));
	ck_assert(!MUL_OVERFLOW((uint64_t)1 << 20, (uint64_t)1 << 30, &r));
	ck_assert(ranges_overlap(0, 10, 9, 1));
	ck_assert(!ranges_overlap(0, 10, 10, 1));
	ck_assert(is_pow2(4096) && !is_pow2(0) && !is_pow2(3));
}
END_TEST

START_TEST(guid_orders_and_text)
{
	/* {01020304-0506-0708-090a-0b0c0d0e0f10} as Windows stores it */
	const uint8_t le[16] = { 4, 3, 2, 1, 6, 5, 8, 7,
				 9, 10, 11, 12, 13, 14, 15, 16 };
	struct guid g, h;
	char s[GUID_STR_LEN + 1];
	uint8_t back[16];

	guid_from_le(&g, le);
	guid_to_str(&g, s);
	ck_assert_str_eq(s, "01020304-0506-0708-090a-0b0c0d0e0f10");
	guid_to_le(&g, back);
	ck_assert_int_eq(memcmp(back, le, 16), 0);
	ck_assert_int_eq(guid_parse("{01020304-0506-0708-090A-0B0C0D0E0F10}",
				    &h), 0);
	ck_assert(guid_equal(&g, &h));
	ck_assert_int_eq(guid_parse("01020304-0506-0708-090a-0b0c0d0e0f10",
				    &h), 0);
	ck_assert(guid_equal(&g, &h));
	ck_assert_int_eq(guid_parse("01020304-0506-0708-090a-0b0c0d0e0f1", &h),
			 -EINVAL);
	ck_assert_int_eq(guid_parse("01020304x0506-0708-090a-0b0c0d0e0f10",
				    &h), -EINVAL);
	ck_assert_int_eq(guid_parse("0102030g-0506-0708-090a-0b0c0d0e0f10",
				    &h), -EINVAL);
	ck_assert_int_eq(guid_parse("{01020304-0506-0708-090a-0b0c0d0e0f10",
				    &h), -EINVAL);
	memset(&h, 0, sizeof(h));
	ck_assert(guid_is_zero(&h) && !guid_is_zero(&g));
}
END_TEST

START_TEST(utf16_round_trip)
{
	/* ".\a€😀" in UTF-16LE, then a NUL and garbage */
	const uint8_t le[] = { '.', 0, '\\', 0, 'a', 0, 0xac, 0x20,
			       0x3d, 0xd8, 0x00, 0xde, 0, 0, 'x', 0 };
	const char *want = ".\\a\xe2\x82\xac\xf0\x9f\x98\x80";
	uint8_t *u16;
	size_t n;
	char *s;

	ck_assert_int_eq(utf16_to_utf8(le, sizeof(le), false, &s), 0);
	ck_assert_str_eq(s, want);
	ck_assert_int_eq(utf8_to_utf16(s, false, &u16, &n), 0);
	ck_assert_uint_eq(n, 12);
	ck_assert_int_eq(memcmp(u16, le, n), 0);
	free(u16);
	ck_assert_int_eq(utf8_to_utf16(s, true, &u16, &n), 0);
	free(s);
	ck_assert_int_eq(utf16_to_utf8(u16, n, true, &s), 0);
	ck_assert_str_eq(s, want);
	free(s);
	free(u16);
}
END_TEST

START_TEST(utf16_rejects_bad_input)
{
	const uint8_t lone_hi[] = { 0x3d, 0xd8, 'a', 0 };
	const uint8_t lone_lo[] = { 0x00, 0xde };
	const uint8_t trailing_hi[] = { 'a', 0, 0x3d, 0xd8 };
	uint8_t *u16;
	size_t n;
	char *s;

	ck_assert_int_eq(utf16_to_utf8(lone_hi, 4, false, &s), -EILSEQ);
	ck_assert_int_eq(utf16_to_utf8(lone_lo, 2, false, &s), -EILSEQ);
	ck_assert_int_eq(utf16_to_utf8(trailing_hi, 4, false, &s), -EILSEQ);
	ck_assert_int_eq(utf16_to_utf8(lone_lo, 1, false, &s), -EILSEQ);
	ck_assert_int_eq(utf8_to_utf16("\xff", false, &u16, &n), -EILSEQ);
	ck_assert_int_eq(utf8_to_utf16("\xc3", false, &u16, &n), -EILSEQ);
	ck_assert_int_eq(utf8_to_utf16("\xed\xa0\x80", false, &u16, &n),
			 -EILSEQ);	/* an encoded surrogate */
	/* empty input is an empty string */
	ck_assert_int_eq(utf16_to_utf8(lone_lo, 0, false, &s), 0);
	ck_assert_str_eq(s, "");
	free(s);
}
END_TEST

START_TEST(io_full_and_short)
{
	char *p = fx_write_file("io.bin", "0123456789", 10);
	uint8_t buf[16];
	int fd = open(p, O_RDWR);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread_full(fd, buf, 10, 0), 0);
	ck_assert_int_eq(memcmp(buf, "0123456789", 10), 0);
	ck_assert_int_eq(pread_full(fd, buf, 11, 0), -ENODATA);
	memset(buf, 0xff, sizeof(buf));
	ck_assert_int_eq(pread_zeropad(fd, buf, 16, 5), 0);
	ck_assert_int_eq(memcmp(buf, "56789", 5), 0);
	for (int i = 5; i < 16; i++)
		ck_assert_int_eq(buf[i], 0);
	ck_assert_int_eq(pwrite_full(fd, "ab", 2, 20), 0);
	ck_assert_int_eq(pread_full(fd, buf, 2, 20), 0);
	ck_assert_int_eq(memcmp(buf, "ab", 2), 0);
	close(fd);
	ck_assert_int_eq(pread_full(fd, buf, 1, 0), -EBADF);
	free(p);
}
END_TEST

/*
 * A layer path checked inside IMAGEDIR, then swapped for a symbolic link
 * that leads out of it, cannot be opened beneath IMAGEDIR's fd.
 */
START_TEST(io_open_beneath_confines)
{
	char *in = fx_path("beneath"), *out = fx_write_file("secret.qcow2",
							     "outside", 7);
	char *sub, *file, *link, buf[8];
	int dirfd, fd;

	ck_assert_int_eq(mkdir(in, 0755), 0);
	ck_assert_int_ge(asprintf(&sub, "%s/sub", in), 0);
	ck_assert_int_eq(mkdir(sub, 0755), 0);
	ck_assert_int_ge(asprintf(&file, "%s/sub/base.qcow2", in), 0);
	fx_pwrite(file, "inside", 6, 0);
	dirfd = open(in, O_PATH | O_DIRECTORY | O_CLOEXEC);
	ck_assert_int_ge(dirfd, 0);

	/* a file and a relative link inside: fine */
	fd = file_open_beneath(dirfd, "sub/base.qcow2", O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread_full(fd, buf, 6, 0), 0);
	ck_assert_int_eq(memcmp(buf, "inside", 6), 0);
	close(fd);
	ck_assert_int_ge(asprintf(&link, "%s/in.qcow2", in), 0);
	ck_assert_int_eq(symlink("sub/base.qcow2", link), 0);
	fd = file_open_beneath(dirfd, "in.qcow2", O_RDONLY);
	ck_assert_int_ge(fd, 0);
	close(fd);

	/* the parent swapped for a link to a file outside: refused */
	ck_assert_int_eq(unlink(file), 0);
	ck_assert_int_eq(symlink(out, file), 0);
	fd = file_open_beneath(dirfd, "sub/base.qcow2", O_RDONLY);
	ck_assert(fd == -EXDEV || fd == -ELOOP);
	fd = file_open_beneath(dirfd, "in.qcow2", O_RDWR);	/* via two links */
	ck_assert(fd == -EXDEV || fd == -ELOOP);
	/* a relative link that climbs out, "..", absolute paths: refused */
	ck_assert_int_eq(unlink(file), 0);
	ck_assert_int_eq(symlink("../../secret.qcow2", file), 0);
	ck_assert_int_eq(file_open_beneath(dirfd, "sub/base.qcow2", O_RDONLY),
			 -EXDEV);
	ck_assert_int_eq(file_open_beneath(dirfd, "../secret.qcow2", O_RDONLY),
			 -EXDEV);
	ck_assert_int_eq(file_open_beneath(dirfd, out, O_RDONLY), -EXDEV);
	ck_assert_int_eq(file_open_beneath(dirfd, "", O_RDONLY), -EXDEV);
	ck_assert_int_eq(file_open_beneath(dirfd, "nothere", O_RDONLY),
			 -ENOENT);
	close(dirfd);
	free(link);
	free(file);
	free(sub);
	free(out);
	free(in);
}
END_TEST

START_TEST(log_journal_keeps_problems)
{
	size_t len;
	char *j;

	log_journal_reset();
	log_set_quiet(1);
	log_info("an info line");
	log_warn("%s: a warning", "x.vhd");
	ck_assert_int_eq(log_err_ret(-EIO, "%s: an error", "y.vhd"), -EIO);
	j = log_journal_copy(&len);
	ck_assert_str_eq(j, "warning: x.vhd: a warning\nerror: y.vhd: an error\n");
	ck_assert_uint_eq(len, strlen(j));
	free(j);
	/* bounded: a flood ends in one truncation marker */
	for (int i = 0; i < 5000; i++)
		log_warn("flood line %d with some padding to fill it", i);
	j = log_journal_copy(&len);
	ck_assert_uint_le(len, 64 * 1024 + 64);
	ck_assert_ptr_nonnull(strstr(j, "(log truncated)"));
	free(j);
	/* the summary of files left out survives the cut, each one named */
	for (int i = 0; i < 3000; i++) {
		char name[32];

		snprintf(name, sizeof(name), "d/f%04d.qcow2", i);
		log_summary_add(name, "parent not found");
	}
	j = log_journal_copy(&len);
	ck_assert_uint_eq(len, strlen(j));
	ck_assert_ptr_nonnull(strstr(j, "(log truncated)\nsummary: 3000 file(s) "
				     "left out\nleft out: d/f0000.qcow2: "
				     "parent not found\n"));
	ck_assert_ptr_nonnull(strstr(j, "\nleft out: d/f2999.qcow2: parent "
				     "not found\n"));
	free(j);
	log_journal_reset();
	j = log_journal_copy(&len);
	ck_assert_str_eq(j, "");
	free(j);
	log_journal_reset();
}
END_TEST

/* How many ".NAME.layerfs-tmp-*" files dir holds */
static int count_tmps(const char *dir, const char *name)
{
	char pre[256];
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	snprintf(pre, sizeof(pre), ".%s" ATOMIC_FILE_TAG, name);
	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)))
		n += !strncmp(de->d_name, pre, strlen(pre));
	closedir(d);
	return n;
}

START_TEST(atomic_file_crash_and_clean)
{
	const char *dir = fx_tmpdir();
	struct atomic_file af, af2;
	char *path;
	int fd2;

	ck_assert_int_ge(asprintf(&path, "%s/new.vhd", dir), 0);
	/* committed: the name appears, the temporary is gone */
	ck_assert_int_eq(atomic_file_begin(path, &af, "test"), 0);
	ck_assert_int_eq(pwrite_full(af.fd, "data", 4, 0), 0);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 1);
	ck_assert_int_eq(atomic_file_commit(&af, "test"), 0);
	ck_assert_int_eq(access(path, F_OK), 0);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 0);
	/* an existing name is refused, before and at the rename */
	ck_assert_int_eq(atomic_file_begin(path, &af, "test"), -EEXIST);
	unlink(path);
	ck_assert_int_eq(atomic_file_begin(path, &af, "test"), 0);
	ck_assert_int_eq(open(path, O_WRONLY | O_CREAT | O_EXCL, 0644) >= 0, 1);
	ck_assert_int_eq(atomic_file_commit(&af, "test"), -EEXIST);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 0);
	unlink(path);

	/* a crash: commit never runs; no file under the name */
	ck_assert_int_eq(atomic_file_begin(path, &af, "test"), 0);
	ck_assert_int_eq(access(path, F_OK), -1);
	/* its creator holds the lock: not removed */
	ck_assert_int_eq(atomic_dir_clean(dir), 0);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 1);
	/* another fd on the temporary holding the lock keeps it too */
	fd2 = open(af.tmp, O_RDWR);
	ck_assert_int_ge(fd2, 0);
	close(af.fd);		/* the creator dies: its lock goes */
	{
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };

		ck_assert_int_eq(fcntl(fd2, F_OFD_SETLK, &fl), 0);
	}
	ck_assert_int_eq(atomic_dir_clean(dir), 0);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 1);
	close(fd2);
	/* nobody holds it: the next writable opener removes it */
	ck_assert_int_eq(atomic_dir_clean(dir), 1);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 0);
	ck_assert_int_eq(access(path, F_OK), -1);
	free(af.tmp);
	free(af.path);

	/* abort removes the temporary at once */
	ck_assert_int_eq(atomic_file_begin(path, &af2, "test"), 0);
	atomic_file_abort(&af2);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 0);
	ck_assert_int_eq(access(path, F_OK), -1);

	/* file_create(): the drivers' hooks go through the same path */
	fd2 = file_create(path, "test");
	ck_assert_int_ge(fd2, 0);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_int_eq(file_create_end(fd2, path, -EIO, "test"), -EIO);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_int_eq(count_tmps(dir, "new.vhd"), 0);
	fd2 = file_create(path, "test");
	ck_assert_int_ge(fd2, 0);
	ck_assert_int_eq(file_create_end(fd2, path, 0, "test"), 0);
	ck_assert_int_eq(access(path, F_OK), 0);
	unlink(path);
	free(path);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("common");
	TCase *tc = tcase_create("common");

	tcase_add_test(tc, endian_loads_and_stores);
	tcase_add_test(tc, checked_ranges);
	tcase_add_test(tc, guid_orders_and_text);
	tcase_add_test(tc, utf16_round_trip);
	tcase_add_test(tc, utf16_rejects_bad_input);
	tcase_add_test(tc, io_full_and_short);
	tcase_add_test(tc, io_open_beneath_confines);
	tcase_add_test(tc, log_journal_keeps_problems);
	tcase_add_test(tc, atomic_file_crash_and_clean);
	suite_add_tcase(s, tc);
	return s;
}
