/* kiln_p2p.h — the state of the one-shot peer-to-peer all-reduce (templates/collective.cuh),
 * shared by the runtime (C, runtime/engine.c fills it) and the kernel (CUDA C++). Passed BY VALUE
 * as a kernel parameter (`kiln_p2p p`), as kiln_step is, so a captured CUDA graph holds it and
 * the kernel reads the peers' pointers from its parameters, not from memory.
 *
 * One process drives every rank's GPU with peer access enabled between each pair, so rank r's
 * kernel can store to and load from every rank's memory. Per rank the runtime allocates:
 *   buf:   the exchange buffer, two halves of `cap` elements (the epoch's parity picks the half);
 *   flags: [KILN_P2P_BLOCKS][KILN_P2P_MAX_RANKS] unsigned, flags[b][q] = the last epoch
 *          rank q's block b announced to this rank (written by rank q);
 *   epoch: [KILN_P2P_BLOCKS] unsigned, the epochs this rank's block b has completed.
 * All three start zeroed. buf[q] and flags[q] are rank q's (buf[rank] and flags[rank] this
 * rank's own); entries from nranks on are zero.
 */
#ifndef KILN_P2P_H
#define KILN_P2P_H

#define KILN_P2P_MAX_RANKS 8   /* the GPUs of one host that a process drives */
#define KILN_P2P_BLOCKS 32    /* the grid of EVERY launch, whatever the count (collective.cuh) */
#define KILN_P2P_THREADS 256   /* threads per block (compiler/lower.c instantiates with it) */
#define KILN_P2P_KERNEL "allreduce_p2p" /* kernel table name k<i>_allreduce_p2p (lower.c) */
#define KILN_P2P_POLLS (1u << 27) /* spins on one flag before the kernel traps (tens of s) */

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KILN_P2P_PTR(t) t *
#else
#include <stdint.h>
#define KILN_P2P_PTR(t) uint64_t
#endif

typedef struct kiln_p2p {
    KILN_P2P_PTR(void) buf[KILN_P2P_MAX_RANKS];       /* rank q's exchange buffer (2 x cap) */
    KILN_P2P_PTR(unsigned) flags[KILN_P2P_MAX_RANKS]; /* rank q's flags */
    KILN_P2P_PTR(unsigned) epoch;                     /* this rank's epoch counters */
    long long cap;                                    /* elements per half of a buffer */
    int rank, nranks;                                 /* 1 <= nranks <= KILN_P2P_MAX_RANKS */
} kiln_p2p;

#define KILN_P2P_SIZE (2 * 8 * KILN_P2P_MAX_RANKS + 8 + 8 + 4 + 4)
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
static_assert(sizeof(kiln_p2p) == KILN_P2P_SIZE, "kiln_p2p: the C and CUDA layouts differ");
#else
_Static_assert(sizeof(kiln_p2p) == KILN_P2P_SIZE, "kiln_p2p: the C and CUDA layouts differ");
#endif

#endif
