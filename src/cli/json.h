/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * json.h: a small streaming JSON writer for layerimg's --json output.
 *
 * The writer tracks nesting and commas; the caller opens and closes
 * objects and arrays in order and names every member of an object (key)
 * and none of an array (key NULL).  Strings are escaped per RFC 8259:
 * '"', '\\' and control characters are escaped, and bytes that are not
 * valid UTF-8 (file names are bytes) become U+FFFD, so the output is
 * always valid JSON in UTF-8.  Output is indented two spaces per level.
 */
#ifndef LAYERFS_CLI_JSON_H
#define LAYERFS_CLI_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 32

struct json {
	FILE *f;		/* borrowed */
	unsigned depth;
	bool first[JSON_MAX_DEPTH];	/* no member written yet at a level */
	bool inline_;		/* compact: one line, no indentation */
};

void json_init(struct json *j, FILE *f, bool compact);
void json_obj_begin(struct json *j, const char *key);
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
/* s NULL writes null */
void json_str(struct json *j, const char *key, const char *s);
void json_u64(struct json *j, const char *key, uint64_t v);
void json_i64(struct json *j, const char *key, int64_t v);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);
/* End the document with a newline. */
void json_end(struct json *j);

/* Write s as a JSON string literal (quotes included) to f. */
void json_write_string(FILE *f, const char *s);

#endif
