// Batched matmul C[b] = op(A[b]) · op(B[b]) (+ bias[n]), op = identity or transpose, register-tiled:
// a workgroup of WG_X × WG_Y threads computes a (WG_Y·TM) × (WG_X·TN) tile of C, each thread a
// TM × TN block held in registers, stepping over K in TK-wide slabs staged in workgroup memory
// (the register-tile step of ./register-tile.ts, shared with the conv kernels).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { MAX_WORKGROUPS_PER_DIMENSION } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { accumulateStep, declareAccumulators, declareSlabs, fillSlab, fillSlabVec4, storeAccumulators } from './register-tile.ts';
import { uniformLayout } from './uniform-layout.ts';

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

/**
 * The grid of a GEMM: x over `columnBlocks`, y over `rowBlocks`, z over `z` (batch entries or
 * splits). Blocks past one dimension's 65535 workgroups fold into z (a batch of 32 ADM-256 images
 * is 2,097,152 columns in its first conv, 65,536 blocks of 32; a linear layer over 2,097,152
 * tokens as many rows): x then runs over ⌈columnBlocks / xFolds⌉ blocks, y over ⌈rowBlocks /
 * yFolds⌉ and z over z · xFolds · yFolds. Kernels decode it with GEMM_BLOCK_WGSL.
 */
export function gemmGrid(columnBlocks: number, rowBlocks: number, z: number): [number, number, number] {
  const xFolds = Math.max(1, Math.ceil(columnBlocks / MAX_WORKGROUPS_PER_DIMENSION));
  const yFolds = Math.max(1, Math.ceil(rowBlocks / MAX_WORKGROUPS_PER_DIMENSION));
  return [Math.ceil(columnBlocks / xFolds), Math.ceil(rowBlocks / yFolds), z * xFolds * yFolds];
}

/**
 * gemmBlock(wid, nwg, columnBlocks, rowBlocks): a workgroup's (column block, row block, z index)
 * in a gemmGrid, z = (index · yFolds + yFold) · xFolds + xFold, column block = xFold · nwg.x +
 * wid.x, row block = yFold · nwg.y + wid.y. ⌈columnBlocks / nwg.x⌉ is gemmGrid's xFolds again (its
 * smallest count whose x fits 65535), and likewise for rows; unfolded it is wid. The last fold's
 * spare blocks lie past the last column or row, where GEMM kernels load zeros and store nothing.
 */
export const GEMM_BLOCK_WGSL = `fn gemmBlock(wid: vec3<u32>, nwg: vec3<u32>, columnBlocks: u32, rowBlocks: u32) -> vec3<u32> {
  let xFolds = (columnBlocks + nwg.x - 1u) / nwg.x;
  let folds = xFolds * ((rowBlocks + nwg.y - 1u) / nwg.y);
  let fold = wid.z % folds;
  return vec3((fold % xFolds) * nwg.x + wid.x, (fold / xFolds) * nwg.y + wid.y, wid.z / folds);
}`;

/** Workgroups of a register-tiled GEMM (matmul and the conv kernels): gemmGrid's x over columns, y over rows, z as given. */
export function gemmWorkgroups(t: MatmulTiling, rows: number, columns: number, z = 1): [number, number, number] {
  return gemmGrid(Math.ceil(columns / (t.wgX * t.tn)), Math.ceil(rows / (t.wgY * t.tm)), z);
}

/** strideA, strideB: elements between batches of A and B (0 broadcasts one matrix to every batch). */
export const MATMUL_PARAMS = uniformLayout({ M: 'u32', N: 'u32', K: 'u32', strideA: 'u32', strideB: 'u32' });

/** Workgroup memory a tiling stages: a TK-wide slab of A (BM rows) and of B (BN columns). */
export const tilingWorkgroupBytes = (t: MatmulTiling) => 4 * t.tk * (t.wgY * t.tm + t.wgX * t.tn);

/**
 * Register tiles by problem size, measured on lavapipe (matmul 1024³: 4×4 per thread 2.4
 * GFLOP/s, 8×8 5.2, 8×16 7.0): the largest tile that the output fills, so small outputs do not
 * pay for padding, among those whose workgroup memory fits the device (`maxWorkgroupBytes`, the
 * device's maxComputeWorkgroupStorageSize; WebGPU guarantees 16 KiB).
 */
