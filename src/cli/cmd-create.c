// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-create.c: layerimg create.
 *
 *   layerimg create -f FMT [options] NAME SIZE        a base layer
 *   layerimg create -b PARENT [options] [NAME] [SIZE] a differencing layer
 *   layerimg create --layout LAYOUT.xml [-f FMT] OUT  the disks of a
 *                                                     DeviceLayoutOEM.xml
 *
 * Every image is made by its format driver (->create, ->create_diff) and
 * filled through it (->write): no format code here.  A differencing layer
 * without NAME gets the next free layer name beside its parent (layers.h).
 * A layout becomes one L0 image per store: a GPT (gpt.c) with the store's
 * partitions, and FAT/NTFS partitions formatted by mkfs.fat/mkntfs in a
 * sparse scratch file each, whose data runs are then written into the
 * image at the partition's offset.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <dirent.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checked.h"
#include "atomic-file.h"
#include "cli.h"
#include "gpt.h"
#include "img.h"
#include "io.h"
#include "json.h"
#include "layers.h"
#include "layout.h"
#include "log.h"
#include "registry.h"

extern char **environ;

#define COPY_CHUNK (1u << 20)

static const char usage_text[] =
"Usage: layerimg create -f FMT [options] NAME SIZE\n"
"       layerimg create -b PARENT [-F FMT] [options] [NAME] [SIZE]\n"
"       layerimg create --layout LAYOUT.xml [-f FMT] [options] OUT\n"
"\n"
"Create a base layer of SIZE bytes, a differencing layer over PARENT, or\n"
"the disks a Windows DeviceLayoutOEM.xml describes (one L0 image per store,\n"
"with a GPT and its FAT/NTFS partitions formatted).\n"
"\n"
"  -f, --format=FMT      vhd (or vpc), vhdx, qcow2 or raw.  Default: from NAME's\n"
"                        extension; else, for a differencing layer, the\n"
"                        parent's format (qcow2 over raw, sparse, qcow);\n"
"                        vhdx for a layout\n"
"  -b, --parent=PARENT   make a differencing layer over the image PARENT\n"
"                        (its chain must resolve); SIZE defaults to PARENT's\n"
"  -F, --backing-format=FMT  PARENT's format: refused if it is another\n"
"      --next-level      with -b and no NAME: name it one level up\n"
"                        (L3 -> L4, L301 -> L4)\n"
"      --next-diff       with -b and no NAME: name it the next differencing\n"
"                        image of the level (L3 -> L301, L301 -> L302)\n"
"                        Neither: as layerfs -o newlayer names it (L3 -> L4,\n"
"                        or L301 when L4 exists; L301 -> L302)\n"
"      --block-size=SIZE block size (vhd, vhdx) or cluster size (qcow2)\n"
"      --sector-size=N   logical sector size: 512, or 4096 (vhdx)\n"
"      --fixed           fully allocated: fixed VHD/VHDX, preallocated qcow2,\n"
"                        allocated raw (base layers and layouts only)\n"
"  -o OPTIONS            the same as a list: block_size=SIZE,\n"
"                        cluster_size=SIZE, sector_size=N, fixed,\n"
"                        subformat=fixed|dynamic, preallocation=off|metadata|full\n"
"      --layout=FILE     build from a DeviceLayoutOEM.xml: OUT is the image\n"
"                        file for a single store, else a directory that gets\n"
"                        STORETYPE-L0.EXT per store\n"
"  -q, --quiet           print nothing on success\n"
"      --output=FMT      human (default) or json: what was created as one\n"
"                        JSON object on stdout (--json: the same)\n"
"  -h, --help            show this help\n"
"\n"
"SIZE is bytes, or takes a k, M, G, T, P or E suffix (powers of 1024) and\n"
"then a fraction, as qemu-img: 1.5G, 512K.  NAME given as a directory: the\n"
"new layer's name is chosen as without NAME, in it.\n"
"Exit status: 0 created, 1 creation failed, 2 bad usage or a bad input\n"
"(unreadable parent, malformed layout).\n";

