/* The vector layer of decode_step.c: one set of names for AVX-512, AVX2 + FMA and plain C (chosen by
   the compiler's own macros, so -march=native picks this CPU's), and the lane sums and exp built on
   them. Included by decode_step.c only; cpu_kernel.py hashes it with the source. */
#ifndef CODELM_VECTORS_H
#define CODELM_VECTORS_H

#include <math.h>
#include <stdint.h>

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
#define VMIN(a, b) _mm512_min_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VFLOOR(a) _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define VPOW2(y, n) _mm512_scalef_ps(y, n)
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
#define VMIN(a, b) _mm256_min_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VFLOOR(a) _mm256_floor_ps(a)
#define VPOW2(y, n) ((y) * _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), \
                                                                                  _mm256_set1_epi32(127)), 23)))
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

/* The sum of a vector's lanes (tree order, fixed per build). */
#if VW == 16
#define VSUM(v) _mm512_reduce_add_ps(v)
#elif VW == 8
static inline float VSUM(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else
#define VSUM(v) (v)
#endif

/* out[0..4) = the lane sums of a0..a3, by one shuffle tree for the four (a quarter of four VSUMs' work). */
static inline void vsum4(float *out, vf a0, vf a1, vf a2, vf a3)
{
#if VW == 16
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1)); /* a0 a1 a0 a1 per 128 bits */
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE)); /* a0 a1 a2 a3 */
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), hi);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
#elif VW == 8
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)); /* a0 a1 a2 a3 per 128 bits */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
#else
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
#endif
}

/* exp of each lane: Cephes' expf (2^n times a degree-7 polynomial of the remainder, within 2 ulp of
   libm's expf), since libm's one call per float cost more than the products of a step's softmax and
   SwiGLU. Inputs clamped to [-87.3, 88.37] (2^n stays a normal float): what underflows gives ~1e-38 instead of 0. */
#if VW > 1
static inline vf VEXP(vf x)
{
    x = VMIN(VMAX(x, VSET1(-87.33654f)), VSET1(88.37f));
    vf n = VFLOOR(VFMA(x, VSET1(1.44269504088896341f), VSET1(0.5f)));
    x = VFMA(n, VSET1(-0.693359375f), x);
    x = VFMA(n, VSET1(2.12194440e-4f), x);
    vf y = VSET1(1.9875691500E-4f);
    y = VFMA(y, x, VSET1(1.3981999507E-3f));
    y = VFMA(y, x, VSET1(8.3334519073E-3f));
    y = VFMA(y, x, VSET1(4.1665795894E-2f));
    y = VFMA(y, x, VSET1(1.6666665459E-1f));
    y = VFMA(y, x, VSET1(5.0000001201E-1f));
    y = VFMA(y, x * x, x + VSET1(1.f));
    return VPOW2(y, n);
}
#endif
static inline float exp1(float x)
{
#if VW > 1
    vf v = VEXP(VSET1(x));
    float out[VW];
    VSTORE(out, v);
    return out[0];
#else
    return expf(x);
#endif
}

/* out[i] = exp(x[i] - shift) for i < n; returns their sum (lanes, then the tail). Exported for the
   tests, which hold it to libm's exp. */
float codelm_exp_shifted(float *out, const float *x, float shift, int64_t n)
{
    int64_t i = 0;
    float sum = 0.f;
#if VW > 1
    vf acc = VZERO(), s = VSET1(shift);
    for (; i + VW <= n; i += VW) {
        vf e = VEXP(VLOAD_F32(x + i) - s);
        VSTORE(out + i, e);
        acc = acc + e;
    }
    sum = VSUM(acc);
#endif
    for (; i < n; i++) {
        out[i] = exp1(x[i] - shift);
        sum += out[i];
    }
    return sum;
}

/* a[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up, for i < n. */
static void swiglu(float *a, const float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
#if VW > 1
    for (; i + VW <= n; i += VW) {
        vf g = VLOAD_F32(gate + i);
        VSTORE(a + i, g / (VSET1(1.f) + VEXP(VZERO() - g)) * VLOAD_F32(up + i));
    }
#endif
    for (; i < n; i++) a[i] = gate[i] / (1.f + exp1(-gate[i])) * up[i];
}

#endif
