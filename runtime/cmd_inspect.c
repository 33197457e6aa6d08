/* cmd_inspect — `kiln inspect OUT_DIR`: what a compiled model holds, without a GPU. With
 * --verify it also checks the weight shards, one per rank, as `kiln run` does (id, header, every
 * weight, and the data hash, here on every core) and says how fast the hashing ran. */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kiln_gemm.h"
#include "../kernels/kiln_step.h"
#include "artifact.h"
#include "cli.h"

#define PROG "kiln inspect"
#define USAGE "usage: kiln inspect OUT_DIR [--schedule] [--source] [--verify]\n"

/* The shard checks of km_load for rank `rank`, without a GPU; prints what was hashed and how
 * fast. */
static int verify(const ka_file *f, const char *dir, int rank, kerr *err)
{
    st_set *s = ka_shard_open_rank(f, dir, rank, err);
    if (!s)
        return -1;
    const unsigned char *data;
    uint64_t len;
    ka_shard_data(s, &data, &len);
    int threads = util_cpus(HASH_MAX_THREADS);
    double t0 = util_now();
    int rc = ka_shard_verify(f, rank, s, threads, err);
    double dt = util_now() - t0;
    if (rc == 0) {
        char b[32];
        printf("verified     %s: id %016llx, header and %d weights match; %s of data hashed in "
               "%.3f s (%.1f GB/s on %d threads)\n",
               f->m.shards[rank].path, (unsigned long long)f->m.shards[rank].id, f->m.nweights,
               util_human_bytes((double)len, b, sizeof b), dt,
               dt > 0 ? (double)len / dt / 1e9 : 0.0, threads);
    }
    st_close(s);
    return rc;
}

static void print_steps(const ka_manifest *m, const ka_step *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (s[i].kind == KA_GEMM)
            printf("  %3d %-28s gemm%s n=%lld k=%lld%s\n", i, s[i].label,
                   s[i].w.kind == KA_ARG_WEIGHT && m->weights[s[i].w.i].type == KA_W_E4M3
                       ? " e4m3"
                       : "",
                   (long long)s[i].n,
                   (long long)s[i].k, ka_size_label(s[i].size));
        else if (s[i].kind == KA_ALLREDUCE || s[i].kind == KA_ALLGATHER)
            printf("  %3d %-28s %s n=%lld %s rows=%s%s\n", i, s[i].label,
                   s[i].kind == KA_ALLREDUCE ? "all_reduce" : "all_gather", (long long)s[i].n,
                   s[i].out_f32 ? "f32" : m->dtype, s[i].rows == KA_ROWS_S ? "S" : "T",
                   s[i].logits == KA_LOGITS_LAST ? " [last rows]"
                   : s[i].logits == KA_LOGITS_ALL ? " [all rows]"
                                                  : "");
        else
            printf("  %3d %-28s %s%s%s\n", i, s[i].label, m->kernels[s[i].kernel].name,
                   ka_size_label(s[i].size),
                   s[i].logits == KA_LOGITS_LAST ? " [last rows]"
                   : s[i].logits == KA_LOGITS_ALL ? " [all rows]"
                                                  : "");
    }
}

