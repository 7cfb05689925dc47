/* The Llama network's forward pass for B rows, one token each, in plain C: codelm's CPU fast path.

   codelm/generate/cpu_kernel.py compiles this file on the user's machine at first use (cc -O3
   -march=native -fopenmp: AVX-512 intrinsics where the CPU has AVX-512F, AVX2 + FMA ones where it has
   those, plain C elsewhere, chosen below by the compiler's own macros) and calls codelm_forward() for
   the engine's decoding steps (rows in distinct KV-cache slots, each at its own position) and prefills
   (a prompt's tokens as rows of one slot at consecutive positions). It does what
   codelm/generate/engine.py's torch path does: the embedding row; per layer RMSNorm, the fused q/k/v
   projection, RoPE on q and k (rotate-half layout, cos and signed-sin rows given by the caller) or
   ALiBi's distance bias, the new keys and values written to the cache, attention of each row over its
   slot's first pos+1 entries (grouped-query: query head h reads kv head h / (H / n_kv)), wo + residual,
   RMSNorm, the fused gate/up projection, SwiGLU, w2 + residual; the final norm and the output
   projection to fp32 logits.

   Weights are fp32, or int8 with one fp32 scale per output row (the engine's per-channel int8), packed
   by the caller in tiles of codelm_tile_width() output rows (see matvec). A product reads each weight
   from memory once per call for all B rows. Sums run in another order than torch's, and exp is a
   polynomial (within 2 ulp of libm's), so results match the torch path to float rounding, not bit for
   bit; each row's sums run in one order whatever rows share its call. No -ffast-math. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vectors.h" /* vf, VW and the vector operations of this CPU; lane sums; exp */

typedef struct {
    int64_t dim, hidden, n_layers, n_heads, n_kv, head_dim, vocab;
    int64_t int8;       /* 1: projections are int8 with fp32 scales; 0: fp32 (both packed, see matvec) */
    double eps;         /* RMSNorm's epsilon */
    int64_t threads;    /* OpenMP threads for products and attention (where built with -fopenmp) */
    int64_t parallel_work; /* multiply-adds from which a loop is split over them */
    int64_t row_threads; /* threads a decoding step's rows may be split over (each reads every weight) */
    const float *emb;   /* [vocab, dim] */
    const float *norm;  /* final RMSNorm weight [dim] */
    const void *out_w;  /* [vocab, dim], packed */
    const float *out_s; /* [vocab] (int8) */
    /* per layer, LAYER_PTRS pointers: attention norm, wqkv, its scales, wo, its scales, ffn norm, w13,
       its scales, w2, its scales (scales NULL for fp32) */
    const void *const *layers;
} Model;

#define LAYER_PTRS 10

/* Built with -fopenmp: products split their output tiles, attention its (row, head) pairs, over
   m->threads threads, where the work is large enough (m->parallel_work multiply-adds) to pay for waking
   them and waiting at the end; one thread runs no parallel region. Built without it: one thread. */
#define PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL_FOR(m, work) \
    PRAGMA(omp parallel for schedule(static) num_threads(m->threads) if(m->threads > 1 && (work) >= m->parallel_work))
#else
#define PARALLEL_FOR(m, work)
#endif

int64_t codelm_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* --------------------------------------------------------------------------- products */

/* Weights are packed in tiles of TW output rows: tile t is [in][TW], so a product streams memory in
   order and keeps TW outputs per row of x in registers, NV vectors each (no horizontal sums). RB rows
   of x share each weight load: RB x NV accumulators, as many as the vector registers hold with the
   NV weight vectors and a broadcast input beside them (32 AVX-512 registers, 16 AVX2 ones). Measured
   on the development machine (12 dim-768 layers streamed from memory, one thread): AVX2 code with 2
   rows ran 16 int8 rows at 47 G multiply-adds/s against 37 with 4 (spilled), fp32 at par. */
#define NV 4
#define TW (NV * VW)
#if VW == 16
#define RB 6
#elif VW == 8
#define RB 2
#else
#define RB 4
#endif
/* A tile is read KB inputs at a time for every row of a block of ROW_BLOCK rows (KB x TW weights: 32 KB
   fp32 on AVX-512, in L1), so weights come from memory once per step whatever the rows, and the
   products of a many-row step (prefill, a full batch) run from cache at the FMA units' rate. */
#ifndef KB
#define KB 128
#endif
#define ROW_BLOCK 64
#ifndef PREFETCH
#define PREFETCH 8192
#endif

int64_t codelm_tile_width(void) { return TW; }