struct create_args {
	const char *fmt;	/* NULL: the default */
	const char *parent;
	const char *parent_fmt;	/* -F: the parent must be this format */
	struct json *js;	/* --output=json: the "images" array, or NULL */
	const char *layout;
	enum layer_next next;
	bool next_set;
	bool quiet;
	struct img_create_opts o;
};

static int usage_err(const char *fmt, ...) __printf(1, 2);
static int usage_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cli_verror(fmt, ap);
	va_end(ap);
	return cli_try_help();
}

static int parse_u32_size(const char *what, const char *s, uint32_t *out)
{
	if (cli_parse_size32(what, s, out) < 0) {
		cli_try_help();
		return -EINVAL;
	}
	return 0;
}

/* -o key[=value],... */
static int parse_o(struct create_args *a, char *list)
{
	return cli_parse_create_opts(list, &a->o);
}

static const char *format_ext(const char *fmt)
{
	return !strcmp(fmt, "raw") ? "img" : fmt;
}

/* The format a NAME's extension implies, or NULL */
static const char *format_of_name(const char *name)
{
	const char *dot = strrchr(name, '.');

	if (!dot)
		return NULL;
	if (!strcasecmp(dot, ".vhd"))
		return "vhd";
	if (!strcasecmp(dot, ".vhdx"))
		return "vhdx";
	if (!strcasecmp(dot, ".qcow2"))
		return "qcow2";
	if (!strcasecmp(dot, ".img") || !strcasecmp(dot, ".raw"))
		return "raw";
	return NULL;
}

/* The driver that writes fmt, or NULL (logged) */
static const struct img_driver *write_driver(const struct img_driver *drv)
{
	if (drv->write)
		return drv;
	if (!strcmp(drv->name, "raw"))
		return &raw_rw_driver;	/* raw writes on purpose only */
	return NULL;
}

