/*
 * Curator core (vecdb.index.curator): the mutable per-tenant structure over one shared
 * clustering tree, after "Curator: Efficient Indexing for Multi-Tenant Vector Databases"
 * (Jin et al., 2024).
 *
 *                         root (centroid, bloom{tenants below})
 *                        /    |     \
 *                    node   node    node      <- a tenant's shortlist lives at the highest
 *                   / | \                        node where its entries fit (<= max_sl), so
 *                leaf leaf leaf                  small tenants sit near the root (one exact
 *                                                scan) and big ones are spread over leaves
 *
 * Invariants (checked by tests/index/test_curator.py after random operation sequences):
 *  - every granted (slot, tenant) pair is in exactly one shortlist of that tenant, at a node on
 *    the slot's root-to-leaf path; a tenant's shortlists form an antichain (none is an ancestor
 *    of another);
 *  - a shortlist at an internal node holds <= max_sl entries (leaves cannot split: unbounded);
 *    no shortlist is empty;
 *  - Bloom filters have no false negatives: a node's filter holds every tenant with a shortlist
 *    at that node or below. Removals leave stale bits (false positives only), cleared by a
 *    lazy full rebuild once enough shortlists were dropped.
 *
 * Nothing here takes the GIL or allocates Python objects; the Python wrapper serialises writers.
 * Distances come from the shared SIMD layer (vd_simd.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>

#include "vd_simd.h"

typedef struct {
    int64_t *ids;
    int32_t n, cap;
    int32_t node, tenant; /* node < 0: free */
} cur_list;

typedef struct {
    int32_t *t;
    int32_t n, cap;
} cur_tlist;

typedef struct {
    /* tree (immutable after creation) */
    int32_t dim, metric, tmetric, nnodes, maxdepth; /* tmetric: tree routing metric */
    float *cent;
    int32_t *parent, *cptr, *child, *depth;
    uint8_t *ccontig; /* 1: node's children are consecutive ids (centroids one block) */
    /* bloom filters: nnodes x bwords 64-bit words */
    int32_t bwords, bk;
    uint64_t *bloom;
    /* shortlists + (node, tenant) -> shortlist hash map (linear probing, backward-shift delete) */
    int32_t max_sl;
    cur_list *sl;
    int32_t nsl, slcap, nlive_sl;
    int32_t *freel;
    int32_t nfree;
    uint64_t *hkey;
    int32_t *hval;
    int64_t hcap, hcount;
    /* leaves: members of every leaf (all live slots routed there) */
    cur_list *leaf; /* indexed by node (only leaves used) */
    /* per slot */
    int64_t scap;
    int32_t *sleaf;  /* -1 = not live */
    int32_t *spos;   /* position in its leaf list */
    cur_tlist *sten; /* tenants of the slot */
    int64_t nlive;
    int64_t stale; /* shortlists dropped since the last bloom rebuild */
} cur_t;

#define EMPTY_KEY UINT64_MAX

static inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static inline uint64_t hkey(int32_t node, int32_t tenant) {
    return ((uint64_t)(uint32_t)node << 32) | (uint32_t)tenant;
}

static int grow_list(cur_list *l, int32_t need) {
    if (need <= l->cap) return 0;
    int32_t cap = l->cap ? l->cap : 4;
    while (cap < need) cap *= 2;
    int64_t *p = realloc(l->ids, sizeof(int64_t) * (size_t)cap);
    if (!p) return -1;
    l->ids = p;
    l->cap = cap;
    return 0;
}

/* ------------------------------------------------------------------ hash map */
static int64_t h_find(const cur_t *c, int32_t node, int32_t tenant) {
    uint64_t k = hkey(node, tenant);
    uint64_t m = (uint64_t)c->hcap - 1;
    uint64_t i = mix64(k) & m;
    while (c->hkey[i] != EMPTY_KEY) {
        if (c->hkey[i] == k) return c->hval[i];
        i = (i + 1) & m;
    }
    return -1;
}

static int h_rehash(cur_t *c, int64_t ncap) {
    uint64_t *ok = c->hkey;
    int32_t *ov = c->hval;
    int64_t ocap = c->hcap;
    uint64_t *nk = malloc(sizeof(uint64_t) * (size_t)ncap);
    int32_t *nv = malloc(sizeof(int32_t) * (size_t)ncap);
    if (!nk || !nv) { free(nk); free(nv); return -1; }
    for (int64_t i = 0; i < ncap; i++) nk[i] = EMPTY_KEY;
    uint64_t m = (uint64_t)ncap - 1;
    for (int64_t i = 0; i < ocap; i++) {
        if (ok[i] == EMPTY_KEY) continue;
        uint64_t j = mix64(ok[i]) & m;
        while (nk[j] != EMPTY_KEY) j = (j + 1) & m;
        nk[j] = ok[i];
        nv[j] = ov[i];
    }
    free(ok);
    free(ov);
    c->hkey = nk;
    c->hval = nv;
    c->hcap = ncap;
    return 0;
}

