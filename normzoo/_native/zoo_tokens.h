/* The zoo's token kernels (see zoo.c: R rows of C channels, no positions) written once for an
 * element type: zoo.c includes this file twice (no include guard), after zoo_rows.h, with the
 * same macros (NZ_T, NZ_LD, NZ_ST, NZ_FN; see zoo_rows.h). The column sums in `partial`, the
 * statistics and the parameters' gradients are float32 for either type.
 */

/* Mean and biased variance of p[0..n) in one sweep of shifted sums (shift NZ_LD(p[0]), see
 * nz_column_stats), float lanes, double per NZ_CHUNK values. */
NZ_INLINE void NZ_FN(tok_moments)(const NZ_T *p, int64_t n, float *mean, float *var) {
  const float k = NZ_LD(p[0]);
  double t1 = 0.0, t2 = 0.0;
  for (int64_t s = 0; s < n; s += NZ_CHUNK) {
    const int64_t e = s + NZ_CHUNK < n ? s + NZ_CHUNK : n;
    float r1, r2; /* vectors and a tree over their lanes (nz_simd.h), then the tail */
    for (int64_t i = s + NZ_VSUMS(p + s, e - s, k, &r1, &r2); i < e; ++i) {
      r1 += NZ_LD(p[i]) - k;
      r2 += (NZ_LD(p[i]) - k) * (NZ_LD(p[i]) - k);
    }
    t1 += r1;
    t2 += r2;
  }
  const double dm = t1 / (double)n, v = t2 / (double)n - dm * dm;
  *mean = (float)(k + dm);
  *var = (float)(v > 0.0 ? v : 0.0);
}

/* mean and rstd: (R, G) each. */
void NZ_FN(nz_group_tokens_forward)(int op, const NZ_T *x, const float *v, const float *w,
                             const float *b, NZ_T *y, float *mean, float *rstd, int64_t R,
                             int64_t C, int64_t G, double eps, int threads) {
  const int64_t K = C / G;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t c0 = g * K;
      const NZ_T *p = x + r * C + c0;
      NZ_T *o = y + r * C + c0;
      float m, var;
      NZ_FN(tok_moments)(p, K, &m, &var);
      const float rs = 1.f / sqrtf(var + (float)eps);
      mean[r * G + g] = m;
      rstd[r * G + g] = rs;
      const float *wc = w + c0, *bc = b + c0;
      if (op == NZ_TOK_GN) {
#pragma omp simd
        for (int64_t i = 0; i < K; ++i)
          o[i] = NZ_ST((NZ_LD(p[i]) - m) * rs * wc[i] + bc[i]);
      } else {
        const float *vc = v + c0;
#pragma omp simd
        for (int64_t i = 0; i < K; ++i)
          o[i] = NZ_ST(NZ_LD(p[i]) * nz_sigmoid(vc[i] * NZ_LD(p[i])) * rs * wc[i] + bc[i]);
      }
    }
  }
}

