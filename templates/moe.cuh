// moe.cuh — sparse mixture-of-experts blocks (Mixtral, Qwen2-MoE), the semantics of op_moe and
// expert() in compiler/ref.c, as four kernels run in order:
//
//   moe_route       logits = x · router^T (float), softmax over the E experts (float), top-k by
//                   probability (ties to the LOWER expert index, chosen in descending order, as
//                   the reference), weights = probability (/ sum of the k chosen when RENORM)
//   moe_route_sparsemixer  (Phi-3.5-MoE's routing, instead of moe_route; TOPK = 2) logits as
//                   moe_route, then two rounds: the largest logit m among the experts not yet
//                   chosen (ties to the lower index), weight 1 / sum of exp(s_e - m) over the experts
//                   e not chosen before with (m - s_e) / max(|s_e|, m) <= 2 * jitter_eps (float,
//                   IEEE division, as torch); weights not renormalised (kg_moe_routing, graph.h)
//   moe_gate_up     hbuf[t, k, :] = act(gate_e · x_t) * (up_e · x_t), e = idx[t, k], rounded to DT
//   moe_down        out[t, :] = sum_k wts[t, k] * (down_e · hbuf[t, k]) (+ add[t, :]): float
//                   accumulation in a fixed order (k = 0, 1, ...), one rounding, no atomics:
//                   deterministic, bit for bit, run to run
//   moe_shared_gate out[t, :] = sigmoid(x_t · gate_w) * y[t, :] (Qwen2-MoE's gated shared expert;
//                   the shared expert itself is an ordinary gated MLP: gemv / GEMM, and its
//                   output can be folded into moe_down through `add`)
//
// Weight layouts (per expert e, stacked): router [E, H]; gate_up [E, 2I, H], rows 0..I-1 of an
// expert are gate, rows I..2I-1 up; down [E, H, I]. Activations are row-major [T, H];
// idx [T, TOPK] int, wts [T, TOPK] float, hbuf [T, TOPK, I] DT.
//
// Launch rules (WARPS = THREADS / 32; THREADS a multiple of 32; no dynamic shared memory):
//   moe_route       grid (T),                                    block THREADS
//   moe_route_sparsemixer  as moe_route
//   moe_gate_up     grid (T * TOPK, ceil(I / (2 * WARPS))),      block THREADS
//   moe_down        grid (T, ceil(H / (4 * WARPS))),             block THREADS
//   moe_shared_gate grid (T),                                    block THREADS
// Preconditions: H % 8 == 0 and I % 8 == 0 (static_assert); pointers 16-byte aligned;
// idx holds valid expert indices (moe_route's output: not checked).
//
// The expert matmuls use the gemv machinery (gemv.cuh: a warp streams 4 weight rows with
// 16-byte loads, lanes striding K in 8-element chunks). They work per (token, k) pair: each
// pair reads its expert's rows, so an expert chosen by several tokens of the step has its
// rows read once per token. At decode (T * TOPK pairs spread over E experts, one or two per
// expert) that costs little, and because pairs with the same row tile run side by side
// (blockIdx.x fastest) repeats mostly hit L2. Prefill-sized T (hundreds of tokens) is correct
// but slow: it is L2-bandwidth bound at about (tokens per expert) times the weight bytes. A
// grouped-by-expert GEMM for prefill is future work.
#pragma once

#include "common.cuh"
#include "gemv.cuh"