static const struct img_driver *find_driver(const char *fmt, bool diff)
{
	const struct img_driver *drv = img_driver_find(fmt);

	if (!drv || strcmp(fmt, drv->name) ||
	    (strcmp(fmt, "vhd") && strcmp(fmt, "vhdx") &&
	     strcmp(fmt, "qcow2") && strcmp(fmt, "raw"))) {
		cli_error("unknown format '%s' (vhd or vpc, vhdx, qcow2 or raw)",
			  fmt);
		return NULL;
	}
	if (diff ? !drv->create_diff : !drv->create) {
		cli_error("the %s format cannot make %s", fmt,
			  diff ? "differencing layers" : "new images");
		return NULL;
	}
	return drv;
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static bool is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* true if some file of dir (ctx) has this stem (any extension) */
static bool stem_taken(void *ctx, const char *stem)
{
	DIR *d = opendir(ctx);
	struct dirent *de;
	size_t n = strlen(stem);
	bool taken = false;

	if (!d)
		return true;
	while (!taken && (de = readdir(d))) {
		const char *dot = strrchr(de->d_name, '.');
		size_t len = dot && dot != de->d_name ?
			     (size_t)(dot - de->d_name) : strlen(de->d_name);

		taken = len == n && !strncmp(de->d_name, stem, n);
	}
	closedir(d);
	return taken;
}

static void json_created(const struct create_args *a, const char *path,
			 const char *fmt, uint64_t size, const char *parent,
			 const char *parent_fmt, const struct layout_store *st)
{
	struct json *j = a->js;

	json_obj_begin(j, NULL);
	json_str(j, "file", path);
	json_str(j, "format", fmt);
	json_u64(j, "virtual_size", size);
	json_bool(j, "fixed", a->o.fixed);
	json_str(j, "parent", parent);
	json_str(j, "parent_format", parent_fmt);
	if (st) {
		json_str(j, "store", st->type);
		json_u64(j, "partitions", st->nparts);
	}
	json_obj_end(j);
}

static void print_created(const struct create_args *a, const char *path,
			  const char *fmt, uint64_t size, const char *parent,
			  const char *parent_fmt)
{
	if (a->js) {
		json_created(a, path, fmt, size, parent, parent_fmt, NULL);
		return;
	}
	if (a->quiet)
		return;
	if (parent)
		printf("created %s: %s, %llu bytes, over %s\n", path, fmt,
		       (unsigned long long)size, parent);
	else
		printf("created %s: %s%s, %llu bytes\n", path, fmt,
		       a->o.fixed ? " (fixed)" : "", (unsigned long long)size);
}

/* ---- base layers ---- */

static int create_base(struct create_args *a, const char *name,
		       const char *size_arg)
{
	const char *fmt = a->fmt ? a->fmt : format_of_name(name);
	const struct img_driver *drv;
	struct img *img = NULL;
	int r;

	if (!fmt)
		return usage_err("no -f, and \"%s\" has no .vhd, .vhdx, .qcow2 "
				 "or .img extension", name);
	drv = find_driver(fmt, false);
	if (!drv)
		return CLI_USAGE;
	if (!size_arg)
		return usage_err("a base layer needs a SIZE");
	if (cli_parse_size(size_arg, &a->o.size) < 0 || !a->o.size)
		return usage_err("bad SIZE \"%s\"", size_arg);
	if (ADD_OVERFLOW(a->o.size, 511, &a->o.size))
		return usage_err("SIZE too large \"%s\"", size_arg);
	a->o.size &= ~(uint64_t)511;	/* whole sectors, as qemu-img */
	if (a->o.sector_size && strcmp(fmt, "vhdx") && a->o.sector_size != 512)
		return usage_err("--sector-size 4096 needs -f vhdx");
	if (exists(name)) {
		log_err("%s: already exists", name);
		return CLI_FAIL;
	}
	atomic_dir_clean_for(name);	/* creators killed before the rename */
	r = drv->create(name, &a->o);
	if (r < 0)
		return CLI_FAIL;
	/* what was written must open, at the size asked for */
	r = img_open(name, drv, false, &img);
	if (r == 0 && img->size < a->o.size)
		r = log_err_ret(-EIO, "%s: new image reads as %llu bytes, not "
				"%llu", name, (unsigned long long)img->size,
				(unsigned long long)a->o.size);
	if (r < 0) {
		img_unref(img);
		unlink(name);
		return CLI_FAIL;
	}
	print_created(a, name, fmt, img->size, NULL, NULL);
	img_unref(img);
	return CLI_OK;
}

/* ---- differencing layers ---- */

static const char *diff_format_for(const struct img_driver *parent)
{
	if (!strcmp(parent->name, "vhd") || !strcmp(parent->name, "vhdx") ||
	    !strcmp(parent->name, "qcow2"))
		return parent->name;
	return "qcow2";		/* over raw, Android sparse, qcow v1, ISO */
}

static int create_diff(struct create_args *a, const char *name,
		       const char *size_arg)
{
	/* the files were named on the command line: follow them anywhere */
	struct chain_opts co = { .allow_outside = true };
	struct img_create_parent cp = { 0 };
	const struct img_driver *drv;
	struct chain *c = NULL, *nc = NULL;
	char *path = NULL, *dir = NULL, *real = NULL;
	char *realdir = NULL, *rel = NULL;
	const char *fmt;
	int ret = CLI_FAIL, r;

	if (size_arg && (cli_parse_size(size_arg, &a->o.size) < 0 ||
			 !a->o.size))
		return usage_err("bad SIZE \"%s\"", size_arg);
	if (a->o.fixed)
		return usage_err("--fixed makes no sense for a differencing "
				 "layer");
	if (name && !is_dir(name) && a->next_set)
		return usage_err("--next-level and --next-diff choose the "
				 "name: give no NAME (or a directory)");
	if (a->parent_fmt &&
	    cli_format_expect(a->parent, a->parent_fmt, false) < 0)
		return CLI_USAGE;
	if (chain_open_file(a->parent, NULL, &co, &c) < 0) {
		log_err("%s: cannot be used as a parent (see above)",
			a->parent);
		return CLI_USAGE;
	}
	fmt = a->fmt ? a->fmt : name && !is_dir(name) && format_of_name(name) ?
	      format_of_name(name) : diff_format_for(c->layers[0].img->drv);
	drv = find_driver(fmt, true);
	if (!drv) {
		ret = CLI_USAGE;
		goto out;
	}
	if (name && !is_dir(name)) {
		path = strdup(name);
	} else {
		char *nm;

		dir = name ? strdup(name) : chain_path_dir(a->parent);
		nm = dir ? layer_next_name(a->parent, format_ext(fmt), a->next,
					   stem_taken, dir) : NULL;
		if (!nm) {
			char tag[LAYER_TAG_MAX];

			layer_tag_format(&c->layers[0].tag, tag, sizeof(tag));
			log_err("%s: no free layer name %s %s in %s", a->parent,
				a->next == LAYER_NEXT_LEVEL ? "one level above" :
				a->next == LAYER_NEXT_DIFF ? "for a differencing "
				"image of" : "over", tag[0] ? tag : "it",
				dir ? dir : ".");
			goto out;
		}
		if (!strcmp(dir, "."))
			path = strdup(nm);
		else if (asprintf(&path, "%s/%s", dir, nm) < 0)
			path = NULL;
		free(nm);
	}
	if (!path)
		goto out;
	if (exists(path)) {
		log_err("%s: already exists", path);
		goto out;
	}
	real = realpath(a->parent, NULL);
	free(dir);
	dir = chain_path_dir(path);
	realdir = dir ? realpath(dir, NULL) : NULL;
	if (!real || !realdir) {
		log_err("%s: %s", real ? dir : a->parent, strerror(errno));
		goto out;
	}
	rel = chain_path_relative(realdir, real);
	if (!rel)
		goto out;
	cp.img = c->layers[0].img;
	cp.rel_path = rel;
	cp.abs_path = real;
	cp.format = cp.img->drv->name;
	atomic_dir_clean_for(path);	/* creators killed before the rename */
	r = drv->create_diff(path, &cp, &a->o);
	if (r < 0)
		goto out;
	/* the new layer must resolve to its parent */
	if (chain_open_file(path, NULL, &co, &nc) < 0 || nc->depth < 2 ||
	    nc->layers[1].img->dev != cp.img->dev ||
	    nc->layers[1].img->ino != cp.img->ino) {
		log_err("%s: the new layer does not resolve to %s; removed",
			path, a->parent);
		unlink(path);
		goto out;
	}
	print_created(a, path, fmt, nc->size, a->parent,
		      cp.format);
	ret = CLI_OK;
out:
	chain_free(nc);
	chain_free(c);
	free(rel);
	free(realdir);
	free(real);
	free(dir);
	free(path);
	return ret;
}

/* ---- layouts ---- */

struct sink {
	const struct img_driver *drv;
	struct img *img;
};

static int zero_below(void *ctx __unused, void *buf, size_t n,
		      uint64_t off __unused)
{
	memset(buf, 0, n);	/* a base image: nothing below */
	return 0;
}

static int sink_write(struct sink *s, const void *buf, size_t n, uint64_t off)
{
	const struct img_below below = { zero_below, NULL };

	return s->drv->write(s->img, buf, n, off, &below);
}

/*
 * Run argv with stdout and stderr in a scratch file; on failure log its
 * first line.  0 (also when the tool is not installed: a warning), or
 * -errno.
 */
static int run_tool(const char *what, char *const argv[])
{
	const char *tmpdir = getenv("TMPDIR");
	posix_spawn_file_actions_t fa;
	char *log_path = NULL;
	int fd = -1, st = 0, r;
	pid_t pid;

	if (asprintf(&log_path, "%s/layerimg-mkfs.XXXXXX",
		     tmpdir && *tmpdir ? tmpdir : "/tmp") < 0)
		return -ENOMEM;
	fd = mkstemp(log_path);
	if (fd < 0) {
		r = log_err_ret(-errno, "%s: scratch file %s: %s", what,
				log_path, strerror(errno));
		free(log_path);
		return r;
	}
	unlink(log_path);
	free(log_path);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fd, STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, fd, STDERR_FILENO);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r == ENOENT) {	/* not installed: the partition stays blank */
		close(fd);
		log_warn("%s: %s is not installed; left unformatted", what,
			 argv[0]);
		return 0;
	}
	if (r != 0) {
		close(fd);
		return log_err_ret(-r, "%s: cannot run %s: %s", what, argv[0],
				   strerror(r));
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		char out[512] = "";
		ssize_t n = pread(fd, out, sizeof(out) - 1, 0);
		char *line = out, *nl;

		out[n > 0 ? n : 0] = '\0';
		/* the first line that says something */
		while ((nl = strchr(line, '\n')) && (nl == line ||
		       !strncmp(line, "mkfs.fat 4", 10)))
			line = nl + 1;
		if ((nl = strchr(line, '\n')))
			*nl = '\0';
		close(fd);
		return log_err_ret(-EIO, "%s: %s failed (status %d): %s", what,
				   argv[0], WIFEXITED(st) ? WEXITSTATUS(st) : -1,
				   line);
	}
	close(fd);
	return 0;
}

