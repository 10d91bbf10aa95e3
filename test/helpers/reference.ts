// Plain-TypeScript float64 reference implementations: the independent ground truth for kernels.
export interface Nd {
  data: Float64Array;
  shape: number[];
}

export const numel = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

export function nd(shape: number[], fn: (idx: number[]) => number): Nd {
  const data = new Float64Array(numel(shape));
  const st = strides(shape);
  for (let i = 0; i < data.length; i++) {
    const idx = shape.map((_, d) => Math.floor(i / st[d]) % shape[d]);
    data[i] = fn(idx);
  }
  return { data, shape };
}

export function at(x: Nd, idx: number[]): number {
  const st = strides(x.shape);
  let o = 0;
  for (let d = 0; d < idx.length; d++) o += idx[d] * st[d];
  return x.data[o];
}

export function erf(x: number): number {
  // Series/continued fraction to full double precision is overkill; use a high-order expansion.
  const t = Math.abs(x);
  if (t < 3) {
    // Maclaurin series: erf(x) = 2/√π Σ (−1)^n x^(2n+1) / (n! (2n+1))
    let sum = 0;
    let term = t;
    for (let n = 0; n < 200; n++) {
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
      term *= (-t * t) / (n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Continued fraction for erfc at large |x|.
  let f = 0;
  for (let k = 60; k >= 1; k--) f = (k / 2) / (t + f);
  const erfc = Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f);
  return Math.sign(x) * (1 - erfc);
}

export const unaryRef: Record<string, (x: number, alpha: number) => number> = {
  relu: (x) => Math.max(x, 0),
  silu: (x) => x / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  exp: (x) => Math.exp(x),
  log: (x) => Math.log(x),
  sqrt: (x) => Math.sqrt(x),
  square: (x) => x * x,
  neg: (x) => -x,
  scale: (x, a) => a * x,
  addScalar: (x, a) => x + a,
  clampSymmetric: (x, a) => Math.min(a, Math.max(-a, x)),
  clampMin: (x, a) => Math.max(a, x),
  tanh: (x) => Math.tanh(x),
  logSigmoid: (x) => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x))),
  log1mexp: (x) => (x <= Math.LN2 ? Math.log(-Math.expm1(-x)) : Math.log1p(-Math.exp(-x))),
};

export function map(x: Nd, f: (v: number) => number): Nd {
  return { data: x.data.map(f), shape: [...x.shape] };
}

export function broadcast(a: Nd, b: Nd, f: (x: number, y: number) => number): Nd {
  const rank = Math.max(a.shape.length, b.shape.length);
  const pa = [...Array(rank - a.shape.length).fill(1), ...a.shape];
  const pb = [...Array(rank - b.shape.length).fill(1), ...b.shape];
  const shape = pa.map((d, i) => Math.max(d, pb[i]));
  const A = { data: a.data, shape: pa };
  const B = { data: b.data, shape: pb };
  return nd(shape, (idx) => f(at(A, idx.map((c, i) => (pa[i] === 1 ? 0 : c))), at(B, idx.map((c, i) => (pb[i] === 1 ? 0 : c)))));
}

export function sumAxes(x: Nd, axes: number[], keep: boolean): Nd {
  const keptShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const out = new Float64Array(numel(keptShape));
  const st = strides(x.shape);
  const ost = strides(keptShape);
  for (let i = 0; i < x.data.length; i++) {
    let o = 0;
    for (let d = 0; d < x.shape.length; d++) {
      const c = Math.floor(i / st[d]) % x.shape[d];
      if (!axes.includes(d)) o += c * ost[d];
    }
    out[o] += x.data[i];
  }
  return { data: out, shape: keep ? keptShape : x.shape.filter((_, i) => !axes.includes(i)) };
}

export function softmaxRef(x: Nd, log: boolean): Nd {
  const n = x.shape[x.shape.length - 1];
  const out = new Float64Array(x.data.length);
  for (let r = 0; r < x.data.length / n; r++) {
    const row = x.data.subarray(r * n, r * n + n);
    const m = Math.max(...row);
    let s = 0;
    for (const v of row) s += Math.exp(v - m);
    for (let k = 0; k < n; k++) out[r * n + k] = log ? row[k] - m - Math.log(s) : Math.exp(row[k] - m) / s;
  }
  return { data: out, shape: [...x.shape] };
}

