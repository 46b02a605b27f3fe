// Causal softmax attention and Parallax on the GPU (parallax_lla.md §3.1,
// §3.4 forward, §3.6 backward), the same function as kernels/cpu/attention_cpu.c.
//
// One block per (query tile of 128 rows, batch*head); a thread owns one query
// row (forward, dq, dr) or one key (dk, dv), and keys / queries stream through
// shared memory in tiles. Every output element is written by exactly one
// thread in a fixed order: no atomics, so results are bit-reproducible.
//   forward   one online pass (running max, sums rescaled when it grows):
//             tbar = sum p t, obar = sum p v, o = (1 + tbar) obar - sum p t v
//   backward  rows: T_i = g.o_i, b_i = g.obar_i;  dS = p[(A-T) + (tbar-t)(A-b)],
//             dT = -p(A-b), A_ij = g_i.v_j;  dq += scale dS k, dr += dT k
//             keys: dk += scale dS q + dT r,  dv += p(1 + tbar - t) g
#include "cuda_common.cuh"

#define ROW(ptr, ld, b, t, T, h) ((ptr) + ((size_t)(b) * (T) + (t)) * (ld) + (size_t)(h) * HD)

static const int QB = 128; // rows (or keys) per block
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

template <int HD> __device__ __forceinline__ float dotv(const float *a, const float *b) {
    float s = 0;
#pragma unroll
    for (int c = 0; c < HD; c++) s += a[c] * b[c];
    return s;
}

// a shared-memory row into registers with 16-byte loads (every warp lane reads
// the same row: one broadcast LDS.128 per 4 floats instead of 4 scalar loads)
template <int HD> __device__ __forceinline__ void ldrow(float *dst, const float *src) {
#pragma unroll
    for (int c = 0; c < HD; c += 4) {
        float4 v = *reinterpret_cast<const float4 *>(src + c);
        dst[c] = v.x, dst[c + 1] = v.y, dst[c + 2] = v.z, dst[c + 3] = v.w;
    }
}

// rows [r0, r0+TK) of a [B,T,H,HD] tensor with row stride ld into smem [TK,HD]
template <int HD>
__device__ void load_tile(float *dst, const float *src, int ld, int b, int h, int r0, int T, int TK) {
    for (int idx = threadIdx.x; idx < TK * HD; idx += blockDim.x) {
        int rr = idx / HD, c = idx % HD, t = r0 + rr;
        dst[idx] = t < T ? ROW(src, ld, b, t, T, h)[c] : 0.f;
    }
}

