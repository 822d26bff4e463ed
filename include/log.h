/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * log.h: one logging path for the library, the daemon and the CLI.
 *
 * Messages go to stderr (or a sink set by the program) and warnings and
 * errors are also kept in a bounded in-memory journal, which the daemon
 * exposes as the mount's own log.  Debug classes are chosen with
 * LAYERFS_DEBUG=chain,vhd,... or "all" (util-linux style).
 */
#ifndef LAYERFS_LOG_H
#define LAYERFS_LOG_H

#include <stddef.h>

#include "compiler.h"

enum log_level { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

enum log_class {
	LOG_CLS_CHAIN = 1u << 0,
	LOG_CLS_FORMAT = 1u << 1,
	LOG_CLS_FUSE = 1u << 2,
	LOG_CLS_IO = 1u << 3,	/* per-request tracing: never by default */
	LOG_CLS_PART = 1u << 4,
	LOG_CLS_CLI = 1u << 5,
};

typedef void (*log_sink_fn)(enum log_level lvl, const char *msg);

void log_init(const char *progname);
void log_set_sink(log_sink_fn fn);	/* NULL: stderr */
void log_set_quiet(int quiet);		/* suppress INFO on stderr */
void log_enable_debug(unsigned classes);
extern unsigned log_debug_mask;

void log_msg(enum log_level lvl, const char *fmt, ...) __printf(2, 3);

/* Log at ERR and return err (a negative errno), for one-line bail-outs. */
int log_err_ret(int err, const char *fmt, ...) __printf(2, 3);

#define log_err(...) log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define DBG(cls, ...)                                                 \
	do {                                                          \
		if (log_debug_mask & LOG_CLS_##cls)                   \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__);          \
	} while (0)

/* Journal of warnings and errors (bounded; oldest text kept, then a
 * "... truncated" marker).  Returns a malloc'd copy; *len set. */
char *log_journal_copy(size_t *len);
void log_journal_reset(void);
/*
 * The journal's summary: one short line per file a scan left out ("left
 * out: PATH: reason"), kept apart from the journal's cap so that every
 * such file is named even after the journal was cut.  log_journal_copy()
 * ends with it; log_journal_reset() empties it.
 */
void log_summary_add(const char *path, const char *reason);

#endif
