/* bench_report — see bench_report.h. */
#include "bench_report.h"

#include <jansson.h>
#include <stdlib.h>

#define PROG "kiln bench"

void kbench_rooflines(kbench_fig *figs, int nf, const kroof_model *rm, const kroof_hw *hw,
                      int max_tokens, int new_tokens, int context)
{
    for (int i = 0; i < nf; i++) {
        kbench_fig *g = &figs[i];
        if (g->skip)
            continue;
        double t; /* the roofline's seconds */
        if (g->kind == KBENCH_DECODE) {
            /* step j reads the weights and, per sequence, the KV of context + j + 1 tokens */
            double ctx = 0;
            for (int j = 0; j < new_tokens; j++)
                ctx += (double)g->n * (context + j + 1);
            t = (new_tokens * (double)rm->weight_bytes + (double)rm->kv_bytes_per_token * ctx) /
                hw->copy_bw;
        } else {
            double peak = rm->fp8_gemm ? hw->gemm_fp8_flops : hw->gemm_flops;
            if (peak <= 0) /* no GEMM peak: no prefill roofline */
                continue;
            t = kroof_prefill_flops(rm, g->n) / peak;
            if (g->kind == KBENCH_TTFT) /* and every chunk's step reads the weights once */
                t += (double)((g->n + max_tokens - 1) / max_tokens) * (double)rm->weight_bytes /
                     hw->copy_bw;
        }
        g->ratio = t / g->seconds;
        g->first_ratio = t / g->first;
        g->roof = g->kind == KBENCH_TTFT      ? t * 1e3
                  : g->kind == KBENCH_DECODE ? (double)g->n * new_tokens / t
                                              : g->n / t;
    }
}

static const char *fig_name(const kbench_fig *g, const kbench_run *r, char *buf, size_t cap)
{
    if (g->kind == KBENCH_TTFT)
        snprintf(buf, cap, "time to first token, %d tokens", g->n);
    else if (g->kind == KBENCH_PREFILL)
        snprintf(buf, cap, "prefill, %d tokens", g->n);
    else
        snprintf(buf, cap, "decode, batch %d (context %d-%d)", g->n, r->context + 1,
                 r->context + r->new_tokens);
    return buf;
}

/* One row: the roofline and the ratio given, "n/a" (a GPU figure without a roofline: no GEMM
 * peak), or "-" (the CPU backend). */
static void row(FILE *f, const char *name, const char *v, int compiled, double roof, int prec,
                const char *unit, double ratio)
{
    char r[32];
    if (compiled && roof > 0) {
        snprintf(r, sizeof r, "%.*f %s", prec, roof, unit);
        fprintf(f, "%-40s %16s %16s %7.2f\n", name, v, r, ratio);
    } else {
        const char *none = compiled ? "n/a" : "-";
        fprintf(f, "%-40s %16s %16s %7s\n", name, v, none, none);
    }
}

static void print_table(FILE *f, const kbench_run *r, const kbench_fig *figs, int nf)
{
    char name[96], v[32];
    fprintf(f, "\n%-40s %16s %16s %7s\n", "figure", "measured", "roofline", "ratio");
    for (int i = 0; i < nf; i++) {
        const kbench_fig *g = &figs[i];
        fig_name(g, r, name, sizeof name);
        if (g->skip) {
            fprintf(f, "%-40s skipped: %s\n", name, g->skip);
            continue;
        }
        const char *unit = g->kind == KBENCH_TTFT ? "ms" : "tok/s";
        int prec = g->kind == KBENCH_TTFT ? 2 : 1;
        snprintf(v, sizeof v, "%.*f %s", prec, g->value, unit);
        row(f, name, v, r->compiled, g->roof, prec, unit, g->ratio);
        if (g->kind != KBENCH_TTFT || i != 0)
            continue;
        /* its warm-up run, when it was the first request after the load: the first-call costs */
        snprintf(v, sizeof v, "%.2f ms", g->first * 1e3);
        row(f, "  the first request after the load", v, r->compiled, g->roof, prec, unit,
            g->first_ratio);
    }
}