/* partial: 3 C ceil(R / NZ_TOK_ROWS) floats (slots dw, db, dv). dx, dv, dw, db may be NULL. */
void NZ_FN(nz_group_tokens_backward)(int op, const NZ_T *dy, const NZ_T *x, const float *v,
                              const float *w, const float *mean, const float *rstd, NZ_T *dx,
                              float *dv, float *dw, float *db, float *partial, int64_t R,
                              int64_t C, int64_t G, int threads) {
  const int64_t K = C / G, nb = (R + NZ_TOK_ROWS - 1) / NZ_TOK_ROWS;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      int64_t r1;
      float *pw = tok_block(partial, blk, 3, C, R, &r1), *pb = pw + C, *pv = pw + 2 * C;
      for (int64_t r = blk * NZ_TOK_ROWS; r < r1; ++r) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t c0 = g * K;
          const NZ_T *p = x + r * C + c0, *gy = dy + r * C + c0;
          const float *wc = w + c0;
          float *qw = pw + c0, *qb = pb + c0, *qv = pv + c0;
          NZ_T *o = dx ? dx + r * C + c0 : NULL;
          const float m = mean[r * G + g], rs = rstd[r * G + g];
          if (op == NZ_TOK_GN) {
            /* sum h, sum h (x - m): in groups of 16 to 127 channels, vectors and a tree over
             * their lanes, then the tail (the compiled reduction added its lanes one at a time
             * after every group: 0.64 of the backward's time with 16 channels, 0.93 with 64);
             * larger groups keep the compiled loop (1.07x slower this way at 128, 1.16 at 256) */
            float s1 = 0.f, s2 = 0.f;
            int64_t i = 0;
            if (K >= NZ_VL && K < 128) {
              nz_vf a1 = {0}, a2 = {0};
              for (; i + NZ_VL <= K; i += NZ_VL) {
                const nz_vf gv = NZ_VLD(gy + i), d = NZ_VLD(p + i) - m;
                const nz_vf h = gv * nz_load(wc + i);
                a1 += h;
                a2 += h * d;
                nz_store(qw + i, nz_load(qw + i) + gv * d * rs);
                nz_store(qb + i, nz_load(qb + i) + gv);
              }
              s1 = nz_hsum(a1), s2 = nz_hsum(a2);
            } else {
#pragma omp simd reduction(+ : s1, s2)
              for (int64_t j = 0; j < K; ++j) {
                const float h = NZ_LD(gy[j]) * wc[j];
                s1 += h;
                s2 += h * (NZ_LD(p[j]) - m);
                qw[j] += NZ_LD(gy[j]) * (NZ_LD(p[j]) - m) * rs;
                qb[j] += NZ_LD(gy[j]);
              }
              i = K;
            }
            for (; i < K; ++i) { /* the tail of the vectors */
              const float h = NZ_LD(gy[i]) * wc[i];
              s1 += h;
              s2 += h * (NZ_LD(p[i]) - m);
              qw[i] += NZ_LD(gy[i]) * (NZ_LD(p[i]) - m) * rs;
              qb[i] += NZ_LD(gy[i]);
            }
            if (!o) continue;
            const float k0 = s1 / (float)K, k1 = s2 / (float)K * rs * rs;
#pragma omp simd
            for (int64_t i = 0; i < K; ++i)
              o[i] = NZ_ST(rs * (NZ_LD(gy[i]) * wc[i] - k0 - (NZ_LD(p[i]) - m) * k1));
          } else {
            const float *vc = v + c0;
            /* dd = h rstd s (1 + v x (1 - s)), dx's first term, kept for groups of up to
             * NZ_CHUNK values (recomputed for larger ones) */
            float dd[NZ_CHUNK];
            const int keep = K <= NZ_CHUNK;
            /* sum h x s; sum (x - m), whose mean is the float mean's rounding error: the
             * variance's gradient is taken against the exact mean */
            float s1 = 0.f, sd = 0.f;
#define NZ_S0_TERMS                                                                          \
  const float s = nz_sigmoid(vc[i] * NZ_LD(p[i])), hs = NZ_LD(gy[i]) * wc[i] * s;                          \
  const float e = hs * rs * (1.f - s) * NZ_LD(p[i]); /* h rstd s (1 - s) x */                       \
  const float di = hs * rs + vc[i] * e
            if (keep) {
#pragma omp simd reduction(+ : s1, sd)
              for (int64_t i = 0; i < K; ++i) {
                NZ_S0_TERMS;
                dd[i] = di;
                s1 += hs * NZ_LD(p[i]);
                sd += NZ_LD(p[i]) - m;
                qw[i] += NZ_LD(gy[i]) * NZ_LD(p[i]) * s * rs;
                qb[i] += NZ_LD(gy[i]);
                qv[i] += e * NZ_LD(p[i]);
              }
            } else {
#pragma omp simd reduction(+ : s1, sd)
              for (int64_t i = 0; i < K; ++i) {
                NZ_S0_TERMS;
                (void)di;
                s1 += hs * NZ_LD(p[i]);
                sd += NZ_LD(p[i]) - m;
                qw[i] += NZ_LD(gy[i]) * NZ_LD(p[i]) * s * rs;
                qb[i] += NZ_LD(gy[i]);
                qv[i] += e * NZ_LD(p[i]);
              }
            }
            if (!o) continue;
            const float k1 = rs * rs * rs * s1 / (float)K, d = sd / (float)K;
            if (keep) {
#pragma omp simd
              for (int64_t i = 0; i < K; ++i) o[i] = NZ_ST(dd[i] - ((NZ_LD(p[i]) - m) - d) * k1);
            } else {
#pragma omp simd
              for (int64_t i = 0; i < K; ++i) {
                NZ_S0_TERMS;
                (void)e;
                o[i] = NZ_ST(di - ((NZ_LD(p[i]) - m) - d) * k1);
              }
            }
#undef NZ_S0_TERMS
          }
        }
      }
    }
    float *const out[3] = {dw, db, dv};
    if (dw || db || dv) tok_column_totals(partial, nb, C, 3, out);
  }
}

