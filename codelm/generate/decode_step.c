/* One decoding step of the Llama network for B rows, in plain C: codelm's CPU fast path.

   codelm/generate/cpu_kernel.py compiles this file on the user's machine at first use (cc -O3
   -march=native -fopenmp: AVX-512 intrinsics where the CPU has AVX-512F, AVX2 + FMA ones where it has
   those, plain C elsewhere, chosen below by the compiler's own macros) and calls codelm_decode() from
   the engine's decoding step. It does, for B rows, each
   at its own position in its own KV-cache slot, what codelm/generate/engine.py's torch path does: the
   embedding row; per layer RMSNorm, the fused q/k/v projection, RoPE on q and k (rotate-half layout,
   cos and signed-sin rows given by the caller) or ALiBi's distance bias, the new key and value written
   to the cache, attention of each row over its own pos+1 entries (grouped-query: query head h reads
   kv head h / (H / n_kv)), wo + residual, RMSNorm, the fused gate/up projection, SwiGLU, w2 + residual;
   the final norm and the output projection to fp32 logits.

   Weights are fp32, or int8 with one fp32 scale per output row (the engine's per-channel int8), packed
   by the caller in tiles of codelm_tile_width() output rows (see matvec). A product reads each weight
   once per step for all B rows. Sums run in another order than torch's, so results match the torch
   path to float rounding, not bit for bit; each row's sums run in one order whatever rows share its
   step. No -ffast-math. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t dim, hidden, n_layers, n_heads, n_kv, head_dim, vocab;
    int64_t int8;       /* 1: projections are int8 with fp32 scales; 0: fp32 (both packed, see matvec) */
    double eps;         /* RMSNorm's epsilon */
    int64_t threads;    /* OpenMP threads for products and attention (where built with -fopenmp) */
    int64_t parallel_work; /* multiply-adds from which a loop is split over them */
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

/* Vectors of VW floats: AVX-512, AVX2 + FMA, or plain floats (VW 1) where neither was compiled in. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VLOAD_F32(p) _mm512_loadu_ps(p)
#define VLOAD_I8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
#define VZERO() _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VLOAD_F32(p) _mm256_loadu_ps(p)
#define VLOAD_I8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#else
#define VW 1
typedef float vf;
#define VZERO() 0.f
#define VSET1(x) (x)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VSTORE(p, v) (*(p) = (v))
#define VLOAD_F32(p) (*(p))
#define VLOAD_I8(p) ((float)*(p))
#endif

/* Weights are packed in tiles of TW output rows: tile t is [in][TW], so a product streams memory in
   order and keeps TW outputs per row of x in registers, NV vectors each (no horizontal sums). */
#define NV 4
#define TW (NV * VW)
#define RB 4 /* rows of x per pass over a tile: RB x NV accumulators */

int64_t codelm_tile_width(void) { return TW; }

/* acc[r][0..TW) = sum_i x[r * in + i] * tile[i][0..TW) for r < R: one tile, R rows. */
#define DEFINE_TILE(NAME, T, LOAD)                                                                      \
static inline void NAME(const T *tile, int64_t in, const float *x, float acc_out[RB][TW], const int R) \
{                                                                                                       \
    vf acc[RB][NV];                                                                                     \
    for (int r = 0; r < RB; r++)                                                                        \
        for (int v = 0; v < NV; v++) acc[r][v] = VZERO();                                               \
    for (int64_t i = 0; i < in; i++) {                                                                  \
        const T *w = tile + i * TW;                                                                     \
        vf w0 = LOAD(w), w1 = LOAD(w + VW), w2 = LOAD(w + 2 * VW), w3 = LOAD(w + 3 * VW);               \
        for (int r = 0; r < R; r++) {                                                                   \
            vf xr = VSET1(x[r * in + i]);                                                               \
            acc[r][0] = VFMA(w0, xr, acc[r][0]); acc[r][1] = VFMA(w1, xr, acc[r][1]);                   \
            acc[r][2] = VFMA(w2, xr, acc[r][2]); acc[r][3] = VFMA(w3, xr, acc[r][3]);                   \
        }                                                                                               \
    }                                                                                                   \
    for (int r = 0; r < R; r++)                                                                         \
        for (int v = 0; v < NV; v++) VSTORE(acc_out[r] + v * VW, acc[r][v]);                            \
}

DEFINE_TILE(tile_f32, float, VLOAD_F32)
DEFINE_TILE(tile_i8, int8_t, VLOAD_I8)

/* y[b * out + o] = (add ? y : 0) + scale[o] * sum_i W[o, i] x[b, i], for o < out and b < B; W packed
   as above (int8 with per-row scales, or fp32 with scale NULL). */
