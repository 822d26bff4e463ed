// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-layers.c: layer tags parsed from file names, and the layer rules
 * (layerfs-layers(7)) checked on single tags and child/parent pairs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "fixtures.h"
#include "layers.h"

#define UNTAGGED false, -1, -1
#define LEVEL(d) true, d, -1
#define DIFF(d, nn) true, d, nn

static const struct {
	const char *name;
	bool tagged;
	int level, seq;
} names[] = {
	/* the examples */
	{ "win11-L1.vhd", LEVEL(1) },
	{ "win11-L3.vhd", LEVEL(3) },
	{ "win11-L301.vhd", DIFF(3, 1) },
	{ "301.vhd", DIFF(3, 1) },
	{ "L3.vhdx", LEVEL(3) },
	{ "base_L0.qcow2", LEVEL(0) },
	/* every separator, both cases, both forms */
	{ "win11_L2.vhd", LEVEL(2) },
	{ "win11.L3.vhd", LEVEL(3) },
	{ "win11-l3.vhd", LEVEL(3) },
	{ "WIN11-L511.VHDX", DIFF(5, 11) },
	{ "win11-l511.vhdx", DIFF(5, 11) },
	{ "win11_399.vhd", DIFF(3, 99) },
	{ "win11.905.vhd", DIFF(9, 5) },
	{ "win11-L9.avhdx", LEVEL(9) },
	{ "a.b.c-d_e.L7.qcow2", LEVEL(7) },
	{ "win11-L3.L4.vhd", LEVEL(4) },	/* the last token counts */
	{ "1-L3.vhd", LEVEL(3) },
	{ "L101.vhd", DIFF(1, 1) },
	{ "L0.vhd", LEVEL(0) },
	{ "L001.vhd", DIFF(0, 1) },	/* layer_check_self refuses it */
	{ "001.vhd", DIFF(0, 1) },
	{ "L099.vhd", DIFF(0, 99) },
	{ "l999.img", DIFF(9, 99) },
	/* no extension: the whole name is the stem */
	{ "L9", LEVEL(9) },
	{ "301", DIFF(3, 1) },
	{ "win11-L3", LEVEL(3) },
	{ "win11-L3.", LEVEL(3) },	/* empty extension */
	{ "win11.L3", UNTAGGED },	/* ".L3" is the extension */
	{ "win11.301", UNTAGGED },
	/* directories are ignored */
	{ "images/win11-L3.vhd", LEVEL(3) },
	{ "./L4.vhd", LEVEL(4) },
	{ "/srv/x-L2/301.vhd", DIFF(3, 1) },
	{ "/srv/img.L5/disk.vhd", UNTAGGED },
	{ "/srv/L5/win11.vhd", UNTAGGED },
	{ "/srv/L5/", UNTAGGED },
	{ "L5/", UNTAGGED },
	/* hidden and odd names: leading dots are part of the stem */
	{ ".L3", LEVEL(3) },
	{ ".L3.vhd", LEVEL(3) },
	{ "..L3", LEVEL(3) },
	{ ".vhd", UNTAGGED },
	{ ".", UNTAGGED },
	{ "..", UNTAGGED },
	{ "", UNTAGGED },
	{ "-L3.vhd", LEVEL(3) },
	{ "win11-L3..vhd", UNTAGGED },	/* empty last token */
	{ "win11-L3.vhd.", UNTAGGED },	/* stem "win11-L3.vhd" */
	{ "win11-L3.vhd.xz", UNTAGGED },
	{ "win11-L301.tar.gz", UNTAGGED },
	{ "win11-.vhd", UNTAGGED },
	{ "win11_.vhd", UNTAGGED },
	/* not tags */
	{ "win11.vhd", UNTAGGED },
	{ "v2.vhd", UNTAGGED },
	{ "win11-v2.vhd", UNTAGGED },
	{ "2023.vhd", UNTAGGED },
	{ "win-2023.vhd", UNTAGGED },
	{ "L10.vhd", UNTAGGED },	/* levels are one digit */
	{ "L30.vhd", UNTAGGED },
	{ "30.vhd", UNTAGGED },
	{ "L100.vhd", UNTAGGED },	/* sequence 00 */
	{ "L300.vhd", UNTAGGED },
	{ "300.vhd", UNTAGGED },
	{ "000.vhd", UNTAGGED },
	{ "3.vhd", UNTAGGED },		/* a bare digit needs the L */
	{ "win-3.vhd", UNTAGGED },
	{ "0301.vhd", UNTAGGED },
	{ "L0301.vhd", UNTAGGED },
	{ "L1001.vhd", UNTAGGED },
	{ "L.vhd", UNTAGGED },
	{ "l.vhd", UNTAGGED },
	{ "LL3.vhd", UNTAGGED },
	{ "xL3.vhd", UNTAGGED },
	{ "L3a.vhd", UNTAGGED },
	{ "L3 .vhd", UNTAGGED },
	{ "win11L3.vhd", UNTAGGED },	/* no separator before the tag */
	{ "win11 L3.vhd", UNTAGGED },	/* a space is not a separator */
	{ "win11+L3.vhd", UNTAGGED },
	{ "L-3.vhd", UNTAGGED },	/* last token "3" */
	{ "L3-win11.vhd", UNTAGGED },	/* a tag must be the last token */
	{ "win11-L3-old.vhd", UNTAGGED },
	{ "win11-L3_backup.vhd", UNTAGGED },
	{ "M3.vhd", UNTAGGED },
	{ "win11-L\xd9\xa3.vhd", UNTAGGED },	/* Arabic-Indic 3 */
	{ "win11-L\xef\xbc\x93.vhd", UNTAGGED },	/* fullwidth 3 */
};

