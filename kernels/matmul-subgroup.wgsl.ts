// Batched matmul C[b] = op(A[b]) · op(B[b]) (+ bias[n]) for CPU adapters whose subgroups are 8
// lanes wide (lavapipe): a workgroup is one subgroup, with no workgroup memory and no barrier.
// Lane l computes `rows` rows × 4 columns of C (columns col0 + 4l … col0 + 4l + 3, so the
// subgroup covers 32 columns; with two column groups also col0 + 32 + 4l … + 3, 64 columns), all
// lanes the same rows. Every step of s along K (s = 2, or 4 with
// transposed B: SubgroupGemmStep), each lane loads its s × 4 block of B and a share of the rows × s
// block of A — rows/8 vectors, distinct in every lane — and the A values reach all lanes by
// subgroupBroadcast.
//
// Why this shape on lavapipe: it runs a subgroup as one 8-wide SIMD program, but every load or
// store whose address differs per lane as one scalar access per lane and component (with a bounds
// check); a workgroup barrier turns the kernel into coroutines whose live values sit in memory.
// The register-tiled kernel (./matmul.wgsl.ts) pays for both: each lane reads its A and B slab
// values from workgroup memory, and lanes of the same row read the same A values again. Here an A
// value is loaded once and broadcast (an extract and a splat), and B is read straight from the
// buffer, once per lane that needs it: 1024³ ran at 17–24 GFLOP/s against 10–12 on 2 cores.
// GPUs keep the register-tiled kernel.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { GEMM_BLOCK_WGSL, gemmGrid, type MatmulVariant, vectorOperandLoads } from './matmul.wgsl.ts';
import { storeLoop } from './register-tile.ts';
import { uniformLayout } from './uniform-layout.ts';

/** Lanes per subgroup (and threads per workgroup) this kernel is written for. */
export const SUBGROUP_GEMM_LANES = 8;
/** Columns of C per lane: one vec4. */
const COLUMNS_PER_LANE = 4;

/** Rows of C per workgroup: a multiple of 8 (each lane loads rows/8 of A's vectors per K step). */
export type SubgroupGemmRows = 8 | 16 | 32;

/**
 * Reduction values per loop step. On lavapipe a loop body of more than about 100 vec4 FMAs (32
 * rows × 4 steps is 128) no longer fits the CPU's decoded-instruction cache: steps of 2 measured
 * 1.1–1.4× faster for untransposed B by the medians of interleaved runs (1024³: 87 → 79 and
 * 120 → 86 ms; Winograd's batched 64 × 64 · 64 × 4096 × 16 transposed-A: 30 → 25 ms; the fastest
 * repetitions within the VM's noise). Transposed B loads its lane's 4 columns as vectors along K,
 * and as vec2s they cost more than the smaller body saves, so it keeps 4.
 */
export type SubgroupGemmStep = 2 | 4;

/** Columns of C per workgroup in one column group. */
export const SUBGROUP_GEMM_COLUMNS = SUBGROUP_GEMM_LANES * COLUMNS_PER_LANE;

/**
 * Column groups of a subgroup GEMM: 2 gives lane l the columns col0 + 4l … + 3 and col0 + 32 +
 * 4l … + 3 (64 columns a workgroup), so each A value a lane receives by subgroupBroadcast feeds
 * twice the FMAs. On lavapipe every load is a per-lane scalar access with its own bounds check
 * (Mesa 25's gallivm), which sets the speed; 32 rows × 2 groups load 0.375 values per 8-lane FMA
 * against 0.5 with one group, 1024³ 21 → 30 GFLOP/s on 2 cores (more rows or groups spill).
 */
export type SubgroupGemmColumnGroups = 1 | 2;

/**
 * Column groups for an N-column output: 2 where B is untransposed and N fills a 64-column tile
 * (lavapipe, interleaved medians on 2 cores: 1024³ 100 → 77 ms, 4096 × 1024 · 1024² 309 → 269,
 * Winograd's batched GEMMs 1.14–1.21×, attention's P·V 1.25×); transposed B loads its lane's
 * columns as vectors along K, and a second group measured no faster (qKᵀ 0.84×, a 1×1 conv's
 * weight gradient 0.99×), so it keeps one.
 */
export function subgroupGemmColumnGroups(N: number, transB: boolean): SubgroupGemmColumnGroups {
  return !transB && N >= 2 * SUBGROUP_GEMM_COLUMNS ? 2 : 1;
}

