/* Native float32 CPU kernels of lp_dist for general p and p = ∞ (see certify/linf_dist/native.py).
 *
 * Plain C with GCC vector extensions (LANES floats: 16 with AVX-512, else 8), no Python or torch
 * headers, so it compiles in a few seconds. Each kernel works on a range of rows (b0..b1 or
 * o0..o1); the entry points at the end take arrays of ranges and run them on OpenMP threads or
 * one per call (see there). Rows have CI floats, a multiple of lp_row_multiple() (the caller pads
 * with zeros: a padded coordinate has d = 0 and adds nothing, or at most 2^-(E−1)p by table).
 *
 * z^p is 2^(p·log2 z): log2 from the float's bits and a polynomial (as the compiled kernels do),
 * 2^v from a polynomial times 2^n built in the exponent bits; for p < SPARSE_P with AVX-512, a
 * table and a polynomial fitted for that p instead (vpow_table, about half the operations).
 * Exponents below min_exp are raised to it, so every term is a normal float (denormals would cost
 * microcode assists); such a term is at most 2^-100 of the largest one, nothing in any sum or
 * gradient. Table factors below 2^-100 are exactly 0 for the same reason.
 */
#include <stdint.h>
#include <math.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#ifndef LANES
#ifdef __AVX512F__
#define LANES 16 /* one AVX-512 register */
#else
#define LANES 8
#endif
#endif
typedef float vf __attribute__((vector_size(4 * LANES))); /* LANES floats */
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
#define ROWS 4 /* rows processed together: each loaded row of the other operand serves ROWS */

#define CHUNK 4 /* vectors per step of the p = ∞ index search */
/* Rows (CI) must be a multiple of this (the caller pads with zeros). */
int lp_row_multiple(void) { return LANES * CHUNK; }
int lp_lanes(void) { return LANES; }

static const float TINY = 1e-10f;
/* From this p on, vectors whose terms are all negligible skip the log2, the exp2 and the gradient
 * updates. A term is negligible below 2^-(24 + log2 CI) of the row's largest possible term (1 in the
 * forward, whose ratios are |d|/max|d|; at least 1/CI in the backward, whose |q|^p sum to 1): all
 * of them together change a sum by less than 2^-24 of it, under float32's own rounding. The test
 * compares the ratio itself (|d|/m, |q|) with that bound's p-th root, before any log2. Below
 * SPARSE_P too few vectors are skipped for the test to pay: on Gaussian data (B = 512, CI = CO =
 * 1024, one thread) the skipping loops break even at p ≈ 56 and are 1.6× faster at p = 80; with
 * the table route below it, skipping from p = 30 instead slowed p = 40 from 1.96 to 1.33 G/s. */
#ifndef SPARSE_P
#define SPARSE_P 60.0f
#endif
static inline float negligible_below(float power, int64_t CI) {
    return exp2f(-(24.0f + ceilf(log2f((float)CI))) / power);
}
static const float FLT_MIN_ = 1.1754944e-38f;

