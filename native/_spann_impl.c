/* SPANN posting scan: see _spann_impl.h. */
#include "_spann_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vd_simd.h"

/* Is ``slot`` already in the heap? k is small (the caller's top-k), and only records that beat
 * the current k-th distance reach this test, so a linear pass is cheaper than a hash set. */
static int sp_heap_has(const vd_heap *h, int64_t slot) {
    for (size_t i = 0; i < h->size; i++)
        if (h->id[i] == slot) return 1;
    return 0;
}

/* ---- half floats: widening to float32 ---- */

/* Exact IEEE binary16 -> binary32 (normals, subnormals, zeros, inf, NaN). */
static float sp_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void sp_widen_scalar(const uint8_t *src, float *dst, size_t d) {
    for (size_t i = 0; i < d; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = sp_half_to_float(h);
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SP_X86 1
static int sp_has_avx2_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif

static int sp_scalar_only = 0; /* tests: exercise the portable path on an F16C machine */

void sp_force_scalar_widen(int on) { sp_scalar_only = on; }

/* ---- per-record distance functions, one per record format, chosen once per scan ----
 *
 * ``sp_query`` carries what a record's distance needs besides the record: the query, and for SQ8
 * the query folded into the quantizer's space (see sp_sq8_prepare), so a record costs one
 * uint8->float conversion and one FMA per dimension. */
typedef struct {
    const float *q; /* the query (float32, dim) */
    const float *a; /* SQ8: per-dimension query terms */
    const float *w; /* SQ8 l2: per-dimension weights scale^2 */
    float c;        /* SQ8: constant term */
    size_t dim;
    float *buf;     /* scalar float16 path: one widened vector */
} sp_query;

typedef float (*sp_rec_fn)(const sp_query *s, const uint8_t *x);

static float sp_f32_l2(const sp_query *s, const uint8_t *x) {
    /* the vector starts 12 bytes in: 4-byte aligned, which the SIMD loads accept */
    return vd_l2sq_fn(s->q, (const float *)(const void *)x, s->dim);
}
static float sp_f32_ip(const sp_query *s, const uint8_t *x) {
    return -vd_ip_fn(s->q, (const float *)(const void *)x, s->dim);
}
static float sp_f16_l2_scalar(const sp_query *s, const uint8_t *x) {
    sp_widen_scalar(x, s->buf, s->dim);
    return vd_l2sq_fn(s->q, s->buf, s->dim);
}
static float sp_f16_ip_scalar(const sp_query *s, const uint8_t *x) {
    sp_widen_scalar(x, s->buf, s->dim);
    return -vd_ip_fn(s->q, s->buf, s->dim);
}
static float sp_sq8_l2_scalar(const sp_query *s, const uint8_t *x) {
    float acc = 0.f;
    for (size_t i = 0; i < s->dim; i++) {
        float t = s->a[i] - (float)x[i];
        acc += s->w[i] * t * t;
    }
    return acc + s->c;
}
static float sp_sq8_ip_scalar(const sp_query *s, const uint8_t *x) {
    float acc = 0.f;
    for (size_t i = 0; i < s->dim; i++) acc += s->a[i] * (float)x[i];
    return -(acc + s->c);
}

#ifdef SP_X86
/* Fused kernels: the record's float16 / uint8 values are widened in registers (F16C,
 * AVX2) and consumed by the FMA at once (no round trip through a buffer). The tails stay in
 * the same function, so the compiler's vzeroupper at its return covers them. */
__attribute__((target("avx2,fma,f16c"))) static inline float sp_hsum256(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}
__attribute__((target("avx2,fma,f16c"))) static float sp_f16_l2_avx2(const sp_query *s,
                                                                       const uint8_t *x) {
    const float *q = s->q;
    size_t d = s->dim, i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(x + 2 * i)));
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(q + i), v);
        acc = _mm256_fmadd_ps(t, t, acc);
    }
    float r = sp_hsum256(acc);
    for (; i < d; i++) {
        uint16_t h;
        memcpy(&h, x + 2 * i, sizeof h);
        float t = q[i] - _cvtsh_ss(h);
        r += t * t;
    }
    return r;
}
__attribute__((target("avx2,fma,f16c"))) static float sp_f16_ip_avx2(const sp_query *s,
                                                                       const uint8_t *x) {
    const float *q = s->q;
    size_t d = s->dim, i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(x + 2 * i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), v, acc);
    }
    float r = sp_hsum256(acc);
    for (; i < d; i++) {
        uint16_t h;
        memcpy(&h, x + 2 * i, sizeof h);
        r += q[i] * _cvtsh_ss(h);
    }
    return -r;
}
__attribute__((target("avx2,fma,f16c"))) static inline __m256 sp_u8x8(const uint8_t *p) {
    long long v;
    memcpy(&v, p, sizeof v);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v)));
}
__attribute__((target("avx2,fma,f16c"))) static float sp_sq8_l2_avx2(const sp_query *s,
                                                                       const uint8_t *x) {
    size_t d = s->dim, i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) {
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(s->a + i), sp_u8x8(x + i));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(t, t), _mm256_loadu_ps(s->w + i), acc);
    }
    float r = sp_hsum256(acc);
    for (; i < d; i++) {
        float t = s->a[i] - (float)x[i];
        r += s->w[i] * t * t;
    }
    return r + s->c;
}
__attribute__((target("avx2,fma,f16c"))) static float sp_sq8_ip_avx2(const sp_query *s,
                                                                       const uint8_t *x) {
    size_t d = s->dim, i = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(s->a + i), sp_u8x8(x + i), acc);
    float r = sp_hsum256(acc);
    for (; i < d; i++) r += s->a[i] * (float)x[i];
    return -(r + s->c);
}
#endif

