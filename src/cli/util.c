// SPDX-License-Identifier: LGPL-2.1-or-later
/* util.c: helpers shared by layerimg's subcommands. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "cli.h"
#include "compiler.h"
#include "log.h"

int cli_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGTP";
	char *end;
	uint64_t v, mul = 1;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	if (*end) {
		const char *u = strchr(units, *end >= 'a' ? *end - 32 : *end);

		if (!u || !*u)
			return -EINVAL;
		for (const char *p = units; p <= u; p++)
			mul *= 1024;
		end++;
		if (!strcasecmp(end, "iB") || !strcasecmp(end, "B"))
			end += strlen(end);
	}
	if (*end || MUL_OVERFLOW(v, mul, &v))
		return -EINVAL;
	*out = v;
	return 0;
}

int cli_chain_open(const char *path, const char *name,
		   const struct chain_opts *o, struct cli_chain *out)
{
	struct stat st;
	int r;

	memset(out, 0, sizeof(*out));
	if (stat(path, &st) < 0)
		return log_err_ret(-errno, "%s: %s", path, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return chain_open_file(path, NULL, o, &out->c);

	r = chainset_scan(path, o, &out->cs);
	if (r < 0)
		return r;
	for (size_t i = 0; i < out->cs->nchains; i++) {
		struct chain *c = out->cs->chains[i];

		if (name ? !strcmp(c->name, name) : out->cs->nchains == 1) {
			out->c = c;
			return 0;
		}
	}
	r = name ? log_err_ret(-ENOENT, "%s: no chain named '%s'", path, name)
		 : log_err_ret(-EINVAL, "%s: %zu chains: name one", path,
			       out->cs->nchains);
	chainset_free(out->cs);
	out->cs = NULL;
	return r;
}

void cli_chain_close(struct cli_chain *cc)
{
	if (cc->cs)
		chainset_free(cc->cs);
	else if (cc->c)
		chain_free(cc->c);
	cc->cs = NULL;
	cc->c = NULL;
}

void cli_progress_start(struct cli_progress *p, const char *what,
			uint64_t total, bool enable)
{
	p->on = enable && isatty(STDERR_FILENO);
	p->total = total;
	p->last_pct = -1;
	p->what = what;
	cli_progress_update(p, 0);
}

void cli_progress_update(struct cli_progress *p, uint64_t done)
{
	int pct;

	if (!p->on)
		return;
	pct = p->total ? (int)(done * 100 / p->total) : 100;
	if (pct == p->last_pct)
		return;
	p->last_pct = pct;
	fprintf(stderr, "\r%s: [%-40.*s] %3d%%", p->what, pct * 40 / 100,
		"########################################", pct);
	fflush(stderr);
}

void cli_progress_end(struct cli_progress *p)
{
	if (!p->on)
		return;
	cli_progress_update(p, p->total);
	fputc('\n', stderr);
}

bool cli_chain_option(int ch, struct chain_opts *o)
{
	switch (ch) {
	case CLI_OPT_ALLOW_OUTSIDE:
		o->allow_outside = true;
		return true;
	case CLI_OPT_IGNORE_PARENT_ID:
		o->ignore_parent_id = true;
		return true;
	default:
		return false;
	}
}

void cli_log_drop(enum log_level lvl __unused, const char *msg __unused)
{
}
