/* SPANN posting scan (vecdb._spann): the per-query inner loop of SPANNIndex.search.
 *
 * A posting list is a run of packed records (no header), see vecdb/index/_spann_parts.py:
 *
 *     offset 0   int64  slot      (little endian)
 *     offset 8   uint8  version   (must equal ver[slot], else the record is stale)
 *     offset 9   3 pad bytes
 *     offset 12  float32[dim]     the vector (or float16[dim]: ``half`` postings, half the bytes)
 *
 * sp_scan walks the records of every fetched list once: a record counts only if its slot is live,
 * its version is the slot's current one and (with a tenant bitmap) the tenant's bit is set; its
 * distance goes into a bounded max-heap of k that keeps one entry per slot (a vector replicated
 * to several lists has the same vector, hence the same distance, in each: the first one wins).
 * No allocation, no Python, callable without the GIL.
 */
#ifndef VD_SPANN_IMPL_H
#define VD_SPANN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#define SP_HEADER 12 /* bytes before the vector in a record */

/* Record formats: the vector as float32, IEEE half floats, or SQ8 (one uint8 code per dimension,
 * value = offset[i] + scale[i] * code, per-dimension scale/offset trained at build). */
enum { SP_F32 = 0, SP_F16 = 1, SP_SQ8 = 2 };

/* Scan ``nblocks`` blocks (``blocks[i]`` of ``lens[i]`` bytes; NULL/0 = a missing list).
 * ``live``/``ver``: one byte per slot for ``nslots`` slots. ``bitmap``: packed little-endian
 * tenant bits over ``bm_bytes`` bytes, or NULL for no tenant filter. Writes the k best
 * (distance ascending, slot ascending on ties) to out_slot/out_dist, padded with -1/+inf.
 * Returns the number of distinct results (<= k), or -1 if a block length is not a whole number
 * of records. ``stats`` (may be NULL) receives [records scanned, records that passed the filter].
 */
int64_t sp_scan(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                int64_t *out_slot, float *out_dist, int64_t *stats);

/* The same over records whose vectors are IEEE half floats (record = 12 + 2*dim bytes): each
 * vector is widened to float32 (F16C when the CPU has it, else exact scalar conversion) and
 * scored with the same vd kernel. */
void sp_force_scalar_widen(int on); /* 1: never F16C (tests of the portable path) */
int64_t sp_scan_half(const float *q, int32_t dim, int32_t metric, const uint8_t *const *blocks,
                     const int64_t *lens, int64_t nblocks, const uint8_t *live, const uint8_t *ver,
                     int64_t nslots, const uint8_t *bitmap, int64_t bm_bytes, int32_t k,
                     int64_t *out_slot, float *out_dist, int64_t *stats);

/* Any format: ``fmt`` one of SP_F32/SP_F16/SP_SQ8; ``sq_scale``/``sq_offset`` (dim floats each)
 * for SP_SQ8, else unused. SQ8 distances are those of the decoded vectors (offset + scale *
 * code), computed from the codes with the query folded into the quantizer (sp_sq8_prepare).
 * Returns as sp_scan, or -2 when out of memory. */
int64_t sp_scan_fmt(const float *q, int32_t dim, int32_t metric, int fmt, const float *sq_scale,
                    const float *sq_offset, const uint8_t *const *blocks, const int64_t *lens,
                    int64_t nblocks, const uint8_t *live, const uint8_t *ver, int64_t nslots,
                    const uint8_t *bitmap, int64_t bm_bytes, int32_t k, int64_t *out_slot,
                    float *out_dist, int64_t *stats);
size_t sp_record_bytes(int fmt, int32_t dim);
/* SQ8 query terms: ip: a = q*scale, c = q.offset (distance -(c + a.code)); l2: a =
 * (q-offset)/scale, w = scale^2 (distance sum w (a-code)^2 + c, c collecting the dimensions
 * whose scale is 0). */
void sp_sq8_prepare(const float *q, const float *scale, const float *offset, int32_t dim,
                    int32_t metric, float *a, float *w, float *c);

/* SPANN's RNG replica rule for n vectors (see rng_select in vecdb/index/_spann_parts.py).
 * cand [n, C] candidate head ids sorted by cdist [n, C] ascending (-1 padded); H [n, C, dim] the
 * candidates' vectors. keep [n, C] (output, 0/1): candidate j is kept when valid (id >= 0, within
 * (1+eps1) of the nearest: squared L2 as is, negated ip through 2+2d), fewer than ``replicas``
 * are kept yet, and no kept candidate i has dist(c_i, c_j) < dist(x, c_j). */
void sp_rng_select(const int64_t *cand, const float *cdist, const float *H, int64_t n, int32_t C,
                   int32_t dim, int32_t metric, int32_t replicas, float eps1, uint8_t *keep);

/* The same rule reading head vectors straight from the head matrix H [m, dim] (row = candidate
 * id): no gathered [n, C, dim] copy. out [n, replicas] receives the chosen head ids in candidate
 * order, -1 padded; keep [n, C] (may be NULL) the same choice as a 0/1 mask. Decisions are
 * identical to sp_rng_select on gathered rows (same distances, same order, no replica cap).
 * Returns -1 (writing nothing) if a candidate id is >= m. */
int64_t sp_rng_select_heads(const int64_t *cand, const float *cdist, const float *H, int64_t m,
                            int64_t n, int32_t C, int32_t dim, int32_t metric, int32_t replicas,
                            float eps1, int64_t *out, uint8_t *keep);

#endif