static int h_put(cur_t *c, int32_t node, int32_t tenant, int32_t v) {
    if ((c->hcount + 1) * 2 > c->hcap && h_rehash(c, c->hcap * 2)) return -1;
    uint64_t k = hkey(node, tenant);
    uint64_t m = (uint64_t)c->hcap - 1;
    uint64_t i = mix64(k) & m;
    while (c->hkey[i] != EMPTY_KEY && c->hkey[i] != k) i = (i + 1) & m;
    if (c->hkey[i] == EMPTY_KEY) c->hcount++;
    c->hkey[i] = k;
    c->hval[i] = v;
    return 0;
}

static void h_del(cur_t *c, int32_t node, int32_t tenant) {
    uint64_t k = hkey(node, tenant);
    uint64_t m = (uint64_t)c->hcap - 1;
    uint64_t i = mix64(k) & m;
    while (c->hkey[i] != EMPTY_KEY && c->hkey[i] != k) i = (i + 1) & m;
    if (c->hkey[i] == EMPTY_KEY) return;
    /* backward-shift deletion keeps probe chains intact without tombstones */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & m;
        if (c->hkey[j] == EMPTY_KEY) break;
        uint64_t home = mix64(c->hkey[j]) & m;
        /* can entry j move to hole i? only if its home is not cyclically in (i, j] */
        int in_range = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            c->hkey[i] = c->hkey[j];
            c->hval[i] = c->hval[j];
            i = j;
        }
    }
    c->hkey[i] = EMPTY_KEY;
    c->hcount--;
}

/* ------------------------------------------------------------------ bloom filters */
static inline void bloom_add(cur_t *c, int32_t node, int32_t tenant) {
    uint64_t h = mix64((uint64_t)(uint32_t)tenant ^ 0x5bd1e995ull);
    uint64_t h1 = h & 0xffffffffull, h2 = (h >> 32) | 1;
    uint64_t mask = (uint64_t)c->bwords * 64 - 1; /* bwords is a power of two */
    uint64_t *b = c->bloom + (size_t)node * c->bwords;
    for (int i = 0; i < c->bk; i++) {
        uint64_t bit = (h1 + (uint64_t)i * h2) & mask;
        b[bit >> 6] |= 1ull << (bit & 63);
    }
}

/* Bloom probe with the tenant's hashes computed once per query (not once per node). */
static inline int bloom_has_h(const cur_t *c, int32_t node, uint64_t h1, uint64_t h2) {
    uint64_t mask = (uint64_t)c->bwords * 64 - 1;
    const uint64_t *b = c->bloom + (size_t)node * c->bwords;
    for (int i = 0; i < c->bk; i++) {
        uint64_t bit = (h1 + (uint64_t)i * h2) & mask;
        if (!(b[bit >> 6] & (1ull << (bit & 63)))) return 0;
    }
    return 1;
}

int cur_bloom_has(const cur_t *c, int32_t node, int32_t tenant) {
    uint64_t h = mix64((uint64_t)(uint32_t)tenant ^ 0x5bd1e995ull);
    return bloom_has_h(c, node, h & 0xffffffffull, (h >> 32) | 1);
}

static void bloom_add_up(cur_t *c, int32_t node, int32_t tenant) {
    for (int32_t n = node; n >= 0; n = c->parent[n]) bloom_add(c, n, tenant);
}

/* Rebuild every filter from the live shortlists (drops the stale bits left by removals). */
void cur_rebuild_bloom(cur_t *c) {
    memset(c->bloom, 0, sizeof(uint64_t) * (size_t)c->bwords * (size_t)c->nnodes);
    for (int32_t i = 0; i < c->nsl; i++)
        if (c->sl[i].node >= 0) bloom_add_up(c, c->sl[i].node, c->sl[i].tenant);
    c->stale = 0;
}

static void note_dropped(cur_t *c) {
    c->stale++;
    if (c->stale > 4096 && c->stale * 4 > c->nlive_sl) cur_rebuild_bloom(c);
}

/* ------------------------------------------------------------------ lifecycle */
static inline int is_leaf(const cur_t *c, int32_t n) { return c->cptr[n + 1] == c->cptr[n]; }