static void print_header(FILE *f, const kbench_run *r)
{
    const kroof_hw *hw = r->hw;
    const kroof_model *rm = r->rm;
    char a[32], b[32];
    fprintf(f, "%s: %s (%s), kiln %s\n", PROG, r->model, r->dir, KILN_VERSION);
    fprintf(f, "  backend      %s\n", r->describe);
    if (r->compiled) {
        fprintf(f, "  GPU          %s (sm_%d%d, %d SMs, %s), driver %d.%d\n", hw->gpu,
                hw->sm_major, hw->sm_minor, hw->sms, util_human_bytes(hw->memory, a, sizeof a),
                hw->driver_version / 1000, hw->driver_version % 1000 / 10);
        fprintf(f, "  copy         %.3f TB/s: cuMemcpyDtoD of %zu MiB, best of %d; (bytes read + "
                   "bytes written) / time\n",
                hw->copy_bw / 1e12, KROOF_COPY_BYTES >> 20, KROOF_REPS);
        if (hw->gemm_flops > 0) {
            fprintf(f, "  GEMM peak    %.1f TFLOP/s: cuBLASLt bf16 %d^3 on random data, best of "
                       "%d; 2 M N K / time",
                    hw->gemm_flops / 1e12, KROOF_GEMM_N, KROOF_REPS);
            if (hw->gemm_sustained > 0)
                fprintf(f, " (%d back to back: %.1f TFLOP/s)", hw->gemm_sustained_runs,
                        hw->gemm_sustained / 1e12);
            fputc('\n', f);
        } else
            fprintf(f, "  GEMM peak    not measured: cuBLASLt cannot be loaded (the message is on "
                       "stderr); the prefill and time-to-first-token ratios are n/a\n");
        if (hw->gemm_fp8_flops > 0)
            fprintf(f, "  FP8 peak     %.1f TFLOP/s: the same in e4m3 (bf16 out)%s\n",
                    hw->gemm_fp8_flops / 1e12,
                    rm->fp8_gemm ? " (this model's prefill GEMMs are FP8: its prefill roofline)"
                                 : "");
    }
    fprintf(f, "  load         %.2f s%s\n", r->load_s,
            r->compiled ? " (GPU 0's context already made by the measurements above)" : "");
    if (r->compiled)
        fprintf(f, "  per step     %s of weights read by a decode step (embedding tables, %s, not "
                   "counted: a step reads one row per token); KV cache %lld bytes per token of "
                   "context\n",
                util_human_bytes((double)rm->weight_bytes, a, sizeof a),
                util_human_bytes((double)rm->gather_bytes, b, sizeof b),
                (long long)rm->kv_bytes_per_token);
}

/* The rooflines' definitions, printed under the table and written to the JSON. */
static char *how_decode(void)
{
    return xasprintf("decode tok/s at the roofline = tokens / ((steps x weight bytes + KV-cache "
                     "bytes per token x the context every step reads, summed) / copy "
                     "bandwidth)");
}

static char *how_prefill(const kroof_model *rm)
{
    char a[32], b[32];
    return xasprintf("prefill tok/s at the roofline = tokens / (FLOPs / GEMM peak); FLOPs = 2 x "
                     "tokens x %s matrix parameters + 2 x %s LM-head parameters (the last row "
                     "only) + 4 x %lld (query heads x head_dim, summed over layers%s) x causal "
                     "(query, key) pairs",
                     util_human_count(rm->matrix_params, a, sizeof a),
                     util_human_count(rm->head_params, b, sizeof b), (long long)rm->q_width,
                     rm->q_width_assumed ? "; assumed = hidden: no attn.o GEMM" : "");
}

static char *how_ttft(void)
{
    return xasprintf("time to first token at the roofline = prefill FLOPs / GEMM peak + the "
                     "steps of its chunks x weight bytes / copy bandwidth");
}

static void print_how(FILE *f, const kbench_run *r)
{
    fprintf(f, "\n");
    if (!r->compiled) {
        fprintf(f, "no GPU roofline: %s is a Hugging Face checkpoint, run on the CPU backend (the "
                   "fp32 reference interpreter); the figures are its timings only\n",
                r->dir);
    } else {
        char *d = how_decode(), *p = how_prefill(r->rm), *t = how_ttft();
        fprintf(f, "ratio = roofline time / measured time (1 = the hardware limit)\n  %s\n  %s\n"
                   "  %s\n",
                d, p, t);
        free(d);
        free(p);
        free(t);
    }
    fprintf(f, "each figure: the best of %d timed run%s after a warm-up run\n", r->reps,
            r->reps == 1 ? "" : "s");
}

void kbench_print(FILE *f, const kbench_run *r, const kbench_fig *figs, int nf)
{
    print_header(f, r);
    print_table(f, r, figs, nf);
    print_how(f, r);
}

/* A roofline figure: null where there is none (no GEMM peak), which keeps the JSON valid. */
static json_t *maybe(double v, int have)
{
    return have ? json_real(v) : json_null();
}

