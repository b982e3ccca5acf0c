/* Called by all 256 threads of a decode block after each stretch's partial
 * is stored (w: the stretch's last item, item i of run k).  A sequence whose
 * tiles span at most MF_FOLD runs is merged into o here, by the run that
 * finishes its stretch last (a ticket per sequence, put back to 0 by that
 * run for the next call), reading the partials back while they are in L2;
 * that saves mla_combine_kernel's pass over every partial (7 % of a B=64 x
 * 8K bf16 call).  Longer spans (small batches, long contexts: up to a run
 * per SM for one sequence) are left to the combine kernel, which spreads
 * them over (sequence, head) blocks; one block reading them all lost (B=1 x
 * 8K: 265 vs 25 us).
 *
 * NT threads merge: all 256 (tid = threadIdx.x), or one warpgroup (NT 128,
 * tid its thread; merge false for the other, which only waits until both
 * have stored and goes on: the warp-specialised kernels keep the group
 * whose registers hold S in flight out of it).  scr: MF_FOLD x 64 + 1
 * floats of shared memory the merging threads alone use. */
template <int NT>
static __device__ __forceinline__ void
mf_fold(const mf_walk &w, int k, int i, int per, int H, bool merge, int tid, const float *__restrict__ opart,
        const float *__restrict__ mlpart, int *__restrict__ tickets, uint16_t *__restrict__ o, float *scr)
{
    int k0;
    const int n = mf_span(k * per + i - w.tile, w.nt, per, k0);
    if (n > MF_FOLD) {
        return;
    }
    __threadfence();   /* this run's partial, before its ticket */
    kimi_bar_sync(MF_BAR_STORED, MW_THREADS);
    if (!merge) {
        return;
    }
    int *last = (int *) (scr + MF_FOLD * 64);
    if (tid == 0) {
        int got = n - 1;
        if (n > 1) {
            got = atomicAdd(&tickets[w.b], 1);
            if (got == n - 1) {
                tickets[w.b] = 0;   /* every run of b has its ticket: free for the next call */
            }
            __threadfence();
        }
        *last = got == n - 1;
    }
    kimi_bar_sync(MF_BAR_FOLD, NT);
    if (!*last) {
        return;
    }
    const size_t slot0 = (size_t) w.b + k0;
    if (tid < H) {
        float2 ml[MF_FOLD];
        float M = -INFINITY, L = 0.f;
#pragma unroll
        for (int s = 0; s < MF_FOLD; s++) {
            ml[s] = s < n ? __ldcg((const float2 *) (mlpart + ((slot0 + s) * H + tid) * 2)) : make_float2(0.f, 0.f);
            if (ml[s].y > 0.f) {
                M = fmaxf(M, ml[s].x);
            }
        }
#pragma unroll
        for (int s = 0; s < MF_FOLD; s++) {   /* empty stretches: l = 0, weight 0 */
            ml[s].x = ml[s].y > 0.f ? exp2f(ml[s].x - M) : 0.f;
            L += ml[s].x * ml[s].y;
        }
        const float inv = L > 0.f ? 1.f / L : 0.f;
#pragma unroll
        for (int s = 0; s < MF_FOLD; s++) {
            scr[s * 64 + tid] = ml[s].x * inv;
        }
    }
    kimi_bar_sync(MF_BAR_FOLD, NT);
    /* MF_UNROLL float4 of the output a thread a pass, all their loads issued first */
    const int n4 = H * (MLA_DV / 4);
    for (int i0 = tid; i0 < n4; i0 += MF_UNROLL * NT) {
        float4 v[MF_UNROLL][MF_FOLD];
#pragma unroll
        for (int u = 0; u < MF_UNROLL; u++) {
            const int j = i0 + u * NT, h = j / (MLA_DV / 4);
#pragma unroll
            for (int s = 0; s < MF_FOLD; s++) {
                v[u][s] = s < n && j < n4
                              ? __ldcg((const float4 *) (opart + ((slot0 + s) * H + h) * MLA_DV) + j % (MLA_DV / 4))
                              : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
#pragma unroll
        for (int u = 0; u < MF_UNROLL; u++) {
            const int j = i0 + u * NT, h = j / (MLA_DV / 4);
            if (j >= n4) {
                break;
            }
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int s = 0; s < MF_FOLD; s++) {
                const float f = scr[s * 64 + h];
                a.x += f * v[u][s].x;
                a.y += f * v[u][s].y;
                a.z += f * v[u][s].z;
                a.w += f * v[u][s].w;
            }
            uint2 out;
            out.x = (uint32_t) kimi_f2bf(a.x) | (uint32_t) kimi_f2bf(a.y) << 16;
            out.y = (uint32_t) kimi_f2bf(a.z) | (uint32_t) kimi_f2bf(a.w) << 16;
            *(uint2 *) (o + (size_t) w.b * H * MLA_DV + (size_t) j * 4) = out;
        }
    }
    kimi_bar_sync(MF_BAR_FOLD, NT);   /* scr is free again */
}