/* Mean and biased variance of each column of x (R, C) in one sweep: shifted sums (shift
 * k_c = x[0, c]: a value of the column, so the one-pass variance loses nothing to
 * cancellation) per block of NZ_TOK_ROWS rows in float, the blocks added in order in double.
 * partial: 2 C ceil(R / NZ_TOK_ROWS) floats. */
void NZ_FN(nz_column_stats)(const NZ_T *x, float *mean, float *var, float *partial, int64_t R,
                     int64_t C, int threads) {
  const int64_t nb = (R + NZ_TOK_ROWS - 1) / NZ_TOK_ROWS;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      int64_t r1;
      float *s1 = tok_block(partial, blk, 2, C, R, &r1), *s2 = s1 + C;
      for (int64_t r = blk * NZ_TOK_ROWS; r < r1; ++r) {
        const NZ_T *p = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = NZ_LD(p[c]) - NZ_LD(x[c]);
          s1[c] += d;
          s2[c] += d * d;
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double t1 = 0.0, t2 = 0.0;
      for (int64_t blk = 0; blk < nb; ++blk) {
        t1 += partial[blk * 2 * C + c];
        t2 += partial[blk * 2 * C + C + c];
      }
      const double dm = t1 / (double)R, v = t2 / (double)R - dm * dm;
      mean[c] = (float)(NZ_LD(x[c]) + dm);
      var[c] = (float)(v > 0.0 ? v : 0.0);
    }
  }
}

/* EvoNorm-B0 on tokens: one position per (row, channel), so the instance variance is 0 and
 * s_i = sqrt(eps) (the reference's value); s_b[c] = sqrt(var_b + eps) from the batch variance
 * of column c (or the running one), computed by the caller.
 *   forward:  y = q w_c + b_c,   q = x / D,   D = max(s_b, d),   d = v_c x + s_i
 *   backward: r = w dy / D,  t = r x / D,  u = t (1 + sign(d - s_b))  (ties split equally),
 *             dx = r - v u / 2 + k_c (x - mean_c),   k_c = ds_b / (s_b R) with batch
 *             statistics (var_b = mean_r (x - mean_c)^2), else 0;
 *             dv_c = -sum_r u x / 2,  ds_b = -sum_r (t - u / 2),  dw_c = sum_r dy q,
 *             db_c = sum_r dy.
 * The backward takes two sweeps with batch statistics (the column sums, then dx), one
 * without. w and b are required. partial: 4 C ceil(R / NZ_TOK_ROWS) floats; k: C floats of scratch. */
void NZ_FN(nz_b0_tokens_forward)(const NZ_T *x, const float *v, const float *s_b, const float *w,
                          const float *b, NZ_T *y, int64_t R, int64_t C, double s_i,
                          int threads) {
  const float si = (float)s_i;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const NZ_T *p = x + r * C;
    NZ_T *o = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d = v[c] * NZ_LD(p[c]) + si, den = d > s_b[c] ? d : s_b[c];
      o[c] = NZ_ST(NZ_LD(p[c]) / den * w[c] + b[c]);
    }
  }
}

