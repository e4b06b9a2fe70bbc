/* Fused message passing of a MACE interaction block for all members of a stacked ensemble (see __init__.py).

   These functions trust their arguments: checked.py validates shapes, dtypes, contiguity and every index
   (senders, receivers, paths, species, monomials) before each call, and build.py declares the ctypes types.

   Rows are (member, edge) pairs with sender and receiver rows already offset by member. For every row e,
   column c and channel u the message is w[e, path(c), u] * sum_a p[e, a, c] x[sender, a, u]; it is added to
   the receiver's row. One pass over the rows with the row's data in cache replaces the tensors of shape
   [rows, columns, channels] that the same computation needs in torch. Channels are the innermost axis so
   that the loops over them vectorise. Compiled once per dtype with -DREAL=double -DSUFFIX=f64 or
   -DREAL=float -DSUFFIX=f32.

   Shapes (row-major, contiguous): x [nodes, A, U], p [E, A, C], w [E, NP, U], out and grad [nodes, C, U];
   path [C]: the tensor-product path of every column. */

#include <stdint.h>

#ifndef REAL
#define REAL double
#endif
#ifndef SUFFIX
#define SUFFIX f64
#endif
#define PASTE(a, b) a##b
#define NAME(a, b) PASTE(a, b)
#define FN(name) NAME(name, SUFFIX)

/* tmp[u] = sum_a p[a, c] x[a, u] for one row and column c */
static inline void column_product(int64_t A, int64_t C, int64_t U, int64_t c, const REAL *restrict p,
                                  const REAL *restrict x, REAL *restrict tmp) {
    for (int64_t u = 0; u < U; ++u) tmp[u] = 0;
    for (int64_t a = 0; a < A; ++a) {
        const REAL pa = p[a * C + c];
        const REAL *restrict xa = x + a * U;
        for (int64_t u = 0; u < U; ++u) tmp[u] += pa * xa[u];
    }
}

void FN(messages_forward_)(int64_t E, int64_t U, int64_t A, int64_t C, int64_t NP, const int64_t *path,
                           const REAL *x, const REAL *p, const REAL *w, const int64_t *sender,
                           const int64_t *receiver, REAL *out) {
    REAL tmp[U];
    for (int64_t e = 0; e < E; ++e) {
        const REAL *pe = p + e * A * C, *we = w + e * NP * U, *xs = x + sender[e] * A * U;
        REAL *orow = out + receiver[e] * C * U;
        for (int64_t c = 0; c < C; ++c) {
            column_product(A, C, U, c, pe, xs, tmp);
            const REAL *restrict weight = we + path[c] * U;
            REAL *restrict o = orow + c * U;
            for (int64_t u = 0; u < U; ++u) o[u] += weight[u] * tmp[u];
        }
    }
}

/* Gradients of sum(grad * out) with respect to x, p and w; each may be NULL (not needed). gx is accumulated
   (zeroed by the caller); the rows of gp and gw are written here. */
void FN(messages_backward_)(int64_t E, int64_t U, int64_t A, int64_t C, int64_t NP, const int64_t *path,
                            const REAL *x, const REAL *p, const REAL *w, const int64_t *sender,
                            const int64_t *receiver, const REAL *grad, REAL *gx, REAL *gp, REAL *gw) {
    REAL tmp[U], gm[U];
    for (int64_t e = 0; e < E; ++e) {
        const REAL *pe = p + e * A * C, *we = w + e * NP * U, *xs = x + sender[e] * A * U;
        const REAL *grow = grad + receiver[e] * C * U;
        REAL *gpe = gp ? gp + e * A * C : 0, *gwe = gw ? gw + e * NP * U : 0, *gxs = gx ? gx + sender[e] * A * U : 0;
        if (gwe)
            for (int64_t k = 0; k < NP * U; ++k) gwe[k] = 0;
        for (int64_t c = 0; c < C; ++c) {
            const REAL *restrict g = grow + c * U, *restrict weight = we + path[c] * U;
            for (int64_t u = 0; u < U; ++u) gm[u] = weight[u] * g[u];
            if (gwe) {
                column_product(A, C, U, c, pe, xs, tmp);
                REAL *restrict gwc = gwe + path[c] * U;
                for (int64_t u = 0; u < U; ++u) gwc[u] += g[u] * tmp[u];
            }
            for (int64_t a = 0; a < A; ++a) {
                const REAL *restrict xa = xs + a * U;
                if (gxs) {
                    const REAL pa = pe[a * C + c];
                    REAL *restrict gxa = gxs + a * U;
                    for (int64_t u = 0; u < U; ++u) gxa[u] += pa * gm[u];
                }
                if (gpe) {
                    REAL sum = 0;
#pragma omp simd reduction(+ : sum)
                    for (int64_t u = 0; u < U; ++u) sum += xa[u] * gm[u];
                    gpe[a * C + c] = sum;
                }
            }
        }
    }
}

