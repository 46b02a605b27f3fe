// The attention-family op group on the GPU (kernels/ops_family.h), the same
// function as the CPU reference kernels/cpu/family_cpu.c, formula for formula:
// solved probe by CG (parallax_lla.md §2.3; Sigma built once per row for head dims
// up to 32, matrix-free above), adjoint solve in the backward (§2.4, docs/family.md
// "Backward"), no-intercept members (§3.3),
// learned bandwidth, linear attention by its recurrence (baselines.md §3) and
// the element-wise feature maps. fp32 in every precision table.
//
// Layout (correctness first; every output has exactly one writer, summed in a
// fixed order: no atomics, so results are bit-reproducible):
//   forward      a GROUP of lanes per query row (b,h,i): L = min(32, CAP) lanes,
//                lane l holds the head-dim elements c = l + L*d (d < CAP/L) of
//                every hd-vector (q, x, r, p, Sigma p, ...); dots are a partial
//                sum per lane and an xor butterfly over the group, so every lane
//                holds the same value and the row's control flow (CG stop) is
//                uniform. Keys stream from global memory (L1/L2) once per pass;
//                the weights p_j are recomputed from q.k_j in every pass instead
//                of being stored (T per row would not fit).
//   backward     pass 1, a group per query row: weights from the saved lse, the
//                explicit rhobar, the adjoint CG u = Sigma^-1 rhobar, then dq (+=)
//                and dr (+=, GIVEN); saves u and the row scalars in scratch.
//                pass 2, a group per KEY row (b,h,j): loops over the rows i that
//                see key j (causal, window) in increasing i, recomputes p_ij and
//                the pair's terms from the saved scalars, and adds dk_j, dv_j.
//                dlog_bw: per-row partials in scratch, summed per head by one
//                block in a fixed order.
//   tiled        head dims up to 8 (CAP 4, 8), while a block's tile fits 48 KiB: the
//                same three row bodies with a row (key) per thread (whole vectors and
//                Sigma in registers, no butterflies), the block's keys (pass 2: rows)
//                staged once in shared memory and read by every row of the block
//                ("a row (or key) per thread" below). The forward sums mu and Sigma in
//                one pass and the LLA / no-intercept output and its normaliser in
//                another; the backward's rhobar pass also sums Sigma.
//   recurrent    a block per (b,h), one thread per state row/column, sequential
//                over t (forward: S_t, z_t; backward: reverse sweep downdating S).
//   linear attn  (bandwidth inf, no intercept, given probe, not normalised, hd <= 32)
//                the quadratic form by its own kernel: a block per (job, b, h), a
//                thread per row, partner rows tiled through shared memory (below).
//   feature map  element-wise.
// CAP is the head dim rounded up to 4, 8, ..., 128; the padded elements are
// zero in every vector and contribute nothing. Larger head dims are refused.
#include <cmath>

#include "../ops_family.h"
#include "cuda_common.cuh"

#define FAM_HDI __host__ __device__ __forceinline__
#define FAM_HD __host__ __device__

// the row t of head h of a [B, T, H, hd] tensor with row stride ld
#define FROW(ptr, ld, b, t, T, h, hd) ((ptr) + ((size_t)(b) * (T) + (t)) * (ld) + (size_t)(h) * (hd))

static const int FAM_THREADS = 128; // threads per block of the row / key kernels
static const int FAM_MAX_HD = 128;

// ---- a group of lanes holding hd-vectors ------------------------------------------

// CAP: head-dim capacity; LANES lanes per group, D = CAP/LANES elements per lane.
// The row, key and recurrence bodies are __host__ __device__ templates on the
// group type, so a host harness can run this very code without a GPU (one lane
// holding the whole vector, or host threads standing in for the lanes) as a
// check of its algebra against the CPU reference.
template <int CAP, int LANES> struct Grp {
    static constexpr int L = LANES, D = CAP / LANES;
    static constexpr int SD = LANES == 1 ? D : 1; // Sigma held whole (Sym<SD>) by a row per thread
    int l, hd;     // lane in the group, head dim
    unsigned mask; // the group's lanes in the warp
    FAM_HDI int col(int d) const { return l + L * d; }
    FAM_HDI bool ok(int d) const { return l + L * d < hd; }
    // every lane gets the group's sum of each v[k] (xor butterfly: the same
    // value, bit for bit, in all lanes since a + b == b + a)
    template <int N> FAM_HDI void sum(float (&v)[N]) const {
#ifdef __CUDA_ARCH__
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1)
#pragma unroll
            for (int k = 0; k < N; k++) v[k] += __shfl_xor_sync(mask, v[k], o, L);
#endif
    }
    // lane src's v, in every lane of the group
    FAM_HDI float bcast(float v, int src) const {
#ifdef __CUDA_ARCH__
        return __shfl_sync(mask, v, src, L);
#else
        return v;
#endif
    }
};

template <int D> struct Vec {
    float x[D];
};

// elements c < hd of a row; zero elsewhere
template <class G> FAM_HDI Vec<G::D> vload(const G &g, const float *row) {
    Vec<G::D> v;
#pragma unroll
    for (int d = 0; d < G::D; d++) v.x[d] = g.ok(d) ? row[g.col(d)] : 0.f;
    return v;
}
// a whole row of a shared tile (16-byte aligned, zero past hd): float4 loads
template <class G> FAM_HDI Vec<G::D> tload(const G &, const float *row) {
    static_assert(G::L == 1 && G::D % 4 == 0, "tiles: a row per thread");
    Vec<G::D> v;
#pragma unroll
    for (int d = 0; d < G::D; d += 4) {
        const float4 f = *reinterpret_cast<const float4 *>(row + d);
        v.x[d] = f.x, v.x[d + 1] = f.y, v.x[d + 2] = f.z, v.x[d + 3] = f.w;
    }
    return v;
}
template <class G> FAM_HDI void vstore(const G &g, float *row, const Vec<G::D> &v) {
#pragma unroll
    for (int d = 0; d < G::D; d++)
        if (g.ok(d)) row[g.col(d)] = v.x[d];
}
template <class G> FAM_HDI Vec<G::D> vzero(const G &) {
    Vec<G::D> v;
#pragma unroll
    for (int d = 0; d < G::D; d++) v.x[d] = 0.f;
    return v;
}
template <int D> FAM_HDI float part(const Vec<D> &a, const Vec<D> &b) {
    float s = 0;
#pragma unroll
    for (int d = 0; d < D; d++) s += a.x[d] * b.x[d];
    return s;
}
template <class G> FAM_HDI float vdot(const G &g, const Vec<G::D> &a, const Vec<G::D> &b) {
    float s[1] = {part(a, b)};
    g.sum(s);
    return s[0];
}

// ---- one query row -----------------------------------------------------------------

struct RowCtx {
    int b, h, i, lo, n; // keys lo..i, n of them
    size_t si;          // the row's index in [B, H, T] scalars
    float sc;           // the head's scale
    float sub, rdiv;    // p_j = exp(s_j - sub) * rdiv (forward: max, 1/sum; backward: lse, 1)
    float lam;          // ridge of the row's solve
    // where the keys are read: k_j at kb + (j - k0) * kld (global rows, or a block's
    // tile in shared memory), v_j likewise at vb
    const float *kb, *vb;
    int k0, kld;
    bool tile;  // keys in a shared tile (whole zero-padded rows)
    int jb, je; // the keys are visited over jb..je (>= lo..i; a warp-uniform span in the
                // tiled kernels, so that every lane reads the same shared row), skipping
                // those outside lo..i
};

// every key j of row r in increasing order (FAM_KEYS(r, j) { body })
#define FAM_KEYS(r, j)                                                                         \
    for (int j = (r).jb; j <= (r).je; j++)                                                     \
        if ((r).lo <= j && j <= (r).i)

FAM_HDI float head_scale(const FamArgs &a, int h) {
    return a.log_bw ? a.scale * (float)exp(-(double)a.log_bw[h]) : a.scale;
}

FAM_HDI RowCtx row_ctx(const FamArgs &a, int b, int h, int i, float sc) {
    RowCtx r;
    r.b = b, r.h = h, r.i = i;
    r.lo = a.window > 0 && i - a.window + 1 > 0 ? i - a.window + 1 : 0;
    r.n = i - r.lo + 1;
    r.si = ((size_t)b * a.H + h) * a.T + i;
    r.sc = sc;
    r.sub = 0, r.rdiv = 1, r.lam = a.ridge;
    r.kb = FROW(a.k, a.ld_in, b, 0, a.T, h, a.hd), r.vb = FROW(a.v, a.ld_in, b, 0, a.T, h, a.hd);
    r.k0 = 0, r.kld = a.ld_in, r.tile = false;
    r.jb = r.lo, r.je = i;
    return r;
}

// the ridge in normalised-weight units; the test hook ridge_lse freezes omega (ops_family.h)
FAM_HDI float row_ridge(const FamArgs &a, size_t si, float lse) {
    if (!a.affine || !a.ridge_lse) return a.ridge;
    return a.ridge * (float)exp((double)(a.ridge_lse[si] - lse));
}

