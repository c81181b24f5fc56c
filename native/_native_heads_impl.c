/* Per-vector top-k selection for the bulk build's head search (vecdb.ingest.heads.HeadGroups).
 *
 * A candidate is one 64-bit key: the distance's bits mapped to an order-preserving unsigned int
 * (high half) and the head id (low half, < 2^32), so (distance, id) order is one integer compare
 * and ties go to the smaller id, as a stable sort of an exact scan does. Each vector owns a
 * buffer of ``cap`` (>= k + 16) keys and a threshold ``thr`` (the k-th smallest distance kept,
 * +inf at first). A group's scores are appended when d <= thr; a full buffer is cut back to its
 * k smallest by a branch-free quickselect, which lowers thr. Measured at k = 32 over ~1,350
 * scores per vector: a bounded heap (one sift per accepted score) and a branchy (distance, id)
 * quickselect both cost ~4 ns per score, mispredicted branches mostly.
 * At the AVX-512 level (vd_level(), so tests can force the scalar path) 16 scores are filtered
 * at once with a compare mask and compressed into the buffer; same keys, same result. */
#include "_native_heads_impl.h"

#include <math.h>
#include <string.h>

#include "vd_simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#define VDH_X86 1
#include <immintrin.h>
#endif

static inline uint64_t vdh_key(float x, int64_t id) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint32_t)id;
}

static inline float vdh_dist(uint64_t key) {
    uint32_t u = (uint32_t)(key >> 32);
    u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static void vdh_insertion_sort(uint64_t *a, size_t n) {
    for (size_t i = 1; i < n; i++) {
        uint64_t x = a[i];
        size_t j = i;
        while (j > 0 && x < a[j - 1]) { a[j] = a[j - 1]; j--; }
        a[j] = x;
    }
}

static inline uint64_t vdh_median3(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
    return c < lo ? lo : (c > hi ? hi : c);
}

/* Keys < p to the front, branch-free; returns how many. */
static size_t vdh_partition(uint64_t *a, size_t n, uint64_t p) {
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = a[i], u = a[j];
        a[i] = u;
        a[j] = v;
        j += v < p;
    }
    return j;
}

/* [lo, hi) holds the boundary k: narrow it until short, then sort it. Keys are distinct (a
 * vector meets each head once), so a median-of-3 pivot always splits off >= 1 key each side. */
static void vdh_select_range(uint64_t *a, size_t lo, size_t hi, size_t k) {
    while (hi - lo > 16) {
        uint64_t p = vdh_median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
        size_t j = lo + vdh_partition(a + lo, hi - lo, p);
        if (j == k) return;
        if (j > k) hi = j;
        else lo = j;
    }
    vdh_insertion_sort(a + lo, hi - lo);
}

/* The k smallest of a[0..n) to the front (in no order). */
static void vdh_select(uint64_t *a, size_t n, size_t k) {
    if (k < n) vdh_select_range(a, 0, n, k);
}

static void vdh_sort(uint64_t *a, size_t n) {
    while (n > 16) {
        size_t j = vdh_partition(a, n, vdh_median3(a[0], a[n / 2], a[n - 1]));
        vdh_sort(a, j);
        a += j;
        n -= j;
    }
    vdh_insertion_sort(a, n);
}

/* Cut a full buffer back to its k smallest; returns the new threshold (their largest distance). */
static float vdh_cut(uint64_t *a, size_t c, size_t k) {
    vdh_select(a, c, k);
    uint64_t m = a[0];
    for (size_t i = 1; i < k; i++) m = a[i] > m ? a[i] : m;
    return vdh_dist(m);
}

/* Append the scores of one (vector, group) pair: s[h] = x.head, distance hsq[h] - 2 s[h] (l2)
 * or -s[h] (ip). Returns the new count; *tp is the threshold. */
static size_t vdh_scan_scalar(const float *s, size_t w, const float *hsq, const int64_t *ids,
                              int code, size_t k, size_t cap, uint64_t *a, size_t c, float *tp) {
    float t = *tp;
    if (c >= cap) {  /* full from the wide path: make room for the first write */
        t = vdh_cut(a, c, k);
        c = k;
    }
    for (size_t h = 0; h < w; h++) {
        float x = code == 1 ? -s[h] : hsq[h] - 2.0f * s[h];
        a[c] = vdh_key(x, ids[h]);
        c += x <= t;  /* NaN never counts */
        if (c == cap) {
            t = vdh_cut(a, c, k);
            c = k;
        }
    }
    *tp = t;
    return c;
}