namespace kiln {

// -infinity (NVRTC has no math.h, hence no INFINITY macro).
__device__ __forceinline__ float moe_neg_inf() { return __int_as_float(0xff800000u); }

// Router logits of token row xt into logit[E] (shared): a warp per expert, lanes striding H in
// 8-element chunks; ends with __syncthreads().
template <typename DT, int E, int H, int THREADS>
__device__ __forceinline__ void moe_router_logits(const DT *xt, const DT *router, float *logit)
{
    constexpr int WARPS = THREADS / 32;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    for (int e = warp; e < E; e += WARPS) {
        const DT *re = router + (long long)e * H;
        float acc = 0.f;
        for (int c = lane; c < H / 8; c += 32) {
            float a[8], b[8];
            load8(xt + c * 8, a);
            load8(re + c * 8, b);
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc = fmaf(a[i], b[i], acc);
        }
        acc = warp_sum(acc);
        if (lane == 0)
            logit[e] = acc;
    }
    __syncthreads();
}

template <typename DT, int E, int H, int TOPK, bool RENORM, int THREADS>
__device__ __forceinline__ void moe_route(const kiln_step st, const DT *x, const DT *router,
                                          int *idx, float *wts)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0, "moe_route: H must be a multiple of 8");
    static_assert(E >= 1 && E <= 1024, "moe_route: E is 1..1024");
    static_assert(TOPK >= 1 && TOPK <= E && TOPK <= 32, "moe_route: TOPK is 1..min(E, 32)");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "moe_route: THREADS must be a multiple of 32");
    constexpr int EPL = (E + 31) / 32; // experts per lane in the selection (lane + 32 * i)
    __shared__ float logit[E];
    const int t = blockIdx.x;
    if (t >= st.T)
        return; // whole block
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    moe_router_logits<DT, E, H, THREADS>(x + (long long)t * H, router, logit);
    if (warp != 0)
        return;

    // Softmax over E in warp 0; lane l holds experts l, l + 32, ...
    float p[EPL];
    float mx = moe_neg_inf();
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        p[i] = e < E ? logit[e] : moe_neg_inf();
        mx = fmaxf(mx, p[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        p[i] = e < E ? __expf(p[i] - mx) : 0.f;
        sum += p[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < EPL; i++) {
        const int e = lane + 32 * i;
        // -inf marks "not selectable": past E now, already chosen later. Every real
        // probability is >= 0, so it always wins over a mark.
        p[i] = e < E ? p[i] / sum : moe_neg_inf();
    }

    // Top-k: TOPK rounds of a warp argmax under the total order (prob desc, index asc), the
    // reference's rule (strict > over increasing e). Every lane ends each round with the same
    // winner, since the butterfly compares with a total order.
    int ce[TOPK];
    float cp[TOPK];
    float ksum = 0.f;
#pragma unroll
    for (int k = 0; k < TOPK; k++) {
        float bp = moe_neg_inf();
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            if (p[i] > bp) { // this lane's experts are in increasing order: keeps the lowest
                bp = p[i];
                be = lane + 32 * i;
            }
        }
        warp_argmax(bp, be);
#pragma unroll
        for (int i = 0; i < EPL; i++)
            if (lane + 32 * i == be)
                p[i] = moe_neg_inf();
        if (be >= E)
            be = E - 1; // only with NaN probabilities (NaN inputs): keep the index in range
        ce[k] = be;
        cp[k] = bp;
        ksum += bp;
    }
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < TOPK; k++) {
            idx[(long long)t * TOPK + k] = ce[k];
            wts[(long long)t * TOPK + k] = RENORM ? cp[k] / ksum : cp[k];
        }
    }
}

// sparsemixer (see the top of the file). Warp 0 decides; lane l holds experts l, l + 32, ...
// Writes idx[t, 0..1] and wts[t, 0..1].
template <typename DT, int E, int H, int THREADS>
__device__ __forceinline__ void moe_route_sparsemixer(const kiln_step st, const DT *x,
                                                      const DT *router, int *idx, float *wts,
                                                      float jitter_eps)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0, "moe_route_sparsemixer: H must be a multiple of 8");
    static_assert(E >= 2 && E <= 1024, "moe_route_sparsemixer: E is 2..1024");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "moe_route_sparsemixer: THREADS must be a multiple of 32");
    constexpr int EPL = (E + 31) / 32;
    __shared__ float logit[E];
    const int t = blockIdx.x;
    if (t >= st.T)
        return; // whole block
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    moe_router_logits<DT, E, H, THREADS>(x + (long long)t * H, router, logit);
    if (warp != 0)
        return;
    const float thr = 2.f * jitter_eps;
    int first = -1;
#pragma unroll
    for (int k = 0; k < 2; k++) {
        // argmax of the experts not chosen, under (logit desc, index asc)
        float bv = moe_neg_inf();
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            const int e = lane + 32 * i;
            if (e < E && e != first && logit[e] > bv) {
                bv = logit[e];
                be = e;
            }
        }
        warp_argmax(bv, be);
        if (be >= E)
            be = first == 0 ? 1 : 0; // only with NaN logits (NaN inputs): keep the index in range
        // the softmax of the unmasked experts, read at the chosen one (whose term is exp(0) = 1)
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            const int e = lane + 32 * i;
            if (e >= E || e == first)
                continue;
            const float s = logit[e];
            if (__fdiv_rn(bv - s, fmaxf(fabsf(s), bv)) > thr)
                continue;
            sum += __expf(s - bv);
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            idx[(long long)t * 2 + k] = be;
            wts[(long long)t * 2 + k] = 1.f / sum;
        }
        first = be;
    }
}

