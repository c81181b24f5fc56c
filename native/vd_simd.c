/*
 * vecdb distance kernels: scalar, NEON, AVX2+FMA and AVX-512 paths in one translation unit.
 *
 * Each SIMD path is compiled with a per-function target attribute, so the extension itself is
 * built for the baseline ISA (no -march=native) and runs on any x86-64 / arm64; the best path the
 * CPU supports is picked once by vd_init(). Accumulation is float32 with several independent
 * accumulators (hides FMA latency); tails are handled with masks (AVX-512) or a scalar loop.
 */
#include "vd_simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define VD_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
#define VD_ARM 1
#include <arm_neon.h>
#endif

/* ---------------------------------------------------------------- scalar */

static float l2sq_scalar(const float *a, const float *b, size_t d) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        float t0 = a[i] - b[i], t1 = a[i + 1] - b[i + 1];
        float t2 = a[i + 2] - b[i + 2], t3 = a[i + 3] - b[i + 3];
        s0 += t0 * t0; s1 += t1 * t1; s2 += t2 * t2; s3 += t3 * t3;
    }
    for (; i < d; i++) { float t = a[i] - b[i]; s0 += t * t; }
    return (s0 + s1) + (s2 + s3);
}

static float ip_scalar(const float *a, const float *b, size_t d) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    size_t i = 0;
    for (; i + 4 <= d; i += 4) {
        s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3];
    }
    for (; i < d; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* ---------------------------------------------------------------- x86 */
#ifdef VD_X86

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    __m128 s = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, s);
    s = _mm_add_ss(s, sh);
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float l2sq_avx2(const float *a, const float *b,
                                                           size_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        s0 = _mm256_fmadd_ps(t0, t0, s0);
        s1 = _mm256_fmadd_ps(t1, t1, s1);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(t0, t0, s0);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < d; i++) { float t = a[i] - b[i]; s += t * t; }
    return s;
}

