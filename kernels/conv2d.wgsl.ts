// 2-D convolution (square kernel, zero padding, optional stride) on NCHW data as an implicit GEMM:
//   out[n] (Cout × P) = W (Cout × K) · im2col(x[n]) (K × P) + bias (+ residual[n])
// with P = Ho·Wo output pixels and K = Cin·k·k, every image's columns side by side (N·P columns), so the
// small feature maps of a batch (4×4, 8×8) still fill whole tiles. W is PyTorch's [Cout, Cin, k, k] read row-major, so the
// checkpoint's layout is the GEMM's A operand and the output lands in NCHW without a transpose.
// im2col is never materialised: the B-tile load decodes (ci, ky, kx) and (oy, ox), reads input
// pixel (oy·s + ky − pad, ox·s + kx − pad) and zero outside the image.
//
// Backward (used by src/engine/ops/conv2d.ts), stride s:
//   dx = conv(dilate_s(dy), W') with W'[ci, co, ky, kx] = W[co, ci, k−1−ky, k−1−kx], padding k−1−pad and
//        stride 1, where dilate_s puts s−1 zeros between dy's pixels (a stride-s conv's transpose):
//        the same kernel, reading A through the `transposedWeight` index map and B through
//        `inputDilation` (the zeros are never stored);
//   dW[co, (ci,ky,kx)] = Σ_n Σ_p dy[n, co, p] · x[n, ci, oy·s+ky−pad, ox·s+kx−pad]: conv2dWeightGradKernel.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';
import { DEFAULT_MATMUL_TILING, type MatmulTiling } from './matmul.wgsl.ts';

export interface Conv2dVariant {
  ksize: number;
  pad: number;
  bias: boolean;
  residual: boolean;
  /** Read W as the flipped, channel-swapped kernel of the input gradient (see header). */
  transposedWeight: boolean;
  /** Output pixel (oy, ox) reads around input pixel (oy·stride, ox·stride). */
  stride: number;
  /** Read x as if inputDilation − 1 zeros sat between its pixels (the input gradient of a strided conv). */
  inputDilation: number;
}

/**
 * Bindings: w, x, out, then bias and residual when present.
 * Uniforms: Cin (channels of x), H, W (of x as stored), Cout (channels of out), N (images), Ho, Wo (of out).
 */
export function conv2dKernel(v: Conv2dVariant, t: MatmulTiling = DEFAULT_MATMUL_TILING): KernelSource {
  const BM = t.wgY * t.tm;
  const BN = t.wgX * t.tn;
  const threads = t.wgX * t.wgY;
  const KK = v.ksize * v.ksize;
  let binding = 4;
  const biasBinding = v.bias ? binding++ : 0;
  const residualBinding = v.residual ? binding++ : 0;
  return {
    key: `conv2d.k${v.ksize}p${v.pad}s${v.stride}d${v.inputDilation}${v.bias ? '.bias' : ''}${v.residual ? '.res' : ''}${v.transposedWeight ? '.wT' : ''}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}`,
    code: wgsl`
struct Params { Cin: u32, H: u32, W: u32, Cout: u32, N: u32, Ho: u32, Wo: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if ${v.bias}
@group(0) @binding(${biasBinding}) var<storage, read> bias: array<f32>;
#endif
#if ${v.residual}
@group(0) @binding(${residualBinding}) var<storage, read> residual: array<f32>;
#endif
var<workgroup> tileA: array<f32, ${t.tk * BM}>;
var<workgroup> tileB: array<f32, ${t.tk * BN}>;

fn loadW(m: u32, kk: u32, K: u32) -> f32 {
  if (m >= u.Cout || kk >= K) { return 0.0; }
#if ${v.transposedWeight}
  // m = ci of the forward conv (its input channel), kk = (co, ky, kx) over the forward's Cout = u.Cin.
  let co = kk / ${KK}u;
  let r = kk % ${KK}u;
  return w[(co * u.Cout + m) * ${KK}u + ${KK - 1}u - r];
#else
  return w[m * K + kk];
#endif
}

// Column c = n·P + p of the batched im2col.
fn loadX(kk: u32, c: u32, K: u32, P: u32) -> f32 {
  if (kk >= K || c >= u.N * P) { return 0.0; }
  let n = c / P;
  let p = c % P;
  let ci = kk / ${KK}u;
  let r = kk % ${KK}u;
  let vy = i32(p / u.Wo) * ${v.stride} + i32(r / ${v.ksize}u) - ${v.pad};
  let vx = i32(p % u.Wo) * ${v.stride} + i32(r % ${v.ksize}u) - ${v.pad};
#if ${v.inputDilation > 1}
  // (vy, vx) is a pixel of the dilated input: only every inputDilation-th one is stored.
  if (vy < 0 || vx < 0 || vy % ${v.inputDilation} != 0 || vx % ${v.inputDilation} != 0) { return 0.0; }
  let yy = vy / ${v.inputDilation};
  let xx = vx / ${v.inputDilation};
#else
  let yy = vy;
  let xx = vx;
#endif
  if (yy < 0 || xx < 0 || yy >= i32(u.H) || xx >= i32(u.W)) { return 0.0; }
  return x[(n * u.Cin + ci) * u.H * u.W + u32(yy) * u.W + u32(xx)];
}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let P = u.Ho * u.Wo;
  let K = u.Cin * ${KK}u;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  var acc: array<array<f32, ${t.tn}>, ${t.tm}>;
  for (var k0 = 0u; k0 < K; k0 += ${t.tk}u) {
    for (var e = lid; e < ${t.tk * BM}u; e += ${threads}u) {
      let mm = e / ${t.tk}u;
      let kk = e % ${t.tk}u;
      tileA[kk * ${BM}u + mm] = loadW(row0 + mm, k0 + kk, K);
    }
    for (var e = lid; e < ${t.tk * BN}u; e += ${threads}u) {
      let kk = e / ${BN}u;
      let pp = e % ${BN}u;
      tileB[kk * ${BN}u + pp] = loadX(k0 + kk, col0 + pp, K, P);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tk}u; kk++) {
      var av: array<f32, ${t.tm}>;
      var bv: array<f32, ${t.tn}>;
      for (var i = 0u; i < ${t.tm}u; i++) { av[i] = tileA[kk * ${BM}u + ty * ${t.tm}u + i]; }
      for (var j = 0u; j < ${t.tn}u; j++) { bv[j] = tileB[kk * ${BN}u + tx * ${t.tn}u + j]; }
      for (var i = 0u; i < ${t.tm}u; i++) {
        for (var j = 0u; j < ${t.tn}u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${t.tm}u; i++) {
    let m = row0 + ty * ${t.tm}u + i;
    if (m >= u.Cout) { break; }
    for (var j = 0u; j < ${t.tn}u; j++) {
      let c = col0 + tx * ${t.tn}u + j;
      if (c >= u.N * P) { break; }
      let o = ((c / P) * u.Cout + m) * P + c % P;
      var r = acc[i][j];
#if ${v.bias}
      r += bias[m];
#endif
#if ${v.residual}
      r += residual[o];
#endif
      out[o] = r;
    }
  }
}`,
  };
}

