/*
 * vecdb HNSW core. See _hnsw_impl.h for the layout and locking; this file holds the algorithms:
 *
 *   insert:  greedy descent from the entry point through the levels above the new node's level,
 *            then at each of its levels a beam search (ef_construction) whose results are pruned
 *            with the paper's heuristic (Malkov & Yashunin, Alg. 4: keep e only if it is closer to
 *            the new node than to every neighbour kept so far; options extendCandidates and
 *            keepPrunedConnections); links are made both ways, an over-full neighbour list is
 *            re-pruned with the same heuristic.
 *   search:  greedy descent, then a beam search (ef) on level 0. With a tenant bitmap only allowed
 *            live slots enter the result heap; HN_TWO_HOP additionally walks through a disallowed
 *            neighbour to its own neighbours (ACORN-style) so that at low selectivity the walk stays
 *            on the tenant's sub-graph instead of wading through everyone else; given a sample of
 *            the tenant's members it also starts from the sampled members nearest the query (a
 *            tenant clustered away from the query is reached without crossing others' nodes).
 *            HN_LOCAL picks per query: the bitmap walk where the tenant is dense around the
 *            descent's end point, else the seeded two-hop walk.
 *   exact:   per query a SIMD scan of the members into a bounded heap; for batches the caller
 *            does the inner products as GEMM blocks and hn_topk_block merges them into heaps.
 *   delete:  mark deleted (never returned again), then every node that links to a deleted node
 *            gets its list rebuilt from its live neighbours plus the deleted neighbours' live
 *            neighbours, pruned by the heuristic (FreshDiskANN-style consolidation). A deleted
 *            slot keeps its own links so it still routes until it is reused by a later insert.
 */
#include "_hnsw_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vd_simd.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define NSTRIPES 4096
enum { ST_EMPTY = 0, ST_LIVE = 1, ST_DEL = 2 };

typedef struct {
    float d;
    int32_t id;
} hn_pair;

typedef struct {
    hn_pair *a;
    int32_t n, cap;
} hn_heap;

/* Per-thread scratch, pooled: visited tags with an epoch counter (no clearing per query), the two
 * heaps of the beam search and small buffers. */
typedef struct hn_ctx {
    uint16_t *tags;
    int64_t tcap;
    uint16_t epoch;
    hn_heap top, cand;
    int32_t *buf;
    int32_t bufcap;
    hn_pair *tmp;
    int32_t tmpcap;
    float *dbuf; /* distances of one expansion's neighbours (vd_dist_gather32) */
    int32_t dcap;
    struct hn_ctx *next;
} hn_ctx;

struct hn_t {
    int32_t dim, metric, M, M0, efc, extend, keep;
    int64_t cap;
    float *vec;
    int32_t *l0;
    int32_t **up;
    int32_t *level;
    uint8_t *state;
    int32_t entry, maxlevel;
    vd_dist_fn dfn;
    float sign; /* +1 for l2, -1 for ip */
    pthread_rwlock_t grow;
    pthread_mutex_t glob, pool_lock;
    pthread_mutex_t stripes[NSTRIPES];
    hn_ctx *pool;
    void **grave; /* upper-link arrays replaced while readers may hold them */
    int64_t ngrave, cgrave;
};

static void graveyard_add(hn_t *h, void *p) {
    if (h->ngrave == h->cgrave) {
        int64_t c = h->cgrave ? 2 * h->cgrave : 64;
        void **g = realloc(h->grave, (size_t)c * sizeof(void *));
        if (!g) return; /* leak rather than risk a use-after-free */
        h->grave = g;
        h->cgrave = c;
    }
    h->grave[h->ngrave++] = p;
}
static void graveyard_empty(hn_t *h) { /* caller holds the grow lock exclusively */
    for (int64_t i = 0; i < h->ngrave; i++) free(h->grave[i]);
    h->ngrave = 0;
}

/* ---------------------------------------------------------------- small helpers */
static inline float dist(const hn_t *h, const float *q, int32_t id) {
    return h->sign * h->dfn(q, h->vec + (size_t)id * h->dim, (size_t)h->dim);
}
static inline float dist_ids(const hn_t *h, int32_t a, int32_t b) {
    return dist(h, h->vec + (size_t)a * h->dim, b);
}
static inline int32_t *links(const hn_t *h, int32_t id, int l) {
    return l == 0 ? h->l0 + (size_t)id * (h->M0 + 1) : h->up[id] + (size_t)(l - 1) * (h->M + 1);
}
static inline int32_t maxm(const hn_t *h, int l) { return l == 0 ? h->M0 : h->M; }
static inline pthread_mutex_t *lockof(hn_t *h, int32_t id) { return &h->stripes[id & (NSTRIPES - 1)]; }
static inline void prefetch_vec(const hn_t *h, int32_t id) {
    const char *p = (const char *)(h->vec + (size_t)id * h->dim);
    size_t bytes = (size_t)h->dim * 4;
    for (size_t o = 0; o < bytes && o < 256; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* Grow a realloc'd array *p of *cap elements of size elem to hold need (doubling, from first);
 * 0 on success, -1 when out of memory (the array is left as it was). */
static int grow_array(void **p, int32_t *cap, int32_t need, size_t elem, int32_t first) {
    if (need <= *cap) return 0;
    int32_t c = *cap ? *cap : first;
    while (c < need) c *= 2;
    void *a = realloc(*p, (size_t)c * elem);
    if (!a) return -1;
    *p = a;
    *cap = c;
    return 0;
}
static int heap_grow(hn_heap *hp, int32_t need) {
    return grow_array((void **)&hp->a, &hp->cap, need, sizeof(hn_pair), 64);
}
/* max-heap on d (the result set: worst on top) */
static inline void maxh_push(hn_heap *hp, float d, int32_t id) {
    if (hp->n >= hp->cap && heap_grow(hp, hp->n + 1)) return;
    int32_t i = hp->n++;
    while (i > 0) {
        int32_t p = (i - 1) >> 1;
        if (hp->a[p].d >= d) break;
        hp->a[i] = hp->a[p];
        i = p;
    }
    hp->a[i].d = d;
    hp->a[i].id = id;
}
static inline void maxh_pop(hn_heap *hp) {
    hn_pair last = hp->a[--hp->n];
    int32_t i = 0, n = hp->n;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hp->a[c + 1].d > hp->a[c].d) c++;
        if (hp->a[c].d <= last.d) break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n) hp->a[i] = last;
}
/* min-heap on d (the candidate queue: closest on top) */
static inline void minh_push(hn_heap *hp, float d, int32_t id) {
    if (hp->n >= hp->cap && heap_grow(hp, hp->n + 1)) return;
    int32_t i = hp->n++;
    while (i > 0) {
        int32_t p = (i - 1) >> 1;
        if (hp->a[p].d <= d) break;
        hp->a[i] = hp->a[p];
        i = p;
    }
    hp->a[i].d = d;
    hp->a[i].id = id;
}
static inline void minh_pop(hn_heap *hp) {
    hn_pair last = hp->a[--hp->n];
    int32_t i = 0, n = hp->n;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hp->a[c + 1].d < hp->a[c].d) c++;
        if (hp->a[c].d >= last.d) break;
        hp->a[i] = hp->a[c];
        i = c;
    }
    if (n) hp->a[i] = last;
}

