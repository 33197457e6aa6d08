// sample.cuh — next-token selection on the GPU: greedy, or temperature / top-k / top-p sampling
// with a counter-based RNG, one block per sequence.
//
// What it computes, per sequence s (logits row l[0..V), parameters p = params[s]):
//  - p.temperature <= 0 (or NaN), or no finite maximum logit: greedy, the index of the largest
//    logit, ties to the LOWEST index (torch.argmax). NaN logits count as -inf throughout.
//  - otherwise, with m = max l and T = p.temperature, each token gets the integer weight
//        w_i = round(exp((l_i - m) / T) * 2^31)          (so the top token weighs exactly 2^31)
//    i.e. the softmax numerator in 31-bit fixed point. Tokens less likely than 2^-31 times the
//    top token get weight 0 and are never drawn (they carry at most V * 2^-31 of the mass).
//    Fixed point makes every sum exact and independent of summation order, so a draw is a pure
//    function of (logits, params, step) — reproducible run to run, whatever the reduction order.
//  - top-k (0 < k < V): keep the tokens whose logit >= the k-th largest logit. Ties at the k-th
//    value are all kept, exactly as transformers' TopKLogitsWarper does (scores < kth are
//    removed). Any k works (no upper limit); k <= 0 or k >= V keeps everything.
//  - top-p (p.top_p < 1): of the tokens kept so far, keep the smallest set of the most likely
//    ones whose weight is >= ceil(top_p * kept weight); at least one token (the most likely) is
//    always kept; ties at the boundary logit are all kept.
//  - draw: u in [0,1) from sample_uniform(seed, step, s) (below), r = floor(u * W) with W the
//    kept weight, and the token is the one whose interval contains r when the kept tokens are
//    laid end to end in thread-major order (token i belongs to thread i % THREADS; thread 0's
//    tokens in increasing index, then thread 1's, ...). Any fixed order gives the same
//    distribution; this one reads the logits coalesced.
//
// How: thresholds are searched on a 32-bit order-preserving key of the logit (larger logit =
// larger key) by binary search, one bit per pass from the most significant: "largest key tau
// such that the count (top-k) or weight (top-p) of tokens with key >= tau reaches the target".
// Each pass reads the row once (from L2: a 256k-vocab row is 1 MB) and does one block reduction,
// so the cost is about 32 passes for top-k and 33 for top-p, plus 3. That is O(32 V) work per
// sequence on one SM: simple and exact, but a known cost (a few hundred microseconds for a 256k
// vocabulary with top-p); greedy is one pass, plain temperature sampling three.
#pragma once

#include "common.cuh"

namespace kiln {
namespace sample_detail { // helpers, kept out of kiln:: so other families' names cannot clash

typedef unsigned long long u64;

// The splitmix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
__device__ __forceinline__ u64 sample_mix64(u64 z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Counter-based uniform in [0, 1): each counter is added into the state (times the golden-ratio
// constant, so zero counters still move it) and mixed; the top 53 bits make the double.
//   h = mix(seed + G); h = mix(h + (step + 1) G); h = mix(h + (seq + 1) G); u = (h >> 11) / 2^53
__device__ __forceinline__ double sample_uniform(u64 seed, u64 step, u64 seq)
{
    const u64 G = 0x9E3779B97F4A7C15ull;
    u64 h = sample_mix64(seed + G);
    h = sample_mix64(h + (step + 1) * G);
    h = sample_mix64(h + (seq + 1) * G);
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

// NaN -> -inf, -0 -> +0 (on the bits: fast-math may assume neither exists).
__device__ __forceinline__ float sample_clean(float l)
{
    unsigned u = __float_as_uint(l);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = 0xff800000u;
    else if ((u & 0x7fffffffu) == 0)
        u = 0;
    return __uint_as_float(u);
}

// Order-preserving key of a cleaned float: a < b  <=>  key(a) < key(b).
__device__ __forceinline__ unsigned sample_key(float l)
{
    const unsigned u = __float_as_uint(l);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// w = round(exp((l - m) * inv_t) * 2^31), l cleaned, m the (finite) maximum: w in [0, 2^31].
// The _rn intrinsics keep the compiler from contracting differently at different call sites,
// so every pass computes bit-identical weights.
__device__ __forceinline__ unsigned sample_weight(float l, float m, float inv_t)
{
    const float y = __fmul_rn(__fsub_rn(l, m), inv_t);
    return __float2uint_rn(__fmul_rn(__expf(y), 2147483648.f));
}

template <int THREADS>
__device__ __forceinline__ u64 block_sum_u64(u64 x, u64 *scratch)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    if (THREADS <= 32)
        return x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // scratch may still be read by a previous reduction
    if (lane == 0)
        scratch[warp] = x;
    __syncthreads();
    x = lane < THREADS / 32 ? scratch[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Exclusive prefix sum over the block in thread order; *total gets the block's sum.
// scratch: 32 u64 of shared memory; total: shared.
template <int THREADS>
__device__ __forceinline__ u64 block_excl_scan_u64(u64 x, u64 *scratch, u64 *total)
{
    constexpr int NW = THREADS / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    u64 inc = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o)
            inc += y;
    }
    __syncthreads(); // scratch may still be read by a previous reduction
    if (lane == 31)
        scratch[warp] = inc; // the warp's total
    __syncthreads();
    if (warp == 0) {
        const u64 wt = lane < NW ? scratch[lane] : 0ull;
        u64 wi = wt;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u64 y = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o)
                wi += y;
        }
        if (lane < NW)
            scratch[lane] = wi - wt; // exclusive prefix of the warp totals
        if (lane == 31)
            *total = wi;
    }
    __syncthreads();
    return scratch[warp] + inc - x;
}

// Largest tau such that the tokens with key >= max(tau, floor_key) count (COUNT) or weigh at
// least `target`. Requires that all tokens with key >= floor_key reach the target (then the
// answer is >= floor_key and is the key of an actual token). One pass over the row per bit.
template <int V, int THREADS, bool COUNT>
__device__ __forceinline__ unsigned sample_search(const float *row, float m, float inv_t,
                                                  unsigned floor_key, u64 target, u64 *scratch)
{
    unsigned tau = 0;
    for (int b = 31; b >= 0; b--) {
        const unsigned cand = tau | (1u << b);
        const unsigned lo = cand > floor_key ? cand : floor_key;
        u64 acc = 0;
        for (int i = threadIdx.x; i < V; i += THREADS) {
            const float l = sample_clean(row[i]);
            if (sample_key(l) >= lo)
                acc += COUNT ? 1u : sample_weight(l, m, inv_t);
        }
        if (block_sum_u64<THREADS>(acc, scratch) >= target) // the same value in every thread
            tau = cand;
    }
    return tau > floor_key ? tau : floor_key;
}

} // namespace sample_detail

// sample: out_ids[s] for each sequence s of the step; logits [n_seqs, V] (float, row s for
// sequence s), params [n_seqs]; `step` is the RNG counter (the runtime's decode step number).
// Grid (n_seqs) x THREADS, THREADS a multiple of 32 in [32, 1024]. Any V >= 1.
template <int V, int THREADS>
__device__ __forceinline__ void sample(const kiln_step st, const float *logits,
                                       const kiln_sample *params, int *out_ids,
                                       unsigned long long step)
{
    using namespace sample_detail;
    static_assert(V >= 1, "V >= 1");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "THREADS must be a multiple of 32 in [32, 1024]");
    constexpr int NW = THREADS / 32;
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    __shared__ u64 s_u64[32];
    __shared__ u64 s_total;
    __shared__ int s_choice;