/** Batched matmul with NumPy-style batch broadcasting of a batch of 1. */
export function matmulRef(a: Nd, b: Nd, transA = false, transB = false): Nd {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const [M, K] = transA ? [a.shape[ra - 1], a.shape[ra - 2]] : [a.shape[ra - 2], a.shape[ra - 1]];
  const N = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  const batchA = numel(a.shape.slice(0, -2));
  const batchB = numel(b.shape.slice(0, -2));
  const batch = Math.max(batchA, batchB);
  const batchShape = batchA >= batchB ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const out = new Float64Array(batch * M * N);
  for (let p = 0; p < batch; p++) {
    const oa = (batchA === 1 ? 0 : p) * M * K;
    const ob = (batchB === 1 ? 0 : p) * K * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = transA ? a.data[oa + k * M + i] : a.data[oa + i * K + k];
          const bv = transB ? b.data[ob + j * K + k] : b.data[ob + k * N + j];
          s += av * bv;
        }
        out[(p * M + i) * N + j] = s;
      }
    }
  }
  return { data: out, shape: [...batchShape, M, N] };
}

export function permuteRef(x: Nd, perm: number[]): Nd {
  const shape = perm.map((p) => x.shape[p]);
  return nd(shape, (idx) => {
    const src = new Array<number>(x.shape.length);
    perm.forEach((p, i) => (src[p] = idx[i]));
    return at(x, src);
  });
}

export function sliceRef(x: Nd, starts: number[], ends: number[]): Nd {
  const shape = x.shape.map((_, i) => ends[i] - starts[i]);
  return nd(shape, (idx) => at(x, idx.map((c, i) => c + starts[i])));
}

export function concatRef(xs: Nd[], axis: number): Nd {
  const shape = [...xs[0].shape];
  shape[axis] = xs.reduce((p, t) => p + t.shape[axis], 0);
  return nd(shape, (idx) => {
    let c = idx[axis];
    for (const t of xs) {
      if (c < t.shape[axis]) return at(t, idx.map((v, i) => (i === axis ? c : v)));
      c -= t.shape[axis];
    }
    throw new Error('unreachable');
  });
}

/** Cross-correlation (PyTorch's Conv2d(padding=pad, stride)), NCHW / OIHW, in float64: out[i, j] = Σ w[a, b] · x[i·stride + a − pad, j·stride + b − pad]. */
export function conv2dRef(x: Nd, w: Nd, pad: number, bias?: Nd, residual?: Nd, stride = 1): Nd {
  const [N, C, H, W] = x.shape;
  const [O, , k] = w.shape;
  const Ho = Math.floor((H + 2 * pad - k) / stride) + 1;
  const Wo = Math.floor((W + 2 * pad - k) / stride) + 1;
  return nd([N, O, Ho, Wo], ([n, o, i, j]) => {
    let s = bias ? bias.data[o] : 0;
    for (let c = 0; c < C; c++) {
      for (let a = 0; a < k; a++) {
        for (let b = 0; b < k; b++) {
          const y = i * stride + a - pad;
          const xx = j * stride + b - pad;
          if (y < 0 || xx < 0 || y >= H || xx >= W) continue;
          s += w.data[((o * C + c) * k + a) * k + b] * x.data[((n * C + c) * H + y) * W + xx];
        }
      }
    }
    return s + (residual ? residual.data[((n * O + o) * Ho + i) * Wo + j] : 0);
  });
}