static int cmp_pair(const void *a, const void *b) {
    const hn_pair *x = a, *y = b;
    if (x->d < y->d) return -1;
    if (x->d > y->d) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int buf_grow(hn_ctx *c, int32_t need) {
    return grow_array((void **)&c->buf, &c->bufcap, need, sizeof(int32_t), 256);
}
static int dbuf_grow(hn_ctx *c, int32_t need) {
    return grow_array((void **)&c->dbuf, &c->dcap, need, sizeof(float), 256);
}
static int tmp_grow(hn_ctx *c, int32_t need) {
    return grow_array((void **)&c->tmp, &c->tmpcap, need, sizeof(hn_pair), 256);
}

/* ---------------------------------------------------------------- context pool */
static hn_ctx *ctx_get(hn_t *h) {
    pthread_mutex_lock(&h->pool_lock);
    hn_ctx *c = h->pool;
    if (c) h->pool = c->next;
    pthread_mutex_unlock(&h->pool_lock);
    if (!c) {
        c = calloc(1, sizeof(hn_ctx));
        if (!c) return NULL;
    }
    if (c->tcap < h->cap) {
        uint16_t *t = realloc(c->tags, (size_t)h->cap * 2);
        if (!t) {
            free(c);
            return NULL;
        }
        c->tags = t;
        memset(t, 0, (size_t)h->cap * 2);
        c->tcap = h->cap;
        c->epoch = 0;
    }
    if (buf_grow(c, 4 * (h->M0 + 1)) || tmp_grow(c, 4 * (h->M0 + 1))) {
        free(c->tags);
        free(c);
        return NULL;
    }
    return c;
}
static void ctx_put(hn_t *h, hn_ctx *c) {
    pthread_mutex_lock(&h->pool_lock);
    c->next = h->pool;
    h->pool = c;
    pthread_mutex_unlock(&h->pool_lock);
}
static inline void ctx_new_epoch(hn_ctx *c) {
    if (++c->epoch == 0) {
        memset(c->tags, 0, (size_t)c->tcap * 2);
        c->epoch = 1;
    }
}
#define VISITED(c, id) ((c)->tags[id] == (c)->epoch)
#define VISIT(c, id) ((c)->tags[id] = (c)->epoch)

/* ---------------------------------------------------------------- lifecycle */
hn_t *hn_new(int32_t dim, int32_t metric, int32_t M, int32_t efc, int32_t extend, int32_t keep) {
    vd_init();
    hn_t *h = calloc(1, sizeof(hn_t));
    if (!h) return NULL;
    h->dim = dim;
    h->metric = metric;
    h->M = M;
    h->M0 = 2 * M;
    h->efc = efc;
    h->extend = extend;
    h->keep = keep;
    h->entry = -1;
    h->maxlevel = -1;
    h->dfn = metric == VD_L2 ? vd_l2sq_fn : vd_ip_fn;
    h->sign = metric == VD_L2 ? 1.0f : -1.0f;
    pthread_rwlock_init(&h->grow, NULL);
    pthread_mutex_init(&h->glob, NULL);
    pthread_mutex_init(&h->pool_lock, NULL);
    for (int i = 0; i < NSTRIPES; i++) pthread_mutex_init(&h->stripes[i], NULL);
    return h;
}

void hn_free(hn_t *h) {
    if (!h) return;
    for (int64_t i = 0; i < h->cap; i++) free(h->up ? h->up[i] : NULL);
    free(h->up);
    graveyard_empty(h);
    free(h->grave);
    free(h->vec);
    free(h->l0);
    free(h->level);
    free(h->state);
    while (h->pool) {
        hn_ctx *c = h->pool;
        h->pool = c->next;
        free(c->tags);
        free(c->top.a);
        free(c->cand.a);
        free(c->buf);
        free(c->tmp);
        free(c->dbuf);
        free(c);
    }
    pthread_rwlock_destroy(&h->grow);
    pthread_mutex_destroy(&h->glob);
    pthread_mutex_destroy(&h->pool_lock);
    for (int i = 0; i < NSTRIPES; i++) pthread_mutex_destroy(&h->stripes[i]);
    free(h);
}

#define GROW_ARRAY(ptr, type, oldn, newn, width)                                         \
    do {                                                                                 \
        type *np_ = realloc((ptr), (size_t)(newn) * (width) * sizeof(type));             \
        if (!np_) goto oom;                                                              \
        memset(np_ + (size_t)(oldn) * (width), 0,                                        \
               (size_t)((newn) - (oldn)) * (width) * sizeof(type));                      \
        (ptr) = np_;                                                                     \
    } while (0)

int hn_reserve(hn_t *h, int64_t cap) {
    int rc = 0;
    pthread_rwlock_wrlock(&h->grow);
    graveyard_empty(h);
    if (cap > h->cap) {
        int64_t old = h->cap;
        GROW_ARRAY(h->vec, float, old, cap, h->dim);
        GROW_ARRAY(h->l0, int32_t, old, cap, h->M0 + 1);
        GROW_ARRAY(h->up, int32_t *, old, cap, 1);
        GROW_ARRAY(h->level, int32_t, old, cap, 1);
        GROW_ARRAY(h->state, uint8_t, old, cap, 1);
        for (int64_t i = old; i < cap; i++) h->level[i] = -1;
        h->cap = cap;
    }
    pthread_rwlock_unlock(&h->grow);
    return rc;
oom:
    pthread_rwlock_unlock(&h->grow);
    return -1;
}

int64_t hn_capacity(const hn_t *h) { return h->cap; }

/* ---------------------------------------------------------------- neighbour selection */
/* Paper's heuristic over c->tmp[0..n) (pairs of (distance to base, id)); writes up to m ids to out
 * and returns how many. Sorts tmp ascending. */
static int32_t select_heuristic_k(const hn_t *h, hn_pair *cand, int32_t n, int32_t m, int32_t *out,
                                  int keep);
static int32_t select_heuristic(const hn_t *h, hn_pair *cand, int32_t n, int32_t m, int32_t *out) {
    return select_heuristic_k(h, cand, n, m, out, h->keep);
}
/* keep: keepPrunedConnections (fill up to m with the nearest pruned candidates). */
static int32_t select_heuristic_k(const hn_t *h, hn_pair *cand, int32_t n, int32_t m, int32_t *out,
                                  int keep) {
    qsort(cand, (size_t)n, sizeof(hn_pair), cmp_pair);
    int32_t kept = 0;
    if (n <= m && !h->keep) {
        /* still prune: the heuristic is what gives HNSW its long links */
    }
    /* indices of pruned candidates, for keepPrunedConnections */
    int32_t npruned = 0;
    for (int32_t i = 0; i < n && kept < m; i++) {
        const float *ve = h->vec + (size_t)cand[i].id * h->dim;
        int good = 1;
        for (int32_t j = 0; j < kept; j++) {
            if (dist(h, ve, out[j]) < cand[i].d) {
                good = 0;
                break;
            }
        }
        if (good)
            out[kept++] = cand[i].id;
        else
            cand[npruned++] = cand[i]; /* compact pruned ones at the front (i >= npruned) */
    }
    if (keep)
        for (int32_t i = 0; i < npruned && kept < m; i++) out[kept++] = cand[i].id;
    return kept;
}

/* ---------------------------------------------------------------- beam search on one level */
/* Results in c->top (max-heap, at most ef). construct=1: reads links under the node lock and
 * excludes deleted nodes from the results. bitmap: only allowed live slots enter the results.
 * Returns the number of distance computations. */
static inline int allowed(const hn_t *h, int32_t id, const uint8_t *bm, int64_t nbits) {
    return h->state[id] == ST_LIVE && (!bm || (id < nbits && ((bm[id >> 3] >> (id & 7)) & 1)));
}

/* Entry points eps[0..nep) (distinct ids with their distances to q): all enter the candidate
 * queue, the allowed ones the results. Several entries let a filtered walk start both where the
 * descent ended and at tenant members near the query (see hn_search_batch). */
static int64_t search_layer_multi(hn_t *h, hn_ctx *c, const float *q, const hn_pair *eps,
                                  int32_t nep, int l, int32_t ef, int construct,
                                  const uint8_t *bm, int64_t nbits, int two_hop) {
    int64_t ndist = 0;
    hn_heap *top = &c->top, *cand = &c->cand;
    top->n = cand->n = 0;
    ctx_new_epoch(c);
#define ALLOWED(id) allowed(h, (id), bm, nbits)
    float lower = INFINITY;
    for (int32_t e = 0; e < nep; e++) {
        int32_t ep = eps[e].id;
        if (VISITED(c, ep)) continue;
        VISIT(c, ep);
        if (ALLOWED(ep)) {
            maxh_push(top, eps[e].d, ep);
            if (top->n > ef) maxh_pop(top);
            lower = top->a[0].d;
        }
        minh_push(cand, eps[e].d, ep);
    }
    const int32_t M0 = maxm(h, l);
    while (cand->n) {
        hn_pair cur = cand->a[0];
        if (cur.d > lower && top->n >= ef) break;
        minh_pop(cand);
        /* copy the neighbour list (under the node lock while inserts may run) */
        int32_t cnt;
        int32_t *nb = c->buf;
        if (construct) pthread_mutex_lock(lockof(h, cur.id));
        int32_t *ln = links(h, cur.id, l);
        cnt = ln[0];
        if (cnt > M0) cnt = M0;
        memcpy(nb, ln + 1, (size_t)cnt * 4);
        if (construct) pthread_mutex_unlock(lockof(h, cur.id));
        /* gather the unvisited ones (two-hop: through disallowed neighbours), then score them */
        int32_t m = 0;
        int32_t *todo = c->buf + M0;
        for (int32_t j = 0; j < cnt; j++) {
            int32_t v = nb[j];
            if (VISITED(c, v) || (l > 0 && h->level[v] < l)) continue;
            VISIT(c, v);
            if (!two_hop || ALLOWED(v) || top->n == 0) {
                todo[m++] = v;
                continue;
            }
            /* ACORN-style: v is not ours; look one hop further from it */
            if (h->level[v] < l) continue;
            int32_t *l2 = links(h, v, l);
            int32_t c2 = l2[0];
            if (c2 > M0) c2 = M0;
            if (buf_grow(c, M0 + m + c2 + 1)) continue;
            nb = c->buf;
            todo = c->buf + M0;
            for (int32_t t = 0; t < c2; t++) {
                int32_t w = l2[1 + t];
                if (VISITED(c, w) || !ALLOWED(w)) continue;
                VISIT(c, w);
                todo[m++] = w;
            }
        }
        /* the neighbours' distances in one gather call: four rows per SIMD step (shared query
         * loads, one horizontal sum per four), rows prefetched ahead */
        if (dbuf_grow(c, m)) m = 0;
        vd_dist_gather32(q, h->vec, todo, (size_t)m, (size_t)h->dim, h->metric, c->dbuf);
        ndist += m;
        for (int32_t j = 0; j < m; j++) {
            int32_t v = todo[j];
            float d = c->dbuf[j];
            if (top->n < ef || d < lower) {
                minh_push(cand, d, v);
                if (ALLOWED(v)) {
                    maxh_push(top, d, v);
                    if (top->n > ef) maxh_pop(top);
                    lower = top->a[0].d;
                }
            }
        }
    }
    return ndist;
#undef ALLOWED
}

static int64_t search_layer(hn_t *h, hn_ctx *c, const float *q, int32_t ep, float epd, int l,
                            int32_t ef, int construct, const uint8_t *bm, int64_t nbits,
                            int two_hop) {
    hn_pair e = {epd, ep};
    return search_layer_multi(h, c, q, &e, 1, l, ef, construct, bm, nbits, two_hop);
}

/* Greedy descent on level l from (*cur, *curd). */
static int64_t greedy(hn_t *h, const float *q, int32_t *cur, float *curd, int l, int construct) {
    int64_t ndist = 0;
    int changed = 1;
    int32_t nb[64 + 1];
    while (changed) {
        changed = 0;
        if (construct) pthread_mutex_lock(lockof(h, *cur));
        int32_t *ln = links(h, *cur, l);
        int32_t cnt = ln[0];
        if (cnt > h->M) cnt = h->M;
        memcpy(nb, ln + 1, (size_t)cnt * 4);
        if (construct) pthread_mutex_unlock(lockof(h, *cur));
        for (int32_t j = 0; j < cnt; j++) {
            if (h->level[nb[j]] < l) continue; /* a stale link to a slot re-inserted lower */
            float d = dist(h, q, nb[j]);
            ndist++;
            if (d < *curd) {
                *curd = d;
                *cur = nb[j];
                changed = 1;
            }
        }
    }
    return ndist;
}

/* ---------------------------------------------------------------- insert */
/* Make `id`'s list at level l hold `sel`, and link back from each selected neighbour. */
static void connect(hn_t *h, hn_ctx *c, int32_t id, int l, const int32_t *sel, int32_t ns) {
    int32_t *ln = links(h, id, l);
    pthread_mutex_lock(lockof(h, id));
    memcpy(ln + 1, sel, (size_t)ns * 4);
    ln[0] = ns;
    pthread_mutex_unlock(lockof(h, id));
    const int32_t mm = maxm(h, l);
    for (int32_t i = 0; i < ns; i++) {
        int32_t n = sel[i];
        pthread_mutex_lock(lockof(h, n));
        if (h->level[n] < l) { /* a reused slot re-inserted lower: skip */
            pthread_mutex_unlock(lockof(h, n));
            continue;
        }
        int32_t *nl = links(h, n, l);
        int32_t cnt = nl[0], dup = 0;
        for (int32_t j = 0; j < cnt; j++) dup |= nl[1 + j] == id;
        if (!dup) {
            if (cnt < mm) {
                nl[1 + cnt] = id;
                nl[0] = cnt + 1;
            } else {
                hn_pair *t = c->tmp; /* tmp holds >= 4*(M0+1) pairs */
                for (int32_t j = 0; j < cnt; j++) {
                    t[j].id = nl[1 + j];
                    t[j].d = dist_ids(h, n, nl[1 + j]);
                }
                t[cnt].id = id;
                t[cnt].d = dist_ids(h, n, id);
                int32_t out[256];
                int32_t k = select_heuristic(h, t, cnt + 1, mm, out);
                memcpy(nl + 1, out, (size_t)k * 4);
                nl[0] = k;
            }
        }
        pthread_mutex_unlock(lockof(h, n));
    }
}

static int insert_one(hn_t *h, hn_ctx *c, const float *x, int32_t id, int32_t level) {
    float *v = h->vec + (size_t)id * h->dim;
    /* reset the slot (it may be a reused deleted one) */
    pthread_mutex_lock(lockof(h, id));
    int32_t oldl = h->level[id];
    if (oldl >= level && oldl > 0) { /* reuse the old upper lists: concurrent readers stay safe */
        for (int l = 1; l <= oldl; l++) links(h, id, l)[0] = 0;
    } else if (level > 0) {
        int32_t *upl = calloc((size_t)level * (h->M + 1), 4);
        if (!upl) {
            pthread_mutex_unlock(lockof(h, id));
            return -1;
        }
        if (h->up[id]) { /* a reader may still hold it: freed at the next exclusive section */
            pthread_mutex_lock(&h->glob);
            graveyard_add(h, h->up[id]);
            pthread_mutex_unlock(&h->glob);
        }
        h->up[id] = upl;
    }
    h->l0[(size_t)id * (h->M0 + 1)] = 0;
    memcpy(v, x, (size_t)h->dim * 4);
    h->level[id] = level;
    pthread_mutex_unlock(lockof(h, id));

    pthread_mutex_lock(&h->glob);
    if (h->entry == id) { /* reusing the entry slot: move the entry to another node first */
        int32_t best = -1, bl = -1;
        for (int64_t i = 0; i < h->cap; i++)
            if (i != id && h->state[i] != ST_EMPTY && h->level[i] > bl) {
                bl = h->level[i];
                best = (int32_t)i;
            }
        h->entry = best;
        h->maxlevel = bl;
    }
    int32_t ep = h->entry, maxl = h->maxlevel;
    if (ep < 0) {
        h->entry = id;
        h->maxlevel = level;
        h->state[id] = ST_LIVE;
        pthread_mutex_unlock(&h->glob);
        return 0;
    }
    int hold = level > maxl;
    if (!hold) pthread_mutex_unlock(&h->glob);

    int32_t cur = ep;
    float curd = dist(h, v, cur);
    for (int l = maxl; l > level; l--) greedy(h, v, &cur, &curd, l, 1);
    int32_t sel[256];
    for (int l = (level < maxl ? level : maxl); l >= 0; l--) {
        search_layer(h, c, v, cur, curd, l, h->efc, 1, NULL, 0, 0);
        hn_heap *top = &c->top;
        /* results -> tmp (distance to the new node) */
        int32_t n = 0;
        if (tmp_grow(c, top->n + 4 * (h->M0 + 1) + 1)) continue;
        for (int32_t i = 0; i < top->n; i++)
            if (top->a[i].id != id) c->tmp[n++] = top->a[i];
        if (h->extend) { /* extendCandidates: neighbours of the candidates too */
            int32_t base = n;
            ctx_new_epoch(c);
            for (int32_t i = 0; i < base; i++) VISIT(c, c->tmp[i].id);
            VISIT(c, id);
            for (int32_t i = 0; i < base; i++) {
                int32_t *ln = links(h, c->tmp[i].id, l);
                pthread_mutex_lock(lockof(h, c->tmp[i].id));
                int32_t cnt = ln[0] > maxm(h, l) ? maxm(h, l) : ln[0];
                for (int32_t j = 0; j < cnt; j++) {
                    int32_t w = ln[1 + j];
                    if (VISITED(c, w) || h->state[w] != ST_LIVE) continue;
                    VISIT(c, w);
                    if (tmp_grow(c, n + 1)) break;
                    c->tmp[n].id = w;
                    c->tmp[n++].d = dist(h, v, w);
                }
                pthread_mutex_unlock(lockof(h, c->tmp[i].id));
            }
        }
        if (n == 0) continue;
        int32_t ns = select_heuristic(h, c->tmp, n, h->M, sel);
        /* next level's entry: the closest candidate (tmp is sorted; sel[0] is the closest kept) */
        cur = sel[0];
        curd = dist(h, v, cur);
        connect(h, c, id, l, sel, ns);
    }
    h->state[id] = ST_LIVE;
    if (hold) {
        h->entry = id;
        h->maxlevel = level;
        pthread_mutex_unlock(&h->glob);
    }
    return 0;
}

int hn_add_batch(hn_t *h, const float *X, const int64_t *slots, const int32_t *levels, int64_t n,
                 int64_t *next) {
    int rc = 0;
    pthread_rwlock_rdlock(&h->grow);
    hn_ctx *c = ctx_get(h);
    if (!c) {
        pthread_rwlock_unlock(&h->grow);
        return -1;
    }
    for (;;) {
        int64_t i = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (i >= n) break;
        if (insert_one(h, c, X + (size_t)i * h->dim, (int32_t)slots[i], levels[i])) rc = -1;
    }
    ctx_put(h, c);
    pthread_rwlock_unlock(&h->grow);
    return rc;
}

/* ---------------------------------------------------------------- delete + repair */
/* Rebuild node n's list at level l without deleted nodes: live neighbours plus the live
 * neighbours of its deleted neighbours, pruned by the heuristic. */
static void repair_node(hn_t *h, hn_ctx *c, int32_t n, int l) {
    int32_t *ln = links(h, n, l);
    int32_t cnt = ln[0];
    const int32_t mm = maxm(h, l);
    ctx_new_epoch(c);
    VISIT(c, n);
    int32_t m = 0;
    for (int32_t j = 0; j < cnt; j++) {
        int32_t v = ln[1 + j];
        if (h->state[v] == ST_LIVE) {
            if (VISITED(c, v)) continue;
            VISIT(c, v);
            if (tmp_grow(c, m + 1)) return;
            c->tmp[m].id = v;
            c->tmp[m++].d = dist_ids(h, n, v);
        } else if (h->state[v] == ST_DEL && h->level[v] >= l) {
            int32_t *l2 = links(h, v, l);
            int32_t c2 = l2[0] > mm ? mm : l2[0];
            for (int32_t t = 0; t < c2; t++) {
                int32_t w = l2[1 + t];
                if (h->state[w] != ST_LIVE || VISITED(c, w)) continue;
                VISIT(c, w);
                if (tmp_grow(c, m + 1)) return;
                c->tmp[m].id = w;
                c->tmp[m++].d = dist_ids(h, n, w);
            }
        }
    }
    int32_t out[256];
    /* keepPrunedConnections here: a repaired list stays full, so nodes that were reachable only
     * through the deleted node keep an in-link (fewer unreachable nodes after heavy deletes) */
    int32_t k = select_heuristic_k(h, c->tmp, m, mm, out, 1);
    memcpy(ln + 1, out, (size_t)k * 4);
    ln[0] = k;
}

static int has_deleted_link(const hn_t *h, int32_t n, int l) {
    int32_t *ln = links(h, n, l);
    for (int32_t j = 0; j < ln[0]; j++)
        if (h->state[ln[1 + j]] != ST_LIVE) return 1;
    return 0;
}

int64_t hn_remove(hn_t *h, const int64_t *slots, int64_t n) {
    pthread_rwlock_wrlock(&h->grow);
    graveyard_empty(h);
    int64_t removed = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t s = slots[i];
        if (s < 0 || s >= h->cap || h->state[s] != ST_LIVE) continue;
        h->state[s] = ST_DEL;
        removed++;
    }
    hn_ctx *c = removed ? ctx_get(h) : NULL;
    if (c) {
        /* Few deletions: repair the deleted nodes' neighbours (links are nearly symmetric); many:
         * one pass over every node, which also clears the one-way in-links. */
        if (removed * (int64_t)h->M0 * 8 < h->cap) {
            for (int64_t i = 0; i < n; i++) {
                int64_t s = slots[i];
                if (s < 0 || s >= h->cap || h->state[s] != ST_DEL) continue;
                for (int l = 0; l <= h->level[s]; l++) {
                    int32_t *ln = links(h, (int32_t)s, l);
                    for (int32_t j = 0; j < ln[0]; j++) {
                        int32_t v = ln[1 + j];
                        if (h->state[v] == ST_LIVE && has_deleted_link(h, v, l))
                            repair_node(h, c, v, l);
                    }
                }
            }
        } else {
            for (int64_t v = 0; v < h->cap; v++) {
                if (h->state[v] != ST_LIVE) continue;
                for (int l = 0; l <= h->level[v]; l++)
                    if (has_deleted_link(h, (int32_t)v, l)) repair_node(h, c, (int32_t)v, l);
            }
        }
        ctx_put(h, c);
    }
    pthread_rwlock_unlock(&h->grow);
    return removed;
}