cur_t *cur_new(int32_t dim, int32_t metric, int32_t tmetric, int32_t nnodes, const float *cent,
               const int32_t *parent, const int32_t *cptr, const int32_t *child,
               int32_t bloom_bits, int32_t bloom_k, int32_t max_sl) {
    cur_t *c = calloc(1, sizeof(cur_t));
    if (!c) return NULL;
    c->dim = dim;
    c->metric = metric;
    c->tmetric = tmetric;
    c->nnodes = nnodes;
    c->max_sl = max_sl;
    c->bwords = 1; /* round the filter up to a power of two of 64-bit words */
    while ((int64_t)c->bwords * 64 < bloom_bits) c->bwords *= 2;
    c->bk = bloom_k < 1 ? 1 : bloom_k;
    int32_t nch = cptr[nnodes];
    c->cent = malloc(sizeof(float) * (size_t)nnodes * dim);
    c->parent = malloc(sizeof(int32_t) * (size_t)nnodes);
    c->cptr = malloc(sizeof(int32_t) * (size_t)(nnodes + 1));
    c->child = malloc(sizeof(int32_t) * (size_t)(nch > 0 ? nch : 1));
    c->depth = malloc(sizeof(int32_t) * (size_t)nnodes);
    c->ccontig = calloc((size_t)nnodes, 1);
    c->bloom = calloc((size_t)nnodes * c->bwords, sizeof(uint64_t));
    c->leaf = calloc((size_t)nnodes, sizeof(cur_list));
    c->hcap = 1024;
    c->hkey = malloc(sizeof(uint64_t) * (size_t)c->hcap);
    c->hval = malloc(sizeof(int32_t) * (size_t)c->hcap);
    if (!c->cent || !c->parent || !c->cptr || !c->child || !c->depth || !c->ccontig || !c->bloom
        || !c->leaf || !c->hkey || !c->hval) {
        /* partial allocation: free what we have */
        free(c->cent); free(c->parent); free(c->cptr); free(c->child); free(c->depth);
        free(c->ccontig);
        free(c->bloom); free(c->leaf); free(c->hkey); free(c->hval); free(c);
        return NULL;
    }
    for (int64_t i = 0; i < c->hcap; i++) c->hkey[i] = EMPTY_KEY;
    memcpy(c->cent, cent, sizeof(float) * (size_t)nnodes * dim);
    memcpy(c->parent, parent, sizeof(int32_t) * (size_t)nnodes);
    memcpy(c->cptr, cptr, sizeof(int32_t) * (size_t)(nnodes + 1));
    if (nch > 0) memcpy(c->child, child, sizeof(int32_t) * (size_t)nch);
    c->maxdepth = 0;
    for (int32_t n = 0; n < nnodes; n++) {
        int32_t d = 0;
        for (int32_t p = parent[n]; p >= 0; p = parent[p]) d++;
        c->depth[n] = d;
        if (d > c->maxdepth) c->maxdepth = d;
        c->leaf[n].node = n;
        c->leaf[n].tenant = -1;
        int contig = 1;
        for (int32_t j = cptr[n] + 1; j < cptr[n + 1]; j++)
            if (child[j] != child[j - 1] + 1) contig = 0;
        c->ccontig[n] = (uint8_t)contig;
    }
    return c;
}

void cur_free(cur_t *c) {
    if (!c) return;
    for (int32_t i = 0; i < c->nsl; i++) free(c->sl[i].ids);
    for (int32_t n = 0; n < c->nnodes; n++) free(c->leaf[n].ids);
    for (int64_t s = 0; s < c->scap; s++) free(c->sten[s].t);
    free(c->sl); free(c->freel); free(c->hkey); free(c->hval); free(c->leaf);
    free(c->sleaf); free(c->spos); free(c->sten);
    free(c->cent); free(c->parent); free(c->cptr); free(c->child); free(c->depth); free(c->bloom);
    free(c->ccontig);
    free(c);
}

static int ensure_slot(cur_t *c, int64_t slot) {
    if (slot < c->scap) return 0;
    int64_t cap = c->scap ? c->scap : 1024;
    while (cap <= slot) cap *= 2;
    int32_t *l = realloc(c->sleaf, sizeof(int32_t) * (size_t)cap);
    if (!l) return -1;
    c->sleaf = l;
    int32_t *p = realloc(c->spos, sizeof(int32_t) * (size_t)cap);
    if (!p) return -1;
    c->spos = p;
    cur_tlist *t = realloc(c->sten, sizeof(cur_tlist) * (size_t)cap);
    if (!t) return -1;
    c->sten = t;
    for (int64_t i = c->scap; i < cap; i++) {
        c->sleaf[i] = -1;
        c->spos[i] = -1;
        c->sten[i].t = NULL;
        c->sten[i].n = c->sten[i].cap = 0;
    }
    c->scap = cap;
    return 0;
}

/* ------------------------------------------------------------------ shortlists */
static int32_t sl_new(cur_t *c, int32_t node, int32_t tenant) {
    int32_t id;
    if (c->nfree) {
        id = c->freel[--c->nfree];
    } else {
        if (c->nsl == c->slcap) {
            int32_t cap = c->slcap ? c->slcap * 2 : 1024;
            cur_list *p = realloc(c->sl, sizeof(cur_list) * (size_t)cap);
            if (!p) return -1;
            c->sl = p;
            int32_t *f = realloc(c->freel, sizeof(int32_t) * (size_t)cap);
            if (!f) return -1;
            c->freel = f;
            c->slcap = cap;
        }
        id = c->nsl++;
        c->sl[id].ids = NULL;
        c->sl[id].cap = 0;
    }
    c->sl[id].n = 0;
    c->sl[id].node = node;
    c->sl[id].tenant = tenant;
    if (h_put(c, node, tenant, id)) return -1;
    c->nlive_sl++;
    return id;
}

