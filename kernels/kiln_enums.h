/* kiln_enums.h — the enums whose values cross from the compiler to the kernels. An activation or
 * a pool mode reaches a kernel as a template argument (compiler/lower.c prints the C value; the
 * template tests it by name), so the compiler (compiler/graph.h's kg_act and kg_pool_mode), the
 * kernels (kernels/common.cuh's act<>, templates/elementwise.cuh's pool) and kiln-ktest take
 * them from this one list. C and CUDA both include it. The archspecs name them by string
 * (compiler/spec.c: "silu", "gelu", ...; pooling "mean", "cls", "last").
 */
#ifndef KILN_ENUMS_H
#define KILN_ENUMS_H

enum kiln_act { KILN_ACT_SILU, KILN_ACT_GELU, KILN_ACT_GELU_TANH, KILN_ACT_RELU };
enum kiln_pool { KILN_POOL_MEAN, KILN_POOL_CLS, KILN_POOL_LAST };

#endif
