/*
 * vecdb HNSW core (native/_hnsw_impl.c): graph, insert, delete-repair and the search loops.
 *
 * The graph is held in flat arrays indexed by slot (int32 ids):
 *   level-0 links  l0[slot * (M0 + 1)]      = [count, id_0 .. id_{M0-1}]     (M0 = 2M)
 *   upper links    up[slot][(l-1)*(M+1)]     = [count, id_0 .. id_{M-1}]      for l = 1..level
 *   vectors        vec[slot * dim]            (float32, normalised for cosine by the caller)
 *   state          0 empty, 1 live, 2 deleted (a deleted node still routes, is never returned)
 * Locking: one rwlock "grow" (readers: add/search batches; writer: capacity growth, removals),
 * striped per-node mutexes for links during concurrent inserts, one mutex for the entry point.
 * Every function is callable without the GIL.
 */
#ifndef VD_HNSW_IMPL_H
#define VD_HNSW_IMPL_H
#include <stdint.h>

typedef struct hn_t hn_t;

/* Search strategies (per query batch), resolved by the Python planner. HN_LOCAL decides per
 * query: the descent continues greedily on level 0, then the plain bitmap walk when the share of
 * allowed nodes among the node reached, its level-0 neighbours and theirs (counted with repeats)
 * is at least local_min, else the seeded two-hop walk. */
enum { HN_GRAPH = 0, HN_TWO_HOP = 1, HN_LOCAL = 2 };

hn_t *hn_new(int32_t dim, int32_t metric, int32_t M, int32_t efc, int32_t extend, int32_t keep);
void hn_free(hn_t *h);
int hn_reserve(hn_t *h, int64_t cap);           /* grow capacity (write lock); 0 ok, -1 OOM */
int64_t hn_capacity(const hn_t *h);
/* Insert rows X[i] at slots[i] with levels[i] for i taken from *next (atomic) until n: several
 * threads may call this on the same batch. Slots must be distinct and < capacity, and not live
 * (the caller removes a live slot first). Returns 0, or -1 on allocation failure. */
int hn_add_batch(hn_t *h, const float *X, const int64_t *slots, const int32_t *levels, int64_t n,
                 int64_t *next);
/* Mark slots deleted and repair links around them (write lock). Returns how many were live. */
int64_t hn_remove(hn_t *h, const int64_t *slots, int64_t n);
/* k-NN of queries Q[i] for i taken from *next until nq. bitmap (nbytes) restricts results to
 * allowed slots (NULL: all live). mode: HN_GRAPH, HN_TWO_HOP or HN_LOCAL. A two-hop walk with
 * `seeds` (a sample of the tenant's members) scores them first and starts from the allowed ones
 * as well as from the descent's end point. A query whose walk found fewer than k results falls
 * back to an exact scan of `members` (if given). stats[0] += distance computations, stats[1] +=
 * exact fallbacks, stats[2] += seeded two-hop walks. */
int hn_search_batch(hn_t *h, const float *Q, int64_t nq, int32_t k, int32_t ef,
                    const uint8_t *bitmap, int64_t nbytes, int32_t mode, const int64_t *members,
                    int64_t nmembers, const int64_t *seeds, int64_t nseeds, float local_min,
                    int64_t *out_id, float *out_d, int64_t *next, int64_t *stats);
/* Exact k-NN of queries over rows (live slots), k padded with (-1, inf). */
void hn_exact(hn_t *h, const float *Q, int64_t nq, int32_t k, const int64_t *rows, int64_t nrows,
              int64_t *out_id, float *out_d);

/* Batched exact scan over GEMM blocks (see _hnsw_impl.c): merge one block of inner products
 * S [nq, nb] of rows (xn: their squared norms, l2) into bounded heaps hd/hi [nq, k], then sort
 * them (k <= 1024). */
void hn_topk_block(const float *S, int64_t nq, int64_t nb, const int64_t *rows, const float *xn,
                   int32_t metric, int32_t k, float *hd, int64_t *hi);
void hn_topk_finish(int64_t nq, int32_t k, const float *qn, int32_t metric, float *hd,
                    int64_t *hi);

/* Copy the vectors of rows (< capacity) to out [n, dim] (read lock). */
void hn_gather(hn_t *h, const int64_t *rows, int64_t n, float *out);

/* Introspection / persistence. */
int64_t hn_memory(const hn_t *h);
int32_t hn_entry(const hn_t *h);
int32_t hn_maxlevel(const hn_t *h);
int32_t hn_level(const hn_t *h, int64_t s);   /* -1 if empty */
int32_t hn_state(const hn_t *h, int64_t s);
float *hn_vector(hn_t *h, int64_t s);
int32_t *hn_links(hn_t *h, int64_t s, int32_t level); /* [count, ids...] */
/* Restore a node exactly (load): vector, level, state; links written via hn_links after. */
int hn_restore_node(hn_t *h, int64_t s, const float *v, int32_t level, int32_t state);
void hn_set_entry(hn_t *h, int32_t entry, int32_t maxlevel);
#endif