static inline vf load(const float *p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
static inline vf splat(float a) { return (vf){0} + a; }
static inline vf vabs(vf v) { return (vf)((vi)v & 0x7FFFFFFF); }
static inline vf vselect(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
/* Whether any lane of a comparison result is set: one mask test where the ISA has it (a memcmp
 * would go through memory, and a store forwarded to narrower loads stalls for many cycles). */
static inline int any(vi m) {
#if defined(__AVX512F__) && LANES == 16
    return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#elif defined(__AVX__) && LANES == 8
    return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
    int32_t set = 0;
    for (int k = 0; k < LANES; k++) set |= m[k];
    return set != 0;
#endif
}
static inline vi lane_ids(void) { vi l; for (int k = 0; k < LANES; k++) l[k] = k; return l; }
static inline vi vimin(vi a, vi b) { vi lt = a < b; return (a & lt) | (b & ~lt); }
/* The maximum (minimum) of all lanes, in every lane: log2(LANES) shuffle steps, no scalar work. */
static inline vf all_max(vf v) {
    for (int s = LANES / 2; s >= 1; s /= 2) v = vmax(v, __builtin_shuffle(v, lane_ids() ^ s));
    return v;
}
static inline vi all_min(vi v) {
    for (int s = LANES / 2; s >= 1; s /= 2) v = vimin(v, __builtin_shuffle(v, lane_ids() ^ s));
    return v;
}
static inline float hsum(vf v) { float s = 0; for (int k = 0; k < LANES; k++) s += v[k]; return s; }
static inline float hmax(vf v) { float m = v[0]; for (int k = 1; k < LANES; k++) m = v[k] > m ? v[k] : m; return m; }

/* c·log2 z for finite z >= 0 and a scale c (p or p − 1, folded into the coefficients: one multiply
 * fewer): z = 2^e·m, m in [0.75, 1.5), log2 m = s·P(s²), s = (m−1)/(m+1) (relative error 2.5e-9 on
 * m, the coefficients of cpu_kernels._LOG2_ODD); 0 gives about −127·c. */
typedef struct { vf c, c0, c1, c2, c3; } scaled_log2;

static inline scaled_log2 scaled_log2_of(float c) {
    return (scaled_log2){splat(c), splat(c * 2.8853900747000205f), splat(c * 0.9618022823030903f),
                         splat(c * 0.5763892298650551f), splat(c * 0.43919066613588165f)};
}

static inline vf vlog2_times(vf z, const scaled_log2 *k) {
    vi t = (vi)z - 0x3F400000;
    vf m = (vf)((t & 0x7FFFFF) + 0x3F400000);
    vf s = (m - 1.0f) / (m + 1.0f);
    vf s2 = s * s;
    vf e = __builtin_convertvector(t >> 23, vf);
    return e * k->c + s * (k->c0 + s2 * (k->c1 + s2 * (k->c2 + s2 * k->c3)));
}

/* 2^v for v <= 1/2, with v raised to min_exp >= −126 first: a term that small is 2^min_exp instead
 * of 0, at most CI·2^-100 of any sum or gradient here. v = n + f, n an integer, |f| <= 1/2; 2^f by
 * its Taylor series in f to degree 7 (coefficients ln2^k/k!, relative error < 1e-8). */
static inline vf vexp2(vf v, float min_exp) {
    v = vmax(v, splat(min_exp));
    vi n = __builtin_convertvector(v - 0.5f, vi); /* truncation: n = ceil(v − 1/2) for v <= 1/2 */
    vf f = v - __builtin_convertvector(n, vf);
    vf poly = 1.0f + f * (0.6931471805599453f + f * (0.2402265069591007f + f * (0.05550410866482158f +
              f * (0.009618129107628477f + f * (0.0013333558146428443f + f * (1.5403530393381606e-4f +
              f * 1.525273380405984e-5f))))));
    return poly * (vf)((n + 127) << 23);
}

/* ---------------------------------------------------------------- z^c by table and polynomial
 * For z in [0, 1] and one c per call (p in the forward, p − 1 in the backward) in the range where
 * the log2-then-exp2 route costs most: z = 2^e·m, m in [1, 2). Five bits of z (the low bits of e
 * and the top bits of m) pick one of 32 pieces, each starting at a (its mantissa interval's lower
 * end, to float rounding):
 *     z^c = (2^e·a)^c · (1 + u)^c,   u = m/a − 1,   0 <= u < 1/P.
 * The first factor and 1/a are table entries (one 32-entry permute each), the second a polynomial
 * in u fitted for this c (Chebyshev nodes; relative error <= POW_TOLERANCE as evaluated in float32,
 * about what log2 then exp2 reach for the terms that matter; 4.4e-7 at most overall, measured):
 * 8 + K vector operations for degree K, against about 28 and a division. The table holds E
 * exponents (E·P = 32, P pieces per octave): z below 2^-(E−1) is raised to it, a term then at most
 * 2^-(E−1)c, chosen below 2^-(28 + 2 log2 CI) of any sum or gradient; the smallest E that allows
 * this gives the narrowest pieces. Plans are cached per thread. AVX-512 only (the 32-entry
 * permute); elsewhere, and where no degree up to POW_MAX_DEGREE is accurate enough, the
 * log2/exp2 route serves. */
#define POW_PIECES 32
#define POW_MIN_DEGREE 5
#define POW_MAX_DEGREE 13
#define POW_TOLERANCE 3e-7
#if defined(__AVX512F__) && LANES == 16
#define POW_TABLES 1
#else
#define POW_TABLES 0
#endif

typedef struct {
    int degree; /* 0: not applicable here (use vlog2_times/vexp2) */
    int shift;  /* the piece is (bits of z) >> shift, modulo 32 */
    float z_min;
    float scale[POW_PIECES];  /* 1/a */
    float factor[POW_PIECES]; /* (2^e·a)^c */
    float coef[POW_MAX_DEGREE + 1];
} pow_plan;

/* Fits (1 + u)^c on [0, W] by degree K: interpolation at Chebyshev nodes in t = 2u/W − 1 (a well
 * conditioned Vandermonde), converted to coefficients in u, written to coef. Returns the largest
 * relative error of the polynomial as the kernels evaluate it (float32 coefficients, float32
 * Horner with fused multiply-adds) at 257 float32 points of [1, 1 + W) as m, u = m − 1. All
 * coefficients and all u are >= 0 (the pieces start at their lower end), so Horner adds positive
 * terms and keeps float32's relative accuracy; from the centre, terms of both signs cancelled. */
static double fit_power(double c, double W, int K, double *coef) {
    double a[POW_MAX_DEGREE + 1][POW_MAX_DEGREE + 2], mid = 0.5 * W;
    int n = K + 1;
    for (int i = 0; i < n; i++) {
        double t = cos(M_PI * (i + 0.5) / n);
        for (int k = 0; k < n; k++) a[i][k] = pow(t, k);
        a[i][n] = pow(1.0 + mid + mid * t, c);
    }
    for (int k = 0; k < n; k++) { /* elimination with partial pivoting */
        int piv = k;
        for (int i = k + 1; i < n; i++) if (fabs(a[i][k]) > fabs(a[piv][k])) piv = i;
        for (int j = 0; j <= n; j++) { double s = a[k][j]; a[k][j] = a[piv][j]; a[piv][j] = s; }
        for (int i = 0; i < n; i++) {
            if (i == k) continue;
            double f = a[i][k] / a[k][k];
            for (int j = k; j <= n; j++) a[i][j] -= f * a[k][j];
        }
    }
    /* Σ b_k t^k with t = (u − mid)/mid: expand each (u/mid − 1)^k by the binomial theorem */
    for (int j = 0; j <= K; j++) coef[j] = 0.0;
    for (int k = 0; k <= K; k++) {
        double b = a[k][n] / a[k][k], binom = 1.0; /* binom = C(k, j) */
        for (int j = 0; j <= k; j++) {
            coef[j] += b * binom * (((k - j) & 1) ? -1.0 : 1.0) / pow(mid, j);
            binom = binom * (k - j) / (j + 1);
        }
    }
    float cf[POW_MAX_DEGREE + 1];
    for (int k = 0; k <= K; k++) cf[k] = (float)coef[k];
    double worst = 0.0;
    for (int s = 0; s <= 256; s++) {
        float m = (float)(1.0 + W * s / 256.0), u = m - 1.0f, v = cf[K];
        for (int k = K - 1; k >= 0; k--) v = fmaf(v, u, cf[k]);
        double err = fabs(v / pow(1.0 + (double)u, c) - 1.0);
        worst = err > worst ? err : worst;
    }
    return worst;
}

static int power_tables_on = 1;
/* Off: the log2/exp2 route at every p (the "before" rows of benchmarks/lp_dist.py). */
void lp_set_power_tables(int on) { power_tables_on = on; }

static void make_plan(pow_plan *plan, float c, double need) {
    int E = 2;
    while (E <= 8 && (E - 1) * (double)c < need) E *= 2;
    if (E > 8) return;
    int P = POW_PIECES / E, log2P = __builtin_ctz(P);
    /* u runs over [0, width) in the first piece of an octave, less in the others; widened for the
     * float scale's rounding */
    double width = 1.0 / P, coef[POW_MAX_DEGREE + 1];
    int K = POW_MIN_DEGREE;
    while (K <= POW_MAX_DEGREE && fit_power(c, width * (1.0 + 1e-6), K, coef) > POW_TOLERANCE) K++;
    if (K > POW_MAX_DEGREE) return;
    for (int k = 0; k <= K; k++) plan->coef[k] = (float)coef[k];
    for (int idx = 0; idx < POW_PIECES; idx++) {
        int piece = idx & (P - 1), low = idx >> log2P;
        int biased = 127 - ((127 - low) % E + E) % E; /* the one in 128 − E .. 127 that is low mod E */
        /* a, the piece's lower end, is taken as the exact inverse of the float scale: then u =
         * m·scale − 1, one fused multiply-add, carries a single rounding (relative error at most
         * c·u·2^-24 in z^c, not c·2^-24) */
        plan->scale[idx] = (float)(1.0 / (1.0 + piece * width));
        double start = 1.0 / plan->scale[idx];
        double value = pow(ldexp(start, biased - 127), c);
        plan->factor[idx] = value < 0x1p-100 ? 0.0f : (float)value; /* 0, not a denormal */
    }
    plan->shift = 23 - log2P;
    plan->z_min = ldexpf(1.0f, -(E - 1));
    plan->degree = K;
}

/* The plan for (c, CI), from a small per-thread cache: fitting costs 0.1–0.3 ms, and a training
 * step asks for the same few (p for each layer's forward, p − 1 for its backward) many times. */
#define PLAN_CACHE 8
static void plan_power(pow_plan *plan, float c, int64_t CI) {
    static __thread struct { float c; double need; pow_plan plan; } cache[PLAN_CACHE];
    static __thread int cached, next;
    *plan = (pow_plan){0}; /* degree 0: the log2/exp2 route */
    if (!POW_TABLES || !power_tables_on || !(c > 0.0f)) return;
    double need = 28.0 + 2.0 * ceil(log2((double)(CI > 1 ? CI : 2)));
    for (int k = 0; k < cached; k++)
        if (cache[k].c == c && cache[k].need == need) { *plan = cache[k].plan; return; }
    make_plan(plan, c, need);
    cache[next].c = c, cache[next].need = need, cache[next].plan = *plan;
    next = (next + 1) % PLAN_CACHE;
    cached = cached < PLAN_CACHE ? cached + 1 : PLAN_CACHE;
}

#if POW_TABLES
/* The plan in registers: the two tables as pairs of vectors, the coefficients splatted. */
typedef struct { __m512 scale_lo, scale_hi, factor_lo, factor_hi; vf z_min, coef[POW_MAX_DEGREE + 1]; int shift; } pow_regs;

static inline pow_regs pow_regs_of(const pow_plan *plan) {
    pow_regs r;
    r.scale_lo = _mm512_loadu_ps(plan->scale), r.scale_hi = _mm512_loadu_ps(plan->scale + 16);
    r.factor_lo = _mm512_loadu_ps(plan->factor), r.factor_hi = _mm512_loadu_ps(plan->factor + 16);
    r.z_min = splat(plan->z_min);
    for (int k = 0; k <= plan->degree; k++) r.coef[k] = splat(plan->coef[k]);
    r.shift = plan->shift;
    return r;
}

/* z^c for z in [0, 2) by the plan, with the degree K a constant where this is inlined. */
static inline __attribute__((always_inline)) vf vpow_table(vf z, const pow_regs *r, int K) {
    z = vmax(z, r->z_min);
    vi bits = (vi)z;
    __m512i piece = (__m512i)(bits >> r->shift);
    vf scale = (vf)_mm512_permutex2var_ps(r->scale_lo, piece, r->scale_hi);
    vf factor = (vf)_mm512_permutex2var_ps(r->factor_lo, piece, r->factor_hi);
    vf u = (vf)((bits & 0x7FFFFF) | 0x3F800000) * scale - 1.0f;
    vf v = r->coef[K];
    for (int k = K - 1; k >= 0; k--) v = v * u + r->coef[k];
    return v * factor;
}
#else
typedef struct { int unused; } pow_regs;
static inline pow_regs pow_regs_of(const pow_plan *plan) { (void)plan; return (pow_regs){0}; }
static inline vf vpow_table(vf z, const pow_regs *r, int K) { (void)r; (void)K; return z; } /* unused */
#endif

/* z^c by the route the plan chose: the table for degree K > 0 (z < 2), else log2 then exp2 with
 * exponents raised to min_exp (c folded into lc). */
static inline __attribute__((always_inline)) vf vpow(vf z, const pow_regs *table,
                                                     const scaled_log2 *lc, int K, float min_exp) {
    return K ? vpow_table(z, table, K) : vexp2(vlog2_times(z, lc), min_exp);
}

/* Call body(K) with the plan's degree K as a constant, so that each degree gets its own unrolled
 * polynomial; K = 0 is the log2/exp2 route. */
#define WITH_DEGREE(K_, body) do { switch (K_) { \
    case 5: body(5); break; case 6: body(6); break; case 7: body(7); break; \
    case 8: body(8); break; case 9: body(9); break; case 10: body(10); break; \
    case 11: body(11); break; case 12: body(12); break; case 13: body(13); break; \
    default: body(0); break; } } while (0)

