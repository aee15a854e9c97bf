/* batch_norm.c's channels_last tile sums (BatchNorm's channels_last kernels, Ghost BN's rows)
 * written once for an element type: batch_norm.c includes this file twice through
 * bn_kernels.h (no include guard), for float32 and for bfloat16, with the macros of
 * ghost_rows.h (NZ_T, NZ_LD, NZ_FN). The sums are float lanes flushed into double for either
 * type. */

/* The sums of products below are explicit fused multiply-adds (NZ_FMA, nz_simd.h): left to
 * the compiler's contraction, the float32 and bfloat16 builds, and the plain and fused-ReLU
 * variants, rounded some tiles' sums differently on an AMD EPYC (AVX-512), where they must
 * agree to the bit. */

/* Forward sums of W <= NZ_CL_TILE channels over n <= NZ_CL_CHUNK rows (row i at p + i C):
 * s1 += sum(x - k), s2 += sum((x - k)^2). Inlined with a constant W, the float sums are
 * registers (a run-time W, or sums in memory across rows, is several times slower). */
NZ_INLINE void NZ_FN(cl_tile_moments)(const NZ_T *p, int64_t C, int64_t n, const float *k,
                                      int64_t W, double *s1, double *s2) {
  float f1[NZ_CL_TILE], f2[NZ_CL_TILE], kk[NZ_CL_TILE];
  for (int64_t j = 0; j < W; ++j) {
    f1[j] = f2[j] = 0.f;
    kk[j] = k[j];
  }
  for (int64_t i = 0; i < n; ++i) {
    const NZ_T *row = p + i * C;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      const float d = NZ_LD(row[j]) - kk[j];
      f1[j] += d;
      f2[j] = NZ_FMA(d, d, f2[j]);
    }
  }
  for (int64_t j = 0; j < W; ++j) {
    s1[j] += f1[j];
    s2[j] += f2[j];
  }
}

/* Backward sums, as cl_tile_moments: s1 += sum(dy), s2 += sum(dy (x - m)); with relu (a
 * constant where inlined), dy masked by x sc + sh > 0 (the fused ReLU's gradient). */
NZ_INLINE void NZ_FN(cl_tile_grad_sums)(const NZ_T *g, const NZ_T *p, int64_t C, int64_t n,
                                        const float *m, int64_t W, double *s1, double *s2,
                                        const float *sc, const float *sh, int relu) {
  float f1[NZ_CL_TILE], f2[NZ_CL_TILE], mm[NZ_CL_TILE], a[NZ_CL_TILE], k[NZ_CL_TILE];
  for (int64_t j = 0; j < W; ++j) {
    f1[j] = f2[j] = 0.f;
    mm[j] = m[j];
    if (relu) {
      a[j] = sc[j];
      k[j] = sh[j];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const NZ_T *gr = g + i * C, *row = p + i * C;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      const float xv = NZ_LD(row[j]);
      const float gv = relu && xv * a[j] + k[j] <= 0.f ? 0.f : NZ_LD(gr[j]);
      f1[j] += gv;
      f2[j] = NZ_FMA(gv, xv - mm[j], f2[j]);
    }
  }
  for (int64_t j = 0; j < W; ++j) {
    s1[j] += f1[j];
    s2[j] += f2[j];
  }
}
