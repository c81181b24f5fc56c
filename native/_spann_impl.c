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