/* ---------------------------------------------------------------- search */
static void exact_one(hn_t *h, const float *q, int32_t k, const int64_t *rows, int64_t nrows,
                      hn_heap *top) {
    top->n = 0;
    float lower = INFINITY;
    for (int64_t i = 0; i < nrows; i++) {
        int64_t r = rows[i];
        if (r < 0 || r >= h->cap || h->state[r] != ST_LIVE) continue;
        if (i + 12 < nrows && rows[i + 12] < h->cap) prefetch_vec(h, (int32_t)rows[i + 12]);
        float d = dist(h, q, (int32_t)r);
        if (top->n < k || d < lower) {
            maxh_push(top, d, (int32_t)r);
            if (top->n > k) maxh_pop(top);
            lower = top->a[0].d;
        }
    }
}

/* Pops the max-heap into out (ascending), keeping the k best, padding with (-1, inf). */
static void emit(hn_heap *top, int32_t k, int64_t *oid, float *od) {
    while (top->n > k) maxh_pop(top);
    int32_t n = top->n;
    for (int32_t i = k - 1; i >= n; i--) {
        oid[i] = -1;
        od[i] = INFINITY;
    }
    for (int32_t i = n - 1; i >= 0; i--) {
        oid[i] = top->a[0].id;
        od[i] = top->a[0].d;
        maxh_pop(top);
    }
}