/* acc[r][0..TW) = (first ? 0 : acc[r]) + sum_{i<n} x[r * ldx + i] * tile[i][0..TW), for r < R. Each
   output's sum runs in input order (an accumulator stored to acc and loaded again keeps its value), so
   blocking changes no bit of it. */
#define DEFINE_TILE(NAME, T, LOAD)                                                                      \
static inline void NAME(const T *tile, int64_t n, const float *x, int64_t ldx, float (*acc)[TW],       \
                        const int R, const int first, const char *pf)                                   \
{                                                                                                       \
    vf a[RB][NV];                                                                                       \
    for (int r = 0; r < RB; r++)                                                                        \
        for (int v = 0; v < NV; v++) a[r][v] = first || r >= R ? VZERO() : VLOAD_F32(acc[r] + v * VW); \
    for (int64_t i = 0; i < n; i++) {                                                                   \
        const T *w = tile + i * TW;                                                                     \
        if (pf)                                                                                         \
            for (int c = 0; c < (int)(TW * sizeof(T)); c += 64) __builtin_prefetch(pf + i * TW * sizeof(T) + c); \
        vf w0 = LOAD(w), w1 = LOAD(w + VW), w2 = LOAD(w + 2 * VW), w3 = LOAD(w + 3 * VW);               \
        for (int r = 0; r < R; r++) {                                                                   \
            vf xr = VSET1(x[r * ldx + i]);                                                              \
            a[r][0] = VFMA(w0, xr, a[r][0]); a[r][1] = VFMA(w1, xr, a[r][1]);                           \
            a[r][2] = VFMA(w2, xr, a[r][2]); a[r][3] = VFMA(w3, xr, a[r][3]);                           \
        }                                                                                               \
    }                                                                                                   \
    for (int r = 0; r < R; r++)                                                                         \
        for (int v = 0; v < NV; v++) VSTORE(acc[r] + v * VW, a[r][v]);                                  \
}

DEFINE_TILE(tile_f32, float, VLOAD_F32)
DEFINE_TILE(tile_i8, int8_t, VLOAD_I8)

/* y[b * out + o] = (add ? y : 0) + scale[o] * sum_i W[o, i] x[b, i], for o < out and b < B; W packed
   as above (int8 with per-row scales, or fp32 with scale NULL). */
static void matvec(const Model *m, const void *W, const float *scale, int64_t out, int64_t in,
                   const float *x, int64_t B, float *y, int add)
{
    const int64_t tiles = (out + TW - 1) / TW, wbytes = m->int8 ? 1 : 4;
    PARALLEL_FOR(m, out * in * B)
    for (int64_t t = 0; t < tiles; t++) {
        float acc[ROW_BLOCK][TW];
        const int64_t o0 = t * TW, n = out - o0 < TW ? out - o0 : TW;
        const char *tile = (const char *)W + o0 * in * wbytes;
        for (int64_t b0 = 0; b0 < B; b0 += ROW_BLOCK) {
            const int64_t nb = B - b0 < ROW_BLOCK ? B - b0 : ROW_BLOCK;
            for (int64_t k0 = 0; k0 < in; k0 += KB) {
                const int64_t kn = in - k0 < KB ? in - k0 : KB;
                for (int64_t b = 0; b < nb; b += RB) {
                    const int R = nb - b < RB ? (int)(nb - b) : RB;
                    const float *xb = x + (b0 + b) * in + k0;
                    /* the first row group fetches weights PREFETCH bytes ahead of the stream, so memory runs
                       beside the arithmetic (a prefetch past the weights' end is a hint, never a fault) */
                    const char *pf = b == 0 ? tile + k0 * TW * wbytes + PREFETCH : NULL;
                    /* a constant R lets the compiler unroll the row loop and keep the accumulators in registers */
#define TILE_ROWS(FN, T)                                                                                  \
                    do {                                                                                  \
                        const T *w = (const T *)(tile + k0 * TW * wbytes);                                \
                        switch (R) {                                                                      \
                        case 1: FN(w, kn, xb, in, acc + b, 1 < RB ? 1 : RB, k0 == 0, pf); break;          \
                        case 2: FN(w, kn, xb, in, acc + b, 2 < RB ? 2 : RB, k0 == 0, pf); break;          \
                        case 3: FN(w, kn, xb, in, acc + b, 3 < RB ? 3 : RB, k0 == 0, pf); break;          \
                        case 4: FN(w, kn, xb, in, acc + b, 4 < RB ? 4 : RB, k0 == 0, pf); break;          \
                        case 5: FN(w, kn, xb, in, acc + b, 5 < RB ? 5 : RB, k0 == 0, pf); break;          \
                        default: FN(w, kn, xb, in, acc + b, RB, k0 == 0, pf); break;                      \
                        }                                                                                 \
                    } while (0)
                    if (m->int8)
                        TILE_ROWS(tile_i8, int8_t);
                    else
                        TILE_ROWS(tile_f32, float);
#undef TILE_ROWS
                }
            }
            for (int64_t r = 0; r < nb; r++) {
                float *dst = y + (b0 + r) * out + o0;
                for (int64_t j = 0; j < n; j++) {
                    float v = scale ? acc[r][j] * scale[o0 + j] : acc[r][j];
                    dst[j] = add ? dst[j] + v : v;
                }
            }
        }
    }
}

