/* engine — see engine.h. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "hash.h"
#include "kcuda.h"
#include "safetensors.h"

#define ALIGN 256
#define STAGE (64u << 20) /* pinned staging buffer for weight uploads */
#define MAX_BUCKETS 16

struct kmodel {
    kcuda cu;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int cc_major, cc_minor;
    char devname[256];
    char desc[768];
    double load_s;

    ka_file *af;
    ka_manifest *m;
    CUmodule mod;
    CUfunction *fn;
    st_set *shard;
    hash_job *shard_job; /* hashing the mapped shard while it is uploaded */
    int esize;

    CUdeviceptr warena, consts, slab, scratch, logits, logits_all, out, meta, kv;
    size_t *woff, *coff;
    size_t logits_all_rows;
    size_t *kv_k, *kv_v; /* per layer offsets into kv */
    int nblocks, max_blocks, *free_blk, nfree;

    /* the step arrays: device (inside meta) and a pinned host mirror */
    int cap_tok, cap_seq;
    int32_t *h_meta;
    size_t o_ids, o_pos, o_type, o_seq, o_slot, o_start, o_kvlen, o_bt, meta_bytes;
    kiln_step st;

    CUdeviceptr d_params, d_ids;
    kiln_sample *h_params;
    int32_t *h_ids;
    kgemm *gemm;
    CUgraphExec graphs[MAX_BUCKETS];
    int graphs_failed;
    km_opts o;
};

const ka_manifest *km_manifest(const kmodel *m) { return m->m; }
const char *km_describe(const kmodel *m) { return m->desc; }
double km_load_seconds(const kmodel *m) { return m->load_s; }

#define CU(call)                                                                                \
    do {                                                                                        \
        CUresult rc_ = m->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS)                                                                \
            return kcuda_fail(&m->cu, rc_, #call, __FILE__, __LINE__, err);                     \
    } while (0)

static size_t align_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---------------------------------------------------------------- loading */

static int pick_code(kmodel *m, const ka_blob **code, int *is_ptx, kerr *err)
{
    const ka_manifest *man = m->m;
    char want[32];
    *code = NULL;
    *is_ptx = 0;
    if (m->cc_major == 9 && m->cc_minor == 0) { /* Hopper: the arch-specific cubin first */
        *code = ka_find_blob(man, "cubin.sm_90a");
    }
    if (!*code) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", m->cc_major, m->cc_minor);
        *code = ka_find_blob(man, want);
    }
    /* a cubin for an older minor of the same major runs too ("a" cubins only on their own) */
    for (int minor = m->cc_minor - 1; !*code && minor >= 0; minor--) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", m->cc_major, minor);
        *code = ka_find_blob(man, want);
    }
    if (*code)
        return 0;
    char have[256] = "";
    size_t hl = 0;
    for (int i = 0; i < man->nblobs; i++)
        if (!strncmp(man->blobs[i].name, "cubin.", 6))
            hl += (size_t)snprintf(have + hl, sizeof have - hl, "%s%s", hl ? ", " : "",
                                   man->blobs[i].name + 6);
    for (int i = 0; i < man->nblobs; i++) {
        const ka_blob *b = &man->blobs[i];
        int v;
        if (sscanf(b->name, "ptx.compute_%d", &v) == 1 && v <= m->cc_major * 10 + m->cc_minor) {
            *code = b;
            *is_ptx = 1;
            if (!m->o.quiet)
                fprintf(stderr,
                        "kiln: note: this artifact has no cubin for sm_%d%d (it has %s); "
                        "JIT-compiling its PTX (%s) instead, which slows the start. Rebuild with "
                        "kilnc compile --sm %d%d for a native cubin.\n",
                        m->cc_major, m->cc_minor, have[0] ? have : "none", b->name + 4,
                        m->cc_major, m->cc_minor);
            return 0;
        }
    }
    return kerr_add(err,
                    "%s: no code for this GPU (%s, sm_%d%d): the artifact has cubins for %s and "
                    "no usable PTX. Rebuild it: kilnc compile MODEL_DIR -o OUT --sm %d%d",
                    m->af->path, m->devname, m->cc_major, m->cc_minor, have[0] ? have : "nothing",
                    m->cc_major, m->cc_minor);
}

/* Weights into one arena, through two pinned staging buffers so the copy out of the mapped
 * file overlaps the previous DMA. */