START_TEST(parse_names)
{
	struct layer_tag t;

	memset(&t, 0x5a, sizeof(t));	/* every field must be written */
	layer_tag_parse(names[_i].name, &t);
	ck_assert_msg(t.tagged == names[_i].tagged, "\"%s\": tagged %d",
		      names[_i].name, t.tagged);
	ck_assert_msg(t.level == names[_i].level, "\"%s\": level %d",
		      names[_i].name, t.level);
	ck_assert_msg(t.seq == names[_i].seq, "\"%s\": seq %d",
		      names[_i].name, t.seq);
}
END_TEST

static const struct {
	struct layer_tag tag;
	const char *text;
} formats[] = {
	{ { true, 0, -1 }, "L0" },
	{ { true, 3, -1 }, "L3" },
	{ { true, 9, -1 }, "L9" },
	{ { true, 3, 1 }, "L301" },
	{ { true, 0, 1 }, "L001" },
	{ { true, 5, 11 }, "L511" },
	{ { true, 9, 99 }, "L999" },
	{ { false, -1, -1 }, "" },
	{ { false, 0, 0 }, "" },
	{ { false, 3, 1 }, "" },	/* untagged wins over stale fields */
};

START_TEST(format_tags)
{
	char buf[LAYER_TAG_MAX];

	memset(buf, 'x', sizeof(buf));
	layer_tag_format(&formats[_i].tag, buf, sizeof(buf));
	ck_assert_str_eq(buf, formats[_i].text);
}
END_TEST

START_TEST(format_truncates)
{
	struct layer_tag t = { true, 3, 1 };
	char buf[4] = "abc";

	layer_tag_format(&t, buf, 3);
	ck_assert_str_eq(buf, "L3");
	layer_tag_format(&t, buf, 1);
	ck_assert_str_eq(buf, "");
	buf[0] = 'q';
	layer_tag_format(&t, buf, 0);	/* nothing written */
	ck_assert_int_eq(buf[0], 'q');
	layer_tag_format(&t, NULL, 0);
}
END_TEST

