/* The all-resident expert provider: every routed expert in RAM, either where
 * the model holds it (BF16, no copy) or copied there into transparent huge
 * pages, widened to BF16 once at creation (FP8 checkpoints), or converted to
 * F32 once at creation.  acquire never waits; it fails only for an expert or
 * layer the model does not have. */
#include "provider.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct resident {
    struct moe_provider base;
    int n_experts;
    size_t inter, hidden;
    float *w;                       /* F32 copies: [layers][experts][gate | up | down], or NULL */
    uint16_t *wb;                   /* BF16 copies (of FP8 experts, or of BF16 ones moved into huge
                                       pages), the same layout, or NULL */
    const struct moe_model *m;      /* no copies: the model's own BF16 tensors */
    bool *present;                  /* [layers][experts]: false on dense layers */
};

static size_t expert_floats(const struct resident *r) { return 3 * r->inter * r->hidden; }

enum moe_status moe_provider_check_layer(const struct moe_model *m, int layer)
{
    if (layer < 0 || layer >= m->cfg.n_layers)
        return moe_errorf(MOE_EINVAL, "expert provider: layer %d is not a MoE layer (the model has %d layers)",
                          layer, m->cfg.n_layers);
    if (!m->cfg.is_moe[layer])
        return moe_errorf(MOE_ENOENT, "expert provider: layer %d is not a MoE layer (it has no routed experts)",
                          layer);
    return MOE_OK;
}

static enum moe_status res_acquire(void *self, int layer, int n, const int *ids,
                                   struct moe_expert_ref *out)
{
    struct resident *r = self;
    size_t per = expert_floats(r);
    /* as the tiered provider refuses it: present[] holds no layer outside the model */
    enum moe_status st = moe_provider_check_layer(r->m, layer);
    if (st) return st;
    for (int i = 0; i < n; i++) {
        size_t idx = (size_t)layer * (size_t)r->n_experts + (size_t)ids[i];
        if (ids[i] < 0 || ids[i] >= r->n_experts || !r->present[idx])
            return moe_errorf(MOE_EINVAL, "layer %d has no expert %d", layer, ids[i]);
        if (r->wb) {
            const uint16_t *base = r->wb + idx * per;
            out[i] = (struct moe_expert_ref){ .gate = base, .up = base + r->inter * r->hidden,
                                              .down = base + 2 * r->inter * r->hidden, .dtype = MOE_DT_BF16 };
            continue;
        }
        if (!r->w) {
            const struct moe_expert_w *x = moe_model_expert(r->m, layer, ids[i]);
            out[i] = (struct moe_expert_ref){ .gate = x->gate.data, .up = x->up.data, .down = x->down.data,
                                              .dtype = MOE_DT_BF16 };
            continue;
        }
        const float *base = r->w + idx * per;
        out[i].gate = base;
        out[i].up = base + r->inter * r->hidden;
        out[i].down = base + 2 * r->inter * r->hidden;
        out[i].dtype = MOE_DT_F32;
    }
    return MOE_OK;
}

static void res_release(void *self, int layer) { (void)self; (void)layer; }

static void res_destroy(void *self)
{
    struct resident *r = self;
    free(r->w);
    free(r->wb);
    free(r->present);
    free(r);
}

static const struct moe_provider_ops resident_ops = {
    .acquire = res_acquire,
    .release = res_release,
    .destroy = res_destroy,
};

/* Every routed expert's three matrices stored in BF16, 2-byte aligned (the
 * kernels read them in place). */
static bool all_bf16(const struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        for (int e = 0; e < c->n_experts; e++) {
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            const struct moe_wview *v[] = { &x->gate, &x->up, &x->down };
            for (int i = 0; i < 3; i++)
                if (v[i]->dtype != MOE_DT_BF16 || ((uintptr_t)v[i]->data & 1)) return false;
        }
    }
    return true;
}

/* BF16 experts read in place sit in the checkpoint's file pages, which get no transparent huge pages
 * (page cache filled in small pages): decode steps, which stream a token's experts, then take a TLB miss
 * every 4 KiB.  When the experts take at most half the host's available memory they are copied into
 * one buffer in huge pages (the same bytes: the outputs do not change), and each layer's file pages,
 * once copied, unmapped from the process and marked cold (moe_model_release_experts): the process maps
 * one copy, and the page cache's goes first when memory is wanted.  Left in place where the kernel
 * gives no huge pages (a copy would gain nothing) or memory is short. */
