/* ReLU -> batch norm (training) -> dropout over a channels_last activation, in two passes forward and two
 * backward (core/layers.py's FusedReluBnDropout; built and loaded by core/native/__init__.py).
 *
 * Torch runs the same maths as ~8 passes forward and ~8 backward over each activation (ReLU, two sums, a
 * multiply-add, the mask's compare, cast and multiply; their gradients), and at this net's sizes every pass
 * over a 128x12x24x24 block misses the cache. Here each pass reads the activation once.
 *
 * Layout: P pixels of C channels each, channels innermost (a channels_last tensor's memory), so element i is
 * channel i % C. Work is split into blocks of PB pixels (PB * C floats: the loops vectorise over them) in
 * contiguous ranges, one per thread; per-channel sums are accumulated in double per thread and combined in
 * thread order, so a result depends only on the thread count.
 *
 * Dropout (core/layers.py's FastDropout): element i is kept when the top 16 bits of lane(i) = mix32(mix32(i ^ k0)
 * + k1) are >= drop (drop = p * 65536), survivors scaled by `scale`; (k0, k1) is one 64-bit draw of torch's
 * generator per call. A counter-based mask is computed where it is used, in parallel, and never stored: the
 * backward recomputes it. drop == 0: no dropout. FastDropout computes the same lanes with torch's ops.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#define PB 16
#define MAXC 64

static inline float relu(float v) { return v > 0.f ? v : 0.f; }

/* Chris Wellons' lowbias32 integer hash. */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* Dropout's factor for element i: scale where kept, 0 where dropped. */
static inline float keep(int64_t i, uint32_t k0, uint32_t k1, uint32_t drop, float scale) {
    return (mix32(mix32((uint32_t)i ^ k0) + k1) >> 16) >= drop ? scale : 0.f;
}

/* FastDropout's factors for elements 0..n-1 (torch's ops compute the same without this library). */
void lab_keep_factors(float *out, int64_t n, uint32_t k0, uint32_t k1, uint32_t drop, float scale, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = keep(i, k0, k1, drop, scale);
}

/* v[0..C) repeated over v[0..K): the per-channel terms laid out like a block of PB pixels. */
static void repeat_channels(float *v, int C, int K) {
    for (int j = C; j < K; j++) v[j] = v[j % C];
}

static void span(int64_t n, int t, int nt, int64_t *lo, int64_t *hi) {
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* Per channel: s1 = sum of w(i) * relu(y[i]) ... over all pixels, where w is 1 (forward: s1 = sum x, s2 = sum x^2)
 * or g[i] * keep(i) (backward: s1 = sum dy, s2 = sum dy * x). */
static int channel_sums(const float *y, const float *g, uint32_t k0, uint32_t k1, uint32_t drop, float scale, int64_t P,
                        int C, int nt, double *s1, double *s2) {
    const int K = PB * C;
    const int64_t nb = P / PB, total = P * C;
    double *part = calloc((size_t)nt * 2 * C, sizeof(double));
    if (!part) return -2;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        double a1[PB * MAXC], a2[PB * MAXC];
        for (int j = 0; j < K; j++) a1[j] = a2[j] = 0.0;
        int64_t lo, hi;
        span(nb, t, n, &lo, &hi);
        for (int64_t b = lo; b < hi; b++) {
            const float *yb = y + b * K;
            if (!g) {
                for (int j = 0; j < K; j++) {
                    const double x = relu(yb[j]);
                    a1[j] += x;
                    a2[j] += x * x;
                }
            } else {
                const float *gb = g + b * K;
                if (drop) {
                    for (int j = 0; j < K; j++) {
                        const float dy = gb[j] * keep(b * K + j, k0, k1, drop, scale);
                        a1[j] += dy;
                        a2[j] += (double)dy * relu(yb[j]);
                    }
                } else {
                    for (int j = 0; j < K; j++) {
                        a1[j] += gb[j];
                        a2[j] += (double)gb[j] * relu(yb[j]);
                    }
                }
            }
        }
        if (t == n - 1) { /* the pixels after the last whole block */
            for (int64_t i = nb * K; i < total; i++) {
                const int j = (int)(i - nb * K);
                const double x = relu(y[i]);
                const double w = !g ? x : (double)(g[i] * (drop ? keep(i, k0, k1, drop, scale) : 1.f));
                a1[j] += !g ? x : w;
                a2[j] += w * x;
            }
        }
        double *mine = part + (size_t)t * 2 * C;
        for (int j = 0; j < K; j++) {
            mine[j % C] += a1[j];
            mine[C + j % C] += a2[j];
        }
    }
    for (int c = 0; c < C; c++) s1[c] = s2[c] = 0.0;
    for (int t = 0; t < nt; t++)
        for (int c = 0; c < C; c++) {
            s1[c] += part[(size_t)t * 2 * C + c];
            s2[c] += part[(size_t)t * 2 * C + C + c];
        }
    free(part);
    return 0;
}

