/*
 * json.c: building and reading json-c objects tersely
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdarg.h>

json_object *s3c_json_obj(const char *name, ...)
{
    json_object *obj = json_object_new_object();
    va_list ap;

    va_start(ap, name);
    for (; name; name = va_arg(ap, const char *)) {
        json_object_object_add(obj, name, va_arg(ap, json_object *));
    }
    va_end(ap);
    return obj;
}

size_t s3c_json_len(json_object *list)
{
    return json_object_is_type(list, json_type_array)
           ? json_object_array_length(list) : 0;
}

json_object *s3c_json_find_id(json_object *list, const char *id)
{
    for (size_t i = 0; i < s3c_json_len(list); i++) {
        json_object *item = json_object_array_get_idx(list, i);

        if (!g_strcmp0(s3c_json_str(item, "id"), id)) {
            return item;
        }
    }
    return NULL;
}

const char *s3c_json_str(json_object *obj, const char *name)
{
    json_object *v;

    if (!json_object_object_get_ex(obj, name, &v) ||
        !json_object_is_type(v, json_type_string)) {
        return NULL;
    }
    return json_object_get_string(v);
}

int64_t s3c_json_int(json_object *obj, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(obj, name, &v) ?
           json_object_get_int64(v) : 0;
}

bool s3c_json_bool(json_object *obj, const char *name)
{
    json_object *v;

    return json_object_object_get_ex(obj, name, &v) &&
           json_object_get_boolean(v);
}

json_object *s3c_json_seconds(double seconds)
{
    g_autofree char *text = g_strdup_printf("%.3f", seconds);

    return json_object_new_double_s(seconds, text);
}