static void sl_drop(cur_t *c, int32_t id) {
    cur_list *l = &c->sl[id];
    h_del(c, l->node, l->tenant);
    l->node = -1;
    l->n = 0;
    /* keep a small buffer for reuse; free big ones */
    if (l->cap > 64) { free(l->ids); l->ids = NULL; l->cap = 0; }
    c->freel[c->nfree++] = id;
    c->nlive_sl--;
}

static int sl_append(cur_t *c, int32_t id, int64_t slot) {
    if (grow_list(&c->sl[id], c->sl[id].n + 1)) return -1;
    c->sl[id].ids[c->sl[id].n++] = slot;
    return 0;
}

/* The child of `node` on `slot`'s path (node must be a strict ancestor of the slot's leaf). */
static inline int32_t child_on_path(const cur_t *c, int64_t slot, int32_t node) {
    int32_t n = c->sleaf[slot];
    while (c->parent[n] != node) n = c->parent[n];
    return n;
}

/* Push an over-full shortlist down to the children, recursively while a child overflows. */
static int sl_split(cur_t *c, int32_t id) {
    int32_t node = c->sl[id].node, tenant = c->sl[id].tenant;
    int32_t n = c->sl[id].n;
    int64_t *ids = c->sl[id].ids;
    /* detach the entries: drop the shortlist first, then distribute (ids buffer kept by us) */
    c->sl[id].ids = NULL;
    c->sl[id].cap = 0;
    sl_drop(c, id);
    int rc = 0;
    for (int32_t i = 0; i < n && !rc; i++) {
        int32_t ch = child_on_path(c, ids[i], node);
        int64_t cid = h_find(c, ch, tenant);
        if (cid < 0) {
            cid = sl_new(c, ch, tenant);
            if (cid < 0) { rc = -1; break; }
            bloom_add(c, ch, tenant);
        }
        rc = sl_append(c, (int32_t)cid, ids[i]);
    }
    /* recurse into children that still overflow */
    for (int32_t j = c->cptr[node]; j < c->cptr[node + 1] && !rc; j++) {
        int32_t ch = c->child[j];
        if (is_leaf(c, ch)) continue;
        int64_t cid = h_find(c, ch, tenant);
        if (cid >= 0 && c->sl[cid].n > c->max_sl) rc = sl_split(c, (int32_t)cid);
    }
    free(ids);
    return rc;
}

static int tlist_has(const cur_tlist *t, int32_t tenant) {
    for (int32_t i = 0; i < t->n; i++)
        if (t->t[i] == tenant) return 1;
    return 0;
}

/* Grant: walk the slot's path from the root (see the module comment). 1 granted, 0 already
 * there, -1 slot not live, -2 out of memory. */
int cur_grant(cur_t *c, int64_t slot, int32_t tenant) {
    if (slot < 0 || slot >= c->scap || c->sleaf[slot] < 0) return -1;
    cur_tlist *tl = &c->sten[slot];
    if (tlist_has(tl, tenant)) return 0;
    if (tl->n == tl->cap) {
        int32_t cap = tl->cap ? tl->cap * 2 : 2;
        int32_t *p = realloc(tl->t, sizeof(int32_t) * (size_t)cap);
        if (!p) return -2;
        tl->t = p;
        tl->cap = cap;
    }
    tl->t[tl->n++] = tenant;
    /* path root..leaf */
    int32_t path[64];
    int32_t len = 0;
    for (int32_t n = c->sleaf[slot]; n >= 0 && len < 64; n = c->parent[n]) path[len++] = n;
    for (int32_t i = len - 1; i >= 0; i--) {
        int32_t node = path[i];
        int64_t id = h_find(c, node, tenant);
        if (id >= 0) {
            if (sl_append(c, (int32_t)id, slot)) return -2;
            if (!is_leaf(c, node) && c->sl[id].n > c->max_sl && sl_split(c, (int32_t)id)) return -2;
            return 1;
        }
        if (i == 0 || !cur_bloom_has(c, node, tenant)) {
            id = sl_new(c, node, tenant);
            if (id < 0 || sl_append(c, (int32_t)id, slot)) return -2;
            bloom_add_up(c, node, tenant);
            return 1;
        }
    }
    return -2; /* unreachable */
}

/* Entries of `tenant` in shortlists at or below `node`, stopping once above `limit`. */
static int64_t count_below(const cur_t *c, int32_t node, int32_t tenant, int64_t limit,
                           int32_t *stack) {
    int64_t total = 0;
    int32_t sp = 0;
    stack[sp++] = node;
    while (sp) {
        int32_t n = stack[--sp];
        if (!cur_bloom_has(c, n, tenant)) continue;
        int64_t id = h_find(c, n, tenant);
        if (id >= 0) {
            total += c->sl[id].n;
            if (total > limit) return total;
            continue;
        }
        for (int32_t j = c->cptr[n]; j < c->cptr[n + 1]; j++) stack[sp++] = c->child[j];
    }
    return total;
}

