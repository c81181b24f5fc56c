/* vecdb id map: open-addressing hash map uint64 id -> int64 slot, linear probing.
 *
 * Layout: one array of {key, val} buckets (16 bytes, one cache line holds 4), power-of-two
 * capacity, probe = (hash(key) + i) & (cap - 1). Occupancy lives in the value, not the key:
 * val >= 0 is a live entry, IDM_EMPTY ends a probe, IDM_TOMB (a deleted entry) does not. So every
 * uint64 key is legal, 0 and 2^64-1 included; only values (slots) must be >= 0.
 *
 * Load: callers grow (rehash into a new table, idm_rehash_into) before an insert batch could
 * push used = live + tombstones above 0.7 * cap (idm_needs_grow); a rehash sizes the new table
 * so that live + batch <= 0.6 * cap (idm_cap_for), which leaves >= 0.1 * cap of inserts or
 * deletes before the next one: amortised O(1). Deletes leave tombstones, except that a deleted
 * bucket followed by an empty one becomes empty (with any tombstones right before it), since no
 * probe can continue past it.
 *
 * Concurrency (what the Cython wrapper relies on): within one table, lookups may run while one
 * writer inserts or deletes. A writer stores the key before it publishes the value (release) and
 * a reader loads the value (acquire) before it reads the key, and buckets never move, so a reader
 * never pairs a key with another key's slot; it sees each key's entry before or after the
 * change. A rehash builds a separate table: the wrapper swaps the pointer and frees the old
 * table only when no lookup is running.
 */
#include "_idmap_impl.h"

#include <stdlib.h>
#include <string.h>

#define IDM_PREFETCH 16 /* lookups in flight: hides the one cache miss per random id */

static inline int64_t load_val(const idm_entry *e) {
    return __atomic_load_n(&e->val, __ATOMIC_ACQUIRE);
}

static inline void store_val(idm_entry *e, int64_t v) {
    __atomic_store_n(&e->val, v, __ATOMIC_RELEASE);
}

/* murmur3's 64-bit finaliser: a bijection, so distinct ids never share a full hash; it spreads
 * sequential ids (the common case) over the table. */