static int upload_weights(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    size_t total = 0;
    m->woff = xcalloc((size_t)(man->nweights ? man->nweights : 1), sizeof(size_t));
    for (int i = 0; i < man->nweights; i++) {
        m->woff[i] = total;
        total += align_up((size_t)man->weights[i].nbytes);
    }
    CU(cuMemAlloc(&m->warena, total ? total : ALIGN));
    void *stage[2];
    CUevent ev[2];
    CU(cuMemAllocHost(&stage[0], STAGE));
    CU(cuMemAllocHost(&stage[1], STAGE));
    CU(cuEventCreate(&ev[0], CU_EVENT_DISABLE_TIMING));
    CU(cuEventCreate(&ev[1], CU_EVENT_DISABLE_TIMING));
    int b = 0, used[2] = {0, 0};
    for (int i = 0; i < man->nweights; i++) {
        const st_tensor *t = st_find(m->shard, man->weights[i].name);
        const unsigned char *src = t->data;
        size_t left = t->nbytes, at = 0;
        while (left) {
            size_t n = left < STAGE ? left : STAGE;
            if (used[b])
                CU(cuEventSynchronize(ev[b]));
            memcpy(stage[b], src + at, n);
            CU(cuMemcpyHtoDAsync(m->warena + m->woff[i] + at, stage[b], n, m->stream));
            CU(cuEventRecord(ev[b], m->stream));
            used[b] = 1;
            b ^= 1;
            at += n;
            left -= n;
        }
    }
    CU(cuStreamSynchronize(m->stream));
    m->cu.cuEventDestroy(ev[0]);
    m->cu.cuEventDestroy(ev[1]);
    m->cu.cuMemFreeHost(stage[0]);
    m->cu.cuMemFreeHost(stage[1]);
    return 0;
}

static int alloc_runtime(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    /* constant tables */
    size_t ct = 0;
    m->coff = xcalloc((size_t)(man->nconsts ? man->nconsts : 1), sizeof(size_t));
    for (int i = 0; i < man->nconsts; i++) {
        m->coff[i] = ct;
        ct += align_up(sizeof(float) * (size_t)man->consts[i].n);
    }
    CU(cuMemAlloc(&m->consts, ct ? ct : ALIGN));
    for (int i = 0; i < man->nconsts; i++)
        if (man->consts[i].n)
            CU(cuMemcpyHtoD(m->consts + m->coff[i], man->consts[i].v,
                            sizeof(float) * (size_t)man->consts[i].n));
    CU(cuMemAlloc(&m->slab, man->slab_bytes ? (size_t)man->slab_bytes : ALIGN));
    CU(cuMemAlloc(&m->scratch, man->scratch_bytes ? (size_t)man->scratch_bytes : ALIGN));
    size_t V = (size_t)(man->vocab > 0 ? man->vocab : 1);
    CU(cuMemAlloc(&m->logits, sizeof(float) * V * (size_t)man->max_seqs));
    CU(cuMemAlloc(&m->out, sizeof(float) * (size_t)man->hidden * (size_t)man->max_seqs));
    /* step arrays */
    m->cap_tok = man->max_tokens > man->max_seqs ? man->max_tokens : man->max_seqs;
    m->cap_seq = man->max_seqs;
    m->max_blocks = (man->max_seq_len + KILN_BLOCK - 1) / KILN_BLOCK;
    size_t o = 0;
#define SLOT(field, n) (m->field = o, o += align_up(sizeof(int32_t) * (size_t)(n)))
    SLOT(o_ids, m->cap_tok);
    SLOT(o_pos, m->cap_tok);
    SLOT(o_type, m->cap_tok);
    SLOT(o_seq, m->cap_tok);
    SLOT(o_slot, m->cap_tok);
    SLOT(o_start, m->cap_seq + 1);
    SLOT(o_kvlen, m->cap_seq);
    SLOT(o_bt, (size_t)m->cap_seq * (size_t)m->max_blocks);
#undef SLOT
    m->meta_bytes = o;
    CU(cuMemAlloc(&m->meta, o));
    CU(cuMemsetD8(m->meta, 0, o));
    CU(cuMemAllocHost((void **)&m->h_meta, o));
    memset(m->h_meta, 0, o);
    m->st.max_blocks = m->max_blocks;
    m->st.tok_ids = m->meta + m->o_ids;
    m->st.tok_pos = m->meta + m->o_pos;
    m->st.tok_type = m->meta + m->o_type;
    m->st.tok_seq = m->meta + m->o_seq;
    m->st.tok_slot = m->meta + m->o_slot;
    m->st.seq_start = m->meta + m->o_start;
    m->st.seq_kvlen = m->meta + m->o_kvlen;
    m->st.block_table = m->meta + m->o_bt;
    CU(cuMemAlloc(&m->d_params, sizeof(kiln_sample) * (size_t)m->cap_seq));
    CU(cuMemAlloc(&m->d_ids, sizeof(int32_t) * (size_t)m->cap_seq));
    CU(cuMemAllocHost((void **)&m->h_params, sizeof(kiln_sample) * (size_t)m->cap_seq));
    CU(cuMemAllocHost((void **)&m->h_ids, sizeof(int32_t) * (size_t)m->cap_seq));

    /* the paged KV cache: what free memory allows, up to what the limits can use */
    size_t per_block = 0;
    m->kv_k = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    m->kv_v = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    for (int l = 0; l < man->n_layers; l++)
        per_block += 2 * (size_t)KILN_BLOCK * (size_t)man->layers[l].n_kv *
                     (size_t)man->layers[l].head_dim * (size_t)m->esize;
    if (man->n_layers) {
        size_t fr = 0, tot = 0;
        CU(cuMemGetInfo(&fr, &tot));
        long need = (long)man->max_seqs * m->max_blocks + 1;
        long fit = (long)((double)fr * m->o.kv_memory / (double)per_block);
        m->nblocks = (int)(fit < need ? fit : need);
        if (m->nblocks < 2)
            return kerr_add(err, "not enough GPU memory for the KV cache (%zu MiB free after the "
                                 "weights; one block of %d tokens needs %zu KiB): use a smaller "
                                 "model or raise --kv-memory",
                            fr >> 20, KILN_BLOCK, per_block >> 10);
        size_t o2 = 0;
        for (int l = 0; l < man->n_layers; l++) {
            size_t bytes = (size_t)m->nblocks * KILN_BLOCK * (size_t)man->layers[l].n_kv *
                           (size_t)man->layers[l].head_dim * (size_t)m->esize;
            m->kv_k[l] = o2;
            o2 += align_up(bytes);
            m->kv_v[l] = o2;
            o2 += align_up(bytes);
        }
        CU(cuMemAlloc(&m->kv, o2));
        CU(cuMemsetD8(m->kv, 0, o2));
        m->free_blk = xmalloc(sizeof(int) * (size_t)m->nblocks);
        m->nfree = 0;
        for (int b = m->nblocks - 1; b >= 1; b--) /* block 0: scratch for padding rows */
            m->free_blk[m->nfree++] = b;
    }
    return 0;
}