template <int HD, bool PX> __global__ void attn_fwd_kernel(AttnArgs a, int TK) {
    extern __shared__ float sm[];
    float *sK = sm, *sV = sm + TK * HD;
    const int T = a.T, H = a.H, W = a.window;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int i0 = blockIdx.x * blockDim.x, i = i0 + threadIdx.x;
    const bool live = i < T;
    const int iend = min(T - 1, i0 + (int)blockDim.x - 1);
    const int jlo = W > 0 ? max(0, i0 - W + 1) : 0, lo = W > 0 ? max(0, i - W + 1) : 0;
    float q[HD], r[HD];
    const float qs = a.scale * LOG2E; // scores in log2 units: s = (scale log2 e) q.k
#pragma unroll
    for (int c = 0; c < HD; c++) {
        q[c] = live ? qs * ROW(a.q, a.ld_in, b, i, T, h)[c] : 0.f;
        r[c] = PX && live ? ROW(a.r, a.ld_r, b, i, T, h)[c] : 0.f;
    }
    // one pass, online: running max m; d1, st = sum e t, ov = sum e v, otv = sum e t v
    // are rescaled by exp(m_old - m_new) whenever the max grows
    float m = -INFINITY, d1 = 0, st = 0, ov[HD], otv[HD];
#pragma unroll
    for (int c = 0; c < HD; c++) ov[c] = otv[c] = 0;
    for (int j0 = jlo; j0 <= iend; j0 += TK) {
        __syncthreads();
        load_tile<HD>(sK, a.k, a.ld_in, b, h, j0, T, TK);
        load_tile<HD>(sV, a.v, a.ld_in, b, h, j0, T, TK);
        __syncthreads();
        int ja = max(j0, lo), jb = min(j0 + TK - 1, live ? i : -1);
        for (int j = ja; j <= jb; j++) {
            float kj[HD], vj[HD];
            ldrow<HD>(kj, sK + (j - j0) * HD);
            ldrow<HD>(vj, sV + (j - j0) * HD);
            float s = dotv<HD>(q, kj);
            if (s > m) {
                float corr = cu_ex2(m - s);
                d1 *= corr, st *= corr;
#pragma unroll
                for (int c = 0; c < HD; c++) ov[c] *= corr, otv[c] *= corr;
                m = s;
            }
            float e = cu_ex2(s - m), t = PX ? dotv<HD>(r, kj) : 0.f;
            d1 += e;
            st += e * t;
#pragma unroll
            for (int c = 0; c < HD; c++) {
                ov[c] += e * vj[c];
                if (PX) otv[c] += e * t * vj[c];
            }
        }
    }
    const float inv = 1.f / d1, tbar = st * inv;
#pragma unroll
    for (int c = 0; c < HD; c++) ov[c] *= inv, otv[c] *= inv;
    if (!live) return;
    float *o = ROW(a.o, a.ld_out, b, i, T, h);
    float *ob = PX ? ROW(a.obar, a.ld_out, b, i, T, h) : nullptr;
#pragma unroll
    for (int c = 0; c < HD; c++) {
        o[c] = PX ? ov[c] * (1.f + tbar) - otv[c] : ov[c];
        if (PX) ob[c] = ov[c];
    }
    size_t s = ((size_t)b * H + h) * T + i;
    a.lse[s] = m * LN2 + logf(d1);
    if (PX && a.tbar) a.tbar[s] = tbar;
}

// rows: dq, dr, and the per-row scalars T_i, b_i for the key pass
template <int HD, bool PX> __global__ void attn_bwd_q_kernel(AttnArgs a, int TK, float *Tv, float *bv) {
    extern __shared__ float sm[];
    float *sK = sm, *sV = sm + TK * HD;
    const int T = a.T, H = a.H, W = a.window;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int i0 = blockIdx.x * blockDim.x, i = i0 + threadIdx.x;
    const bool live = i < T;
    const int iend = min(T - 1, i0 + (int)blockDim.x - 1);
    const int jlo = W > 0 ? max(0, i0 - W + 1) : 0, lo = W > 0 ? max(0, i - W + 1) : 0;
    float q[HD], r[HD], g[HD], dq[HD], dr[HD], Ti = 0, bi = 0;
#pragma unroll
    for (int c = 0; c < HD; c++) {
        q[c] = live ? ROW(a.q, a.ld_in, b, i, T, h)[c] : 0.f;
        r[c] = PX && live ? ROW(a.r, a.ld_r, b, i, T, h)[c] : 0.f;
        g[c] = live ? ROW(a.dout, a.ld_out, b, i, T, h)[c] : 0.f;
        float oc = live ? ROW(a.o, a.ld_out, b, i, T, h)[c] : 0.f;
        float obc = PX && live ? ROW(a.obar, a.ld_out, b, i, T, h)[c] : oc;
        Ti += g[c] * oc, bi += g[c] * obc;
        dq[c] = dr[c] = 0;
    }
    size_t s = ((size_t)b * H + h) * T + (live ? i : 0);
    const float lse = live ? a.lse[s] * LOG2E : 0.f, tb = PX && live ? a.tbar[s] : 0.f;
    float qs[HD]; // q scaled by scale log2 e: p = 2^(qs.k - lse log2 e)
#pragma unroll
    for (int c = 0; c < HD; c++) qs[c] = (a.scale * LOG2E) * q[c];
    for (int j0 = jlo; j0 <= iend; j0 += TK) {
        __syncthreads();
        load_tile<HD>(sK, a.k, a.ld_in, b, h, j0, T, TK);
        load_tile<HD>(sV, a.v, a.ld_in, b, h, j0, T, TK);
        __syncthreads();
        int ja = max(j0, lo), jb = min(j0 + TK - 1, live ? i : -1);
        for (int j = ja; j <= jb; j++) {
            float kj[HD], vj[HD];
            ldrow<HD>(kj, sK + (j - j0) * HD);
            ldrow<HD>(vj, sV + (j - j0) * HD);
            float p = HD <= 32 ? cu_ex2(dotv<HD>(qs, kj) - lse)
                               : cu_ex2((a.scale * LOG2E) * dotv<HD>(q, kj) - lse);
            float t = PX ? dotv<HD>(r, kj) : 0.f;
            float A = dotv<HD>(g, vj);
            float dS = p * ((A - Ti) + (tb - t) * (A - bi)), dT = -p * (A - bi);
#pragma unroll
            for (int c = 0; c < HD; c++) {
                dq[c] += a.scale * dS * kj[c];
                if (PX) dr[c] += dT * kj[c];
            }
        }
    }
    if (!live) return;
    float *dqo = ROW(a.dq, a.ld_dqkv, b, i, T, h);
#pragma unroll
    for (int c = 0; c < HD; c++) dqo[c] += dq[c];
    if (PX) {
        float *dro = ROW(a.dr, a.ld_out, b, i, T, h);
#pragma unroll
        for (int c = 0; c < HD; c++) dro[c] += dr[c];
    }
    Tv[s] = Ti, bv[s] = bi;
}

