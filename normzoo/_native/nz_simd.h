/* Vector helpers shared by the kernel files (batch_norm.c, row_norm.c): each includes this
 * header and is still built on its own (the libraries' cache key covers this file too).
 *
 * nz_vf is a GCC/Clang vector-extension type of 16 floats: one AVX-512 register (two AVX2
 * ones, four SSE/NEON ones where the target has no wider). */
#ifndef NZ_SIMD_H
#define NZ_SIMD_H

#include <stdint.h>

/* a b + c rounded once where the target has fused multiply-adds (then the same rounding
 * whatever the compiler's contraction and vectorization choices), else a b + c. */
#if defined(__FMA__) || defined(__aarch64__)
#define NZ_FMA(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define NZ_FMA(a, b, c) ((a) * (b) + (c))
#endif

typedef float nz_vf __attribute__((vector_size(64)));
typedef int32_t nz_vi __attribute__((vector_size(64)));
#define NZ_VL 16 /* floats per nz_vf */

static inline nz_vf nz_load(const float *p) {
  nz_vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
static inline void nz_store(float *p, nz_vf v) { __builtin_memcpy(p, &v, sizeof v); }

/* v with the lanes where `where` is set (-1, a vector comparison's true) cleared to +0. */
static inline nz_vf nz_clear(nz_vf v, nz_vi where) {
  nz_vi bits;
  __builtin_memcpy(&bits, &v, sizeof v);
  bits &= ~where;
  __builtin_memcpy(&v, &bits, sizeof v);
  return v;
}

/* max(r, 0) lane by lane, a NaN kept (as torch.relu keeps it): r < 0 ? 0 : r. */
static inline nz_vf nz_relu(nz_vf r) { return nz_clear(r, r < (nz_vf){0}); }

/* sum(p - k) and sum((p - k)^2) over p[0..m), m the largest multiple of 2 NZ_VL not above n,
 * into *r1 and *r2 (the lanes added in order); returns m, where the caller's tail starts. Two
 * vectors per sum: consecutive adds do not wait on each other (one chain of adds would wait
 * on each add's latency). */
static inline int64_t nz_shifted_sums(const float *p, int64_t n, float k, float *r1, float *r2) {
  nz_vf a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};
  int64_t i = 0;
  for (; i + 2 * NZ_VL <= n; i += 2 * NZ_VL) {
    const nz_vf d = nz_load(p + i) - k, e = nz_load(p + i + NZ_VL) - k;
    a1 += d;
    a2 += d * d;
    b1 += e;
    b2 += e * e;
  }
  a1 += b1;
  a2 += b2;
  float t1 = 0.f, t2 = 0.f;
  for (int v = 0; v < NZ_VL; ++v) {
    t1 += a1[v];
    t2 += a2[v];
  }
  *r1 = t1;
  *r2 = t2;
  return i;
}

