/* image.c: what the command reads of s3chain images: their manifests */
#include "s3chain.h"

bool s3c_image_stored_bytes(const S3cRepo *repo, const char *key,
                            uint64_t *bytes, GError **err)
{
    g_autoptr(GString) body = NULL;
    g_autoptr(GError) local = NULL;
    json_object *manifest, *chunks;
    uint64_t size, chunk_size;

    if (!s3c_s3_get(repo, key, &body, &local)) {
        if (!local) {
            g_set_error(err, S3C_ERROR, S3C_EXIT_TRANSIENT,
                        "image s3://%s/%s is missing", repo->bucket, key);
        } else {
            g_propagate_error(err, g_steal_pointer(&local));
        }
        return false;
    }
    manifest = json_tokener_parse(body->str);
    size = s3c_json_int(manifest, "size");
    chunk_size = s3c_json_int(manifest, "chunk-size");
    if (!manifest || !chunk_size ||
        !json_object_object_get_ex(manifest, "chunks", &chunks)) {
        g_set_error(err, S3C_ERROR, S3C_EXIT_INTERNAL,
                    "s3://%s/%s is not an s3chain image manifest",
                    repo->bucket, key);
        json_object_put(manifest);
        return false;
    }
    *bytes = 0;
    for (size_t i = 0; i < json_object_array_length(chunks); i++) {
        uint64_t index = json_object_get_int64(
            json_object_array_get_idx(json_object_array_get_idx(chunks, i),
                                      0));
        uint64_t start = index * chunk_size;

        *bytes += start < size ? MIN(chunk_size, size - start) : 0;
    }
    json_object_put(manifest);
    return true;
}