kmodel *km_load(const char *dir, const km_opts *o, kerr *err)
{
    double t0 = util_now();
    kmodel *m = xcalloc(1, sizeof *m);
    m->o = *o;
    if (m->o.kv_memory <= 0 || m->o.kv_memory > 1)
        m->o.kv_memory = 0.9;
    char *path = util_path_join(dir, "model.kiln");
    if (!util_is_dir(dir)) {
        kerr_add(err, "%s: not a folder (expected the output of kilnc compile)", dir);
        goto fail;
    }
    m->af = ka_read(path, err);
    if (!m->af)
        goto fail;
    m->m = &m->af->m;
    m->esize = 2;
    /* everything that can be checked without a GPU is checked first: ka_read has checked every
     * manifest field against its table, buffer or limit, so nothing below re-checks them */
    m->shard = ka_shard_open(m->af, dir, err);
    if (!m->shard)
        goto fail;
    /* the shard's data hash runs on the other cores from now until the weights are uploaded */
    int threads = hash_cpu_threads() - 1;
    m->shard_job = ka_shard_hash_start(m->m, m->shard, threads < 1 ? 1 : threads);
    if (kcuda_load(&m->cu, err))
        goto fail;
    CUresult rc;
    if ((rc = m->cu.cuDeviceGet(&m->dev, 0)) ||
        (rc = m->cu.cuDeviceGetAttribute(&m->cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                         m->dev)) ||
        (rc = m->cu.cuDeviceGetAttribute(&m->cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                         m->dev)) ||
        (rc = m->cu.cuDeviceGetName(m->devname, sizeof m->devname, m->dev)) ||
        (rc = m->cu.cuDevicePrimaryCtxRetain(&m->ctx, m->dev)) ||
        (rc = m->cu.cuCtxSetCurrent(m->ctx)) ||
        (rc = m->cu.cuStreamCreate(&m->stream, CU_STREAM_NON_BLOCKING))) {
        kcuda_fail(&m->cu, rc, "device setup", __FILE__, __LINE__, err);
        goto fail;
    }
    const ka_blob *code;
    int is_ptx;
    if (pick_code(m, &code, &is_ptx, err))
        goto fail;
    if ((rc = m->cu.cuModuleLoadData(&m->mod, m->af->data + code->offset))) {
        kcuda_fail(&m->cu, rc, "cuModuleLoadData", __FILE__, __LINE__, err);
        goto fail;
    }
    m->fn = xcalloc((size_t)(m->m->nkernels ? m->m->nkernels : 1), sizeof(CUfunction));
    for (int i = 0; i < m->m->nkernels; i++) {
        if ((rc = m->cu.cuModuleGetFunction(&m->fn[i], m->mod, m->m->kernels[i].name))) {
            kerr_add(err, "%s: kernel '%s' is missing from the code for this GPU: rebuild",
                     path, m->m->kernels[i].name);
            goto fail;
        }
        if (m->m->kernels[i].smem > 48 * 1024 &&
            (rc = m->cu.cuFuncSetAttribute(m->fn[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                           m->m->kernels[i].smem))) {
            kcuda_fail(&m->cu, rc, "cuFuncSetAttribute(smem)", __FILE__, __LINE__, err);
            goto fail;
        }
    }
    double t_up = util_now();
    if (upload_weights(m, err))
        goto fail;
    double t_hash = util_now();
    uint64_t got = hash_finish(m->shard_job);
    m->shard_job = NULL;
    double t_done = util_now();
    if (ka_shard_hash_check(m->af, m->shard, got, err) || alloc_runtime(m, err))
        goto fail;
    m->gemm = kgemm_new(&m->cu, err);
    if (!m->gemm)
        goto fail;
    m->load_s = util_now() - t0;
    char wb[32];
    size_t wbytes = 0;
    for (int i = 0; i < m->m->nweights; i++)
        wbytes += (size_t)m->m->weights[i].nbytes;
    snprintf(m->desc, sizeof m->desc,
             "%s (%s) on %s (sm_%d%d, %s%s): %s of weights (uploaded in %.2f s; their hash, on "
             "%d threads, verified %.0f ms after the upload), KV cache %d tokens in %d blocks",
             m->m->model_name, m->m->arch, m->devname, m->cc_major, m->cc_minor,
             is_ptx ? "PTX " : "", code->name, util_human_bytes((double)wbytes, wb, sizeof wb),
             t_hash - t_up, threads < 1 ? 1 : threads, (t_done - t_hash) * 1e3,
             (m->nblocks - 1) * KILN_BLOCK, m->nblocks - 1);
    free(path);
    return m;
fail:
    free(path);
    km_free(m);
    return NULL;
}

void km_free(kmodel *m)
{
    if (!m)
        return;
    if (m->cu.lib) {
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (m->graphs[i])
                m->cu.cuGraphExecDestroy(m->graphs[i]);
        kgemm_free(m->gemm);
        CUdeviceptr bufs[] = {m->warena, m->consts, m->slab, m->scratch, m->logits, m->logits_all,
                              m->out, m->meta, m->kv, m->d_params, m->d_ids};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++)
            if (bufs[i])
                m->cu.cuMemFree(bufs[i]);
        if (m->h_meta)
            m->cu.cuMemFreeHost(m->h_meta);
        if (m->h_params)
            m->cu.cuMemFreeHost(m->h_params);
        if (m->h_ids)
            m->cu.cuMemFreeHost(m->h_ids);
        if (m->mod)
            m->cu.cuModuleUnload(m->mod);
        if (m->stream)
            m->cu.cuStreamDestroy(m->stream);
        if (m->ctx)
            m->cu.cuDevicePrimaryCtxRelease(m->dev);
        kcuda_unload(&m->cu);
    }
    hash_abort(m->shard_job); /* its threads read the mapping st_close unmaps */
    st_close(m->shard);
    ka_file_free(m->af);
    free(m->fn);
    free(m->woff);
    free(m->coff);
    free(m->kv_k);
    free(m->kv_v);
    free(m->free_blk);
    free(m);
}

