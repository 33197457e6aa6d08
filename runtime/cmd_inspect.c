/* cmd_inspect — `kiln inspect OUT_DIR`: what a compiled model holds, without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "cli.h"

static void print_steps(const ka_manifest *m, const ka_step *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (s[i].kind == KA_GEMM)
            printf("  %3d %-28s gemm n=%lld k=%lld%s\n", i, s[i].label, (long long)s[i].n,
                   (long long)s[i].k, s[i].size == KA_SIZE_LARGE ? " [rows > gemv_max]" : "");
        else
            printf("  %3d %-28s %s%s%s\n", i, s[i].label, m->kernels[s[i].kernel].name,
                   s[i].size == KA_SIZE_SMALL ? " [rows <= gemv_max]"
                   : s[i].size == KA_SIZE_LARGE ? " [rows > gemv_max]"
                                                : "",
                   s[i].logits == KA_LOGITS_LAST ? " [last rows]"
                   : s[i].logits == KA_LOGITS_ALL ? " [all rows]"
                                                  : "");
    }
}

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int source = 0, schedule = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: kiln inspect OUT_DIR [--schedule] [--source]\n\n"
                   "Prints what a compiled model holds: identity and hashes, limits, the GPU code\n"
                   "present (cubins per SM, PTX), kernels, weights and the KV-cache layout.\n"
                   "  --schedule  also print the prefill and decode launch lists\n"
                   "  --source    print the generated CUDA source instead\n");
            return 0;
        }
        if (!strcmp(argv[i], "--source"))
            source = 1;
        else if (!strcmp(argv[i], "--schedule"))
            schedule = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "kiln inspect: unknown option %s\n", argv[i]);
            return 2;
        } else
            dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: kiln inspect OUT_DIR [--schedule] [--source]\n");
        return 2;
    }
    kerr err;
    kerr_clear(&err);
    char *path = util_is_dir(dir) ? util_path_join(dir, "model.kiln") : xstrdup(dir);
    ka_file *f = ka_read(path, &err);
    free(path);
    if (!f) {
        fprintf(stderr, "kiln: error: %s\n", kerr_msg(&err));
        return 1;
    }
    const ka_manifest *m = &f->m;
    if (source) {
        const ka_blob *b = ka_find_blob(m, "source.cu");
        if (b)
            fwrite(f->data + b->offset, 1, b->len, stdout);
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
    printf("limits       %d tokens per sequence, %d sequences per step, %d tokens per prefill "
           "step, GEMV up to %d rows\n",
           m->max_seq_len, m->max_seqs, m->max_tokens, m->gemv_max);
    printf("memory       slab %lld B, scratch %lld B, weights %s in %d tensors (%s)\n",
           (long long)m->slab_bytes, (long long)m->scratch_bytes,
           util_human_bytes((double)wbytes, wb, sizeof wb), m->nweights, m->shard);
    printf("code        ");
    for (int i = 0; i < m->nblobs; i++)
        printf(" %s (%llu B)", m->blobs[i].name, (unsigned long long)m->blobs[i].len);
    printf("\nkernels      %d; prefill %d steps, decode %d steps\n", m->nkernels, m->nprefill,
           m->ndecode);
    printf("eos          ");
    for (int i = 0; i < m->n_eos; i++)
        printf("%s%d", i ? ", " : "", m->eos[i]);
    printf("%s; bos %d\n", m->n_eos ? "" : "none", m->bos);
    if (schedule) {
        printf("prefill:\n");
        print_steps(m, m->prefill, m->nprefill);
        printf("decode:\n");
        print_steps(m, m->decode, m->ndecode);
    }
    ka_file_free(f);
    return 0;
}