__attribute__((target("avx2,fma"))) static float ip_avx2(const float *a, const float *b, size_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= d; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < d; i++) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx512f"))) static float l2sq_avx512(const float *a, const float *b,
                                                            size_t d) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        s0 = _mm512_fmadd_ps(t0, t0, s0);
        s1 = _mm512_fmadd_ps(t1, t1, s1);
    }
    for (; i + 16 <= d; i += 16) {
        __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(t0, t0, s0);
    }
    if (i < d) { /* masked tail: no scalar loop, no over-read */
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1u);
        __m512 t0 = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(t0, t0, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

__attribute__((target("avx512f"))) static float ip_avx512(const float *a, const float *b,
                                                          size_t d) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= d; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < d) {
        __mmask16 m = (__mmask16)((1u << (d - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* Four rows at once: the query is loaded once per step and four accumulator chains run in
 * parallel, which hides FMA latency and amortises the horizontal sums (one-to-many and gather). */
#define VD_DEF4_AVX512(NAME, STEP)                                                              \
    __attribute__((target("avx512f"))) static void NAME(const float *q, const float *x0,      \
                                                        const float *x1, const float *x2,      \
                                                        const float *x3, size_t d, float *o) { \
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();                             \
        __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();                             \
        size_t i = 0;                                                                          \
        for (; i + 16 <= d; i += 16) {                                                         \
            __m512 a = _mm512_loadu_ps(q + i);                                                 \
            STEP(s0, a, _mm512_loadu_ps(x0 + i)); STEP(s1, a, _mm512_loadu_ps(x1 + i));        \
            STEP(s2, a, _mm512_loadu_ps(x2 + i)); STEP(s3, a, _mm512_loadu_ps(x3 + i));        \
        }                                                                                      \
        if (i < d) {                                                                           \
            __mmask16 m = (__mmask16)((1u << (d - i)) - 1u);                                   \
            __m512 a = _mm512_maskz_loadu_ps(m, q + i);                                        \
            STEP(s0, a, _mm512_maskz_loadu_ps(m, x0 + i));                                     \
            STEP(s1, a, _mm512_maskz_loadu_ps(m, x1 + i));                                     \
            STEP(s2, a, _mm512_maskz_loadu_ps(m, x2 + i));                                     \
            STEP(s3, a, _mm512_maskz_loadu_ps(m, x3 + i));                                     \
        }                                                                                      \
        o[0] = _mm512_reduce_add_ps(s0); o[1] = _mm512_reduce_add_ps(s1);                      \
        o[2] = _mm512_reduce_add_ps(s2); o[3] = _mm512_reduce_add_ps(s3);                      \
    }
#define VD_L2STEP512(s, a, b) do { __m512 t_ = _mm512_sub_ps(a, b); s = _mm512_fmadd_ps(t_, t_, s); } while (0)
#define VD_IPSTEP512(s, a, b) do { s = _mm512_fmadd_ps(a, b, s); } while (0)
VD_DEF4_AVX512(l2sq4_avx512, VD_L2STEP512)
VD_DEF4_AVX512(ip4_avx512, VD_IPSTEP512)

#define VD_DEF4_AVX2(NAME, STEP, SCALAR)                                                       \
    __attribute__((target("avx2,fma"))) static void NAME(const float *q, const float *x0,     \
                                                         const float *x1, const float *x2,     \
                                                         const float *x3, size_t d, float *o) {\
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();                             \
        __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();                             \
        size_t i = 0;                                                                          \
        for (; i + 8 <= d; i += 8) {                                                           \
            __m256 a = _mm256_loadu_ps(q + i);                                                 \
            STEP(s0, a, _mm256_loadu_ps(x0 + i)); STEP(s1, a, _mm256_loadu_ps(x1 + i));        \
            STEP(s2, a, _mm256_loadu_ps(x2 + i)); STEP(s3, a, _mm256_loadu_ps(x3 + i));        \
        }                                                                                      \
        o[0] = hsum256(s0); o[1] = hsum256(s1); o[2] = hsum256(s2); o[3] = hsum256(s3);        \
        for (; i < d; i++) {                                                                   \
            o[0] += SCALAR(q[i], x0[i]); o[1] += SCALAR(q[i], x1[i]);                          \
            o[2] += SCALAR(q[i], x2[i]); o[3] += SCALAR(q[i], x3[i]);                          \
        }                                                                                      \
    }
#define VD_L2STEP256(s, a, b) do { __m256 t_ = _mm256_sub_ps(a, b); s = _mm256_fmadd_ps(t_, t_, s); } while (0)
#define VD_IPSTEP256(s, a, b) do { s = _mm256_fmadd_ps(a, b, s); } while (0)
#define VD_L2S(a, b) (((a) - (b)) * ((a) - (b)))
#define VD_IPS(a, b) ((a) * (b))
VD_DEF4_AVX2(l2sq4_avx2, VD_L2STEP256, VD_L2S)
VD_DEF4_AVX2(ip4_avx2, VD_IPSTEP256, VD_IPS)
#endif

/* ---------------------------------------------------------------- arm64 */
#ifdef VD_ARM
static float l2sq_neon(const float *a, const float *b, size_t d) {
    float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        float32x4_t t0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        float32x4_t t1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s0 = vfmaq_f32(s0, t0, t0);
        s1 = vfmaq_f32(s1, t1, t1);
    }
    for (; i + 4 <= d; i += 4) {
        float32x4_t t0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        s0 = vfmaq_f32(s0, t0, t0);
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < d; i++) { float t = a[i] - b[i]; s += t * t; }
    return s;
}

static float ip_neon(const float *a, const float *b, size_t d) {
    float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
    size_t i = 0;
    for (; i + 8 <= d; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    for (; i + 4 <= d; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < d; i++) s += a[i] * b[i];
    return s;
}
#endif

/* ---------------------------------------------------------------- dispatch */

typedef void (*vd_dist4_fn)(const float *q, const float *x0, const float *x1, const float *x2,
                            const float *x3, size_t d, float *o);

static void l2sq4_generic(const float *q, const float *x0, const float *x1, const float *x2,
                          const float *x3, size_t d, float *o) {
    o[0] = vd_l2sq_fn(q, x0, d); o[1] = vd_l2sq_fn(q, x1, d);
    o[2] = vd_l2sq_fn(q, x2, d); o[3] = vd_l2sq_fn(q, x3, d);
}
static void ip4_generic(const float *q, const float *x0, const float *x1, const float *x2,
                        const float *x3, size_t d, float *o) {
    o[0] = vd_ip_fn(q, x0, d); o[1] = vd_ip_fn(q, x1, d);
    o[2] = vd_ip_fn(q, x2, d); o[3] = vd_ip_fn(q, x3, d);
}

vd_dist_fn vd_l2sq_fn = l2sq_scalar;
vd_dist_fn vd_ip_fn = ip_scalar;
static vd_dist4_fn vd_l2sq4_fn = l2sq4_generic;
static vd_dist4_fn vd_ip4_fn = ip4_generic;
static int vd_cur_level = VD_SCALAR;
static const char *vd_names[VD_NLEVELS] = {"scalar", "neon", "avx2", "avx512"};

const char *vd_level_name(int level) {
    return (level >= 0 && level < VD_NLEVELS) ? vd_names[level] : "unknown";
}

int vd_compiled(int level) {
    switch (level) {
    case VD_SCALAR: return 1;
#ifdef VD_X86
    case VD_AVX2: return 1;
    case VD_AVX512: return 1;
#endif
#ifdef VD_ARM
    case VD_NEON: return 1;
#endif
    default: return 0;
    }
}

int vd_supported(int level) {
    if (!vd_compiled(level)) return 0;
    switch (level) {
    case VD_SCALAR: return 1;
#ifdef VD_X86
    case VD_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case VD_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
#endif
#ifdef VD_ARM
    case VD_NEON: return 1; /* Advanced SIMD is mandatory on AArch64 */
#endif
    default: return 0;
    }
}

int vd_set_level(int level) {
    if (!vd_supported(level)) return -1;
    switch (level) {
#ifdef VD_X86
    case VD_AVX512:
        vd_l2sq_fn = l2sq_avx512; vd_ip_fn = ip_avx512;
        vd_l2sq4_fn = l2sq4_avx512; vd_ip4_fn = ip4_avx512;
        break;
    case VD_AVX2:
        vd_l2sq_fn = l2sq_avx2; vd_ip_fn = ip_avx2;
        vd_l2sq4_fn = l2sq4_avx2; vd_ip4_fn = ip4_avx2;
        break;
#endif
#ifdef VD_ARM
    case VD_NEON:
        vd_l2sq_fn = l2sq_neon; vd_ip_fn = ip_neon;
        vd_l2sq4_fn = l2sq4_generic; vd_ip4_fn = ip4_generic;
        break;
#endif
    default:
        vd_l2sq_fn = l2sq_scalar; vd_ip_fn = ip_scalar;
        vd_l2sq4_fn = l2sq4_generic; vd_ip4_fn = ip4_generic;
        level = VD_SCALAR;
        break;
    }
    vd_cur_level = level;
    return 0;
}

int vd_level(void) { return vd_cur_level; }

int vd_init(void) {
    int best = VD_SCALAR;
    for (int l = VD_NLEVELS - 1; l >= 0; l--)
        if (vd_supported(l)) { best = l; break; }
    const char *env = getenv("VECDB_SIMD");
    if (env && *env) {
        for (int l = 0; l < VD_NLEVELS; l++)
            if (strcmp(env, vd_names[l]) == 0 && vd_supported(l) && l <= best) { best = l; break; }
    }
    vd_set_level(best);
    return best;
}

/* ---------------------------------------------------------------- block kernels */

void vd_dist_block(const float *q, const float *base, size_t n, size_t d, int metric, float *out) {
    vd_dist4_fn f4 = metric == VD_L2 ? vd_l2sq4_fn : vd_ip4_fn;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *x = base + i * d;
        f4(q, x, x + d, x + 2 * d, x + 3 * d, d, out + i);
    }
    for (; i < n; i++) out[i] = metric == VD_L2 ? vd_l2sq_fn(q, base + i * d, d) : vd_ip_fn(q, base + i * d, d);
    if (metric != VD_L2)
        for (i = 0; i < n; i++) out[i] = -out[i];
}

/* Prefetch every cache line of a row (a 128-d row spans 8 lines; one prefetch is not enough). */
static inline void vd_prefetch_row(const float *p, size_t d) {
    const char *c = (const char *)p;
    for (size_t off = 0; off < d * sizeof(float); off += 64) __builtin_prefetch(c + off);
}

#define VD_GATHER_BODY(ROWT)                                                                    \
    vd_dist4_fn f4 = metric == VD_L2 ? vd_l2sq4_fn : vd_ip4_fn;                                 \
    size_t i = 0;                                                                              \
    for (size_t j = 0; j < 4 && j < nrows; j++) vd_prefetch_row(base + (size_t)rows[j] * d, d); \
    for (; i + 4 <= nrows; i += 4) {                                                           \
        for (size_t j = i + 4; j < i + 8 && j < nrows; j++)                                    \
            vd_prefetch_row(base + (size_t)rows[j] * d, d);                                    \
        f4(q, base + (size_t)rows[i] * d, base + (size_t)rows[i + 1] * d,                       \
           base + (size_t)rows[i + 2] * d, base + (size_t)rows[i + 3] * d, d, out + i);         \
    }                                                                                          \
    for (; i < nrows; i++)                                                                     \
        out[i] = metric == VD_L2 ? vd_l2sq_fn(q, base + (size_t)rows[i] * d, d)                 \
                                 : vd_ip_fn(q, base + (size_t)rows[i] * d, d);                  \
    if (metric != VD_L2)                                                                       \
        for (i = 0; i < nrows; i++) out[i] = -out[i];

void vd_dist_gather(const float *q, const float *base, const int64_t *rows, size_t nrows, size_t d,
                    int metric, float *out) {
    VD_GATHER_BODY(int64_t)
}

void vd_dist_gather32(const float *q, const float *base, const int32_t *rows, size_t nrows,
                      size_t d, int metric, float *out) {
    VD_GATHER_BODY(int32_t)
}

void vd_pairwise(const float *Q, size_t nq, const float *X, size_t n, size_t d, int metric,
                 float *out) {
    /* Tile X so a block of rows stays in L2 while every query passes over it. */
    size_t bytes_per_row = d * sizeof(float);
    size_t tile = bytes_per_row ? (256 * 1024) / bytes_per_row : n;
    if (tile < 16) tile = 16;
    for (size_t j0 = 0; j0 < n; j0 += tile) {
        size_t j1 = j0 + tile < n ? j0 + tile : n;
        for (size_t i = 0; i < nq; i++)
            vd_dist_block(Q + i * d, X + j0 * d, j1 - j0, d, metric, out + i * n + j0);
    }
}

/* ---------------------------------------------------------------- heap / top-k */

static inline int vd_worse(float da, int64_t ia, float db, int64_t ib) {
    return da > db || (da == db && ia > ib);
}

void vd_heap_push_bounded(vd_heap *h, float d, int64_t id) {
    if (h->cap == 0) return;
    if (h->size < h->cap) {
        size_t i = h->size++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!vd_worse(d, id, h->d[p], h->id[p])) break;
            h->d[i] = h->d[p]; h->id[i] = h->id[p];
            i = p;
        }
        h->d[i] = d; h->id[i] = id;
        return;
    }
    if (!vd_worse(h->d[0], h->id[0], d, id)) return; /* not better than the current worst */
    size_t i = 0, n = h->size;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        float md = d; int64_t mid = id;
        if (l < n && vd_worse(h->d[l], h->id[l], md, mid)) { m = l; md = h->d[l]; mid = h->id[l]; }
        if (r < n && vd_worse(h->d[r], h->id[r], md, mid)) { m = r; }
        if (m == i) break;
        h->d[i] = h->d[m]; h->id[i] = h->id[m];
        i = m;
    }
    h->d[i] = d; h->id[i] = id;
}

