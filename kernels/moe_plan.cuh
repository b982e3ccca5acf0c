/*
 * The MoE plan's device pieces shared by moe.cu (the plan kernels) and
 * router.cu (the fused batch-1 route, which plans in its last block).
 *
 * Owns:  the expert id filter and the one-warp plan of at most 32 pairs.
 * Never: launches anything; the layout is kimi_moe_ws_t (kimi_kernels.h).
 */
#ifndef KIMI_MOE_PLAN_CUH
#define KIMI_MOE_PLAN_CUH

#include "kimi_cuda.cuh"
#include "kimi_kernels.h"

static __device__ __forceinline__ int plan_id(const int32_t *topk_idx, int p, int E)
{
    const int e = topk_idx[p];
    return (e >= 0 && e < E) ? e : -1;   /* out-of-range ids are dropped */
}

/*
 * The plan for at most 32 pairs (a batch of 1-4 tokens at top-8), called by
 * one whole warp, a pair a lane.  A pair's row is the count of pairs with a
 * smaller expert plus its rank among its expert's pairs before it, and an
 * expert's slot the count of smaller experts present: the counting sort's
 * result (moe_plan_kernel), without its 32*E histogram and scans (5 us of a
 * batch-1 MoE layer).  topk_idx may be global or shared memory.
 */
static __device__ __forceinline__ void
moe_plan_warp(const int32_t *topk_idx, int T, int top_k, int E, int shared,
              int max_slots, const kimi_moe_ws_t &ws)
{
    const int lane = threadIdx.x & 31, P = T * top_k, nsh = shared ? 1 : 0;
    const unsigned lt = (1u << lane) - 1;
    const int e = lane < P ? plan_id(topk_idx, lane, E) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const bool lead = e >= 0 && (peers & lt) == 0;
    const unsigned leads = __ballot_sync(0xffffffffu, lead);
    /* the lanes holding a smaller expert, by a radix walk over the id's 10
     * bits (E <= 1024), most significant first: ten ballots, not 32
     * dependent shuffles */
    unsigned less = 0, same = __ballot_sync(0xffffffffu, e >= 0);
    for (int b = 9; b >= 0; b--) {
        const bool one = e >= 0 && ((e >> b) & 1);
        const unsigned ones = __ballot_sync(0xffffffffu, one);
        less |= one ? same & ~ones : 0u;
        same &= one ? ones : ~ones;
    }
    const int below = __popc(less), below_experts = __popc(less & leads);
    if (e >= 0) {
        const int r = below + __popc(peers & lt);
        ws.row_token[r] = lane / top_k;
        ws.row_of_pair[lane] = r;
        if (lead) {
            ws.slot_expert[nsh + below_experts] = e;
            ws.slot_row0[nsh + below_experts] = below;
            ws.slot_rows[nsh + below_experts] = __popc(peers);
        }
    } else if (lane < P) {
        ws.row_of_pair[lane] = -1;
    }
    if (shared) {
        if (lane == 0) {
            ws.slot_expert[0] = E;
            ws.slot_row0[0] = P;
            ws.slot_rows[0] = T;
        }
        if (lane < T) {
            ws.row_token[P + lane] = lane;
        }
    }
    for (int sl = nsh + __popc(leads) + lane; sl < max_slots; sl += 32) {
        ws.slot_expert[sl] = -1;
        ws.slot_row0[sl] = 0;
        ws.slot_rows[sl] = 0;
    }
}

#endif