int kbench_write_json(const char *path, const kbench_run *r, const kbench_fig *figs, int nf,
                      kerr *err)
{
    const kroof_hw *hw = r->hw;
    const kroof_model *rm = r->rm;
    json_t *root = json_object(), *fa = json_array();
    json_object_set_new(root, "kiln", json_string(KILN_VERSION));
    json_object_set_new(root, "model", json_string(r->model));
    json_object_set_new(root, "dir", json_string(r->dir));
    json_object_set_new(root, "backend", json_string(r->compiled ? "gpu" : "cpu"));
    json_object_set_new(root, "describe", json_string(r->describe));
    json_object_set_new(root, "load_s", json_real(r->load_s));
    json_object_set_new(root, "reps", json_integer(r->reps));
    json_object_set_new(root, "decode_prompt", json_integer(r->context));
    json_object_set_new(root, "new", json_integer(r->new_tokens));
    if (r->compiled) {
        char *d = how_decode(), *p = how_prefill(rm), *t = how_ttft();
        char *sm = xasprintf("sm_%d%d", hw->sm_major, hw->sm_minor);
        int peak = hw->gemm_flops > 0;
        json_t *gpu = json_pack("{s:s, s:s, s:i, s:f, s:i, s:f, s:o}", "name", hw->gpu, "sm", sm,
                                "sms", hw->sms, "memory_bytes", hw->memory, "driver",
                                hw->driver_version, "copy_bytes_per_s", hw->copy_bw,
                                "gemm_bf16_flops", maybe(hw->gemm_flops, peak));
        if (hw->gemm_sustained > 0) {
            json_object_set_new(gpu, "gemm_bf16_sustained_flops", json_real(hw->gemm_sustained));
            json_object_set_new(gpu, "gemm_bf16_sustained_runs",
                                json_integer(hw->gemm_sustained_runs));
        }
        if (hw->gemm_fp8_flops > 0)
            json_object_set_new(gpu, "gemm_fp8_flops", json_real(hw->gemm_fp8_flops));
        json_object_set_new(gpu, "prefill_peak", json_string(rm->fp8_gemm ? "fp8" : "bf16"));
        if (!peak)
            json_object_set_new(gpu, "gemm_not_measured", json_string(hw->gemm_missing));
        json_object_set_new(root, "gpu", gpu);
        free(sm);
        json_object_set_new(
            root, "model_cost",
            json_pack("{s:I, s:I, s:I, s:f, s:f, s:I, s:b}", "weight_bytes_per_step",
                      (json_int_t)rm->weight_bytes, "embedding_table_bytes",
                      (json_int_t)rm->gather_bytes, "kv_bytes_per_token",
                      (json_int_t)rm->kv_bytes_per_token, "matrix_params", rm->matrix_params,
                      "lm_head_params", rm->head_params, "query_width", (json_int_t)rm->q_width,
                      "query_width_assumed", rm->q_width_assumed));
        json_object_set_new(root, "rooflines",
                            json_pack("{s:s, s:s, s:s}", "decode", d, "prefill", p,
                                      "time_to_first_token", t));
        free(d);
        free(p);
        free(t);
    }
    static const char *const kinds[] = {"time_to_first_token", "prefill", "decode"};
    for (int i = 0; i < nf; i++) {
        const kbench_fig *g = &figs[i];
        int ttft = g->kind == KBENCH_TTFT, roof = g->roof > 0;
        json_t *j = json_pack("{s:s, s:i}", "figure", kinds[g->kind],
                              g->kind == KBENCH_DECODE ? "batch" : "tokens", g->n);
        if (g->skip) {
            json_object_set_new(j, "skipped", json_string(g->skip));
        } else {
            json_object_set_new(j, "seconds", json_real(g->seconds));
            json_object_set_new(j, ttft ? "ms" : "tok_s", json_real(g->value));
            if (ttft && i == 0)
                json_object_set_new(j, "first_request_ms", json_real(g->first * 1e3));
            if (r->compiled) {
                json_object_set_new(j, ttft ? "roofline_ms" : "roofline_tok_s",
                                    maybe(g->roof, roof));
                json_object_set_new(j, "ratio", maybe(g->ratio, roof));
                if (ttft && i == 0)
                    json_object_set_new(j, "first_request_ratio", maybe(g->first_ratio, roof));
            }
        }
        json_array_append_new(fa, j);
    }
    json_object_set_new(root, "figures", fa);
    int rc = 0;
    if (json_dump_file(root, path, JSON_INDENT(2)) != 0)
        rc = kerr_add(err, "--json %s: cannot write the file (check that its folder exists and "
                           "is writable)",
                      path);
    json_decref(root);
    return rc;
}