/* --------------------------------------------------------------------------- the pieces of a layer */

static void rmsnorm(float *dst, const float *x, const float *w, int64_t n, double eps)
{
    float ss = 0.f;
    #pragma omp simd reduction(+:ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.f / sqrtf(ss / (float)n + (float)eps);
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) dst[i] = x[i] * r * w[i];
}

/* Rotate-half RoPE of one head: dims i and i + D/2 form a pair; sin carries the first half's sign. */
static void rope(float *x, const float *cos, const float *sin, int64_t D)
{
    int64_t half = D / 2;
    #pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], c = x[i + half];
        x[i] = a * cos[i] + c * sin[i];
        x[i + half] = c * cos[i + half] + a * sin[i + half];
    }
}

/* q . k over D floats, D a multiple of VW: vector partial sums, then their lanes. */
static inline float dot(const float *q, const float *k, int64_t D)
{
    vf a = VZERO();
    for (int64_t d = 0; d < D; d += VW) a = VFMA(VLOAD_F32(q + d), VLOAD_F32(k + d), a);
    return VSUM(a);
}

/* Cached keys and values are read this many bytes ahead of use: a step reads every row's own cache,
   one short stream per (row, head), too short for the hardware's prefetcher to get ahead of. */
#ifndef KV_PREFETCH
#define KV_PREFETCH 4096
#endif

/* out[0 .. NVEC * VW) = inv * sum_{j<n} p[j] V[j * D + ..]: NVEC vectors of one head's output held in
   registers across the keys; where NVEC is small, keys alternate between two or four sets of
   accumulators (summed at the end), so consecutive keys' multiply-adds do not wait on each other. */
static inline void weighted_values(float *out, const float *p, const float *V, int64_t n, int64_t D,
                                   const int NVEC, float inv)
{
    const int sets = NVEC == 1 ? 4 : NVEC < 4 ? 2 : 1;
    vf o[4][4];
    for (int k = 0; k < sets; k++)
        for (int v = 0; v < NVEC; v++) o[k][v] = VZERO();
    int64_t j = 0;
    for (; j + sets <= n; j += sets)
        for (int k = 0; k < sets; k++) {
            if (k == 0)
                for (int c = 0; c < (int)(sets * NVEC * VW * sizeof(float)); c += 64)
                    __builtin_prefetch((const char *)(V + j * D) + KV_PREFETCH + c);
            vf pj = VSET1(p[j + k]);
            for (int v = 0; v < NVEC; v++) o[k][v] = VFMA(pj, VLOAD_F32(V + (j + k) * D + v * VW), o[k][v]);
        }
    for (; j < n; j++)
        for (int v = 0; v < NVEC; v++) o[0][v] = VFMA(VSET1(p[j]), VLOAD_F32(V + j * D + v * VW), o[0][v]);
    for (int v = 0; v < NVEC; v++) {
        for (int k = 1; k < sets; k++) o[0][v] = o[0][v] + o[k][v];
        VSTORE(out + v * VW, o[0][v] * VSET1(inv));
    }
}

/* One query head over n cached positions: out[D] = softmax(q.k_j / sqrt(D) + bias_j) . v_j.
   Memory-bound at a full batch (every row reads its own keys and values), so the loops keep several
   independent sums in flight: four keys' dot products at a time, and the output's vectors held in
   registers across the keys. Each key's dot product runs in one order, whatever its neighbours. */