/* For tests and the docs: the degree the plan for (c, CI) uses (0: the log2/exp2 route), and z^c
 * (n values, a multiple of LANES, z in [0, 1]) by the route the kernels take for them. */
int lp_power_degree(float c, int64_t CI) {
    pow_plan plan;
    plan_power(&plan, c, CI);
    return plan.degree;
}

void lp_power(const float *z, float *out, int64_t n, float c, int64_t CI) {
    pow_plan plan;
    plan_power(&plan, c, CI);
    const pow_regs table = pow_regs_of(&plan);
    const scaled_log2 lc = scaled_log2_of(c);
#define POWER(K) for (int64_t i = 0; i < n; i += LANES) \
        store(out + i, vpow(load(z + i), &table, &lc, K, -126.0f))
    WITH_DEGREE(plan.degree, POWER);
#undef POWER
}

/* 1 if every float of p[lo..hi) is finite (exponent bits not all ones), else 0: the caller sends
 * calls with NaN or ±inf to eager, whose results carry them; the kernels here work on the bits. */
static int all_finite_range(const float *p, int64_t lo, int64_t hi) {
    const vi exponent = (vi){0} + 0x7F800000;
    int64_t n = hi - lo;
    p += lo;
    vi bad = (vi){0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) bad |= ((vi)load(p + i) & exponent) == exponent;
    int any_bad = any(bad);
    for (; i < n; i++) any_bad |= !isfinite(p[i]);
    return !any_bad;
}

