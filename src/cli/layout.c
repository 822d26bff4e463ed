// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * layout.c: Windows OEM device layouts (DeviceLayoutOEM.xml), read with
 * libxml2 (the only user of libxml2 in the tree).
 *
 * The elements, in namespace LAYOUT_NS (the ImageUpdate v2 schema):
 *
 *   <DeviceLayout>
 *     <SectorSize>512</SectorSize>            required
 *     <MergeVersionTag>, <UpdateByOSTag>      kept, informational
 *     <Stores><Store>
 *       <Id>{GUID}</Id> <StoreType/> <DevicePath/> <SizeInBytes/>
 *       <Partitions><Partition>
 *         <Name/> <Type>{GUID}</Type> <FileSystem>NTFS|FAT|FAT32</FileSystem>
 *         <Id>{GUID}</Id> <TotalBytes/> <ByteAlignment/>
 *       </Partition></Partitions>
 *     </Store></Stores>
 *   </DeviceLayout>
 *
 * Elements of the older schema that change nothing here (Bootable,
 * RequiredToFlash, ...) are ignored; unknown ones get a warning.  Every
 * message names the file and the line of the element it is about.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include "checked.h"
#include "compiler.h"
#include "gpt.h"
#include "layout.h"
#include "log.h"
#include "utf16.h"

#define LAYOUT_NAME_MAX 36u	/* GPT entry names (NTFS volumes alike) */
#define LAYOUT_FAT_NAME_MAX 11u	/* FAT volume labels */
/* Bounds of this implementation, so that no sum can overflow */
#define LAYOUT_BYTES_MAX (1ull << 56)	/* SizeInBytes, TotalBytes: 64 PiB */
#define LAYOUT_ALIGN_MAX (1ull << 32)	/* ByteAlignment: 4 GiB */

/* The basic data partition type, used when a partition names none */
static const char basic_data[] = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";

struct lctx {
	const char *path;
	int errors;
};

static void __printf(3, 4) lerr(struct lctx *c, const xmlNode *n,
				const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_err("%s:%ld: %s", c->path, n ? xmlGetLineNo(n) : 0L, msg);
	c->errors++;
}

static bool is_el(const xmlNode *n, const char *name)
{
	return n->type == XML_ELEMENT_NODE &&
	       !strcmp((const char *)n->name, name);
}

/* The element's text without surrounding white space (malloc'd). */
static char *el_text(const xmlNode *n)
{
	xmlChar *x = xmlNodeGetContent(n);
	const char *s = x ? (const char *)x : "";
	size_t len;
	char *out;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	len = strlen(s);
	while (len && strchr(" \t\r\n", s[len - 1]))
		len--;
	out = strndup(s, len);
	xmlFree(x);
	return out;
}

/* A decimal or 0x-hex count without sign; false if not one. */
static bool parse_u64(const char *s, uint64_t *out)
{
	int base = 10;
	uint64_t v = 0;

	if (!strncasecmp(s, "0x", 2)) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned d;

		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = (unsigned)(*s - 'A' + 10);
		else
			return false;
		if (MUL_OVERFLOW(v, (uint64_t)base, &v) || ADD_OVERFLOW(v, d, &v))
			return false;
	}
	*out = v;
	return true;
}

static bool el_u64(struct lctx *c, const xmlNode *n, uint64_t *out)
{
	char *t = el_text(n);
	bool ok = t && parse_u64(t, out);

	if (!ok)
		lerr(c, n, "%s is not a number (\"%s\")", (const char *)n->name,
		     t ? t : "");
	free(t);
	return ok;
}

static bool el_guid(struct lctx *c, const xmlNode *n, struct guid *g)
{
	char *t = el_text(n);
	bool ok = t && guid_parse(t, g) == 0;

	if (!ok)
		lerr(c, n, "%s is not a GUID (\"%s\")", (const char *)n->name,
		     t ? t : "");
	free(t);
	return ok;
}