export function chooseTiling(M: number, N: number, maxWorkgroupBytes = 16384): MatmulTiling {
  const candidates: MatmulTiling[] = [];
  if (M >= 64 && N >= 128) candidates.push({ wgX: 8, wgY: 8, tm: 8, tn: 16, tk: 16 });
  // 32 to 63 rows (a 32-channel conv): a 32-row tile wastes nothing (5.0 vs 3.0 GFLOP/s on lavapipe).
  if (M >= 32 && N >= 256) candidates.push({ wgX: 16, wgY: 4, tm: 8, tn: 16, tk: 16 }, { wgX: 16, wgY: 4, tm: 8, tn: 8, tk: 16 });
  if (M >= 32 && N >= 32) candidates.push(DEFAULT_MATMUL_TILING);
  candidates.push({ wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 });
  return candidates.find((t) => tilingWorkgroupBytes(t) <= maxWorkgroupBytes) ?? candidates[candidates.length - 1];
}

/** Which per-shape rule picks a GEMM's tile: lavapipe's presets, the GPUs', or chooseTiling's (other CPU adapters). */
export type GemmPresets = 'lavapipe' | 'gpu' | 'portable';

/**
 * GPU tiles: 4 × 4 outputs per thread, the shape the WebGPU peers use (tfjs-backend-webgpu and
 * ONNX Runtime: 8 × 8 threads over 32 × 32 tiles) and the class that `difrep tune` keeps on GPUs
 * (64–256 threads of 4 × 4 to 8 × 8 outputs; on an H200 tuned tiles ran the ADM-256 forward 2.6×
 * faster than the 8 × 16 per thread chooseTiling gives, issue 13): 16 × 16 threads (64 × 64 tiles)
 * where the output fills one, else 8 × 8 (32 × 32), so small outputs still spread over many
 * workgroups. Chosen from that evidence, not yet timed on a GPU by this engine; `difrep tune`
 * replaces them for an adapter.
 */
export const GPU_TILINGS = {
  large: { wgX: 16, wgY: 16, tm: 4, tn: 4, tk: 16 },
  small: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 },
} as const satisfies Record<string, MatmulTiling>;

/**
 * The tile of an M × N GEMM output. A tuning (`difrep tune`, or the engine's `tuning` option)
 * wins for every output that fills at least one of its tiles; narrower outputs keep the per-shape
 * rule. Sizes a tuning leaves out are DEFAULT_MATMUL_TILING's, the tile the engine checked against the
 * device's limits (the per-shape rule's vary with the shape, so no check could vouch for them). That rule is, on lavapipe, 16 × 16 outputs per thread and 32-deep slabs (fewer
 * workgroup-memory reads and barriers per FMA; 2 cores, batch 16: conv 64→64 3×3 @16² forward 8.6
 * vs 7.2 GFLOP/s, weight gradient 7.4 vs 5.3), with 64-column tiles for 32–63 rows over fewer than
 * 1024 columns (a 32→32 conv's weight gradient: 6.0 vs 3.9), 32 × 32 tiles for 32–63 columns, and
 * 64 × 16 tiles for at most 16 columns; elsewhere chooseTiling. On GPUs, GPU_TILINGS. SwiftShader's
 * JIT loses the device on 16 × 16 tiles, so it (and any other CPU adapter) keeps chooseTiling.
 */
export function chooseGemmTiling(M: number, N: number, presets: GemmPresets, tuned?: Partial<MatmulTiling>, maxWorkgroupBytes = 16384): MatmulTiling {
  const builtIn = builtInGemmTiling(M, N, presets, maxWorkgroupBytes);
  if (!tuned || !Object.keys(tuned).length) return builtIn;
  const t = { ...DEFAULT_MATMUL_TILING, ...tuned };
  if (tilingWorkgroupBytes(t) > maxWorkgroupBytes) {
    throw new RangeError(`tuned tiling ${JSON.stringify(t)} stages ${tilingWorkgroupBytes(t)} bytes of workgroup memory, over this device's ${maxWorkgroupBytes}; re-run difrep tune on this adapter`);
  }
  return M >= t.wgY * t.tm && N >= t.wgX * t.tn ? t : builtIn;
}

