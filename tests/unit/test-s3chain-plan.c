/*
 * Tests of the read plans of s3chain's chunked images (x-read-plan)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "../../block/s3chain.h"

/* An image of 10 chunks of 1 MiB and 3 bytes, in blocks of 64 KiB */
#define SIZE (10 * MiB + 3)
#define PLAN(text) \
    s3chain_read_plan_parse(text, "plan", SIZE, MiB, 64 * KiB, &error_abort)

static void test_blocks(void)
{
    g_autofree uint64_t *planned = PLAN(
        "0 1\n"
        "\n"
        "1048000 1000\n"            /* the last block of 0, the first of 1 */
        "3145728 1048576\n"         /* all of chunk 3 */
        "5308416 131073\n"          /* 5 from block 1 on, into block 3 */
        "10485760 3");              /* the end, no newline */

    g_assert_cmphex(planned[0], ==, 0x8001);
    g_assert_cmphex(planned[1], ==, 0x1);
    g_assert_cmphex(planned[2], ==, 0);
    g_assert_cmphex(planned[3], ==, 0xffff);
    g_assert_cmphex(planned[4], ==, 0);
    g_assert_cmphex(planned[5], ==, 0xe);
    g_assert_cmphex(planned[10], ==, 0x1);
}

static void test_empty(void)
{
    g_autofree uint64_t *planned = PLAN("");

    for (int i = 0; i <= 10; i++) {
        g_assert_cmphex(planned[i], ==, 0);
    }
}

static void parse_fails(const char *text, const char *line)
{
    Error *err = NULL;
    uint64_t *planned = s3chain_read_plan_parse(text, "plan", SIZE, MiB,
                                                64 * KiB, &err);
    g_autofree char *want = g_strdup_printf(
        "read plan plan, %s: want \"OFFSET LENGTH\" within the image's "
        "10485763 bytes", line);

    g_assert_null(planned);
    g_assert_nonnull(err);
    if (!strstr(error_get_pretty(err), want)) {
        g_test_message("got: %s", error_get_pretty(err));
        g_assert_not_reached();
    }
    error_free(err);
}

static void test_bad(void)
{
    parse_fails("0 1\n5\n", "line 2");
    parse_fails("5 0\n", "line 1");
    parse_fails("x 1\n", "line 1");
    parse_fails("1 2 3\n", "line 1");
    parse_fails("1\t2\n", "line 1");
    parse_fails("10485763 1\n", "line 1");
    parse_fails("0 10485764\n", "line 1");
    parse_fails("1 -1\n", "line 1");
    parse_fails("0 1\n\n18446744073709551615 2\n", "line 3");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/s3chain/plan/blocks", test_blocks);
    g_test_add_func("/s3chain/plan/empty", test_empty);
    g_test_add_func("/s3chain/plan/bad", test_bad);
    return g_test_run();
}