// weight of a key from its logit s: p_j (with intercept) or a_j = n p_j (without)
FAM_HDI float weight(const FamArgs &a, const RowCtx &r, float s) {
    float p = expf(s - r.sub) * r.rdiv; // the CPU divides by the sum: 1 ulp apart
    return a.affine ? p : p * (float)r.n;
}

FAM_HDI const float *krow(const FamArgs &, const RowCtx &r, int j) {
    return r.kb + (size_t)(j - r.k0) * r.kld;
}
FAM_HDI const float *vrow(const FamArgs &, const RowCtx &r, int j) {
    return r.vb + (size_t)(j - r.k0) * r.kld;
}

// key j's row (k or v) from where the row reads keys
template <class G> FAM_HDI Vec<G::D> kload(const G &g, const RowCtx &r, const float *row) {
    if constexpr (G::L == 1)
        if (r.tile) return tload(g, row);
    return vload(g, row);
}

// a block's keys k0.. (and values) in shared memory, rows of kld floats (zero past
// hd); the lanes of a warp visit the keys wlo..whi (the union of their rows' keys)
struct KeyTile {
    const float *k, *v;
    int k0, kld, wlo, whi;
};
FAM_HDI void use_tile(RowCtx &r, const KeyTile *kt) {
    if (!kt) return;
    r.kb = kt->k, r.vb = kt->v, r.k0 = kt->k0, r.kld = kt->kld, r.jb = kt->wlo, r.je = kt->whi;
    r.tile = true;
}

// z_j = k_j - q (centred on the query, intercept form) or k_j
template <class G> FAM_HDI Vec<G::D> centre(const FamArgs &a, const G &, const Vec<G::D> &k,
                                        const Vec<G::D> &q) {
    Vec<G::D> z;
#pragma unroll
    for (int d = 0; d < G::D; d++) z.x[d] = a.affine ? k.x[d] - q.x[d] : k.x[d];
    return z;
}

// out = Sigma x = sum_j w_j (x.z_j) z_j + lam x, streaming the keys (§2.3, matrix-free)
template <class G>
FAM_HD void sys_apply(const FamArgs &a, const G &g, const RowCtx &r, const Vec<G::D> &q,
                  const Vec<G::D> &x, Vec<G::D> &out) {
#pragma unroll
    for (int d = 0; d < G::D; d++) out.x[d] = r.lam * x.x[d];
    FAM_KEYS(r, j) {
        Vec<G::D> k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
        float s[2] = {r.sc != 0 ? part(q, k) : 0.f, part(x, z)};
        g.sum(s);
        float xz = weight(a, r, r.sc * s[0]) * s[1];
#pragma unroll
        for (int d = 0; d < G::D; d++) out.x[d] += xz * z.x[d];
    }
}

// Sigma = sum_j w_j z_j z_j^T + lam I built once, for a group with one element per
// lane (head dim <= 32): lane l holds row l (S[e] = Sigma[l][e]) and, for the
// preconditioner, diag = Sigma[l][l] (padding: 1). One pass over the keys instead of
// one per CG iteration (the matrix-free sys_apply); the same matrix, summed in key
// order, so the iterates agree with the CPU's to rounding.
template <class G>
FAM_HD void sys_build(const FamArgs &a, const G &g, const RowCtx &r, const Vec<G::D> &q,
                      float (&S)[G::L], float &diag) {
    static_assert(G::D == 1, "explicit Sigma: one element per lane");
#pragma unroll
    for (int e = 0; e < G::L; e++) S[e] = e == g.l ? r.lam : 0.f;
    diag = g.ok(0) ? r.lam : 1.f;
    FAM_KEYS(r, j) {
        Vec<1> k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
        float s[1] = {r.sc != 0 ? part(q, k) : 0.f};
        g.sum(s);
        const float wz = weight(a, r, r.sc * s[0]) * z.x[0];
#pragma unroll
        for (int e = 0; e < G::L; e++) S[e] += wz * g.bcast(z.x[0], e);
        diag += wz * z.x[0];
    }
}

// out = Sigma x with Sigma from sys_build
template <class G>
FAM_HDI void sys_apply_built(const G &g, const float (&S)[G::L], const Vec<1> &x, Vec<1> &out) {
    float acc = 0.f;
#pragma unroll
    for (int e = 0; e < G::L; e++) acc += S[e] * g.bcast(x.x[0], e);
    out.x[0] = acc;
}

// Sigma held whole by one thread (a row per thread, head dims up to 8): its upper
// triangle, row-major. Built by the caller in a pass it makes anyway (sym_add per
// key), so the solve itself reads no keys.
template <int D> struct Sym {
    float s[D * (D + 1) / 2];
    static constexpr FAM_HDI int at(int d, int e) {
        return d <= e ? d * D - d * (d - 1) / 2 + e - d : e * D - e * (e - 1) / 2 + d - e;
    }
};
template <int D> FAM_HDI void sym_init(Sym<D> &S, float lam) {
#pragma unroll
    for (int d = 0; d < D; d++)
#pragma unroll
        for (int e = d; e < D; e++) S.s[Sym<D>::at(d, e)] = d == e ? lam : 0.f;
}
// S += w z z^T (the element (d, e) as sys_build's lane d: (w z_d) z_e)
template <int D> FAM_HDI void sym_add(Sym<D> &S, float w, const Vec<D> &z) {
#pragma unroll
    for (int d = 0; d < D; d++) {
        const float wz = w * z.x[d];
#pragma unroll
        for (int e = d; e < D; e++) S.s[Sym<D>::at(d, e)] += wz * z.x[e];
    }
}
template <int D> FAM_HDI void sym_apply(const Sym<D> &S, const Vec<D> &x, Vec<D> &out) {
#pragma unroll
    for (int d = 0; d < D; d++) {
        float acc = 0.f;
#pragma unroll
        for (int e = 0; e < D; e++) acc += S.s[Sym<D>::at(d, e)] * x.x[e];
        out.x[d] = acc;
    }
}

// Solves Sigma x = rhs by CG from x0 = 0 (§2.3), as cg_solve of the CPU code:
// at most cg_iters steps; stop once |r|^2 <= tol*max(tol, |r0|^2), on
// non-positive curvature or a non-finite residual; optional Jacobi
// preconditioner diag(Sigma). Returns the relative residual |r|/|rhs|.
// A row per thread (G::L == 1) takes Sigma whole from the caller (Sw); head dims
// up to 32 in lane groups build it explicitly first (sys_build); wider heads
// apply it matrix-free, streaming the keys once per iteration.
template <class G>
FAM_HD float cg_solve(const FamArgs &a, const G &g, const RowCtx &r, const Vec<G::D> &q,
                  const Vec<G::D> &rhs, Vec<G::D> &x, const Sym<G::SD> *Sw = nullptr) {
    constexpr bool whole = G::L == 1, built = !whole && G::D == 1;
    float S[built ? G::L : 1];
    Vec<G::D> res = rhs, p, Ap, zc, diag;
#pragma unroll
    for (int d = 0; d < G::D; d++) x.x[d] = 0.f, diag.x[d] = 1.f;
    if constexpr (whole) {
        if (a.cg_precond)
#pragma unroll
            for (int d = 0; d < G::D; d++) diag.x[d] = g.ok(d) ? Sw->s[Sym<G::SD>::at(d, d)] : 1.f;
    } else if constexpr (built) {
        float dg;
        sys_build(a, g, r, q, S, dg);
        if (a.cg_precond) diag.x[0] = dg;
    } else if (a.cg_precond) {
#pragma unroll
        for (int d = 0; d < G::D; d++) diag.x[d] = g.ok(d) ? r.lam : 1.f; // padding stays 1
        FAM_KEYS(r, j) {
            Vec<G::D> k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
            float s[1] = {r.sc != 0 ? part(q, k) : 0.f};
            g.sum(s);
            float w = weight(a, r, r.sc * s[0]);
#pragma unroll
            for (int d = 0; d < G::D; d++) diag.x[d] += w * z.x[d] * z.x[d];
        }
    }
    float rr0 = vdot(g, res, res), rr = rr0;
    if (!(rr0 > 0) || !isfinite(rr0)) return 0.f;
    // z = r / diag as r * (1 / diag): no division per iteration (exact without the
    // preconditioner, diag = 1; 1 ulp from the CPU's quotient with it)
#pragma unroll
    for (int d = 0; d < G::D; d++) diag.x[d] = 1.f / diag.x[d];
#pragma unroll
    for (int d = 0; d < G::D; d++) zc.x[d] = res.x[d] * diag.x[d], p.x[d] = zc.x[d];
    float rz = vdot(g, res, zc);
    float stop = a.cg_tol * (rr0 > a.cg_tol ? rr0 : a.cg_tol);
    for (int it = 0; it < a.cg_iters; it++) {
        if constexpr (whole) sym_apply(*Sw, p, Ap);
        else if constexpr (built) sys_apply_built(g, S, p, Ap);
        else sys_apply(a, g, r, q, p, Ap);
        float pAp = vdot(g, p, Ap);
        if (!(pAp > 0)) break;
        float alpha = rz / pAp;
#pragma unroll
        for (int d = 0; d < G::D; d++) x.x[d] += alpha * p.x[d], res.x[d] -= alpha * Ap.x[d];
        rr = vdot(g, res, res);
        if (rr <= stop || !isfinite(rr)) break;
#pragma unroll
        for (int d = 0; d < G::D; d++) zc.x[d] = res.x[d] * diag.x[d];
        float rz_new = vdot(g, res, zc), beta = rz_new / rz;
#pragma unroll
        for (int d = 0; d < G::D; d++) p.x[d] = zc.x[d] + beta * p.x[d];
        rz = rz_new;
    }
    return (float)sqrt((double)(rr / rr0));
}