static int random_guid(struct guid *g)
{
	if (getrandom(g->b, sizeof(g->b), 0) != (ssize_t)sizeof(g->b))
		return -EIO;
	g->b[6] = (uint8_t)((g->b[6] & 0x0f) | 0x40);	/* RFC 4122 v4 */
	g->b[8] = (uint8_t)((g->b[8] & 0x3f) | 0x80);
	return 0;
}

/* Elements of the schema that do not change what is built here. */
static bool ignored(const char *name)
{
	static const char *const names[] = {
		"Bootable", "RequiredToFlash", "RequiredToBoot",
		"AttachDriveLetter", "PrepareFveMetadata", "Hidden",
		"ReadOnly", "ClusterSize", "MinFreeSectors", "MinFreeBytes",
		"GeneratedFileOverheadSectors", "Compressed", "PrimaryPartition",
		"RequiredForFlash", "OnlyAllocateDefinedGptEntries",
		"ChunkSize", "VersionTag", "DefaultPartitionByteAlignment",
		"SourceDevicePath", "Offset", "Attributes",
	};

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (!strcmp(name, names[i]))
			return true;
	return false;
}

static void unknown(struct lctx *c, const xmlNode *n, const char *where)
{
	if (ignored((const char *)n->name))
		return;
	log_warn("%s:%ld: unknown element <%s> in <%s> ignored", c->path,
		 xmlGetLineNo(n), (const char *)n->name, where);
}

struct part_raw {		/* what the element gave, before checks */
	bool has_total, has_sectors, use_all, has_id, has_type;
	uint64_t sectors;
};

static void parse_partition(struct lctx *c, const xmlNode *pn,
			    struct layout_part *p, struct part_raw *raw)
{
	memset(raw, 0, sizeof(*raw));
	p->line = xmlGetLineNo(pn);
	p->align = LAYOUT_ALIGN_DEFAULT;
	for (const xmlNode *n = pn->children; n; n = n->next) {
		char *t;

		if (n->type != XML_ELEMENT_NODE)
			continue;
		if (is_el(n, "Name")) {
			free(p->name);
			p->name = el_text(n);
		} else if (is_el(n, "Type")) {
			raw->has_type = el_guid(c, n, &p->type);
		} else if (is_el(n, "Id")) {
			raw->has_id = el_guid(c, n, &p->id);
		} else if (is_el(n, "FileSystem")) {
			t = el_text(n);
			if (!t || !*t)
				p->fs = LAYOUT_FS_NONE;
			else if (!strcasecmp(t, "NTFS"))
				p->fs = LAYOUT_FS_NTFS;
			else if (!strcasecmp(t, "FAT"))
				p->fs = LAYOUT_FS_FAT;
			else if (!strcasecmp(t, "FAT32"))
				p->fs = LAYOUT_FS_FAT32;
			else
				lerr(c, n, "FileSystem must be NTFS, FAT or "
				     "FAT32 (\"%s\")", t ? t : "");
			free(t);
		} else if (is_el(n, "TotalBytes")) {
			raw->has_total = el_u64(c, n, &p->total_bytes);
			if (raw->has_total && p->total_bytes > LAYOUT_BYTES_MAX)
				lerr(c, n, "TotalBytes is too large (%llu)",
				     (unsigned long long)p->total_bytes);
			else if (raw->has_total &&
				 p->total_bytes % LAYOUT_SIZE_UNIT)
				lerr(c, n, "TotalBytes must be a multiple of "
				     "%u (%llu)", LAYOUT_SIZE_UNIT,
				     (unsigned long long)p->total_bytes);
			else if (raw->has_total && !p->total_bytes)
				lerr(c, n, "TotalBytes must not be 0");
		} else if (is_el(n, "TotalSectors")) {	/* older schema */
			raw->has_sectors = el_u64(c, n, &raw->sectors);
			if (raw->has_sectors &&
			    raw->sectors > LAYOUT_BYTES_MAX / 4096)
				lerr(c, n, "TotalSectors is too large (%llu)",
				     (unsigned long long)raw->sectors);
		} else if (is_el(n, "UseAllSpace")) {
			t = el_text(n);
			raw->use_all = t && !strcasecmp(t, "true");
			free(t);
		} else if (is_el(n, "ByteAlignment")) {
			if (el_u64(c, n, &p->align) &&
			    (!p->align || !is_pow2(p->align)))
				lerr(c, n, "ByteAlignment must be a power of "
				     "two (%llu)", (unsigned long long)p->align);
			else if (p->align > LAYOUT_ALIGN_MAX)
				lerr(c, n, "ByteAlignment is too large (%llu)",
				     (unsigned long long)p->align);
		} else {
			unknown(c, n, "Partition");
		}
	}
}