/* Entry points of a filtered level-0 walk: the descent's end point, then the allowed seeds
 * (a sample of the tenant's members) scored exactly, all in c->tmp. Returns how many. */
static int32_t seed_entries(hn_t *h, hn_ctx *c, const float *q, int32_t cur, float curd,
                            const int64_t *seeds, int64_t nseeds, const uint8_t *bm,
                            int64_t nbits, int64_t *ndist) {
    if (tmp_grow(c, (int32_t)nseeds + 1)) nseeds = 0;
    int32_t n = 0;
    c->tmp[n].id = cur;
    c->tmp[n++].d = curd;
    for (int64_t i = 0; i < nseeds; i++) {
        int64_t s = seeds[i];
        if (i + 2 < nseeds && seeds[i + 2] >= 0 && seeds[i + 2] < h->cap)
            prefetch_vec(h, (int32_t)seeds[i + 2]);
        if (s < 0 || s >= h->cap || s == cur || !allowed(h, (int32_t)s, bm, nbits)) continue;
        c->tmp[n].id = (int32_t)s;
        c->tmp[n++].d = dist(h, q, (int32_t)s);
    }
    *ndist += n - 1;
    return n;
}

/* Locality signal: continue the greedy descent on level 0 (to a local nearest node of q, a few
 * hops), then the share of allowed nodes among that node, its level-0 neighbours and theirs
 * (~(2M)^2 bitmap tests with repeats, no distances: informative down to ~1% selectivity, where
 * one hop would hold less than one allowed node). cur and curd move to the node reached (a good
 * start for either walk). */