/* ---------------------------------------------------------------- running a schedule */

static CUdeviceptr ptr_of(kmodel *m, const ka_arg *a, CUdeviceptr logits)
{
    switch (a->kind) {
    case KA_ARG_BUF: return m->slab + (CUdeviceptr)a->i;
    case KA_ARG_SCRATCH: return m->scratch + (CUdeviceptr)a->i;
    case KA_ARG_WEIGHT: return m->warena + m->woff[a->i];
    case KA_ARG_CONST: return m->consts + m->coff[a->i];
    case KA_ARG_KV_K: return m->kv + m->kv_k[a->i];
    case KA_ARG_KV_V: return m->kv + m->kv_v[a->i];
    case KA_ARG_LOGITS: return logits;
    case KA_ARG_OUT: return m->out;
    default: return 0;
    }
}

static unsigned grid_dim(const ka_grid *g, int T, int S, int Q)
{
    long v = (long)g->t * T + (long)g->s * S + (long)g->q * Q + g->add;
    return (unsigned)((v + g->div - 1) / g->div);
}

/* Launches the steps of one schedule for T tokens of S sequences (Q: most tokens of one). */
static int run_steps(kmodel *m, const ka_step *steps, int n, int T, int S, int Q, int all_logits,
                     CUdeviceptr logits, kerr *err)
{
    const ka_manifest *man = m->m;
    int f16 = strcmp(man->dtype, "f16") == 0;
    kiln_step st = m->st;
    st.T = T;
    st.n_seqs = S;
    for (int i = 0; i < n; i++) {
        const ka_step *s = &steps[i];
        if ((s->logits == KA_LOGITS_LAST && all_logits) || (s->logits == KA_LOGITS_ALL && !all_logits))
            continue;
        int rows = s->rows == KA_ROWS_S ? S : T;
        if ((s->size == KA_SIZE_SMALL && rows > man->gemv_max) ||
            (s->size == KA_SIZE_LARGE && rows <= man->gemv_max))
            continue;
        if (s->kind == KA_GEMM) {
            if (kgemm_run(m->gemm, m->stream, f16, s->out_f32, rows, s->n, s->k,
                          ptr_of(m, &s->x, logits), s->ldx, ptr_of(m, &s->w, logits),
                          ptr_of(m, &s->bias, logits), ptr_of(m, &s->y, logits), s->ldy, err))
                return kerr_add(err, "in step %d (%s)", i, s->label);
            continue;
        }
        union {
            CUdeviceptr p;
            int i;
            float f;
        } val[KA_MAX_ARGS];
        void *params[KA_MAX_ARGS];
        for (int k = 0; k < s->nargs; k++) {
            const ka_arg *a = &s->args[k];
            switch (a->kind) {
            case KA_ARG_STEP: params[k] = &st; continue;
            case KA_ARG_I32: val[k].i = (int)a->i; break;
            case KA_ARG_F32: val[k].f = (float)a->f; break;
            case KA_ARG_M: val[k].i = rows; break;
            default: val[k].p = ptr_of(m, a, logits); break;
            }
            params[k] = &val[k];
        }
        unsigned gx = grid_dim(&s->grid[0], T, S, Q), gy = grid_dim(&s->grid[1], T, S, Q),
                 gz = grid_dim(&s->grid[2], T, S, Q);
        if (!gx || !gy || !gz)
            continue;
        const ka_kernel *kk = &man->kernels[s->kernel];
        CUresult rc = m->cu.cuLaunchKernel(m->fn[s->kernel], gx, gy, gz, (unsigned)kk->block, 1, 1,
                                           (unsigned)kk->smem, m->stream, params, NULL);
        if (rc != CUDA_SUCCESS) {
            kcuda_fail(&m->cu, rc, "cuLaunchKernel", __FILE__, __LINE__, err);
            return kerr_add(err, "launching %s for step %d (%s), grid %u,%u,%u", kk->name, i,
                            s->label, gx, gy, gz);
        }
    }
    return 0;
}