/* Whether one of the n steps s launches an instance of template function `op`. */
static int runs_kernel(const ka_manifest *m, const ka_step *s, int n, const char *op)
{
    for (int i = 0; i < n; i++)
        if (s[i].kind == KA_KERNEL && ka_kernel_is(&m->kernels[s[i].kernel], op))
            return 1;
    return 0;
}

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int source = 0, schedule = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf(USAGE "\n"
                   "Prints what a compiled model holds: identity and hashes, limits, the GPU code\n"
                   "present (cubins per SM, PTX), kernels, weights and the KV-cache layout. Needs\n"
                   "no GPU; model.kiln is always checked in full (hashes and every field).\n"
                   "  --schedule  also print the prefill and decode launch lists\n"
                   "  --source    print the generated CUDA source instead\n"
                   "  --verify    also check the weight shards (one per rank) as kiln run does\n"
                   "              (id, header, weights and data hash, on every core); exit 1 if\n"
                   "              one differs\n");
            return 0;
        }
        if (!strcmp(argv[i], "--source"))
            source = 1;
        else if (!strcmp(argv[i], "--schedule"))
            schedule = 1;
        else if (!strcmp(argv[i], "--verify"))
            check = 1;
        else if (argv[i][0] == '-')
            return util_usage_error(PROG, "unknown option %s", argv[i]);
        else if (dir)
            return util_usage_error(PROG, "one OUT_DIR expected, got %s and %s", dir, argv[i]);
        else
            dir = argv[i];
    }
    if (!dir)
        return util_usage_error(PROG, "OUT_DIR (the output of kilnc compile) is missing");
    kerr err;
    kerr_clear(&err);
    char *path = util_is_dir(dir) ? util_path_join(dir, "model.kiln") : xstrdup(dir);
    ka_file *f = ka_read(path, &err);
    if (!f) {
        free(path);
        kerr_print(PROG, &err);
        return 1;
    }
    const ka_manifest *m = &f->m;
    if (source) {
        const ka_blob *b = ka_find_blob(m, "source.cu");
        if (b)
            fwrite(f->data + b->offset, 1, b->len, stdout);
        else
            fprintf(stderr, PROG ": error: %s has no generated source (section source.cu)\n", path);
        free(path);
        ka_file_free(f);
        return b ? 0 : 1;
    }
    char wb[32];
    int64_t wbytes = 0;
    for (int i = 0; i < m->nweights; i++)
        wbytes += m->weights[i].nbytes;
    printf("model        %s (%s), archspec %s, task %s\n", m->model_name, m->arch, m->spec_name,
           m->task);
    printf("compiled by  kilnc %s; spec %016llx config %016llx layout %016llx\n",
           m->kilnc_version, (unsigned long long)m->spec_hash,
           (unsigned long long)m->config_hash, (unsigned long long)m->layout_hash);
    printf("dtype        %s; vocab %d, hidden %d, %d KV layers\n", m->dtype, m->vocab, m->hidden,
           m->n_layers);
    if (m->labels) { /* a classifier: hidden is its number of labels */
        printf("labels      ");
        for (int i = 0; i < m->hidden; i++)
            printf(" %d:%s", i, m->labels[i]);
        printf("\n");
    }
    printf("limits       %d tokens per sequence, %d sequences per step, %d tokens per prefill "
           "step, GEMV up to %d rows",
           m->max_seq_len, m->max_seqs, m->max_tokens, m->gemv_max);
    if (m->skinny_max)
        printf(", skinny GEMM up to %d", m->skinny_max);
    printf("\n");
    if (m->rope_switch)
        printf("rope         longrope: a sequence longer than %d tokens uses the long factors "
               "(recomputed when it grows past them)\n",
               m->rope_switch);
    int fp8 = 0, w8a8 = 0, int4 = 0;
    for (int i = 0; i < m->nweights; i++) {
        fp8 += m->weights[i].type == KA_W_E4M3;
        int4 += m->weights[i].type == KA_W_INT4;
    }
    for (int i = 0; i < m->nprefill; i++)
        w8a8 |= m->prefill[i].kind == KA_GEMM && m->prefill[i].w.kind == KA_ARG_WEIGHT &&
                m->weights[m->prefill[i].w.i].type == KA_W_E4M3;
    printf("memory       slab %lld B, scratch %lld B, weights %s in %d tensors%s\n",
           (long long)m->slab_bytes, (long long)m->scratch_bytes,
           util_human_bytes((double)wbytes, wb, sizeof wb), m->nweights,
           m->tp > 1 ? " per rank" : "");
    if (fp8)
        printf("fp8          %d linear weights in e4m3 with float scales; steps of more than %d "
               "rows %s\n",
               fp8, m->gemv_max,
               w8a8 ? "run W8A8 on the FP8 tensor cores (kilnc compile --fp8-gemm w8a8)"
                    : "dequantise them into bf16 for the GEMM (weight-only)");
    if (int4) {
        /* decode steps of more than gemv_max rows, prefill steps of up to skinny_max rows */
        const int sk4 = runs_kernel(m, m->decode, m->ndecode, "gemm_skinny_int4");
        const int pk4 = runs_kernel(m, m->prefill, m->nprefill, "gemm_skinny_int4");
        printf("int4         %d linear weights in 4 bits with scales and zero points per group; ",
               int4);
        if (pk4)
            printf("prefill steps of %d to %d rows read them on the skinny INT4 GEMM, longer ones "
                   "dequantise them into %s for the GEMM",
                   m->gemv_max + 1, m->skinny_max, m->dtype);
        else
            printf("prefill steps of more than %d rows dequantise them into %s for the GEMM",
                   m->gemv_max, m->dtype);
        if (sk4)
            printf("; decode steps of more than %d rows read them on the skinny INT4 GEMM, once "
                   "for every %d rows",
                   m->gemv_max, KILN_SKINNY_MAX);
        printf("\n");
    }
    if (m->n_layers) {
        /* bytes a token of context takes in every layer's K and V; per16: in the compute dtype */
        ka_manifest m16 = *m;
        m16.kv_e4m3 = 0;
        int64_t per = 0, per16 = 0;
        for (int l = 0; l < m->n_layers; l++) {
            per += ka_kv_block_bytes(m, l, 0) + ka_kv_block_bytes(m, l, 1);
            per16 += ka_kv_block_bytes(&m16, l, 0) + ka_kv_block_bytes(&m16, l, 1);
        }
        if (m->kv_e4m3)
            printf("kv cache     fp8 (kilnc compile --kv-dtype fp8): e4m3 with a float scale per "
                   "token and kv head, %lld B a token%s (%s: %lld B), so %.2fx the tokens in the "
                   "same memory\n",
                   (long long)(per / KILN_BLOCK), m->tp > 1 ? " per rank" : "", m->dtype,
                   (long long)(per16 / KILN_BLOCK), (double)per16 / (double)per);
        else
            printf("kv cache     %s, %lld B a token%s\n", m->dtype, (long long)(per / KILN_BLOCK),
                   m->tp > 1 ? " per rank" : "");
    }
    printf("gemm         %s: %d cuBLASLt steps%s\n",
           m->gemm_kiln ? "kiln (kilnc compile --gemm kiln)" : "cublaslt", m->cublaslt_steps,
           m->cublaslt_steps ? " (kiln loads libcublasLt)" : " (no cuBLASLt needed)");
    printf("batching     %s\n",
           m->batch_invariant
               ? "invariant (kilnc compile --batch-invariant): a request's tokens and logits "
                 "are the same bits whatever else runs in its steps"
               : "a row's logits may differ in their last bits with the batch around it "
                 "(kilnc compile --batch-invariant makes them invariant)");
    printf("parallel     tp %d: %d GPU%s, %d collective steps%s\n", m->tp, m->tp,
           m->tp > 1 ? "s" : "", m->collectives,
           m->collectives ? " (NCCL)" : " (no NCCL needed)");
    printf("code        ");
    for (int i = 0; i < m->nblobs; i++)
        printf(" %s (%llu B)", m->blobs[i].name, (unsigned long long)m->blobs[i].len);
    printf("\nkernels      %d; prefill %d steps, decode %d steps\n", m->nkernels, m->nprefill,
           m->ndecode);
    printf("eos          ");
    for (int i = 0; i < m->n_eos; i++)
        printf("%s%d", i ? ", " : "", m->eos[i]);
    printf("%s; bos %d\n", m->n_eos ? "" : "none", m->bos);
    const ka_gen *ge = &m->gen;
    printf("sampling     ");
    if (!ge->has_temperature && !ge->has_top_p && !ge->has_top_k && !ge->has_max_new)
        printf("no defaults (kiln run's own)");
    if (ge->has_temperature)
        printf("temperature %g ", ge->temperature);
    if (ge->has_top_p)
        printf("top_p %g ", ge->top_p);
    if (ge->has_top_k)
        printf("top_k %d ", ge->top_k);
    if (ge->has_max_new)
        printf("max_new_tokens %d ", ge->max_new);
    printf("%s\n", ge->has_temperature || ge->has_top_p || ge->has_top_k || ge->has_max_new
                       ? "(generation_config.json; kiln run's flags win)"
                       : "");
    for (int i = 0; i < m->n_overrides; i++)
        printf("%s%s\n", i ? "             " : "overrides    ", m->overrides[i]);
    for (int r = 0; r < m->tp; r++)
        printf("shard        %s: id %016llx, data XXH3 %016llx in %llu MiB chunks\n",
               m->shards[r].path, (unsigned long long)m->shards[r].id,
               (unsigned long long)m->shards[r].hash, (unsigned long long)(m->shard_chunk >> 20));
    int rc = 0;
    /* the folder model.kiln is in, whether OUT_DIR or the file was given (dirname once: it
     * writes into path) */
    const char *adir = check ? dirname(path) : NULL;
    for (int r = 0; r < m->tp && check && rc == 0; r++) {
        if (verify(f, adir, r, &err)) {
            kerr_print(PROG, &err);
            rc = 1;
        }
    }
    if (schedule) {
        printf("prefill:\n");
        print_steps(m, m->prefill, m->nprefill);
        printf("decode:\n");
        print_steps(m, m->decode, m->ndecode);
    }
    free(path);
    ka_file_free(f);
    return rc;
}