static int parse_store(struct lctx *c, const xmlNode *sn,
		       struct layout_store *s, struct part_raw **raws)
{
	unsigned cap = 0;

	s->line = xmlGetLineNo(sn);
	for (const xmlNode *n = sn->children; n; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		if (is_el(n, "Id")) {
			if (!el_guid(c, n, &s->id))
				memset(&s->id, 0, sizeof(s->id));
		} else if (is_el(n, "StoreType")) {
			free(s->type);
			s->type = el_text(n);
		} else if (is_el(n, "DevicePath")) {
			free(s->device_path);
			s->device_path = el_text(n);
		} else if (is_el(n, "SizeInBytes")) {
			if (el_u64(c, n, &s->size) && s->size > LAYOUT_BYTES_MAX)
				lerr(c, n, "SizeInBytes is too large (%llu)",
				     (unsigned long long)s->size);
			else if (s->size % LAYOUT_SIZE_UNIT)
				lerr(c, n, "SizeInBytes must be a multiple of "
				     "%u (%llu)", LAYOUT_SIZE_UNIT,
				     (unsigned long long)s->size);
		} else if (is_el(n, "Partitions")) {
			for (const xmlNode *pn = n->children; pn; pn = pn->next) {
				if (pn->type != XML_ELEMENT_NODE)
					continue;
				if (!is_el(pn, "Partition")) {
					unknown(c, pn, "Partitions");
					continue;
				}
				if (s->nparts == cap) {
					unsigned nc = cap ? cap * 2 : 8;
					void *a = realloc(s->parts,
							  nc * sizeof(*s->parts));
					void *b = realloc(*raws, nc * sizeof(**raws));

					if (a)
						s->parts = a;
					if (b)
						*raws = b;
					if (!a || !b)
						return -ENOMEM;
					cap = nc;
				}
				memset(&s->parts[s->nparts], 0,
				       sizeof(s->parts[0]));
				parse_partition(c, pn, &s->parts[s->nparts],
						&(*raws)[s->nparts]);
				s->nparts++;
			}
		} else {
			unknown(c, n, "Store");
		}
	}
	return 0;
}

