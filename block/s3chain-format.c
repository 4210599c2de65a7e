/*
 * s3chain: the format of chunked images in the bucket, one definition for
 * the driver and the s3chain command (docs/object-layout.rst)
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "s3chain-format.h"

#define LOWER_HEX "0123456789abcdef"

char *s3chain_chunk_key(const char *image_key, uint64_t index,
                        const char *tag)
{
    return g_strdup_printf("%s.d/%016" PRIx64 ".%s", image_key, index, tag);
}

static bool is_pow2(uint64_t n)
{
    return n && !(n & (n - 1));
}

/* @s is @len lower-case hex digits */
static bool is_lower_hex(const char *s, size_t len)
{
    return s && strlen(s) == len && strspn(s, LOWER_HEX) == len;
}

bool s3chain_chunk_size_is_valid(uint64_t chunk_size)
{
    return chunk_size >= S3CHAIN_MIN_CHUNK_SIZE &&
           chunk_size <= S3CHAIN_MAX_CHUNK_SIZE && is_pow2(chunk_size);
}

bool s3chain_chunk_index_is_valid(uint64_t index, uint64_t size,
                                  uint64_t chunk_size)
{
    return index < size / chunk_size + !!(size % chunk_size);
}

unsigned s3chain_entry_fields_max(uint64_t version)
{
    /* version 1: [index, tag, md5]; each later one up to 5 added a field */
    return version < 5 ? version + 2 : 7;
}

const char *s3chain_entry_shape(uint64_t version)
{
    static const char *const shapes[] = {
        "[index, tag, md5]",
        "[index, tag, md5, crc32]",
        "[index, tag, md5, crc32, block-size]",
        "[index, tag, md5, crc32, block-size, block-sums]",
        "[index, tag, md5, crc32, block-size, block-sums[, patches]]",
        "[index, tag, md5, crc32, block-size, block-sums, stored-lengths]",
    };

    /* version 7 entries are those of version 6 */
    return shapes[version < 1 ? 0 : version > 6 ? 5 : version - 1];
}

bool s3chain_tag_is_valid(const char *tag)
{
    return tag && *tag && strspn(tag, LOWER_HEX ".") == strlen(tag);
}

bool s3chain_md5_from_hex(const char *hex, uint8_t md5[16])
{
    if (!hex || strlen(hex) != 32) {
        return false;
    }
    for (int i = 0; i < 16; i++) {
        int hi = g_ascii_xdigit_value(hex[2 * i]);
        int lo = g_ascii_xdigit_value(hex[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            return false;
        }
        md5[i] = hi << 4 | lo;
    }
    return true;
}

bool s3chain_crc32_from_hex(const char *hex, uint32_t *crc32)
{
    if (!is_lower_hex(hex, 8)) {
        return false;
    }
    *crc32 = g_ascii_strtoull(hex, NULL, 16);
    return true;
}

bool s3chain_block_size_is_valid(uint64_t block_size, uint64_t chunk_size)
{
    return is_pow2(block_size) && block_size <= chunk_size &&
           chunk_size / block_size <= S3CHAIN_MAX_BLOCKS;
}

bool s3chain_block_sums_are_valid(const char *sums, uint64_t chunk_size,
                                  uint64_t block_size)
{
    return is_lower_hex(sums, 8 * (chunk_size / block_size));
}

char *s3chain_words_to_hex(const uint32_t *words, unsigned n)
{
    GString *hex = g_string_sized_new(8 * n);

    for (unsigned i = 0; i < n; i++) {
        g_string_append_printf(hex, "%08" PRIx32, words[i]);
    }
    return g_string_free(hex, false);
}

bool s3chain_words_from_hex(const char *hex, unsigned n, uint32_t *words)
{
    if (!is_lower_hex(hex, 8 * (size_t)n)) {
        return false;
    }
    for (unsigned i = 0; words && i < n; i++) {
        char digits[9] = { 0 };

        memcpy(digits, hex + 8 * i, 8);
        words[i] = g_ascii_strtoull(digits, NULL, 16);
    }
    return true;
}

bool s3chain_compress_is_valid(const char *compress)
{
    return compress && !strcmp(compress, S3CHAIN_COMPRESS_ZSTD);
}

bool s3chain_encrypt_is_valid(const char *encrypt)
{
    return encrypt && !strcmp(encrypt, S3CHAIN_ENCRYPT_AES_256_GCM);
}

bool s3chain_id_from_hex(const char *hex, uint8_t id[16])
{
    return is_lower_hex(hex, 32) && s3chain_md5_from_hex(hex, id);
}

char *s3chain_id_to_hex(const uint8_t id[16])
{
    GString *hex = g_string_sized_new(32);

    for (int i = 0; i < 16; i++) {
        g_string_append_printf(hex, "%02x", id[i]);
    }
    return g_string_free(hex, false);
}

bool s3chain_stored_lengths_from_hex(const char *hex, uint64_t chunk_size,
                                     uint64_t block_size, bool compressed,
                                     bool sealed, uint32_t *lengths)
{
    uint32_t words[S3CHAIN_MAX_BLOCKS];
    unsigned n = chunk_size / block_size;
    uint64_t overhead = sealed ? S3CHAIN_SEAL_OVERHEAD : 0;

    if (n > S3CHAIN_MAX_BLOCKS || !s3chain_words_from_hex(hex, n, words)) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        if (words[i] &&
            (compressed ? words[i] <= overhead ||
                          words[i] > block_size + overhead
                        : words[i] != block_size + overhead)) {
            return false;
        }
    }
    if (lengths) {
        memcpy(lengths, words, n * sizeof(words[0]));
    }
    return true;
}

bool s3chain_patch_blocks_from_hex(const char *hex, uint64_t chunk_size,
                                   uint64_t *blocks)
{
    uint64_t n = chunk_size / s3chain_block_size(chunk_size);
    uint64_t mask;

    if (!is_lower_hex(hex, 16)) {
        return false;
    }
    mask = g_ascii_strtoull(hex, NULL, 16);
    if (!mask || (n < 64 && mask >> n)) {
        return false;
    }
    *blocks = mask;
    return true;
}
