/* Training-mode BatchNorm fused with the residual add and ReLU (or ReLU6), for channels_last tensors on the CPU.
 *
 * A channels_last (N, C, H, W) tensor is a row-major (M, C) matrix with M = N*H*W, so every kernel here walks rows
 * and vectorises over channels. Eager PyTorch makes separate passes over memory for BatchNorm's statistics, its
 * normalisation, the residual add, the ReLU, and again in backward for the ReLU mask and BatchNorm's two passes;
 * these kernels make two passes each way (see bn_act.py for the measured effect).
 *
 * Built twice by bn_act.py with `gcc -O3 -march=native -fopenmp`: for bf16 tensors (elements travel as uint16_t) and,
 * with -DBN_ACT_FP32, for fp32 ones. Arithmetic is fp32 either way; sums are flushed to per-thread double accumulators
 * every FLUSH rows and combined in thread order, so results do not depend on scheduling (exact resume relies on that).
 * OpenMP resolves to the libgomp PyTorch already loaded.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FLUSH 64

#ifdef BN_ACT_FP32
typedef float elem_t;
static inline float ld(elem_t v) { return v; }
static inline elem_t st(float f) { return f; }
#else
typedef uint16_t elem_t; /* bfloat16 bits */

static inline float ld(elem_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline elem_t st(float f) { /* round to nearest even, as PyTorch's float -> bfloat16 */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (elem_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (elem_t)(u >> 16);
}
#endif

/* The activation, ReLU (upper = infinity) or ReLU6 (upper = 6), and where its gradient passes: 0 < v < upper. */
static inline float clampf(float v, float upper) { return v < 0.f ? 0.f : (v > upper ? upper : v); }
static inline int passes(float v, float upper) { return v > 0.f && v < upper; }

/* Rows [lo, hi) of thread t out of n. */
static inline void rows_of(int64_t m, int t, int n, int64_t *lo, int64_t *hi) {
    int64_t per = m / n, extra = m % n;
    *lo = t * per + (t < extra ? t : extra);
    *hi = *lo + per + (t < extra ? 1 : 0);
}

/* Move a thread's fp32 row sums into its double accumulators. */
static inline void flush(float *a, float *b, double *d1, double *d2, int64_t c) {
    for (int64_t j = 0; j < c; j++) {
        d1[j] += a[j];
        d2[j] += b[j];
        a[j] = b[j] = 0.f;
    }
}

/* Threads cost more than they save on tiny tensors. */
static inline int threads_for(int64_t m, int64_t c) {
    int nt = omp_get_max_threads();
    return (m * c < 65536 || m < nt) ? 1 : nt;
}

/* Sum the per-thread partials (nthreads x c) in thread order, so the result does not depend on scheduling. */
static void merge(const double *part, int nthreads, int64_t c, double *out) {
    memset(out, 0, sizeof(double) * c);
    for (int t = 0; t < nthreads; t++)
        for (int64_t j = 0; j < c; j++) out[j] += part[t * c + j];
}

/* Two per-channel sums over rows, as per-thread double partials (nt x c each), merged by `sums_take`. */
typedef struct {
    int nt;
    int64_t c;
    double *s1, *s2;
} sums_t;

static sums_t sums_new(int nt, int64_t c) {
    sums_t s = {nt, c, calloc((size_t)(nt * c), sizeof(double)), calloc((size_t)(nt * c), sizeof(double))};
    return s;
}

/* Merge both sums in thread order into out1, out2 (c each) and free the partials. */
static void sums_take(sums_t *s, double *out1, double *out2) {
    merge(s->s1, s->nt, s->c, out1);
    merge(s->s2, s->nt, s->c, out2);
    free(s->s1);
    free(s->s2);
}

/* The calling thread's share of a parallel region: rows [lo, hi) and fp32 row sums a, b (c each), moved into the
 * thread's double partials every FLUSH rows by `share_row_done`. */
typedef struct {
    int64_t lo, hi;
    float *a, *b;
    double *d1, *d2;
} share_t;

static share_t share_begin(const sums_t *s, int64_t m) {
    int t = omp_get_thread_num();
    share_t sh = {0, 0, calloc((size_t)s->c, sizeof(float)), calloc((size_t)s->c, sizeof(float)), s->s1 + t * s->c,
                  s->s2 + t * s->c};
    rows_of(m, t, s->nt, &sh.lo, &sh.hi);
    return sh;
}

static inline void share_row_done(share_t *sh, int64_t r, int64_t c) {
    if ((r - sh->lo) % FLUSH == FLUSH - 1 || r == sh->hi - 1) flush(sh->a, sh->b, sh->d1, sh->d2, c);
}

static void share_end(share_t *sh) {
    free(sh->a);
    free(sh->b);
}

/* Forward. x, res (nullable), y: (M, C) elements. weight, bias, running stats: (C) fp32. momentum < 0 leaves the
 * running statistics alone. Writes save_mean and save_invstd (C) for backward. */
void bn_act_forward(const elem_t *x, const elem_t *res, elem_t *y, int64_t m, int64_t c, const float *weight,
                    const float *bias, float *running_mean, float *running_var, float momentum, float eps, int act,
                    float upper, float *save_mean, float *save_invstd) {
    int nt = threads_for(m, c);
    sums_t sums = sums_new(nt, c);
    float *shift0 = malloc(sizeof(float) * c), *scale = malloc(sizeof(float) * c), *shift = malloc(sizeof(float) * c);
    /* Sums of (x - x[0]) rather than x: keeps var = E[d^2] - E[d]^2 accurate when the mean is large. */
    for (int64_t j = 0; j < c; j++) shift0[j] = ld(x[j]);
#pragma omp parallel num_threads(nt)
    {
        share_t sh = share_begin(&sums, m);
        float *a = sh.a, *b = sh.b;
        for (int64_t r = sh.lo; r < sh.hi; r++) {
            const elem_t *xr = x + r * c;
#pragma omp simd
            for (int64_t j = 0; j < c; j++) {
                float v = ld(xr[j]) - shift0[j];
                a[j] += v;
                b[j] += v * v;
            }
            share_row_done(&sh, r, c);
        }
        share_end(&sh);
    }
    double *sum = malloc(sizeof(double) * c), *sumsq = malloc(sizeof(double) * c);
    sums_take(&sums, sum, sumsq);
    for (int64_t j = 0; j < c; j++) {
        double md = sum[j] / (double)m;
        double var = sumsq[j] / (double)m - md * md;
        if (var < 0) var = 0;
        double mean = md + shift0[j];
        float invstd = (float)(1.0 / sqrt(var + eps));
        save_mean[j] = (float)mean;
        save_invstd[j] = invstd;
        scale[j] = weight[j] * invstd;
        shift[j] = bias[j] - (float)mean * scale[j];
        if (momentum >= 0) {
            double unbiased = m > 1 ? var * (double)m / (double)(m - 1) : var;
            running_mean[j] = (float)((1.0 - momentum) * running_mean[j] + momentum * mean);
            running_var[j] = (float)((1.0 - momentum) * running_var[j] + momentum * unbiased);
        }
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        const elem_t *xr = x + r * c;
        const elem_t *rr = res ? res + r * c : NULL;
        elem_t *yr = y + r * c;
        if (rr) {
#pragma omp simd
            for (int64_t j = 0; j < c; j++) {
                float v = ld(xr[j]) * scale[j] + shift[j] + ld(rr[j]);
                yr[j] = st(act ? clampf(v, upper) : v);
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < c; j++) {
                float v = ld(xr[j]) * scale[j] + shift[j];
                yr[j] = st(act ? clampf(v, upper) : v);
            }
        }
    }
    free(sum);
    free(sumsq);
    free(shift0);
    free(scale);
    free(shift);
}

/* Backward. dy, x: (M, C) elements. The activation's mask is recomputed from x when y is NULL, else read from y
 * (the residual case, where the mask depends on the residual too); then g = masked dy is also written to g_out, the
 * residual's gradient. Writes dx and dweight, dbias (fp32). */
void bn_act_backward(const elem_t *dy, const elem_t *x, const elem_t *y, elem_t *g_out, elem_t *dx,
                     int64_t m, int64_t c, const float *weight, const float *bias, const float *save_mean,
                     const float *save_invstd, int act, float upper, float *dweight, float *dbias) {
    int nt = threads_for(m, c);
    sums_t sums = sums_new(nt, c);
    float *scale = malloc(sizeof(float) * c), *shift = malloc(sizeof(float) * c);
    for (int64_t j = 0; j < c; j++) {
        scale[j] = weight[j] * save_invstd[j];
        shift[j] = bias[j] - save_mean[j] * scale[j];
    }
    const int recompute = act && y == NULL, from_y = act && y != NULL;
#pragma omp parallel num_threads(nt)
    {
        share_t sh = share_begin(&sums, m);
        float *a = sh.a, *b = sh.b;
        for (int64_t r = sh.lo; r < sh.hi; r++) {
            const elem_t *dyr = dy + r * c, *xr = x + r * c;
            if (from_y) {
                const elem_t *yr = y + r * c;
                elem_t *gr = g_out + r * c;
#pragma omp simd
                for (int64_t j = 0; j < c; j++) {
                    float g = passes(ld(yr[j]), upper) ? ld(dyr[j]) : 0.f;
                    gr[j] = st(g);
                    a[j] += g;
                    b[j] += g * (ld(xr[j]) - save_mean[j]);
                }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < c; j++) {
                    float xv = ld(xr[j]);
                    float g = (recompute && !passes(xv * scale[j] + shift[j], upper)) ? 0.f : ld(dyr[j]);
                    a[j] += g;
                    b[j] += g * (xv - save_mean[j]);
                }
            }
            share_row_done(&sh, r, c);
        }
        share_end(&sh);
    }
    double *sum_g = malloc(sizeof(double) * c), *sum_gx = malloc(sizeof(double) * c);
    sums_take(&sums, sum_g, sum_gx);
    /* dx = w * invstd * (g - mean(g) - xhat * mean(g * xhat)) = ka * g + kb * x + kc per channel. */
    float *ka = malloc(sizeof(float) * c), *kb = malloc(sizeof(float) * c), *kc = malloc(sizeof(float) * c);
    for (int64_t j = 0; j < c; j++) {
        double invstd = save_invstd[j];
        dbias[j] = (float)sum_g[j];
        dweight[j] = (float)(sum_gx[j] * invstd);
        double k = weight[j] * invstd;
        double kx = k * invstd * invstd * sum_gx[j] / (double)m;
        ka[j] = (float)k;
        kb[j] = (float)(-kx);
        kc[j] = (float)(kx * save_mean[j] - k * sum_g[j] / (double)m);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < m; r++) {
        const elem_t *xr = x + r * c;
        elem_t *dxr = dx + r * c;
        if (from_y) {
            const elem_t *gr = g_out + r * c;
#pragma omp simd
            for (int64_t j = 0; j < c; j++) dxr[j] = st(ka[j] * ld(gr[j]) + kb[j] * ld(xr[j]) + kc[j]);
        } else {
            const elem_t *dyr = dy + r * c;
#pragma omp simd
            for (int64_t j = 0; j < c; j++) {
                float xv = ld(xr[j]);
                float g = (recompute && !passes(xv * scale[j] + shift[j], upper)) ? 0.f : ld(dyr[j]);
                dxr[j] = st(ka[j] * g + kb[j] * xv + kc[j]);
            }
        }
    }
    free(sum_g);
    free(sum_gx);
    free(scale);
    free(shift);
    free(ka);
    free(kb);
    free(kc);
}