/* Make a file system in the scratch file tmp for partition p. */
static int make_fs(const struct layout *l, const struct layout_part *p,
		   const char *tmp, const char *what)
{
	char ss[16], hidden[24], fatbits[4] = "";
	char *argv[20];
	int n = 0;

	snprintf(ss, sizeof(ss), "%u", l->sector_size);
	snprintf(hidden, sizeof(hidden), "%llu",
		 (unsigned long long)p->first_lba);
	if (p->fs == LAYOUT_FS_NTFS) {
		argv[n++] = (char *)"mkntfs";
		argv[n++] = (char *)"-F";	/* a regular file */
		argv[n++] = (char *)"-Q";	/* no zeroing, no bad-block scan */
		argv[n++] = (char *)"-q";
		argv[n++] = (char *)"-s";
		argv[n++] = ss;
		argv[n++] = (char *)"-p";	/* partition start (for booting) */
		argv[n++] = hidden;
		argv[n++] = (char *)"-H";
		argv[n++] = (char *)"255";
		argv[n++] = (char *)"-S";
		argv[n++] = (char *)"63";
		argv[n++] = (char *)"-L";
		argv[n++] = p->name;
	} else {
		argv[n++] = (char *)"mkfs.fat";
		if (p->fs == LAYOUT_FS_FAT32) {
			strcpy(fatbits, "32");
			argv[n++] = (char *)"-F";
			argv[n++] = fatbits;
		}
		argv[n++] = (char *)"-S";
		argv[n++] = ss;
		argv[n++] = (char *)"-h";
		argv[n++] = hidden;
		argv[n++] = (char *)"-n";
		argv[n++] = p->name;
	}
	argv[n++] = (char *)tmp;
	argv[n] = NULL;
	return run_tool(what, argv);
}