/* Move every shortlist of `tenant` strictly below `node` into one shortlist at `node`. */
static int merge_into(cur_t *c, int32_t node, int32_t tenant, int32_t *stack) {
    int32_t dst = sl_new(c, node, tenant);
    if (dst < 0) return -1;
    int32_t sp = 0;
    for (int32_t j = c->cptr[node]; j < c->cptr[node + 1]; j++) stack[sp++] = c->child[j];
    while (sp) {
        int32_t n = stack[--sp];
        if (!cur_bloom_has(c, n, tenant)) continue;
        int64_t id = h_find(c, n, tenant);
        if (id >= 0) {
            cur_list *l = &c->sl[id];
            if (grow_list(&c->sl[dst], c->sl[dst].n + l->n)) return -1;
            memcpy(c->sl[dst].ids + c->sl[dst].n, l->ids, sizeof(int64_t) * (size_t)l->n);
            c->sl[dst].n += l->n;
            sl_drop(c, (int32_t)id);
            note_dropped(c);
            continue;
        }
        for (int32_t j = c->cptr[n]; j < c->cptr[n + 1]; j++) stack[sp++] = c->child[j];
    }
    return 0;
}

/* Revoke: remove the entry, drop an emptied shortlist, then merge the tenant's shortlists up to
 * the highest ancestor whose whole sub-tree holds <= max_sl of its entries. 1 revoked, 0 not
 * granted, -1 slot not live, -2 out of memory. */
int cur_revoke(cur_t *c, int64_t slot, int32_t tenant) {
    if (slot < 0 || slot >= c->scap || c->sleaf[slot] < 0) return -1;
    cur_tlist *tl = &c->sten[slot];
    int32_t k;
    for (k = 0; k < tl->n && tl->t[k] != tenant; k++) {}
    if (k == tl->n) return 0;
    tl->t[k] = tl->t[--tl->n];
    int32_t node = -1;
    int64_t id = -1;
    for (int32_t n = c->sleaf[slot]; n >= 0; n = c->parent[n]) {
        id = h_find(c, n, tenant);
        if (id >= 0) { node = n; break; }
    }
    if (id < 0) return -2; /* broken invariant: should not happen */
    cur_list *l = &c->sl[id];
    for (int32_t i = 0; i < l->n; i++)
        if (l->ids[i] == slot) { l->ids[i] = l->ids[--l->n]; break; }
    if (l->n == 0) {
        sl_drop(c, (int32_t)id);
        note_dropped(c);
    }
    if (node == 0) return 1;
    int32_t *stack = malloc(sizeof(int32_t) * (size_t)(c->nnodes + 1));
    if (!stack) return -2;
    int32_t best = -1;
    for (int32_t a = c->parent[node]; a >= 0; a = c->parent[a]) {
        int64_t tot = count_below(c, a, tenant, c->max_sl, stack);
        if (tot > c->max_sl) break;
        if (tot > 0) best = a;
    }
    int rc = 0;
    if (best >= 0) rc = merge_into(c, best, tenant, stack);
    free(stack);
    return rc ? -2 : 1;
}

/* ------------------------------------------------------------------ slots */
int32_t cur_route(const cur_t *c, const float *v) {
    int32_t n = 0;
    while (!is_leaf(c, n)) {
        float best = INFINITY;
        int32_t bc = c->child[c->cptr[n]];
        for (int32_t j = c->cptr[n]; j < c->cptr[n + 1]; j++) {
            int32_t ch = c->child[j];
            float d = vd_dist(v, c->cent + (size_t)ch * c->dim, (size_t)c->dim, c->tmetric);
            if (d < best) { best = d; bc = ch; }
        }
        n = bc;
    }
    return n;
}

/* Place a new live slot in `leaf` (no tenants yet). 0 ok, -1 already live, -2 no memory. */
int cur_place(cur_t *c, int64_t slot, int32_t leaf) {
    if (ensure_slot(c, slot)) return -2;
    if (c->sleaf[slot] >= 0) return -1;
    cur_list *l = &c->leaf[leaf];
    if (grow_list(l, l->n + 1)) return -2;
    c->spos[slot] = l->n;
    l->ids[l->n++] = slot;
    c->sleaf[slot] = leaf;
    c->nlive++;
    return 0;
}

/* Delete a live slot: revoke every tenant, leave its leaf. 0 ok, -1 not live, -2 no memory. */
int cur_unplace(cur_t *c, int64_t slot) {
    if (slot < 0 || slot >= c->scap || c->sleaf[slot] < 0) return -1;
    while (c->sten[slot].n) {
        if (cur_revoke(c, slot, c->sten[slot].t[c->sten[slot].n - 1]) < 0) return -2;
    }
    cur_list *l = &c->leaf[c->sleaf[slot]];
    int32_t p = c->spos[slot];
    int64_t last = l->ids[--l->n];
    l->ids[p] = last;
    c->spos[last] = p;
    c->sleaf[slot] = -1;
    c->spos[slot] = -1;
    c->nlive--;
    return 0;
}

