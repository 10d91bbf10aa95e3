// Batched matmul C[b] = op(A[b]) · op(B[b]) (+ bias[n]), op = identity or transpose, register-tiled:
// a workgroup of WG_X × WG_Y threads computes a (WG_Y·TM) × (WG_X·TN) tile of C, each thread a
// TM × TN block held in registers, stepping over K in TK-wide slabs staged in workgroup memory.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export interface MatmulTiling {
  /** Threads per workgroup along N (x) and M (y). */
  wgX: number;
  wgY: number;
  /** Outputs per thread along M and N. */
  tm: number;
  tn: number;
  /** K slab staged in workgroup memory per step. */
  tk: number;
}

export const DEFAULT_MATMUL_TILING: MatmulTiling = { wgX: 8, wgY: 8, tm: 8, tn: 8, tk: 16 };

/** Workgroup memory a tiling stages: a TK-wide slab of A (BM rows) and of B (BN columns). */
export const tilingWorkgroupBytes = (t: MatmulTiling) => 4 * t.tk * (t.wgY * t.tm + t.wgX * t.tn);

/**
 * Register tiles by problem size, measured on lavapipe (matmul 1024³: 4×4 per thread 2.4
 * GFLOP/s, 8×8 5.2, 8×16 7.0): the largest tile that the output fills, so small outputs do not
 * pay for padding, among those whose workgroup memory fits the device (`maxWorkgroupBytes`, the
 * device's maxComputeWorkgroupStorageSize; WebGPU guarantees 16 KiB). An explicit tuning
 * (bench --tune) replaces the choice.
 */
export function chooseTiling(M: number, N: number, tuned?: Partial<MatmulTiling>, maxWorkgroupBytes = 16384): MatmulTiling {
  if (tuned && Object.keys(tuned).length) {
    const t = { ...DEFAULT_MATMUL_TILING, ...tuned };
    if (tilingWorkgroupBytes(t) > maxWorkgroupBytes) {
      throw new RangeError(`tuned tiling ${JSON.stringify(t)} stages ${tilingWorkgroupBytes(t)} bytes of workgroup memory, over this device's ${maxWorkgroupBytes}; re-run npm run bench -- --tune on this adapter`);
    }
    return t;
  }
  const candidates: MatmulTiling[] = [];
  if (M >= 64 && N >= 128) candidates.push({ wgX: 8, wgY: 8, tm: 8, tn: 16, tk: 16 });
  // 32 to 63 rows (a 32-channel conv): a 32-row tile wastes nothing (5.0 vs 3.0 GFLOP/s on lavapipe).
  if (M >= 32 && N >= 256) candidates.push({ wgX: 16, wgY: 4, tm: 8, tn: 16, tk: 16 }, { wgX: 16, wgY: 4, tm: 8, tn: 8, tk: 16 });
  if (M >= 32 && N >= 32) candidates.push(DEFAULT_MATMUL_TILING);
  candidates.push({ wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 });
  return candidates.find((t) => tilingWorkgroupBytes(t) <= maxWorkgroupBytes) ?? candidates[candidates.length - 1];
}

export interface MatmulVariant {
  transA: boolean;
  transB: boolean;
  bias: boolean;
}

/**
 * A is [batchA, M, K] (or [batchA, K, M] when transA), B is [batchB, K, N] (or [batchB, N, K]),
 * C is [batch, M, N]; batchA/batchB are 1 (broadcast) or batch, given as batch strides (0 or M·K).
 * Bindings: a, b, c, and bias when `bias`.
 */
export function matmulKernel(v: MatmulVariant, t: MatmulTiling = DEFAULT_MATMUL_TILING): KernelSource {
  const BM = t.wgY * t.tm;
  const BN = t.wgX * t.tn;
  const threads = t.wgX * t.wgY;
  return {
    key: `matmul.${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}${v.bias ? '.bias' : ''}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}`,
    code: wgsl`
struct Params { M: u32, N: u32, K: u32, strideA: u32, strideB: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
#if ${v.bias}
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
// Tiles are stored K-major so the inner loop reads TM (TN) consecutive values.
var<workgroup> tileA: array<f32, ${t.tk * BM}>;
var<workgroup> tileB: array<f32, ${t.tk * BN}>;

fn loadA(batch: u32, m: u32, k: u32) -> f32 {
  if (m >= u.M || k >= u.K) { return 0.0; }
#if ${v.transA}
  return a[batch * u.strideA + k * u.M + m];
#else
  return a[batch * u.strideA + m * u.K + k];
#endif
}

fn loadB(batch: u32, k: u32, n: u32) -> f32 {
  if (k >= u.K || n >= u.N) { return 0.0; }
#if ${v.transB}
  return b[batch * u.strideB + n * u.K + k];
#else
  return b[batch * u.strideB + k * u.N + n];
#endif
}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let batch = wid.z;
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let row0 = wid.y * ${BM}u;
  let col0 = wid.x * ${BN}u;
  var acc: array<array<f32, ${t.tn}>, ${t.tm}>;
  for (var k0 = 0u; k0 < u.K; k0 += ${t.tk}u) {
    // Stage A[row0.., k0..] and B[k0.., col0..]; consecutive threads take consecutive elements
    // along the operand's contiguous axis.
    for (var e = lid; e < ${t.tk * BM}u; e += ${threads}u) {
#if ${v.transA}
      let kk = e / ${BM}u;
      let mm = e % ${BM}u;
#else
      let mm = e / ${t.tk}u;
      let kk = e % ${t.tk}u;
#endif
      tileA[kk * ${BM}u + mm] = loadA(batch, row0 + mm, k0 + kk);
    }
    for (var e = lid; e < ${t.tk * BN}u; e += ${threads}u) {
#if ${v.transB}
      let nn = e / ${t.tk}u;
      let kk = e % ${t.tk}u;
#else
      let kk = e / ${BN}u;
      let nn = e % ${BN}u;
#endif
      tileB[kk * ${BN}u + nn] = loadB(batch, k0 + kk, col0 + nn);
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
    if (m >= u.M) { break; }
    for (var j = 0u; j < ${t.tn}u; j++) {
      let n = col0 + tx * ${t.tn}u + j;
      if (n >= u.N) { break; }
#if ${v.bias}
      c[(batch * u.M + m) * u.N + n] = acc[i][j] + bias[n];
#else
      c[(batch * u.M + m) * u.N + n] = acc[i][j];
#endif
    }
  }
}`,
  };
}
