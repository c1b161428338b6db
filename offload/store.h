/* The packed expert store (`moeflow pack`): one file per model holding every
 * routed expert's gate, up and down weights contiguously in their stored
 * dtype, one 4 KiB-aligned record per (MoE layer, expert), each with an xxh3
 * checksum.  A single O_DIRECT read of record_stride bytes fetches an expert.
 * Byte layout: docs/expert-store.md. */
#ifndef MOE_STORE_H
#define MOE_STORE_H

#include "../common/moe.h"
#include "../model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_STORE_MAGIC "MOESTORE"      /* 8 bytes, no NUL */
#define MOE_STORE_VERSION 2u
#define MOE_STORE_ALIGN 4096u           /* record and data alignment, bytes */
#define MOE_STORE_FIXED 256u            /* bytes of the fixed header before the record table */
#define MOE_STORE_ENTRY 32u             /* bytes per record-table entry */

/* Identity and layout of the model a store was written for. */
struct moe_store_info {
    char model[64];              /* model directory base name (informative) */
    uint32_t family;             /* enum moe_family */
    uint32_t n_layers, hidden, expert_inter, n_experts, top_k;
    enum moe_dtype dtype;        /* stored dtype of the expert weights (F8_E4M3: FP8 records, model.h) */
    uint32_t block_rows, block_cols; /* F8_E4M3: the rows x columns each block factor covers; else 0 */
    uint32_t n_records;          /* MoE layers x experts */
    uint64_t fingerprint;        /* xxh3 of every MoE layer's router and of the first 64 bytes of each
                                    of its experts' matrices */
    uint64_t gate_bytes, up_bytes, down_bytes; /* per record, in this order */
    uint64_t record_bytes;       /* gate + up + down */
    uint64_t record_stride;      /* record_bytes rounded up to MOE_STORE_ALIGN */
    uint64_t data_offset;        /* first record, multiple of MOE_STORE_ALIGN */
};

struct moe_store_record {
    uint32_t layer, expert;
    uint64_t offset;             /* absolute, multiple of MOE_STORE_ALIGN */
    uint64_t size;               /* record_bytes */
    uint64_t checksum;           /* XXH3_64bits of the size payload bytes */
};

/* Progress callback: done of total records written. */
typedef void (*moe_store_progress_fn)(void *ud, uint32_t done, uint32_t total);

/* Write the store of model m to path (via path.tmp + rename, so a crashed
 * pack never leaves a valid-looking store). */
enum moe_status moe_store_pack(const struct moe_model *m, const char *path,
                               moe_store_progress_fn progress, void *ud);

/* Identity and layout of a loaded model as a store would record it, the fingerprint left 0 (computing
 * it reads a page of every expert matrix: moe_store_fingerprint). */
enum moe_status moe_store_info_of(const struct moe_model *m, struct moe_store_info *out);
/* The weights fingerprint a store of m records (moe_store_info.fingerprint). */
uint64_t moe_store_fingerprint(const struct moe_model *m);

struct moe_store;
/* Open and validate the header and record table.  With m, a store written for
 * another model (identity, layout or weights fingerprint differ) or by another
 * format version is refused with an error saying which field and to re-pack. */
struct moe_store *moe_store_open(const char *path, const struct moe_model *m);
void moe_store_close(struct moe_store *s);
const struct moe_store_info *moe_store_get_info(const struct moe_store *s);
const char *moe_store_path(const struct moe_store *s);
/* Record of (layer, expert), NULL when the layer is dense or ids out of range. */
const struct moe_store_record *moe_store_find(const struct moe_store *s, int layer, int expert);
/* True when buf (at least r->size bytes) matches the record's checksum. */
bool moe_store_verify(const struct moe_store_record *r, const void *buf);

#ifdef __cplusplus
}
#endif
#endif