/* Restore a shortlist verbatim (load); entries must be live slots below `node`. */
int cur_restore_list(cur_t *c, int32_t node, int32_t tenant, const int64_t *ids, int32_t n) {
    int32_t id = sl_new(c, node, tenant);
    if (id < 0 || grow_list(&c->sl[id], n)) return -2;
    memcpy(c->sl[id].ids, ids, sizeof(int64_t) * (size_t)n);
    c->sl[id].n = n;
    bloom_add_up(c, node, tenant);
    for (int32_t i = 0; i < n; i++) {
        cur_tlist *tl = &c->sten[ids[i]];
        if (tl->n == tl->cap) {
            int32_t cap = tl->cap ? tl->cap * 2 : 2;
            int32_t *p = realloc(tl->t, sizeof(int32_t) * (size_t)cap);
            if (!p) return -2;
            tl->t = p;
            tl->cap = cap;
        }
        tl->t[tl->n++] = tenant;
    }
    return 0;
}

/* ------------------------------------------------------------------ search */
typedef struct { float d; int32_t node; } cur_pqe;

static void pq_push(cur_pqe *h, int32_t *sz, float d, int32_t node) {
    int32_t i = (*sz)++;
    while (i > 0) {
        int32_t p = (i - 1) >> 1;
        if (h[p].d <= d) break;
        h[i] = h[p];
        i = p;
    }
    h[i].d = d;
    h[i].node = node;
}

static cur_pqe pq_pop(cur_pqe *h, int32_t *sz) {
    cur_pqe top = h[0];
    cur_pqe last = h[--(*sz)];
    int32_t i = 0, n = *sz;
    for (;;) {
        int32_t l = 2 * i + 1;
        if (l >= n) break;
        int32_t r = l + 1, m = (r < n && h[r].d < h[l].d) ? r : l;
        if (h[m].d >= last.d) break;
        h[i] = h[m];
        i = m;
    }
    if (n) h[i] = last;
    return top;
}

typedef struct { float d; const cur_list *l; } cur_bucket;

static int bucket_cmp(const void *a, const void *b) {
    float x = ((const cur_bucket *)a)->d, y = ((const cur_bucket *)b)->d;
    return (x > y) - (x < y);
}

/* Per-thread search scratch, grown on demand and kept between calls: the per-query path does no
 * allocation once a thread has warmed up (a search is ~10-20 us, so even a few malloc/free
 * pairs per call are a visible share). Freed by the pthread key destructor at thread exit. */
typedef struct {
    cur_pqe *pq;
    cur_bucket *bk;
    float *hd, *cd, *dist;
    int64_t *hi, *ids;
    int64_t pqcap, bkcap, hdcap, hicap, cdcap, dcap, idcap;
} cur_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok = 0;

static void scratch_free(void *p) {
    cur_scratch *s = p;
    if (!s) return;
    free(s->pq); free(s->bk); free(s->hd); free(s->cd); free(s->dist); free(s->hi); free(s->ids);
    free(s);
}

static void scratch_key_init(void) {
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

static cur_scratch *scratch_get(void) {
    pthread_once(&scratch_once, scratch_key_init);
    if (!scratch_key_ok) return NULL;
    cur_scratch *s = pthread_getspecific(scratch_key);
    if (s) return s;
    s = calloc(1, sizeof(cur_scratch));
    if (!s) return NULL;
    if (pthread_setspecific(scratch_key, s)) { free(s); return NULL; }
    return s;
}

/* Grow *p (elements of `size` bytes) to hold at least `need`; 0 ok, -1 out of memory. */
static int grow_buf(void **p, int64_t *cap, int64_t need, size_t size) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, size * (size_t)c);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}
#define GROW(s, f, cap, need) grow_buf((void **)&(s)->f, &(s)->cap, (need), sizeof(*(s)->f))