static float local_share(hn_t *h, hn_ctx *c, const float *q, int32_t *cur, float *curd,
                         const uint8_t *bm, int64_t nbits, int64_t *ndist) {
    int32_t *nb = c->buf;
    for (int changed = 1; changed;) {
        changed = 0;
        const int32_t *ln = links(h, *cur, 0);
        int32_t cnt = ln[0] > h->M0 ? h->M0 : ln[0];
        memcpy(nb, ln + 1, (size_t)cnt * 4);
        for (int32_t j = 0; j < cnt; j++) {
            float d = dist(h, q, nb[j]);
            if (d < *curd) {
                *curd = d;
                *cur = nb[j];
                changed = 1;
            }
        }
        *ndist += cnt;
    }
    const int32_t *ln = links(h, *cur, 0);
    int32_t cnt = ln[0] > h->M0 ? h->M0 : ln[0];
    int32_t a = allowed(h, *cur, bm, nbits), n = 1 + cnt;
    for (int32_t j = 0; j < cnt; j++) {
        int32_t v = ln[1 + j];
        a += allowed(h, v, bm, nbits);
        const int32_t *l2 = links(h, v, 0);
        int32_t c2 = l2[0] > h->M0 ? h->M0 : l2[0];
        n += c2;
        for (int32_t t = 0; t < c2; t++) a += allowed(h, l2[1 + t], bm, nbits);
    }
    return (float)a / (float)n;
}