/* Uploads the used parts of the step arrays. */
static int upload_meta(kmodel *m, int T, int S, kerr *err)
{
    struct {
        size_t off, n;
    } parts[] = {{m->o_ids, (size_t)T},     {m->o_pos, (size_t)T},
                 {m->o_type, (size_t)T},    {m->o_seq, (size_t)T},
                 {m->o_slot, (size_t)T},    {m->o_start, (size_t)S + 1},
                 {m->o_kvlen, (size_t)S},   {m->o_bt, (size_t)S * (size_t)m->max_blocks}};
    for (size_t i = 0; i < ARRAY_LEN(parts); i++)
        CU(cuMemcpyHtoDAsync(m->meta + parts[i].off, (char *)m->h_meta + parts[i].off,
                             sizeof(int32_t) * parts[i].n, m->stream));
    return 0;
}

#define H(o) ((int32_t *)((char *)m->h_meta + (o)))

/* ---------------------------------------------------------------- generation */

typedef struct seqstate {
    int len;          /* tokens in the cache */
    int done_prompt;  /* prompt tokens already prefilled */
    int finished;
    int nblk;
    int *blocks;
} seqstate;

static int slot_of(kmodel *m, seqstate *s, int pos) { return s->blocks[pos / KILN_BLOCK] * KILN_BLOCK + pos % KILN_BLOCK; }

static void put_seq_row(kmodel *m, int row, seqstate *s)
{
    int32_t *bt = H(m->o_bt) + (size_t)row * (size_t)m->max_blocks;
    for (int b = 0; b < m->max_blocks; b++)
        bt[b] = b < s->nblk ? s->blocks[b] : 0;
}

static int is_eos(const ka_manifest *man, int id)
{
    for (int i = 0; i < man->n_eos; i++)
        if (man->eos[i] == id)
            return 1;
    return 0;
}