/** chooseGemmTiling's per-shape rule for the adapter class, without a tuning. */
function builtInGemmTiling(M: number, N: number, presets: GemmPresets, maxWorkgroupBytes: number): MatmulTiling {
  if (presets === 'gpu') {
    const t = M >= 64 && N >= 64 ? GPU_TILINGS.large : GPU_TILINGS.small;
    if (tilingWorkgroupBytes(t) <= maxWorkgroupBytes) return { ...t };
  }
  if (presets === 'lavapipe') {
    const candidates: MatmulTiling[] = [];
    if (M >= 64 && N >= 64) candidates.push({ wgX: 4, wgY: 4, tm: 16, tn: 16, tk: 32 });
    if (M >= 32 && N >= 64 && N < 1024) candidates.push({ wgX: 4, wgY: 2, tm: 16, tn: 16, tk: 32 });
    // 32 to 63 columns, e.g. over a long reduction (the Winograd weight gradient of a 32→32 conv:
    // 32 × 32 outputs over 4,096 tiles, 24 vs 64 ms with the 64 × 64 tile).
    if (M >= 32 && N >= 32 && N < 64) candidates.push({ wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 32 });
    // At most 16 columns over many batch entries, e.g. an attention head's probabilities × values
    // ([128, 49, 49] × [128, 49, 16]): one 64 × 16 tile each, 5.5 vs 14 ms with the 32 × 32 tile;
    // 32 × 16 when there are exactly 32 rows (a sweep's 65 linear probes on a batch of 32, 10
    // classes, D = 1024: the sweep 39 → 33 s).
    if (M === 32 && N <= 16) candidates.push({ wgX: 2, wgY: 4, tm: 8, tn: 8, tk: 16 });
    if (M >= 32 && N <= 16) candidates.push({ wgX: 2, wgY: 8, tm: 8, tn: 8, tk: 16 });
    // At most 16 rows over many columns (those probes' weight gradients, [10 × 32] · [32 × 1024]):
    // 16 × 64 tiles, not chooseTiling's 32 × 32 (the sweep 50 → 39 s).
    if (M <= 16 && N >= 64) candidates.push({ wgX: 8, wgY: 2, tm: 8, tn: 8, tk: 16 });
    const fits = candidates.find((t) => tilingWorkgroupBytes(t) <= maxWorkgroupBytes);
    if (fits) return fits;
  }
  return chooseTiling(M, N, maxWorkgroupBytes);
}

export interface MatmulVariant {
  transA: boolean;
  transB: boolean;
  bias: boolean;
  /**
   * A, B and C bound as vec4 arrays: every operand's contiguous axis (K or M for A, N or K for B,
   * N for C) holds a multiple of 4 values and the tiling's tm, tn and tk are multiples of 4
   * (vectorizableGemm). One vec4 load or store moves four values, which on CPU adapters is a
   * gather or scatter of about the cost of one.
   */
  vec4: boolean;
  /** Store through one loop (storeLoop of ./register-tile.ts: CPU adapters). */
  storeLoop?: boolean;
}

/** Whether every operand's contiguous extent (K or M for A, N or K for B, N for C) is a multiple of 4. */
export function vectorizableOperands(M: number, N: number, K: number, transA: boolean, transB: boolean): boolean {
  return (transA ? M : K) % 4 === 0 && (transB ? K : N) % 4 === 0 && N % 4 === 0;
}

/** Whether a GEMM's shape and tiling allow the vec4 variant (MatmulVariant.vec4). */
export function vectorizableGemm(M: number, N: number, K: number, transA: boolean, transB: boolean, t: MatmulTiling): boolean {
  return vectorizableOperands(M, N, K, transA, transB) && t.tm % 4 === 0 && t.tn % 4 === 0 && t.tk % 4 === 0;
}

/**
 * A is [batchA, M, K] (or [batchA, K, M] when transA), B is [batchB, K, N] (or [batchB, N, K]),
 * C is [batch, M, N]; batchA/batchB are 1 (broadcast) or batch, given as batch strides (0 or M·K).
 * Bindings: a, b, c, and bias when `bias`.
 */
export const matmulKernel = cachedKernelFactory(function matmulKernel(v: MatmulVariant, t: MatmulTiling = DEFAULT_MATMUL_TILING): KernelSource<typeof MATMUL_PARAMS> {
  return {
    params: MATMUL_PARAMS,
    key: `matmul.${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}${v.bias ? '.bias' : ''}${v.vec4 ? '.vec4' : ''}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}${v.storeLoop ? '.storeLoop' : ''}`,
    code: v.vec4 ? vec4Body(v, t) : scalarBody(v, t),
  };
});

function header(v: MatmulVariant, element: string): string {
  return `${MATMUL_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> a: array<${element}>;
@group(0) @binding(2) var<storage, read> b: array<${element}>;
@group(0) @binding(3) var<storage, read_write> c: array<${element}>;
${v.bias ? `@group(0) @binding(4) var<storage, read> bias: array<${element}>;` : ''}`;
}

function mainHead(t: MatmulTiling): string {
  const BN = t.wgX * t.tn;
  return `${GEMM_BLOCK_WGSL}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let block = gemmBlock(wid, nwg, (u.N + ${BN - 1}u) / ${BN}u, (u.M + ${t.wgY * t.tm - 1}u) / ${t.wgY * t.tm}u);
  batch = block.z;
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let row0 = block.y * ${t.wgY * t.tm}u;
  let col0 = block.x * ${BN}u;
  ${declareAccumulators(t)}`;
}