/**
 * dW (Cout × Cin·k·k) = Σ_n dy[n] (Cout × P) · im2col(x[n])ᵀ (P × Cin·k·k): a GEMM whose reduction
 * runs over every output pixel of every image. Bindings: dy, x, dw. Uniforms: Cin, H, W (of x),
 * Cout, N, Ho, Wo (of dy).
 */
export function conv2dWeightGradKernel(ksize: number, pad: number, stride: number, t: MatmulTiling = DEFAULT_MATMUL_TILING): KernelSource {
  const BM = t.wgY * t.tm;
  const BN = t.wgX * t.tn;
  const threads = t.wgX * t.wgY;
  const KK = ksize * ksize;
  return {
    key: `conv2dWeightGrad.k${ksize}p${pad}s${stride}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}`,
    code: wgsl`
struct Params { Cin: u32, H: u32, W: u32, Cout: u32, N: u32, Ho: u32, Wo: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
var<workgroup> tileA: array<f32, ${t.tk * BM}>;
var<workgroup> tileB: array<f32, ${t.tk * BN}>;

// Reduction index q runs over (n, p): q = n·P + p.
fn loadDy(m: u32, q: u32, P: u32) -> f32 {
  if (m >= u.Cout || q >= u.N * P) { return 0.0; }
  let n = q / P;
  return dy[(n * u.Cout + m) * P + q % P];
}

fn loadX(q: u32, col: u32, P: u32, KW: u32) -> f32 {
  if (col >= KW || q >= u.N * P) { return 0.0; }
  let n = q / P;
  let p = q % P;
  let ci = col / ${KK}u;
  let r = col % ${KK}u;
  let yy = i32(p / u.Wo) * ${stride} + i32(r / ${ksize}u) - ${pad};
  let xx = i32(p % u.Wo) * ${stride} + i32(r % ${ksize}u) - ${pad};
  if (yy < 0 || xx < 0 || yy >= i32(u.H) || xx >= i32(u.W)) { return 0.0; }
  return x[(n * u.Cin + ci) * u.H * u.W + u32(yy) * u.W + u32(xx)];
}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let P = u.Ho * u.Wo;
  let Q = u.N * P;
  let KW = u.Cin * ${KK}u;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  var acc: array<array<f32, ${t.tn}>, ${t.tm}>;
  for (var q0 = 0u; q0 < Q; q0 += ${t.tk}u) {
    for (var e = lid; e < ${t.tk * BM}u; e += ${threads}u) {
      let mm = e / ${t.tk}u;
      let qq = e % ${t.tk}u;
      tileA[qq * ${BM}u + mm] = loadDy(row0 + mm, q0 + qq, P);
    }
    for (var e = lid; e < ${t.tk * BN}u; e += ${threads}u) {
      let cc = e % ${BN}u;
      let qq = e / ${BN}u;
      tileB[qq * ${BN}u + cc] = loadX(q0 + qq, col0 + cc, P, KW);
    }
    workgroupBarrier();
    for (var qq = 0u; qq < ${t.tk}u; qq++) {
      var av: array<f32, ${t.tm}>;
      var bv: array<f32, ${t.tn}>;
      for (var i = 0u; i < ${t.tm}u; i++) { av[i] = tileA[qq * ${BM}u + ty * ${t.tm}u + i]; }
      for (var j = 0u; j < ${t.tn}u; j++) { bv[j] = tileB[qq * ${BN}u + tx * ${t.tn}u + j]; }
      for (var i = 0u; i < ${t.tm}u; i++) {
        for (var j = 0u; j < ${t.tn}u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${t.tm}u; i++) {
    let m = row0 + ty * ${t.tm}u + i;
    if (m >= u.Cout) { break; }
    for (var j = 0u; j < ${t.tn}u; j++) {
      let c = col0 + tx * ${t.tn}u + j;
      if (c >= KW) { break; }
      dw[m * KW + c] = acc[i][j];
    }
  }
}`,
  };
}
