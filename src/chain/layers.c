// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * layers.c: the L0-L9 layer naming rules (layerfs-layers(7)).
 *
 * Pure string work: no I/O and no logging.  The chain resolver parses the
 * tag of every image it opens, checks each one and each child/parent pair,
 * and decides whether a violation is a warning or an error.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "layers.h"

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';	/* ASCII, whatever the locale */
}

static bool is_sep(char c)
{
	return c == '-' || c == '_' || c == '.';
}

/*
 * Is the token [tok, tok + n) a tag?  "L<d>", "L<d><nn>" or "<d><nn>"
 * ('l' too), with nn 01..99; "3", "L30", "L10", "300" and "L300" are not.
 * t->level and t->seq are set only if it is.
 */
static bool tag_token(const char *tok, size_t n, struct layer_tag *t)
{
	bool has_l = n && (tok[0] == 'L' || tok[0] == 'l');
	const char *d = tok + has_l;
	size_t nd = n - has_l;
	int seq;

	for (size_t i = 0; i < nd; i++)
		if (!is_digit(d[i]))
			return false;
	if (nd == 1 && has_l) {		/* "L3": a plain level */
		t->level = d[0] - '0';
		t->seq = -1;
		return true;
	}
	if (nd != 3)		/* the L is optional only for "dnn" */
		return false;
	seq = (d[1] - '0') * 10 + (d[2] - '0');
	if (seq == 0)		/* "d00" is not a sequence number */
		return false;
	t->level = d[0] - '0';
	t->seq = seq;
	return true;
}

void layer_tag_parse(const char *name, struct layer_tag *t)
{
	const char *base, *stem_end, *tok;
	struct layer_tag r = { .tagged = false, .level = -1, .seq = -1 };

	assert(name);
	base = strrchr(name, '/');
	base = base ? base + 1 : name;

	/*
	 * The stem ends at the last '.', but leading dots belong to the stem
	 * (".L3" has no extension), as in Python's os.path.splitext().
	 */
	stem_end = strrchr(base, '.');
	if (!stem_end || strspn(base, ".") > (size_t)(stem_end - base))
		stem_end = base + strlen(base);

	for (tok = stem_end; tok > base && !is_sep(tok[-1]); tok--)
		;
	r.tagged = tag_token(tok, (size_t)(stem_end - tok), &r);
	*t = r;
}

void layer_tag_format(const struct layer_tag *t, char *buf, size_t len)
{
	if (!len)
		return;
	if (!t->tagged)
		buf[0] = '\0';
	else if (t->seq < 0)
		snprintf(buf, len, "L%d", t->level);
	else
		snprintf(buf, len, "L%d%02d", t->level, t->seq);
}

/* Write the verdict: "" and true when fine; the message and false if not */
static bool __printf(3, 4) verdict(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!len)
		return fmt == NULL;
	buf[0] = '\0';
	if (!fmt)
		return true;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return false;
}

bool layer_check_self(const struct layer_tag *t, char *buf, size_t len)
{
	char tag[LAYER_TAG_MAX];

	if (t->tagged && t->level == 0 && t->seq >= 0) {
		layer_tag_format(t, tag, sizeof(tag));
		return verdict(buf, len, "L0 has no differencing images (%s)",
			       tag);
	}
	return verdict(buf, len, NULL);
}

bool layer_check_pair(const struct layer_tag *child,
		      const struct layer_tag *parent, char *buf, size_t len)
{
	char c[LAYER_TAG_MAX], p[LAYER_TAG_MAX];

	if (!child->tagged || !parent->tagged)
		return verdict(buf, len, NULL);	/* no rule applies */
	if (parent->level < child->level)
		return verdict(buf, len, NULL);	/* L3 over L2, L301/L205 */

	layer_tag_format(child, c, sizeof(c));
	layer_tag_format(parent, p, sizeof(p));
	if (parent->level > child->level)
		return verdict(buf, len, "parent %s is a higher level than %s",
			       p, c);
	/* Same level: only a "dnn" child, over Ld or a lower dmm. */
	if (child->seq < 0)
		return verdict(buf, len,
			       "parent %s is not a lower level than %s", p, c);
	if (parent->seq >= child->seq)
		return verdict(buf, len,
			       "same-level parent %s is not a lower sequence than %s",
			       p, c);
	return verdict(buf, len, NULL);	/* L301 over L3, L305 over L302 */
}

/* The candidate tag number k (0, 1, ...) for mode over t; false: no more */
static bool next_candidate(const struct layer_tag *t, enum layer_next mode,
			   int k, char *cand, size_t len)
{
	int seq;

	if (!t->tagged) {	/* every mode: <stem>-L1, then -L101... */
		if (k >= 100)
			return false;
		snprintf(cand, len, k ? "-L1%02d" : "-L1", k);
		return true;
	}
	switch (mode) {
	case LAYER_NEXT_LEVEL:
		if (k > 0 || t->level >= 9)
			return false;
		snprintf(cand, len, "L%u", (unsigned)t->level + 1);
		return true;
	case LAYER_NEXT_DIFF:
		if (t->level == 0)	/* L0 has no differencing images */
			return false;
		/* fall through */
	case LAYER_NEXT_DEFAULT:
		if (t->seq > 0 || t->level == 9 || mode == LAYER_NEXT_DIFF) {
			seq = (t->seq > 0 ? t->seq : 0) + 1 + k;
			if (seq > 99)
				return false;
			snprintf(cand, len, "L%u%02u", (unsigned)t->level % 10,
				 (unsigned)seq % 100);	/* both in range */
		} else if (k == 0) {
			snprintf(cand, len, "L%d", t->level + 1);
		} else if (k < 100 && t->level > 0) {	/* L0 has no L0nn */
			snprintf(cand, len, "L%u%02u", (unsigned)t->level % 10,
				 (unsigned)k % 100);
		} else {
			return false;
		}
		return true;
	}
	return false;
}

char *layer_next_name(const char *top_name, const char *ext,
		      enum layer_next mode,
		      bool (*taken)(void *ctx, const char *stem), void *ctx)
{
	const char *base = strrchr(top_name, '/'), *dot;
	struct layer_tag t;
	char *name = NULL;
	size_t stem_len, prefix;

	base = base ? base + 1 : top_name;
	dot = strrchr(base, '.');
	stem_len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
	layer_tag_parse(base, &t);
	prefix = stem_len;
	/* the tag is the stem's last token; keep what stands before it */
	if (t.tagged) {
		while (prefix > 0 && !is_sep(base[prefix - 1]))
			prefix--;
	}
	for (int k = 0; !name; k++) {
		char cand[16], *full;

		if (!next_candidate(&t, mode, k, cand, sizeof(cand)))
			break;
		if (asprintf(&full, "%.*s%s", (int)(t.tagged ? prefix : stem_len),
			     base, cand) < 0)
			break;
		if (!taken(ctx, full) && asprintf(&name, "%s.%s", full, ext) < 0)
			name = NULL;
		free(full);
	}
	return name;
}