template <typename DT, int E, int H, int I, int TOPK, int ACT, int THREADS>
__device__ __forceinline__ void moe_gate_up(const kiln_step st, const DT *x, const int *idx,
                                            const DT *gate_up, DT *hbuf)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0 && I % 8 == 0, "moe_gate_up: H and I must be multiples of 8");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "moe_gate_up: THREADS must be a multiple of 32");
    constexpr int WARPS = THREADS / 32;
    constexpr int OPW = 2; // outputs per warp: rows j, j+1 of gate and of up
    const long long pair = blockIdx.x; // t * TOPK + k
    if (pair >= (long long)st.T * TOPK)
        return;
    const long long t = pair / TOPK;
    const int j0 = (blockIdx.y * WARPS + threadIdx.x / 32) * OPW;
    if (j0 >= I)
        return; // whole warp, no barrier follows
    const int lane = threadIdx.x & 31;
    const int e = idx[pair];
    const DT *we = gate_up + (long long)e * 2 * I * H;

    const DT *wp[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int j = j0 + (r % OPW);
        if (j > I - 1)
            j = I - 1; // past the end: read a valid row, store nothing
        wp[r] = we + (long long)(r < OPW ? j : I + j) * H;
    }
    const DT *xp[1] = {x + t * H};
    float acc[4][1] = {{0.f}, {0.f}, {0.f}, {0.f}};
    gemv_detail::lane_dots<DT, H, 4, 1>(wp, xp, 1, acc);
#pragma unroll
    for (int r = 0; r < 4; r++)
        acc[r][0] = warp_sum(acc[r][0]);
#pragma unroll
    for (int q = 0; q < OPW; q++)
        if (lane == q && j0 + q < I)
            hbuf[pair * I + j0 + q] = from_f<DT>(act<ACT>(acc[q][0]) * acc[OPW + q][0]);
}

template <typename DT, int E, int H, int I, int TOPK, int THREADS>
__device__ __forceinline__ void moe_down(const kiln_step st, const DT *hbuf, const int *idx,
                                         const float *wts, const DT *down, DT *out, const DT *add)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0 && I % 8 == 0, "moe_down: H and I must be multiples of 8");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "moe_down: THREADS must be a multiple of 32");
    constexpr int WARPS = THREADS / 32;
    constexpr int NR = 4; // output rows per warp
    const long long t = blockIdx.x;
    if (t >= st.T)
        return;
    const int n0 = (blockIdx.y * WARPS + threadIdx.x / 32) * NR;
    if (n0 >= H)
        return; // whole warp, no barrier follows
    const int lane = threadIdx.x & 31;

    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++)
        acc[r] = 0.f;
    // Fixed order over k: the same result every run.
#pragma unroll 1
    for (int k = 0; k < TOPK; k++) {
        const long long pair = t * TOPK + k;
        const int e = idx[pair];
        const float wk = wts[pair];
        const DT *wp[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const int n = n0 + r < H ? n0 + r : H - 1;
            wp[r] = down + ((long long)e * H + n) * I;
        }
        const DT *xp[1] = {hbuf + pair * I};
        float part[NR][1] = {};
        gemv_detail::lane_dots<DT, I, NR, 1>(wp, xp, 1, part);
#pragma unroll
        for (int r = 0; r < NR; r++)
            acc[r] = fmaf(wk, part[r][0], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        float v = warp_sum(acc[r]);
        const int n = n0 + r;
        if (lane == r && n < H) {
            if (add)
                v += to_f(add[t * H + n]); // read before the write: add may alias out
            out[t * H + n] = from_f<DT>(v);
        }
    }
}

template <typename DT, int H, int THREADS>
__device__ __forceinline__ void moe_shared_gate(const kiln_step st, const DT *x, const DT *gate_w,
                                                const DT *y, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0, "moe_shared_gate: H must be a multiple of 8");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "moe_shared_gate: THREADS must be a multiple of 32");
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    if (t >= st.T)
        return; // whole block
    const DT *xt = x + t * H;
    float acc = 0.f;
    for (int c = threadIdx.x; c < H / 8; c += THREADS) {
        float a[8], b[8];
        load8(xt + c * 8, a);
        load8(gate_w + c * 8, b);
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc = fmaf(a[i], b[i], acc);
    }
    const float s = block_sum<THREADS>(acc, scratch);
    const float g = 1.f / (1.f + __expf(-s));
    // Each thread reads then writes its own chunks: out may alias y.
    for (int c = threadIdx.x; c < H / 8; c += THREADS) {
        float v[8];
        load8(y + t * H + c * 8, v);
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] *= g;
        store8(out + t * H + c * 8, v);
    }
}

} // namespace kiln
