/* One decoding step of the Llama network for B rows, in plain C: codelm's CPU fast path.

   codelm/generate/cpu_kernel.py compiles this file on the user's machine at first use (cc -O3
   -march=native -fopenmp-simd: AVX-512 where the CPU has it, AVX2 or plain scalar code elsewhere, from
   the same loops) and calls codelm_decode() from the engine's decoding step. It does, for B rows, each
   at its own position in its own KV-cache slot, what codelm/generate/engine.py's torch path does: the
   embedding row; per layer RMSNorm, the fused q/k/v projection, RoPE on q and k (rotate-half layout,
   cos and signed-sin rows given by the caller) or ALiBi's distance bias, the new key and value written
   to the cache, attention of each row over its own pos+1 entries (grouped-query: query head h reads
   kv head h / (H / n_kv)), wo + residual, RMSNorm, the fused gate/up projection, SwiGLU, w2 + residual;
   the final norm and the output projection to fp32 logits.

   Weights are row-major [out, in], either fp32 or int8 with one fp32 scale per output row (the
   engine's per-channel int8). A product reads each weight row once per step for all B rows: a block
   of four weight rows stays in L1 while every row's activations pass over it. The reductions are
   `omp simd` loops: the compiler may reorder the sums of one dot product (and only those), so results
   match the torch path to float rounding, not bit for bit. No -ffast-math. One thread. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t dim, hidden, n_layers, n_heads, n_kv, head_dim, vocab;
    int64_t int8;       /* 1: projections are int8 [out, in] with fp32 scales; 0: fp32 [out, in] */
    double eps;         /* RMSNorm's epsilon */
    const float *emb;   /* [vocab, dim] */
    const float *norm;  /* final RMSNorm weight [dim] */
    const void *out_w;  /* [vocab, dim] */
    const float *out_s; /* [vocab] (int8) */
    /* per layer, LAYER_PTRS pointers: attention norm, wqkv, its scales, wo, its scales, ffn norm, w13,
       its scales, w2, its scales (scales NULL for fp32) */
    const void *const *layers;
} Model;

#define LAYER_PTRS 10

/* --------------------------------------------------------------------------- products */

/* y[b * out + o] = (add ? y : 0) + scale[o] * sum_i W[o, i] x[b, i], for o < out and b < B.
   Per block of four weight rows: rows of x four at a time (one weight load feeds four sums), then the
   rest one at a time against all four weight rows (four independent sums). */
#define DEFINE_MATVEC(NAME, T)                                                                          \
static void NAME(const T *W, const float *scale, int64_t out, int64_t in, const float *x, int64_t B,   \
                 float *y, int add)                                                                     \
{                                                                                                       \
    int64_t o = 0;                                                                                      \
    for (; o + 4 <= out; o += 4) {                                                                      \
        const T *w[4] = {W + o * in, W + (o + 1) * in, W + (o + 2) * in, W + (o + 3) * in};             \
        int64_t b = 0;                                                                                  \
        for (; b + 4 <= B; b += 4) {                                                                    \
            const float *x0 = x + b * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;                  \
            for (int k = 0; k < 4; k++) {                                                               \
                const T *wk = w[k];                                                                     \
                float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;                                           \
                _Pragma("omp simd reduction(+:a0,a1,a2,a3)")                                            \
                for (int64_t i = 0; i < in; i++) {                                                      \
                    float wi = (float)wk[i];                                                            \
                    a0 += wi * x0[i]; a1 += wi * x1[i]; a2 += wi * x2[i]; a3 += wi * x3[i];             \
                }                                                                                       \
                float s = scale ? scale[o + k] : 1.f, acc[4] = {a0, a1, a2, a3};                        \
                for (int r = 0; r < 4; r++) {                                                           \
                    float *dst = y + (b + r) * out + o + k;                                             \
                    *dst = add ? *dst + acc[r] * s : acc[r] * s;                                        \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        for (; b < B; b++) {                                                                            \
            const float *xb = x + b * in;                                                               \
            const T *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];                                     \
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;                                               \
            _Pragma("omp simd reduction(+:a0,a1,a2,a3)")                                                \
            for (int64_t i = 0; i < in; i++) {                                                          \
                float xi = xb[i];                                                                       \
                a0 += (float)w0[i] * xi; a1 += (float)w1[i] * xi;                                       \
                a2 += (float)w2[i] * xi; a3 += (float)w3[i] * xi;                                       \
            }                                                                                           \
            float acc[4] = {a0, a1, a2, a3};                                                            \
            for (int k = 0; k < 4; k++) {                                                               \
                float s = scale ? scale[o + k] : 1.f, *dst = y + b * out + o + k;                       \
                *dst = add ? *dst + acc[k] * s : acc[k] * s;                                            \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    for (; o < out; o++) {                                                                              \
        const T *wo = W + o * in;                                                                       \
        for (int64_t b = 0; b < B; b++) {                                                               \
            const float *xb = x + b * in;                                                               \
            float a = 0.f;                                                                              \
            _Pragma("omp simd reduction(+:a)")                                                          \
            for (int64_t i = 0; i < in; i++) a += (float)wo[i] * xb[i];                                 \
            float s = scale ? scale[o] : 1.f, *dst = y + b * out + o;                                   \
            *dst = add ? *dst + a * s : a * s;                                                          \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_MATVEC(matvec_f32, float)
DEFINE_MATVEC(matvec_i8, int8_t)

static void matvec(const Model *m, const void *W, const float *scale, int64_t out, int64_t in,
                   const float *x, int64_t B, float *y, int add)
{
    if (m->int8)
        matvec_i8((const int8_t *)W, scale, out, in, x, B, y, add);
    else
        matvec_f32((const float *)W, NULL, out, in, x, B, y, add);
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
    return B * (2 * m->dim + qkv + m->n_heads * m->head_dim + 3 * m->hidden) + cap;
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
    float *hb = att + B * H * D, *act = hb + B * 2 * F, *scores = act + B * F;

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
            for (int64_t hd = 0; hd < H; hd++) {
                int64_t base = (b * KV + hd / group) * cap * D;
                attend(att + (b * H + hd) * D, r + hd * D, Kl + base, Vl + base, pos[b] + 1, D,
                       alibi ? alibi[hd] : 0.f, pos[b], scores);
            }
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
