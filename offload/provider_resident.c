/* The all-resident expert provider: every routed expert in RAM, either where
 * the model holds it (BF16, no copy), widened to BF16 once at creation (FP8
 * checkpoints), or converted to F32 once at creation (copies in transparent
 * huge pages).  acquire never waits and never fails. */
#include "provider.h"

#include <stdint.h>
#include <stdlib.h>

struct resident {
    struct moe_provider base;
    int n_experts;
    size_t inter, hidden;
    float *w;                       /* F32 copies: [layers][experts][gate | up | down], or NULL */
    uint16_t *wb;                   /* BF16 copies of FP8 experts, the same layout, or NULL */
    const struct moe_model *m;      /* no copies: the model's own BF16 tensors */
    bool *present;                  /* [layers][experts]: false on dense layers */
};

static size_t expert_floats(const struct resident *r) { return 3 * r->inter * r->hidden; }

static enum moe_status res_acquire(void *self, int layer, int n, const int *ids,
                                   struct moe_expert_ref *out)
{
    struct resident *r = self;
    size_t per = expert_floats(r);
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