// the probe of row i: solved (saved rho), given r_i, or zero
template <class G>
FAM_HDI Vec<G::D> probe_row(const FamArgs &a, const G &g, int b, int h, int i) {
    if (a.probe == FAM_PROBE_SOLVED) return vload(g, FROW(a.rho, a.ld_out, b, i, a.T, h, a.hd));
    if (a.probe == FAM_PROBE_GIVEN) return vload(g, FROW(a.r, a.ld_in, b, i, a.T, h, a.hd));
    return vzero(g);
}

// which output form (ops_family.h): LLA (intercept, solved, (1+eta) kept),
// Parallax form (intercept otherwise, §3.1/§3.6), no intercept (§3.3 last row)
enum { M_LLA = 0, M_PX = 1, M_NI = 2 };
FAM_HDI int fam_mode(const FamArgs &a) {
    return !a.affine ? M_NI : a.probe == FAM_PROBE_SOLVED && a.boundary ? M_LLA : M_PX;
}

// Forward of one row (CPU fam_forward): weights, probe, per-key coefficient
// t_j, o = sum_j t_j v_j; writes o, rho (if given a buffer), lse, den, cg_resid.
template <class G>
FAM_HD void fwd_row(const FamArgs &a, const G &g, int b, int h, int i, const KeyTile *kt = nullptr) {
    using V = Vec<G::D>;
    const int T = a.T, hd = a.hd;
    RowCtx r = row_ctx(a, b, h, i, head_scale(a, h));
    use_tile(r, kt);
    const V q = vload(g, FROW(a.q, a.ld_in, b, i, T, h, hd));
    // weights (CPU row_weights: the row max m, then om = sum_j exp(s_j - m)) in one
    // online pass, om rescaled when m grows (the same m; om to rounding). At scale 0
    // (infinite bandwidth) every logit is 0: m = 0 and om = n, no pass.
    float m = 0, om = (float)r.n;
    if (r.sc != 0) {
        m = -INFINITY, om = 0;
        FAM_KEYS(r, j) {
            float s[1] = {part(q, kload(g, r, krow(a, r, j)))};
            g.sum(s);
            const float sj = r.sc * s[0];
            if (sj > m) om = om * expf(m - sj) + 1.f, m = sj;
            else om += expf(sj - m);
        }
    }
    r.sub = m, r.rdiv = 1.f / om;
    const float lse = m + (float)log((double)om);
    r.lam = row_ridge(a, r.si, lse);
    V rho = vzero(g);
    float den = 1, resid = 0;
    if (a.probe == FAM_PROBE_SOLVED) {
        if constexpr (G::L == 1) {
            // a row per thread: mu and Sigma in one pass (as the lane groups' two sums)
            Sym<G::D> S;
            sym_init(S, r.lam);
            V mu = vzero(g);
            FAM_KEYS(r, j) {
                V k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
                float p = weight(a, r, r.sc != 0 ? r.sc * part(q, k) : 0.f);
                if (a.affine)
#pragma unroll
                    for (int d = 0; d < G::D; d++) mu.x[d] += p * z.x[d];
                sym_add(S, p, z);
            }
            resid = cg_solve(a, g, r, q, a.affine ? mu : q, rho, &S);
        } else if (a.affine) { // mu = sum_j p_j z_j = kbar - q (§1.3)
            V mu = vzero(g);
            FAM_KEYS(r, j) {
                V k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
                float s[1] = {r.sc != 0 ? part(q, k) : 0.f};
                g.sum(s);
                float p = weight(a, r, r.sc * s[0]);
#pragma unroll
                for (int d = 0; d < G::D; d++) mu.x[d] += p * z.x[d];
            }
            resid = cg_solve(a, g, r, q, mu, rho);
        } else resid = cg_solve(a, g, r, q, q, rho);
    } else if (a.probe == FAM_PROBE_GIVEN)
        rho = vload(g, FROW(a.r, a.ld_in, b, i, T, h, hd));
    // per-key coefficient t_j of v_j. LLA and no intercept: o = sum_j c_j v_j / den
    // with den from the same c_j (sum_j c_j), one pass; the CPU divides each c_j
    // first (rounding apart). The Parallax form's c_j needs tbar first: two passes.
    const int mode = fam_mode(a);
    float tbar = 0;
    if (mode == M_PX) {
        FAM_KEYS(r, j) {
            V k = kload(g, r, krow(a, r, j));
            float s[2] = {r.sc != 0 ? part(q, k) : 0.f, part(rho, k)};
            g.sum(s);
            tbar += weight(a, r, r.sc * s[0]) * s[1];
        }
    }
    V o = vzero(g);
    float norm = 0; // LLA: delta; no intercept: sum_j a_j rho.k_j
    FAM_KEYS(r, j) {
        V k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q);
        V v = kload(g, r, vrow(a, r, j));
        float s[2] = {r.sc != 0 ? part(q, k) : 0.f, part(rho, mode == M_LLA ? z : k)};
        g.sum(s);
        float p = weight(a, r, r.sc * s[0]), t;
        if (mode == M_LLA) t = p * (1 - s[1]);            // LLA weights l_ij delta (§1.2)
        else if (mode == M_PX) t = p * (1 + tbar - s[1]); // p (1 + tbar - t_j) (§3.1)
        else t = p * s[1];                                // a_j rho.k_j
        norm += t;
#pragma unroll
        for (int d = 0; d < G::D; d++) o.x[d] += t * v.x[d];
    }
    if (mode == M_LLA) den = norm + a.delta_eps * (norm < 0 ? -1 : 1); // delta guard (§1.2)
    else if (mode == M_NI && a.normalize) den = norm + a.norm_eps;
    if (den != 1.f)
#pragma unroll
        for (int d = 0; d < G::D; d++) o.x[d] /= den;
    vstore(g, FROW(a.o, a.ld_out, b, i, T, h, hd), o);
    if (a.rho) vstore(g, FROW(a.rho, a.ld_out, b, i, T, h, hd), rho);
    if (g.l == 0) {
        a.lse[r.si] = lse;
        if (a.den) a.den[r.si] = den;
        if (a.cg_resid) a.cg_resid[r.si] = resid;
    }
}

// ---- backward ------------------------------------------------------------------------

// Row scalars saved by pass 1 for the key pass (scratch [B*H*T, NSCAL])
// (SC_RDEN = 1/den: the pair terms multiply by it, one division per row, not per
// pair; the CPU divides, rounding apart)
enum { SC_L, SC_DEN, SC_TBAR, SC_BI, SC_RT, SC_S, SC_RDEN, NSCAL };

// The scalar terms of the pair (row i, key j), docs/family.md "Backward", as
// fam_backward of the CPU code. In: p (p_ij, or a_ij without intercept),
// A = g.v_j, t = rho.k_j, rz = rho.z_j, uz = u.z_j, the row's scalars.
struct Pair {
    float ds; // dL/ds_ij (logit)
    float e;  // LLA: p (A - L)/delta; dq_i += e rho, dk_j -= e rho, rhobar -= e z_j
    float ck; // dk_j += ck rho_i (explicit part; the Parallax dT, the no-intercept gt, LLA -e)
    float cv; // dv_j += cv g_i
    float w;  // dL/dw_ij (no intercept: dL/da_ij, before the S/n centring)
};

FAM_HDI Pair pair_terms(const FamArgs &a, int mode, const float *rs, float p, float A,
                    float t, float rz, float uz) {
    const bool solved = a.probe == FAM_PROBE_SOLVED;
    Pair c;
    if (mode == M_LLA) {
        const float L = rs[SC_L], rden = rs[SC_RDEN], cj = 1 - rz;
        c.e = p * (A - L) * rden;
        c.w = cj * (A - L) * rden;
        c.w += uz - uz * rz + rs[SC_RT]; // solve terms (the last one: exact ridge mode)
        c.ck = -c.e;
        c.cv = p * cj * rden;
        c.ds = p * c.w;
    } else if (mode == M_PX) { // §3.6 explicit part
        const float L = rs[SC_L], tbar = rs[SC_TBAR], bi = rs[SC_BI];
        c.e = 0;
        c.ds = p * ((A - L) + (tbar - t) * (A - bi));
        c.ck = -p * (A - bi);
        c.cv = p * (1 + tbar - t);
        c.w = solved ? uz - uz * rz + rs[SC_RT] : 0.f;
        c.ds += p * c.w;
    } else {
        const float rnd = a.normalize ? rs[SC_RDEN] : 1.f, Lc = a.normalize ? rs[SC_L] : 0.f;
        c.e = 0;
        c.w = t * (A - Lc) * rnd;
        if (solved) c.w += 0.f - uz * rz + 0.f;
        c.ck = p * (A - Lc) * rnd;
        c.cv = p * t * rnd;
        c.ds = p * (c.w - rs[SC_S]);
    }
    return c;
}

