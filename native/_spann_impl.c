/* SPANN posting scan: see _spann_impl.h. */
#include "_spann_impl.h"

#include <math.h>
#include <string.h>

#include "vd_simd.h"

/* Is ``slot`` already in the heap? k is small (the caller's top-k), and only records that beat
 * the current k-th distance reach this test, so a linear pass is cheaper than a hash set. */
static int sp_heap_has(const vd_heap *h, int64_t slot) {
    for (size_t i = 0; i < h->size; i++)
        if (h->id[i] == slot) return 1;
    return 0;
}

int64_t sp_scan(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                int64_t *out_slot, float *out_dist, int64_t *stats) {
    const size_t rec = SP_HEADER + 4 * (size_t)dim;
    vd_heap h = {out_dist, out_slot, 0, (size_t)(k > 0 ? k : 0)};
    vd_dist_fn fn = metric == VD_IP ? vd_ip_fn : vd_l2sq_fn;
    const float sign = metric == VD_IP ? -1.f : 1.f; /* negated ip: smaller = closer */
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
            float d = sign * fn(q, (const float *)(const void *)(p + SP_HEADER), (size_t)dim);
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
