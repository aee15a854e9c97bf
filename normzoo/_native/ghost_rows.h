/* Ghost batch norm over R rows of C channels ((N, C) tokens), written once for an element type:
 * batch_norm.c includes this file twice through bn_kernels.h (no include guard) with
 *   NZ_T       the element type of x, y, dy and dx (float, or uint16_t for bfloat16);
 *   NZ_LD(v)   an element widened to float; NZ_ST(v) a float rounded to an element;
 *   NZ_FN(n)   the exported name (n for float32, n##_bf16 for bfloat16).
 * w, b, stats, var and the parameters' gradients are float32 for either type.
 *
 * Virtual batch j is the rows [j B, min((j + 1) B, R)), normalized with its own per-channel
 * mean and biased variance (the formulas at the top of batch_norm.c). A task is (virtual
 * batch, block of NZ_GHOST_BLOCK channels): for each run of NZ_CL_CHUNK rows, the sums of each
 * tile of NZ_CL_TILE channels in float registers, flushed to double; then the map over the
 * same rows (from cache for short virtual batches). A run reads a block's whole row segment
 * (1 KB of float32) where a tile's alone (128 bytes every C values) streamed poorly at large C.
 * Every task's result depends on its own values only: the same bits for any thread count.
 *   stats: (V, 2, C), each virtual batch's mean and invstd; var: (V, C) biased, or NULL.
 *   backward: part (V, 2, C) scratch, each virtual batch's sums of dy xhat and of dy, added
 *   over the virtual batches in order (double) for dw and db. dx, dw, db may be NULL. */

/* The tile sums: NZ_FN(cl_tile_moments), NZ_FN(cl_tile_grad_sums) (cl_tiles.h). */

void NZ_FN(nz_ghost_forward_rows)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                                  float *stats, float *var, int64_t R, int64_t C, int64_t B,
                                  double eps, int threads) {
  const int64_t V = (R + B - 1) / B, nt = (C + NZ_GHOST_BLOCK - 1) / NZ_GHOST_BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < V * nt; ++t) {
    int64_t j, c0, W, r0, n;
    ghost_task(t, nt, R, C, B, &j, &c0, &W, &r0, &n);
    const NZ_T *p = x + r0 * C + c0;
    double s1[NZ_GHOST_BLOCK], s2[NZ_GHOST_BLOCK];
    float k[NZ_GHOST_BLOCK], a[NZ_GHOST_BLOCK], sh[NZ_GHOST_BLOCK];
    for (int64_t q = 0; q < W; ++q) {
      s1[q] = s2[q] = 0.0;
      k[q] = NZ_LD(p[q]);
    }
    for (int64_t i0 = 0; i0 < n; i0 += NZ_CL_CHUNK) {
      const int64_t m = n - i0 < NZ_CL_CHUNK ? n - i0 : NZ_CL_CHUNK;
      int64_t q0 = 0;
      for (; q0 + NZ_CL_TILE <= W; q0 += NZ_CL_TILE)
        NZ_FN(cl_tile_moments)(p + i0 * C + q0, C, m, k + q0, NZ_CL_TILE, s1 + q0, s2 + q0);
      if (q0 < W)
        NZ_FN(cl_tile_moments)(p + i0 * C + q0, C, m, k + q0, W - q0, s1 + q0, s2 + q0);
    }
    for (int64_t q = 0; q < W; ++q) {
      const double dm = s1[q] / (double)n, v0 = s2[q] / (double)n - dm * dm;
      const double v = v0 > 0.0 ? v0 : 0.0;
      const float mean = (float)(k[q] + dm), inv = (float)(1.0 / sqrt(v + eps));
      stats[j * 2 * C + c0 + q] = mean;
      stats[(j * 2 + 1) * C + c0 + q] = inv;
      if (var) var[j * C + c0 + q] = (float)v;
      a[q] = w ? w[c0 + q] * inv : inv;
      sh[q] = (b ? b[c0 + q] : 0.f) - mean * a[q];
    }
    NZ_T *o = y + r0 * C + c0;
    for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
      for (int64_t q = 0; q < W; ++q) o[i * C + q] = NZ_ST(NZ_LD(p[i * C + q]) * a[q] + sh[q]);
    }
  }
}

void NZ_FN(nz_ghost_backward_rows)(const NZ_T *dy, const NZ_T *x, const float *w,
                                   const float *stats, NZ_T *dx, float *dw, float *db,
                                   float *part, int64_t R, int64_t C, int64_t B, int threads) {
  const int64_t V = (R + B - 1) / B, nt = (C + NZ_GHOST_BLOCK - 1) / NZ_GHOST_BLOCK;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < V * nt; ++t) {
      int64_t j, c0, W, r0, n;
      ghost_task(t, nt, R, C, B, &j, &c0, &W, &r0, &n);
      const NZ_T *p = x + r0 * C + c0, *g = dy + r0 * C + c0;
      const float *mean = stats + j * 2 * C + c0, *inv = mean + C;
      double s1[NZ_GHOST_BLOCK], s2[NZ_GHOST_BLOCK];
      for (int64_t q = 0; q < W; ++q) s1[q] = s2[q] = 0.0;
      for (int64_t i0 = 0; i0 < n; i0 += NZ_CL_CHUNK) {
        const int64_t m = n - i0 < NZ_CL_CHUNK ? n - i0 : NZ_CL_CHUNK;
        const NZ_T *gi = g + i0 * C, *pi = p + i0 * C;
        int64_t q0 = 0;
        for (; q0 + NZ_CL_TILE <= W; q0 += NZ_CL_TILE)
          NZ_FN(cl_tile_grad_sums)(gi + q0, pi + q0, C, m, mean + q0, NZ_CL_TILE, s1 + q0,
                                   s2 + q0, NULL, NULL, 0);
        if (q0 < W)
          NZ_FN(cl_tile_grad_sums)(gi + q0, pi + q0, C, m, mean + q0, W - q0, s1 + q0,
                                   s2 + q0, NULL, NULL, 0);
      }
      float a[NZ_GHOST_BLOCK], k0[NZ_GHOST_BLOCK], k1[NZ_GHOST_BLOCK], mm[NZ_GHOST_BLOCK];
      for (int64_t q = 0; q < W; ++q) {
        part[j * 2 * C + c0 + q] = (float)(s2[q] * inv[q]);
        part[(j * 2 + 1) * C + c0 + q] = (float)s1[q];
        a[q] = w ? w[c0 + q] * inv[q] : inv[q];
        k0[q] = (float)(s1[q] / (double)n);
        k1[q] = (float)(s2[q] / (double)n) * inv[q] * inv[q];
        mm[q] = mean[q];
      }
      if (!dx) continue;
      NZ_T *o = dx + r0 * C + c0;
      for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
        for (int64_t q = 0; q < W; ++q)
          o[i * C + q] = NZ_ST(
              a[q] * (NZ_LD(g[i * C + q]) - k0[q] - (NZ_LD(p[i * C + q]) - mm[q]) * k1[q]));
      }
    }
    ghost_sum_parts(part, V, C, dw, db);
  }
}
