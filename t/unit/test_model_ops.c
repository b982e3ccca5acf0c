/*
 * The CPU twins (engine/backend/cpu/ops.c) and the model loader.
 *
 * Ops: fp8 e4m3 conversion over all 256 codes and every rounding midpoint,
 * block dequant with partial edge blocks, both GEMM paths, activation
 * quantisation, YaRN numbers from kimi-k2-facts.md §4.1/§4.2 (K2 and
 * K2-0905 configs), interleaved RoPE, the router (group limit, bias for
 * selection only, tie-break), naive MLA prefill == absorbed MLA decode
 * over a paged cache.  Loader: crafted safetensors files (truncated, bad
 * JSON, wrong dtype, overlapping offsets, ...) and config errors must give
 * KIMI_EFORMAT-style errors naming the file and the tensor/field.
 */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "model/model.h"
#include "model/model_rand.h"
#include "model/tiny_model.h"
#include "backend/cpu/ops.h"

#include "tap.h"


static uint64_t  rs = 88172645463325252ull;

static float
frand(void)                                /* uniform [-1, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float) ((rs >> 11) * 0x1p-53 * 2.0 - 1.0);
}


/* ---- fp8 ---- */

static double
fp8_spec(uint8_t c)                        /* straight from the format */
{
    int  s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    double v = e == 0 ? m / 8.0 * pow(2, -6) : (1 + m / 8.0) * pow(2, e - 7);

    return s ? -v : v;
}


static void
test_fp8(void)
{
    int  bad_dec = 0, bad_rt = 0, bad_mid = 0, nan_ok;

    for (int c = 0; c < 256; c++) {
        float  f = kimi_fp8_to_f32((uint8_t) c);

        if ((c & 0x7f) == 0x7f) {
            bad_dec += !isnan(f);
            continue;
        }

        bad_dec += (double) f != fp8_spec((uint8_t) c);
        bad_rt += kimi_f32_to_fp8(f) != c;
    }

    ok(bad_dec == 0, "fp8 decode of all 256 codes matches the e4m3fn spec "
       "(0x7f/0xff NaN)");
    ok(bad_rt == 0, "fp8 encode(decode(c)) == c for all 254 finite codes");

    /* every midpoint between neighbours rounds to the even mantissa */
    for (int c = 0; c < 0x7e; c++) {
        float    lo = kimi_fp8_to_f32((uint8_t) c);
        float    hi = kimi_fp8_to_f32((uint8_t) (c + 1));
        float    mid = (lo + hi) / 2;
        uint8_t  want = (c & 1) ? (uint8_t) (c + 1) : (uint8_t) c;

        bad_mid += kimi_f32_to_fp8(mid) != want;
        bad_mid += kimi_f32_to_fp8(-mid) != (want | 0x80);
        bad_mid += kimi_f32_to_fp8(nextafterf(mid, 0)) != c;
        bad_mid += kimi_f32_to_fp8(nextafterf(mid, 1000)) != c + 1;
    }

    ok(bad_mid == 0, "fp8 encode: 126 midpoints round half to even, "
       "neighbours round to nearest (both signs)");

    nan_ok = kimi_f32_to_fp8(NAN) == 0x7f;
    ok(nan_ok && kimi_f32_to_fp8(464.0f) == 0x7e
       && kimi_f32_to_fp8(1e9f) == 0x7e && kimi_f32_to_fp8(-1e9f) == 0xfe
       && kimi_f32_to_fp8(INFINITY) == 0x7e,
       "fp8 encode saturates to +-448 and maps NaN to 0x7f");
    ok(kimi_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80
       && kimi_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82
       && kimi_bf16_to_f32(0x3f82) == 1.015625f,
       "bf16 round half to even");
}