/* ---------------------------------------------------------------- finite p, forward
 * y[b, o] = m·(Σ_i (|d_i|/m)^p)^(1/p), m = max(max_i |d_i|, 1e-10): the normalized form at every
 * p (no overflow); for p <= 10 the result is then raised to FLT_MIN^(1/p), the floor of the
 * unnormalized form the reference uses there. */
static inline __attribute__((always_inline)) void forward_rows(
        const float *x, const float *w, float *y, int64_t CO, int64_t CI, int64_t b, int rows,
        float p, float floor_y, const pow_regs *table, int K) {
    const scaled_log2 lp = scaled_log2_of(p);
    const int sparse = p >= SPARSE_P;
    const vf r_min = splat(negligible_below(p, CI));
    for (int64_t o = 0; o < CO; o++) {
        const float *wo = w + o * CI;
        vf mx[ROWS], acc[ROWS], inv[ROWS];
        for (int k = 0; k < rows; k++) mx[k] = splat(0.0f);
        for (int64_t i = 0; i < CI; i += LANES) {
            vf wv = load(wo + i);
            for (int k = 0; k < rows; k++) mx[k] = vmax(mx[k], vabs(load(x + (b + k) * CI + i) - wv));
        }
        float m[ROWS];
        for (int k = 0; k < rows; k++) {
            m[k] = hmax(mx[k]);
            m[k] = m[k] > TINY ? m[k] : TINY;
            inv[k] = splat(1.0f / m[k]);
            acc[k] = splat(0.0f);
        }
        for (int64_t i = 0; i < CI; i += LANES) {
            vf wv = load(wo + i);
            for (int k = 0; k < rows; k++) {
                vf r = vabs(load(x + (b + k) * CI + i) - wv) * inv[k];
                if (sparse && !any(r >= r_min)) continue;
                acc[k] += vpow(r, table, &lp, K, -126.0f);
            }
        }
        for (int k = 0; k < rows; k++) {
            float v = m[k] * powf(hsum(acc[k]), 1.0f / p);
            y[(b + k) * CO + o] = v > floor_y ? v : floor_y;
        }
    }
}