// The dots of pair (i, j) in one butterfly: s = q.k (logit before scale), A =
// g.v, t = rho.k, rz = rho.z, uz = u.z; only those pair_terms reads for the
// member (t: not LLA; rz: LLA or solved; uz: solved, once u is known), the others 0.
struct PairDots {
    float s, A, t, rz, uz;
};
template <class G>
FAM_HDI PairDots pair_dots(const FamArgs &a, const G &g, const RowCtx &r, const Vec<G::D> &q,
                          const Vec<G::D> &gv, const Vec<G::D> &rho, const Vec<G::D> &u,
                          const Vec<G::D> &k, const Vec<G::D> &z, const Vec<G::D> &v,
                          bool with_u = true) {
    const int mode = fam_mode(a);
    const bool solved = a.probe == FAM_PROBE_SOLVED;
    float s[5] = {r.sc != 0 ? part(q, k) : 0.f, part(gv, v), mode != M_LLA ? part(rho, k) : 0.f,
                  mode == M_LLA || solved ? part(rho, z) : 0.f, with_u && solved ? part(u, z) : 0.f};
    g.sum(s);
    return PairDots{r.sc * s[0], s[1], s[2], s[3], s[4]};
}

// Pass 1 for one row: dq_i (+=), dr_i (+=, GIVEN); saves the row scalars, u_i
// (SOLVED) and the row's share of dlog_bw.
template <class G>
FAM_HD void bwd_row(const FamArgs &a, const G &g, int b, int h, int i, float *scal, float *us,
                float *dlbs, const KeyTile *kt = nullptr) {
    using V = Vec<G::D>;
    const int T = a.T, hd = a.hd, mode = fam_mode(a);
    const bool solved = a.probe == FAM_PROBE_SOLVED;
    RowCtx r = row_ctx(a, b, h, i, head_scale(a, h));
    use_tile(r, kt);
    const float lse = a.lse[r.si];
    r.sub = lse, r.rdiv = 1, r.lam = row_ridge(a, r.si, lse);
    const V q = vload(g, FROW(a.q, a.ld_in, b, i, T, h, hd));
    const V gv = vload(g, FROW(a.dout, a.ld_out, b, i, T, h, hd));
    const V rho = probe_row(a, g, b, h, i);
    float rs[NSCAL] = {0};
    rs[SC_DEN] = a.den ? a.den[r.si] : 1.f;
    rs[SC_RDEN] = 1.f / rs[SC_DEN];
    rs[SC_L] = vdot(g, gv, vload(g, FROW(a.o, a.ld_out, b, i, T, h, hd)));
    V u = vzero(g);
    if (mode == M_PX) { // tbar = sum p t_j, b_i = g.obar
        V obar = vzero(g);
        float tbar = 0;
        FAM_KEYS(r, j) {
            V k = kload(g, r, krow(a, r, j)), v = kload(g, r, vrow(a, r, j));
            PairDots d = pair_dots(a, g, r, q, gv, rho, u, k, k, v, false);
            float p = weight(a, r, d.s);
            tbar += p * d.t;
#pragma unroll
            for (int e = 0; e < G::D; e++) obar.x[e] += p * v.x[e];
        }
        rs[SC_TBAR] = tbar, rs[SC_BI] = vdot(g, gv, obar);
    }
    // rhobar = dL/drho at fixed weights (the explicit part); a row per thread sums
    // Sigma for the adjoint solve in the same pass
    V rb = vzero(g);
    Sym<G::SD> Sw;
    if constexpr (G::L == 1) sym_init(Sw, r.lam);
    FAM_KEYS(r, j) {
        V k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q), v = kload(g, r, vrow(a, r, j));
        PairDots d = pair_dots(a, g, r, q, gv, rho, u, k, z, v, false);
        const float p = weight(a, r, d.s);
        Pair c = pair_terms(a, mode, rs, p, d.A, d.t, d.rz, 0.f);
#pragma unroll
        for (int e = 0; e < G::D; e++) {
            if (mode == M_LLA) rb.x[e] -= c.e * z.x[e];
            else rb.x[e] += c.ck * k.x[e];
        }
        if constexpr (G::L == 1)
            if (solved) sym_add(Sw, p, z);
    }
    if (a.probe == FAM_PROBE_GIVEN) {
        float *dr = FROW(a.dr, a.ld_out, b, i, T, h, hd);
        V acc = vload(g, dr);
#pragma unroll
        for (int e = 0; e < G::D; e++) acc.x[e] += rb.x[e];
        vstore(g, dr, acc);
    }
    if (solved) { // adjoint solve (§2.4)
        cg_solve(a, g, r, q, rb, u, &Sw);
        rs[SC_RT] = a.affine && !a.ridge_frozen ? -r.lam * vdot(g, u, rho) : 0.f;
    }
    // S = sum_j a_j dL/da_j (the centring of a = n p); it enters only the logit
    // gradient ds, which is unused at scale 0
    if (mode == M_NI && r.sc != 0) {
        float S = 0;
        FAM_KEYS(r, j) {
            V k = kload(g, r, krow(a, r, j)), v = kload(g, r, vrow(a, r, j));
            PairDots d = pair_dots(a, g, r, q, gv, rho, u, k, k, v);
            float p = weight(a, r, d.s);
            S += p * pair_terms(a, mode, rs, p, d.A, d.t, d.rz, d.uz).w;
        }
        rs[SC_S] = S / r.n; // kept divided: pair_terms subtracts S/n per pair
    }
    // dq_i: explicit LLA part, through z_j = k_j - q (solve), through the logits
    float *dqp = FROW(a.dq, a.ld_out, b, i, T, h, hd);
    V dq = vload(g, dqp);
    float dlb = 0;
    // the pass adds nothing without one of its three terms (linear attention, Mesa).
    // The LLA and solve terms are row vectors (rho, u) times per-key scalars: their
    // scalar sums cr, cu first, one vector update after (the CPU adds term by term,
    // rounding apart); only the logit term sum_j ds_j k_j is a vector sum.
    const bool dq_pass = mode == M_LLA || (solved && a.affine) || r.sc != 0;
    float cr = 0, cu = 0; // dq += cr rho - cu u + sc dsk
    V dsk = vzero(g);
    if (dq_pass) {
        FAM_KEYS(r, j) {
            V k = kload(g, r, krow(a, r, j)), z = centre(a, g, k, q), v = kload(g, r, vrow(a, r, j));
            PairDots d = pair_dots(a, g, r, q, gv, rho, u, k, z, v);
            float p = weight(a, r, d.s);
            Pair c = pair_terms(a, mode, rs, p, d.A, d.t, d.rz, d.uz);
            if (mode == M_LLA) cr += c.e;
            if (solved && a.affine) // -dL/dz_j = -p (u (1 - rho.z) - rho (u.z)) (§2.4)
                cu += p * (1 - d.rz), cr += p * d.uz;
            if (r.sc != 0) {
#pragma unroll
                for (int e = 0; e < G::D; e++) dsk.x[e] += c.ds * k.x[e];
                dlb -= c.ds * d.s;
            }
        }
#pragma unroll
        for (int e = 0; e < G::D; e++) dq.x[e] += cr * rho.x[e] - cu * u.x[e] + r.sc * dsk.x[e];
    }
    if (solved && !a.affine) // the rhs of the solve is q
#pragma unroll
        for (int e = 0; e < G::D; e++) dq.x[e] += u.x[e];
    vstore(g, dqp, dq);
    if (us) vstore(g, us + r.si * hd, u);
    if (g.l == 0) {
        for (int k = 0; k < NSCAL; k++) scal[r.si * NSCAL + k] = rs[k];
        dlbs[r.si] = dlb;
    }
}

// Pass 2 for one key j: dk_j, dv_j (+=) over the rows i >= j that see it.
// The rows' vectors and scalars come from global memory, or (a key per thread) from
// the block's row tile: row i at rt->p + (i - i0) * ld, holding q, g, rho, u (D
// floats each, zero past hd), lse, then the NSCAL row scalars.
struct RowTile {
    const float *p;
    int i0, ld, wlo, whi; // wlo..whi: the rows the warp's lanes visit (the union of theirs)
};
template <int D> constexpr FAM_HDI int row_tile_ld() { return 4 * D + 1 + NSCAL; }