/* The record distance function for a format and metric (fused SIMD where the CPU and the vd
 * level allow it: VECDB_SIMD=scalar also turns these off). */
static sp_rec_fn sp_pick(int fmt, int32_t metric) {
    int ip = metric == VD_IP;
    if (fmt == SP_F32) return ip ? sp_f32_ip : sp_f32_l2;
#ifdef SP_X86
    if (!sp_scalar_only && vd_level() >= VD_AVX2 && sp_has_avx2_f16c()) {
        if (fmt == SP_F16) return ip ? sp_f16_ip_avx2 : sp_f16_l2_avx2;
        return ip ? sp_sq8_ip_avx2 : sp_sq8_l2_avx2;
    }
#endif
    if (fmt == SP_F16) return ip ? sp_f16_ip_scalar : sp_f16_l2_scalar;
    return ip ? sp_sq8_ip_scalar : sp_sq8_l2_scalar;
}

size_t sp_record_bytes(int fmt, int32_t dim) {
    return SP_HEADER + (fmt == SP_F32 ? 4 : fmt == SP_F16 ? 2 : 1) * (size_t)dim;
}

void sp_sq8_prepare(const float *q, const float *scale, const float *offset, int32_t dim,
                    int32_t metric, float *a, float *w, float *c) {
    double cc = 0.0;
    for (int32_t i = 0; i < dim; i++) {
        if (metric == VD_IP) { /* q.x = q.offset + sum (q*scale) code */
            a[i] = q[i] * scale[i];
            w[i] = 0.f;
            cc += (double)q[i] * offset[i];
        } else if (scale[i] > 0.f) { /* |q-x|^2 = sum scale^2 ((q-offset)/scale - code)^2 */
            a[i] = (q[i] - offset[i]) / scale[i];
            w[i] = scale[i] * scale[i];
        } else { /* a constant dimension: its term does not depend on the code */
            a[i] = 0.f;
            w[i] = 0.f;
            cc += (double)(q[i] - offset[i]) * (q[i] - offset[i]);
        }
    }
    *c = (float)cc;
}

int64_t sp_scan_fmt(const float *q, int32_t dim, int32_t metric, int fmt, const float *sq_scale,
                    const float *sq_offset, const uint8_t *const *blocks, const int64_t *lens,
                    int64_t nblocks, const uint8_t *live, const uint8_t *ver, int64_t nslots,
                    const uint8_t *bitmap, int64_t bm_bytes, int32_t k, int64_t *out_slot,
                    float *out_dist, int64_t *stats) {
    const size_t rec = sp_record_bytes(fmt, dim);
    vd_heap h = {out_dist, out_slot, 0, (size_t)(k > 0 ? k : 0)};
    sp_query s = {q, NULL, NULL, 0.f, (size_t)dim, NULL};
    float *scratch = NULL;
    int64_t scanned = 0, passed = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        if (lens[b] % (int64_t)rec) return -1;
    }
    if (fmt != SP_F32) {
        scratch = (float *)malloc(sizeof(float) * 2 * (size_t)(dim > 0 ? dim : 1));
        if (scratch == NULL) return -2;
        s.buf = scratch;
        if (fmt == SP_SQ8) {
            float c;
            sp_sq8_prepare(q, sq_scale, sq_offset, dim, metric, scratch, scratch + dim, &c);
            s.a = scratch;
            s.w = scratch + dim;
            s.c = c;
        }
    }
    sp_rec_fn fn = sp_pick(fmt, metric);
    for (int64_t b = 0; b < nblocks; b++) {
        const uint8_t *p = blocks[b];
        if (p == NULL) continue;
        int64_t n = lens[b] / (int64_t)rec;
        scanned += n;
        for (int64_t r = 0; r < n; r++, p += rec) {
            int64_t slot;
            memcpy(&slot, p, sizeof slot); /* records are packed: no alignment promise */
            if (slot < 0 || slot >= nslots || !live[slot] || ver[slot] != p[8]) continue;
            if (bitmap != NULL &&
                ((slot >> 3) >= bm_bytes || !((bitmap[slot >> 3] >> (slot & 7)) & 1)))
                continue;
            passed++;
            float d = fn(&s, p + SP_HEADER);
            if (d != d) continue; /* NaN never ranks */
            if (h.size == h.cap && !(d < h.d[0] || (d == h.d[0] && slot < h.id[0]))) continue;
            if (sp_heap_has(&h, slot)) continue; /* a replica of a vector already kept */
            vd_heap_push_bounded(&h, d, slot);
        }
    }
    free(scratch);
    int64_t got = (int64_t)h.size;
    vd_heap_sort(&h);
    for (int64_t i = got; i < k; i++) { out_slot[i] = -1; out_dist[i] = INFINITY; }
    if (stats != NULL) { stats[0] = scanned; stats[1] = passed; }
    return got;
}