static void forward_range(const float *x, const float *w, float *y, int64_t CO, int64_t CI, int64_t b0,
                int64_t b1, float p) {
    float floor_y = p <= 10.0f ? powf(FLT_MIN_, 1.0f / p) : 0.0f;
    pow_plan plan;
    plan_power(&plan, p < SPARSE_P ? p : 0.0f, CI);
    const pow_regs table = pow_regs_of(&plan);
#define FORWARD(K) do { \
        int64_t b = b0; \
        for (; b + ROWS <= b1; b += ROWS) forward_rows(x, w, y, CO, CI, b, ROWS, p, floor_y, &table, K); \
        for (; b < b1; b++) forward_rows(x, w, y, CO, CI, b, 1, p, floor_y, &table, K); \
    } while (0)
    WITH_DEGREE(plan.degree, FORWARD);
#undef FORWARD
}

/* ---------------------------------------------------------------- p = ∞, forward
 * y[b, o] = max_i |d_i| and, when index != 0, the first i reaching it, stored as i if d_i >= 0 and
 * −(i + 1) if d_i < 0. Rows go in chunks of CHUNK vectors: each lane keeps its maximum and the
 * first chunk where it reached it (strict >), one compare and select per chunk rather than per
 * vector; at the end the chunks of the lanes that hold the row's maximum are scanned again, and
 * the smallest index where |d| equals it is the first. */
