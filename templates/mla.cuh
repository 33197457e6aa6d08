// mla.cuh — multi-head latent attention (DeepSeek-V2) over a compressed paged KV cache (see
// templates/README.md and compiler/graph.h's kg_mla).
//
// The cache of an MLA layer holds, per token, only the normalised latent c (RANK) and the shared
// rotated key k_pe (DR): rows of RANK + DR elements, [blocks][KILN_BLOCK][RANK + DR], addressed
// with kiln::kv_row as the ordinary K and V caches. There is no separate V cache: the values are
// made from the same latents.
//
// Two kernels:
//   mla_cache  writes [c | k_pe] of every token of the step into its cache row (tok_slot[t];
//              a token with tok_slot < 0 writes nothing), rotating k_pe first when ROT != 0.
//   mla_attn   one CTA per (query row, head), in the absorbed form: with W_k[h] the DN rows of
//              kv_b for head h's nope key and W_v[h] the DV rows of its value ([NH*(DN+DV), RANK],
//              per head [key rows | value rows], kv_b_proj as stored),
//                  q_lat = W_k[h]^T q_nope                (RANK floats, in shared memory)
//                  s_j   = (q_lat . c_j + q_pe . k_pe_j) * scale,   j in [0, min(p, kvlen-1)]
//                  o_lat = sum_j softmax(s)_j c_j          (online softmax, one pass per warp)
//                  out   = W_v[h] o_lat                    (DV outputs)
//              which equals compiler/ref.c's op_mla (keys W_k[h] c_j ; k_pe_j and values
//              W_v[h] c_j, expanded) up to rounding: q_nope . (W_k c) = (W_k^T q_nope) . c.
//              Causal only (DeepSeek's decoders). Query row t is sequence tok_seq[t] at position
//              tok_pos[t]; q_nope and q_pe are read at row strides and head strides of their own
//              (separate buffers, or the [nope | pe] heads of one q projection).
//
// Rotation (ROT): 0, q_pe and k_pe arrive rotated; 1, rotate pairs (2i, 2i+1) (DeepSeek's
// interleaved layout), 2, pairs (i, i + DR/2), each on the DR dims of q_pe's heads (in mla_attn)
// and of k_pe (in mla_cache), as rope_kv does (templates/elementwise.cuh): angle =
// pos * inv_freq[i] rounded to float, cos and sin in double rounded to float, times rope_scale
// (yarn's attention factor). inv_freq [DR / 2] is a static table: no dynamic NTK, no longrope.
//
// What this file does not do: it is the correctness-first form (CUDA cores, float math, each CTA
// reads its head's kv_b rows and every key of its sequence); no tensor cores, no split over the
// keys for long decodes, no sharing of the absorbed query between heads. Math is in float; the
// cache and the outputs are DT.
#pragma once

#include "common.cuh"

