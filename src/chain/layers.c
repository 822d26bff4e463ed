// placeholder, being written now
#include <string.h>
#include "layers.h"
void layer_tag_parse(const char *name, struct layer_tag *t) { (void)name; memset(t, 0, sizeof(*t)); }
void layer_tag_format(const struct layer_tag *t, char *buf, size_t len) { (void)t; if (len) buf[0] = 0; }
const char *layer_check_self(const struct layer_tag *t) { (void)t; return NULL; }
const char *layer_check_pair(const struct layer_tag *c, const struct layer_tag *p) { (void)c; (void)p; return NULL; }