int hn_search_batch(hn_t *h, const float *Q, int64_t nq, int32_t k, int32_t ef,
                    const uint8_t *bitmap, int64_t nbytes, int32_t mode, const int64_t *members,
                    int64_t nmembers, const int64_t *seeds, int64_t nseeds, float local_min,
                    int64_t *out_id, float *out_d, int64_t *next, int64_t *stats) {
    pthread_rwlock_rdlock(&h->grow);
    hn_ctx *c = ctx_get(h);
    if (!c) {
        pthread_rwlock_unlock(&h->grow);
        return -1;
    }
    if (ef < k) ef = k;
    const int64_t nbits = nbytes * 8;
    int64_t ndist = 0, nfall = 0, nseeded = 0;
    for (;;) {
        int64_t i = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (i >= nq) break;
        const float *q = Q + (size_t)i * h->dim;
        int64_t *oid = out_id + (size_t)i * k;
        float *od = out_d + (size_t)i * k;
        pthread_mutex_lock(&h->glob);
        int32_t cur = h->entry, maxl = h->maxlevel;
        pthread_mutex_unlock(&h->glob);
        if (cur < 0) {
            c->top.n = 0;
            emit(&c->top, k, oid, od);
            continue;
        }
        float curd = dist(h, q, cur);
        for (int l = maxl; l > 0; l--) ndist += greedy(h, q, &cur, &curd, l, 0);
        /* HN_LOCAL: the plain bitmap walk where the tenant is dense around the query, else the
         * seeded two-hop walk (the tenant's vectors are elsewhere: do not wade towards them
         * through everyone else's nodes) */
        int two_hop = mode == HN_TWO_HOP;
        if (mode == HN_LOCAL)
            two_hop = local_share(h, c, q, &cur, &curd, bitmap, nbits, &ndist) < local_min;
        if (two_hop && bitmap && seeds && nseeds > 0) {
            int32_t ne = seed_entries(h, c, q, cur, curd, seeds, nseeds, bitmap, nbits, &ndist);
            ndist += search_layer_multi(h, c, q, c->tmp, ne, 0, ef, 0, bitmap, nbits, 1);
            nseeded++;
        } else {
            ndist += search_layer(h, c, q, cur, curd, 0, ef, 0, bitmap, nbits, two_hop);
        }
        if (c->top.n < k && members && nmembers > c->top.n) {
            exact_one(h, q, k, members, nmembers, &c->top);
            ndist += nmembers;
            nfall++;
        }
        emit(&c->top, k, oid, od);
    }
    ctx_put(h, c);
    pthread_rwlock_unlock(&h->grow);
    __atomic_fetch_add(&stats[0], ndist, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats[1], nfall, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats[2], nseeded, __ATOMIC_RELAXED);
    return 0;
}