static int sample_rows(kmodel *m, km_seq *seqs, const int *row_seq, int S, kerr *err)
{
    const ka_manifest *man = m->m;
    for (int r = 0; r < S; r++) {
        memset(&m->h_params[r], 0, sizeof(kiln_sample));
        if (row_seq[r] >= 0) {
            m->h_params[r] = seqs[row_seq[r]].sample;
            m->h_params[r].index = seqs[row_seq[r]].n_out; /* the RNG counter */
        }
        if (m->h_params[r].top_p <= 0)
            m->h_params[r].top_p = 1;
    }
    CU(cuMemcpyHtoDAsync(m->d_params, m->h_params, sizeof(kiln_sample) * (size_t)S, m->stream));
    kiln_step st = m->st;
    st.T = S;
    st.n_seqs = S;
    CUdeviceptr lg = m->logits, par = m->d_params, ids = m->d_ids;
    void *params[] = {&st, &lg, &par, &ids};
    const ka_kernel *kk = &man->kernels[man->sample_kernel];
    CU(cuLaunchKernel(m->fn[man->sample_kernel], (unsigned)S, 1, 1, (unsigned)kk->block, 1, 1,
                      (unsigned)kk->smem, m->stream, params, NULL));
    CU(cuMemcpyDtoHAsync(m->h_ids, m->d_ids, sizeof(int32_t) * (size_t)S, m->stream));
    CU(cuStreamSynchronize(m->stream));
    return 0;
}

static int bucket_of(int n)
{
    int b = 1, i = 0;
    while (b < n) {
        b *= 2;
        i++;
    }
    return i;
}

