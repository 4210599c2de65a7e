/*
 * xml.c: libvirt's XML documents read into a small tree with GLib's
 * GMarkup, bounded in size and depth, and looked up by element paths
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <string.h>

/* Far beyond any domain's XML; a document past it is refused */
#define XML_MAX_BYTES (16 * 1024 * 1024)
#define XML_MAX_DEPTH 64

struct S3cXml {
    char *name;
    GHashTable *attrs;
    GString *text;
    GPtrArray *children;        /* of S3cXml */
    S3cXml *parent;
};

typedef struct XmlParse {
    S3cXml *root;
    S3cXml *at;
    int depth;
} XmlParse;

void s3c_xml_free(S3cXml *node)
{
    if (!node) {
        return;
    }
    g_free(node->name);
    g_hash_table_unref(node->attrs);
    g_string_free(node->text, true);
    g_ptr_array_unref(node->children);
    g_free(node);
}

static void xml_start(GMarkupParseContext *ctx, const char *name,
                      const char **attr_names, const char **attr_values,
                      gpointer opaque, GError **err)
{
    XmlParse *p = opaque;
    S3cXml *node;

    if (++p->depth > XML_MAX_DEPTH || (!p->at && p->root)) {
        g_set_error(err, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                    "nested too deeply, or more than one root");
        return;
    }
    node = g_new0(S3cXml, 1);
    node->name = g_strdup(name);
    node->attrs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                        g_free);
    node->text = g_string_new(NULL);
    node->children = g_ptr_array_new_with_free_func(
        (GDestroyNotify)s3c_xml_free);
    for (size_t i = 0; attr_names[i]; i++) {
        g_hash_table_replace(node->attrs, g_strdup(attr_names[i]),
                             g_strdup(attr_values[i]));
    }
    node->parent = p->at;
    if (p->at) {
        g_ptr_array_add(p->at->children, node);
    } else {
        p->root = node;
    }
    p->at = node;
}

static void xml_end(GMarkupParseContext *ctx, const char *name,
                    gpointer opaque, GError **err)
{
    XmlParse *p = opaque;

    p->depth--;
    p->at = p->at->parent;
}

static void xml_text(GMarkupParseContext *ctx, const char *text, gsize len,
                     gpointer opaque, GError **err)
{
    XmlParse *p = opaque;

    if (p->at) {
        g_string_append_len(p->at->text, text, len);
    }
}

S3cXml *s3c_xml_parse(const char *doc, const char *what, GError **err)
{
    static const GMarkupParser parser = {
        .start_element = xml_start,
        .end_element = xml_end,
        .text = xml_text,
    };
    XmlParse p = { 0 };
    g_autoptr(GError) local = NULL;
    GMarkupParseContext *ctx;
    size_t len = strlen(doc);
    bool ok;

    if (len > XML_MAX_BYTES) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s is %zu bytes of XML, more than s3chain reads (%d)",
                    what, len, XML_MAX_BYTES);
        return NULL;
    }
    ctx = g_markup_parse_context_new(&parser, 0, &p, NULL);
    ok = g_markup_parse_context_parse(ctx, doc, len, &local) &&
         g_markup_parse_context_end_parse(ctx, &local) && p.root;
    g_markup_parse_context_free(ctx);
    if (!ok) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "%s is not XML that s3chain understands: %s", what,
                    local ? local->message : "no root element");
        s3c_xml_free(p.root);
        return NULL;
    }
    return p.root;
}

const char *s3c_xml_attr(const S3cXml *node, const char *name)
{
    return node ? g_hash_table_lookup(node->attrs, name) : NULL;
}

const char *s3c_xml_text(const S3cXml *node)
{
    return node ? node->text->str : NULL;
}

/* The children of @node named @name, in document order */
GPtrArray *s3c_xml_children(const S3cXml *node, const char *name)
{
    GPtrArray *out = g_ptr_array_new();

    for (guint i = 0; node && i < node->children->len; i++) {
        S3cXml *child = g_ptr_array_index(node->children, i);

        if (!strcmp(child->name, name)) {
            g_ptr_array_add(out, child);
        }
    }
    return out;
}

S3cXml *s3c_xml_find(const S3cXml *node, const char *path)
{
    g_auto(GStrv) steps = g_strsplit(path, "/", -1);
    const S3cXml *at = node;

    for (size_t i = 0; at && steps[i]; i++) {
        const S3cXml *next = NULL;

        for (guint j = 0; j < at->children->len && !next; j++) {
            S3cXml *child = g_ptr_array_index(at->children, j);

            if (!strcmp(child->name, steps[i])) {
                next = child;
            }
        }
        at = next;
    }
    return (S3cXml *)at;
}