static inline void forward_inf_rows(const float *x, const float *w, float *y, int64_t *index,
                                    int64_t CO, int64_t CI, int64_t b, int rows) {
    for (int64_t o = 0; o < CO; o++) {
        const float *wo = w + o * CI;
        vf mx[ROWS];
        vi at[ROWS];
        for (int k = 0; k < rows; k++) { mx[k] = splat(-1.0f); at[k] = (vi){0}; }
        for (int64_t i = 0; i < CI; i += CHUNK * LANES) {
            vf wv[CHUNK];
            for (int c = 0; c < CHUNK; c++) wv[c] = load(wo + i + c * LANES);
            for (int k = 0; k < rows; k++) {
                const float *xr = x + (b + k) * CI + i;
                vf cm = vabs(load(xr) - wv[0]);
                for (int c = 1; c < CHUNK; c++) cm = vmax(cm, vabs(load(xr + c * LANES) - wv[c]));
                if (index) {
                    vi up = cm > mx[k];
                    at[k] = (((vi){0} + (int32_t)i) & up) | (at[k] & ~up);
                }
                mx[k] = vmax(cm, mx[k]);
            }
        }
        for (int k = 0; k < rows; k++) {
            const float *xr = x + (b + k) * CI;
            vf m = all_max(mx[k]);
            y[(b + k) * CO + o] = m[0];
            if (!index) continue;
            /* the earliest chunk where a lane reached m, then the first position in it with |d| = m */
            vi holds = mx[k] == m, big = (vi){0} + INT32_MAX;
            vi chunk = (at[k] & holds) | (big & ~holds);
            vi c0 = all_min(chunk);
            vi lanes = chunk == c0, lane = lane_ids();
            int64_t start = c0[0] == INT32_MAX ? 0 : c0[0]; /* INT32_MAX: NaN, no lane holds m */
            vi pos = big;
            for (int c = 0; c < CHUNK; c++) {
                const float *xc = xr + start + c * LANES, *wc = wo + start + c * LANES;
                vi hit = (vabs(load(xc) - load(wc)) == m) & lanes;
                vi here = lane + c * LANES;
                pos = vimin(pos, (here & hit) | (big & ~hit));
            }
            int64_t first = all_min(pos)[0];
            first = first == INT32_MAX ? 0 : start + first;
            index[(b + k) * CO + o] = xr[first] - wo[first] < 0 ? -first - 1 : first;
        }
    }
}

static void forward_inf_range(const float *x, const float *w, float *y, int64_t *index, int64_t CO,
                    int64_t CI, int64_t b0, int64_t b1) {
    int64_t b = b0;
    for (; b + ROWS <= b1; b += ROWS) forward_inf_rows(x, w, y, index, CO, CI, b, ROWS);
    for (; b < b1; b++) forward_inf_rows(x, w, y, index, CO, CI, b, 1);
}

/* ---------------------------------------------------------------- finite p, backward
 * t = g[b, o]·sign(q)·|q|^(p−1), q = d·r[b, o] (r = 1/max(y, 1e-10)), evaluated once per element
 * and added to both gradients: grad_w[o] −= t (rows o0..o1, owned by this call) and gx[b] += t
 * (this call's own partial sum over its outputs, which the caller adds up). */