/**
 * The order a subgroup GEMM's workgroups take C's blocks in. Lavapipe hands workgroups to its
 * threads in index order, x fastest, so neighbouring workgroups share the block that x does not
 * change: `columns` (x over column blocks) shares a row block and streams all of B (K × N) past it
 * once per row block; `rows` (x over row blocks) shares a column block and streams A (M × K) once
 * per column block. What is streamed stays in the cores' caches when it is the smaller operand,
 * so rows first where N ≥ 4M (interleaved medians on 2 cores: Winograd's batched GEMMs at 128²,
 * M 256 by N 4096 tiles, 1.13×; a square 1024³ and M > N were 2–5 % slower rows first).
 */
export type SubgroupGemmOrder = 'columns' | 'rows';

export function subgroupGemmOrder(M: number, N: number): SubgroupGemmOrder {
  return N >= 4 * M ? 'rows' : 'columns';
}

/**
 * Workgroups of a subgroup GEMM: gemmGrid over column blocks and row blocks (x the first of them
 * in `order`, y the other), z over the batch. Kernels decode it with subgroupGemmBlock.
 */
export function subgroupGemmWorkgroups(rows: SubgroupGemmRows, M: number, N: number, batch: number, groups: SubgroupGemmColumnGroups = 1, order: SubgroupGemmOrder = 'columns'): [number, number, number] {
  const columnBlocks = Math.ceil(N / (SUBGROUP_GEMM_COLUMNS * groups));
  const rowBlocks = Math.ceil(M / rows);
  return order === 'rows' ? gemmGrid(rowBlocks, columnBlocks, batch) : gemmGrid(columnBlocks, rowBlocks, batch);
}

/**
 * WGSL declaring `block`, a workgroup's (column block, row block, z index) in a
 * subgroupGemmWorkgroups grid of `order` (gemmBlock, with x and y swapped rows first), from the
 * WGSL counts `columnBlocks` and `rowBlocks`. Reads main's `wid` and `nwg`.
 */
export function subgroupGemmBlock(order: SubgroupGemmOrder, columnBlocks: string, rowBlocks: string): string {
  if (order === 'columns') return `let block = gemmBlock(wid, nwg, ${columnBlocks}, ${rowBlocks});`;
  return `let rowsFirst = gemmBlock(wid, nwg, ${rowBlocks}, ${columnBlocks});
  let block = vec3(rowsFirst.y, rowsFirst.x, rowsFirst.z);`;
}

/** The kernel key's mark of a grid order: none for the default, columns first. */
export const subgroupGemmOrderKey = (order: SubgroupGemmOrder) => (order === 'rows' ? '.rowsFirst' : '');

/**
 * Rows per workgroup for an M-row output: 32 (measured fastest on lavapipe: 32 × 4 accumulators a
 * lane), fewer when M is smaller, so narrow outputs do not compute padding.
 */
export function subgroupGemmRows(M: number): SubgroupGemmRows {
  return M > 16 ? 32 : M > 8 ? 16 : 8;
}

/**
 * The accumulators of a lane (acc0 … acc{rows−1}, a vec4 of its 4 columns each) and one step of
 * `kStep` (2 or 4) along K: acc_i += A[row0 + i][k + kk] · b{kk} for kk < kStep, where b{kk} are
 * the lane's B values at k + kk and a{r} (round r: rows 8r … 8r + 7) hold A as loaded across the
 * lanes, kStep values each. Untransposed, lane l's a{r} is row 8r + l at k … k + kStep − 1, so
 * A[row0 + i][k + kk] is component kk of lane i mod 8; transposed (`transA`), lane l's a{r} is
 * rows 8r + s⌊l/s⌋ … + s − 1 at k + l mod s (s = kStep), so it is component (i mod 8) mod s of
 * lane kk + s·⌊(i mod 8)/s⌋. Shared by the matmul and conv kernels that run on subgroups.
 */
export function subgroupGemmStep(rows: SubgroupGemmRows, transA: boolean, kStep: SubgroupGemmStep, groups: SubgroupGemmColumnGroups = 1): { declare: string; fmas: string } {
  const S = SUBGROUP_GEMM_LANES;
  const fmas: string[] = [];
  const declare: string[] = [];
  for (let i = 0; i < rows; i++) for (let g = 0; g < groups; g++) declare.push(`var ${accumulator(i, g)} = vec4<f32>();`);
  for (let kk = 0; kk < kStep; kk++) {
    for (let i = 0; i < rows; i++) {
      const r = Math.floor(i / S);
      const within = i % S;
      const source = transA
        ? `subgroupBroadcast(a${r}[${within % kStep}], ${kk + kStep * Math.floor(within / kStep)}u)`
        : `subgroupBroadcast(a${r}[${kk}], ${within}u)`;
      if (groups === 1) {
        fmas.push(`acc${i} = fma(vec4(${source}), b${kk}, acc${i});`);
        continue;
      }
      fmas.push(`{ let s = vec4(${source});`);
      for (let g = 0; g < groups; g++) fmas.push(`  ${accumulator(i, g)} = fma(s, ${bValue(kk, g)}, ${accumulator(i, g)});`);
      fmas.push('}');
    }
  }
  return { declare: declare.join(' '), fmas: fmas.join('\n    ') };
}