/* Every valid tag, in every form, formats and parses back to itself. */
START_TEST(format_parse_round_trip)
{
	static const char *const forms[] = { "%s.vhd", "win11-%s.vhdx",
					     "a_%s.qcow2", "x.y.%s.img", "%s" };
	char tag[LAYER_TAG_MAX], name[64];
	struct layer_tag in, out;

	for (int d = 0; d <= 9; d++) {
		for (int nn = 0; nn <= 99; nn++) {
			in = (struct layer_tag){ true, d, nn ? nn : -1 };
			layer_tag_format(&in, tag, sizeof(tag));
			ck_assert_uint_eq(strlen(tag), nn ? 4 : 2);
			for (size_t f = 0; f < ARRAY_SIZE(forms); f++) {
				snprintf(name, sizeof(name), forms[f], tag);
				layer_tag_parse(name, &out);
				ck_assert_msg(out.tagged && out.level == d &&
						      out.seq == in.seq,
					      "\"%s\"", name);
				if (!nn)
					continue;
				/* lower-case l, and "dnn" without the L */
				name[strcspn(name, "L")] = 'l';
				layer_tag_parse(name, &out);
				ck_assert_msg(out.tagged && out.seq == nn,
					      "\"%s\"", name);
				snprintf(name, sizeof(name), forms[f], tag + 1);
				layer_tag_parse(name, &out);
				ck_assert_msg(out.tagged && out.level == d &&
						      out.seq == nn,
					      "\"%s\"", name);
			}
		}
	}
}
END_TEST

/* msg NULL: the rules are obeyed */
static const struct {
	const char *name;
	const char *msg;
} selves[] = {
	{ "L0.vhd", NULL },
	{ "L1.vhd", NULL },
	{ "L9.vhd", NULL },
	{ "L101.vhd", NULL },
	{ "L999.vhd", NULL },
	{ "101.vhd", NULL },
	{ "win11.vhd", NULL },
	{ "L000.vhd", NULL },		/* not a tag at all */
	{ "L001.vhd", "L0 has no differencing images (L001)" },
	{ "win11-l001.vhd", "L0 has no differencing images (L001)" },
	{ "001.vhd", "L0 has no differencing images (L001)" },
	{ "base_L042.vhdx", "L0 has no differencing images (L042)" },
	{ "L099", "L0 has no differencing images (L099)" },
};

START_TEST(check_self)
{
	struct layer_tag t;
	char msg[LAYER_MSG_MAX];
	bool ok;

	layer_tag_parse(selves[_i].name, &t);
	memset(msg, 'x', sizeof(msg));
	ok = layer_check_self(&t, msg, sizeof(msg));
	ck_assert_msg(ok == !selves[_i].msg, "%s: %d", selves[_i].name, ok);
	ck_assert_str_eq(msg, selves[_i].msg ? selves[_i].msg : "");
	ck_assert(layer_check_self(&t, NULL, 0) == ok);
}
END_TEST

static const struct {
	const char *child, *parent;
	const char *msg;
} pairs[] = {
	/* lower levels: fine, gaps too */
	{ "L1.vhd", "L0.vhd", NULL },
	{ "L3.vhd", "L1.vhd", NULL },
	{ "L9.vhd", "L0.vhd", NULL },
	{ "L4.vhd", "L399.vhd", NULL },
	{ "L301.vhd", "L2.vhd", NULL },
	{ "L301.vhd", "L205.vhd", NULL },
	{ "L101.vhd", "L0.vhd", NULL },
	/* same level: a dnn child over its level or a lower sequence */
	{ "L301.vhd", "L3.vhd", NULL },
	{ "L305.vhd", "L3.vhd", NULL },
	{ "L302.vhd", "L301.vhd", NULL },
	{ "L399.vhd", "L398.vhd", NULL },
	{ "L399.vhd", "L301.vhd", NULL },
	{ "301.vhd", "win11-l3.vhd", NULL },
	{ "win11-L302.vhd", "301.vhd", NULL },
	/* L0nn is layer_check_self's business, not the pair's */
	{ "L001.vhd", "L0.vhd", NULL },
	{ "L002.vhd", "L001.vhd", NULL },
	{ "L1.vhd", "L001.vhd", NULL },
	/* untagged on either side: no rule applies */
	{ "win11.vhd", "L4.vhd", NULL },
	{ "L3.vhd", "win11.vhd", NULL },
	{ "win11.vhd", "base.vhd", NULL },
	{ "L3.vhd", "L300.vhd", NULL },
	{ "L10.vhd", "L9.vhd", NULL },
	{ "L0.vhd", "2023.vhd", NULL },
	/* a higher level */
	{ "L3.vhd", "L4.vhd", "parent L4 is a higher level than L3" },
	{ "L0.vhd", "L1.vhd", "parent L1 is a higher level than L0" },
	{ "L0.vhd", "L9.vhd", "parent L9 is a higher level than L0" },
	{ "L301.vhd", "L401.vhd", "parent L401 is a higher level than L301" },
	{ "L301.vhd", "L4.vhd", "parent L4 is a higher level than L301" },
	{ "L3.vhd", "l599.vhd", "parent L599 is a higher level than L3" },
	{ "L001.vhd", "L1.vhd", "parent L1 is a higher level than L001" },
	/* a plain level over its own level */
	{ "L3.vhd", "L3.vhd", "parent L3 is not a lower level than L3" },
	{ "L0.vhd", "L0.vhd", "parent L0 is not a lower level than L0" },
	{ "L3.vhd", "L301.vhd", "parent L301 is not a lower level than L3" },
	{ "L3.vhd", "399.vhd", "parent L399 is not a lower level than L3" },
	{ "L0.vhd", "L001.vhd", "parent L001 is not a lower level than L0" },
	/* a same-level sequence that is not lower */
	{ "L301.vhd", "L302.vhd",
	  "same-level parent L302 is not a lower sequence than L301" },
	{ "L301.vhd", "L301.vhd",
	  "same-level parent L301 is not a lower sequence than L301" },
	{ "win11-L302.vhd", "win11-399.vhd",
	  "same-level parent L399 is not a lower sequence than L302" },
	{ "L001.vhd", "L002.vhd",
	  "same-level parent L002 is not a lower sequence than L001" },
};