static void
test_dequant_gemm(void)
{
    enum { R = 130, C = 200, T = 3 };     /* partial blocks both ways */
    static float     w[R * C], wd[R * C], x[T * C], y1[T * R], y2[T * R];
    static uint8_t   q[R * C], xq[T * C];
    static float     s[2 * 2], xs[T * 2], xd[T * C];
    int              bad = 0, amax_ok = 1;
    float            md = 0;

    for (int i = 0; i < R * C; i++) {
        w[i] = frand() * ((i / C) >= 128 ? 0.01f : 1.0f)
               * ((i % C) >= 128 ? 3.0f : 1.0f);
    }

    kimi_fp8_quant_blocks(w, R, C, q, s);
    kimi_fp8_dequant(q, s, R, C, wd);

    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++) {
            float  want = kimi_fp8_to_f32(q[r * C + c]) * s[(r / 128) * 2
                                                            + c / 128];
            bad += wd[r * C + c] != want;
            md = fmaxf(md, fabsf(wd[r * C + c] - w[r * C + c])
                           / (s[(r / 128) * 2 + c / 128] * 448));
        }
    }

    ok(bad == 0 && md <= 1.0f / 16,
       "dequant [130x200]: w = fp8 * scale_inv[r/128][c/128] incl. partial "
       "edge blocks; quant error %.4f of block amax", md);
    ok(s[3] < s[0] && s[1] > s[0],
       "each 128x128 block has its own scale (edge blocks too)");

    for (int i = 0; i < T * C; i++) {
        x[i] = frand() * (i % C < 128 ? 5.0f : 0.1f);
    }

    kimi_act_quant_fp8(x, T, C, xq, xs);

    for (int t = 0; t < T; t++) {
        for (int g = 0; g < 2; g++) {
            float  am = 0;
            int    hit = 0;

            for (int k = g * 128; k < C && k < g * 128 + 128; k++) {
                am = fmaxf(am, fabsf(x[t * C + k]));
            }

            for (int k = g * 128; k < C && k < g * 128 + 128; k++) {
                hit |= (xq[t * C + k] & 0x7f) == 0x7e;
                xd[t * C + k] = kimi_fp8_to_f32(xq[t * C + k]) * xs[t * 2 + g];
            }

            amax_ok &= fabsf(xs[t * 2 + g] - fmaxf(am, 1e-4f) / 448) < 1e-9f
                       && hit;
        }
    }

    ok(amax_ok, "act quant: per-row 1x128 groups (last one partial), "
       "scale = amax/448, the amax element becomes +-448");

    kimi_gemm_fp8a_fp8w(xq, xs, T, C, q, s, R, 0, R, y1);
    kimi_gemm_f32_fp8w(xd, T, C, q, s, R, 0, R, y2);
    md = 0;

    /* relative to sum |x||w|: the scale of fp32 rounding in a dot product */
    for (int t = 0; t < T; t++) {
        for (int n = 0; n < R; n++) {
            float  mag = 0;

            for (int k = 0; k < C; k++) {
                mag += fabsf(xd[t * C + k] * wd[n * C + k]);
            }

            md = fmaxf(md, fabsf(y1[t * R + n] - y2[t * R + n]) / mag);
        }
    }

    ok(md < 1e-5f, "fp8 x fp8 GEMM == fp32 GEMM on the dequantised "
       "activations (max rel %.2g)", md);

    md = 0;

    for (int t = 0; t < T; t++) {
        for (int n = 0; n < R; n++) {
            double  ref = 0;

            for (int k = 0; k < C; k++) {
                ref += (double) xd[t * C + k] * wd[n * C + k];
            }

            md = fmaxf(md, (float) fabs(y2[t * R + n] - ref));
        }
    }

    ok(md < 1e-4f, "fp32 x fp8 GEMM == double reference (max abs %.2g)", md);

    kimi_gemm_f32_fp8w(xd, T, C, q, s, R, 40, 90, y1);
    bad = 0;

    for (int t = 0; t < T; t++) {
        for (int n = 40; n < 90; n++) {
            bad += y1[t * R + n] != y2[t * R + n];
        }
    }

    ok(bad == 0, "GEMM column range [n0, n1) gives the same values");
}


/* ---- RoPE / YaRN ---- */