/** Lane accumulator of row i, column group g (acc{i} for the first group). */
const accumulator = (i: number, g: number) => (g === 0 ? `acc${i}` : `acc${i}_${g}`);
/** The lane's B values at k + kk for column group g (b{kk} for the first group). */
const bValue = (kk: number, g: number) => (g === 0 ? `b${kk}` : `b${kk}_${g}`);
/** The lane's first column in column group g (`col` its first in group 0). */
const groupColumn = (g: number) => (g === 0 ? 'col' : `col + ${SUBGROUP_GEMM_COLUMNS * g}u`);

/** matmul's uniforms (strides 0 broadcast a matrix). */
const SUBGROUP_MATMUL_PARAMS = uniformLayout({ M: 'u32', N: 'u32', K: 'u32', strideA: 'u32', strideB: 'u32', batches: 'u32' });

export interface SubgroupMatmulVariant extends Omit<MatmulVariant, 'vec4' | 'storeLoop'> {
  /** Adds bias[m] to row m (a 1×1 conv's per-channel bias) instead of `bias`'s bias[n]. */
  rowBias?: boolean;
  /** Adds residual[b, m, n], laid out as C. */
  residual?: boolean;
}

/**
 * The split sum's uniforms: A [batches, M, K] and B [batches, N, K] as matmul's (strides between
 * batches), and split z's share of the reduction: batches ⌊z / kSplits⌋·batchesPerSplit … (that
 * many, to `batches`) at k from (z mod kSplits)·kPerSplit (that many, to K; a multiple of 4).
 */
const SUBGROUP_SPLIT_SUM_PARAMS = uniformLayout({ M: 'u32', N: 'u32', K: 'u32', strideA: 'u32', strideB: 'u32', batches: 'u32', batchesPerSplit: 'u32', kPerSplit: 'u32', kSplits: 'u32' });

/**
 * A is [batchA, M, K] (or [batchA, K, M] when transA), B is [batchB, K, N] (or [batchB, N, K]),
 * C is [batch, M, N], all bound as vec4 arrays: the same shapes and strides as matmulKernel's vec4
 * variant (vectorizableGemm), whose conditions this kernel needs too. Bindings: a, b, c, then the
 * bias (bias[n] with `bias`, bias[m] with `rowBias`) and the residual when present. Dispatch:
 * subgroupGemmWorkgroups, in `order`.
 */
export const subgroupMatmulKernel = cachedKernelFactory(function subgroupMatmulKernel(v: SubgroupMatmulVariant, rows: SubgroupGemmRows, groups: SubgroupGemmColumnGroups = 1, order: SubgroupGemmOrder = 'columns'): KernelSource<typeof SUBGROUP_MATMUL_PARAMS> {
  return { params: SUBGROUP_MATMUL_PARAMS, ...subgroupGemm(v, rows, groups, false, order) };
});

/**
 * C[z] = Σ A[b] · B[b]ᵀ over split z's batches and K range (SUBGROUP_SPLIT_SUM_PARAMS): a 1×1
 * conv's weight gradient, dy [N, Cout, HW] · x [N, Cin, HW]ᵀ summed over the batch, in splits so no
 * f32 chain runs over the whole reduction (the caller adds the splits up). Bindings: a, b, c (one
 * [M, N] per split). Dispatch: subgroupGemmWorkgroups with the splits as the batch.
 */
export const subgroupSplitSumKernel = cachedKernelFactory(function subgroupSplitSumKernel(rows: SubgroupGemmRows): KernelSource<typeof SUBGROUP_SPLIT_SUM_PARAMS> {
  return { params: SUBGROUP_SPLIT_SUM_PARAMS, ...subgroupGemm({ transA: false, transB: true, bias: false }, rows, 1, true, 'columns') };
});

