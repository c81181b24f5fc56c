/*
 * vecdb distance kernels: the one C layer every index calls.
 *
 * Conventions (shared by every backend and index):
 *   metric VD_L2 -> squared Euclidean distance
 *   metric VD_IP -> negative inner product (so "smaller = closer" everywhere)
 * Cosine is IP on vectors normalised once at the boundary (Python side).
 *
 * SIMD level is chosen once at init by CPU feature detection and can be forced
 * lower with the VECDB_SIMD environment variable (avx512|avx2|neon|scalar).
 * Every hot function is safe to call without the GIL.
 */
#ifndef VD_SIMD_H
#define VD_SIMD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { VD_L2 = 0, VD_IP = 1 };
enum { VD_SCALAR = 0, VD_NEON = 1, VD_AVX2 = 2, VD_AVX512 = 3, VD_NLEVELS = 4 };

typedef float (*vd_dist_fn)(const float *a, const float *b, size_t d);

/* Dispatched pair distances (set by vd_init / vd_set_level). */
extern vd_dist_fn vd_l2sq_fn;
extern vd_dist_fn vd_ip_fn; /* returns the inner product itself (not negated) */

int vd_init(void);                 /* detect + apply VECDB_SIMD; returns level in use */
int vd_set_level(int level);       /* 0 ok, -1 if not compiled in / not supported by this CPU */
int vd_level(void);
int vd_supported(int level);       /* compiled in AND supported by this CPU */
int vd_compiled(int level);        /* compiled into this build */
const char *vd_level_name(int level);

/* Distance of q to one row, in the metric convention above. */
static inline float vd_dist(const float *q, const float *x, size_t d, int metric) {
    return metric == VD_L2 ? vd_l2sq_fn(q, x, d) : -vd_ip_fn(q, x, d);
}

/* One-to-many: out[i] = dist(q, base[i]) for a contiguous n x d block. */
void vd_dist_block(const float *q, const float *base, size_t n, size_t d, int metric, float *out);
/* Gather: out[i] = dist(q, base[rows[i]]) (graph-walk access pattern). */
void vd_dist_gather(const float *q, const float *base, const int64_t *rows, size_t nrows,
                    size_t d, int metric, float *out);
void vd_dist_gather32(const float *q, const float *base, const int32_t *rows, size_t nrows,
                      size_t d, int metric, float *out);
/* Many-to-many: out[i*n + j] = dist(Q[i], X[j]). Blocked for cache reuse. */
void vd_pairwise(const float *Q, size_t nq, const float *X, size_t n, size_t d, int metric,
                 float *out);
/* Top-k smallest of dist[0..n) (ties by index), sorted ascending. Writes min(k, n)
 * entries and pads the rest with (-1, +inf). Rows with dist = NaN are skipped. */
void vd_topk(const float *dist, size_t n, size_t k, int64_t *out_idx, float *out_dist);

/* Bounded max-heap used by top-k selection and by index search loops. */
typedef struct {
    float *d;
    int64_t *id;
    size_t size, cap;
} vd_heap;
void vd_heap_push_bounded(vd_heap *h, float d, int64_t id); /* keeps the cap smallest */
void vd_heap_sort(vd_heap *h); /* in place: ascending by (d, id); heap invalid afterwards */

#ifdef __cplusplus
}
#endif
#endif