void hn_exact(hn_t *h, const float *Q, int64_t nq, int32_t k, const int64_t *rows, int64_t nrows,
              int64_t *out_id, float *out_d) {
    pthread_rwlock_rdlock(&h->grow);
    hn_heap top = {0};
    heap_grow(&top, k + 2);
    for (int64_t i = 0; i < nq; i++) {
        exact_one(h, Q + (size_t)i * h->dim, k, rows, nrows, &top);
        emit(&top, k, out_id + (size_t)i * k, out_d + (size_t)i * k);
    }
    free(top.a);
    pthread_rwlock_unlock(&h->grow);
}

/* ---------------------------------------------------------------- batched exact scan */
/* One block of a batched exact scan: S[i * nb + j] = <q_i, x_j> from a GEMM (BLAS, by the
 * caller), turned into distances (ip: -S; l2 without |q|^2: xn[j] - 2 S, added by
 * hn_topk_finish) and merged into per-query bounded max-heaps hd/hi [nq, k] (worst on top,
 * initialised to (+inf, -1)). Most scores lose against the current k-th best, so the loop is a
 * compare per element: about 10x cheaper than a full top-k per block plus a merge. */
/* Whether any of the 16 scores s[0..16) beats `worst` (ip: -s < worst; l2: xn - 2s < worst). */
static inline int chunk_has_candidate(const float *s, const float *xn, float worst) {
#if defined(__SSE2__)
    __m128 acc = _mm_setzero_ps();
    if (xn) {
        const __m128 w = _mm_set1_ps(worst), two = _mm_set1_ps(2.0f);
        for (int t = 0; t < 16; t += 4) {
            __m128 v = _mm_sub_ps(_mm_loadu_ps(xn + t), _mm_mul_ps(two, _mm_loadu_ps(s + t)));
            acc = _mm_or_ps(acc, _mm_cmplt_ps(v, w));
        }
    } else {
        const __m128 w = _mm_set1_ps(-worst); /* -s < worst  <=>  s > -worst */
        for (int t = 0; t < 16; t += 4) acc = _mm_or_ps(acc, _mm_cmpgt_ps(_mm_loadu_ps(s + t), w));
    }
    return _mm_movemask_ps(acc) != 0;
#else
    int any = 0;
    for (int t = 0; t < 16; t++) any |= (xn ? xn[t] - 2.0f * s[t] : -s[t]) < worst;
    return any;
#endif
}

