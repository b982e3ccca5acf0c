/*
 * Tensor maps for the TMA loads of tma.cuh.
 *
 * Owns:   finding the driver's cuTensorMapEncodeTiled once (through the
 *         runtime's entry-point query, so nothing links -lcuda) and the one
 *         kind of map the kernels use: a row-major 2-D tensor read in boxes
 *         whose rows are 128 bytes, landing in the 128-byte swizzled layout
 *         wgmma reads (wgmma.cuh).
 * Never:  device code; which boxes a kernel loads (its own file says).
 */

#include <string.h>

#include "tma.cuh"
#include "kimi_kernels.h"

typedef CUresult (*tmap_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                   const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                   const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

int
kimi_tmap_2d(CUtensorMap *m, CUtensorMapDataType type, const void *base, uint64_t cols,
             uint64_t rows, uint64_t row_bytes, uint32_t box_cols, uint32_t box_rows,
             uint32_t l2_promotion, kimi_err_t *err)
{
    static tmap_encode_fn fn;   /* a benign race: every caller finds the same */

    if (base == NULL) {
        memset(m, 0, sizeof(*m));
        return KIMI_OK;
    }
    if (fn == NULL) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        cudaError_t ce = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                          cudaEnableDefault, &q);
        if (ce != cudaSuccess || q != cudaDriverEntryPointSuccess || p == NULL) {
            return kimi_err_set(err, KIMI_ECUDA, "tensor map: cuTensorMapEncodeTiled not found (%s)",
                                cudaGetErrorString(ce));
        }
        fn = (tmap_encode_fn) p;
    }
    const CUtensorMapL2promotion l2 = l2_promotion == 0 ? CU_TENSOR_MAP_L2_PROMOTION_NONE
                                      : l2_promotion == 64 ? CU_TENSOR_MAP_L2_PROMOTION_L2_64B
                                      : l2_promotion == 128 ? CU_TENSOR_MAP_L2_PROMOTION_L2_128B
                                      : CU_TENSOR_MAP_L2_PROMOTION_L2_256B;
    const cuuint64_t dim[2] = { cols, rows };
    const cuuint64_t stride[1] = { row_bytes };
    const cuuint32_t box[2] = { box_cols, box_rows }, estride[2] = { 1, 1 };
    CUresult r = fn(m, type, 2, (void *) base, dim, stride, box, estride,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                    l2, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        return kimi_err_set(err, KIMI_ECUDA, "tensor map: cuTensorMapEncodeTiled error %d "
                            "(%llu x %llu, row %llu bytes, box %u x %u at %p)", (int) r,
                            (unsigned long long) rows, (unsigned long long) cols,
                            (unsigned long long) row_bytes, box_rows, box_cols, base);
    }
    return KIMI_OK;
}