static void attend(float *out, const float *q, const float *K, const float *V, int64_t n, int64_t D,
                   float slope, int64_t pos, float *scores)
{
    float scale = 1.f / sqrtf((float)D), mx = -INFINITY;
    if (D % VW == 0) {
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const float *k = K + j * D;
            for (int64_t c = 0; c < 4 * D * (int64_t)sizeof(float); c += 64)
                __builtin_prefetch((const char *)k + KV_PREFETCH + c);
            vf a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
            for (int64_t d = 0; d < D; d += VW) {
                vf qd = VLOAD_F32(q + d);
                a0 = VFMA(qd, VLOAD_F32(k + d), a0);
                a1 = VFMA(qd, VLOAD_F32(k + D + d), a1);
                a2 = VFMA(qd, VLOAD_F32(k + 2 * D + d), a2);
                a3 = VFMA(qd, VLOAD_F32(k + 3 * D + d), a3);
            }
            vsum4(scores + j, a0, a1, a2, a3);
        }
        for (; j < n; j++) scores[j] = dot(q, K + j * D, D);
    } else {
        for (int64_t j = 0; j < n; j++) {
            float s = 0.f;
            for (int64_t d = 0; d < D; d++) s += q[d] * K[j * D + d];
            scores[j] = s;
        }
    }
    int64_t j = 0;
#if VW > 1
    if (slope == 0.f) {  /* RoPE: no bias, so scale and max a vector at a time */
        vf m = VSET1(-INFINITY), sc = VSET1(scale);
        for (; j + VW <= n; j += VW) {
            vf s = VLOAD_F32(scores + j) * sc;
            VSTORE(scores + j, s);
            m = VMAX(m, s);
        }
        float lanes[VW];
        VSTORE(lanes, m);
        for (int i = 0; i < VW; i++) mx = lanes[i] > mx ? lanes[i] : mx;
    }
#endif
    for (; j < n; j++) {
        float s = scores[j] * scale - slope * (float)(pos - j);
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    const float inv = 1.f / codelm_exp_shifted(scores, scores, mx, n);
    int64_t d = 0;
    if (D % VW == 0)
        for (; d < D; d += 4 * VW)
            switch ((D - d) / VW) {
            case 1: weighted_values(out + d, scores, V + d, n, D, 1, inv); break;
            case 2: weighted_values(out + d, scores, V + d, n, D, 2, inv); break;
            case 3: weighted_values(out + d, scores, V + d, n, D, 3, inv); break;
            default: weighted_values(out + d, scores, V + d, n, D, 4, inv); break;
            }
    for (; d < D; d++) {
        float o = 0.f;
        for (int64_t j = 0; j < n; j++) o += scores[j] * V[j * D + d];
        out[d] = o * inv;
    }
}

/* --------------------------------------------------------------------------- the step */

/* Floats of scratch one row takes (its stream, normed stream, q/k/v, attention output, gate/up, SwiGLU). */
static int64_t row_floats(const Model *m)
{
    return 2 * m->dim + (m->n_heads + 2 * m->n_kv) * m->head_dim + m->n_heads * m->head_dim + 3 * m->hidden;
}

/* Floats of scratch codelm_forward needs for B rows and a cache of `cap` positions per slot: the rows',
   and one row of attention scores per thread. */
int64_t codelm_scratch_floats(const Model *m, int64_t B, int64_t cap)
{
    return B * row_floats(m) + (m->threads > 1 ? m->threads : 1) * cap;
}

/* One token for each of B rows: row b's token tokens[b] at position pos[b] in cache slot slot[b] (slot
   b where slot is NULL). kv is the engine's cache [layers, 2, slots, n_kv, cap, head_dim]; a row sees
   the entries 0..pos[b] of its slot, its own among them, so rows of one slot at consecutive positions
   are a prompt's prefill (every row's keys are written before any row attends), and rows of distinct
   slots are a decoding step. cos/sin: [B, head_dim] rows of RoPE tables (signed sin), or NULL with
   `alibi` the heads' slopes. Logits [B - first_logits, vocab] of rows first_logits..B-1 (a prefill
   needs only its last row's; B: none). */