void NZ_FN(nz_b0_tokens_backward)(const NZ_T *dy, const NZ_T *x, const float *v, const float *s_b,
                           const float *w, const float *mean, NZ_T *dx, float *dv, float *dw,
                           float *db, float *partial, float *k, int64_t R, int64_t C,
                           double s_i, int batch, int threads) {
  const int64_t nb = (R + NZ_TOK_ROWS - 1) / NZ_TOK_ROWS;
  const float si = (float)s_i;
  const int fused = !batch; /* dx in the sums' sweep */
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      int64_t r1;
      float *pv = tok_block(partial, blk, 4, C, R, &r1), *pw = pv + C, *pb = pv + 2 * C;
      float *ps = pv + 3 * C;
      int64_t r = blk * NZ_TOK_ROWS;
/* r_, t, u of element c of a row (x at P, dy at G), added into the column sums' accumulators
 * av, aw, ab, as. One division per element (inv), where three had cost about a third of the
 * backward; the sign from e = d - s_b, so that GCC keeps it to one (see NZ_SUMS_BODY in
 * zoo.c). Declares its terms: one use per scope. */
#define NZ_B0_TERMS(P, G)                                                                   \
  const float xv = NZ_LD((P)[c]), gv = NZ_LD((G)[c]);                                       \
  const float d = v[c] * xv + si, inv = 1.f / (d > s_b[c] ? d : s_b[c]);                    \
  const float r_ = gv * w[c] * inv, t = r_ * xv * inv, e = d - s_b[c];                      \
  const float u = t * (1.f + (float)(e > 0.f) - (float)(e < 0.f));                          \
  av -= 0.5f * u * xv;                                                                      \
  aw += gv * xv * inv;                                                                      \
  ab += gv;                                                                                 \
  as -= t - 0.5f * u
      /* The sums alone (batch statistics: dx in a second sweep below): four rows for each
       * load and store of the accumulators (a column's terms added in row order, the same
       * bits as one row at a time), where a row each measured 1.10-1.28x this backward's
       * time in float32, 1.02-1.15x in bfloat16 (scripts/bench_kernel_ab.py --cases b0_tok) */
      if (!(fused && dx))
        for (; r + 4 <= r1; r += 4) {
          const NZ_T *p = x + r * C, *g = dy + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float av = pv[c], aw = pw[c], ab = pb[c], as = ps[c];
            for (int k4 = 0; k4 < 4; ++k4) {
              NZ_B0_TERMS(p + k4 * C, g + k4 * C);
            }
            pv[c] = av, pw[c] = aw, pb[c] = ab, ps[c] = as;
          }
        }
      for (; r < r1; ++r) { /* the rest, and every row where dx is written in this sweep */
        const NZ_T *p = x + r * C, *g = dy + r * C;
        NZ_T *o = fused && dx ? dx + r * C : NULL;
        if (o) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float av = pv[c], aw = pw[c], ab = pb[c], as = ps[c];
            NZ_B0_TERMS(p, g);
            pv[c] = av, pw[c] = aw, pb[c] = ab, ps[c] = as;
            o[c] = NZ_ST(r_ - 0.5f * v[c] * u);
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            float av = pv[c], aw = pw[c], ab = pb[c], as = ps[c];
            NZ_B0_TERMS(p, g);
            pv[c] = av, pw[c] = aw, pb[c] = ab, ps[c] = as;
          }
        }
#undef NZ_B0_TERMS
      }
    }
    float *const out[4] = {dv, dw, db, batch ? k : NULL};
    tok_column_totals(partial, nb, C, 4, out); /* ends with a barrier */
    if (batch && dx) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) k[c] = k[c] / (s_b[c] * (float)R);
      /* implicit barrier: k complete */