    const int s = blockIdx.x;
    if (s >= st.n_seqs)
        return;
    const float *row = logits + (long long)s * V;
    const kiln_sample p = params[s];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    // 1. maximum and argmax, ties to the lowest index. A thread scans its tokens in increasing
    //    index (strict >), the merges prefer the lower index on equal values; a thread without
    //    tokens carries (-inf, INT_MAX), which loses every tie.
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += THREADS) {
        const float l = sample_clean(row[i]);
        if (bi == 0x7fffffff || l > best) {
            best = l;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < NW ? s_val[lane] : -INFINITY;
        bi = lane < NW ? s_idx[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            s_val[0] = best;
            s_choice = bi < V ? bi : 0;
        }
    }
    __syncthreads();
    const float m = s_val[0];
    const int argmax = s_choice;

    // Greedy: temperature <= 0 or NaN, or no finite maximum (all -inf/NaN, or +inf present).
    const unsigned mb = __float_as_uint(m) & 0x7fffffffu;
    if (!(p.temperature > 0.f) || mb >= 0x7f800000u) {
        if (threadIdx.x == 0)
            out_ids[s] = argmax;
        return;
    }
    const float inv_t = __frcp_rn(p.temperature);

    // 2. top-k: the k-th largest key (the count of keys >= it reaches k).
    unsigned thr = 0;
    if (p.top_k > 0 && p.top_k < V)
        thr = sample_search<V, THREADS, true>(row, m, inv_t, 0u, (u64)p.top_k, s_u64);

    // 3. top-p over the tokens kept by top-k.
    if (p.top_p < 1.f) {
        u64 kept = 0;
        for (int i = threadIdx.x; i < V; i += THREADS) {
            const float l = sample_clean(row[i]);
            if (sample_key(l) >= thr)
                kept += sample_weight(l, m, inv_t);
        }
        kept = block_sum_u64<THREADS>(kept, s_u64); // >= 2^31: the top token is kept
        const double want = ceil((double)fmaxf(p.top_p, 0.f) * (double)kept);
        u64 target = (u64)want;
        if (target < 1)
            target = 1;
        if (target > kept)
            target = kept;
        thr = sample_search<V, THREADS, false>(row, m, inv_t, thr, target, s_u64);
    }

    // 4. draw: this thread's kept weight, the exclusive prefix over threads, and the thread
    //    whose interval holds r finds the token among its own (same order, same weights).
    u64 mine = 0;
    for (int i = threadIdx.x; i < V; i += THREADS) {
        const float l = sample_clean(row[i]);
        if (sample_key(l) >= thr)
            mine += sample_weight(l, m, inv_t);
    }
    const u64 before = block_excl_scan_u64<THREADS>(mine, s_u64, &s_total);
    const u64 total = s_total;
    // s_choice still holds the argmax: the answer if total were 0 (cannot happen: the top
    // token weighs 2^31) or if no thread matched (cannot happen: the intervals tile [0, total)).
    if (total > 0) {
        const double u = sample_uniform(p.seed, step, (u64)s);
        u64 r = (u64)(u * (double)total);
        if (r >= total)
            r = total - 1;
        if (mine > 0 && r >= before && r - before < mine) {
            u64 acc = before;
            for (int i = threadIdx.x; i < V; i += THREADS) {
                const float l = sample_clean(row[i]);
                if (sample_key(l) >= thr) {
                    acc += sample_weight(l, m, inv_t);
                    if (acc > r) {
                        s_choice = i;
                        break;
                    }
                }
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0)
        out_ids[s] = s_choice;
}

} // namespace kiln