static void
test_rope(void)
{
    kimi_model_config_t  cfg;
    kimi_err_t           err;
    kimi_rope_params_t   p = { 64, 50000, 1, 32, 1, 1, 1, 1, 4096 };
    float                inv[32], af, c[32], s[32];
    FILE                *f;
    char                *json = NULL;
    size_t               n = 0;
    int                  rc;

    kimi_rope_inv_freq(&p, inv, &af);
    ok(inv[0] == 1.0f && fabsf(inv[19] - 1.62176e-3f) < 1e-8f
       && fabsf(inv[20] - 3.61405e-5f) < 1e-10f
       && fabsf(inv[31] - 8.76441e-7f) < 1e-12f && af == 1.0f,
       "K2 YaRN: inv_freq[0,19,20,31] = 1, 1.62176e-3, 3.61405e-5, "
       "8.76441e-7; amplitude 1");

    p.factor = 64;
    kimi_rope_inv_freq(&p, inv, &af);
    ok(fabsf(inv[20] - 1.80702e-5f) < 1e-10f, "K2-0905 (factor 64): "
       "inv_freq[20] = 1.80702e-5");

    f = fopen("../shared/kimi-k2/config.json", "rb");

    if (f != NULL) {
        json = malloc(1 << 16);
        n = fread(json, 1, (1 << 16) - 1, f);
        json[n] = '\0';
        fclose(f);
        rc = kimi_model_config_parse(&cfg, json, NULL, "k2", &err);
        ok(rc == 0 && fabsf(kimi_model_softmax_scale(&cfg) - 0.1308608f)
           < 1e-6f && cfg.n_routed_experts == 384 && cfg.n_group == 1
           && cfg.rope_original_max_position_embeddings == 4096
           && cfg.quant_fp8,
           "real K2 config.json parses; softmax scale 0.1308608");
        rc = kimi_model_config_parse(&cfg, json,
                 "{\"rope_scaling\": {\"factor\": 64.0}, "
                 "\"max_position_embeddings\": 262144}", "k2", &err);
        ok(rc == 0 && fabsf(kimi_model_softmax_scale(&cfg) - 0.1446796f)
           < 1e-6f && cfg.rope_beta_fast == 1.0f,
           "--hf-overrides merges into rope_scaling: factor 64 -> 0.1446796");
        free(json);

    } else {
        ok(1, "# SKIP no ../shared/kimi-k2/config.json");
        ok(1, "# SKIP no ../shared/kimi-k2/config.json");
    }

    /* interleaved pairs: (1, 0) at angle a -> (cos a, sin a); dot products
     * depend only on the relative position */
    {
        float  x[64], y[64], d1 = 0, d2 = 0, cs[32], sn[32];

        kimi_rope_cos_sin(inv, 32, 5, 1.0f, c, s);
        memset(x, 0, sizeof(x));
        x[2] = 1.0f;
        kimi_rope_apply(x, c, s, 32);
        ok(x[2] == c[1] && x[3] == s[1] && x[0] == 0 && x[4] == 0,
           "rope rotates adjacent pairs (x[2i], x[2i+1]), not halves");

        for (int i = 0; i < 64; i++) {
            x[i] = frand();
            y[i] = frand();
        }

        float  a[64], b[64];

        memcpy(a, x, sizeof(a));
        memcpy(b, y, sizeof(b));
        kimi_rope_cos_sin(inv, 32, 100, 1.0f, cs, sn);
        kimi_rope_apply(a, cs, sn, 32);
        kimi_rope_cos_sin(inv, 32, 90, 1.0f, cs, sn);
        kimi_rope_apply(b, cs, sn, 32);

        for (int i = 0; i < 64; i++) {
            d1 += a[i] * b[i];
        }

        memcpy(a, x, sizeof(a));
        memcpy(b, y, sizeof(b));
        kimi_rope_cos_sin(inv, 32, 20, 1.0f, cs, sn);
        kimi_rope_apply(a, cs, sn, 32);
        kimi_rope_cos_sin(inv, 32, 10, 1.0f, cs, sn);
        kimi_rope_apply(b, cs, sn, 32);

        for (int i = 0; i < 64; i++) {
            d2 += a[i] * b[i];
        }

        ok(fabsf(d1 - d2) < 1e-4f, "rope: q.k depends on relative position "
           "only (%.6f vs %.6f)", d1, d2);
    }

    ok(fabsf(kimi_yarn_mscale(32, 1) - 1.3465736f) < 1e-6f
       && kimi_yarn_mscale(1, 1) == 1.0f, "yarn mscale(32, 1) = 1.3465736");
}


/* ---- router ---- */

static void
test_router(void)
{
    float    lg[16], bias[16], w[4], sum = 0;
    int32_t  id[4];

    for (int i = 0; i < 16; i++) {
        lg[i] = 0.5f;
    }

    kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, NULL, 16, 1, 1, 4, 1, 2.827f, id, w);
    ok(id[0] == 0 && id[1] == 1 && id[2] == 2 && id[3] == 3
       && fabsf(w[0] - 2.827f / 4) < 1e-6f,
       "router tie-break: equal scores pick the lowest expert ids");

    kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, NULL, 16, 4, 2, 4, 1, 1.0f, id, w);
    ok(id[0] == 0 && id[3] == 3, "router tie-break: equal groups pick the "
       "lowest group ids");

    /* group limit: expert 15 (group 3) is the best single expert, but
     * groups 0 and 1 have the best top-2 sums, so 15 is excluded */
    for (int i = 0; i < 16; i++) {
        lg[i] = -2.0f;
    }

    lg[15] = 5.0f;
    lg[0] = lg[1] = 3.0f;
    lg[4] = lg[5] = 2.5f;
    kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, NULL, 16, 4, 2, 4, 1, 2.827f, id, w);

    for (int k = 0; k < 4; k++) {
        sum += w[k];
    }

    ok(id[0] == 0 && id[1] == 1 && id[2] == 4 && id[3] == 5
       && fabsf(sum - 2.827f) < 1e-5f,
       "group-limited top-k (n_group 4, topk_group 2) excludes the best "
       "expert of a dropped group; weights sum to routed_scaling_factor");

    /* bias picks, the unbiased sigmoid weighs */
    for (int i = 0; i < 16; i++) {
        lg[i] = 0.0f;
        bias[i] = 0.0f;
    }

    lg[3] = 1.0f;
    bias[9] = 0.9f;
    kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, bias, 16, 1, 1, 2, 0, 1.0f, id, w);
    ok(id[0] == 9 && id[1] == 3 && fabsf(w[0] - 0.5f) < 1e-6f
       && fabsf(w[1] - 1.0f / (1.0f + expf(-1.0f))) < 1e-6f,
       "correction bias changes the selection only: weight = sigmoid(logit)");

    ok(kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, NULL, 16, 3, 1, 2, 1, 1, id, w) == -1
       && kimi_moe_route(KIMI_ROUTER_NOAUX_TC, lg, NULL, 16, 4, 1, 5, 1, 1, id, w) == -1,
       "router rejects n_group not dividing experts and top_k > kept");
}


