// SPDX-License-Identifier: LGPL-2.1-or-later
/* util.c: helpers shared by layerimg's subcommands. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "cli.h"
#include "compiler.h"
#include "img.h"
#include "log.h"

static const char *cli_cmd;	/* borrowed: the command's name */
static bool cli_quiet;

void cli_set_command(const char *name)
{
	cli_cmd = name;
}

void cli_set_quiet(bool quiet)
{
	cli_quiet = quiet;
}

static void cli_vprint(const char *tag, const char *fmt, va_list ap)
{
	if (cli_cmd)
		fprintf(stderr, "layerimg: %s: %s", cli_cmd, tag);
	else
		fprintf(stderr, "layerimg: %s", tag);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void cli_print(const char *tag, const char *fmt, ...) __printf(2, 3);
static void cli_print(const char *tag, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cli_vprint(tag, fmt, ap);
	va_end(ap);
}

void cli_log_sink(enum log_level lvl, const char *msg)
{
	switch (lvl) {
	case LOG_LVL_ERR:
		cli_print("error: ", "%s", msg);
		break;
	case LOG_LVL_WARN:
		cli_print("warning: ", "%s", msg);
		break;
	case LOG_LVL_INFO:
		if (!cli_quiet)
			cli_print("", "%s", msg);
		break;
	default:
		cli_print("debug: ", "%s", msg);
		break;
	}
}

void cli_verror(const char *fmt, va_list ap)
{
	cli_vprint("error: ", fmt, ap);
}

void cli_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cli_vprint("error: ", fmt, ap);
	va_end(ap);
}

int cli_try_help(void)
{
	fprintf(stderr, "Try 'layerimg %s%s--help' for more information.\n",
		cli_cmd ? cli_cmd : "", cli_cmd ? " " : "");
	return CLI_USAGE;
}

/* The multiplier of a size suffix (qemu's set: b, k, m, g, t, p, e), or 0 */
static uint64_t size_suffix(char c)
{
	static const char units[] = "KMGTPE";
	const char *u;
	uint64_t mul = 1;

	if (c == 'b' || c == 'B')
		return 1;
	if (c >= 'a' && c <= 'z')
		c = (char)(c - 'a' + 'A');
	u = c ? strchr(units, c) : NULL;
	if (!u)
		return 0;
	for (const char *p = units; p <= u; p++)
		mul *= 1024;
	return mul;
}

int cli_parse_size(const char *s, uint64_t *out)
{
	unsigned __int128 frac = 0, scale = 1, v128;
	const char *p = s;
	uint64_t v = 0, mul = 1;
	bool digits = false, has_frac = false;

	if (!s)
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++, digits = true)
		if (MUL_OVERFLOW(v, 10, &v) ||
		    ADD_OVERFLOW(v, (uint64_t)(*p - '0'), &v))
			return -ERANGE;
	if (*p == '.') {
		has_frac = true;
		for (p++; *p >= '0' && *p <= '9'; p++, digits = true) {
			if (scale > (unsigned __int128)UINT64_MAX)
				continue;	/* beyond a byte: ignored */
			frac = frac * 10 + (unsigned)(*p - '0');
			scale *= 10;
		}
	}
	if (!digits)
		return -EINVAL;
	if (*p) {
		mul = size_suffix(*p);
		if (!mul)
			return -EINVAL;
		p++;
		/* layerimg's own spellings: KiB, KB (not after a b/B) */
		if (mul > 1 && (!strcasecmp(p, "iB") || !strcasecmp(p, "B")))
			p += strlen(p);
	} else if (has_frac) {
		return -EINVAL;	/* "1.5" without a unit, as qemu-img */
	}
	if (*p || (has_frac && mul == 1))
		return -EINVAL;
	v128 = (unsigned __int128)v * mul + frac * mul / scale;
	if (v128 > (unsigned __int128)UINT64_MAX)
		return -ERANGE;
	*out = (uint64_t)v128;
	return 0;
}

int cli_parse_size32(const char *what, const char *s, uint32_t *out)
{
	uint64_t v;

	if (cli_parse_size(s, &v) < 0 || v == 0 || v > UINT32_MAX) {
		cli_error("bad %s '%s'", what, s);
		return -EINVAL;
	}
	*out = (uint32_t)v;
	return 0;
}