static int decode_step(kmodel *m, int B, kerr *err)
{
    const ka_manifest *man = m->m;
    int bi = bucket_of(B);
    if (!m->o.no_graphs && !m->graphs_failed && bi < MAX_BUCKETS) {
        if (!m->graphs[bi]) {
            CUgraph g = NULL;
            CUresult rc = m->cu.cuStreamBeginCapture(m->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
            int ok = rc == CUDA_SUCCESS;
            kerr cap;
            kerr_clear(&cap);
            if (ok)
                ok = run_steps(m, man->decode, man->ndecode, B, B, 1, 0, m->logits, &cap) == 0;
            if (rc == CUDA_SUCCESS)
                ok = m->cu.cuStreamEndCapture(m->stream, &g) == CUDA_SUCCESS && ok;
            if (ok)
                ok = m->cu.cuGraphInstantiateWithFlags(&m->graphs[bi], g, 0) == CUDA_SUCCESS;
            if (g)
                m->cu.cuGraphDestroy(g);
            if (!ok) {
                m->graphs[bi] = NULL;
                m->graphs_failed = 1;
                if (!m->o.quiet)
                    fprintf(stderr, "kiln: note: CUDA graph capture failed (%s); decoding without "
                                    "graphs\n",
                            cap.n ? kerr_msg(&cap) : "driver refused");
            }
        }
        if (m->graphs[bi]) {
            CU(cuGraphLaunch(m->graphs[bi], m->stream));
            return 0;
        }
    }
    return run_steps(m, man->decode, man->ndecode, B, B, 1, 0, m->logits, err);
}

int km_generate(kmodel *m, km_seq *seqs, int n, km_stats *stats, kerr *err)
{
    const ka_manifest *man = m->m;
    memset(stats, 0, sizeof *stats);
    stats->load_s = m->load_s;
    double t0 = util_now();
    if (n < 1)
        return kerr_add(err, "no sequences to run");
    if (n > man->max_seqs)
        return kerr_add(err, "%d sequences in one call; this artifact was compiled for at most %d "
                             "(kilnc compile --max-batch N)",
                        n, man->max_seqs);
    int embed = man->output_pool;
    seqstate *ss = xcalloc((size_t)n, sizeof(seqstate));
    int rc = -1;
    /* reserve every sequence's KV blocks up front: a batch that does not fit is refused now,
     * not half way */
    int need = 0;
    for (int i = 0; i < n; i++) {
        km_seq *q = &seqs[i];
        q->n_out = 0;
        if (q->n_prompt < 1) {
            kerr_add(err, "sequence %d has an empty prompt", i);
            goto done;
        }
        int total = q->n_prompt + (embed ? 0 : q->max_new);
        if (total > man->max_seq_len) {
            kerr_add(err, "sequence %d: %d prompt + %d new tokens exceed the compiled limit of %d "
                          "(kilnc compile --max-seq-len N)",
                     i, q->n_prompt, embed ? 0 : q->max_new, man->max_seq_len);
            goto done;
        }
        if (embed && q->n_prompt > man->max_tokens) {
            kerr_add(err, "sequence %d: an embedding model takes at most %d tokens per sequence "
                          "(kilnc compile --max-tokens N)",
                     i, man->max_tokens);
            goto done;
        }
        for (int t = 0; t < q->n_prompt; t++)
            if (q->prompt[t] < 0 || (man->vocab > 0 && q->prompt[t] >= man->vocab)) {
                kerr_add(err, "sequence %d: token id %d at position %d is outside the vocabulary "
                              "(%d)",
                         i, q->prompt[t], t, man->vocab);
                goto done;
            }
        ss[i].nblk = (total + KILN_BLOCK - 1) / KILN_BLOCK;
        need += ss[i].nblk;
    }
    if (man->n_layers && need > m->nfree) {
        kerr_add(err, "the KV cache holds %d tokens (%d blocks); this batch needs %d blocks: use "
                      "fewer or shorter sequences, or raise --kv-memory",
                 m->nfree * KILN_BLOCK, m->nfree, need);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        ss[i].blocks = xmalloc(sizeof(int) * (size_t)(ss[i].nblk ? ss[i].nblk : 1));
        for (int b = 0; b < ss[i].nblk; b++)
            ss[i].blocks[b] = m->nfree ? m->free_blk[--m->nfree] : 0;
    }

    /* prefill: steps of up to max_tokens tokens, whole or partial prompts */
    int *row_seq = xmalloc(sizeof(int) * (size_t)m->cap_seq);
    double tp = util_now();
    for (;;) {
        int T = 0, S = 0, Q = 0, all = 0;
        int *ids = H(m->o_ids), *pos = H(m->o_pos), *typ = H(m->o_type), *sq = H(m->o_seq),
            *slot = H(m->o_slot), *start = H(m->o_start), *kvl = H(m->o_kvlen);
        for (int i = 0; i < n && S < man->max_seqs && T < man->max_tokens; i++) {
            km_seq *q = &seqs[i];
            int left = q->n_prompt - ss[i].done_prompt;
            if (left <= 0)
                continue;
            int take = left < man->max_tokens - T ? left : man->max_tokens - T;
            if (embed && take < left)
                break; /* embedding prompts are never split */
            start[S] = T;
            for (int k = 0; k < take; k++) {
                int p = ss[i].done_prompt + k;
                ids[T] = q->prompt[p];
                pos[T] = p;
                typ[T] = q->types ? q->types[p] : 0;
                sq[T] = S;
                slot[T] = man->n_layers ? slot_of(m, &ss[i], p) : -1;
                T++;
            }
            kvl[S] = ss[i].done_prompt + take;
            put_seq_row(m, S, &ss[i]);
            row_seq[S] = i;
            if (take > Q)
                Q = take;
            all |= q->prompt_logits != NULL;
            S++;
        }
        if (!S)
            break;
        start[S] = T;
        if (all && !m->logits_all) {
            m->logits_all_rows = (size_t)man->max_tokens;
            CUresult r2 = m->cu.cuMemAlloc(&m->logits_all, sizeof(float) * m->logits_all_rows *
                                                               (size_t)man->vocab);
            if (r2 != CUDA_SUCCESS) {
                kcuda_fail(&m->cu, r2, "cuMemAlloc(all logits)", __FILE__, __LINE__, err);
                goto done_rows;
            }
        }
        if (upload_meta(m, T, S, err) ||
            run_steps(m, man->prefill, man->nprefill, T, S, Q, all, all ? m->logits_all : m->logits,
                      err))
            goto done_rows;
        if (all) { /* prompt logits to the host; the last rows to the sampling buffer */
            for (int r = 0; r < S; r++) {
                km_seq *q = &seqs[row_seq[r]];
                int rows = (r + 1 < S ? start[r + 1] : T) - start[r];
                size_t V = (size_t)man->vocab;
                if (q->prompt_logits) {
                    CUresult r3 = m->cu.cuMemcpyDtoHAsync(
                        q->prompt_logits + (size_t)ss[row_seq[r]].done_prompt * V,
                        m->logits_all + (size_t)start[r] * V * sizeof(float),
                        sizeof(float) * V * (size_t)rows, m->stream);
                    if (r3 != CUDA_SUCCESS) {
                        kcuda_fail(&m->cu, r3, "copy logits", __FILE__, __LINE__, err);
                        goto done_rows;
                    }
                }
                CUresult r4 = m->cu.cuMemcpyDtoDAsync(
                    m->logits + (size_t)r * V * sizeof(float),
                    m->logits_all + (size_t)(start[r] + rows - 1) * V * sizeof(float),
                    sizeof(float) * V, m->stream);
                if (r4 != CUDA_SUCCESS) {
                    kcuda_fail(&m->cu, r4, "copy logits", __FILE__, __LINE__, err);
                    goto done_rows;
                }
            }
        }
        for (int r = 0; r < S; r++) {
            int i = row_seq[r];
            ss[i].done_prompt += (r + 1 < S ? start[r + 1] : T) - start[r];
            ss[i].len = ss[i].done_prompt;
        }
        stats->prefill_tokens += T;
        if (embed) {
            CUresult r5 = m->cu.cuStreamSynchronize(m->stream);
            for (int r = 0; r < S && r5 == CUDA_SUCCESS; r++)
                r5 = m->cu.cuMemcpyDtoH(seqs[row_seq[r]].embedding,
                                        m->out + (size_t)r * (size_t)man->hidden * sizeof(float),
                                        sizeof(float) * (size_t)man->hidden);
            if (r5 != CUDA_SUCCESS) {
                kcuda_fail(&m->cu, r5, "copy embeddings", __FILE__, __LINE__, err);
                goto done_rows;
            }
            continue;
        }
        /* sequences whose prompt is complete get their first token */
        int any = 0;
        for (int r = 0; r < S; r++) {
            int i = row_seq[r];
            if (ss[i].done_prompt < seqs[i].n_prompt || seqs[i].max_new <= 0)
                row_seq[r] = -1;
            else
                any = 1;
        }
        if (any) {
            if (sample_rows(m, seqs, row_seq, S, err))
                goto done_rows;
            for (int r = 0; r < S; r++) {
                if (row_seq[r] < 0)
                    continue;
                km_seq *q = &seqs[row_seq[r]];
                q->out[q->n_out++] = m->h_ids[r];
                if (!stats->ttft_s)
                    stats->ttft_s = util_now() - t0;
                if (q->n_out >= q->max_new || (!q->ignore_eos && is_eos(man, m->h_ids[r])))
                    ss[row_seq[r]].finished = 1;
            }
        }
    }
    {
        CUresult r6 = m->cu.cuStreamSynchronize(m->stream);
        if (r6 != CUDA_SUCCESS) {
            kcuda_fail(&m->cu, r6, "prefill", __FILE__, __LINE__, err);
            goto done_rows;
        }
    }
    stats->prefill_s = util_now() - tp;

    /* decode: one token per unfinished sequence per step */
    double td = util_now();
    while (!embed) {
        int B = 0;
        int *ids = H(m->o_ids), *pos = H(m->o_pos), *typ = H(m->o_type), *sq = H(m->o_seq),
            *slot = H(m->o_slot), *start = H(m->o_start), *kvl = H(m->o_kvlen);
        for (int i = 0; i < n; i++) {
            if (ss[i].finished || seqs[i].max_new <= 0 || seqs[i].n_out >= seqs[i].max_new)
                continue;
            ids[B] = seqs[i].out[seqs[i].n_out - 1];
            pos[B] = ss[i].len;
            typ[B] = 0;
            sq[B] = B;
            slot[B] = slot_of(m, &ss[i], ss[i].len);
            start[B] = B;
            kvl[B] = ss[i].len + 1;
            put_seq_row(m, B, &ss[i]);
            row_seq[B] = i;
            B++;
        }
        if (!B)
            break;
        int bucket = 1 << bucket_of(B);
        if (bucket > man->max_seqs)
            bucket = B;
        for (int r = B; r < bucket; r++) { /* padding rows write block 0, read nothing else */
            ids[r] = 0;
            pos[r] = 0;
            typ[r] = 0;
            sq[r] = r;
            slot[r] = 0;
            start[r] = r;
            kvl[r] = 1;
            memset(H(m->o_bt) + (size_t)r * (size_t)m->max_blocks, 0,
                   sizeof(int32_t) * (size_t)m->max_blocks);
            row_seq[r] = -1;
        }
        start[bucket] = bucket;
        if (upload_meta(m, bucket, bucket, err) || decode_step(m, bucket, err) ||
            sample_rows(m, seqs, row_seq, bucket, err))
            goto done_rows;
        for (int r = 0; r < B; r++) {
            int i = row_seq[r];
            km_seq *q = &seqs[i];
            ss[i].len++;
            q->out[q->n_out++] = m->h_ids[r];
            stats->decode_tokens++;
            if (q->n_out >= q->max_new || (!q->ignore_eos && is_eos(man, m->h_ids[r])))
                ss[i].finished = 1;
        }
    }
    stats->decode_s = util_now() - td;
    rc = 0;
done_rows:
    free(row_seq);
done:
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < ss[i].nblk && ss[i].blocks; b++)
            if (ss[i].blocks[b])
                m->free_blk[m->nfree++] = ss[i].blocks[b];
        free(ss[i].blocks);
    }
    free(ss);
    return rc;
}
