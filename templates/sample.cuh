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
//    function of (logits, params) — reproducible run to run, whatever the reduction order, and
//    the same whichever row of whichever batch the sequence occupies.
//  - top-k (0 < k < V): keep the tokens whose logit >= the k-th largest logit. Ties at the k-th
//    value are all kept, exactly as transformers' TopKLogitsWarper does (scores < kth are
//    removed). Any k works (no upper limit); k <= 0 or k >= V keeps everything.
//  - top-p (0 < p.top_p < 1; 0 is off, as in a zeroed struct): of the tokens kept so far, keep the smallest set of the most likely
//    ones whose weight is >= ceil(top_p * kept weight); at least one token (the most likely) is
//    always kept; ties at the boundary logit are all kept.
//  - draw: u in [0,1) from sample_uniform(p.seed, p.index) (below; index = the tokens the request
//    has generated so far, so each request has its own stream), r = floor(u * W) with W the
//    kept weight, and the token is the one whose interval contains r when the kept tokens are
//    laid end to end in thread-major order (token i belongs to thread i % THREADS; thread 0's
//    tokens in increasing index, then thread 1's, ...). Any fixed order gives the same
//    distribution; this one reads the logits coalesced.
//  The draw depends on THREADS (through that order): the same model compiled with another
//  block size draws other (equally distributed) tokens for the same seed.
//
// How. Thresholds are found by binary search on a 32-bit order-preserving key of the logit
// (larger logit = larger key), one bit per pass from the most significant: "the largest key tau
// such that the count (top-k) or weight (top-p) of the tokens with key >= tau reaches the
// target". Over the whole row that is 32 passes per threshold (about 0.6 ms for a 152k row on
// one SM), so with top-k or top-p the kernel first tries a shortcut (PREFILTER):
//   1. one pass counts (and weighs) the tokens above NCUT fixed cuts of y = (l - m) / T;
//   2. the first cut whose tokens already decide the answer (at least k of them for top-k;
//      at least the top-p target weight for top-p alone; or the last cut, below which every
//      token weighs 0) is taken if it holds <= CAP tokens;
//   3. those tokens — every token with key >= some K0, an upper set of the order — are copied
//      to shared memory in thread-major order (positions from a prefix sum, so the copy is
//      deterministic) and the searches and the draw run there.
// Because every threshold then lies at or above K0 (or, for top-k taken at the last cut, below
// it only by tokens of weight 0, which no draw can pick), the candidates hold exactly the
// drawable tokens the full-row path would keep, in the same order, with the same weights: the
// shortcut returns the same token as the full-row path, bit for bit (the tests compare the two). When no cut works
// (flat rows, k > CAP, a nucleus of thousands of tokens) the full-row path runs.
// Costs (passes over the row, one block per sequence): greedy 1, plain temperature 3, top-k /
// top-p through the shortcut about 5, the full-row path 35 (top-k or top-p) to 68 (both).
// Measured on an H200 (launch and sync included), V = 151936, THREADS = 1024: greedy 24 us,
// temperature 45 us, top-k 50: 84 us, top-p 0.9: 120 us, both: 102 us through the shortcut and
// 630 / 720 / 1280 us on the full-row path; THREADS = 256 is 1.5-2.7x slower. Sequences run in
// parallel (one block each), so a batch of up to one sequence per SM costs about as much as one.
// (Measured before the argmax pass took 16-byte loads, which made a greedy 1B decode step ~11 us
// shorter on an H200: tests/gpu/RESULTS.md, twenty-seventh session.)
#pragma once

#include "common.cuh"

