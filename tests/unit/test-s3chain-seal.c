/*
 * Known answers of the keys, sealed blocks and manifest MAC of s3chain's
 * encrypted images, so that the format cannot drift unseen
 *
 * The expected bytes were computed apart from this code, with Python's
 * cryptography (OpenSSL): HKDF-SHA-256, AES-256-GCM and HMAC-SHA-256 as
 * docs/object-layout.rst describes them.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "../../block/s3chain-format.h"

static uint8_t user_key[S3CHAIN_KEY_LEN];
static uint8_t image_id[S3CHAIN_ID_LEN];

static const char plain[] = "s3chain: a block sealed where it is stored\n";
static const char sealed_hex[] =
    "a0a1a2a3a4a5a6a7a8a9aaab1abb9e5f85d14d9bb2efc0ec970ca18b0b2fb547052d"
    "78c6a9bd3d0b49124c21c7d6a406ebe6ed4cf4486bfebd3b65e855eb45dec759c699"
    "0f0045";

static char *hex_of(const uint8_t *bytes, size_t n)
{
    GString *hex = g_string_new(NULL);

    for (size_t i = 0; i < n; i++) {
        g_string_append_printf(hex, "%02x", bytes[i]);
    }
    return g_string_free(hex, false);
}

static void test_keys(void)
{
    uint8_t id[S3CHAIN_ID_LEN];
    S3chainImageKeys keys;
    g_autofree char *id_hex = NULL;
    g_autofree char *data_hex = NULL;
    g_autofree char *mac_hex = NULL;

    g_assert_true(s3chain_key_id(user_key, id));
    id_hex = hex_of(id, sizeof(id));
    g_assert_cmpstr(id_hex, ==, "511ee7cad0d86d93a4242b4e1be2d0f7");
    g_assert_true(s3chain_image_keys(user_key, image_id, &keys));
    data_hex = hex_of(keys.data, sizeof(keys.data));
    mac_hex = hex_of(keys.mac, sizeof(keys.mac));
    g_assert_cmpstr(data_hex, ==, "22dc1ef6076f1163575468b15f281de1"
                    "50a5796764b089630cf2b0bc03c11be1");
    g_assert_cmpstr(mac_hex, ==, "326ca7874b13bc91c5ff8e8a09121ba0"
                    "a96ab97e3faddd6b3ccfb5310b58c49e");
    g_assert_cmpmem(keys.image_id, 16, image_id, 16);
    s3chain_image_keys_clear(&keys);
}

static S3chainSealer *sealer_new(void)
{
    S3chainImageKeys keys;
    S3chainSealer *s;

    g_assert_true(s3chain_image_keys(user_key, image_id, &keys));
    s = s3chain_sealer_new(&keys);
    g_assert_nonnull(s);
    s3chain_image_keys_clear(&keys);
    return s;
}

/* Block 5 of chunk 3, uploaded as "7.2", under a fixed nonce */
static void test_seal(void)
{
    S3chainSealer *s = sealer_new();
    size_t len = strlen(plain);
    g_autofree uint8_t *out = g_malloc(len + S3CHAIN_SEAL_OVERHEAD);
    g_autofree uint8_t *back = g_malloc(len);
    g_autofree char *out_hex = NULL;
    uint8_t nonce[S3CHAIN_NONCE_LEN];

    for (int i = 0; i < S3CHAIN_NONCE_LEN; i++) {
        nonce[i] = 0xa0 + i;
    }
    g_assert_true(s3chain_seal_block(s, 3, "7.2", 5, nonce,
                                     (const uint8_t *)plain, len, out));
    out_hex = hex_of(out, len + S3CHAIN_SEAL_OVERHEAD);
    g_assert_cmpstr(out_hex, ==, sealed_hex);
    g_assert_true(s3chain_open_block(s, 3, "7.2", 5, out,
                                     len + S3CHAIN_SEAL_OVERHEAD, back));
    g_assert_cmpmem(back, len, plain, len);

    /* anywhere else, it does not open: another block, chunk or upload */
    g_assert_false(s3chain_open_block(s, 3, "7.2", 4, out,
                                      len + S3CHAIN_SEAL_OVERHEAD, back));
    g_assert_false(s3chain_open_block(s, 2, "7.2", 5, out,
                                      len + S3CHAIN_SEAL_OVERHEAD, back));
    g_assert_false(s3chain_open_block(s, 3, "7.1", 5, out,
                                      len + S3CHAIN_SEAL_OVERHEAD, back));
    /* nor with a bit flipped, nor cut short */
    out[20] ^= 0x10;
    g_assert_false(s3chain_open_block(s, 3, "7.2", 5, out,
                                      len + S3CHAIN_SEAL_OVERHEAD, back));
    out[20] ^= 0x10;
    g_assert_false(s3chain_open_block(s, 3, "7.2", 5, out,
                                      len + S3CHAIN_SEAL_OVERHEAD - 1, back));
    g_assert_false(s3chain_open_block(s, 3, "7.2", 5, out, 10, back));
    s3chain_sealer_free(s);
}

/* Each seal draws its own nonce */
static void test_random_nonce(void)
{
    S3chainSealer *s = sealer_new();
    size_t len = strlen(plain);
    g_autofree uint8_t *a = g_malloc(len + S3CHAIN_SEAL_OVERHEAD);
    g_autofree uint8_t *b = g_malloc(len + S3CHAIN_SEAL_OVERHEAD);

    g_assert_true(s3chain_seal_block(s, 0, "1.1", 0, NULL,
                                     (const uint8_t *)plain, len, a));
    g_assert_true(s3chain_seal_block(s, 0, "1.1", 0, NULL,
                                     (const uint8_t *)plain, len, b));
    g_assert_true(memcmp(a, b, S3CHAIN_NONCE_LEN) != 0);
    g_assert_true(memcmp(a, b, len + S3CHAIN_SEAL_OVERHEAD) != 0);
    s3chain_sealer_free(s);
}

/* Where a manifest's MAC is, and what it must look like */
static void test_mac_split(void)
{
    const char *mac = "862b1cad034a5a922ff56216134488fc"
                      "f7d01eff547ba405b63b6d26c33f2b94";
    g_autofree char *text = g_strdup_printf(
        "{\"chunks\": []" S3CHAIN_MAC_MEMBER "%s\"}\n", mac);
    g_autofree char *upper = g_ascii_strup(text, -1);
    g_autofree char *trailing = g_strconcat(text, " ", NULL);
    const char *got;
    size_t covered;

    g_assert_true(s3chain_manifest_mac_split(text, &covered, &got));
    g_assert_cmpuint(covered, ==, strlen("{\"chunks\": []"));
    g_assert_cmpmem(got, 64, mac, 64);
    g_assert_false(s3chain_manifest_mac_split(upper, &covered, &got));
    g_assert_false(s3chain_manifest_mac_split(trailing, &covered, &got));
    g_assert_false(s3chain_manifest_mac_split("{\"chunks\": []}", &covered,
                                              &got));
}

int main(int argc, char **argv)
{
    for (int i = 0; i < S3CHAIN_KEY_LEN; i++) {
        user_key[i] = i;
    }
    for (int i = 0; i < S3CHAIN_ID_LEN; i++) {
        image_id[i] = i;
    }
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/s3chain/seal/keys", test_keys);
    g_test_add_func("/s3chain/seal/seal", test_seal);
    g_test_add_func("/s3chain/seal/random-nonce", test_random_nonce);
    g_test_add_func("/s3chain/seal/mac-split", test_mac_split);
    return g_test_run();
}
