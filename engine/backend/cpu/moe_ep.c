/*
 * Expert-parallel MoE layers of the cpu backend (DP attention + EP MoE):
 * the node's ranks (with tensor parallelism, each rank's processes) each
 * hold E / world routed experts and trade token rows through the group
 * (engine/parallel/group.h) twice per MoE layer.
 *
 * Owns:   the dispatch row layout, the per-layer exchange tags, and the
 *         empty participation of a rank without tokens of its own.
 * Never:  routes differently from a single rank (kimi_cpu_route_shared is
 *         the same code), or returns before both exchanges of a layer
 *         while the group is sound: the peers wait at them.
 */

#include <string.h>

#include "cpu_impl.h"


/*
 * One MoE layer under expert parallelism (DP attention + EP MoE): each
 * rank routes its own T tokens; a token goes once to every rank owning
 * any of its top-k experts (fp32 row + its top-k local ids and weights,
 * -1 where another rank owns the expert); each rank runs its experts over
 * every row it received and sends back one weighted sum per row; the
 * sender adds them to the shared expert's output.  Ranks with no tokens
 * still take part: they send nothing and compute for the others.
 *
 * A dispatch row is D floats, then K int32 ids, then K float weights.
 */
int
kimi_cpu_moe_ep(kimi_cpu_t *b, uint32_t l, const kimi_layer_weights_t *L,
    uint32_t T, kimi_err_t *err)
{
    const kimi_model_config_t  *c = b->cfg;
    uint32_t                    D = c->hidden_size;
    uint32_t                    K = c->num_experts_per_tok;
    uint32_t                    W = kimi_group_world(b->ep);
    uint32_t                    me = kimi_group_rank(b->ep);
    uint32_t                    E_local = c->n_routed_experts / W;
    size_t                      row = (size_t) D * 4 + (size_t) K * 8;
    size_t                      bytes[KIMI_GROUP_MAX_RANKS];
    uint32_t                    n_to[KIMI_GROUP_MAX_RANKS];
    uint32_t                    n_from[KIMI_GROUP_MAX_RANKS], R = 0;
    const uint8_t              *in[KIMI_GROUP_MAX_RANKS];
    float                      *out[KIMI_GROUP_MAX_RANKS];
    int                         rc, route_rc;

    /* a routing error still takes part in both exchanges, with no rows */
    route_rc = kimi_cpu_route_shared(b, L, T, err);
    if (route_rc != 0) {
        T = 0;
    }

    /* over DP x TP every tensor-parallel process of a rank holds its
     * tokens: the first dispatches them, the others only run their own
     * experts for everyone (the FFN's all-reduce then adds the routed sums
     * once, beside the shared expert's slices) */
    if (b->tp != NULL && kimi_group_rank(b->tp) != 0) {
        T = 0;
    }

    /* dispatch */
    memset(n_to, 0, sizeof(n_to));

    for (uint32_t t = 0; t < T; t++) {
        const int32_t  *ids = b->route_ids + (size_t) t * K;
        const float    *ws = b->route_w + (size_t) t * K;

        for (uint32_t p = 0; p < W; p++) {
            uint8_t  *r = NULL;
            int32_t  *rid;
            float    *rw;

            b->ep_pos[(size_t) t * W + p] = -1;

            for (uint32_t k = 0; k < K; k++) {
                if ((uint32_t) ids[k] / E_local != p) {
                    continue;
                }

                if (r == NULL) {
                    r = (uint8_t *) kimi_group_sendbuf(b->ep, p)
                        + (size_t) n_to[p] * row;
                    memcpy(r, b->a + (size_t) t * D, (size_t) D * 4);
                    rid = (int32_t *) (r + (size_t) D * 4);
                    rw = (float *) (rid + K);
                    for (uint32_t j = 0; j < K; j++) {
                        rid[j] = -1;
                        rw[j] = 0.0f;
                    }
                    b->ep_pos[(size_t) t * W + p] = (int32_t) n_to[p]++;
                }

                rid[k] = (int32_t) ((uint32_t) ids[k] % E_local);
                rw[k] = ws[k];
            }
        }
    }

    for (uint32_t p = 0; p < W; p++) {
        bytes[p] = (size_t) n_to[p] * row;
    }

    rc = kimi_group_exchange(b->ep, ((uint64_t) 2 << 56) | ((uint64_t) l << 8),
                             bytes, err);
    if (rc != 0) {
        return rc;
    }

    for (uint32_t p = 0; p < W; p++) {
        in[p] = kimi_group_recvbuf(b->ep, p, &bytes[p]);
        n_from[p] = (uint32_t) (bytes[p] / row);
        R += n_from[p];

        /* the combine's rows go to the other bank: this one is being read */
        out[p] = kimi_group_sendbuf(b->ep, p);
        memset(out[p], 0, (size_t) n_from[p] * D * sizeof(float));
    }

    if ((rc = kimi_cpu_reserve_rows(b, R, err)) != 0) {
        kimi_group_abort(b->ep, err->msg);
        return rc;
    }

    /* this rank's experts over every received row */
    for (uint32_t le = 0; le < E_local; le++) {
        uint32_t  n = 0;

        for (uint32_t p = 0; p < W; p++) {
            for (uint32_t i = 0; i < n_from[p]; i++) {
                const uint8_t  *r = in[p] + (size_t) i * row;
                const int32_t  *rid = (const int32_t *) (r + (size_t) D * 4);
                const float    *rw = (const float *) (rid + K);

                for (uint32_t k = 0; k < K; k++) {
                    if (rid[k] != (int32_t) le) {
                        continue;
                    }

                    memcpy(b->xe + (size_t) n * D, r, (size_t) D * 4);
                    b->gather[n] = (p << 24) | i;
                    b->gather_w[n] = rw[k];
                    n++;
                }
            }
        }

        if (n == 0) {
            continue;
        }

        kimi_cpu_mlp(b, &L->experts[me * E_local + le], b->xe, n, b->ye);

        for (uint32_t j = 0; j < n; j++) {
            float  *o = out[b->gather[j] >> 24]
                        + (size_t) (b->gather[j] & 0xffffff) * D;
            float   wt = b->gather_w[j];

            for (uint32_t d = 0; d < D; d++) {
                o[d] += wt * b->ye[(size_t) j * D + d];
            }
        }
    }

    /* combine */
    for (uint32_t p = 0; p < W; p++) {
        bytes[p] = (size_t) n_from[p] * D * sizeof(float);
    }

    rc = kimi_group_exchange(b->ep,
                             ((uint64_t) 2 << 56) | ((uint64_t) l << 8) | 1,
                             bytes, err);
    if (rc != 0) {
        return rc;
    }

    for (uint32_t p = 0; p < W; p++) {
        const float  *back = kimi_group_recvbuf(b->ep, p, &bytes[p]);

        for (uint32_t t = 0; t < T; t++) {
            int32_t       pos = b->ep_pos[(size_t) t * W + p];
            float        *y = b->y + (size_t) t * D;
            const float  *v;

            if (pos < 0) {
                continue;
            }

            v = back + (size_t) pos * D;
            for (uint32_t d = 0; d < D; d++) {
                y[d] += v[d];
            }
        }
    }

    return route_rc;
}


/* A step with no tokens of this rank's own (idle, or its batch was bad:
 * rc): under expert parallelism it still serves the peers' MoE layers. */
int
kimi_cpu_ep_idle(kimi_cpu_t *b, int rc, kimi_err_t *err)
{
    kimi_err_t  lerr;

    if (b->ep == NULL) {
        return rc;
    }

    for (uint32_t l = 0; l < b->cfg->num_hidden_layers; l++) {
        const kimi_layer_weights_t  *L = &b->model->layers[l];

        if (L->is_moe && kimi_cpu_moe_ep(b, l, L, 0, &lerr) != 0) {
            if (rc == 0) {
                *err = lerr;
                return lerr.code;
            }
            break;
        }
    }

    return rc;
}
