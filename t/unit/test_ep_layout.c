/*
 * Unit tests for the host side of engine/parallel/ (no GPU needed): the
 * expert-parallel workspace layout (ep.h) and the NCCL version check
 * (nccl_comm.h).  The kernels and collectives themselves need GPUs and
 * are not run here.  A build without CUDA checks that every NCCL entry
 * says so instead.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "parallel/nccl_comm.h"
#ifdef KIMI_HAVE_CUDA
#include "parallel/ep.h"
#endif


#include "tap.h"


#ifdef KIMI_HAVE_CUDA

static void
test_layout(void)
{
    size_t            bytes, i, j, n;
    uintptr_t         lo[9], hi[9];
    kimi_err_t        err;
    kimi_ep_ws_t      ws;
    kimi_ep_shape_t   sh = { 4, 64, 8, 384, 7168 };   /* Kimi-K2 widths */
    size_t            rows = (size_t) sh.world * sh.t_cap;

    ok(kimi_ep_check(&sh, &err) == 0, "Kimi-K2 shape on 4 ranks is valid");

    bytes = kimi_ep_ws_bytes(&sh);
    kimi_ep_ws_carve(&ws, (void *) (uintptr_t) 0x100000, &sh);

    /* [start, end) of each array, in carve order */
    /* one peer's message: rows, scales, ids, weights of 64 rows */
    ok(kimi_ep_block_bytes(&sh) == 64 * (7168 + 56 * 4 + 8 * 4 + 8 * 4),
       "a peer's message is 64 x (7168 + 224 + 64) bytes (%zu)",
       kimi_ep_block_bytes(&sh));

    lo[0] = (uintptr_t) ws.send_buf; hi[0] = lo[0] + 4 * kimi_ep_block_bytes(&sh);
    lo[1] = (uintptr_t) ws.recv_buf; hi[1] = lo[1] + 4 * kimi_ep_block_bytes(&sh);
    lo[2] = (uintptr_t) ws.recv_idx; hi[2] = lo[2] + rows * 8 * 4;
    lo[3] = (uintptr_t) ws.recv_w;   hi[3] = lo[3] + rows * 8 * 4;
    lo[4] = (uintptr_t) ws.recv_xq;  hi[4] = lo[4] + rows * 7168;
    lo[5] = (uintptr_t) ws.recv_xs;  hi[5] = lo[5] + rows * 56 * 4;
    lo[6] = (uintptr_t) ws.pos;      hi[6] = lo[6] + 64 * 4 * 4;
    lo[7] = (uintptr_t) ws.y_send;   hi[7] = lo[7] + rows * 7168 * 2;
    lo[8] = (uintptr_t) ws.y_recv;   hi[8] = lo[8] + rows * 7168 * 2;

    for (i = 0, n = 0; i < 9; i++) {
        n += lo[i] % 256 == 0;
    }
    ok(n == 9, "every array starts 256-byte aligned (%zu of 9)", n);

    for (i = 0, n = 0; i < 9; i++) {
        for (j = i + 1; j < 9; j++) {
            n += lo[i] < hi[j] && lo[j] < hi[i];
        }
    }
    ok(n == 0, "no two arrays overlap (%zu overlaps)", n);

    ok(hi[8] <= 0x100000 + bytes && hi[8] + 256 > 0x100000 + bytes,
       "the last array ends where ws_bytes says (%zu bytes)", bytes);

    sh.n_experts = 383;
    ok(kimi_ep_check(&sh, &err) == KIMI_EINVAL
       && strstr(err.msg, "n_experts=383") != NULL,
       "experts not divisible by ranks are refused: %s", err.msg);

    sh.n_experts = 384;
    sh.dim = 7000;
    ok(kimi_ep_check(&sh, &err) == KIMI_EINVAL, "dim %% 128 != 0 refused");
}

#endif


int
main(void)
{
    int         rc, version = -1;
    uint8_t     blob[256];
    uint32_t    len = 0;
    kimi_err_t  err;

    rc = kimi_nccl_version(&version, &err);

#ifdef KIMI_HAVE_CUDA
    ok(rc == 0 && version >= KIMI_NCCL_MIN_VERSION,
       "NCCL loaded at run time is %d (>= %d)", version,
       KIMI_NCCL_MIN_VERSION);
    test_layout();
    (void) blob;
    (void) len;
#else
    ok(rc == KIMI_EUNSUPPORTED && strstr(err.msg, "without CUDA") != NULL,
       "a CPU build says NCCL is missing: %s", err.msg);
    rc = kimi_nccl_unique_id(blob, sizeof(blob), &len, &err);
    ok(rc == KIMI_EUNSUPPORTED && len == 0, "no unique id without NCCL");
#endif

    printf("1..%d\n", test_n);

    return test_failed ? 1 : 0;
}