void vd_heap_sort(vd_heap *h) {
    /* Pop the worst repeatedly into the tail: ascending order in place. */
    size_t n = h->size;
    while (n > 1) {
        float td = h->d[0]; int64_t tid = h->id[0];
        n--;
        float d = h->d[n]; int64_t id = h->id[n];
        h->d[n] = td; h->id[n] = tid;
        size_t i = 0;
        for (;;) {
            size_t l = 2 * i + 1, r = l + 1, m = i;
            float md = d; int64_t mid = id;
            if (l < n && vd_worse(h->d[l], h->id[l], md, mid)) { m = l; md = h->d[l]; mid = h->id[l]; }
            if (r < n && vd_worse(h->d[r], h->id[r], md, mid)) { m = r; }
            if (m == i) break;
            h->d[i] = h->d[m]; h->id[i] = h->id[m];
            i = m;
        }
        h->d[i] = d; h->id[i] = id;
    }
}

void vd_topk(const float *dist, size_t n, size_t k, int64_t *out_idx, float *out_dist) {
    vd_heap h = {out_dist, out_idx, 0, k};
    for (size_t i = 0; i < n; i++) {
        float d = dist[i];
        if (d != d) continue; /* NaN never ranks */
        vd_heap_push_bounded(&h, d, (int64_t)i);
    }
    size_t got = h.size;
    vd_heap_sort(&h);
    for (size_t i = got; i < k; i++) { out_idx[i] = -1; out_dist[i] = INFINITY; }
}