START_TEST(check_pair)
{
	struct layer_tag c, p;
	char msg[LAYER_MSG_MAX];
	bool ok;

	layer_tag_parse(pairs[_i].child, &c);
	layer_tag_parse(pairs[_i].parent, &p);
	memset(msg, 'x', sizeof(msg));
	ok = layer_check_pair(&c, &p, msg, sizeof(msg));
	ck_assert_msg(ok == !pairs[_i].msg, "%s over %s: %d", pairs[_i].child,
		      pairs[_i].parent, ok);
	ck_assert_str_eq(msg, pairs[_i].msg ? pairs[_i].msg : "");
	ck_assert(layer_check_pair(&c, &p, NULL, 0) == ok);
}
END_TEST

/* Exhaustive: the verdict for every pair of valid tags, by the rules. */
START_TEST(check_pair_all)
{
	struct layer_tag c, p;
	char msg[LAYER_MSG_MAX];
	unsigned bad = 0;

	for (int i = 0; i < 1000; i++) {
		c = (struct layer_tag){ true, i / 100, i % 100 ? i % 100 : -1 };
		for (int j = 0; j < 1000; j++) {
			bool want, ok;

			p = (struct layer_tag){ true, j / 100,
						j % 100 ? j % 100 : -1 };
			if (p.level != c.level)
				want = p.level < c.level;
			else
				want = c.seq > 0 && p.seq < c.seq;
			ok = layer_check_pair(&c, &p, msg, sizeof(msg));
			/* ck_assert per pair would cost a syscall each */
			if (ok != want || ok != !msg[0] ||
			    strlen(msg) >= LAYER_MSG_MAX - 1)
				ck_abort_msg("%d over %d: %d \"%s\"", i, j,
					     ok, msg);
			bad += !ok;
		}
	}
	/* higher parents: 45 level pairs; same level: 4950 of 100*100 fine */
	ck_assert_uint_eq(bad, 45 * 100 * 100 + 10 * (100 * 100 - 4950));
}
END_TEST

START_TEST(check_message_buffer)
{
	struct layer_tag c = { true, 3, -1 }, p = { true, 4, -1 };
	struct layer_tag l0 = { true, 0, 7 };
	char msg[LAYER_MSG_MAX];

	/* truncated, still terminated, still a violation */
	memset(msg, 'x', sizeof(msg));
	ck_assert(!layer_check_pair(&c, &p, msg, 10));
	ck_assert_str_eq(msg, "parent L4");
	ck_assert(!layer_check_self(&l0, msg, 3));
	ck_assert_str_eq(msg, "L0");
	ck_assert(!layer_check_pair(&c, &p, msg, 1));
	ck_assert_str_eq(msg, "");
	/* a fine pair clears an old message */
	ck_assert(!layer_check_pair(&c, &p, msg, sizeof(msg)));
	ck_assert(layer_check_pair(&p, &c, msg, sizeof(msg)));
	ck_assert_str_eq(msg, "");
	/* zero-initialised tags are untagged */
	c = (struct layer_tag){ 0 };
	ck_assert(layer_check_self(&c, msg, sizeof(msg)));
	ck_assert(layer_check_pair(&c, &c, msg, sizeof(msg)));
}
END_TEST