static void copy_to_huge_pages(struct resident *r)
{
    const struct moe_config *c = &r->m->cfg;
    size_t per = expert_floats(r), n_all = (size_t)c->n_layers * (size_t)c->n_experts;
    uint64_t bytes = (uint64_t)moe_config_n_moe(c) * (uint64_t)c->n_experts * moe_model_expert_bytes(r->m), avail,
             total;
    if (!moe_host_memory(&avail, &total) || bytes > avail / 2) {
        MOE_INFO("resident experts: %.1f MiB left in the checkpoint's mapping (more than half the %.1f MiB "
                 "of available memory to copy into huge pages)", bytes / 1048576.0, avail / 1048576.0);
        return;
    }
    bool huge;
    double t0 = moe_now();
    uint16_t *wb = moe_huge_alloc(n_all * per * sizeof(uint16_t), &huge);
    if (!huge) { /* too small for a huge page, no THP, or no memory */
        free(wb);
        return;
    }
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        for (int e = 0; e < c->n_experts; e++) {
            const struct moe_expert_w *x = moe_model_expert(r->m, l, e);
            uint16_t *dst = wb + ((size_t)l * (size_t)c->n_experts + (size_t)e) * per;
            memcpy(dst, x->gate.data, r->inter * r->hidden * sizeof(uint16_t));
            memcpy(dst + r->inter * r->hidden, x->up.data, r->inter * r->hidden * sizeof(uint16_t));
            memcpy(dst + 2 * r->inter * r->hidden, x->down.data, r->inter * r->hidden * sizeof(uint16_t));
        }
        moe_model_release_experts(r->m, l);
    }
    r->wb = wb;
    MOE_INFO("resident experts: %.1f MiB copied into transparent huge pages in %.0f ms", bytes / 1048576.0,
             1e3 * (moe_now() - t0));
}

struct moe_provider *moe_provider_resident_create(const struct moe_model *m, enum moe_dtype dt)
{
    const struct moe_config *c = &m->cfg;
    struct resident *r = calloc(1, sizeof(*r));
    size_t n_all = (size_t)c->n_layers * (size_t)c->n_experts;
    int l0 = 0;
    while (l0 < c->n_layers && !c->is_moe[l0]) l0++;
    /* FP8 experts widen to copies of their BF16 values, unless F32 is asked for */
    bool widen = dt == MOE_DT_BF16 && l0 < c->n_layers && moe_model_expert(m, l0, 0)->gate.scale;
    bool copy = !widen && (dt != MOE_DT_BF16 || !all_bf16(m));
    if (!r) goto fail;
    r->n_experts = c->n_experts;
    r->inter = (size_t)c->expert_inter;
    r->hidden = (size_t)c->hidden;
    r->m = m;
    r->present = calloc(n_all, sizeof(bool));
    if (copy) r->w = moe_huge_alloc(n_all * expert_floats(r) * sizeof(float), NULL);
    if (widen) r->wb = moe_huge_alloc(n_all * expert_floats(r) * sizeof(uint16_t), NULL);
    if (!r->present || (copy && !r->w) || (widen && !r->wb)) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        for (int e = 0; e < c->n_experts; e++) {
            size_t idx = (size_t)l * (size_t)c->n_experts + (size_t)e;
            r->present[idx] = true;
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            if (widen) {
                uint16_t *wb = r->wb + idx * expert_floats(r);
                moe_wview_fp8_to_bf16(&x->gate, wb);
                moe_wview_fp8_to_bf16(&x->up, wb + r->inter * r->hidden);
                moe_wview_fp8_to_bf16(&x->down, wb + 2 * r->inter * r->hidden);
            }
            if (!copy) continue;
            float *base = r->w + idx * expert_floats(r);
            moe_wview_to_f32(&x->gate, base);
            moe_wview_to_f32(&x->up, base + r->inter * r->hidden);
            moe_wview_to_f32(&x->down, base + 2 * r->inter * r->hidden);
        }
    }
    if (!copy && !widen && l0 < c->n_layers) copy_to_huge_pages(r);
    r->base.ops = &resident_ops;
    r->base.self = r;
    return &r->base;
fail:
    if (r) {
        free(r->w);
        free(r->wb);
        free(r->present);
        free(r);
    }
    moe_errorf(MOE_ENOMEM, "resident expert provider: cannot allocate %zu experts in %s", n_all,
               dt == MOE_DT_BF16 ? "BF16" : "F32");
    return NULL;
}

void moe_provider_destroy(struct moe_provider *p)
{
    if (p && p->ops->destroy) p->ops->destroy(p->self);
}