static void forward(const Model *m, int64_t B, const int64_t *tokens, const int64_t *pos, const int64_t *slot,
                    int64_t slot0, const float *cos, const float *sin, const float *alibi, float *kv,
                    int64_t slots, int64_t cap, float *scratch, float *logits, int64_t first_logits)
{
    const int64_t dim = m->dim, H = m->n_heads, KV = m->n_kv, D = m->head_dim, F = m->hidden;
    const int64_t nqkv = (H + 2 * KV) * D, group = H / KV;
    float *h = scratch, *xb = h + B * dim, *qkv = xb + B * dim, *att = qkv + B * nqkv;
    float *hb = att + B * H * D, *act = hb + B * 2 * F, *scores = act + B * F; /* [threads][cap] */
    int64_t longest = 0;
    for (int64_t b = 0; b < B; b++) longest = pos[b] > longest ? pos[b] : longest;
#define SLOT(b) (slot ? slot[b] : slot0 + (b))

    for (int64_t b = 0; b < B; b++)
        memcpy(h + b * dim, m->emb + tokens[b] * dim, (size_t)dim * sizeof(float));

    for (int64_t l = 0; l < m->n_layers; l++) {
        const void *const *p = m->layers + l * LAYER_PTRS;
        float *Kl = kv + (l * 2) * slots * KV * cap * D, *Vl = Kl + slots * KV * cap * D;

        for (int64_t b = 0; b < B; b++) rmsnorm(xb + b * dim, h + b * dim, p[0], dim, m->eps);
        matvec(m, p[1], p[2], nqkv, dim, xb, B, qkv, 0);
        for (int64_t b = 0; b < B; b++) {
            float *r = qkv + b * nqkv;
            if (cos)
                for (int64_t hd = 0; hd < H + KV; hd++) rope(r + hd * D, cos + b * D, sin + b * D, D);
            for (int64_t g = 0; g < KV; g++) {
                int64_t at = ((SLOT(b) * KV + g) * cap + pos[b]) * D;
                memcpy(Kl + at, r + (H + g) * D, (size_t)D * sizeof(float));
                memcpy(Vl + at, r + (H + KV + g) * D, (size_t)D * sizeof(float));
            }
        }
        PARALLEL_FOR(m, B * H * (longest + 1) * D * 2)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, hd = bh % H, base = (SLOT(b) * KV + hd / group) * cap * D;
#ifdef _OPENMP
            float *mine = scores + omp_get_thread_num() * cap;
#else
            float *mine = scores;
#endif
            attend(att + bh * D, qkv + b * nqkv + hd * D, Kl + base, Vl + base, pos[b] + 1, D,
                   alibi ? alibi[hd] : 0.f, pos[b], mine);
        }
        matvec(m, p[3], p[4], dim, H * D, att, B, h, 1);

        for (int64_t b = 0; b < B; b++) rmsnorm(xb + b * dim, h + b * dim, p[5], dim, m->eps);
        matvec(m, p[6], p[7], 2 * F, dim, xb, B, hb, 0);
        for (int64_t b = 0; b < B; b++) swiglu(act + b * F, hb + b * 2 * F, hb + b * 2 * F + F, F);
        matvec(m, p[8], p[9], dim, F, act, B, h, 1);
    }
    const int64_t first = first_logits < 0 ? 0 : first_logits;
    if (first >= B)
        return;
    for (int64_t b = first; b < B; b++) rmsnorm(xb + b * dim, h + b * dim, m->norm, dim, m->eps);
    matvec(m, m->out_w, m->out_s, m->vocab, dim, xb + first * dim, B - first, logits, 0);
#undef SLOT
}

/* A decoding step's rows are independent (each in its own slot), so with several threads each takes a
   share of the rows (ROWS_PER_THREAD at least) through the whole network: one parallel region per step,
   where splitting every product and attention costs ~5 regions per layer, each waiting for its
   slowest thread. A row's numbers do not depend on the split. Each thread reads every weight, so the
   caller bounds the split (m->row_threads): all threads where the weights fit in the CPU's last-level
   cache, two otherwise, one where a single row's products are large enough to be split themselves
   (m->parallel_work). A prefill (rows of one slot, each attending to the keys of the rows before it)
   splits its products and attention instead. */
#define ROWS_PER_THREAD 4

void codelm_forward(const Model *m, int64_t B, const int64_t *tokens, const int64_t *pos, const int64_t *slot,
                    const float *cos, const float *sin, const float *alibi, float *kv, int64_t slots,
                    int64_t cap, float *scratch, float *logits, int64_t first_logits)
{
#ifdef _OPENMP
    const int64_t most = m->threads < m->row_threads ? m->threads : m->row_threads;
    const int64_t T = most < B / ROWS_PER_THREAD ? most : B / ROWS_PER_THREAD;
    if (slot == NULL && first_logits <= 0 && T > 1) {
        Model one = *m;
        one.threads = 1;
        const int64_t per_row = row_floats(m), D = m->head_dim;
        PRAGMA(omp parallel for schedule(static) num_threads(T))
        for (int64_t t = 0; t < T; t++) {
            const int64_t b0 = B * t / T, b1 = B * (t + 1) / T;
            forward(&one, b1 - b0, tokens + b0, pos + b0, NULL, b0, cos ? cos + b0 * D : NULL,
                    sin ? sin + b0 * D : NULL, alibi, kv, slots, cap, scratch + b0 * per_row + t * cap,
                    logits + b0 * m->vocab, 0);
        }
        return;
    }
#endif
    forward(m, B, tokens, pos, slot, 0, cos, sin, alibi, kv, slots, cap, scratch, logits, first_logits);
}