/* The 16 lanes' sum as a tree: halves added (8 + 8, 4 + 4, then the last four pairwise). */
static inline float nz_hsum(nz_vf v) {
  typedef float v8 __attribute__((vector_size(32)));
  typedef float v4 __attribute__((vector_size(16)));
  v8 lo8, hi8;
  __builtin_memcpy(&lo8, &v, sizeof lo8);
  __builtin_memcpy(&hi8, (const char *)&v + sizeof lo8, sizeof hi8);
  const v8 s8 = lo8 + hi8;
  v4 lo4, hi4;
  __builtin_memcpy(&lo4, &s8, sizeof lo4);
  __builtin_memcpy(&hi4, (const char *)&s8 + sizeof lo4, sizeof hi4);
  const v4 s4 = lo4 + hi4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

/* 16 bfloat16 values (their uint16_t bits) widened to floats: each bit pattern shifted into a
 * float's upper half (exact). */
typedef uint16_t nz_vbf __attribute__((vector_size(32)));
static inline nz_vf nz_load_bf16(const uint16_t *p) {
  nz_vbf h;
  __builtin_memcpy(&h, p, sizeof h);
  const nz_vi i = __builtin_convertvector(h, nz_vi) << 16;
  nz_vf f;
  __builtin_memcpy(&f, &i, sizeof f);
  return f;
}

/* Short rows (fewer than NZ_LINE_MIN values, many of them per call): sum(p - k) and
 * sum((p - k)^2) over p[0..m), m the largest multiple of NZ_VL not above n, in two chains of
 * vectors and then a tree over the lanes (nz_hsum), into *r1 and *r2; returns m, where the
 * caller's tail starts. The compiled `omp simd reduction` of such a row ended in its 32
 * partial sums added one at a time through the stack, per sum, per row: at 64 values a row
 * (BatchNorm on (128, 64, 8, 8)) most of the forward's time. The _bf16 variant reads
 * bfloat16 bits. */
#define NZ_SHORT_SUMS(NAME, T, LOAD)                                                        \
  static inline int64_t NAME(const T *p, int64_t n, float k, float *r1, float *r2) {       \
    nz_vf a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};                                           \
    int64_t i = 0;                                                                          \
    for (; i + 2 * NZ_VL <= n; i += 2 * NZ_VL) {                                            \
      const nz_vf d = LOAD(p + i) - k, e = LOAD(p + i + NZ_VL) - k;                         \
      a1 += d;                                                                              \
      a2 += d * d;                                                                          \
      b1 += e;                                                                              \
      b2 += e * e;                                                                          \
    }                                                                                       \
    if (i + NZ_VL <= n) {                                                                   \
      const nz_vf d = LOAD(p + i) - k;                                                      \
      a1 += d;                                                                              \
      a2 += d * d;                                                                          \
      i += NZ_VL;                                                                           \
    }                                                                                       \
    *r1 = nz_hsum(a1 + b1);                                                                 \
    *r2 = nz_hsum(a2 + b2);                                                                 \
    return i;                                                                               \
  }
NZ_SHORT_SUMS(nz_short_sums, float, nz_load)
NZ_SHORT_SUMS(nz_short_sums_bf16, uint16_t, nz_load_bf16)

/* Whole cache lines. The compiler's vectorized loops store half lines (GCC prefers 32-byte
 * vectors on these CPUs); a core that sees a 64-byte line written whole need not read it from
 * memory first (no read for ownership), a third of a map's traffic. Measured with
 * scripts/bench_kernel_ab.py (2 threads, a Xeon with AVX-512): the row kernels' forward 5-15%
 * faster, down to 0.8 of its time on the small shapes; BatchNorm's forward and backward 5-7%
 * on (32, 64, 32, 32). Where a loop measured faster as compiled (short rows of BatchNorm, the
 * backward's short channels), the kernels take whole lines from NZ_LINE_MIN values only. */
#define NZ_LINE_MIN 256

/* How many of the n floats from o to write one at a time before o reaches a 64-byte
 * boundary, from where the stores are whole lines (one nz_vf each). */
static inline int64_t nz_head(const float *o, int64_t n) {
  const int64_t h = (int64_t)((64u - ((uintptr_t)o & 63u)) & 63u) / (int64_t)sizeof(float);
  return h < n ? h : n;
}

/* o = p sc + sh (then max(., 0) with relu: v < 0 ? 0 : v keeps a NaN, as torch.relu does)
 * over n values: one at a time up to the first line boundary, then in whole lines. */
static inline void nz_map_lines(const float *p, float *o, int64_t n, float sc, float sh,
                                int relu) {
  const int64_t h = nz_head(o, n);
  int64_t i = 0;
  for (; i < h; ++i) {
    const float v = p[i] * sc + sh;
    o[i] = relu && v < 0.f ? 0.f : v;
  }
  if (relu)
    for (; i + NZ_VL <= n; i += NZ_VL) nz_store(o + i, nz_relu(nz_load(p + i) * sc + sh));
  else
    for (; i + NZ_VL <= n; i += NZ_VL) nz_store(o + i, nz_load(p + i) * sc + sh);
  for (; i < n; ++i) {
    const float v = p[i] * sc + sh;
    o[i] = relu && v < 0.f ? 0.f : v;
  }
}

#endif /* NZ_SIMD_H */