void hn_topk_block(const float *S, int64_t nq, int64_t nb, const int64_t *rows, const float *xn,
                   int32_t metric, int32_t k, float *hd, int64_t *hi) {
    for (int64_t i = 0; i < nq; i++) {
        const float *s = S + (size_t)i * nb;
        float *d = hd + (size_t)i * k;
        int64_t *id = hi + (size_t)i * k;
        float worst = d[0];
        for (int64_t j0 = 0; j0 < nb; j0 += 16) {
            int64_t j1 = j0 + 16 < nb ? j0 + 16 : nb;
            /* one SIMD test of 16 scores against the k-th best: most chunks hold no candidate */
            if (j1 - j0 == 16 && !chunk_has_candidate(s + j0, metric == VD_L2 ? xn + j0 : NULL,
                                                      worst))
                continue;
            for (int64_t j = j0; j < j1; j++) {
                float v = metric == VD_L2 ? xn[j] - 2.0f * s[j] : -s[j];
                if (!(v < worst)) continue; /* NaN never enters */
                /* replace the top of the max-heap and sift down */
                int32_t p = 0;
                for (;;) {
                    int32_t c = 2 * p + 1;
                    if (c >= k) break;
                    if (c + 1 < k && d[c + 1] > d[c]) c++;
                    if (d[c] <= v) break;
                    d[p] = d[c];
                    id[p] = id[c];
                    p = c;
                }
                d[p] = v;
                id[p] = rows[j];
                worst = d[0];
            }
        }
    }
}

/* Sorts each heap ascending (ties by id), adds |q|^2 (qn, l2 only), pads empty with (-1, inf). */
void hn_topk_finish(int64_t nq, int32_t k, const float *qn, int32_t metric, float *hd,
                    int64_t *hi) {
    hn_pair buf[1024];
    if (k > 1024) return; /* the caller caps k */
    for (int64_t i = 0; i < nq; i++) {
        float *d = hd + (size_t)i * k;
        int64_t *id = hi + (size_t)i * k;
        int32_t n = 0;
        for (int32_t j = 0; j < k; j++)
            if (id[j] >= 0) {
                buf[n].d = d[j];
                buf[n++].id = (int32_t)id[j];
            }
        qsort(buf, (size_t)n, sizeof(hn_pair), cmp_pair);
        for (int32_t j = 0; j < k; j++) {
            if (j < n) {
                float v = buf[j].d;
                if (metric == VD_L2) {
                    v += qn[i];
                    if (v < 0) v = 0;
                }
                d[j] = v;
                id[j] = buf[j].id;
            } else {
                d[j] = INFINITY;
                id[j] = -1;
            }
        }
    }
}

void hn_gather(hn_t *h, const int64_t *rows, int64_t n, float *out) {
    pthread_rwlock_rdlock(&h->grow);
    for (int64_t i = 0; i < n; i++)
        memcpy(out + (size_t)i * h->dim, h->vec + (size_t)rows[i] * h->dim, (size_t)h->dim * 4);
    pthread_rwlock_unlock(&h->grow);
}

/* ---------------------------------------------------------------- introspection */
int64_t hn_memory(const hn_t *h) {
    int64_t b = sizeof(hn_t) + h->cap * ((int64_t)h->dim * 4 + (int64_t)(h->M0 + 1) * 4 + 8 + 4 + 1);
    for (int64_t i = 0; i < h->cap; i++)
        if (h->level[i] > 0 && h->up[i]) b += (int64_t)h->level[i] * (h->M + 1) * 4;
    return b;
}
int32_t hn_entry(const hn_t *h) { return h->entry; }
int32_t hn_maxlevel(const hn_t *h) { return h->maxlevel; }
int32_t hn_level(const hn_t *h, int64_t s) { return s < h->cap ? h->level[s] : -1; }
int32_t hn_state(const hn_t *h, int64_t s) { return s < h->cap ? h->state[s] : 0; }
float *hn_vector(hn_t *h, int64_t s) { return h->vec + (size_t)s * h->dim; }
int32_t *hn_links(hn_t *h, int64_t s, int32_t level) { return links(h, (int32_t)s, level); }

int hn_restore_node(hn_t *h, int64_t s, const float *v, int32_t level, int32_t state) {
    if (s >= h->cap) return -1;
    free(h->up[s]);
    h->up[s] = NULL;
    if (level > 0) {
        h->up[s] = calloc((size_t)level * (h->M + 1), 4);
        if (!h->up[s]) return -1;
    }
    memcpy(h->vec + (size_t)s * h->dim, v, (size_t)h->dim * 4);
    h->level[s] = level;
    h->state[s] = (uint8_t)state;
    h->l0[(size_t)s * (h->M0 + 1)] = 0;
    return 0;
}
void hn_set_entry(hn_t *h, int32_t entry, int32_t maxlevel) {
    h->entry = entry;
    h->maxlevel = maxlevel;
}
