/* Per-vector top-k selection for the bulk build's head search (vecdb.ingest.heads.HeadGroups).
 * See _native_heads_impl.c. */
#ifndef VD_HEADS_IMPL_H
#define VD_HEADS_IMPL_H
#include <stddef.h>
#include <stdint.h>

void vdh_merge(const float *S, size_t m, size_t w, const int64_t *rows, const float *hsq,
               const int64_t *ids, int code, size_t k, size_t cap, uint64_t *buf, int64_t *cnt,
               float *thr);
void vdh_finish(size_t n, size_t k, size_t cap, uint64_t *buf, const int64_t *cnt,
                float *out_d, int64_t *out_i);
#endif