// keys: dk, dv (a thread per key j, rows i >= j stream through shared memory)
template <int HD, bool PX>
__global__ void attn_bwd_kv_kernel(AttnArgs a, int TK, const float *Tv, const float *bv) {
    extern __shared__ float sm[];
    float *sQ = sm, *sG = sm + TK * HD, *sR = sm + 2 * TK * HD;
    float4 *sS = reinterpret_cast<float4 *>(sm + 3 * TK * HD); // per row: lse, tbar, T, b
    const int T = a.T, H = a.H, W = a.window;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int j0 = blockIdx.x * blockDim.x, j = j0 + threadIdx.x;
    const bool live = j < T;
    const int iend = W > 0 ? min(T - 1, j0 + (int)blockDim.x - 1 + W - 1) : T - 1;
    float k[HD], ks[HD], v[HD], dk[HD], dv[HD];
#pragma unroll
    for (int c = 0; c < HD; c++) {
        k[c] = live ? ROW(a.k, a.ld_in, b, j, T, h)[c] : 0.f;
        ks[c] = (a.scale * LOG2E) * k[c]; // p = 2^(q.ks - lse log2 e)
        v[c] = live ? ROW(a.v, a.ld_in, b, j, T, h)[c] : 0.f;
        dk[c] = dv[c] = 0;
    }
    const size_t sb = ((size_t)b * H + h) * T;
    for (int r0 = j0; r0 <= iend; r0 += TK) {
        __syncthreads();
        load_tile<HD>(sQ, a.q, a.ld_in, b, h, r0, T, TK);
        load_tile<HD>(sG, a.dout, a.ld_out, b, h, r0, T, TK);
        if (PX) load_tile<HD>(sR, a.r, a.ld_r, b, h, r0, T, TK);
        for (int x = threadIdx.x; x < TK; x += blockDim.x) {
            int t = r0 + x;
            sS[x] = t < T ? make_float4(a.lse[sb + t] * LOG2E, PX ? a.tbar[sb + t] : 0.f, Tv[sb + t], bv[sb + t])
                          : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        __syncthreads();
        if (!live) continue;
        int ia = max(r0, j), ib = min(r0 + TK - 1, T - 1);
        if (W > 0) ib = min(ib, j + W - 1);
        for (int i = ia; i <= ib; i++) {
            int x = i - r0;
            float qi[HD], gi[HD], ri[HD];
            ldrow<HD>(qi, sQ + x * HD);
            ldrow<HD>(gi, sG + x * HD);
            if (PX) ldrow<HD>(ri, sR + x * HD);
            const float4 sc = sS[x];
            // small heads keep a scaled copy of k; large ones (register pressure) scale the dot
            float p = HD <= 32 ? cu_ex2(dotv<HD>(qi, ks) - sc.x)
                               : cu_ex2((a.scale * LOG2E) * dotv<HD>(qi, k) - sc.x);
            float t = PX ? dotv<HD>(ri, k) : 0.f;
            float A = dotv<HD>(gi, v);
            float dS = p * ((A - sc.z) + (sc.y - t) * (A - sc.w)), dT = -p * (A - sc.w);
            float w = p * (1.f + sc.y - t);
#pragma unroll
            for (int c = 0; c < HD; c++) {
                dk[c] += a.scale * dS * qi[c];
                if (PX) dk[c] += dT * ri[c];
                dv[c] += w * gi[c];
            }
        }
    }
    if (!live) return;
    float *dko = ROW(a.dk, a.ld_dqkv, b, j, T, h), *dvo = ROW(a.dv, a.ld_dqkv, b, j, T, h);
#pragma unroll
    for (int c = 0; c < HD; c++) dko[c] += dk[c], dvo[c] += dv[c];
}

static int tile_keys(int hd) { return hd <= 32 ? 64 : 2048 / hd; }

template <int HD, bool PX> static void fwd(const AttnArgs *a) {
    int TK = tile_keys(HD);
    dim3 grid(cu_blocks(a->T, QB), a->B * a->H);
    size_t sm = 2 * (size_t)TK * HD * sizeof(float);
    attn_fwd_kernel<HD, PX><<<grid, QB, sm, cu.stream>>>(*a, TK);
    CKL();
}

template <int HD, bool PX> static void bwd(const AttnArgs *a) {
    int TK = tile_keys(HD);
    size_t n = (size_t)a->B * a->H * a->T;
    float *Tv = a->scratch ? a->scratch : cu_scratch(2 * n), *bv = Tv + n;
    dim3 grid(cu_blocks(a->T, QB), a->B * a->H);
    attn_bwd_q_kernel<HD, PX><<<grid, QB, 2 * (size_t)TK * HD * sizeof(float), cu.stream>>>(
        *a, TK, Tv, bv);
    CKL();
    size_t sm = (3 * (size_t)TK * HD + 4 * (size_t)TK) * sizeof(float);
    attn_bwd_kv_kernel<HD, PX><<<grid, QB, sm, cu.stream>>>(*a, TK, Tv, bv);
    CKL();
}

typedef void (*AttnFn)(const AttnArgs *);

template <bool BACK> static AttnFn pick(int hd, bool px) {
#define CASE(D)                                                                                 \
    case D: return BACK ? (px ? bwd<D, true> : bwd<D, false>) : (px ? fwd<D, true> : fwd<D, false>);
    switch (hd) {
        CASE(4) CASE(8) CASE(16) CASE(32) CASE(64) CASE(128)
    }
#undef CASE
    return nullptr;
}

static void check_args(const AttnArgs *a, bool back) {
    if (!pick<false>(a->hd, false)) {
        fprintf(stderr, "CUDA attention: head dim %d is not supported (4, 8, 16, 32, 64, 128)\n",
                a->hd);
        exit(1);
    }
    if (back && (a->rope_rot || a->dbias) && !a->grads_write)
        cu_die(__FILE__, __LINE__, "attention_backward", "AttnArgs.rope_rot and dbias need grads_write");
    const int HD = a->H * a->hd;
    if (back && a->dbias && (a->dk != a->dq + HD || a->dv != a->dk + HD || a->ld_dqkv != 3 * HD))
        cu_die(__FILE__, __LINE__, "attention_backward",
               "AttnArgs.dbias needs dq, dk, dv side by side in rows of 3*H*hd");
}

void cu_attn_bias(const AttnArgs *a) {
    if (a->dbias) cu_grad_colsum(a->dbias, a->dq, nullptr, nullptr, a->B * a->T, 3 * a->H * a->hd);
}

void cu_attn_rope(const AttnArgs *a, float sgn) {
    if (!a->rope_rot) return;
    const int N = a->B * a->T, rot = a->rope_rot;
    const bool f = sgn > 0;
    float *x[3] = {const_cast<float *>(f ? a->q : a->dq), const_cast<float *>(f ? a->k : a->dk),
                   a->r && a->rope_r && !(f && a->r_roped) ? const_cast<float *>(f ? a->r : a->dr) : nullptr};
    const int ld[3] = {f ? a->ld_in : a->ld_dqkv, f ? a->ld_in : a->ld_dqkv, f ? a->ld_r : a->ld_out};
    const int HD = a->H * a->hd;
    if (x[1] == x[0] + HD) { // q and k side by side in one row (the model's fused q|k|v): one pass
        cu_rope_run(x[0], N, a->T, 2 * a->H, a->hd, ld[0], rot, a->rope_base, sgn);
        x[0] = x[1] = nullptr;
    }
    for (int i = 0; i < 3; i++)
        if (x[i]) cu_rope_run(x[i], N, a->T, a->H, a->hd, ld[i], rot, a->rope_base, sgn);
}

static void attention_forward(const AttnArgs *args) {
    const AttnArgs s = attn_strides(args), *a = &s;
    check_args(a, false);
    if (a->T == 0 || a->B == 0) return;
    cu_attn_rope(a, 1.f);
    pick<false>(a->hd, a->r != nullptr)(a);
}
// grads_write on the scalar kernels (which accumulate): the gradients' head columns zeroed first
__global__ void zero_rows_kernel(float *x, int ld, long N, int width) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < N * width) x[(i / width) * ld + i % width] = 0.f;
}
static void zero_rows(float *x, int ld, long N, int width) {
    zero_rows_kernel<<<cu_blocks(N * width, 256), 256, 0, cu.stream>>>(x, ld, N, width);
    CKL();
}
static void attention_backward(const AttnArgs *args) {
    const AttnArgs s = attn_strides(args), *a = &s;
    check_args(a, true);
    if (a->T == 0 || a->B == 0) return;
    if (a->grads_write) {
        const long N = (long)a->B * a->T;
        float *g[4] = {a->dq, a->dk, a->dv, a->r ? a->dr : nullptr};
        for (int i = 0; i < 4; i++)
            if (g[i]) zero_rows(g[i], i == 3 ? a->ld_out : a->ld_dqkv, N, a->H * a->hd);
    }
    pick<true>(a->hd, a->r != nullptr)(a);
    cu_attn_rope(a, -1.f);
    cu_attn_bias(a);
}

// bf16: tensor cores where attention_tc_cuda.cu has the head dim, else the scalar kernels
static void attention_forward_bf16(const AttnArgs *a) {
    if (!cu_attention_tc(a, 0)) attention_forward(a);
}
static void attention_backward_bf16(const AttnArgs *a) {
    const AttnArgs s = attn_strides(a);
    check_args(&s, true);
    if (!cu_attention_tc(a, 1)) attention_backward(a);
}

void cu_fill_attention(Ops *o, int precision) {
    o->attention_forward = precision == 2 ? attention_forward_bf16 : attention_forward;
    o->attention_backward = precision == 2 ? attention_backward_bf16 : attention_backward;
}