#pragma omp for schedule(static)
      for (int64_t r = 0; r < R; ++r) {
        const NZ_T *p = x + r * C, *g = dy + r * C;
        NZ_T *o = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xv = NZ_LD(p[c]), d = v[c] * xv + si;
          const float inv = 1.f / (d > s_b[c] ? d : s_b[c]), e = d - s_b[c];
          const float r_ = NZ_LD(g[c]) * w[c] * inv, t = r_ * xv * inv;
          const float u = t * (1.f + (float)(e > 0.f) - (float)(e < 0.f));
          o[c] = NZ_ST(r_ - 0.5f * v[c] * u + k[c] * (xv - mean[c]));
        }
      }
    }
  }
}

/* ---------------------------------------------------------------- RMSNorm on tokens --- *
 * R rows (tokens) of C contiguous channels, normalized over the channels (Zhang and Sennrich,
 * "Root Mean Square Layer Normalization", 2019), fused (torch's CPU rms_norm is a chain of
 * elementwise kernels):
 *   forward:  y = x rrms w_c + b_c,   rrms = 1 / sqrt(mean_c x^2 + eps)
 *   backward: dx = rrms (w dy - x rrms^2 mean_c(w dy x)),
 *             dw_c = sum_r dy x rrms,   db_c = sum_r dy
 * A row is read once for its sum (float lanes, double totals) and again from cache for y or
 * dx. dw and db: rows go in blocks of NZ_TOK_ROWS, each block's column sums in its own slot of
 * `partial` (2 C floats per block), added in block order: the same bits for any thread count.
 * w, b, dx, dw, db may be NULL. */
NZ_INLINE double NZ_FN(tok_dot)(const NZ_T *a, const NZ_T *b, const float *w, int64_t n) {
  double t = 0.0;
  for (int64_t s = 0; s < n; s += NZ_CHUNK) {
    const int64_t e = s + NZ_CHUNK < n ? s + NZ_CHUNK : n;
    float r = 0.f;
    if (w) {
#pragma omp simd reduction(+ : r)
      for (int64_t i = s; i < e; ++i) r += w[i] * NZ_LD(a[i]) * NZ_LD(b[i]);
    } else {
#pragma omp simd reduction(+ : r)
      for (int64_t i = s; i < e; ++i) r += NZ_LD(a[i]) * NZ_LD(b[i]);
    }
    t += r;
  }
  return t;
}

void NZ_FN(nz_rms_tokens_forward)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                           float *rrms, int64_t R, int64_t C, double eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const NZ_T *p = x + r * C;
    NZ_T *o = y + r * C;
    const float inv = (float)(1.0 / sqrt(NZ_FN(tok_dot)(p, p, NULL, C) / (double)C + eps));
    rrms[r] = inv;
    if (w && b) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = NZ_ST(NZ_LD(p[c]) * inv * w[c] + b[c]);
    } else if (w) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = NZ_ST(NZ_LD(p[c]) * inv * w[c]);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = NZ_ST(NZ_LD(p[c]) * inv + (b ? b[c] : 0.f));
    }
  }
}

/* partial: 2 C ceil(R / NZ_TOK_ROWS) floats of scratch (used when dw or db is wanted). */
void NZ_FN(nz_rms_tokens_backward)(const NZ_T *dy, const NZ_T *x, const float *w, const float *rrms,
                            NZ_T *dx, float *dw, float *db, float *partial, int64_t R,
                            int64_t C, int threads) {
  const int64_t nb = (R + NZ_TOK_ROWS - 1) / NZ_TOK_ROWS;
  const int sums = dw || db;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      float *pdw = partial + blk * 2 * C, *pdb = pdw + C;
      if (sums)
        for (int64_t c = 0; c < C; ++c) pdw[c] = pdb[c] = 0.f;
      const int64_t r1 = nz_min64((blk + 1) * NZ_TOK_ROWS, R);
      for (int64_t r = blk * NZ_TOK_ROWS; r < r1; ++r) {
        const NZ_T *p = x + r * C, *g = dy + r * C;
        const float inv = rrms[r];
        if (dx) {
          const float k = inv * inv * inv * (float)(NZ_FN(tok_dot)(g, p, w, C) / (double)C);
          NZ_T *o = dx + r * C;
          if (w) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] = NZ_ST(inv * w[c] * NZ_LD(g[c]) - NZ_LD(p[c]) * k);
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] = NZ_ST(inv * NZ_LD(g[c]) - NZ_LD(p[c]) * k);
          }
        }
        if (sums) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            pdw[c] += NZ_LD(g[c]) * NZ_LD(p[c]) * inv;
            pdb[c] += NZ_LD(g[c]);
          }
        }
      }
    }
    float *const out[2] = {dw, db};
    if (sums) tok_column_totals(partial, nb, C, 2, out);
  }
}