template <class G>
FAM_HD void bwd_key(const FamArgs &a, const G &g, int b, int h, int j, const float *scal,
                const float *us, const RowTile *rt = nullptr) {
    using V = Vec<G::D>;
    const int T = a.T, hd = a.hd, mode = fam_mode(a);
    const bool solved = a.probe == FAM_PROBE_SOLVED;
    const float sc = head_scale(a, h);
    const V k = vload(g, FROW(a.k, a.ld_in, b, j, T, h, hd));
    const V v = vload(g, FROW(a.v, a.ld_in, b, j, T, h, hd));
    float *dkp = FROW(a.dk, a.ld_out, b, j, T, h, hd), *dvp = FROW(a.dv, a.ld_out, b, j, T, h, hd);
    V dk = vload(g, dkp), dv = vload(g, dvp);
    // row i sees key j when i - W + 1 <= j <= i
    const int ihi = a.window > 0 && j + a.window - 1 < T - 1 ? j + a.window - 1 : T - 1;
    const int ib = rt ? rt->wlo : j, ie = rt ? rt->whi : ihi;
    for (int i = ib; i <= ie; i++) {
        if (i < j || i > ihi) continue; // (tiles: a row of another lane's key)
        V q, gv, rho, u;
        const float *rs = nullptr;
        RowCtx r;
        r.sc = sc, r.rdiv = 1;
        if constexpr (G::L == 1) {
            if (rt) {
                const float *row = rt->p + (size_t)(i - rt->i0) * rt->ld;
                q = tload(g, row), gv = tload(g, row + G::D), rho = tload(g, row + 2 * G::D);
                u = tload(g, row + 3 * G::D);
                r.sub = row[4 * G::D], rs = row + 4 * G::D + 1;
                r.n = i - (a.window > 0 && i - a.window + 1 > 0 ? i - a.window + 1 : 0) + 1;
            }
        }
        if (!rt) {
            r = row_ctx(a, b, h, i, sc);
            r.sub = a.lse[r.si], r.rdiv = 1;
            rs = scal + r.si * NSCAL;
            q = vload(g, FROW(a.q, a.ld_in, b, i, T, h, hd));
            gv = vload(g, FROW(a.dout, a.ld_out, b, i, T, h, hd));
            rho = probe_row(a, g, b, h, i);
            u = solved ? vload(g, us + r.si * hd) : vzero(g);
        }
        const V z = centre(a, g, k, q);
        PairDots d = pair_dots(a, g, r, q, gv, rho, u, k, z, v);
        float p = weight(a, r, d.s);
        Pair c = pair_terms(a, mode, rs, p, d.A, d.t, d.rz, d.uz);
#pragma unroll
        for (int e = 0; e < G::D; e++) {
            dv.x[e] += c.cv * gv.x[e];
            dk.x[e] += c.ck * rho.x[e];
            if (solved) // dL/dz_j (§2.4)
                dk.x[e] += p * ((a.affine ? u.x[e] : 0.f) - u.x[e] * d.rz - rho.x[e] * d.uz);
            if (sc != 0) dk.x[e] += sc * c.ds * q.x[e];
        }
    }
    vstore(g, dkp, dk);
    vstore(g, dvp, dv);
}

// ---- kernels over groups ---------------------------------------------------------------

template <int CAP> struct Lanes {
    static constexpr int L = CAP < 32 ? CAP : 32;
    static constexpr int PER_BLOCK = FAM_THREADS / L; // rows (or keys) per block
};

template <int CAP> __device__ __forceinline__ Grp<CAP, Lanes<CAP>::L> dev_group(int hd) {
    constexpr int L = Lanes<CAP>::L;
    Grp<CAP, L> g;
    const int lane = threadIdx.x % 32;
    g.l = lane % L;
    g.hd = hd;
    g.mask = L == 32 ? 0xffffffffu : ((1u << L) - 1u) << (lane - g.l);
    return g;
}

// the row (or key) index of this thread's group; grid (row tiles, B*H)
template <int CAP> __device__ __forceinline__ int group_row() {
    return blockIdx.x * Lanes<CAP>::PER_BLOCK + threadIdx.x / Lanes<CAP>::L;
}

template <int CAP> __global__ void fam_fwd_kernel(FamArgs a) {
    const int i = group_row<CAP>();
    if (i >= a.T) return; // the whole group leaves together
    fwd_row(a, dev_group<CAP>(a.hd), blockIdx.y / a.H, blockIdx.y % a.H, i);
}

template <int CAP> __global__ void fam_bwd_row_kernel(FamArgs a, float *scal, float *us, float *dlb) {
    const int i = group_row<CAP>();
    if (i >= a.T) return;
    bwd_row(a, dev_group<CAP>(a.hd), blockIdx.y / a.H, blockIdx.y % a.H, i, scal, us, dlb);
}

template <int CAP> __global__ void fam_bwd_key_kernel(FamArgs a, const float *scal, const float *us) {
    const int j = group_row<CAP>();
    if (j >= a.T) return;
    bwd_key(a, dev_group<CAP>(a.hd), blockIdx.y / a.H, blockIdx.y % a.H, j, scal, us);
}

// dlog_bw[h] += sum over (b, i) of the row partials, one block per head, fixed order
__global__ void fam_dlogbw_kernel(float *dlog_bw, const float *dlb, int B, int H, int T) {
    __shared__ float red[256];
    const int h = blockIdx.x;
    float s = 0;
    for (long x = threadIdx.x; x < (long)B * T; x += blockDim.x) {
        int b = (int)(x / T), i = (int)(x % T);
        s += dlb[((size_t)b * H + h) * T + i];
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) dlog_bw[h] += red[0];
}

// ---- a row (or key) per thread, keys (rows) tiled in shared memory --------------------
// Head dims up to 8 (CAP 4, 8): a thread holds whole hd-vectors, Sigma included
// (Sym<CAP>, 36 floats at CAP 8), so the per-key work has no butterflies. A block of
// TILE_NT threads takes TILE_NT consecutive rows (keys) of one (b, h) and first copies
// every key (row) they need into shared memory, once per block (coalesced), instead
// of one global read per (row, key) per pass; the lanes of a warp then walk the same
// tile rows together (broadcast reads, no bank conflicts). The same row functions
// (fwd_row, bwd_row, bwd_key), so the same sums in the same order as the lane groups.
// Used while a block's tile fits the default 48 KiB: T up to ~700 keys (forward,
// row pass) / ~300 rows (key pass) at CAP 8 with full causal windows; the lane
// groups otherwise.

static const int TILE_NT = 64;
static const size_t TILE_SMEM = 48 * 1024;

FAM_HDI int key_lo(const FamArgs &a, int i) { // first key of row i
    return a.window > 0 && i - a.window + 1 > 0 ? i - a.window + 1 : 0;
}
FAM_HDI int row_hi(const FamArgs &a, int j) { // last row that sees key j
    return a.window > 0 && j + a.window - 1 < a.T - 1 ? j + a.window - 1 : a.T - 1;
}
// the most keys (rows) a block's TILE_NT rows (keys) need
static int tile_span(const FamArgs *a) {
    const long n = (long)TILE_NT + (a->window > 0 ? a->window - 1 : a->T);
    return (int)(n < a->T ? n : a->T);
}

template <int CAP> __device__ __forceinline__ Grp<CAP, 1> row_group(int hd) {
    Grp<CAP, 1> g;
    g.l = 0, g.hd = hd, g.mask = 0xffffffffu;
    return g;
}

// s[(t - t0) CAP + c] = element c of row t of head h of x, t0 <= t < t0 + n, zero past hd
template <int CAP>
__device__ __forceinline__ void tile_load(float *s, const float *x, int ld, int b, int h, int T,
                                          int hd, int t0, int n) {
    for (int e = threadIdx.x; e < n * CAP; e += blockDim.x) {
        const int t = t0 + e / CAP, c = e % CAP;
        s[e] = c < hd ? FROW(x, ld, b, t, T, h, hd)[c] : 0.f;
    }
}

// loads the keys and values of the block's rows i0.. (call before the barrier)
template <int CAP>
__device__ __forceinline__ KeyTile key_tile(const FamArgs &a, float *sm, int b, int h, int i0) {
    const int T = a.T, k0 = key_lo(a, i0), nk = min(i0 + TILE_NT, T) - k0;
    float *sk = sm, *sv = sm + (size_t)nk * CAP; // nk CAP is a multiple of 4: sv stays 16-aligned
    tile_load<CAP>(sk, a.k, a.ld_in, b, h, T, a.hd, k0, nk);
    tile_load<CAP>(sv, a.v, a.ld_in, b, h, T, a.hd, k0, nk);
    const int w0 = i0 + (int)(threadIdx.x & ~31u), w1 = min(w0 + 31, T - 1); // the warp's rows
    return KeyTile{sk, sv, k0, CAP, key_lo(a, w0), w1};
}

template <int CAP> __global__ void __launch_bounds__(TILE_NT) fam_fwd_tile_kernel(FamArgs a) {
    extern __shared__ __align__(16) float fam_fwd_sm[];
    const int b = blockIdx.y / a.H, h = blockIdx.y % a.H, i0 = blockIdx.x * TILE_NT;
    const KeyTile kt = key_tile<CAP>(a, fam_fwd_sm, b, h, i0);
    __syncthreads();
    const int i = i0 + threadIdx.x;
    if (i < a.T) fwd_row(a, row_group<CAP>(a.hd), b, h, i, &kt);
}

template <int CAP>
__global__ void __launch_bounds__(TILE_NT) fam_bwd_row_tile_kernel(FamArgs a, float *scal, float *us,
                                                                   float *dlb) {
    extern __shared__ __align__(16) float fam_brow_sm[];
    const int b = blockIdx.y / a.H, h = blockIdx.y % a.H, i0 = blockIdx.x * TILE_NT;
    const KeyTile kt = key_tile<CAP>(a, fam_brow_sm, b, h, i0);
    __syncthreads();
    const int i = i0 + threadIdx.x;
    if (i < a.T) bwd_row(a, row_group<CAP>(a.hd), b, h, i, scal, us, dlb, &kt);
}

