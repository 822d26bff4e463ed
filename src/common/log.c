// SPDX-License-Identifier: LGPL-2.1-or-later
/* log.c: messages to stderr or a sink, plus a journal of problems. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define JOURNAL_MAX (64 * 1024)
#define SUMMARY_MAX (4 * 1024 * 1024)	/* some 40000 files */

unsigned log_debug_mask;

static const char *prog = "layerfs";
static log_sink_fn sink;
static int quiet;
static pthread_mutex_t journal_lock = PTHREAD_MUTEX_INITIALIZER;
static char *journal;		/* owned; NUL-terminated */
static size_t journal_len;
static int journal_full;
static char *summary;		/* owned; the summary's lines, NUL-terminated */
static size_t summary_len;
static unsigned summary_files, summary_more;

static const struct {
	const char *name;
	unsigned bit;
} debug_names[] = {
	{ "chain", LOG_CLS_CHAIN }, { "format", LOG_CLS_FORMAT },
	{ "fuse", LOG_CLS_FUSE },   { "io", LOG_CLS_IO },
	{ "part", LOG_CLS_PART },   { "cli", LOG_CLS_CLI },
};

void log_init(const char *progname)
{
	const char *env = getenv("LAYERFS_DEBUG");

	if (progname)
		prog = progname;
	if (!env || !*env)
		return;
	if (!strcmp(env, "all") || !strcmp(env, "1")) {
		log_debug_mask = ~LOG_CLS_IO;
		return;
	}
	for (const char *p = env; *p;) {
		size_t n = strcspn(p, ",");

		for (size_t i = 0; i < ARRAY_SIZE(debug_names); i++)
			if (strlen(debug_names[i].name) == n &&
			    !strncmp(p, debug_names[i].name, n))
				log_debug_mask |= debug_names[i].bit;
		p += n;
		if (*p == ',')
			p++;
	}
}

void log_set_sink(log_sink_fn fn)
{
	sink = fn;
}

void log_set_quiet(int q)
{
	quiet = q;
}

void log_enable_debug(unsigned classes)
{
	log_debug_mask |= classes;
}

static void journal_add(const char *line)
{
	size_t n = strlen(line);

	pthread_mutex_lock(&journal_lock);
	if (journal_full)
		goto out;
	if (journal_len + n + 2 > JOURNAL_MAX) {
		static const char trunc[] = "... (log truncated)\n";
		char *j = realloc(journal, journal_len + sizeof(trunc));

		if (j) {
			journal = j;
			memcpy(journal + journal_len, trunc, sizeof(trunc));
			journal_len += sizeof(trunc) - 1;
		}
		journal_full = 1;
		goto out;
	}
	char *j = realloc(journal, journal_len + n + 2);

	if (!j)
		goto out;
	journal = j;
	memcpy(journal + journal_len, line, n);
	journal[journal_len + n] = '\n';
	journal[journal_len + n + 1] = '\0';
	journal_len += n + 1;
out:
	pthread_mutex_unlock(&journal_lock);
}

static const char *level_name(enum log_level lvl)
{
	switch (lvl) {
	case LOG_LVL_ERR:
		return "error";
	case LOG_LVL_WARN:
		return "warning";
	case LOG_LVL_INFO:
		return "info";
	default:
		return "debug";
	}
}

static void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	char msg[1024];
	int saved = errno;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (lvl <= LOG_LVL_WARN) {
		char line[1100];

		snprintf(line, sizeof(line), "%s: %s", level_name(lvl), msg);
		journal_add(line);
	}
	if (sink) {
		sink(lvl, msg);
	} else if (!(quiet && lvl == LOG_LVL_INFO)) {
		if (lvl == LOG_LVL_INFO)
			fprintf(stderr, "%s: %s\n", prog, msg);
		else
			fprintf(stderr, "%s: %s: %s\n", prog, level_name(lvl),
				msg);
	}
	errno = saved;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(lvl, fmt, ap);
	va_end(ap);
}

int log_err_ret(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERR, fmt, ap);
	va_end(ap);
	return err;
}

void log_summary_add(const char *path, const char *reason)
{
	size_t n = strlen(path) + strlen(reason) + sizeof("left out: : \n");
	char *s;

	pthread_mutex_lock(&journal_lock);
	summary_files++;
	if (summary_len + n > SUMMARY_MAX ||
	    !(s = realloc(summary, summary_len + n))) {
		summary_more++;
		goto out;
	}
	summary = s;
	summary_len += (size_t)snprintf(summary + summary_len, n,
					"left out: %s: %s\n", path, reason);
out:
	pthread_mutex_unlock(&journal_lock);
}

char *log_journal_copy(size_t *len)
{
	char head[64] = "", tail[64] = "";
	size_t hl = 0, tl = 0, total;
	char *copy;

	pthread_mutex_lock(&journal_lock);
	if (summary_files)
		hl = (size_t)snprintf(head, sizeof(head),
				      "summary: %u file(s) left out\n",
				      summary_files);
	if (summary_more)
		tl = (size_t)snprintf(tail, sizeof(tail),
				      "... and %u more\n", summary_more);
	total = journal_len + hl + summary_len + tl;
	copy = malloc(total + 1);
	if (copy) {
		char *p = copy;

		if (journal_len)
			memcpy(p, journal, journal_len);
		p += journal_len;
		memcpy(p, head, hl);
		p += hl;
		if (summary_len)
			memcpy(p, summary, summary_len);
		p += summary_len;
		memcpy(p, tail, tl);
		copy[total] = '\0';
		*len = total;
	}
	pthread_mutex_unlock(&journal_lock);
	return copy;
}

void log_journal_reset(void)
{
	pthread_mutex_lock(&journal_lock);
	free(journal);
	journal = NULL;
	journal_len = 0;
	journal_full = 0;
	free(summary);
	summary = NULL;
	summary_len = 0;
	summary_files = summary_more = 0;
	pthread_mutex_unlock(&journal_lock);
}
