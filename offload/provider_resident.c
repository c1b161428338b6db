/* The all-resident expert provider: every routed expert converted to F32 once
 * at creation and kept in RAM.  acquire never waits and never fails. */
#include "provider.h"

#include <stdlib.h>

struct resident {
    struct moe_provider base;
    int n_experts;
    size_t inter, hidden;
    float *w;      /* [layers][experts][gate | up | down] */
    bool *present; /* [layers][experts]: false on dense layers */
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
    free(r->present);
    free(r);
}

static const struct moe_provider_ops resident_ops = {
    .acquire = res_acquire,
    .release = res_release,
    .destroy = res_destroy,
};

struct moe_provider *moe_provider_resident_create(const struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    struct resident *r = calloc(1, sizeof(*r));
    size_t n_all = (size_t)c->n_layers * (size_t)c->n_experts;
    if (!r) goto fail;
    r->n_experts = c->n_experts;
    r->inter = (size_t)c->expert_inter;
    r->hidden = (size_t)c->hidden;
    r->w = malloc(n_all * expert_floats(r) * sizeof(float));
    r->present = calloc(n_all, sizeof(bool));
    if (!r->w || !r->present) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        if (!c->is_moe[l]) continue;
        for (int e = 0; e < c->n_experts; e++) {
            size_t idx = (size_t)l * (size_t)c->n_experts + (size_t)e;
            const struct moe_expert_w *x = moe_model_expert(m, l, e);
            float *base = r->w + idx * expert_floats(r);
            moe_wview_to_f32(&x->gate, base);
            moe_wview_to_f32(&x->up, base + r->inter * r->hidden);
            moe_wview_to_f32(&x->down, base + 2 * r->inter * r->hidden);
            r->present[idx] = true;
        }
    }
    r->base.ops = &resident_ops;
    r->base.self = r;
    return &r->base;
fail:
    if (r) {
        free(r->w);
        free(r->present);
        free(r);
    }
    moe_errorf(MOE_ENOMEM, "resident expert provider: cannot allocate %zu experts in F32", n_all);
    return NULL;
}

void moe_provider_destroy(struct moe_provider *p)
{
    if (p && p->ops->destroy) p->ops->destroy(p->self);
}