/* layer_next_name: the taken stems are a comma-separated list */
static bool taken_in(void *ctx, const char *stem)
{
	const char *list = ctx, *p = list;
	size_t n = strlen(stem);

	while ((p = strstr(p, stem))) {
		if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return true;
		p++;
	}
	return false;
}

static const struct {
	const char *top;
	enum layer_next mode;
	const char *taken;
	const char *want;	/* NULL: no name */
} nexts[] = {
	{ "win-L3.vhd", LAYER_NEXT_DEFAULT, "", "win-L4.vhd" },
	{ "win-L3.vhd", LAYER_NEXT_DEFAULT, "win-L4", "win-L301.vhd" },
	{ "win-L3.vhd", LAYER_NEXT_DEFAULT, "win-L4,win-L301", "win-L302.vhd" },
	{ "win-L301.vhd", LAYER_NEXT_DEFAULT, "", "win-L302.vhd" },
	{ "win-L9.vhd", LAYER_NEXT_DEFAULT, "", "win-L901.vhd" },
	{ "win-L0.vhd", LAYER_NEXT_DEFAULT, "win-L1", NULL },	/* no L0nn */
	{ "dir/base.img", LAYER_NEXT_DEFAULT, "", "base-L1.vhd" },
	{ "base.img", LAYER_NEXT_DEFAULT, "base-L1", "base-L101.vhd" },
	{ "win-L3.vhd", LAYER_NEXT_DIFF, "", "win-L301.vhd" },
	{ "win-L3.vhd", LAYER_NEXT_DIFF, "win-L301", "win-L302.vhd" },
	{ "301.vhd", LAYER_NEXT_DIFF, "", "L302.vhd" },
	{ "win-L0.vhd", LAYER_NEXT_DIFF, "", NULL },
	{ "win-L398.vhd", LAYER_NEXT_DIFF, "win-L399", NULL },
	{ "win-L3.vhd", LAYER_NEXT_LEVEL, "", "win-L4.vhd" },
	{ "win-L301.vhd", LAYER_NEXT_LEVEL, "", "win-L4.vhd" },
	{ "win-L3.vhd", LAYER_NEXT_LEVEL, "win-L4", NULL },
	{ "win-L9.vhd", LAYER_NEXT_LEVEL, "", NULL },
	{ "a_b.L2.qcow2", LAYER_NEXT_LEVEL, "", "a_b.L3.vhd" },
};

START_TEST(next_names)
{
	char *got = layer_next_name(nexts[_i].top, "vhd", nexts[_i].mode,
				    taken_in, (void *)nexts[_i].taken);

	if (!nexts[_i].want)
		ck_assert_msg(!got, "%s: got %s", nexts[_i].top, got);
	else
		ck_assert_msg(got && !strcmp(got, nexts[_i].want),
			      "%s mode %d: got %s, want %s", nexts[_i].top,
			      nexts[_i].mode, got ? got : "NULL",
			      nexts[_i].want);
	free(got);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("layers");
	TCase *tc;

	tc = tcase_create("parse");
	tcase_add_loop_test(tc, parse_names, 0, ARRAY_SIZE(names));
	tcase_add_loop_test(tc, format_tags, 0, ARRAY_SIZE(formats));
	tcase_add_test(tc, format_truncates);
	tcase_add_test(tc, format_parse_round_trip);
	suite_add_tcase(s, tc);

	tc = tcase_create("rules");
	tcase_add_loop_test(tc, check_self, 0, ARRAY_SIZE(selves));
	tcase_add_loop_test(tc, check_pair, 0, ARRAY_SIZE(pairs));
	tcase_add_test(tc, check_pair_all);
	tcase_add_test(tc, check_message_buffer);
	suite_add_tcase(s, tc);

	tc = tcase_create("next");
	tcase_add_loop_test(tc, next_names, 0, ARRAY_SIZE(nexts));
	suite_add_tcase(s, tc);
	return s;
}