/* Write the data runs of file fd (size bytes) at base in the image. */
static int copy_runs(struct sink *s, int fd, uint64_t size, uint64_t base,
		     uint32_t ss, uint8_t *buf)
{
	uint64_t off = 0;

	while (off < size) {
		off_t d = lseek(fd, (off_t)off, SEEK_DATA), h;
		uint64_t start, end;

		if (d < 0) {
			if (errno == ENXIO)
				break;		/* only a hole is left */
			return -errno;
		}
		h = lseek(fd, d, SEEK_HOLE);
		if (h < 0)
			return -errno;
		start = (uint64_t)d / ss * ss;
		end = MIN(((uint64_t)h + ss - 1) / ss * ss, size);
		while (start < end) {
			size_t k = (size_t)MIN(end - start, (uint64_t)COPY_CHUNK);
			int r = pread_zeropad(fd, buf, k, start);

			if (r == 0)
				r = sink_write(s, buf, k, base + start);
			if (r < 0)
				return r;
			start += k;
		}
		off = end;
	}
	return 0;
}

/* Format partition p in a scratch file beside out and copy it in. */
static int fill_partition(struct sink *s, const struct layout *l,
			  const struct layout_part *p, const char *out,
			  uint8_t *buf)
{
	char *dir = chain_path_dir(out), *tmp = NULL, *what = NULL;
	int fd = -1, r;

	if (!dir || asprintf(&tmp, "%s/.layerimg-fs.XXXXXX", dir) < 0 ||
	    asprintf(&what, "%s: partition %s (%s)", out, p->name,
		     layout_fs_name(p->fs)) < 0) {
		r = -ENOMEM;
		goto out;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		r = log_err_ret(-errno, "%s: scratch file in %s: %s", what, dir,
				strerror(errno));
		goto out;
	}
	if (ftruncate(fd, (off_t)p->total_bytes) < 0) {
		r = log_err_ret(-errno, "%s: scratch file: %s", what,
				strerror(errno));
		goto out;
	}
	r = make_fs(l, p, tmp, what);
	if (r == 0) {
		r = copy_runs(s, fd, p->total_bytes,
			      p->first_lba * l->sector_size, l->sector_size,
			      buf);
		if (r < 0)
			log_err("%s: copying the file system in: %s", what,
				strerror(-r));
	}
out:
	if (fd >= 0) {
		close(fd);
		unlink(tmp);
	}
	free(tmp);
	free(what);
	free(dir);
	return r;
}