/* ---------------------------------------------------------------- FRN on tokens -------- *
 * Filter Response Normalization + TLU (Singh and Krishnan, CVPR 2020) on R rows of C channels
 * with no spatial positions: the mean square of each (row, channel) is x^2 itself, so
 *   forward:  z = max(w_c x q + b_c, tau_c),   q = 1 / sqrt(x^2 + eps)
 *   backward: hh = dz where y > tau, dz / 2 at a tie (torch.maximum's split), else 0;
 *             dx = w q hh (1 - q^2 x^2) = w hh eps q^3,
 *             dw_c = sum_r q hh x,   db_c = sum_r hh,   dtau_c = sum_r (dz - hh).
 * Elementwise in both directions; the column sums go per block of NZ_TOK_ROWS rows into
 * `partial` (3 C floats per block), added in block order (the same bits for any thread count). */
void NZ_FN(nz_frn_tokens_forward)(const NZ_T *x, const float *w, const float *b, const float *tau,
                           NZ_T *z, int64_t R, int64_t C, double eps, int threads) {
  const float e = (float)eps;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const NZ_T *p = x + r * C;
    NZ_T *o = z + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float y = w[c] * NZ_LD(p[c]) / sqrtf(NZ_LD(p[c]) * NZ_LD(p[c]) + e) + b[c];
      o[c] = NZ_ST(y > tau[c] ? y : tau[c]);
    }
  }
}

/* partial: 3 C ceil(R / NZ_TOK_ROWS) floats of scratch. dx may be NULL. */
void NZ_FN(nz_frn_tokens_backward)(const NZ_T *dz, const NZ_T *x, const float *w, const float *b,
                            const float *tau, NZ_T *dx, float *dw, float *db, float *dtau,
                            float *partial, int64_t R, int64_t C, double eps, int threads) {
  const int64_t nb = (R + NZ_TOK_ROWS - 1) / NZ_TOK_ROWS;
  const float e = (float)eps;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      int64_t r1;
      float *pw = tok_block(partial, blk, 3, C, R, &r1), *pb = pw + C, *pz = pw + 2 * C;
      for (int64_t r = blk * NZ_TOK_ROWS; r < r1; ++r) {
        const NZ_T *p = x + r * C, *g = dz + r * C;
        NZ_T *o = dx ? dx + r * C : NULL;
/* hh and q of element c, then the column sums; the two loops differ only in writing dx */
#define NZ_FRN_TERMS                                                                         \
  const float q = 1.f / sqrtf(NZ_LD(p[c]) * NZ_LD(p[c]) + e), y = w[c] * NZ_LD(p[c]) * q + b[c];                 \
  const float hh = NZ_LD(g[c]) * 0.5f * (1.f + (float)(y > tau[c]) - (float)(y < tau[c]));         \
  pw[c] += q * hh * NZ_LD(p[c]);                                                                    \
  pb[c] += hh;                                                                               \
  pz[c] += NZ_LD(g[c]) - hh
        if (o) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            NZ_FRN_TERMS;
            o[c] = NZ_ST(w[c] * hh * e * q * q * q);
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            NZ_FRN_TERMS;
          }
        }
#undef NZ_FRN_TERMS
      }
    }
    float *const out[3] = {dw, db, dtau};
    tok_column_totals(partial, nb, C, 3, out);
  }
}