uint64_t idm_hash(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

int idm_init(idm_table *t, int64_t cap) {
    t->tab = (idm_entry *)malloc((size_t)cap * sizeof(idm_entry));
    if (!t->tab) return -1;
    /* every byte 0xff: val == -1 == IDM_EMPTY */
    memset(t->tab, 0xff, (size_t)cap * sizeof(idm_entry));
    t->cap = cap;
    t->live = 0;
    t->used = 0;
    return 0;
}

void idm_release(idm_table *t) {
    free(t->tab);
    t->tab = NULL;
    t->cap = t->live = t->used = 0;
}

/* Smallest power-of-two capacity (>= 16) holding n entries at load <= 0.6. */
int64_t idm_cap_for(int64_t n) {
    int64_t cap = 16;
    while ((double)n > 0.6 * (double)cap) cap <<= 1;
    return cap;
}

/* Whether inserting up to n_new new keys could push the load above 0.7. */
int idm_needs_grow(const idm_table *t, int64_t n_new) {
    return (double)(t->used + n_new) > 0.7 * (double)t->cap;
}

/* Copy src's live entries into dst (freshly initialised, large enough). src is read in order;
 * the random writes into dst are prefetched IDM_PREFETCH live entries ahead. */
int idm_rehash_into(const idm_table *src, idm_table *dst) {
    const uint64_t mask = (uint64_t)dst->cap - 1;
    idm_entry *out = dst->tab;
    int64_t ahead = 0; /* src index of the next entry to prefetch for */
    int64_t inflight = 0;
    for (int64_t i = 0; i < src->cap; i++) {
        while (inflight < IDM_PREFETCH && ahead < src->cap) {
            if (src->tab[ahead].val >= 0) {
                __builtin_prefetch(&out[idm_hash(src->tab[ahead].key) & mask], 1, 1);
                inflight++;
            }
            ahead++;
        }
        const idm_entry *e = &src->tab[i];
        if (e->val < 0) continue;
        inflight--;
        uint64_t b = idm_hash(e->key) & mask;
        while (out[b].val != IDM_EMPTY) b = (b + 1) & mask;
        out[b].key = e->key;
        out[b].val = e->val;
    }
    dst->live = dst->used = src->live;
    return 0;
}

void idm_lookup(const idm_table *t, const uint64_t *keys, int64_t n, int64_t *out) {
    const uint64_t mask = (uint64_t)t->cap - 1;
    const idm_entry *tab = t->tab;
    for (int64_t i = 0; i < n && i < IDM_PREFETCH; i++)
        __builtin_prefetch(&tab[idm_hash(keys[i]) & mask], 0, 1);
    for (int64_t i = 0; i < n; i++) {
        if (i + IDM_PREFETCH < n)
            __builtin_prefetch(&tab[idm_hash(keys[i + IDM_PREFETCH]) & mask], 0, 1);
        const uint64_t k = keys[i];
        uint64_t b = idm_hash(k) & mask;
        int64_t r = -1;
        for (;;) {
            const int64_t v = load_val(&tab[b]);
            if (v == IDM_EMPTY) break;
            if (v >= 0 && tab[b].key == k) {
                r = v;
                break;
            }
            b = (b + 1) & mask;
        }
        out[i] = r;
    }
}

/* Insert or overwrite; the caller has grown the table (idm_needs_grow(t, n) is false).
 * Returns the number of keys that were new. */
int64_t idm_insert(idm_table *t, const uint64_t *keys, const int64_t *vals, int64_t n) {
    const uint64_t mask = (uint64_t)t->cap - 1;
    idm_entry *tab = t->tab;
    int64_t added = 0;
    for (int64_t i = 0; i < n && i < IDM_PREFETCH; i++)
        __builtin_prefetch(&tab[idm_hash(keys[i]) & mask], 1, 1);
    for (int64_t i = 0; i < n; i++) {
        if (i + IDM_PREFETCH < n)
            __builtin_prefetch(&tab[idm_hash(keys[i + IDM_PREFETCH]) & mask], 1, 1);
        const uint64_t k = keys[i];
        uint64_t b = idm_hash(k) & mask;
        int64_t tomb = -1;
        for (;;) {
            const int64_t v = tab[b].val;
            if (v == IDM_EMPTY) break;
            if (v == IDM_TOMB) {
                if (tomb < 0) tomb = (int64_t)b;
            } else if (tab[b].key == k) {
                store_val(&tab[b], vals[i]);
                goto next;
            }
            b = (b + 1) & mask;
        }
        if (tomb >= 0) {
            b = (uint64_t)tomb; /* reuse a tombstone: used is unchanged */
        } else {
            t->used++;
        }
        tab[b].key = k;
        store_val(&tab[b], vals[i]);
        t->live++;
        added++;
    next:;
    }
    return added;
}

/* Returns the number of keys that were present (and are now gone). */
int64_t idm_delete(idm_table *t, const uint64_t *keys, int64_t n) {
    const uint64_t mask = (uint64_t)t->cap - 1;
    idm_entry *tab = t->tab;
    int64_t gone = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t k = keys[i];
        uint64_t b = idm_hash(k) & mask;
        for (;;) {
            const int64_t v = tab[b].val;
            if (v == IDM_EMPTY) break;
            if (v >= 0 && tab[b].key == k) {
                t->live--;
                gone++;
                if (tab[(b + 1) & mask].val == IDM_EMPTY) {
                    /* nothing probes past b: it and the tombstones right before it become empty */
                    store_val(&tab[b], IDM_EMPTY);
                    t->used--;
                    uint64_t p = (b - 1) & mask;
                    while (tab[p].val == IDM_TOMB) {
                        store_val(&tab[p], IDM_EMPTY);
                        t->used--;
                        p = (p - 1) & mask;
                    }
                } else {
                    store_val(&tab[b], IDM_TOMB);
                }
                break;
            }
            b = (b + 1) & mask;
        }
    }
    return gone;
}

/* Live entries in table order into keys/vals (at most room); returns the count. */
int64_t idm_export(const idm_table *t, uint64_t *keys, int64_t *vals, int64_t room) {
    int64_t j = 0;
    for (int64_t i = 0; i < t->cap && j < room; i++) {
        const int64_t v = load_val(&t->tab[i]);
        if (v < 0) continue;
        keys[j] = t->tab[i].key;
        vals[j] = v;
        j++;
    }
    return j;
}