#ifdef VDH_X86
/* 16 scores a step: a compare mask against the threshold, the passing keys compressed to the
 * front of two registers stored whole at a + c (the buffer keeps >= 16 free slots: cut back
 * before a step that might not fit). 2 s[h] is exact, so fnmadd gives the scalar value. */
__attribute__((target("avx512f"))) static size_t vdh_scan_avx512(
        const float *s, size_t w, const float *hsq, const int64_t *ids, int code, size_t k,
        size_t cap, uint64_t *a, size_t c, float *tp) {
    float t = *tp;
    __m512 tv = _mm512_set1_ps(t);
    const __m512 two = _mm512_set1_ps(2.0f);
    const __m512i top = _mm512_set1_epi32((int)0x80000000u);
    for (size_t h = 0; h < w; h += 16) {
        __mmask16 lane = w - h >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - h)) - 1);
        __m512 sv = _mm512_maskz_loadu_ps(lane, s + h);
        __m512 x = code == 1 ? _mm512_sub_ps(_mm512_setzero_ps(), sv)
                             : _mm512_fnmadd_ps(two, sv, _mm512_maskz_loadu_ps(lane, hsq + h));
        __mmask16 m = _mm512_mask_cmp_ps_mask(lane, x, tv, _CMP_LE_OQ);
        if (!m) continue;
        if (c + 16 > cap) {
            t = vdh_cut(a, c, k);
            c = k;
            tv = _mm512_set1_ps(t);
            m = _mm512_mask_cmp_ps_mask(lane, x, tv, _CMP_LE_OQ);
            if (!m) continue;
        }
        __m512i xi = _mm512_castps_si512(x);
        __m512i key = _mm512_xor_si512(xi, _mm512_or_si512(_mm512_srai_epi32(xi, 31), top));
        __mmask8 lo = (__mmask8)(m & 0xFF), hi = (__mmask8)(m >> 8);
        __m512i kl = _mm512_or_si512(
            _mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(key)), 32),
            _mm512_and_si512(_mm512_maskz_loadu_epi64((__mmask8)(lane & 0xFF), ids + h),
                             _mm512_set1_epi64(0xFFFFFFFFLL)));
        _mm512_storeu_si512((void *)(a + c), _mm512_maskz_compress_epi64(lo, kl));
        c += (size_t)__builtin_popcount(lo);
        if (hi) {
            __m512i kh = _mm512_or_si512(
                _mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(key, 1)), 32),
                _mm512_and_si512(
                    _mm512_maskz_loadu_epi64((__mmask8)(lane >> 8), ids + h + 8),
                    _mm512_set1_epi64(0xFFFFFFFFLL)));
            _mm512_storeu_si512((void *)(a + c), _mm512_maskz_compress_epi64(hi, kh));
            c += (size_t)__builtin_popcount(hi);
        }
    }
    *tp = t;
    return c;
}
#endif

void vdh_merge(const float *S, size_t m, size_t w, const int64_t *rows, const float *hsq,
               const int64_t *ids, int code, size_t k, size_t cap, uint64_t *buf, int64_t *cnt,
               float *thr) {
#ifdef VDH_X86
    int wide = vd_level() == VD_AVX512;
#endif
    for (size_t j = 0; j < m; j++) {
        size_t r = (size_t)rows[j];
        float t = thr[r];
        size_t c = (size_t)cnt[r];
#ifdef VDH_X86
        if (wide)
            c = vdh_scan_avx512(S + j * w, w, hsq, ids, code, k, cap, buf + r * cap, c, &t);
        else
#endif
            c = vdh_scan_scalar(S + j * w, w, hsq, ids, code, k, cap, buf + r * cap, c, &t);
        cnt[r] = (int64_t)c;
        thr[r] = t;
    }
}

void vdh_finish(size_t n, size_t k, size_t cap, uint64_t *buf, const int64_t *cnt,
                float *out_d, int64_t *out_i) {
    for (size_t r = 0; r < n; r++) {
        uint64_t *a = buf + r * cap;
        size_t c = (size_t)cnt[r];
        if (c > k) { vdh_select(a, c, k); c = k; }
        vdh_sort(a, c);
        for (size_t i = 0; i < k; i++) {
            out_d[r * k + i] = i < c ? vdh_dist(a[i]) : INFINITY;
            out_i[r * k + i] = i < c ? (int64_t)(a[i] & 0xFFFFFFFFu) : -1;
        }
    }
}