static int build_store(const struct create_args *a, const struct layout *l,
		       const struct layout_store *st, const char *fmt,
		       const struct img_driver *drv, const char *out)
{
	struct img_create_opts o = a->o;
	struct gpt_part *gp = NULL;
	struct gpt_disk d = { 0 };
	struct gpt_image gi = { 0 };
	struct sink s = { write_driver(drv), NULL };
	uint8_t *buf = NULL;
	int r;

	if (!s.drv) {
		log_err("%s: the %s driver cannot write", out, fmt);
		return -ENOTSUP;
	}
	o.size = st->size;
	o.sector_size = !strcmp(fmt, "vhdx") ? l->sector_size : 0;
	atomic_dir_clean_for(out);	/* creators killed before the rename */
	r = drv->create(out, &o);
	if (r < 0)
		return r;
	r = img_open(out, s.drv, true, &s.img);
	if (r == 0 && !s.img->writable)
		r = log_err_ret(-EROFS, "%s: the new image cannot be written",
				out);
	if (r == 0 && s.img->size != st->size)
		r = log_err_ret(-EIO, "%s: new image has %llu bytes, the store "
				"%llu", out, (unsigned long long)s.img->size,
				(unsigned long long)st->size);
	if (r < 0)
		goto out;
	gp = calloc(st->nparts ? st->nparts : 1, sizeof(*gp));
	buf = malloc(COPY_CHUNK);
	if (!gp || !buf) {
		r = -ENOMEM;
		goto out;
	}
	for (unsigned i = 0; i < st->nparts; i++) {
		gp[i].first_lba = st->parts[i].first_lba;
		gp[i].last_lba = st->parts[i].last_lba;
		gp[i].type = st->parts[i].type;
		gp[i].id = st->parts[i].id;
		gp[i].name = st->parts[i].name;
	}
	d.sector_size = l->sector_size;
	d.nsectors = st->size / l->sector_size;
	d.disk_id = st->id;
	d.nparts = st->nparts;
	d.parts = gp;
	r = gpt_build(&d, &gi);
	if (r < 0) {
		log_err("%s: cannot build the GPT (%s)", out, strerror(-r));
		goto out;
	}
	r = sink_write(&s, gi.primary, gi.primary_len, 0);
	if (r == 0)
		r = sink_write(&s, gi.backup, gi.backup_len, gi.backup_off);
	for (unsigned i = 0; i < st->nparts && r == 0; i++)
		if (st->parts[i].fs != LAYOUT_FS_NONE)
			r = fill_partition(&s, l, &st->parts[i], out, buf);
	if (r == 0 && s.drv->flush)
		r = s.drv->flush(s.img);
out:
	gpt_image_free(&gi);
	img_unref(s.img);
	free(gp);
	free(buf);
	if (r < 0)
		unlink(out);
	return r;
}