// keys j0.. of a block; its rows j0..row_hi(last key) in the RowTile layout
template <int CAP>
__global__ void __launch_bounds__(TILE_NT) fam_bwd_key_tile_kernel(FamArgs a, const float *scal,
                                                                   const float *us) {
    extern __shared__ __align__(16) float fam_bkey_sm[];
    constexpr int LD = row_tile_ld<CAP>();
    static_assert(LD % 4 == 0, "tile rows 16-byte aligned");
    const int T = a.T, hd = a.hd, b = blockIdx.y / a.H, h = blockIdx.y % a.H;
    const int j0 = blockIdx.x * TILE_NT, n = row_hi(a, min(j0 + TILE_NT, T) - 1) - j0 + 1;
    for (int e = threadIdx.x; e < n * LD; e += blockDim.x) {
        const int i = j0 + e / LD, c = e % LD, part = c / CAP, d = c % CAP;
        const size_t si = ((size_t)b * a.H + h) * T + i;
        float x = 0.f;
        if (part >= 4) { // lse, then the row scalars (8 floats: 1 or 2 parts of CAP)
            const int m = c - 4 * CAP;
            x = m == 0 ? a.lse[si] : scal[si * NSCAL + m - 1];
        } else if (d < hd) {
            if (part == 0) x = FROW(a.q, a.ld_in, b, i, T, h, hd)[d];
            else if (part == 1) x = FROW(a.dout, a.ld_out, b, i, T, h, hd)[d];
            else if (part == 2)
                x = a.probe == FAM_PROBE_SOLVED  ? FROW(a.rho, a.ld_out, b, i, T, h, hd)[d]
                    : a.probe == FAM_PROBE_GIVEN ? FROW(a.r, a.ld_in, b, i, T, h, hd)[d]
                                                 : 0.f;
            else if (us) x = us[si * hd + d];
        }
        fam_bkey_sm[e] = x;
    }
    __syncthreads();
    const int j = j0 + threadIdx.x;
    if (j >= T) return;
    const int w0 = j0 + (int)(threadIdx.x & ~31u), w1 = min(w0 + 31, T - 1); // the warp's keys
    const RowTile rt{fam_bkey_sm, j0, LD, w0, row_hi(a, w1)};
    bwd_key(a, row_group<CAP>(hd), b, h, j, scal, us, &rt);
}

template <int CAP> static void fwd_launch(const FamArgs *a) {
    if constexpr (CAP <= 8) {
        const size_t bytes = 2 * (size_t)tile_span(a) * CAP * sizeof(float);
        if (bytes <= TILE_SMEM) {
            dim3 grid(cu_blocks(a->T, TILE_NT), a->B * a->H);
            fam_fwd_tile_kernel<CAP><<<grid, TILE_NT, bytes, cu.stream>>>(*a);
            CKL();
            return;
        }
    }
    dim3 grid(cu_blocks(a->T, Lanes<CAP>::PER_BLOCK), a->B * a->H);
    fam_fwd_kernel<CAP><<<grid, FAM_THREADS, 0, cu.stream>>>(*a);
    CKL();
}

template <int CAP> static void bwd_launch(const FamArgs *a) {
    const size_t rows = (size_t)a->B * a->H * a->T;
    const bool solved = a->probe == FAM_PROBE_SOLVED;
    // one scratch: row scalars [rows, NSCAL], dlog_bw partials [rows], u [rows, hd]
    float *scal = cu_scratch(rows * (NSCAL + 1 + (solved ? (size_t)a->hd : 0)));
    float *dlb = scal + rows * NSCAL, *us = solved ? dlb + rows : nullptr;
    dim3 grid(cu_blocks(a->T, Lanes<CAP>::PER_BLOCK), a->B * a->H);
    bool row_done = false, key_done = false;
    if constexpr (CAP <= 8) { // the two passes share only the scratch: each picks its layout
        const dim3 gt(cu_blocks(a->T, TILE_NT), a->B * a->H);
        const size_t rbytes = 2 * (size_t)tile_span(a) * CAP * sizeof(float);
        const size_t kbytes = (size_t)tile_span(a) * row_tile_ld<CAP>() * sizeof(float);
        if (rbytes <= TILE_SMEM) {
            fam_bwd_row_tile_kernel<CAP><<<gt, TILE_NT, rbytes, cu.stream>>>(*a, scal, us, dlb);
            CKL();
            row_done = true;
        }
        if (!row_done) {
            fam_bwd_row_kernel<CAP><<<grid, FAM_THREADS, 0, cu.stream>>>(*a, scal, us, dlb);
            CKL();
            row_done = true;
        }
        if (kbytes <= TILE_SMEM) {
            fam_bwd_key_tile_kernel<CAP><<<gt, TILE_NT, kbytes, cu.stream>>>(*a, scal, us);
            CKL();
            key_done = true;
        }
    }
    if (!row_done) {
        fam_bwd_row_kernel<CAP><<<grid, FAM_THREADS, 0, cu.stream>>>(*a, scal, us, dlb);
        CKL();
    }
    if (!key_done) {
        fam_bwd_key_kernel<CAP><<<grid, FAM_THREADS, 0, cu.stream>>>(*a, scal, us);
        CKL();
    }
    if (a->dlog_bw) {
        fam_dlogbw_kernel<<<a->H, 256, 0, cu.stream>>>(a->dlog_bw, dlb, a->B, a->H, a->T);
        CKL();
    }
}

// ---- linear attention by its state recurrence (baselines.md §3) -----------------------
// A block of CAP threads per (b, h), sequential over t; thread x < CAP, padded
// elements zero. The bodies take the block's shared rows and its barrier as
// arguments (the kernels pass __shared__ arrays and __syncthreads).

// a + b*c and a - b*c rounded twice, as the CPU reference computes them (no
// fused multiply-add): with the same order of every sum the recurrence then
// matches the CPU bit for bit
FAM_HDI float madd(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, __fmul_rn(b, c));
#else
    return a + b * c;
#endif
}
FAM_HDI float msub(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, __fmul_rn(b, c));
#else
    return a - b * c;
#endif
}

struct BlockSync {
    __device__ __forceinline__ void operator()() const { __syncthreads(); }
};