/* One query (see cur_search). */
static int search_one(const cur_t *c, cur_scratch *s, const float *base, const float *q,
                      int32_t tenant, int32_t k, double collect, double scan_budget,
                      int64_t *out_id, float *out_d, int64_t *stats) {
    size_t d = (size_t)c->dim;
    uint64_t h = mix64((uint64_t)(uint32_t)tenant ^ 0x5bd1e995ull);
    uint64_t h1 = h & 0xffffffffull, h2 = (h >> 32) | 1;
    int filtered = tenant >= 0;
    int32_t psz = 0, nb = 0;
    int64_t total = 0;
    if (!filtered || bloom_has_h(c, 0, h1, h2))
        pq_push(s->pq, &psz, vd_dist(q, c->cent, d, c->tmetric), 0);
    while (psz && (double)total < collect) {
        cur_pqe e = pq_pop(s->pq, &psz);
        int32_t n = e.node;
        stats[1]++;
        if (nb == s->bkcap && GROW(s, bk, bkcap, nb + 1)) return -2;
        if (filtered) {
            int64_t id = h_find(c, n, tenant);
            if (id >= 0) {
                s->bk[nb].d = e.d;
                s->bk[nb++].l = &c->sl[id];
                total += c->sl[id].n;
                continue;
            }
        } else if (is_leaf(c, n)) {
            if (c->leaf[n].n) {
                s->bk[nb].d = e.d;
                s->bk[nb++].l = &c->leaf[n];
                total += c->leaf[n].n;
            }
            continue;
        }
        int32_t j0 = c->cptr[n], nch = c->cptr[n + 1] - j0;
        if (!nch) continue;
        if (GROW(s, pq, pqcap, psz + nch) || GROW(s, cd, cdcap, nch)) return -2;
        if (c->ccontig[n]) {
            /* children's centroids are one contiguous block: one blocked kernel call */
            int32_t first = c->child[j0];
            vd_dist_block(q, c->cent + (size_t)first * d, (size_t)nch, d, c->tmetric, s->cd);
            for (int32_t j = 0; j < nch; j++)
                if (!filtered || bloom_has_h(c, first + j, h1, h2))
                    pq_push(s->pq, &psz, s->cd[j], first + j);
        } else {
            for (int32_t j = j0; j < j0 + nch; j++) {
                int32_t ch = c->child[j];
                if (filtered && !bloom_has_h(c, ch, h1, h2)) continue;
                pq_push(s->pq, &psz, vd_dist(q, c->cent + (size_t)ch * d, d, c->tmetric), ch);
            }
        }
    }
    if (nb > 1) qsort(s->bk, (size_t)nb, sizeof(cur_bucket), bucket_cmp);
    /* the nearest buckets up to the scan budget, concatenated into one slot list */
    int64_t m = 0;
    int32_t b;
    for (b = 0; b < nb && (double)m < scan_budget; b++) m += s->bk[b].l->n;
    if (GROW(s, ids, idcap, m) || GROW(s, dist, dcap, m)) return -2;
    int64_t w = 0;
    for (int32_t i = 0; i < b; i++) {
        const cur_list *l = s->bk[i].l;
        memcpy(s->ids + w, l->ids, sizeof(int64_t) * (size_t)l->n);
        w += l->n;
    }
    vd_dist_gather(q, base, s->ids, (size_t)m, d, c->metric, s->dist);
    vd_heap heap = {s->hd, s->hi, 0, (size_t)k};
    /* most candidates lose to the current k-th: test inline, call the heap only for the rest
     * (ties go to the heap, which orders them by slot) */
    int64_t i0 = m < k ? m : k;
    for (int64_t i = 0; i < i0; i++) vd_heap_push_bounded(&heap, s->dist[i], s->ids[i]);
    for (int64_t i = i0; i < m; i++)
        if (s->dist[i] <= s->hd[0]) vd_heap_push_bounded(&heap, s->dist[i], s->ids[i]);
    stats[0] += m;
    vd_heap_sort(&heap);
    for (int32_t i = 0; i < k; i++) {
        if ((size_t)i < heap.size) {
            out_id[i] = s->hi[i];
            out_d[i] = s->hd[i];
        } else {
            out_id[i] = -1;
            out_d[i] = INFINITY;
        }
    }
    return 0;
}

/* k nearest of each query among `tenant`'s slots (tenant < 0: all live slots).
 * Best-first over the tree by centroid distance, skipping nodes whose Bloom filter lacks the
 * tenant; a node holding the tenant's shortlist (or, unfiltered, a leaf) becomes a bucket. The
 * walk stops once buckets hold >= gamma1*gamma2*k vectors; the buckets nearest by centroid are
 * scanned exactly until >= gamma2*k vectors were scanned. The chosen buckets' slots are first
 * concatenated, so one gather streams over all of them and its row prefetch runs ahead across
 * bucket boundaries. stats[0] += vectors scanned, stats[1] += nodes visited. Returns 0, or -2
 * when out of memory. */