/* STORETYPE-L0.EXT (or "store<i>"), with only [A-Za-z0-9_.-] kept */
static char *store_file_name(const struct layout *l, unsigned i,
			     const char *ext)
{
	const char *type = l->stores[i].type;
	bool dup = false;
	char *name = NULL;
	int n;

	for (unsigned j = 0; j < l->nstores && type; j++)
		if (j != i && l->stores[j].type &&
		    !strcmp(l->stores[j].type, type))
			dup = true;
	if (!type || !*type)
		n = asprintf(&name, "store%u-L0.%s", i + 1, ext);
	else if (dup)
		n = asprintf(&name, "%s%u-L0.%s", type, i + 1, ext);
	else
		n = asprintf(&name, "%s-L0.%s", type, ext);
	if (n < 0)
		return NULL;
	for (char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || strchr("_.-", *p)) ||
		    (p == name && *p == '.'))
			*p = '_';
	return name;
}

static int create_layout(struct create_args *a, const char *out)
{
	static const uint32_t vhd_sizes[] = { 512, 0 };
	static const uint32_t other_sizes[] = { 512, 4096, 0 };
	const char *fmt = a->fmt ? a->fmt : "vhdx";
	const struct img_driver *drv = find_driver(fmt, false);
	struct layout *l = NULL;
	char **paths = NULL;
	bool outdir;
	int r, ret = CLI_FAIL;

	if (!drv)
		return CLI_USAGE;
	if (a->o.sector_size)
		return usage_err("the layout's SectorSize sets the sector "
				 "size: no --sector-size");
	r = layout_load(a->layout, !strcmp(fmt, "vhd") ? vhd_sizes :
			other_sizes, fmt, &l);
	if (r < 0)
		return CLI_USAGE;
	outdir = is_dir(out);
	if (!outdir && l->nstores > 1) {
		if (mkdir(out, 0755) < 0) {
			log_err("%s: %u stores need a directory: %s", out,
				l->nstores, strerror(errno));
			goto out;
		}
		outdir = true;
	}
	paths = calloc(l->nstores, sizeof(*paths));
	if (!paths)
		goto out;
	for (unsigned i = 0; i < l->nstores; i++) {
		char *nm = outdir ? store_file_name(l, i, format_ext(fmt)) : NULL;

		if (outdir ? (!nm || asprintf(&paths[i], "%s/%s", out, nm) < 0)
			   : !(paths[i] = strdup(out)))
			paths[i] = NULL;
		free(nm);
		if (!paths[i])
			goto out;
		if (exists(paths[i])) {
			log_err("%s: already exists", paths[i]);
			goto out;
		}
	}
	for (unsigned i = 0; i < l->nstores; i++) {
		r = build_store(a, l, &l->stores[i], fmt, drv, paths[i]);
		if (r < 0) {
			for (unsigned j = 0; j < i; j++)
				unlink(paths[j]);
			goto out;
		}
	}
	for (unsigned i = 0; i < l->nstores && a->js; i++)
		json_created(a, paths[i], fmt, l->stores[i].size, NULL, NULL,
			     &l->stores[i]);
	for (unsigned i = 0; i < l->nstores && !a->quiet && !a->js; i++)
		printf("created %s: %s, %llu bytes, %u partitions (store %s)\n",
		       paths[i], fmt, (unsigned long long)l->stores[i].size,
		       l->stores[i].nparts,
		       l->stores[i].type ? l->stores[i].type : "");
	ret = CLI_OK;
out:
	for (unsigned i = 0; paths && i < l->nstores; i++)
		free(paths[i]);
	free(paths);
	layout_free(l);
	return ret;
}

/* ---- the command ---- */

enum { OPT_NEXT_LEVEL = 256, OPT_NEXT_DIFF, OPT_BLOCK_SIZE, OPT_SECTOR_SIZE,
       OPT_FIXED, OPT_LAYOUT, OPT_OUTPUT, OPT_JSON };

/* Run the command for a; with --output=json, the document is printed
 * only when it succeeds (errors stay on stderr). */
static int create_dispatch(struct create_args *a, int nargs, char **args);

