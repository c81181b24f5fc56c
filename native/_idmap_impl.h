/* vecdb id map: open-addressing hash map uint64 id -> int64 slot (see _idmap_impl.c). */
#ifndef VD_IDMAP_IMPL_H
#define VD_IDMAP_IMPL_H

#include <stdint.h>

#define IDM_EMPTY ((int64_t)-1)  /* value of a never-used bucket: a probe stops here */
#define IDM_TOMB ((int64_t)-2)   /* value of a deleted bucket: a probe continues past it */

typedef struct {
    uint64_t key;
    int64_t val; /* >= 0: a live entry; IDM_EMPTY / IDM_TOMB: no key here (any key is legal) */
} idm_entry;

typedef struct {
    idm_entry *tab;
    int64_t cap;   /* power of two */
    int64_t live;  /* entries with val >= 0 */
    int64_t used;  /* live + tombstones: what bounds probe lengths */
} idm_table;

uint64_t idm_hash(uint64_t x);
int idm_init(idm_table *t, int64_t cap);
void idm_release(idm_table *t);
int64_t idm_cap_for(int64_t n);
int idm_rehash_into(const idm_table *src, idm_table *dst);
int idm_needs_grow(const idm_table *t, int64_t n_new);
void idm_lookup(const idm_table *t, const uint64_t *keys, int64_t n, int64_t *out);
int64_t idm_insert(idm_table *t, const uint64_t *keys, const int64_t *vals, int64_t n);
int64_t idm_delete(idm_table *t, const uint64_t *keys, int64_t n);
int64_t idm_export(const idm_table *t, uint64_t *keys, int64_t *vals, int64_t room);

#endif