/* Frozen symmetric contraction (../frozen.py): for every atom j of element e and channel c,
   out[j, o, c] = sum_F coef[e, o, F, c] prod_t x[j, monomial[t, F], c], where x [atoms, L, channels] carries
   a last row of ones (index L - 1 stands for the factor 1). Channels (members x channels of a stacked
   ensemble) are the innermost axis, so every loop vectorises whatever the number of atoms; atoms are visited
   element by element (order: atom indices sorted by element) so that an element's coefficients stay in cache. */

void FN(contraction_forward_)(int64_t C, int64_t L, int64_t atoms, int64_t K, int64_t F, int64_t O,
                              const int64_t *monomial, const int64_t *order, const int64_t *elements,
                              const REAL *x, const REAL *coef, REAL *out) {
    REAL m[C];
    for (int64_t i = 0; i < atoms; ++i) {
        const int64_t j = order[i];
        const REAL *xj = x + j * L * C, *ce = coef + elements[j] * O * F * C;
        REAL *oj = out + j * O * C;
        for (int64_t k = 0; k < O * C; ++k) oj[k] = 0;
        for (int64_t f = 0; f < F; ++f) {
            const REAL *restrict x0 = xj + monomial[f] * C;
            for (int64_t c = 0; c < C; ++c) m[c] = x0[c];
            for (int64_t t = 1; t < K; ++t) {
                const REAL *restrict xt = xj + monomial[t * F + f] * C;
                for (int64_t c = 0; c < C; ++c) m[c] *= xt[c];
            }
            for (int64_t o = 0; o < O; ++o) {
                const REAL *restrict cf = ce + (o * F + f) * C;
                REAL *restrict target = oj + o * C;
                for (int64_t c = 0; c < C; ++c) target[c] += cf[c] * m[c];
            }
        }
    }
}

/* gx [atoms, L, channels] = d sum(grad * out) / dx; every entry is written (the ones row gets its value too). */
void FN(contraction_backward_)(int64_t C, int64_t L, int64_t atoms, int64_t K, int64_t F, int64_t O,
                               const int64_t *monomial, const int64_t *order, const int64_t *elements,
                               const REAL *x, const REAL *coef, const REAL *grad, REAL *gx) {
    REAL gm[C], pr[C];
    for (int64_t i = 0; i < atoms; ++i) {
        const int64_t j = order[i];
        const REAL *xj = x + j * L * C, *gj = grad + j * O * C, *ce = coef + elements[j] * O * F * C;
        REAL *gxj = gx + j * L * C;
        for (int64_t k = 0; k < L * C; ++k) gxj[k] = 0;
        for (int64_t f = 0; f < F; ++f) {
            for (int64_t c = 0; c < C; ++c) gm[c] = 0;
            for (int64_t o = 0; o < O; ++o) {
                const REAL *restrict cf = ce + (o * F + f) * C, *restrict go = gj + o * C;
                for (int64_t c = 0; c < C; ++c) gm[c] += cf[c] * go[c];
            }
            for (int64_t t = 0; t < K; ++t) {
                for (int64_t c = 0; c < C; ++c) pr[c] = gm[c];
                for (int64_t s = 0; s < K; ++s) {
                    if (s == t) continue;
                    const REAL *restrict xs = xj + monomial[s * F + f] * C;
                    for (int64_t c = 0; c < C; ++c) pr[c] *= xs[c];
                }
                REAL *restrict target = gxj + monomial[t * F + f] * C;
                for (int64_t c = 0; c < C; ++c) target[c] += pr[c];
            }
        }
    }
}