static int create_run(struct create_args *a, int nargs, char **args,
		      bool json)
{
	struct json js;
	char *buf = NULL;
	size_t len = 0;
	FILE *mem;
	int ret;

	if (!json)
		return create_dispatch(a, nargs, args);
	mem = open_memstream(&buf, &len);
	if (!mem)
		return log_err_ret(CLI_FAIL, "out of memory");
	json_init(&js, mem, false);
	json_obj_begin(&js, NULL);
	json_u64(&js, "version", 1);
	json_str(&js, "command", "create");
	json_arr_begin(&js, "images");
	a->js = &js;
	ret = create_dispatch(a, nargs, args);
	a->js = NULL;
	json_arr_end(&js);
	json_obj_end(&js);
	json_end(&js);
	if (fclose(mem) != 0 && ret == CLI_OK)
		ret = log_err_ret(CLI_FAIL, "cannot build the JSON result");
	if (ret == CLI_OK)
		fwrite(buf, 1, len, stdout);
	free(buf);
	return ret;
}

int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "parent", required_argument, NULL, 'b' },
		{ "backing", required_argument, NULL, 'b' },
		{ "next-level", no_argument, NULL, OPT_NEXT_LEVEL },
		{ "next-diff", no_argument, NULL, OPT_NEXT_DIFF },
		{ "block-size", required_argument, NULL, OPT_BLOCK_SIZE },
		{ "cluster-size", required_argument, NULL, OPT_BLOCK_SIZE },
		{ "sector-size", required_argument, NULL, OPT_SECTOR_SIZE },
		{ "fixed", no_argument, NULL, OPT_FIXED },
		{ "layout", required_argument, NULL, OPT_LAYOUT },
		{ "backing-format", required_argument, NULL, 'F' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct create_args a = { .next = LAYER_NEXT_DEFAULT };
	bool json = false;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "f:b:F:o:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			a.fmt = cli_format_name(optarg);
			break;
		case 'b':
			a.parent = optarg;
			break;
		case 'F':
			a.parent_fmt = optarg;
			break;
		case OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_try_help();
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'o':
			if (parse_o(&a, optarg) < 0)
				return CLI_USAGE;
			break;
		case 'q':
			a.quiet = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return CLI_OK;
		case OPT_NEXT_LEVEL:
		case OPT_NEXT_DIFF:
			if (a.next_set)
				return usage_err("--next-level and --next-diff "
						 "exclude each other");
			a.next = c == OPT_NEXT_LEVEL ? LAYER_NEXT_LEVEL
						     : LAYER_NEXT_DIFF;
			a.next_set = true;
			break;
		case OPT_BLOCK_SIZE:
			if (parse_u32_size("block size", optarg,
					   &a.o.block_size) < 0)
				return CLI_USAGE;
			break;
		case OPT_SECTOR_SIZE:
			if (parse_u32_size("sector size", optarg,
					   &a.o.sector_size) < 0)
				return CLI_USAGE;
			break;
		case OPT_FIXED:
			a.o.fixed = true;
			break;
		case OPT_LAYOUT:
			a.layout = optarg;
			break;
		default:
			return cli_try_help();
		}
	}
	cli_set_quiet(a.quiet);
	return create_run(&a, argc - optind, argv + optind, json);
}

static int create_dispatch(struct create_args *a, int nargs, char **args)
{
	if (a->o.sector_size && a->o.sector_size != 512 &&
	    a->o.sector_size != 4096)
		return usage_err("sector size must be 512 or 4096");
	if (a->parent_fmt && !a->parent)
		return usage_err("-F names the format of -b PARENT: give -b");
	if (a->layout) {
		if (a->parent || a->next_set)
			return usage_err("--layout makes base images: no -b, "
					 "--next-level or --next-diff");
		if (nargs != 1)
			return usage_err("--layout needs one OUT (a file, or a "
					 "directory)");
		return create_layout(a, args[0]);
	}
	if (a->next_set && !a->parent)
		return usage_err("--next-level and --next-diff need -b PARENT");
	if (a->parent) {
		if (nargs > 2)
			return usage_err("too many arguments");
		return create_diff(a, nargs > 0 ? args[0] : NULL,
				   nargs > 1 ? args[1] : NULL);
	}
	if (nargs != 2)
		return usage_err("a base layer needs NAME and SIZE");
	return create_base(a, args[0], args[1]);
}