function scalarBody(v: MatmulVariant, t: MatmulTiling): string {
  return wgsl`
${header(v, 'f32')}
${declareSlabs(t)}
var<private> batch: u32;

fn loadA(m: u32, k: u32) -> f32 {
  if (m >= u.M || k >= u.K) { return 0.0; }
#if ${v.transA}
  return a[batch * u.strideA + k * u.M + m];
#else
  return a[batch * u.strideA + m * u.K + k];
#endif
}

fn loadB(k: u32, n: u32) -> f32 {
  if (k >= u.K || n >= u.N) { return 0.0; }
#if ${v.transB}
  return b[batch * u.strideB + n * u.K + k];
#else
  return b[batch * u.strideB + k * u.N + n];
#endif
}

// value: the sum plus bias[n] where there is one, added by the caller (storeAccumulators).
fn store(m: u32, n: u32, value: f32) {
  if (m >= u.M || n >= u.N) { return; }
  c[(batch * u.M + m) * u.N + n] = value;
}

${mainHead(t)}
  for (var k0 = 0u; k0 < u.K; k0 += ${t.tk}u) {
    // Consecutive threads along each operand's contiguous axis: k for A (M × K) and Bᵀ (N × K).
    ${fillSlab(t, 'tileA', 'row0', !v.transA, (m, kk) => `loadA(${m}, k0 + ${kk})`)}
    ${fillSlab(t, 'tileB', 'col0', v.transB, (n, kk) => `loadB(k0 + ${kk}, ${n})`)}
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tk}u; kk++) {
      ${accumulateStep(t, 'kk')}
    }
    workgroupBarrier();
  }
  ${storeAccumulators(t, v.bias ? { column: (n) => `bias[min(${n}, u.N - 1u)]` } : {}, v.storeLoop)}
}`;
}

/**
 * `batch` (the batch entry, a private var) and the operand loads of the vectorised GEMMs (the
 * register-tiled vec4 variant and ./matmul-subgroup.wgsl.ts): loadA(m, k) is A[m, k … k+w−1] (or
 * Aᵀ's A[k, m … m+w−1]) for A bound as vecw's, w = `widthA` (4, or 2 for the subgroup GEMM's
 * steps of 2), and loadB(k, n) is B[k, n … n+3] (or Bᵀ's B[n, k … k+3]), zero past the edge (the
 * contiguous extents are multiples of 4, so a vector is wholly inside or outside).
 */
export function vectorOperandLoads(v: { transA: boolean; transB: boolean }, widthA: 2 | 4 = 4): string {
  const A = `vec${widthA}<f32>`;
  return wgsl`var<private> batch: u32;

fn loadA(m: u32, k: u32) -> ${A} {
  if (m >= u.M || k >= u.K) { return ${A}(); }
#if ${v.transA}
  return a[(batch * u.strideA + k * u.M + m) / ${widthA}u];
#else
  return a[(batch * u.strideA + m * u.K + k) / ${widthA}u];
#endif
}

fn loadB(k: u32, n: u32) -> vec4<f32> {
  if (k >= u.K || n >= u.N) { return vec4<f32>(); }
#if ${v.transB}
  return b[(batch * u.strideB + n * u.K + k) / 4u];
#else
  return b[(batch * u.strideB + k * u.N + n) / 4u];
#endif
}`;
}

/** The vec4 variant (its loads: vectorOperandLoads): each thread stores its tn columns as tn/4 vec4s. */
function vec4Body(v: MatmulVariant, t: MatmulTiling): string {
  // bias[n … n+3] for the vector stored at column n.
  const stores = storeAccumulators(t, v.bias ? { column: (n) => `bias[min(${n}, u.N - 4u) / 4u]` } : {}, v.storeLoop, 4);
  return wgsl`
${header(v, 'vec4<f32>')}
${declareSlabs(t)}
${vectorOperandLoads(v)}

// value: the sums plus bias[n … n+3] where there is one.
fn store(m: u32, n: u32, value: vec4<f32>) {
  if (m >= u.M || n >= u.N) { return; }
  c[((batch * u.M + m) * u.N + n) / 4u] = value;
}

${mainHead(t)}
  for (var k0 = 0u; k0 < u.K; k0 += ${t.tk}u) {
    ${fillSlabVec4(t, 'tileA', 'row0', v.transA ? 'slot' : 'k', (m, kk) => `loadA(${m}, k0 + ${kk})`)}
    ${fillSlabVec4(t, 'tileB', 'col0', v.transB ? 'k' : 'slot', (n, kk) => `loadB(k0 + ${kk}, ${n})`)}
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tk}u; kk++) {
      ${accumulateStep(t, 'kk')}
    }
    workgroupBarrier();
  }
  ${stores}
}`;
}