/* DeepSeek-V2's routers against its gate's formula run in numpy
 * (t/gen/gen_router_fixtures.py -> t/fixtures/model/router-v2.json):
 * DeepSeek-V2 (160 experts, 8 groups, 3 kept, top-6, x16), V2-Lite (64,
 * greedy top-6) and smaller ones, normalised or not. */
static void
test_router_v2(void)
{
    int           n_ok = 0, n = 0;
    size_t        i, j;
    json_t       *root, *c, *v;
    json_error_t  jerr;

    root = json_load_file("t/fixtures/model/router-v2.json", 0, &jerr);
    ok(root != NULL, "router-v2.json loads");
    if (root == NULL) {
        return;
    }

    json_array_foreach(json_object_get(root, "cases"), i, c) {
        float     lg[1024], w[64], got[64];
        int32_t   id[64], want[64];
        uint32_t  E = json_integer_value(json_object_get(c, "n_experts"));
        uint32_t  K = json_integer_value(json_object_get(c, "top_k"));
        int       router = strcmp(json_string_value(json_object_get(c,
                                  "method")), "greedy") == 0
                           ? KIMI_ROUTER_GREEDY : KIMI_ROUTER_GROUP_GREEDY;
        int       same = 1;

        json_array_foreach(json_object_get(c, "logits"), j, v) {
            lg[j] = (float) json_real_value(v);
        }
        n++;

        if (kimi_moe_route(router, lg, NULL, E,
                           json_integer_value(json_object_get(c, "n_group")),
                           json_integer_value(json_object_get(c,
                                                              "topk_group")),
                           K, json_is_true(json_object_get(c, "norm")),
                           json_number_value(json_object_get(c, "scale")),
                           id, w) != 0)
        {
            printf("# case %zu: refused\n", i);
            continue;
        }

        /* sorted by id, as the fixture */
        for (uint32_t a = 0; a < K; a++) {
            for (uint32_t b = a + 1; b < K; b++) {
                if (id[b] < id[a]) {
                    int32_t  ti = id[a];
                    float    tw = w[a];

                    id[a] = id[b];
                    w[a] = w[b];
                    id[b] = ti;
                    w[b] = tw;
                }
            }
            want[a] = json_integer_value(json_array_get(json_object_get(c,
                                                            "ids"), a));
            got[a] = json_real_value(json_array_get(json_object_get(c,
                                                        "weights"), a));
        }

        for (uint32_t a = 0; a < K; a++) {
            same &= id[a] == want[a]
                    && fabsf(w[a] - got[a]) <= 1e-5f * fmaxf(1.0f, got[a]);
        }
        if (!same) {
            printf("# case %zu (%s, %u experts): ids or weights differ\n", i,
                 json_string_value(json_object_get(c, "method")), E);
        }
        n_ok += same;
    }

    ok(n > 0 && n_ok == n, "DeepSeek-V2 routers (softmax; greedy and "
       "group_limited_greedy) pick and weigh as its gate does: %d/%d cases",
       n_ok, n);
    json_decref(root);
}


/* ---- MLA: naive prefill == absorbed decode over the paged cache ---- */