int64_t sp_scan(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                int64_t *out_slot, float *out_dist, int64_t *stats) {
    return sp_scan_fmt(q, dim, metric, SP_F32, NULL, NULL, blocks, lens, nblocks, live, ver,
                       nslots, bitmap, bm_bytes, k, out_slot, out_dist, stats);
}

int64_t sp_scan_half(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                     const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                     int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                     int64_t *out_slot, float *out_dist, int64_t *stats) {
    return sp_scan_fmt(q, dim, metric, SP_F16, NULL, NULL, blocks, lens, nblocks, live, ver,
                       nslots, bitmap, bm_bytes, k, out_slot, out_dist, stats);
}

/* The closeness rule of replicas: d <= (1+eps) * d0, on 2+2d for negated inner products (unit
 * vectors: the squared L2 distance), computed in float like the numpy version. */
static int sp_within(float d, float d0, float f, int32_t metric) {
    if (metric == VD_IP) {
        d = 2.f + 2.f * d;
        d0 = 2.f + 2.f * d0;
        if (d < 0.f) d = 0.f;
        if (d0 < 0.f) d0 = 0.f;
    }
    return d <= f * d0;
}

void sp_rng_select(const int64_t *cand, const float *cdist, const float *H, int64_t n, int32_t C,
                   int32_t dim, int32_t metric, int32_t replicas, float eps1, uint8_t *keep) {
    const float f = eps1;  /* the caller passes 1+eps1 rounded to float */
    int32_t chosen[256];
    int32_t cap = replicas < 256 ? replicas : 256;
    for (int64_t i = 0; i < n; i++) {
        const int64_t *c = cand + i * C;
        const float *d = cdist + i * C;
        const float *h = H + (size_t)i * C * dim;
        uint8_t *k = keep + i * C;
        memset(k, 0, (size_t)C);
        int32_t count = 0;
        for (int32_t j = 0; j < C && count < cap; j++) {
            if (c[j] < 0 || !sp_within(d[j], d[0], f, metric)) continue;
            int blocked = 0;
            for (int32_t t = 0; t < count && !blocked; t++) {
                /* c_i covers c_j when the heads are closer to each other than x is to c_j */
                blocked = vd_dist(h + (size_t)chosen[t] * dim, h + (size_t)j * dim, (size_t)dim,
                                  metric) < d[j];
            }
            if (blocked) continue;
            k[j] = 1;
            chosen[count++] = j;
        }
    }
}

int64_t sp_rng_select_heads(const int64_t *cand, const float *cdist, const float *H, int64_t m,
                            int64_t n, int32_t C, int32_t dim, int32_t metric, int32_t replicas,
                            float eps1, int64_t *out, uint8_t *keep) {
    const float f = eps1; /* the caller passes 1+eps1 rounded to float */
    const int32_t R = replicas > 0 ? replicas : 0;
    for (int64_t i = 0; i < (int64_t)n * C; i++)
        if (cand[i] >= m) return -1;
    for (int64_t i = 0; i < n; i++) {
        const int64_t *c = cand + i * C;
        const float *d = cdist + i * C;
        int64_t *o = out + i * R; /* the chosen head ids so far, also the blocking set */
        uint8_t *k = keep != NULL ? keep + i * C : NULL;
        if (k != NULL) memset(k, 0, (size_t)C);
        int32_t count = 0;
        for (int32_t j = 0; j < C && count < R; j++) {
            if (c[j] < 0 || !sp_within(d[j], d[0], f, metric)) continue;
            const float *hj = H + (size_t)c[j] * dim;
            int blocked = 0;
            for (int32_t t = 0; t < count && !blocked; t++)
                blocked = vd_dist(H + (size_t)o[t] * dim, hj, (size_t)dim, metric) < d[j];
            if (blocked) continue;
            if (k != NULL) k[j] = 1;
            o[count++] = c[j];
        }
        for (int32_t t = count; t < R; t++) o[t] = -1;
    }
    return 0;
}
