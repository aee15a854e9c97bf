/* bfloat16 loads and stores shared by the kernel files that build a bfloat16 variant (zoo.c,
 * batch_norm.c's ghost rows). bfloat16 tensors are read and written as their uint16_t bits (a
 * float's upper half): every value widens to float as it is loaded, all arithmetic is float
 * (double for the sums, as for float32 input), and each output value is rounded once to the
 * nearest bfloat16, ties to even, a NaN to a quiet NaN: what the float32 kernels followed by
 * torch's .to(torch.bfloat16) give, without the float32 copies of x, y, dy and dx. */
#ifndef NZ_BF16_H
#define NZ_BF16_H

#include <stdint.h>

static inline __attribute__((always_inline)) float nz_bf16_load(uint16_t h) {
  union {
    uint32_t i;
    float f;
  } u = {.i = (uint32_t)h << 16};
  return u.f;
}

static inline __attribute__((always_inline)) uint16_t nz_bf16_store(float f) {
  union {
    float f;
    uint32_t i;
  } u = {.f = f};
  const uint32_t r = (u.i + 0x7FFFu + ((u.i >> 16) & 1u)) >> 16;
  return f != f ? (uint16_t)0x7FC0u : (uint16_t)r;
}

#endif