static void
test_mla(void)
{
    enum { H = 3, NOPE = 8, P = 4, DV = 6, R = 10, S = 21, BS = 4 };
    static float  wkvb[H * (NOPE + DV) * R], c[S * R], kpe[S * P];
    static float  q[S * H * (NOPE + P)], k[S * H * (NOPE + P)];
    static float  v[S * H * DV], out_n[S * H * DV];
    static float  ql[H * R], qp[H * P], ol[H * R], scratch[S * H + R + P + 64];
    static float  cache[8 * BS * (R + P)];
    uint32_t      table[8] = { 5, 2, 7, 0, 1, 6, 3, 4 };
    kimi_cpu_kv_view_t  kv = { cache, NULL, KIMI_CPU_KV_F32, BS, R, P, 8 };
    float         md = 0, scale = 0.3f;

    for (size_t i = 0; i < sizeof(wkvb) / 4; i++) wkvb[i] = frand();
    for (size_t i = 0; i < sizeof(c) / 4; i++) c[i] = frand();
    for (size_t i = 0; i < sizeof(kpe) / 4; i++) kpe[i] = frand();
    for (size_t i = 0; i < sizeof(q) / 4; i++) q[i] = frand();

    /* expanded keys/values: k_nope = W_UK c, v = W_UV c, k_pe shared */
    for (int s = 0; s < S; s++) {
        for (int h = 0; h < H; h++) {
            for (int d = 0; d < NOPE + DV; d++) {
                float  acc = 0;

                for (int r = 0; r < R; r++) {
                    acc += wkvb[(h * (NOPE + DV) + d) * R + r] * c[s * R + r];
                }

                if (d < NOPE) {
                    k[(s * H + h) * (NOPE + P) + d] = acc;
                } else {
                    v[(s * H + h) * DV + d - NOPE] = acc;
                }
            }

            memcpy(&k[(s * H + h) * (NOPE + P) + NOPE], &kpe[s * P],
                   P * sizeof(float));
        }

        kimi_kv_write(&kv, table, s, &c[s * R], &kpe[s * P]);
    }

    kimi_mla_prefill_naive(q, k, v, S, S, 0, H, NOPE + P, DV, scale, 0, H,
                           scratch, out_n);

    for (int t = 0; t < S; t++) {
        for (int h = 0; h < H; h++) {
            for (int r = 0; r < R; r++) {
                float  acc = 0;

                for (int d = 0; d < NOPE; d++) {
                    acc += q[(t * H + h) * (NOPE + P) + d]
                           * wkvb[(h * (NOPE + DV) + d) * R + r];
                }

                ql[h * R + r] = acc;
            }

            memcpy(&qp[h * P], &q[(t * H + h) * (NOPE + P) + NOPE],
                   P * sizeof(float));
        }

        kimi_mla_decode_absorbed(&kv, table, t + 1, ql, qp, H, scale, 0, H,
                                 scratch, ol);

        for (int h = 0; h < H; h++) {
            for (int d = 0; d < DV; d++) {
                float  acc = 0;

                for (int r = 0; r < R; r++) {
                    acc += wkvb[(h * (NOPE + DV) + NOPE + d) * R + r]
                           * ol[h * R + r];
                }

                md = fmaxf(md, fabsf(acc - out_n[(t * H + h) * DV + d]));
            }
        }
    }

    ok(md < 1e-5f, "MLA: naive causal prefill == absorbed decode over a "
       "paged (shuffled) latent cache, max |diff| %.2g", md);

    /* bf16 / fp8 cache round trips */
    {
        static uint16_t  cb[8 * BS * (R + P)];
        static uint8_t   c8[8 * BS * (R + P)];
        static float     sc[8 * BS];
        kimi_cpu_kv_view_t  kb = { cb, NULL, KIMI_CPU_KV_BF16, BS, R, P, 8 };
        kimi_cpu_kv_view_t  k8 = { c8, sc, KIMI_CPU_KV_FP8, BS, R, P, 8 };
        float  rd[R + P], eb = 0, e8 = 0;

        /* every token written before any is read back: rows that
         * overlapped would show */
        for (int s = 0; s < S; s++) {
            kimi_kv_write(&kb, table, s, &c[s * R], &kpe[s * P]);
            kimi_kv_write(&k8, table, s, &c[s * R], &kpe[s * P]);
        }

        for (int s = 0; s < S; s++) {
            kimi_kv_read(&kb, table, s, rd);

            for (int i = 0; i < R; i++) {
                eb = fmaxf(eb, fabsf(rd[i] - c[s * R + i]));
            }

            kimi_kv_read(&k8, table, s, rd);

            for (int i = 0; i < R + P; i++) {
                float  want = i < R ? c[s * R + i] : kpe[s * P + i - R];

                e8 = fmaxf(e8, fabsf(rd[i] - want));
            }
        }

        ok(eb <= 1.0f / 256 && e8 <= 1.0f / 16,
           "bf16 / fp8 (per-token scale) latent cache round trip: %.4f / "
           "%.4f of |x| <= 1", eb, e8);
    }

    /* the fp8 block layout the GPU kernels read (kimi_kernels.h): 576
     * bytes a row, planar [block][36][bs][16] */
    {
        enum { W = 576, B64 = 64 };
        static uint8_t   d8[3 * B64 * W];
        static float     s8[3 * B64];
        kimi_cpu_kv_view_t  k8 = { d8, s8, KIMI_CPU_KV_FP8, B64, 512, 64, 3 };
        uint32_t  tb[2] = { 2, 0 };              /* positions 0..63 in block 2 */
        float     cc[512], pe[64];
        int       bad = 0;

        for (int i = 0; i < 512; i++) {
            cc[i] = (float) ((i * 37) % 97 - 48) / 48.0f;
        }

        for (int i = 0; i < 64; i++) {
            pe[i] = (float) ((i * 11) % 29 - 14) / 14.0f;
        }

        memset(d8, 0, sizeof(d8));
        kimi_kv_write(&k8, tb, 5, cc, pe);       /* row 5 of block 2 */

        for (int i = 0; i < W; i++) {
            float    v = i < 512 ? cc[i] : pe[i - 512];
            uint8_t  want = kimi_f32_to_fp8(v / s8[2 * B64 + 5]);
            size_t   at = (size_t) 2 * B64 * W + (size_t) (i / 16) * B64 * 16
                          + 5 * 16 + i % 16;

            bad += d8[at] != want;
        }

        ok(bad == 0, "fp8 cache: byte i of row r of block b at b*bs*576 + "
           "(i/16)*bs*16 + r*16 + i%%16 (%d misplaced)", bad);
    }
}