static inline __attribute__((always_inline)) void backward_rows(
        const float *x, const float *w, const float *r, const float *g, float *gx, float *gw,
        int64_t B, int64_t CO, int64_t CI, int64_t o, int rows, float pm1, float min_exp,
        const pow_regs *table, int K) {
    const scaled_log2 lp = scaled_log2_of(pm1);
    const int sparse = pm1 + 1.0f >= SPARSE_P;
    const vf q_min = splat(negligible_below(pm1, CI)), q_max = splat(1.9999999f);
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * CI;
        float *gxb = gx + b * CI;
        vf rk[ROWS], gk[ROWS];
        for (int k = 0; k < rows; k++) {
            rk[k] = splat(r[b * CO + o + k]);
            gk[k] = splat(g[b * CO + o + k]);
        }
        for (int64_t i = 0; i < CI; i += LANES) {
            vf xv = load(xb + i), sum = splat(0.0f);
            for (int k = 0; k < rows; k++) {
                vf d = xv - load(w + (o + k) * CI + i);
                vf q = vabs(d * rk[k]);
                if (sparse && !any(q >= q_min)) continue;
                /* q <= 1 when y is this forward's; the table covers q < 2 */
                vf t = vpow(K ? vselect(q < q_max, q, q_max) : q, table, &lp, K, min_exp) * gk[k];
                vi sign = (vi)d & (int32_t)0x80000000;
                t = (vf)(((vi)t ^ sign) & (d != 0.0f)); /* sign(0) = 0 */
                sum += t;
                float *gwo = gw + (o + k) * CI + i;
                store(gwo, load(gwo) - t);
            }
            store(gxb + i, load(gxb + i) + sum);
        }
    }
}

static void backward_range(const float *x, const float *w, const float *r, const float *g, float *gx,
                 float *gw, int64_t B, int64_t CO, int64_t CI, int64_t o0, int64_t o1, float pm1,
                 float min_exp) {
    pow_plan plan;
    plan_power(&plan, pm1 + 1.0f < SPARSE_P ? pm1 : 0.0f, CI);
    const pow_regs table = pow_regs_of(&plan);
#define BACKWARD(K) do { \
        int64_t o = o0; \
        for (; o + ROWS <= o1; o += ROWS) \
            backward_rows(x, w, r, g, gx, gw, B, CO, CI, o, ROWS, pm1, min_exp, &table, K); \
        for (; o < o1; o++) backward_rows(x, w, r, g, gx, gw, B, CO, CI, o, 1, pm1, min_exp, &table, K); \
    } while (0)
    WITH_DEGREE(plan.degree, BACKWARD);
#undef BACKWARD
}

/* ---------------------------------------------------------------- p = ∞, forward across outputs
 * The same with the lanes across LANES outputs o.. of one input row, read from wt = wᵀ (CI × COP,
 * COP a multiple of lp_lanes()): each lane's running maximum and first index (strict >) are the
 * outputs themselves, with no work across lanes per output. Faster than the above for short rows
 * with the index (there the per-output search dominates), slower for long ones. */
static inline void forward_inf_cols(const float *x, const float *wt, const float *w, float *y,
                                    int64_t *index, int64_t CO, int64_t COP, int64_t CI, int64_t b,
                                    int rows, int64_t o) {
    vf mx[ROWS];
    vi at[ROWS];
    for (int k = 0; k < rows; k++) { mx[k] = splat(-1.0f); at[k] = (vi){0}; }
    for (int64_t i = 0; i < CI; i++) {
        vf wv = load(wt + i * COP + o);
        vi here = (vi){0} + (int32_t)i;
        for (int k = 0; k < rows; k++) {
            vf a = vabs(splat(x[(b + k) * CI + i]) - wv);
            if (index) {
                vi up = a > mx[k];
                at[k] = (here & up) | (at[k] & ~up);
            }
            mx[k] = vmax(mx[k], a);
        }
    }
    for (int k = 0; k < rows; k++)
        for (int l = 0; l < LANES && o + l < CO; l++) {
            y[(b + k) * CO + o + l] = mx[k][l];
            if (!index) continue;
            int64_t first = at[k][l];
            float d = x[(b + k) * CI + first] - w[(o + l) * CI + first];
            index[(b + k) * CO + o + l] = d < 0 ? -first - 1 : first;
        }
}

static void forward_inf_t_range(const float *x, const float *wt, const float *w, float *y, int64_t *index,
                    int64_t CO, int64_t COP, int64_t CI, int64_t b0, int64_t b1) {
    for (int64_t o = 0; o < CO; o += LANES) {
        int64_t b = b0;
        for (; b + ROWS <= b1; b += ROWS) forward_inf_cols(x, wt, w, y, index, CO, COP, CI, b, ROWS, o);
        for (; b < b1; b++) forward_inf_cols(x, wt, w, y, index, CO, COP, CI, b, 1, o);
    }
}

