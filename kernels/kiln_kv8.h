/* kiln_kv8.h — the FP8 KV cache (kilnc compile --kv-dtype fp8): its layout and its rounding, one
 * definition for the runtime (block sizes), the CPU side (compiler/ref.c's rounding of the cache,
 * and every e4m3 byte the compiler writes: quant.c's fp8_e4m3_from_f32 is kiln_kv8_e4m3) and the
 * kernels (templates/elementwise.cuh's rope_kv writes the cache, templates/attention.cuh reads
 * it). C and CUDA both include it.
 *
 * Layout. A layer's K cache, and its V cache alike, is `blocks` blocks of
 * KILN_KV8_BLOCK_BYTES(KW, NKV) bytes, KW = NKV * HD elements in a token's row (HD: the head dim
 * the kernels run at, a multiple of 8). Block b holds the rows of slots b*KILN_BLOCK ..
 * b*KILN_BLOCK + KILN_BLOCK - 1 (the slot numbering of the 16-bit cache, kiln_step.h):
 *   bytes [0, KILN_BLOCK*KW)           row r at r*KW: the token's KW values as e4m3 bytes, in
 *                                      natural order (head h's dims at h*HD ..)
 *   then KILN_BLOCK*NKV floats         the scale of (row r, kv head h) at float index r*NKV + h
 *   value(r, h, d) = e4m3(byte r*KW + h*HD + d) * scale(r, h).
 * With HD % 8 == 0 a block is a multiple of 128 bytes, so every block (the cache is 256-byte
 * aligned), every row's 8-element chunk (8-byte loads) and every scale is aligned. Against the
 * 16-bit cache's 2*KW bytes a row this is KW + 4*NKV: 132/256 for HD = 128.
 *
 * Rounding, per (token, kv head), when the token is written (no calibration; each token's
 * outliers set its own scale):
 *   amax  = max |x_d| over the head's HD values (float, as rope_kv computed them);
 *   scale = amax / 448 (IEEE division, round to nearest), or 1 when that is not > 0 (a zero
 *           head: its bytes are all 0, so any scale gives 0);
 *   byte  = kiln_kv8_e4m3(x_d / scale) (IEEE division): nearest e4m3, ties to even, saturating
 *           at +-448 (448 / (amax / 448) may round a hair above 448).
 * Non-finite input makes the head's values non-finite (a NaN byte or an infinite scale), as a
 * 16-bit cache would carry them on.
 */
#ifndef KILN_KV8_H
#define KILN_KV8_H

#include "kiln_step.h"

#define KILN_KV8_MAX 448.0f /* the largest finite e4m3 */

/* Bytes of one block of one layer's K (or V) cache: rows of kw e4m3 bytes, then a float scale
 * per row and kv head. */
#define KILN_KV8_BLOCK_BYTES(kw, nkv) ((long long)KILN_BLOCK * ((long long)(kw) + 4LL * (nkv)))
/* Offset of the scales within a block. */
#define KILN_KV8_SCALES_AT(kw) ((long long)KILN_BLOCK * (long long)(kw))

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KILN_KV8_FN __device__ __forceinline__
#define KILN_KV8_BITS(x) __float_as_uint(x)
#define KILN_KV8_DIV(a, b) __fdiv_rn(a, b) /* IEEE, also under --use_fast_math */
#else
#include <string.h>
#define KILN_KV8_FN static inline
static inline unsigned kiln_kv8_bits_(float x)
{
    unsigned u;
    memcpy(&u, &x, sizeof u);
    return u;
}
#define KILN_KV8_BITS(x) kiln_kv8_bits_(x)
#define KILN_KV8_DIV(a, b) ((a) / (b))
#endif

/* The scale of a head whose largest magnitude is amax (>= 0). */
KILN_KV8_FN float kiln_kv8_scale(float amax)
{
    const float s = KILN_KV8_DIV(amax, KILN_KV8_MAX);
    return s > 0.f ? s : 1.f; /* also NaN: not > 0 */
}

/* x as the nearest e4m3 byte, ties to even, saturating at +-448 (Inf too); NaN gives 0x7f (with
 * its sign). Integer operations only, so the GPU (any SM: no cvt to e4m3 before sm_89) and the CPU
 * (compiler/quant.c's fp8_e4m3_from_f32 calls it) compute the same byte; tests/test_kv8.c checks
 * it against a search for the nearest value. */
KILN_KV8_FN unsigned char kiln_kv8_e4m3(float x)
{
    const unsigned u = KILN_KV8_BITS(x), s = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (unsigned char)(s | 0x7fu);
    if (a >= 0x43e00000u) /* >= 448 */
        return (unsigned char)(s | 0x7eu);
    if (a < 0x3c800000u) { /* below 2^-6: an e4m3 subnormal, q * 2^-9 with q = round(|x| * 2^9) */
        const int e = (int)(a >> 23); /* biased exponent, <= 120 here */
        const unsigned m = e ? (a & 0x7fffffu) | 0x800000u : a;
        const int sh = 141 - (e ? e : 1); /* |x| * 2^9 = m * 2^-sh, sh >= 21 */
        if (sh > 24) /* |x| * 2^9 < 1/2 */
            return (unsigned char)s;
        const unsigned half = 1u << (sh - 1), rem = m & ((1u << sh) - 1u);
        unsigned q = m >> sh;
        q += rem > half || (rem == half && (q & 1u)); /* q = 8 is 2^-6, the smallest normal */
        return (unsigned char)(s | q);
    }
    /* normal: keep 3 of the 23 mantissa bits, to nearest even (a carry moves the exponent; below
     * 448 nothing rounds above it) */
    const unsigned r = a + 0x7ffffu + ((a >> 20) & 1u);
    const int E = (int)(r >> 23) - 127; /* -6 .. 8 */
    return (unsigned char)(s | (unsigned)(E + 7) << 3 | ((r >> 20) & 7u));
}

#endif
