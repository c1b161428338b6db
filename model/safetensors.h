/* Strict safetensors reader (mmap) and writer.
 *
 * Checks on open: header length <= MOE_ST_MAX_HEADER and inside the file;
 * header is valid UTF-8 JSON with no duplicate keys; every dtype known; the
 * element count x dtype size does not overflow and equals the byte range;
 * byte ranges are non-overlapping, contiguous and cover the data exactly
 * (no gaps, no trailing bytes).  Any violation returns NULL with
 * moe_last_error() naming the file, the tensor and the rule. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include "../common/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_ST_MAX_HEADER (100u * 1000u * 1000u) /* bytes */
#define MOE_ST_MAX_DIMS 8

enum moe_dtype {
    MOE_DT_F32, MOE_DT_F16, MOE_DT_BF16, MOE_DT_F64,
    MOE_DT_I64, MOE_DT_I32, MOE_DT_I16, MOE_DT_I8, MOE_DT_U8, MOE_DT_BOOL,
    MOE_DT_F8_E4M3, MOE_DT_F8_E5M2, /* FP8 (torch's float8_e4m3fn, float8_e5m2) */
    MOE_DT_COUNT
};
size_t moe_dtype_size(enum moe_dtype dt);           /* bytes per element */
const char *moe_dtype_name(enum moe_dtype dt);      /* "BF16", ... */
bool moe_dtype_parse(const char *name, enum moe_dtype *out);

struct moe_st_tensor {
    const char *name;
    enum moe_dtype dtype;
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS];
    uint64_t numel;
    const void *data;     /* inside the mapping; valid until moe_st_close */
    uint64_t nbytes;
    uint64_t file_offset; /* absolute byte offset of data in the file */
};

struct moe_st_file;

struct moe_st_file *moe_st_open(const char *path);
/* Parse an in-memory image (not copied; must outlive the handle). `what` names it in errors. */
struct moe_st_file *moe_st_open_memory(const void *buf, size_t len, const char *what);
void moe_st_close(struct moe_st_file *f);

size_t moe_st_count(const struct moe_st_file *f);
const struct moe_st_tensor *moe_st_at(const struct moe_st_file *f, size_t i);
const struct moe_st_tensor *moe_st_find(const struct moe_st_file *f, const char *name);
const char *moe_st_path(const struct moe_st_file *f);
/* MOE_OK while every byte of f read from its mapping was the file's; else MOE_EIO naming the file: a
 * page could not be read (the file shrank after it was opened, or the read failed) and that page and the
 * rest of the mapping read as zeros since, where the access would have ended the process (SIGBUS).
 * Checked by moe_st_open; a reader of the data checks again after reading it. */
enum moe_status moe_st_check(const struct moe_st_file *f);
/* Metadata string value for key in "__metadata__", or NULL. */
const char *moe_st_metadata(const struct moe_st_file *f, const char *key);

/* Writer: tensors are written in the given order, data copied from .data.
 * Metadata keys and values are JSON strings: one that is not valid UTF-8 is
 * MOE_EINVAL naming the key, and no file is written. */
struct moe_st_out {
    const char *name;
    enum moe_dtype dtype;
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS];
    const void *data;
};
enum moe_status moe_st_write(const char *path, const struct moe_st_out *t, size_t n,
                             const char *const *meta_kv /* key,value,...,NULL or NULL */);

#ifdef __cplusplus
}
#endif
#endif