/** subgroupMatmulKernel's key and code, or with `splitSum` subgroupSplitSumKernel's. */
function subgroupGemm(v: SubgroupMatmulVariant, rows: SubgroupGemmRows, groups: SubgroupGemmColumnGroups, splitSum: boolean, order: SubgroupGemmOrder): { key: string; code: string } {
  if (v.bias && v.rowBias) throw new RangeError('subgroupMatmulKernel: a column bias or a row bias, not both');
  if (v.transB && groups > 1) throw new RangeError('subgroupMatmulKernel: transposed B takes one column group (subgroupGemmColumnGroups)');
  let binding = 4;
  const biasBinding = v.bias || v.rowBias ? binding++ : 0;
  const residualBinding = v.residual ? binding++ : 0;
  const S = SUBGROUP_GEMM_LANES;
  const rounds = rows / S;
  const aLoads: string[] = [];
  const bLoads: string[] = [];
  const kStep: SubgroupGemmStep = v.transB ? 4 : 2;
  // A: round r covers rows 8r … 8r + 7. Untransposed, lane l loads row 8r + l at k … k + kStep − 1;
  // transposed (rows contiguous), lane l loads rows 8r + s⌊l/s⌋ … + s − 1 at k + l mod s (s = kStep).
  for (let r = 0; r < rounds; r++) {
    aLoads.push(v.transA
      ? `let a${r} = loadA(row0 + ${S * r}u + ${kStep}u * (lane / ${kStep}u), k + lane % ${kStep}u);`
      : `let a${r} = loadA(row0 + ${S * r}u + lane, k);`);
  }
  // B: the lane's 4 columns at k + kk as b{kk}; transposed, four vec4s along k are transposed.
  if (v.transB) {
    for (let j = 0; j < 4; j++) bLoads.push(`let bt${j} = loadB(k, col + ${j}u);`);
    for (let kk = 0; kk < 4; kk++) bLoads.push(`let b${kk} = vec4(bt0[${kk}], bt1[${kk}], bt2[${kk}], bt3[${kk}]);`);
  } else {
    for (let g = 0; g < groups; g++) for (let kk = 0; kk < kStep; kk++) bLoads.push(`let ${bValue(kk, g)} = loadB(k + ${kk}u, ${groupColumn(g)});`);
  }
  const step = subgroupGemmStep(rows, v.transA, kStep, groups);
  // Accumulator s is row s / groups, column group s mod groups.
  const accumulators = Array.from({ length: rows * groups }, (_, s) => accumulator(Math.floor(s / groups), s % groups));
  const stores = storeLoop('vec4<f32>', accumulators, `store(row0 + s / ${groups}u, col + ${SUBGROUP_GEMM_COLUMNS}u * (s % ${groups}u), value);`);
  const flags = [v.bias && 'bias', v.rowBias && 'rowBias', v.residual && 'res', splitSum && 'splitSum'].filter(Boolean).map((f) => `.${f}`).join('');
  return {
    key: `matmulSubgroup.${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}${flags}.r${rows}${groups > 1 ? `.g${groups}` : ''}${subgroupGemmOrderKey(order)}`,
    code: wgsl`enable subgroups;
${splitSum ? SUBGROUP_SPLIT_SUM_PARAMS.wgsl : SUBGROUP_MATMUL_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> a: array<vec${kStep}<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
#if ${v.bias}
@group(0) @binding(${biasBinding}) var<storage, read> bias: array<vec4<f32>>;
#endif
#if ${v.rowBias}
@group(0) @binding(${biasBinding}) var<storage, read> bias: array<f32>;
#endif
#if ${v.residual}
@group(0) @binding(${residualBinding}) var<storage, read> residual: array<vec4<f32>>;
#endif
${vectorOperandLoads(v, kStep)}

fn store(m: u32, n: u32, value: vec4<f32>) {
  if (m >= u.M || n >= u.N) { return; }
  let o = ((batch * u.M + m) * u.N + n) / 4u;
  var r = value;
#if ${v.bias}
  r += bias[n / 4u];
#endif
#if ${v.rowBias}
  r += bias[m];
#endif
#if ${v.residual}
  r += residual[o];
#endif
  c[o] = r;
}

${GEMM_BLOCK_WGSL}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  ${subgroupGemmBlock(order, `(u.N + ${SUBGROUP_GEMM_COLUMNS * groups - 1}u) / ${SUBGROUP_GEMM_COLUMNS * groups}u`, `(u.M + ${rows - 1}u) / ${rows}u`)}
  batch = block.z;
  let row0 = block.y * ${rows}u;
  let col = block.x * ${SUBGROUP_GEMM_COLUMNS * groups}u + ${COLUMNS_PER_LANE}u * lane;
  ${step.declare}
#if ${splitSum}
  let split = block.z;
  let kBegin = (split % u.kSplits) * u.kPerSplit;
  let kEnd = min(kBegin + u.kPerSplit, u.K);
  let firstBatch = (split / u.kSplits) * u.batchesPerSplit;
  for (var summed = firstBatch; summed < min(firstBatch + u.batchesPerSplit, u.batches); summed++) {
  batch = summed;
  for (var k = kBegin; k < kEnd; k += ${kStep}u) {
#else
  for (var k = 0u; k < u.K; k += ${kStep}u) {
#endif
    ${aLoads.join('\n    ')}
    ${bLoads.join('\n    ')}
    ${step.fmas}
  }
#if ${splitSum}
  }
  batch = split;
#endif
  ${stores}
}`,
  };
}