// Forward: thread x owns column x of S_t (S[c] = S_t[c, x]); z_t in shared memory.
// sm: 3 CAP floats.
template <int CAP, class Sync>
FAM_HD void linrec_fwd_body(const FamArgs &a, int bh, int x, float *sm, const Sync &sync) {
    float *sk = sm, *sr = sm + CAP, *sz = sm + 2 * CAP;
    const int T = a.T, hd = a.hd, b = bh / a.H, h = bh % a.H;
    float S[CAP];
#pragma unroll
    for (int c = 0; c < CAP; c++) S[c] = 0.f;
    sz[x] = 0.f;
    for (int t = 0; t < T; t++) {
        const float kx = x < hd ? FROW(a.k, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sk[x] = kx;
        sr[x] = x < hd ? FROW(a.r, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sz[x] += kx; // z += k (element x is only touched by thread x)
        const float vx = x < hd ? FROW(a.v, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sync();
#pragma unroll
        for (int c = 0; c < CAP; c++) S[c] = madd(S[c], sk[c], vx); // S += k v^T
        float den = 1;
        if (a.normalize) {
            float s = 0;
#pragma unroll
            for (int c = 0; c < CAP; c++) s = madd(s, sz[c], sr[c]);
            den = s + a.norm_eps;
        }
        float acc = 0;
#pragma unroll
        for (int c = 0; c < CAP; c++) acc = madd(acc, S[c], sr[c]);
        if (x < hd) FROW(a.o, a.ld_out, b, t, T, h, hd)[x] = acc / den; // o = S^T r / den
        if (x == 0) {
            const size_t si = ((size_t)b * a.H + h) * T + t;
            if (a.den) a.den[si] = den;
            if (a.lse) a.lse[si] = 0.f;
            if (a.cg_resid) a.cg_resid[si] = 0.f;
        }
        sync(); // before the next step overwrites sk, sr, sz
    }
}

// Backward (CPU lin_rec_backward): reverse sweep, S_t recovered by downdating S_T.
// Thread x owns row x of S and dS (dr_x and dk_x are then local sums) and also
// column x of dS (dv_x local): the row and column copies are updated by the same
// operations in the same order, so they hold the same values. sm: 5 CAP floats.
template <int CAP, class Sync>
FAM_HD void linrec_bwd_body(const FamArgs &a, int bh, int x, float *sm, const Sync &sync) {
    float *sk = sm, *sv = sm + CAP, *sr = sm + 2 * CAP, *sg = sm + 3 * CAP, *so = sm + 4 * CAP;
    const int T = a.T, hd = a.hd, b = bh / a.H, h = bh % a.H;
    float S[CAP], dS[CAP], dSc[CAP], z = 0, dz = 0; // S[e] = S[x,e], dS[e] = dS[x,e], dSc[c] = dS[c,x]
#pragma unroll
    for (int c = 0; c < CAP; c++) S[c] = dS[c] = dSc[c] = 0.f;
    for (int t = 0; t < T; t++) { // S_T, z_T
        const float *vt = FROW(a.v, a.ld_in, b, t, T, h, hd);
        const float kx = x < hd ? FROW(a.k, a.ld_in, b, t, T, h, hd)[x] : 0.f;
#pragma unroll
        for (int e = 0; e < CAP; e++) S[e] = madd(S[e], kx, e < hd ? vt[e] : 0.f);
        z += kx;
    }
    for (int t = T - 1; t >= 0; t--) {
        sync(); // the previous step is done with the shared rows
        sk[x] = x < hd ? FROW(a.k, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sv[x] = x < hd ? FROW(a.v, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sr[x] = x < hd ? FROW(a.r, a.ld_in, b, t, T, h, hd)[x] : 0.f;
        sg[x] = x < hd ? FROW(a.dout, a.ld_out, b, t, T, h, hd)[x] : 0.f;
        so[x] = x < hd ? FROW(a.o, a.ld_out, b, t, T, h, hd)[x] : 0.f;
        sync();
        const size_t si = ((size_t)b * a.H + h) * T + t;
        const float den = a.normalize ? a.den[si] : 1.f;
        float dden = 0;
        if (a.normalize) {
            float s = 0;
#pragma unroll
            for (int c = 0; c < CAP; c++) s = madd(s, sg[c], so[c]);
            dden = -s / den;
        }
        // o = S^T r / den: dr = S gt + z dden, dS += r gt^T, dz += r dden (gt = g / den)
        float drx = 0;
#pragma unroll
        for (int e = 0; e < CAP; e++) {
            const float gte = sg[e] / den;
            drx = madd(drx, S[e], gte);
            dS[e] = madd(dS[e], sr[x], gte);
        }
        drx = madd(drx, z, dden);
        const float gtx = sg[x] / den;
#pragma unroll
        for (int c = 0; c < CAP; c++) dSc[c] = madd(dSc[c], sr[c], gtx);
        dz = madd(dz, sr[x], dden);
        // S_t, z_t contain k_t v_t^T, k_t: dk = dS v + dz, dv = dS^T k; then downdate
        float dkx = 0, dvx = x < hd ? FROW(a.dv, a.ld_out, b, t, T, h, hd)[x] : 0.f;
#pragma unroll
        for (int e = 0; e < CAP; e++) dkx = madd(dkx, dS[e], sv[e]);
        dkx += dz;
#pragma unroll
        for (int c = 0; c < CAP; c++) dvx = madd(dvx, dSc[c], sk[c]);
#pragma unroll
        for (int e = 0; e < CAP; e++) S[e] = msub(S[e], sk[x], sv[e]);
        z -= sk[x];
        if (x < hd) {
            FROW(a.dr, a.ld_out, b, t, T, h, hd)[x] += drx;
            FROW(a.dk, a.ld_out, b, t, T, h, hd)[x] += dkx;
            FROW(a.dv, a.ld_out, b, t, T, h, hd)[x] = dvx; // dv_t += sum_c dS[c,x] k_t[c], in c order
        }
    }
}

template <int CAP> __global__ void linrec_fwd_kernel(FamArgs a) {
    __shared__ float sm[3 * CAP];
    linrec_fwd_body<CAP>(a, blockIdx.x, threadIdx.x, sm, BlockSync());
}
template <int CAP> __global__ void linrec_bwd_kernel(FamArgs a) {
    __shared__ float sm[5 * CAP];
    linrec_bwd_body<CAP>(a, blockIdx.x, threadIdx.x, sm, BlockSync());
}

template <int CAP> static void linrec_launch(const FamArgs *a, bool back) {
    if (back) linrec_bwd_kernel<CAP><<<a->B * a->H, CAP, 0, cu.stream>>>(*a);
    else linrec_fwd_kernel<CAP><<<a->B * a->H, CAP, 0, cu.stream>>>(*a);
    CKL();
}

// ---- linear attention, quadratic form (parallax_lla.md §3.3, last row) -----------------
// The no-intercept member at bandwidth inf with a given probe and no normalisation
// (linear_attention): p_ij = 1/n so a_ij = n p_ij = 1, rho_i = r_i, and per (b, h),
// with J(i) the keys row i sees (causal, window W: i-W+1..i),
//   o_i  = sum_{j in J(i)} (r_i.k_j) v_j              O  = tril(R K^T) V
//   dr_i += sum_{j in J(i)} (g_i.v_j) k_j             dR = tril(G V^T) K
//   dk_j += sum_{i: j in J(i)} (g_i.v_j) r_i          dK = tril(G V^T)^T R
//   dv_j += sum_{i: j in J(i)} (r_i.k_j) g_i          dV = tril(R K^T)^T G
// This is the CPU fam_forward / fam_backward no-intercept branch with t_j = rho.k_j,
// A_j = g.v_j, L unused (normalize off) and no logit term (scale 0: ds is never used,
// dq and dlog_bw are left as they are). The CPU's a_j = n p_j is 1 up to a rounding
// (1/n times n, exp(-lse) times n); here it is exactly 1.
//
// All four are one job: out_i (=, += the sum, or += term by term) sum_{m in M(i)} (x_i.P_m) Q_m
// over own rows i and partner rows m, M(i) = J(i) (row side: o, dr) or {m : i in J(m)} (key
// side: dk, dv). A block of NT threads per (job, b, h), one own row per thread (x_i and the
// sum in registers), own rows in chunks of NT, partner rows staged through shared memory in
// tiles of NT (own rows and results too, so global loads and stores are coalesced). All
// lanes of a warp walk the warp's partner range in increasing m together (same shared row:
// broadcast) and skip the m outside their own M(i): each sum in the CPU's order (row side:
// increasing j into a zero sum, then stored / added; key side: onto the old dk / dv in
// increasing i). Feature maps run before the op (attention.c), so k and r are taken as given.
// Work per pair: 2 hd FMAs per job, one job for the forward, three for the backward,
// against the general path's several passes per row with a butterfly per key.

enum { LA_WRITE = 0, LA_ADD = 1, LA_ACC = 2 }; // out = sum; out += sum; out += each term

struct LaJob {
    const float *x, *P, *Q; // own rows; partner rows dotted with x; partner rows summed
    float *out;
    int ldx, ldp, ldq, ldo;
    int keys; // 0: partners m in J(i) (m <= i); 1: the rows m >= i whose window holds i
    int mode; // LA_*
};
struct LaJobs {
    LaJob j[3];
};

// first and last partner of own row i (both non-decreasing in i)
FAM_HDI int la_plo(const LaJob &jb, int W, int i) {
    return jb.keys ? i : W > 0 && i - W + 1 > 0 ? i - W + 1 : 0;
}
FAM_HDI int la_phi(const LaJob &jb, int W, int T, int i) {
    return !jb.keys ? i : W > 0 && i + W - 1 < T - 1 ? i + W - 1 : T - 1;
}

// s[NT][CAP] = rows t0.. of head h of x (zero past T and hd): consecutive threads read
// consecutive elements
template <int CAP, int NT>
__device__ __forceinline__ void la_load(float *s, const float *x, int ld, int b, int h, int T,
                                        int hd, int t0) {
    for (int e = threadIdx.x; e < NT * CAP; e += NT) {
        const int t = t0 + e / CAP, c = e % CAP;
        s[e] = t < T && c < hd ? FROW(x, ld, b, t, T, h, hd)[c] : 0.f;
    }
}
template <int CAP, int NT>
__device__ __forceinline__ void la_store(float *x, const float *s, int ld, int b, int h, int T,
                                         int hd, int t0, bool add) {
    for (int e = threadIdx.x; e < NT * CAP; e += NT) {
        const int t = t0 + e / CAP, c = e % CAP;
        if (t < T && c < hd) {
            float *p = FROW(x, ld, b, t, T, h, hd) + c;
            *p = add ? *p + s[e] : s[e];
        }
    }
}

// grid (jobs, B*H); fwd: the forward's job, which also writes rho (= r) and the row
// scalars as fwd_row does (lse = log n at scale 0, den 1, cg_resid 0)
template <int CAP, int NT>
__global__ void __launch_bounds__(NT) la_kernel(FamArgs a, LaJobs jobs, int fwd) {
    __shared__ __align__(16) float sx[NT * CAP], sp[NT * CAP], sq[NT * CAP];
    const LaJob jb = blockIdx.x == 0 ? jobs.j[0] : blockIdx.x == 1 ? jobs.j[1] : jobs.j[2];
    const int T = a.T, hd = a.hd, W = a.window, b = blockIdx.y / a.H, h = blockIdx.y % a.H;
    const int tid = threadIdx.x;
    for (int i0 = 0; i0 < T; i0 += NT) { // a chunk of own rows, one per thread
        const int i = i0 + tid, ilast = min(i0 + NT, T) - 1;
        __syncthreads(); // the previous chunk is done with the tiles
        la_load<CAP, NT>(sx, jb.x, jb.ldx, b, h, T, hd, i0);
        if (jb.mode == LA_ACC) la_load<CAP, NT>(sp, jb.out, jb.ldo, b, h, T, hd, i0);
        __syncthreads();
        if (fwd && a.rho) la_store<CAP, NT>(a.rho, sx, a.ld_out, b, h, T, hd, i0, false);
        float x[CAP], acc[CAP];
#pragma unroll
        for (int c = 0; c < CAP; c++) {
            x[c] = sx[tid * CAP + c];
            acc[c] = jb.mode == LA_ACC ? sp[tid * CAP + c] : 0.f;
        }
        // partners: of the chunk (tiles, block-uniform), of the warp (loop, warp-uniform),
        // of this row (the lanes outside it sit the step out)
        const int w0 = i0 + (tid & ~31), w1 = min(w0 + 31, T - 1);
        const int mlo_w = w0 < T ? la_plo(jb, W, w0) : 0, mhi_w = w0 < T ? la_phi(jb, W, T, w1) : -1;
        const int mlo = i < T ? la_plo(jb, W, i) : 0, mhi = i < T ? la_phi(jb, W, T, i) : -1;
        const int mhi_c = la_phi(jb, W, T, ilast);
        for (int m0 = la_plo(jb, W, i0); m0 <= mhi_c; m0 += NT) {
            __syncthreads(); // sp / sq free
            la_load<CAP, NT>(sp, jb.P, jb.ldp, b, h, T, hd, m0);
            la_load<CAP, NT>(sq, jb.Q, jb.ldq, b, h, T, hd, m0);
            __syncthreads();
            const int ma = max(m0, mlo_w), mb = min(m0 + NT - 1, mhi_w);
            for (int m = ma; m <= mb; m++) {
                if (m < mlo || m > mhi) continue;
                const float *pm = sp + (m - m0) * CAP, *qm = sq + (m - m0) * CAP;
                float s = 0.f; // x_i.P_m in the CPU's element order
#pragma unroll
                for (int c = 0; c < CAP; c++) s += x[c] * pm[c];
#pragma unroll
                for (int c = 0; c < CAP; c++) acc[c] += s * qm[c];
            }
        }
        __syncthreads(); // everyone is done reading sx (x) and the tiles
#pragma unroll
        for (int c = 0; c < CAP; c++) sx[tid * CAP + c] = acc[c];
        __syncthreads();
        la_store<CAP, NT>(jb.out, sx, jb.ldo, b, h, T, hd, i0, jb.mode == LA_ADD);
        if (fwd && i < T) {
            const size_t si = ((size_t)b * a.H + h) * T + i;
            if (a.lse) a.lse[si] = (float)log((double)(i - la_plo(jb, W, i) + 1)); // m = 0, om = n
            if (a.den) a.den[si] = 1.f;
            if (a.cg_resid) a.cg_resid[si] = 0.f;
        }
    }
}

// the member this path computes (family_forward / family_backward route it here)
static bool la_quadratic(const FamArgs *a) {
    return a->scale == 0 && !a->log_bw && !a->affine && a->probe == FAM_PROBE_GIVEN &&
           !a->normalize && a->hd <= 32;
}

template <int CAP> static void la_launch(const FamArgs *a, bool back) {
    constexpr int NT = CAP <= 16 ? 128 : 64; // 3 tiles of NT x CAP floats: 12 / 24 KB at CAP 8 / 32
    LaJobs J;
    int n = 0;
    if (!back) J.j[n++] = LaJob{a->r, a->k, a->v, a->o, a->ld_in, a->ld_in, a->ld_in, a->ld_out, 0, LA_WRITE};
    else {
        if (a->dr)
            J.j[n++] = LaJob{a->dout, a->v, a->k, a->dr, a->ld_out, a->ld_in, a->ld_in, a->ld_out, 0, LA_ADD};
        J.j[n++] = LaJob{a->v, a->dout, a->r, a->dk, a->ld_in, a->ld_out, a->ld_in, a->ld_out, 1, LA_ACC};
        J.j[n++] = LaJob{a->k, a->r, a->dout, a->dv, a->ld_in, a->ld_in, a->ld_out, a->ld_out, 1, LA_ACC};
    }
    for (int x = n; x < 3; x++) J.j[x] = J.j[0];
    // the jobs of one (b, h) are neighbours in the launch order: they share its rows in L2
    la_kernel<CAP, NT><<<dim3(n, a->B * a->H), NT, 0, cu.stream>>>(*a, J, back ? 0 : 1);
    CKL();
}

static void la_dispatch(const FamArgs *a, bool back) {
    if (a->hd <= 4) la_launch<4>(a, back);
    else if (a->hd <= 8) la_launch<8>(a, back);
    else if (a->hd <= 16) la_launch<16>(a, back);
    else la_launch<32>(a, back);
}

// ---- dispatch --------------------------------------------------------------------------

static int cap_of(int hd) {
    for (int c = 4; c <= FAM_MAX_HD; c *= 2)
        if (hd <= c) return c;
    return 0;
}

static void check_args(const FamArgs *a, const char *what) {
    char why[200];
    if (a->hd < 1 || a->hd > FAM_MAX_HD) {
        snprintf(why, sizeof why, "head dim %d is not supported by the CUDA family ops (1..%d)",
                 a->hd, FAM_MAX_HD);
        cu_die(__FILE__, __LINE__, what, why);
    }
    if ((long)a->B * a->H > 65535) {
        snprintf(why, sizeof why, "B*H = %ld exceeds the grid's 65535 (batch %d, heads %d)",
                 (long)a->B * a->H, a->B, a->H);
        cu_die(__FILE__, __LINE__, what, why);
    }
}

#define FAM_SWITCH(hd, CALL)                                                                   \
    switch (cap_of(hd)) {                                                                      \
    case 4: CALL(4); break;                                                                    \
    case 8: CALL(8); break;                                                                    \
    case 16: CALL(16); break;                                                                  \
    case 32: CALL(32); break;                                                                  \
    case 64: CALL(64); break;                                                                  \
    default: CALL(128); break;                                                                 \
    }

static void family_forward(const FamArgs *a) {
    check_args(a, "family forward");
    if (a->B == 0 || a->T == 0) return;
    if (la_quadratic(a)) { // linear attention: its own kernel
        la_dispatch(a, false);
        return;
    }
#define F(C) fwd_launch<C>(a)
    FAM_SWITCH(a->hd, F)
#undef F
}

static void family_backward(const FamArgs *a) {
    check_args(a, "family backward");
    if (a->B == 0 || a->T == 0) return;
    if (la_quadratic(a)) {
        la_dispatch(a, true);
        return;
    }
#define F(C) bwd_launch<C>(a)
    FAM_SWITCH(a->hd, F)
#undef F
}

static void linrec_forward(const FamArgs *a) {
    check_args(a, "linear recurrent forward");
    if (a->B == 0 || a->T == 0) return;
#define F(C) linrec_launch<C>(a, false)
    FAM_SWITCH(a->hd, F)
#undef F
}

static void linrec_backward(const FamArgs *a) {
    check_args(a, "linear recurrent backward");
    if (a->B == 0 || a->T == 0) return;
#define F(C) linrec_launch<C>(a, true)
    FAM_SWITCH(a->hd, F)
#undef F
}

// ---- feature maps ------------------------------------------------------------------------

// as the CPU: exp in double, no fused multiply-add (so the results match bit for bit)
__device__ __forceinline__ float fmap(float v, int kind) {
    return kind == FAM_FMAP_ELU1   ? (v > 0 ? v + 1 : (float)exp((double)v))
           : kind == FAM_FMAP_RELU ? (v > 0 ? v : 0.f)
                                   : v;
}
__device__ __forceinline__ float fmap_deriv(float v, int kind) {
    return kind == FAM_FMAP_ELU1   ? (v > 0 ? 1.f : (float)exp((double)v))
           : kind == FAM_FMAP_RELU ? (v > 0 ? 1.f : 0.f)
                                   : 1.f;
}

__global__ void fmap_fwd_kernel(float *y, const float *x, int N, int C, int ld, int kind) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    size_t o = (size_t)(idx / C) * ld + idx % C;
    y[o] = fmap(x[o], kind);
}
__global__ void fmap_bwd_kernel(float *dx, const float *dy, const float *x, int N, int C, int ld,
                                int kind) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * C) return;
    size_t o = (size_t)(idx / C) * ld + idx % C;
    dx[o] = madd(dx[o], fmap_deriv(x[o], kind), dy[o]);
}

static void feature_map_forward(float *y, const float *x, int N, int C, int ld, int kind) {
    if ((long)N * C == 0) return;
    fmap_fwd_kernel<<<cu_blocks((long)N * C, 256), 256, 0, cu.stream>>>(y, x, N, C, ld, kind);
    CKL();
}
static void feature_map_backward(float *dx, const float *dy, const float *x, int N, int C, int ld,
                                 int kind) {
    if ((long)N * C == 0) return;
    fmap_bwd_kernel<<<cu_blocks((long)N * C, 256), 256, 0, cu.stream>>>(dx, dy, x, N, C, ld, kind);
    CKL();
}

static const FamilyOps cuda_family_ops = {
    family_forward, family_backward, linrec_forward, linrec_backward, feature_map_forward,
    feature_map_backward,
};

void cu_fill_family(Ops *o) { o->family = &cuda_family_ops; }
