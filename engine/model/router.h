/*
 * The MoE routers a config can name (model_config.c picks one from
 * scoring_func and topk_method; kimi_moe_route in backend/cpu/ops.c and
 * the cuda router kernels compute them).  A header of its own because the
 * standalone CPU ops (also linked into the GPU checkers) take it too.
 */

#ifndef KIMI_ROUTER_H
#define KIMI_ROUTER_H

/* DeepSeek-V3's sigmoid scores + e_score_correction_bias, groups ranked by
 * their two best (noaux_tc); DeepSeek-V2's softmax scores, top-k over all
 * experts (greedy) or over the topk_group groups of the best maxima
 * (group_limited_greedy). */
enum {
    KIMI_ROUTER_NOAUX_TC = 0,
    KIMI_ROUTER_GREEDY,
    KIMI_ROUTER_GROUP_GREEDY
};

#endif
