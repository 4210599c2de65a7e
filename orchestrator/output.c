/*
 * output.c: progress for people (a bar) and for controllers (JSON lines)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdarg.h>
#include <stdio.h>

#define PROGRESS_INTERVAL_US G_USEC_PER_SEC

static S3cOutputMode output_mode;
static int64_t last_progress;

void s3c_output_init(S3cOutputMode mode)
{
    output_mode = mode;
}

void s3c_output_result(json_object *obj)
{
    if (output_mode == S3C_OUTPUT_BAR) {
        fputc('\n', stderr);
    }
    printf("%s\n", json_object_to_json_string_ext(
               obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    fflush(stdout);
    json_object_put(obj);
}

void s3c_output_event(json_object *obj)
{
    if (output_mode == S3C_OUTPUT_JSON) {
        s3c_output_result(json_object_get(obj));
    }
    json_object_put(obj);
}

void s3c_output_progress(uint64_t done, uint64_t total)
{
    int64_t now = g_get_monotonic_time();
    bool final = done == total;

    if (!final && now - last_progress < PROGRESS_INTERVAL_US) {
        return;
    }
    last_progress = now;
    if (output_mode == S3C_OUTPUT_JSON) {
        s3c_output_event(s3c_json_obj(
            "event", json_object_new_string("progress"),
            "bytes-done", json_object_new_int64(done),
            "bytes-total", json_object_new_int64(total), NULL));
    } else if (output_mode == S3C_OUTPUT_BAR) {
        const int width = 40;
        int filled = total ? (int)(width * done / total) : width;
        g_autofree char *bar = g_strnfill(filled, '#');
        g_autofree char *rest = g_strnfill(width - filled, '.');

        fprintf(stderr, "\r[%s%s] %3d%% %" G_GUINT64_FORMAT "/%"
                G_GUINT64_FORMAT " MiB", bar, rest,
                total ? (int)(100 * done / total) : 100, done >> 20,
                total >> 20);
        fflush(stderr);
    }
}

void s3c_output_info(const char *fmt, ...)
{
    va_list ap;

    if (output_mode != S3C_OUTPUT_BAR) {
        return;
    }
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
