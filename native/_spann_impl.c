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
__attribute__((target("avx,f16c"))) static void sp_widen_f16c(const uint8_t *src, float *dst,
                                                                size_t d) {
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    if (i < d) sp_widen_scalar(src + 2 * i, dst + i, d - i);
}
static int sp_has_f16c(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
}
#endif

typedef void (*sp_widen_fn)(const uint8_t *src, float *dst, size_t d);

static int sp_scalar_only = 0; /* tests: exercise the portable path on an F16C machine */

void sp_force_scalar_widen(int on) { sp_scalar_only = on; }

static sp_widen_fn sp_widen(void) {
#if defined(__x86_64__) || defined(__i386__)
    if (!sp_scalar_only && sp_has_f16c()) return sp_widen_f16c;
#endif
    return sp_widen_scalar;
}

/* One scan body for both record formats: ``half`` widens each vector into ``buf`` first. */
static int64_t sp_scan_any(const float *q, int32_t dim, int32_t metric,
                           const uint8_t *const *blocks, const int64_t *lens, int64_t nblocks,
                           const uint8_t *live, const uint8_t *ver, int64_t nslots,
                           const uint8_t *bitmap, int64_t bm_bytes, int32_t k, int64_t *out_slot,
                           float *out_dist, int64_t *stats, int half, float *buf) {
    const size_t rec = SP_HEADER + (half ? 2 : 4) * (size_t)dim;
    vd_heap h = {out_dist, out_slot, 0, (size_t)(k > 0 ? k : 0)};
    vd_dist_fn fn = metric == VD_IP ? vd_ip_fn : vd_l2sq_fn;
    const float sign = metric == VD_IP ? -1.f : 1.f; /* negated ip: smaller = closer */
    sp_widen_fn widen = half ? sp_widen() : NULL;
    int64_t scanned = 0, passed = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        if (lens[b] % (int64_t)rec) return -1;
    }
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
            /* the vector starts 12 bytes in: 4-byte aligned, which the SIMD loads accept */
            const float *x = (const float *)(const void *)(p + SP_HEADER);
            if (half) {
                widen(p + SP_HEADER, buf, (size_t)dim);
                x = buf;
            }
            float d = sign * fn(q, x, (size_t)dim);
            if (d != d) continue; /* NaN never ranks */
            if (h.size == h.cap && !(d < h.d[0] || (d == h.d[0] && slot < h.id[0]))) continue;
            if (sp_heap_has(&h, slot)) continue; /* a replica of a vector already kept */
            vd_heap_push_bounded(&h, d, slot);
        }
    }
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
    return sp_scan_any(q, dim, metric, blocks, lens, nblocks, live, ver, nslots, bitmap,
                       bm_bytes, k, out_slot, out_dist, stats, 0, NULL);
}

int64_t sp_scan_half(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                     const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                     int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                     int64_t *out_slot, float *out_dist, int64_t *stats) {
    float *buf = (float *)malloc(sizeof(float) * (size_t)(dim > 0 ? dim : 1));
    if (buf == NULL) return -2;
    int64_t got = sp_scan_any(q, dim, metric, blocks, lens, nblocks, live, ver, nslots, bitmap,
                              bm_bytes, k, out_slot, out_dist, stats, 1, buf);
    free(buf);
    return got;
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