/* out = (relu(y) * a + b) * keep, a = gamma / sqrt(var + eps), b = beta - mean * a, with the batch's mean and
 * biased variance (written to mean, var; istd = 1 / sqrt(var + eps) for the backward). */
int lab_rbd_forward(const float *y, float *out, int64_t P, int C, const float *gamma, const float *beta, float eps,
                    uint32_t k0, uint32_t k1, uint32_t drop, float scale, float *mean, float *var, float *istd, int nt) {
    if (C < 1 || C > MAXC || P < 1 || nt < 1) return -1;
    double s1[MAXC], s2[MAXC];
    int rc = channel_sums(y, NULL, 0, 0, 0, 1.f, P, C, nt, s1, s2);
    if (rc) return rc;
    float A[PB * MAXC], B[PB * MAXC];
    for (int c = 0; c < C; c++) {
        const double m = s1[c] / (double)P, v = s2[c] / (double)P - m * m;
        mean[c] = (float)m;
        var[c] = v > 0.0 ? (float)v : 0.f;
        istd[c] = 1.f / sqrtf(var[c] + eps);
        const float a = gamma[c] * istd[c];
        A[c] = a;
        B[c] = beta[c] - mean[c] * a;
    }
    const int K = PB * C;
    repeat_channels(A, C, K);
    repeat_channels(B, C, K);
    const int64_t nb = P / PB, total = P * C;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const float *yb = y + b * K;
        float *ob = out + b * K;
        if (drop) {
            for (int j = 0; j < K; j++) ob[j] = (relu(yb[j]) * A[j] + B[j]) * keep(b * K + j, k0, k1, drop, scale);
        } else {
            for (int j = 0; j < K; j++) ob[j] = relu(yb[j]) * A[j] + B[j];
        }
    }
    for (int64_t i = nb * K; i < total; i++) {
        const int j = (int)(i % C);
        out[i] = (relu(y[i]) * A[j] + B[j]) * (drop ? keep(i, k0, k1, drop, scale) : 1.f);
    }
    return 0;
}

/* Gradients of the forward above, from its output's gradient g: grad_gamma, grad_beta and (gy != NULL) the
 * gradient of y, the batch-norm gradient dx = a*dy + b*x + c (per channel terms collected, as core/layers.py's
 * _ChannelsLastBatchNorm) gated by ReLU (0 where y <= 0), dy = g * keep. */
int lab_rbd_backward(const float *g, const float *y, float *gy, int64_t P, int C, const float *gamma, const float *mean,
                     const float *istd, uint32_t k0, uint32_t k1, uint32_t drop, float scale, float *grad_gamma,
                     float *grad_beta, int nt) {
    if (C < 1 || C > MAXC || P < 1 || nt < 1) return -1;
    double s1[MAXC], s2[MAXC];
    int rc = channel_sums(y, g, k0, k1, drop, scale, P, C, nt, s1, s2);
    if (rc) return rc;
    float A[PB * MAXC], B[PB * MAXC], Cc[PB * MAXC];
    for (int c = 0; c < C; c++) {
        const double sum_dy = s1[c], sum_dy_xhat = istd[c] * (s2[c] - mean[c] * s1[c]);
        grad_beta[c] = (float)sum_dy;
        grad_gamma[c] = (float)sum_dy_xhat;
        const double a = (double)gamma[c] * istd[c];
        const double b = -a * istd[c] * sum_dy_xhat / (double)P;
        A[c] = (float)a;
        B[c] = (float)b;
        Cc[c] = (float)(-a * sum_dy / (double)P - b * mean[c]);
    }
    if (!gy) return 0;
    const int K = PB * C;
    repeat_channels(A, C, K);
    repeat_channels(B, C, K);
    repeat_channels(Cc, C, K);
    const int64_t nb = P / PB, total = P * C;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        const float *yb = y + b * K, *gb = g + b * K;
        float *ob = gy + b * K;
        if (drop) {
            for (int j = 0; j < K; j++) {
                const float dy = gb[j] * keep(b * K + j, k0, k1, drop, scale);
                ob[j] = yb[j] > 0.f ? A[j] * dy + B[j] * yb[j] + Cc[j] : 0.f;
            }
        } else {
            for (int j = 0; j < K; j++) ob[j] = yb[j] > 0.f ? A[j] * gb[j] + B[j] * yb[j] + Cc[j] : 0.f;
        }
    }
    for (int64_t i = nb * K; i < total; i++) {
        const int j = (int)(i % C);
        const float dy = g[i] * (drop ? keep(i, k0, k1, drop, scale) : 1.f);
        gy[i] = y[i] > 0.f ? A[j] * dy + B[j] * y[i] + Cc[j] : 0.f;
    }
    return 0;
}
