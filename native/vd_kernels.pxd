# Cython declarations of the C distance layer (native/vd_simd.h), for every native index module.
# cimport this file (``from vd_kernels cimport *``) and link native/vd_simd.c (setup.py does it).
from libc.stdint cimport int64_t, int32_t

cdef extern from "vd_simd.h" nogil:
    enum:
        VD_L2
        VD_IP
        VD_SCALAR
        VD_NEON
        VD_AVX2
        VD_AVX512
        VD_NLEVELS
    ctypedef float (*vd_dist_fn)(const float *a, const float *b, size_t d) noexcept nogil
    vd_dist_fn vd_l2sq_fn
    vd_dist_fn vd_ip_fn
    int vd_init()
    int vd_set_level(int level)
    int vd_level()
    int vd_supported(int level)
    int vd_compiled(int level)
    const char *vd_level_name(int level)
    float vd_dist(const float *q, const float *x, size_t d, int metric)
    void vd_dist_block(const float *q, const float *base, size_t n, size_t d, int metric, float *out)
    void vd_dist_gather(const float *q, const float *base, const int64_t *rows, size_t nrows,
                        size_t d, int metric, float *out)
    void vd_dist_gather32(const float *q, const float *base, const int32_t *rows, size_t nrows,
                          size_t d, int metric, float *out)
    void vd_pairwise(const float *Q, size_t nq, const float *X, size_t n, size_t d, int metric,
                     float *out)
    void vd_topk(const float *dist, size_t n, size_t k, int64_t *out_idx, float *out_dist)
    ctypedef struct vd_heap:
        float *d
        int64_t *id
        size_t size
        size_t cap
    void vd_heap_push_bounded(vd_heap *h, float d, int64_t id)
    void vd_heap_sort(vd_heap *h)