/* ---- loader errors ---- */

static char  tmpdir[] = "/tmp/kimi-loader-XXXXXX";


static void
write_st(const char *name, const char *hdr, size_t data_len, long hlen_fix)
{
    char      path[256];
    FILE     *f;
    uint64_t  hl = hlen_fix >= 0 ? (uint64_t) hlen_fix : strlen(hdr);

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    fwrite(&hl, 8, 1, f);                  /* little-endian host */
    fwrite(hdr, 1, strlen(hdr), f);

    for (size_t i = 0; i < data_len; i++) {
        fputc(0, f);
    }

    fclose(f);
}


static int
st_err(const char *name, const char *want1, const char *want2)
{
    char         path[256];
    kimi_st_t   *st = NULL;
    kimi_err_t   err = { 0 };
    int          rc;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    rc = kimi_st_open(&st, path, &err);
    kimi_st_close(st);

    if (rc == 0) {
        printf("# %s: opened\n", name);
        return 0;
    }

    printf("# %s: %s\n", name, err.msg);
    return strstr(err.msg, name) != NULL
           && (want1 == NULL || strstr(err.msg, want1) != NULL)
           && (want2 == NULL || strstr(err.msg, want2) != NULL);
}


static void
test_loader(void)
{
    kimi_model_config_t  cfg;
    kimi_model_params_t  mp = kimi_model_default_params();
    kimi_model_t        *m = NULL, *m2 = NULL;
    kimi_err_t           err = { 0 };
    kimi_st_t           *st = NULL;
    char                 path[256], cmd[512];
    int                  rc;

    if (mkdtemp(tmpdir) == NULL) {
        ok(0, "mkdtemp");
        return;
    }

    write_st("good.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":"
             "[0,24]},\"b\":{\"dtype\":\"BF16\",\"shape\":[4],"
             "\"data_offsets\":[24,32]},\"__metadata__\":{\"x\":\"y\"}}",
             32, -1);
    snprintf(path, sizeof(path), "%s/good.safetensors", tmpdir);
    rc = kimi_st_open(&st, path, &err);
    ok(rc == 0 && kimi_st_count(st) == 2
       && kimi_st_find(st, "a")->shape[1] == 3
       && kimi_st_find(st, "b")->dtype == KIMI_DTYPE_BF16
       && kimi_st_find(st, "zz") == NULL, "a valid file parses");
    kimi_st_close(st);

    write_st("trunc.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":"
             "[0,400]}}", 100, -1);
    ok(st_err("trunc.safetensors", "\"w\"", "truncated"),
       "truncated data: error names file and tensor");

    write_st("hlen.safetensors", "{}", 0, 1ll << 40);
    ok(st_err("hlen.safetensors", "header length", NULL),
       "absurd header length is an error");

    write_st("json.safetensors", "{\"w\":{\"dtype\":\"F32\",\"sha", 0, -1);
    ok(st_err("json.safetensors", "JSON", NULL), "bad header JSON");

    write_st("dtype.safetensors",
             "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":"
             "[0,4]}}", 4, -1);
    ok(st_err("dtype.safetensors", "\"w\"", "Q4_K"), "unknown dtype");

    write_st("overlap.safetensors",
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":"
             "[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],"
             "\"data_offsets\":[8,24]}}", 24, -1);
    ok(st_err("overlap.safetensors", "overlap", "\"a\""),
       "overlapping offsets name both tensors");

    write_st("shape.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":"
             "[0,32]}}", 32, -1);
    ok(st_err("shape.safetensors", "\"w\"", "9 F32"),
       "byte count that does not match the shape");

    write_st("neg.safetensors",
             "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":"
             "[0,4]}}", 4, -1);
    ok(st_err("neg.safetensors", "\"w\"", "shape"), "negative dimension");

    write_st("short.safetensors", "", 0, -1);
    snprintf(path, sizeof(path), "%s/short.safetensors", tmpdir);
    truncate(path, 5);
    ok(st_err("short.safetensors", "too short", NULL), "5-byte file");

    /* mutated headers: never a crash; what opens lies inside the file */
    {
        const char  *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                           "\"data_offsets\":[0,24]},\"b\":{\"dtype\":"
                           "\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}";
        uint8_t      buf[256], mut[256];
        size_t       len = 8 + strlen(hdr) + 32;
        uint64_t     hl = strlen(hdr);
        int          bad = 0, opened = 0;

        memset(buf, 0x41, sizeof(buf));
        memcpy(buf, &hl, 8);
        memcpy(buf + 8, hdr, strlen(hdr));
        snprintf(path, sizeof(path), "%s/fuzz.safetensors", tmpdir);

        for (int it = 0; it < 400; it++) {
            FILE  *f;
            int    nflip = 1 + it % 4;

            memcpy(mut, buf, len);

            for (int k = 0; k < nflip; k++) {
                uint32_t  pos = (uint32_t) ((frand() + 1) / 2 * len) % len;
                mut[pos] = (uint8_t) (frand() * 128 + 128);
            }

            f = fopen(path, "wb");
            fwrite(mut, 1, it % 7 == 0 ? len / 2 : len, f);
            fclose(f);

            if (kimi_st_open(&st, path, &err) == 0) {
                opened++;

                for (uint32_t i = 0; i < kimi_st_count(st); i++) {
                    const kimi_st_tensor_t  *t = kimi_st_get(st, i);
                    volatile uint8_t         x = 0;

                    if (t->n_bytes > 0) {    /* must be readable */
                        x = ((const uint8_t *) t->data)[t->n_bytes - 1];
                    }

                    (void) x;
                    bad += t->n_bytes > len;
                }

                kimi_st_close(st);
            }
        }

        ok(bad == 0, "400 mutated files: no crash, %d opened with every "
           "tensor inside the file", opened);
    }

    /* config errors */
    rc = kimi_model_config_parse(&cfg, "{\"vocab_size\": 10}", NULL,
                                 "c.json", &err);
    ok(rc == KIMI_EFORMAT && strstr(err.msg, "c.json")
       && strstr(err.msg, "hidden_size"), "missing config field is named "
       "(%s)", err.msg);
    rc = kimi_model_config_parse(&cfg, kimi_tiny_model_config_json(),
                                 "{\"n_group\": 3}", "c.json", &err);
    ok(rc == KIMI_EFORMAT && strstr(err.msg, "n_group"),
       "n_group not dividing n_routed_experts is refused");
    rc = kimi_model_config_parse(&cfg, kimi_tiny_model_config_json(),
                                 "{\"scoring_func\": \"softmax\"}", "c.json",
                                 &err);
    ok(rc == KIMI_EUNSUPPORTED && strstr(err.msg, "softmax"),
       "unsupported scoring_func is named");
    rc = kimi_model_config_parse(&cfg, kimi_tiny_model_config_json(),
                                 "{\"num_hidden_layers\": ", "c.json", &err);
    ok(rc == KIMI_EINVAL && strstr(err.msg, "hf-overrides"),
       "malformed --hf-overrides is an error");

    /* model-level: a tensor of the wrong dtype names file and tensor */
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    {
        FILE  *f = fopen(path, "w");
        fputs(kimi_tiny_model_config_json(), f);
        fclose(f);
    }

    write_st("model.safetensors",
             "{\"model.embed_tokens.weight\":{\"dtype\":\"I64\",\"shape\":"
             "[16,96],\"data_offsets\":[0,12288]}}", 12288, -1);
    mp.dir = tmpdir;
    mp.hf_overrides = "{\"vocab_size\": 16}";
    rc = kimi_model_load(&m, &mp, &err);
    ok(rc == KIMI_EFORMAT && strstr(err.msg, "model.safetensors")
       && strstr(err.msg, "embed_tokens") && strstr(err.msg, "I64"),
       "wrong dtype: %s", err.msg);

    write_st("model.safetensors",
             "{\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":"
             "[16,95],\"data_offsets\":[0,3040]}}", 3040, -1);
    rc = kimi_model_load(&m, &mp, &err);
    ok(rc == KIMI_EFORMAT && strstr(err.msg, "[16, 95]")
       && strstr(err.msg, "[16, 96]"), "wrong shape: %s", err.msg);

    /* the real tiny model: index + 2 shards, then EP and dummy */
    if (kimi_tiny_model_write(tmpdir, NULL, KIMI_TINY_SEED, &err) == 0) {
        snprintf(path, sizeof(path), "%s/model.safetensors", tmpdir);
        unlink(path);
        mp.hf_overrides = NULL;
        mp.expert_first = 4;
        mp.expert_last = 8;
        rc = kimi_model_load(&m, &mp, &err);
        ok(rc == 0 && m->layers[1].experts[3].gate_proj.data == NULL
           && m->layers[1].experts[4].gate_proj.data != NULL
           && m->layers[1].experts[8].down_proj.data == NULL
           && m->layers[1].experts[7].down_proj.scale_inv != NULL,
           "expert range [4, 8): only owned experts are mapped");

        mp.expert_first = mp.expert_last = 0;
        mp.load_format = "dummy";
        mp.seed = 7;
        rc = kimi_model_load(&m2, &mp, &err);
        ok(rc == 0 && m2->layers[2].experts[5].up_proj.dtype
                      == KIMI_DTYPE_F8_E4M3
           && m2->layers[2].experts[5].up_proj.rows == 144
           && m2->layers[2].experts[5].up_proj.scale_inv != NULL
           && m2->lm_head.rows == 163840, "dummy load: configured shapes, "
           "real fp8 bytes + scales");

        if (m2 != NULL) {
            kimi_model_t  *m3 = NULL;

            mp.expert_first = 5;
            mp.expert_last = 6;
            rc = kimi_model_load(&m3, &mp, &err);
            ok(rc == 0 && memcmp(m3->layers[2].experts[5].up_proj.data,
                                 m2->layers[2].experts[5].up_proj.data,
                                 144 * 96) == 0,
               "dummy weights are per-tensor deterministic (same bytes "
               "whatever range a rank owns)");
            kimi_model_free(m3);
        }

        /* a weight big enough to be filled by several threads: the same
         * codes and scales as one sequential splitmix64 stream */
        if (m2 != NULL) {
            kimi_model_t     *m4 = NULL;
            const uint8_t    *q;
            const float      *sc;
            kimi_rand_t       r;
            size_t            n, i, bad = 0;
            uint32_t          nbr, nbc;

            mp.hf_overrides = "{\"intermediate_size\": 16512}";
            rc = kimi_model_load(&m4, &mp, &err);
            mp.hf_overrides = NULL;
            ok(rc == 0 && !m4->layers[0].is_moe, "dummy model with a "
               "16512-wide dense layer 0 loads: %s", rc ? err.msg : "ok");

            if (rc == 0) {
                q = m4->layers[0].mlp.gate_proj.data;
                sc = m4->layers[0].mlp.gate_proj.scale_inv;
                n = (size_t) m4->layers[0].mlp.gate_proj.rows
                    * m4->layers[0].mlp.gate_proj.cols;
                nbr = (m4->layers[0].mlp.gate_proj.rows + 127) / 128;
                nbc = (m4->layers[0].mlp.gate_proj.cols + 127) / 128;
                kimi_rand_init(&r, 7, "model.layers.0.mlp.gate_proj.weight");
                for (i = 0; i < n; i += 8) {
                    uint64_t  v = kimi_rand_next(&r);

                    for (size_t j = 0; j < 8 && i + j < n; j++) {
                        bad += q[i + j] != ((uint8_t) (v >> (8 * j)) & 0xbf);
                    }
                }
                /* scales: the same stream on; std cancels in a ratio */
                double  u0 = 0.75 + 0.5 * kimi_rand_unif(&r);

                for (i = 1; i < (size_t) nbr * nbc; i++) {
                    double  want = (0.75 + 0.5 * kimi_rand_unif(&r)) / u0;

                    bad += fabs(sc[i] / sc[0] - want) > 1e-5 * want;
                }
                ok(n > (1u << 20) && bad == 0, "a %zu-byte dummy weight "
                   "filled by threads = one sequential stream, codes and "
                   "scales (%zu differ)", n, bad);
            }
            kimi_model_free(m4);
        }

        /* index pointing at a missing tensor */
        snprintf(path, sizeof(path), "%s/model-00002-of-00002.safetensors",
                 tmpdir);
        truncate(path, 1000);
        mp.load_format = "auto";
        mp.expert_first = mp.expert_last = 0;
        kimi_model_free(m2);
        m2 = NULL;
        rc = kimi_model_load(&m2, &mp, &err);
        ok(rc == KIMI_EFORMAT && strstr(err.msg, "model-00002-of-00002"),
           "truncated shard of the index: %s", err.msg);
    }

    kimi_model_free(m);
    kimi_model_free(m2);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);

    if (system(cmd) != 0) {
        printf("# could not remove %s\n", tmpdir);
    }
}


int
main(void)
{
    test_fp8();
    test_dequant_gemm();
    test_rope();
    test_router();
    test_router_v2();
    test_mla();
    test_loader();
    printf("1..%d\n", test_n);
    return test_failed ? 1 : 0;
}