int cli_parse_create_opts(char *list, struct img_create_opts *o)
{
	char *save = NULL;

	for (char *kv = strtok_r(list, ",", &save); kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *val = strchr(kv, '=');

		if (val)
			*val++ = '\0';
		if ((!strcmp(kv, "block_size") || !strcmp(kv, "cluster_size")) &&
		    val) {
			if (cli_parse_size32(kv, val, &o->block_size) < 0)
				return -EINVAL;
		} else if (!strcmp(kv, "sector_size") && val) {
			if (cli_parse_size32(kv, val, &o->sector_size) < 0)
				return -EINVAL;
		} else if (!strcmp(kv, "fixed") && !val) {
			o->fixed = true;
		} else if (!strcmp(kv, "subformat") && val &&
			   (!strcmp(val, "fixed") || !strcmp(val, "dynamic"))) {
			o->fixed = !strcmp(val, "fixed");
		} else if (!strcmp(kv, "preallocation") && val &&
			   (!strcmp(val, "off") || !strcmp(val, "metadata") ||
			    !strcmp(val, "full") || !strcmp(val, "falloc"))) {
			o->fixed = strcmp(val, "off") != 0;
		} else {
			cli_error("unknown option '%s%s%s' in -o", kv,
				  val ? "=" : "", val ? val : "");
			return -EINVAL;
		}
	}
	return 0;
}

int cli_parse_output(const char *arg, bool *json)
{
	if (!strcmp(arg, "json")) {
		*json = true;
	} else if (!strcmp(arg, "human")) {
		*json = false;
	} else {
		cli_error("--output must be 'human' or 'json', not '%s'", arg);
		return -EINVAL;
	}
	return 0;
}

const char *cli_format_name(const char *name)
{
	if (!strcmp(name, "vpc"))	/* qemu's name for VHD */
		return "vhd";
	return name;
}

int cli_format_expect(const char *path, const char *fmt, bool allow_unknown)
{
	const char *name = cli_format_name(fmt);
	const struct img_driver *want = img_driver_find(name), *got;

	if (!want) {
		cli_error("unknown format '%s' (qcow2, qcow, vhd or vpc, vhdx, "
			  "asparse, raw)", fmt);
		return -EINVAL;
	}
	got = img_probe_file(path);
	if (!got || got == want)
		return 0;	/* unreadable: opening it says why */
	if (allow_unknown && !strcmp(got->name, "raw"))
		return 0;
	log_err("%s: is a %s image, not %s (-f %s)", path, got->name, name,
		fmt);
	return -EINVAL;
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
			uint64_t total, int mode)
{
	p->on = mode == CLI_PROGRESS_ON ||
		(mode == CLI_PROGRESS_AUTO && isatty(STDERR_FILENO));
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

int cli_lock_image(struct img *img, enum imglock_mode mode, bool force_share)
{
	char why[IMGLOCK_WHY_MAX];
	int r;

	if (!force_share) {
		r = imglock_img_take(img, mode);
		if (r == -EBUSY && mode == IMGLOCK_READ)
			log_info("%s: -U (--force-share) reads it anyway",
				 img->path);
		return r;
	}
	if (mode == IMGLOCK_WRITE)
		return log_err_ret(-EINVAL, "%s: --force-share cannot be used "
				   "to write", img->path);
	/* qemu-img -U: hold nothing, share everything; warn about a writer */
	r = imglock_fd_test(img->fd, IMGLOCK_PERM_CONSISTENT_READ,
			    IMGLOCK_SHARED_DEFAULT, why, sizeof(why));
	if (r == -EBUSY)
		log_warn("%s: %s; reading it anyway (--force-share): what it "
			 "shows may be changing", img->path, why);
	return 0;
}

int cli_lock_chain(struct chain *c, unsigned first, bool force_share)
{
	for (unsigned i = first; i < c->depth; i++) {
		int r = cli_lock_image(c->layers[i].img, IMGLOCK_READ,
				       force_share);

		if (r < 0)
			return r;
	}
	return 0;
}

void cli_log_drop(enum log_level lvl __unused, const char *msg __unused)
{
}