namespace kiln {

// cos and sin of position pos for the DR/2 frequencies, times rope_scale, into cs and sn.
template <int DR, int THREADS>
__device__ __forceinline__ void mla_rope_table(int pos, const float *inv_freq, float rope_scale,
                                               float *cs, float *sn)
{
    for (int i = threadIdx.x; i < DR / 2; i += THREADS) {
        const float ang = (float)pos * inv_freq[i]; // rounded to float, as the reference does
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        cs[i] = (float)cd * rope_scale;
        sn[i] = (float)sd * rope_scale;
    }
}

// x [DR] in shared memory rotated in place (ROT 1: pairs (2i, 2i+1); 2: (i, i + DR/2)); call
// with every thread between barriers.
template <int DR, int ROT, int THREADS>
__device__ __forceinline__ void mla_rotate(float *x, const float *cs, const float *sn)
{
    for (int i = threadIdx.x; i < DR / 2; i += THREADS) {
        const int a = ROT == 1 ? 2 * i : i, b = ROT == 1 ? 2 * i + 1 : i + DR / 2;
        const float xa = x[a], xb = x[b];
        x[a] = xa * cs[i] - xb * sn[i];
        x[b] = xb * cs[i] + xa * sn[i];
    }
}

// Grid (T) x THREADS. latent rows at latent + t*latent_stride (RANK elements), k_pe rows at
// k_pe + t*kpe_stride (DR elements); cache rows of RANK + DR.
template <typename DT, int RANK, int DR, int ROT, int THREADS>
__device__ __forceinline__ void mla_cache(const kiln_step st, const DT *latent, const DT *k_pe,
                                          int latent_stride, int kpe_stride, DT *cache,
                                          const float *inv_freq, float rope_scale)
{
    KILN_PDL_ENTER();
    static_assert(ROT >= 0 && ROT <= 2 && DR >= 2 && DR % 2 == 0, "ROT 0, 1 or 2; DR even");
    __shared__ float kp[DR], cs[DR / 2], sn[DR / 2];
    const int t = blockIdx.x;
    if (t >= st.T)
        return;
    const int slot = st.tok_slot[t];
    if (slot < 0)
        return;
    DT *row = cache + (long long)slot * (RANK + DR);
    const DT *c = latent + (long long)t * latent_stride, *k = k_pe + (long long)t * kpe_stride;
    for (int i = threadIdx.x; i < RANK; i += THREADS)
        row[i] = c[i];
    for (int i = threadIdx.x; i < DR; i += THREADS)
        kp[i] = to_f(k[i]);
    if (ROT) {
        mla_rope_table<DR, THREADS>(st.tok_pos[t], inv_freq, rope_scale, cs, sn);
        __syncthreads();
        mla_rotate<DR, ROT, THREADS>(kp, cs, sn);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < DR; i += THREADS)
        row[RANK + i] = from_f<DT>(kp[i]);
}

// Grid (T, NH) x THREADS (whole warps; the static shared memory, about 4 * RANK * (THREADS / 32 +
// 2) bytes, must stay under 48 KB: 256 threads for a 512 latent). q_nope row t head h at
// q_nope + t*qn_row + h*qn_head (DN elements); q_pe likewise (DR); out [T, NH*DV].
template <typename DT, int NH, int DN, int DR, int DV, int RANK, int ROT, int THREADS>
__device__ __forceinline__ void mla_attn(const kiln_step st, const DT *q_nope, const DT *q_pe,
                                         int qn_row, int qn_head, int qp_row, int qp_head,
                                         const DT *cache, const DT *kv_b, DT *out, float scale,
                                         const float *inv_freq, float rope_scale)
{
    KILN_PDL_ENTER();
    static_assert(THREADS % 32 == 0 && THREADS <= 1024, "THREADS: whole warps, at most 1024");
    constexpr int NW = THREADS / 32;
    constexpr int RPL = (RANK + 31) / 32; // latent elements per lane
    constexpr int ROW = RANK + DR;        // cache row
    __shared__ float qn[DN], qp[DR], q_lat[RANK], o_lat[RANK];
    __shared__ float w_m[NW], w_l[NW], w_acc[NW][RANK], cs[DR / 2], sn[DR / 2];
    static_assert(ROT >= 0 && ROT <= 2 && DR >= 2 && DR % 2 == 0, "ROT 0, 1 or 2; DR even");
    const int t = blockIdx.x, h = blockIdx.y;
    if (t >= st.T)
        return;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int s = st.tok_seq[t], p = st.tok_pos[t];
    const int hi = min(p, st.seq_kvlen[s] - 1);
    const DT *wk = kv_b + (long long)h * (DN + DV) * RANK; // W_k[h]: DN rows of RANK
    const DT *wv = wk + (long long)DN * RANK;              // W_v[h]: DV rows of RANK

    for (int i = threadIdx.x; i < DN; i += THREADS)
        qn[i] = to_f(q_nope[(long long)t * qn_row + (long long)h * qn_head + i]);
    for (int i = threadIdx.x; i < DR; i += THREADS)
        qp[i] = to_f(q_pe[(long long)t * qp_row + (long long)h * qp_head + i]);
    if (ROT) {
        mla_rope_table<DR, THREADS>(p, inv_freq, rope_scale, cs, sn);
        __syncthreads();
        mla_rotate<DR, ROT, THREADS>(qp, cs, sn);
    }
    __syncthreads();
    // q_lat[r] = sum_d q_nope[d] W_k[h][d][r]: threads over r read rows of W_k coalesced
    for (int r = threadIdx.x; r < RANK; r += THREADS) {
        float a = 0.f;
        for (int d = 0; d < DN; d++)
            a += qn[d] * to_f(wk[(long long)d * RANK + r]);
        q_lat[r] = a;
    }
    __syncthreads();

    // each warp takes keys warp, warp + NW, ...: an online softmax of its own
    float m = -INFINITY, l = 0.f, acc[RPL];
#pragma unroll
    for (int i = 0; i < RPL; i++)
        acc[i] = 0.f;
    for (int j = warp; j <= hi; j += NW) {
        const DT *row = kv_row(cache, st, s, j, ROW);
        float c[RPL], part = 0.f;
#pragma unroll
        for (int i = 0; i < RPL; i++) {
            const int r = lane + 32 * i;
            c[i] = r < RANK ? to_f(row[r]) : 0.f;
            part += r < RANK ? q_lat[r] * c[i] : 0.f;
        }
        for (int e = lane; e < DR; e += 32)
            part += qp[e] * to_f(row[RANK + e]);
        const float x = warp_sum(part) * scale;
        const float mn = fmaxf(m, x), corr = __expf(m - mn), pj = __expf(x - mn);
        l = l * corr + pj;
#pragma unroll
        for (int i = 0; i < RPL; i++)
            acc[i] = acc[i] * corr + pj * c[i];
        m = mn;
    }
    if (lane == 0) {
        w_m[warp] = m;
        w_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < RPL; i++)
        if (lane + 32 * i < RANK)
            w_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    // merge the warps (key 0 is always seen, so the overall max is finite; a warp without keys
    // has m = -inf and weighs exp(-inf) = 0)
    float M = -INFINITY;
    for (int w = 0; w < NW; w++)
        M = fmaxf(M, w_m[w]);
    float L = 0.f;
    for (int w = 0; w < NW; w++)
        L += w_l[w] * __expf(w_m[w] - M);
    for (int r = threadIdx.x; r < RANK; r += THREADS) {
        float o = 0.f;
        for (int w = 0; w < NW; w++)
            o += w_acc[w][r] * __expf(w_m[w] - M);
        o_lat[r] = o / L;
    }
    __syncthreads();
    // out[d] = W_v[h][d] . o_lat: a warp per output, lanes over the latent
    for (int d = warp; d < DV; d += NW) {
        float part = 0.f;
        for (int r = lane; r < RANK; r += 32)
            part += to_f(wv[(long long)d * RANK + r]) * o_lat[r];
        part = warp_sum(part);
        if (lane == 0)
            out[(long long)t * NH * DV + h * DV + d] = from_f<DT>(part);
    }
}

} // namespace kiln