export function groupNormRef(x: Nd, gamma: Nd, beta: Nd, groups: number, eps: number, scaleShift?: Nd, silu = false): Nd {
  const [N, C] = x.shape;
  const HW = x.data.length / (N * C);
  const cpg = C / groups;
  const out = new Float64Array(x.data.length);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      const base = (n * C + g * cpg) * HW;
      const cnt = cpg * HW;
      let m = 0;
      for (let i = 0; i < cnt; i++) m += x.data[base + i];
      m /= cnt;
      let v = 0;
      for (let i = 0; i < cnt; i++) v += (x.data[base + i] - m) ** 2;
      v /= cnt;
      for (let i = 0; i < cnt; i++) {
        const c = g * cpg + Math.floor(i / HW);
        let y = ((x.data[base + i] - m) / Math.sqrt(v + eps)) * gamma.data[c] + beta.data[c];
        if (scaleShift) y = y * (1 + scaleShift.data[n * 2 * C + c]) + scaleShift.data[n * 2 * C + C + c];
        if (silu) y = y / (1 + Math.exp(-y));
        out[base + i] = y;
      }
    }
  }
  return { data: out, shape: [...x.shape] };
}

export function adaptiveAvgPoolRef(x: Nd, oh: number, ow: number): Nd {
  const [N, C, H, W] = x.shape;
  return nd([N, C, oh, ow], ([n, c, i, j]) => {
    const r0 = Math.floor((i * H) / oh);
    const r1 = Math.ceil(((i + 1) * H) / oh);
    const c0 = Math.floor((j * W) / ow);
    const c1 = Math.ceil(((j + 1) * W) / ow);
    let s = 0;
    for (let r = r0; r < r1; r++) for (let q = c0; q < c1; q++) s += x.data[((n * C + c) * H + r) * W + q];
    return s / ((r1 - r0) * (c1 - c0));
  });
}

/** guided-diffusion QKVAttention(Legacy) on [N, 3·H·d, T] by the textbook formula. */
export function qkvAttentionRef(qkv: Nd, heads: number, legacy: boolean): Nd {
  const [N, C3, T] = qkv.shape;
  const d = C3 / (3 * heads);
  const C = heads * d;
  const get = (n: number, h: number, part: number, c: number, t: number) => {
    const row = legacy ? h * 3 * d + part * d + c : part * C + h * d + c;
    return qkv.data[(n * C3 + row) * T + t];
  };
  // Query t's weights over the keys, per (n, h, t): computed once and shared by the head's d
  // output channels (recomputed per channel, 300 tokens at d = 64 took 7.7 s a call).
  const weights = new Map<number, number[]>();
  const weightsOf = (n: number, h: number, t: number) => {
    const key = (n * heads + h) * T + t;
    let p = weights.get(key);
    if (!p) {
      const logits = Array.from({ length: T }, (_, s) => {
        let dot = 0;
        for (let k = 0; k < d; k++) dot += get(n, h, 0, k, t) * get(n, h, 1, k, s);
        return dot / Math.sqrt(d);
      });
      const m = Math.max(...logits);
      const e = logits.map((l) => Math.exp(l - m));
      const z = e.reduce((a, b) => a + b, 0);
      p = e.map((ei) => ei / z);
      weights.set(key, p);
    }
    return p;
  };
  return nd([N, C, T], ([n, ch, t]) => {
    const h = Math.floor(ch / d);
    const c = ch % d;
    return weightsOf(n, h, t).reduce((acc, pi, s) => acc + pi * get(n, h, 2, c, s), 0);
  });
}

/** F.interpolate(mode='bilinear', align_corners=False) by PyTorch's source-index formula. */
export function bilinearRef(x: Nd, oh: number, ow: number): Nd {
  const [N, C, H, W] = x.shape;
  const src = (o: number, inS: number, outS: number) => Math.max((o + 0.5) * (inS / outS) - 0.5, 0);
  return nd([N, C, oh, ow], ([n, c, i, j]) => {
    const sy = src(i, H, oh);
    const sx = src(j, W, ow);
    const y0 = Math.min(Math.floor(sy), H - 1);
    const x0 = Math.min(Math.floor(sx), W - 1);
    const y1 = Math.min(y0 + 1, H - 1);
    const x1 = Math.min(x0 + 1, W - 1);
    const ly = sy - y0;
    const lx = sx - x0;
    const v = (y: number, xx: number) => x.data[((n * C + c) * H + y) * W + xx];
    return (1 - ly) * ((1 - lx) * v(y0, x0) + lx * v(y0, x1)) + ly * ((1 - lx) * v(y1, x0) + lx * v(y1, x1));
  });
}