/* Count UTF-16 units of a UTF-8 name; -1 if it is not UTF-8. */
static long name_units(const char *name)
{
	uint8_t *u;
	size_t len;

	if (utf8_to_utf16(name, false, &u, &len) < 0)
		return -1;
	free(u);
	return (long)(len / 2);
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* Check one store's partitions and place them (LBAs). */
static int place_store(struct lctx *c, struct layout *l, struct layout_store *s,
		       const struct part_raw *raws, const xmlNode *sn)
{
	const uint64_t ss = l->sector_size;
	uint64_t first, last, pos, nsectors;
	bool open_end = false;
	int r;

	if (s->nparts > GPT_ENTRIES) {
		lerr(c, sn, "%u partitions: a GPT holds at most %u",
		     s->nparts, GPT_ENTRIES);
		return -EINVAL;
	}
	for (unsigned i = 0; i < s->nparts; i++) {
		struct layout_part *p = &s->parts[i];
		const struct part_raw *w = &raws[i];

		if (w->has_sectors && !w->has_total) {
			if (MUL_OVERFLOW(w->sectors, ss, &p->total_bytes))
				p->total_bytes = 0;
		}
		if (w->use_all)
			p->total_bytes = 0;
		if (!w->has_type)
			guid_parse(basic_data, &p->type);
		if (!w->has_id) {
			r = random_guid(&p->id);
			if (r < 0)
				return log_err_ret(r, "%s: no random bytes for "
						   "a partition id", c->path);
		}
		if (p->align < ss) {
			log_err("%s:%ld: ByteAlignment %llu is smaller than "
				"SectorSize %u", c->path, p->line,
				(unsigned long long)p->align, l->sector_size);
			c->errors++;
		}
		if (!p->total_bytes && i + 1 < s->nparts) {
			log_err("%s:%ld: partition \"%s\" has no TotalBytes, but "
				"only the last partition of a store may take the "
				"rest of it", c->path, p->line,
				p->name ? p->name : "");
			c->errors++;
		}
		if (p->total_bytes % ss) {
			log_err("%s:%ld: partition \"%s\": TotalBytes %llu is "
				"not a multiple of SectorSize %u", c->path,
				p->line, p->name ? p->name : "",
				(unsigned long long)p->total_bytes,
				l->sector_size);
			c->errors++;
		}
	}
	if (c->errors)
		return -EINVAL;
	open_end = s->nparts && !s->parts[s->nparts - 1].total_bytes;
	if (!s->size) {		/* no SizeInBytes: what the partitions need */
		uint64_t end = 2 * (2 + (GPT_ENTRIES * GPT_ENTRY_SIZE) / ss);

		if (open_end) {
			lerr(c, sn, "a store without SizeInBytes needs "
			     "TotalBytes on every partition");
			return -EINVAL;
		}
		end *= ss;
		for (unsigned i = 0; i < s->nparts; i++)
			end = align_up(end, s->parts[i].align) +
			      s->parts[i].total_bytes;
		s->size = align_up(end + (1 + GPT_ENTRIES * GPT_ENTRY_SIZE / ss) *
					 ss, LAYOUT_ALIGN_DEFAULT);
	}
	nsectors = s->size / ss;
	if (s->size % ss || gpt_usable(l->sector_size, nsectors, &first,
				       &last) < 0) {
		lerr(c, sn, "store of %llu bytes is too small for a GPT with "
		     "%u-byte sectors", (unsigned long long)s->size,
		     l->sector_size);
		return -EINVAL;
	}
	pos = first * ss;
	for (unsigned i = 0; i < s->nparts; i++) {
		struct layout_part *p = &s->parts[i];
		uint64_t start = align_up(pos, p->align), end;

		if (start / ss > last) {
			log_err("%s:%ld: partition \"%s\" does not fit in the "
				"store (%llu bytes): it would start at byte %llu",
				c->path, p->line, p->name ? p->name : "",
				(unsigned long long)s->size,
				(unsigned long long)start);
			return -EINVAL;
		}
		if (p->total_bytes) {
			if (ADD_OVERFLOW(start, p->total_bytes, &end) ||
			    end / ss - 1 > last) {
				log_err("%s:%ld: partition \"%s\" does not fit "
					"in the store (%llu bytes): %llu bytes "
					"from byte %llu", c->path, p->line,
					p->name ? p->name : "",
					(unsigned long long)s->size,
					(unsigned long long)p->total_bytes,
					(unsigned long long)start);
				return -EINVAL;
			}
		} else {
			end = (last + 1) * ss;	/* the rest of the store */
			p->total_bytes = end - start;
		}
		p->first_lba = start / ss;
		p->last_lba = end / ss - 1;
		pos = end;
	}
	return 0;
}

/* Names present, unique, short enough; ids unique (all stores). */
static void check_names_ids(struct lctx *c, struct layout *l)
{
	for (unsigned si = 0; si < l->nstores; si++) {
		struct layout_store *s = &l->stores[si];

		for (unsigned i = 0; i < s->nparts; i++) {
			const struct layout_part *p = &s->parts[i];
			bool fat = p->fs == LAYOUT_FS_FAT ||
				   p->fs == LAYOUT_FS_FAT32;
			unsigned max = fat ? LAYOUT_FAT_NAME_MAX : LAYOUT_NAME_MAX;
			long units;

			if (!p->name || !*p->name) {
				log_err("%s:%ld: partition without a Name",
					c->path, p->line);
				c->errors++;
				continue;
			}
			units = name_units(p->name);
			if (units < 0 || (unsigned long)units > max) {
				log_err("%s:%ld: partition name \"%s\" is "
					"longer than %u characters (%s)",
					c->path, p->line, p->name, max,
					fat ? "FAT label" : "GPT name");
				c->errors++;
			}
			for (unsigned sj = 0; sj <= si; sj++) {
				const struct layout_store *t = &l->stores[sj];

				for (unsigned j = 0; j < (sj == si ? i : t->nparts);
				     j++) {
					const struct layout_part *q = &t->parts[j];

					if (q->name && !strcasecmp(q->name, p->name)) {
						log_err("%s:%ld: partition name "
							"\"%s\" is used twice (line "
							"%ld)", c->path, p->line,
							p->name, q->line);
						c->errors++;
					}
					if (guid_equal(&q->id, &p->id)) {
						char g[GUID_STR_LEN + 1];

						guid_to_str(&p->id, g);
						log_err("%s:%ld: partition Id {%s} "
							"is used twice (line %ld)",
							c->path, p->line, g,
							q->line);
						c->errors++;
					}
				}
			}
		}
	}
}

static void silent_xml_error(void *ctx __unused, xmlErrorPtr e __unused)
{
	/* reported once, from xmlGetLastError(), by layout_load */
}

static int parse_root(struct lctx *c, const xmlNode *root, struct layout *l,
		      const uint32_t *sizes, const char *fmt)
{
	struct part_raw **raws = NULL;
	const xmlNode *ss_node = NULL, *stores_node = NULL;
	unsigned cap = 0;
	int r = 0;

	if (!root || !is_el(root, "DeviceLayout") || !root->ns ||
	    strcmp((const char *)root->ns->href, LAYOUT_NS)) {
		lerr(c, root, "the root element is not <DeviceLayout> in "
		     "namespace %s", LAYOUT_NS);
		return -EINVAL;
	}
	for (const xmlNode *n = root->children; n; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		if (is_el(n, "SectorSize")) {
			ss_node = n;
		} else if (is_el(n, "MergeVersionTag")) {
			free(l->merge_version_tag);
			l->merge_version_tag = el_text(n);
		} else if (is_el(n, "UpdateByOSTag")) {
			free(l->update_by_os_tag);
			l->update_by_os_tag = el_text(n);
		} else if (is_el(n, "Stores")) {
			stores_node = n;
		} else {
			unknown(c, n, "DeviceLayout");
		}
	}
	if (!ss_node) {
		lerr(c, root, "no <SectorSize> (it is required)");
		return -EINVAL;
	} else {
		uint64_t v;
		bool ok = false;

		if (!el_u64(c, ss_node, &v))
			return -EINVAL;
		if (!v || !is_pow2(v)) {
			lerr(c, ss_node, "SectorSize must be a power of two "
			     "(%llu)", (unsigned long long)v);
			return -EINVAL;
		}
		for (const uint32_t *s = sizes; *s; s++)
			ok |= v == *s;
		if (!ok) {
			lerr(c, ss_node, "SectorSize %llu is not supported by "
			     "the %s format", (unsigned long long)v, fmt);
			return -EINVAL;
		}
		l->sector_size = (uint32_t)v;
	}
	if (!stores_node) {
		lerr(c, root, "no <Stores>");
		return -EINVAL;
	}
	for (const xmlNode *sn = stores_node->children; sn; sn = sn->next) {
		if (sn->type != XML_ELEMENT_NODE)
			continue;
		if (!is_el(sn, "Store")) {
			unknown(c, sn, "Stores");
			continue;
		}
		if (l->nstores == cap) {
			unsigned nc = cap ? cap * 2 : 4;
			void *a = realloc(l->stores, nc * sizeof(*l->stores));
			void *b = realloc(raws, nc * sizeof(*raws));

			if (a)
				l->stores = a;
			if (b)
				raws = b;
			if (!a || !b) {
				r = -ENOMEM;
				goto out;
			}
			cap = nc;
		}
		memset(&l->stores[l->nstores], 0, sizeof(l->stores[0]));
		raws[l->nstores] = NULL;
		l->nstores++;
		r = parse_store(c, sn, &l->stores[l->nstores - 1],
				&raws[l->nstores - 1]);
		if (r < 0)
			goto out;
	}
	if (!l->nstores) {
		lerr(c, stores_node, "<Stores> holds no <Store>");
		r = -EINVAL;
		goto out;
	}
	if (c->errors) {
		r = -EINVAL;
		goto out;
	}
	{
		unsigned si = 0;

		for (const xmlNode *sn = stores_node->children; sn && r == 0;
		     sn = sn->next) {
			if (!is_el(sn, "Store"))
				continue;
			if (guid_is_zero(&l->stores[si].id) &&
			    random_guid(&l->stores[si].id) < 0)
				r = -EIO;
			if (r == 0)
				r = place_store(c, l, &l->stores[si], raws[si], sn);
			si++;
		}
	}
	if (r == 0) {
		check_names_ids(c, l);
		if (c->errors)
			r = -EINVAL;
	}
out:
	for (unsigned i = 0; raws && i < l->nstores; i++)
		free(raws[i]);
	free(raws);
	return r;
}

int layout_load(const char *path, const uint32_t *sector_sizes,
		const char *fmt, struct layout **out)
{
	struct lctx c = { .path = path };
	struct layout *l;
	xmlDoc *doc;
	int r;

	xmlSetStructuredErrorFunc(NULL, silent_xml_error);
	doc = xmlReadFile(path, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR |
				      XML_PARSE_NOWARNING);
	if (!doc) {
		const xmlError *e = xmlGetLastError();
		FILE *f = fopen(path, "r");

		if (!f)
			return log_err_ret(-errno, "%s: %s", path,
					   strerror(errno));
		fclose(f);
		log_err("%s:%d: not well-formed XML: %.*s", path,
			e ? e->line : 0,
			e && e->message ? (int)strcspn(e->message, "\n") : 1,
			e && e->message ? e->message : "?");
		return -EINVAL;
	}
	l = calloc(1, sizeof(*l));
	if (!l || !(l->path = strdup(path))) {
		free(l);
		xmlFreeDoc(doc);
		return -ENOMEM;
	}
	r = parse_root(&c, xmlDocGetRootElement(doc), l, sector_sizes, fmt);
	xmlFreeDoc(doc);
	if (r < 0) {
		layout_free(l);
		return r;
	}
	*out = l;
	return 0;
}

void layout_free(struct layout *l)
{
	if (!l)
		return;
	for (unsigned i = 0; i < l->nstores; i++) {
		struct layout_store *s = &l->stores[i];

		for (unsigned j = 0; j < s->nparts; j++)
			free(s->parts[j].name);
		free(s->parts);
		free(s->type);
		free(s->device_path);
	}
	free(l->stores);
	free(l->merge_version_tag);
	free(l->update_by_os_tag);
	free(l->path);
	free(l);
}

const char *layout_fs_name(enum layout_fs fs)
{
	switch (fs) {
	case LAYOUT_FS_NTFS:
		return "NTFS";
	case LAYOUT_FS_FAT:
		return "FAT";
	case LAYOUT_FS_FAT32:
		return "FAT32";
	default:
		return "none";
	}
}
