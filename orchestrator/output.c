/*
 * output.c: progress for people (a bar) and for controllers (JSON lines),
 * and the errors and the interruption that every part reports to them
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "s3chain.h"

#include <stdarg.h>
#include <stdio.h>

#define PROGRESS_INTERVAL_US G_USEC_PER_SEC

volatile sig_atomic_t s3c_interrupted;

G_DEFINE_QUARK(s3chain-error-quark, s3c_error)

static S3cOutputMode output_mode;
static int64_t last_progress;
static int64_t first_progress;  /* when the bar began, for its rate */
static bool bar_open;           /* the bar is stderr's unfinished line */
static uint64_t last_done;      /* what the bar showed last */

/* What comes after the bar starts a line of its own */
static void end_bar_line(void)
{
    if (bar_open) {
        fputc('\n', stderr);
        bar_open = false;
    }
}

/* g_printerr's warnings and errors, after the bar */
static void print_after_bar(const char *text)
{
    end_bar_line();
    fputs(text, stderr);
}

void s3c_output_init(S3cOutputMode mode)
{
    output_mode = mode;
    g_set_printerr_handler(print_after_bar);
}

void s3c_output_result(json_object *obj)
{
    end_bar_line();
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

void s3c_output_cleaned(const char *where, GPtrArray *items)
{
    g_autoptr(GString) text = g_string_new(NULL);
    json_object *list = json_object_new_array();

    if (!items->len) {
        json_object_put(list);
        return;
    }
    for (guint i = 0; i < items->len; i++) {
        const char *item = g_ptr_array_index(items, i);

        g_string_append_printf(text, "%s%s", i ? "; " : "", item);
        json_object_array_add(list, json_object_new_string(item));
    }
    s3c_output_warning("cleaned up %s after a killed command: %s", where,
                       text->str);
    s3c_output_event(s3c_json_obj(
        "event", json_object_new_string("cleaned-up"),
        "where", json_object_new_string(where),
        "items", list, NULL));
}

void s3c_output_progress(uint64_t done, uint64_t total)
{
    int64_t now = g_get_monotonic_time();
    bool final = done == total;

    if (!first_progress) {
        first_progress = now;
    }
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
        double seconds = (now - first_progress) / 1e6;
        double rate = seconds > 0 ? done / seconds : 0;
        int64_t left = rate > 0 ? (int64_t)((total - done) / rate) : -1;
        int64_t took = (int64_t)seconds;
        g_autofree char *when =
            final ? g_strdup_printf("in %" G_GINT64_FORMAT ":%02d",
                                    took / 60, (int)(took % 60))
            : left < 0 ? g_strdup("--:-- left")
            : g_strdup_printf("%" G_GINT64_FORMAT ":%02d left", left / 60,
                              (int)(left % 60));

        if (final && !bar_open && last_done == total) {
            return;             /* told already */
        }
        fprintf(stderr, "\r[%s%s] %3d%% %" G_GUINT64_FORMAT "/%"
                G_GUINT64_FORMAT " MiB  %.1f MiB/s  %s  ", bar, rest,
                total ? (int)(100 * done / total) : 100, done >> 20,
                total >> 20, rate / (1024 * 1024), when);
        bar_open = true;
        last_done = done;
        if (final) {
            end_bar_line();
        }
        fflush(stderr);
    }
}

void s3c_output_warning(const char *fmt, ...)
{
    g_autofree char *text = NULL;
    va_list ap;

    va_start(ap, fmt);
    text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* through print_after_bar, as every g_printerr */
    g_printerr("s3chain: warning: %s\n", text);
}

void s3c_output_info(const char *fmt, ...)
{
    va_list ap;

    if (output_mode != S3C_OUTPUT_BAR) {
        return;
    }
    end_bar_line();
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