/* ---------------------------------------------------------------- p = ∞, backward
 * Each output's gradient goes to its first maximal coordinate, with the sign folded into the
 * index (i, or −(i + 1) where d_i < 0): grad_x[b, i] += ±g[b, o] for rows b0..b1, and, in a second
 * call split by outputs so that threads own their rows, grad_w[o, i] −= ±g[b, o] for o0..o1. */
static void backward_inf_x_range(const int64_t *index, const float *g, float *gx, int64_t CO, int64_t CI,
                       int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++)
        for (int64_t o = 0; o < CO; o++) {
            int64_t c = index[b * CO + o];
            float v = g[b * CO + o];
            if (c < 0) { c = -c - 1; v = -v; }
            gx[b * CI + c] += v;
        }
}

static void backward_inf_w_range(const int64_t *index, const float *g, float *gw, int64_t B, int64_t CO,
                       int64_t CI, int64_t o0, int64_t o1) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = o0; o < o1; o++) {
            int64_t c = index[b * CO + o];
            float v = g[b * CO + o];
            if (c < 0) { c = -c - 1; v = -v; }
            gw[o * CI + c] -= v;
        }
}

/* ---------------------------------------------------------------- entry points
 * Each runs ranges first..first+count−1 of the arrays lo/hi (rows b or outputs o, or floats for
 * lp_all_finite). Built with OpenMP against the runtime torch itself loaded (see native.py), one
 * call runs them all on torch's own threads: those threads would otherwise spin for a few ms
 * after every torch operation, on the cores the kernels need. Without OpenMP, or with another
 * runtime, Python calls each range (count = 1) from its own threads. The backward's range k
 * writes its grad_x partial sum at gx + k·gx_stride. */
#ifdef _OPENMP
#include <omp.h>
/* at most torch's thread count (omp_get_max_threads, which torch.set_num_threads sets) */
static int team(int64_t count) {
    int t = omp_get_max_threads();
    return count < 1 ? 1 : count < t ? (int)count : t;
}
#define EACH_RANGE _Pragma("omp parallel for schedule(static, 1) num_threads(team(count))") \
    for (int64_t k = first; k < first + count; k++)
/* The address of omp_get_max_threads as this library resolved it: equal to the one in torch's
 * libgomp when both share one runtime. */
void *lp_openmp_symbol(void) { return (void *)&omp_get_max_threads; }
#else
#define EACH_RANGE for (int64_t k = first; k < first + count; k++)
void *lp_openmp_symbol(void) { return 0; }
#endif

void lp_forward(const float *x, const float *w, float *y, int64_t CO, int64_t CI, float p,
                const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    EACH_RANGE forward_range(x, w, y, CO, CI, lo[k], hi[k], p);
}

void lp_forward_inf(const float *x, const float *w, float *y, int64_t *index, int64_t CO,
                    int64_t CI, const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    EACH_RANGE forward_inf_range(x, w, y, index, CO, CI, lo[k], hi[k]);
}

void lp_forward_inf_t(const float *x, const float *wt, const float *w, float *y, int64_t *index,
                      int64_t CO, int64_t COP, int64_t CI, const int64_t *lo, const int64_t *hi,
                      int64_t first, int64_t count) {
    EACH_RANGE forward_inf_t_range(x, wt, w, y, index, CO, COP, CI, lo[k], hi[k]);
}

void lp_backward(const float *x, const float *w, const float *r, const float *g, float *gx,
                 int64_t gx_stride, float *gw, int64_t B, int64_t CO, int64_t CI, float pm1,
                 float min_exp, const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    EACH_RANGE backward_range(x, w, r, g, gx + k * gx_stride, gw, B, CO, CI, lo[k], hi[k], pm1, min_exp);
}

void lp_backward_inf_x(const int64_t *index, const float *g, float *gx, int64_t CO, int64_t CI,
                       const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    EACH_RANGE backward_inf_x_range(index, g, gx, CO, CI, lo[k], hi[k]);
}

void lp_backward_inf_w(const int64_t *index, const float *g, float *gw, int64_t B, int64_t CO,
                       int64_t CI, const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    EACH_RANGE backward_inf_w_range(index, g, gw, B, CO, CI, lo[k], hi[k]);
}

int lp_all_finite(const float *p, const int64_t *lo, const int64_t *hi, int64_t first, int64_t count) {
    int ok = 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(team(count)) reduction(&: ok)
#endif
    for (int64_t k = first; k < first + count; k++) ok &= all_finite_range(p, lo[k], hi[k]);
    return ok;
}