int cur_search(const cur_t *c, const float *base, const float *Q, int64_t nq, int32_t tenant,
               int32_t k, double gamma1, double gamma2, int64_t *out_id, float *out_d,
               int64_t *stats) {
    cur_scratch *s = scratch_get();
    if (!s || GROW(s, pq, pqcap, 256) || GROW(s, bk, bkcap, 64) || GROW(s, hd, hdcap, k)
        || GROW(s, hi, hicap, k))
        return -2;
    double collect = gamma1 * gamma2 * (double)k, scan_budget = gamma2 * (double)k;
    for (int64_t qi = 0; qi < nq; qi++) {
        int rc = search_one(c, s, base, Q + (size_t)qi * (size_t)c->dim, tenant, k, collect,
                            scan_budget, out_id + qi * k, out_d + qi * k, stats);
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ introspection */
int64_t cur_memory(const cur_t *c) {
    int64_t m = sizeof(cur_t);
    m += (int64_t)c->nnodes * (c->dim * 4 + 4 * 3 + c->bwords * 8 + (int64_t)sizeof(cur_list)) + 4;
    m += (int64_t)c->slcap * ((int64_t)sizeof(cur_list) + 4) + c->hcap * 12;
    for (int32_t i = 0; i < c->nsl; i++) m += (int64_t)c->sl[i].cap * 8;
    for (int32_t n = 0; n < c->nnodes; n++) m += (int64_t)c->leaf[n].cap * 8;
    m += c->scap * (8 + (int64_t)sizeof(cur_tlist));
    for (int64_t s = 0; s < c->scap; s++) m += (int64_t)c->sten[s].cap * 4;
    return m;
}

int32_t cur_nsl(const cur_t *c) { return c->nsl; }
int64_t cur_nlive(const cur_t *c) { return c->nlive; }
int64_t cur_scap(const cur_t *c) { return c->scap; }
int32_t cur_slot_leaf(const cur_t *c, int64_t s) { return s >= 0 && s < c->scap ? c->sleaf[s] : -1; }

/* Shortlist i: returns its length (-1 if the id is free) and fills node/tenant/ids. */
int32_t cur_list_info(const cur_t *c, int32_t i, int32_t *node, int32_t *tenant,
                      const int64_t **ids) {
    if (i < 0 || i >= c->nsl || c->sl[i].node < 0) return -1;
    *node = c->sl[i].node;
    *tenant = c->sl[i].tenant;
    *ids = c->sl[i].ids;
    return c->sl[i].n;
}

int32_t cur_slot_tenants(const cur_t *c, int64_t s, const int32_t **t) {
    if (s < 0 || s >= c->scap || c->sleaf[s] < 0) return -1;
    *t = c->sten[s].t;
    return c->sten[s].n;
}

int32_t cur_leaf_members(const cur_t *c, int32_t leaf, const int64_t **ids) {
    *ids = c->leaf[leaf].ids;
    return c->leaf[leaf].n;
}

/* ------------------------------------------------------------------ readers-writer gate */
/* The index's readers-writer lock, in C so that a search can take it, run and release it in one
 * GIL-free stretch (a Python-level lock costs ~1 us per search, a tenth of a small query).
 * Many readers or one writer; the writer side is reentrant for the thread holding it, and a read
 * from that thread takes nothing (it may read its own state). Writers wait for running readers;
 * new readers wait while a writer waits, so a stream of searches cannot starve writes. The gate
 * also holds the structure and vector matrix a search must use, (re)bound by the writer. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t readers, waiting, depth, writing;
    pthread_t owner;
} cur_gate;

cur_gate *cur_gate_new(void) {
    cur_gate *g = calloc(1, sizeof(cur_gate));
    if (!g) return NULL;
    if (pthread_mutex_init(&g->mu, NULL)) { free(g); return NULL; }
    if (pthread_cond_init(&g->cv, NULL)) { pthread_mutex_destroy(&g->mu); free(g); return NULL; }
    return g;
}

void cur_gate_free(cur_gate *g) {
    if (!g) return;
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* Take the read side; returns 1, or 0 (nothing taken) for the thread holding the write side.
 * May block: call without the GIL. */
int cur_gate_read(cur_gate *g) {
    pthread_mutex_lock(&g->mu);
    if (g->writing && pthread_equal(g->owner, pthread_self())) {
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    while (g->writing || g->waiting) pthread_cond_wait(&g->cv, &g->mu);
    g->readers++;
    pthread_mutex_unlock(&g->mu);
    return 1;
}

void cur_gate_read_done(cur_gate *g) {
    pthread_mutex_lock(&g->mu);
    if (--g->readers == 0) pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Take the write side (reentrant). May block: call without the GIL. */
void cur_gate_write(cur_gate *g) {
    pthread_mutex_lock(&g->mu);
    if (g->writing && pthread_equal(g->owner, pthread_self())) {
        g->depth++;
        pthread_mutex_unlock(&g->mu);
        return;
    }
    g->waiting++;
    while (g->writing || g->readers) pthread_cond_wait(&g->cv, &g->mu);
    g->waiting--;
    g->writing = 1;
    g->owner = pthread_self();
    g->depth = 1;
    pthread_mutex_unlock(&g->mu);
}

/* Release one level of the write side; returns -1 if the caller does not hold it. */
int cur_gate_write_done(cur_gate *g) {
    pthread_mutex_lock(&g->mu);
    if (!g->writing || !pthread_equal(g->owner, pthread_self())) {
        pthread_mutex_unlock(&g->mu);
        return -1;
    }
    if (--g->depth == 0) {
        g->writing = 0;
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* 1 if the calling thread holds the write side. */
int cur_gate_is_writer(cur_gate *g) {
    pthread_mutex_lock(&g->mu);
    int r = g->writing && pthread_equal(g->owner, pthread_self());
    pthread_mutex_unlock(&g->mu);
    return r;
}