static void matvec(const Model *m, const void *W, const float *scale, int64_t out, int64_t in,
                   const float *x, int64_t B, float *y, int add)
{
    const int64_t tiles = (out + TW - 1) / TW;
    PARALLEL_FOR(m, out * in * B)
    for (int64_t t = 0; t < tiles; t++) {
        float acc[RB][TW];
        int64_t o0 = t * TW, n = out - o0 < TW ? out - o0 : TW;
        for (int64_t b = 0; b < B; b += RB) {
            const int R = B - b < RB ? (int)(B - b) : RB;
            /* a constant R lets the compiler unroll the row loop and keep acc in registers */
#define TILE_ROWS(FN, T)                                                                \
            do {                                                                        \
                const T *t = (const T *)W + o0 * in;                                    \
                switch (R) {                                                            \
                case 1: FN(t, in, x + b * in, acc, 1); break;                           \
                case 2: FN(t, in, x + b * in, acc, 2); break;                           \
                case 3: FN(t, in, x + b * in, acc, 3); break;                           \
                default: FN(t, in, x + b * in, acc, 4); break;                          \
                }                                                                       \
            } while (0)
            if (m->int8)
                TILE_ROWS(tile_i8, int8_t);
            else
                TILE_ROWS(tile_f32, float);
#undef TILE_ROWS
            for (int r = 0; r < R; r++) {
                float *dst = y + (b + r) * out + o0;
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

/* One query head over n cached positions: out[D] = softmax(q.k_j / sqrt(D) + bias_j) . v_j. */
static void attend(float *out, const float *q, const float *K, const float *V, int64_t n, int64_t D,
                   float slope, int64_t pos, float *scores)
{
    float scale = 1.f / sqrtf((float)D), mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const float *k = K + j * D;
        float s = 0.f;
        #pragma omp simd reduction(+:s)
        for (int64_t d = 0; d < D; d++) s += q[d] * k[d];
        s = s * scale - slope * (float)(pos - j);
        scores[j] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.f;
    for (int64_t j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - mx);
        sum += scores[j];
    }
    memset(out, 0, (size_t)D * sizeof(float));
    for (int64_t j = 0; j < n; j++) {
        const float *v = V + j * D;
        float p = scores[j] / sum;
        #pragma omp simd
        for (int64_t d = 0; d < D; d++) out[d] += p * v[d];
    }
}

/* --------------------------------------------------------------------------- the step */

/* Floats of scratch codelm_decode needs for B rows and a cache of `cap` positions per slot. */
int64_t codelm_scratch_floats(const Model *m, int64_t B, int64_t cap)
{
    int64_t qkv = (m->n_heads + 2 * m->n_kv) * m->head_dim;
    return B * (2 * m->dim + qkv + m->n_heads * m->head_dim + 3 * m->hidden + m->n_heads * cap);
}

/* Logits [B, vocab] of one new token per row. Row b sits in cache slot b at position pos[b] (its
   pos[b] earlier entries written); kv is the engine's cache [layers, 2, slots, n_kv, cap, head_dim].
   cos/sin: [B, head_dim] rows of RoPE tables (signed sin), or NULL with `alibi` the heads' slopes. */
void codelm_decode(const Model *m, int64_t B, const int64_t *tokens, const int64_t *pos,
                   const float *cos, const float *sin, const float *alibi,
                   float *kv, int64_t slots, int64_t cap, float *scratch, float *logits)
{
    const int64_t dim = m->dim, H = m->n_heads, KV = m->n_kv, D = m->head_dim, F = m->hidden;
    const int64_t nqkv = (H + 2 * KV) * D, group = H / KV;
    float *h = scratch, *xb = h + B * dim, *qkv = xb + B * dim, *att = qkv + B * nqkv;
    float *hb = att + B * H * D, *act = hb + B * 2 * F, *scores = act + B * F; /* [B * H][cap] */

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
                int64_t at = ((b * KV + g) * cap + pos[b]) * D;
                memcpy(Kl + at, r + (H + g) * D, (size_t)D * sizeof(float));
                memcpy(Vl + at, r + (H + KV + g) * D, (size_t)D * sizeof(float));
            }
        }
        PARALLEL_FOR(m, B * H * (pos[0] + 1) * D * 2)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, hd = bh % H, base = (b * KV + hd / group) * cap * D;
            attend(att + bh * D, qkv + b * nqkv + hd * D, Kl + base, Vl + base, pos[b] + 1, D,
                   alibi ? alibi[hd] : 0.f, pos[b], scores + bh * cap);
        }
        matvec(m, p[3], p[4], dim, H * D, att, B, h, 1);

        for (int64_t b = 0; b < B; b++) rmsnorm(xb + b * dim, h + b * dim, p[5], dim, m->eps);
        matvec(m, p[6], p[7], 2 * F, dim, xb, B, hb, 0);
        for (int64_t b = 0; b < B; b++) {
            const float *gate = hb + b * 2 * F, *up = gate + F;
            float *a = act + b * F;
            for (int64_t i = 0; i < F; i++) a[i] = gate[i] / (1.f + expf(-gate[i])) * up[i];
        }
        matvec(m, p[8], p[9], dim, F, act, B, h, 1);
    }
    for (int64_t b = 0; b < B; b++) rmsnorm(xb + b * dim, h + b * dim, m->norm, dim, m->eps);
    matvec(m, m->out_w, m->out_s, m->vocab, dim, xb, B, logits, 0);
}
