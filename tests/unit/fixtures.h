/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* fixtures.h: helpers shared by the unit tests. */
#ifndef LAYERFS_TEST_FIXTURES_H
#define LAYERFS_TEST_FIXTURES_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

Suite *unit_suite(void);

/* A fresh private directory (removed with its files at exit). */
const char *fx_tmpdir(void);
/* dir/name as a malloc'd string */
char *fx_path(const char *name);
/* Write a whole file in the private directory; returns its path. */
char *fx_write_file(const char *name, const void *data, size_t len);
/* Make a sparse file of len bytes and write data at off. */
void fx_pwrite(const char *path, const void *data, size_t len, uint64_t off);
/* Read a whole file; *len set; NULL if missing */
uint8_t *fx_read_file(const char *path, size_t *len);
/* Path of a file under ../shared/vectors, or NULL if that folder is absent */
char *fx_vector(const char *rel);
/* Deterministic pseudo-random bytes */
void fx_fill_random(void *buf, size_t len, uint32_t seed);
/* Run a shell command; returns its exit status (-1 if it could not run). */
int fx_system(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