namespace kiln {
namespace sample_detail { // helpers, kept out of kiln:: so other families' names cannot clash

typedef unsigned long long u64;

constexpr int CAP = 3072; // candidates the shortcut keeps in shared memory (12 bytes each)
constexpr int NCUT = 8;   // cuts of the shortcut's counting pass
constexpr int ARGMAX_LOADS = 4; // 16-byte loads a thread has in flight in the argmax pass

// The cuts on y = (l - m) / T, the log of a token's probability relative to the top token's.
// Any values are correct (they only decide how often the shortcut applies); these cover the
// usual top-k (tens to hundreds) and top-p nuclei of trained models. The last one is special:
// below it every token weighs 0 (exp(-22.5) * 2^31 = 0.36 rounds to 0), so its tokens carry all
// the weight there is, and when fewer than k tokens pass it, the top-k set holds all of them
// (plus tokens that can never be drawn).
__device__ __forceinline__ float sample_cut(int j)
{
    return j == 0 ? -2.f : j == 1 ? -4.f : j == 2 ? -6.f : j == 3 ? -8.f
         : j == 4 ? -10.f : j == 5 ? -13.f : j == 6 ? -16.f : -22.5f;
}

// The splitmix64 finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mixer.
__device__ __forceinline__ u64 sample_mix64(u64 z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Counter-based uniform in [0, 1): the counter is added into the state (times the golden-ratio
// constant, so a zero counter still moves it) and mixed; the top 53 bits make the double.
//   h = mix(seed + G); h = mix(h + (index + 1) G); u = (h >> 11) / 2^53
// runtime/backend.c (kb_sample_cpu) is the CPU copy; the two must change together.
__device__ __forceinline__ double sample_uniform(u64 seed, u64 index)
{
    const u64 G = 0x9E3779B97F4A7C15ull;
    u64 h = sample_mix64(seed + G);
    h = sample_mix64(h + (index + 1) * G);
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

// y = (l - m) * inv_t, l cleaned, m the (finite) maximum: y <= 0, non-decreasing in l. The _rn
// intrinsics keep the compiler from contracting differently at different call sites, so every
// pass computes bit-identical values.
__device__ __forceinline__ float sample_rel(float l, float m, float inv_t)
{
    return __fmul_rn(__fsub_rn(l, m), inv_t);
}

// w = round(exp(y) * 2^31) in [0, 2^31].
__device__ __forceinline__ unsigned sample_weight(float y)
{
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

// The largest tau such that the tokens with key >= max(tau, floor_key) reach `target`, where
// part(lo) returns this thread's share (count or weight) of the tokens with key >= lo.
// Requires that the tokens with key >= floor_key reach the target; the answer is then >=
// floor_key and is the key of an actual token. 32 calls of part(), each one block reduction.
template <int THREADS, typename Part>
__device__ __forceinline__ unsigned sample_search(Part part, unsigned floor_key, u64 target,
                                                  u64 *scratch)
{
    unsigned tau = 0;
    for (int b = 31; b >= 0; b--) {
        const unsigned cand = tau | (1u << b);
        const unsigned lo = cand > floor_key ? cand : floor_key;
        if (block_sum_u64<THREADS>(part(lo), scratch) >= target) // the same in every thread
            tau = cand;
    }
    return tau > floor_key ? tau : floor_key;
}

// ceil(top_p * kept) clamped to [1, kept] (kept >= 2^31 here: the top token is always kept).
__device__ __forceinline__ u64 sample_top_p_target(float top_p, u64 kept)
{
    u64 target = (u64)ceil((double)fmaxf(top_p, 0.f) * (double)kept);
    if (target < 1)
        target = 1;
    if (target > kept)
        target = kept;
    return target;
}

// r = floor(u * total), clamped below total.
__device__ __forceinline__ u64 sample_point(const kiln_sample &p, u64 total)
{
    const double u = sample_uniform(p.seed, (u64)(unsigned)p.index);
    u64 r = (u64)(u * (double)total);
    return r < total ? r : total - 1;
}

} // namespace sample_detail

// sample: out_ids[s] for each sequence s of the step; logits [n_seqs, V] (float, row s for
// sequence s), params [n_seqs] (params[s].index is the RNG counter of sequence s).
// Grid (n_seqs) x THREADS, THREADS a multiple of 32 in [32, 1024] (1024 is fastest for large
// vocabularies). Any V >= 1. Static shared memory ~37 KB. PREFILTER = 0 turns the shortcut off
// (the tests use it to check that both paths agree).
template <int V, int THREADS, int PREFILTER = 1>
__device__ __forceinline__ void sample(const kiln_step st, const float *logits,
                                       const kiln_sample *params, int *out_ids)
{
    KILN_PDL_ENTER();
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
    __shared__ unsigned c_key[PREFILTER ? CAP : 1], c_w[PREFILTER ? CAP : 1];
    __shared__ int c_id[PREFILTER ? CAP : 1];

    const int s = blockIdx.x;
    if (s >= st.n_seqs)
        return;
    const float *row = logits + (long long)s * V;
    const kiln_sample p = params[s];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

    // 1. maximum and argmax, ties to the lowest index. A thread scans its tokens in increasing
    //    index (strict >), the merges prefer the lower index on equal values; a thread without
    //    tokens carries (-inf, INT_MAX), which loses every tie. So the answer does not depend on
    //    which thread reads which token: where rows are 16-byte aligned (V % 4 == 0), a thread
    //    reads 4 consecutive tokens a load, ARGMAX_LOADS loads in flight (one block reads the
    //    row: with one 4-byte load at a time it waited ~14 us on a 152k row's latency).
    float best = -INFINITY;
    int bi = 0x7fffffff;
    auto take = [&](float l, int i) {
        if (bi == 0x7fffffff || l > best) {
            best = l;
            bi = i;
        }
    };
    if constexpr (V % 4 == 0) {
        constexpr int V4 = V / 4;
        const float4 *row4 = reinterpret_cast<const float4 *>(row);
        for (int i0 = tid; i0 < V4; i0 += ARGMAX_LOADS * THREADS) {
            float4 q[ARGMAX_LOADS];
#pragma unroll
            for (int u = 0; u < ARGMAX_LOADS; u++)
                if (i0 + u * THREADS < V4)
                    q[u] = row4[i0 + u * THREADS];
#pragma unroll
            for (int u = 0; u < ARGMAX_LOADS; u++) {
                const int i = 4 * (i0 + u * THREADS);
                if (i < V) {
                    take(sample_clean(q[u].x), i);
                    take(sample_clean(q[u].y), i + 1);
                    take(sample_clean(q[u].z), i + 2);
                    take(sample_clean(q[u].w), i + 3);
                }
            }
        }
    } else {
        for (int i = tid; i < V; i += THREADS)
            take(sample_clean(row[i]), i);
    }
    warp_argmax(best, bi);
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < NW ? s_val[lane] : -INFINITY;
        bi = lane < NW ? s_idx[lane] : 0x7fffffff;
        warp_argmax(best, bi);
        if (lane == 0) {
            s_val[0] = best;
            s_choice = bi < V ? bi : 0;
        }
    }
    __syncthreads();
    const float m = s_val[0];
    const int argmax = s_choice; // s_choice keeps it until a draw replaces it

    // Greedy: temperature <= 0 or NaN, or no finite maximum (all -inf/NaN, or +inf present).
    const unsigned mb = __float_as_uint(m) & 0x7fffffffu;
    if (!(p.temperature > 0.f) || mb >= 0x7f800000u) {
        if (tid == 0)
            out_ids[s] = argmax;
        return;
    }
    const float inv_t = __frcp_rn(p.temperature);
    const bool use_k = p.top_k > 0 && p.top_k < V, use_p = p.top_p > 0.f && p.top_p < 1.f;

    // 2. the shortcut: candidates in shared memory (see the top of the file)
    if (PREFILTER && (use_k || use_p)) {
        unsigned cnt[NCUT];
        u64 mass[NCUT], all = 0;
#pragma unroll
        for (int j = 0; j < NCUT; j++) {
            cnt[j] = 0;
            mass[j] = 0;
        }
        if (use_k) { // top-k decides first: counts suffice
            for (int i = tid; i < V; i += THREADS) {
                const float y = sample_rel(sample_clean(row[i]), m, inv_t);
#pragma unroll
                for (int j = 0; j < NCUT; j++)
                    cnt[j] += y >= sample_cut(j) ? 1u : 0u;
            }
        } else {
            for (int i = tid; i < V; i += THREADS) {
                const float y = sample_rel(sample_clean(row[i]), m, inv_t);
                const unsigned w = sample_weight(y);
                all += w;
#pragma unroll
                for (int j = 0; j < NCUT; j++)
                    if (y >= sample_cut(j)) {
                        cnt[j]++;
                        mass[j] += w;
                    }
            }
            all = block_sum_u64<THREADS>(all, s_u64);
        }
        // the first cut that decides the answer (the same in every thread)
        const u64 target_all = use_k ? 0 : sample_top_p_target(p.top_p, all);
        int sel = -1;
        u64 nsel = 0;
        unsigned mine_n = 0;
#pragma unroll
        for (int j = 0; j < NCUT; j++) {
            const u64 n = block_sum_u64<THREADS>(cnt[j], s_u64);
            const u64 w = use_k ? 0 : block_sum_u64<THREADS>(mass[j], s_u64);
            // the last cut always decides top-k: if fewer than k tokens pass it, the top-k set
            // holds all of them and otherwise only tokens of weight 0
            if (sel < 0 && (use_k ? n >= (u64)p.top_k || j == NCUT - 1 : w >= target_all)) {
                sel = j;
                nsel = n;
                mine_n = cnt[j];
            }
        }
        if (sel >= 0 && nsel <= (u64)CAP) {
            // copy the tokens with y >= cut(sel) in thread-major order
            int pos = (int)block_excl_scan_u64<THREADS>(mine_n, s_u64, &s_total);
            const float cut = sample_cut(sel);
            for (int i = tid; i < V; i += THREADS) {
                const float l = sample_clean(row[i]);
                const float y = sample_rel(l, m, inv_t);
                if (y >= cut) {
                    c_key[pos] = sample_key(l);
                    c_w[pos] = sample_weight(y);
                    c_id[pos] = i;
                    pos++;
                }
            }
            __syncthreads();
            const int n = (int)nsel;
            unsigned thr = 0; // 0: every candidate (with fewer than k, all are in the top k)
            if (use_k && nsel >= (u64)p.top_k)
                thr = sample_search<THREADS>(
                    [&](unsigned lo) {
                        u64 a = 0;
                        for (int i = tid; i < n; i += THREADS)
                            a += c_key[i] >= lo ? 1u : 0u;
                        return a;
                    },
                    0u, (u64)p.top_k, s_u64);
            if (use_p) {
                u64 kept = all; // top-p alone: the whole row is kept so far
                if (use_k) {
                    u64 a = 0;
                    for (int i = tid; i < n; i += THREADS)
                        a += c_key[i] >= thr ? c_w[i] : 0u;
                    kept = block_sum_u64<THREADS>(a, s_u64);
                }
                thr = sample_search<THREADS>(
                    [&](unsigned lo) {
                        u64 a = 0;
                        for (int i = tid; i < n; i += THREADS)
                            a += c_key[i] >= lo ? c_w[i] : 0u;
                        return a;
                    },
                    thr, sample_top_p_target(p.top_p, kept), s_u64);
            }
            // draw: thread t takes the contiguous slice [t*per, (t+1)*per) of the candidates,
            // so slices in thread order are the candidates in array (= thread-major) order
            const int per = (n + THREADS - 1) / THREADS, lo = tid * per;
            const int hi = lo + per < n ? lo + per : n;
            u64 mine = 0;
            for (int i = lo; i < hi; i++)
                mine += c_key[i] >= thr ? c_w[i] : 0u;
            const u64 before = block_excl_scan_u64<THREADS>(mine, s_u64, &s_total);
            const u64 total = s_total; // >= 2^31: the top token is kept
            const u64 r = sample_point(p, total);
            if (mine > 0 && r >= before && r - before < mine) {
                u64 acc = before;
                for (int i = lo; i < hi; i++)
                    if (c_key[i] >= thr) {
                        acc += c_w[i];
                        if (acc > r) {
                            s_choice = c_id[i];
                            break;
                        }
                    }
            }
            __syncthreads();
            if (tid == 0)
                out_ids[s] = s_choice;
            return;
        }
    }

    // 3. the full-row path: thresholds by 32 passes each over the row
    auto part = [&](unsigned lo, bool count) {
        u64 a = 0;
        for (int i = tid; i < V; i += THREADS) {
            const float l = sample_clean(row[i]);
            if (sample_key(l) >= lo)
                a += count ? 1u : sample_weight(sample_rel(l, m, inv_t));
        }
        return a;
    };
    unsigned thr = 0;
    if (use_k)
        thr = sample_search<THREADS>([&](unsigned lo) { return part(lo, true); }, 0u,
                                     (u64)p.top_k, s_u64);
    if (use_p) {
        const u64 kept = block_sum_u64<THREADS>(part(thr, false), s_u64);
        thr = sample_search<THREADS>([&](unsigned lo) { return part(lo, false); }, thr,
                                     sample_top_p_target(p.top_p, kept), s_u64);
    }

    // 4. draw: this thread's kept weight, the exclusive prefix over threads, and the thread
    //    whose interval holds r finds the token among its own (same order, same weights).
    const u64 mine = part(thr, false);
    const u64 before = block_excl_scan_u64<THREADS>(mine, s_u64, &s_total);
    const u64 total = s_total;
    // s_choice still holds the argmax: the answer if total were 0 (cannot happen: the top
    // token weighs 2^31) or if no thread matched (cannot happen: the intervals tile [0, total)).
    if (total > 0) {
        const u64 r = sample_point(p, total);
        if (mine > 0 && r >= before && r - before < mine) {
            u64 acc = before;
            for (int i = tid; i < V; i += THREADS) {
                const float l = sample_clean(row[i]);
                if (sample_key(l) >= thr) {
                    acc += sample_weight(sample_rel(l, m, inv_t));
                    if (acc > r) {
                        s_choice = i;
                        break;
                    }
                }
            }
        }
    }
    __syncthreads();
    if (tid == 0)
        out_ids[s] = s_choice;
}

} // namespace kiln
