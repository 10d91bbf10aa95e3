// The workgroup-reduce helpers every row kernel shares (GroupNorm, LayerNorm's normalizeRows,
// softmax, reduceSum's rows): how a row's threads are laid out and how they combine partial sums —
// a workgroup tree, subgroup operations, or one thread per row — the vec4 load helpers, and the
// one-pass mean and variance of the normalisation kernels.
import { flatMain } from './flat-index.ts';

/**
 * How the threads of a row-reduction kernel split the rows: `workgroup`, a workgroup of WG
 * threads per row combining partial sums in workgroup memory by a tree (GPUs without subgroups);
 * `subgroup`, the same workgroup per row, each subgroup summing its threads at once
 * (subgroupAdd) and every thread then adding up the subgroups' sums in subgroup_id order — two
 * barriers instead of 2·log2(WG) + 2, and the same order, so the same result, in every thread and
 * every run; `thread`, one thread per row summing it alone (CPU adapters such as lavapipe, where
 * each workgroup barrier costs more than the arithmetic). Either way the body reads `row`, starts
 * at `lane` and steps by `STRIDE`, and combines with `rowSum` (`rowSum4` for four sums at once, or
 * `rowMax`). The kernel puts `enable` first in its module. Dispatch: `workgroup` and `subgroup` →
 * one workgroup per row; `thread` → rows / THREAD_MODE_WORKGROUP.
 */
export type RowParallelism = 'workgroup' | 'subgroup' | 'thread';

/**
 * Rows per workgroup in `thread` mode. CPU adapters run a workgroup on one core, so few rows in
 * large workgroups leave cores idle (GroupNorm of 256 channels @64², 32 rows: one workgroup of 64
 * would use one of two cores); 8 is one AVX2 vector of rows.
 */
export const THREAD_MODE_WORKGROUP = 8;

export function rowReduction(mode: RowParallelism, WG: number): { enable: string; decls: string; entry: string; stride: number } {
  if (mode === 'thread') {
    return {
      enable: '',
      decls: 'fn rowSum(v: f32, lane: u32) -> f32 { return v; }\nfn rowSum4(v: vec4<f32>, lane: u32) -> vec4<f32> { return v; }\nfn rowMax(v: f32, lane: u32) -> f32 { return v; }',
      entry: `@compute @workgroup_size(${THREAD_MODE_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.y * nwg.x * ${THREAD_MODE_WORKGROUP}u + gid.x;
  let lane = 0u;`,
      stride: 1,
    };
  }
  if (mode === 'subgroup') {
    // WebGPU's subgroups have at least 4 invocations, so a workgroup has at most WG / 4.
    const combine = (name: string, type: string, op: (a: string, b: string) => string, subgroupOp: string) => `fn ${name}(v: ${type}, lane: u32) -> ${type} {
  let s = ${subgroupOp}(v);
  if (subgroupLane == 0u) { ${name}Partials[subgroupIndex] = s; }
  workgroupBarrier();
  var r = ${name}Partials[0];
  for (var i = 1u; i < subgroupCount; i++) { r = ${op('r', `${name}Partials[i]`)}; }
  workgroupBarrier();
  return r;
}`;
    return {
      enable: 'enable subgroups;',
      decls: `var<private> subgroupIndex: u32;
var<private> subgroupCount: u32;
var<private> subgroupLane: u32;
var<workgroup> rowSumPartials: array<f32, ${WG / 4}>;
var<workgroup> rowSum4Partials: array<vec4<f32>, ${WG / 4}>;
var<workgroup> rowMaxPartials: array<f32, ${WG / 4}>;
${combine('rowSum', 'f32', (a, b) => `${a} + ${b}`, 'subgroupAdd')}
${combine('rowSum4', 'vec4<f32>', (a, b) => `${a} + ${b}`, 'subgroupAdd')}
${combine('rowMax', 'f32', (a, b) => `max(${a}, ${b})`, 'subgroupMax')}`,
      entry: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lane: u32,
        @builtin(subgroup_id) sgId: u32, @builtin(num_subgroups) sgCount: u32, @builtin(subgroup_invocation_id) sgLane: u32) {
  subgroupIndex = sgId;
  subgroupCount = sgCount;
  subgroupLane = sgLane;
  let row = wid.y * nwg.x + wid.x;`,
      stride: WG,
    };
  }
  // A tree over workgroup memory: log2(WG) halvings, a barrier after each.
  const tree = (name: string, type: string, scratch: string, op: (a: string, b: string) => string) => `fn ${name}(v: ${type}, lane: u32) -> ${type} {
  ${scratch}[lane] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { ${scratch}[lane] = ${op(`${scratch}[lane]`, `${scratch}[lane + s]`)}; }
    workgroupBarrier();
  }
  let r = ${scratch}[0];
  workgroupBarrier();
  return r;
}`;
  return {
    enable: '',
    decls: `var<workgroup> scratch: array<f32, ${WG}>;
var<workgroup> scratch4: array<vec4<f32>, ${WG}>;
${tree('rowSum', 'f32', 'scratch', (a, b) => `${a} + ${b}`)}
${tree('rowSum4', 'vec4<f32>', 'scratch4', (a, b) => `${a} + ${b}`)}
${tree('rowMax', 'f32', 'scratch', (a, b) => `max(${a}, ${b})`)}`,
    entry: flatMain(WG, 'row', true),
    stride: WG,
  };
}

/**
 * The lowest f32, −3.4028235e38, exactly (a hexadecimal literal): where a running maximum starts.
 * Above it (−3.402823e38), a row of PyTorch's mask value, masked_fill(finfo.min), gave NaN.
 */
export const LOWEST_F32 = '-0x1.fffffep+127f';

/**
 * The row kernels' loads of `width` (1 or 4) values: their WGSL type, and the sum and maximum of a
 * load's components (shared by the GroupNorm and softmax kernels).
 */
export const vectorType = (width: number) => (width === 4 ? 'vec4<f32>' : 'f32');
export const componentSum = (width: number, v: string) => (width === 4 ? `dot(${v}, vec4(1.0))` : v);
export const componentMax = (width: number, v: string) => (width === 4 ? `max(max(${v}.x, ${v}.y), max(${v}.z, ${v}.w))` : v);

/**
 * Iterations of a long f32 sum added up on their own before they join the total. One chain of n
 * additions rounds up to n·2⁻²⁴ of its magnitude (a thread per row on CPU adapters sums a whole
 * row: GroupNorm's rows at 256² hold 262,144 values, and its outputs were 5e-6 off, LayerNorm's 2.5e-5
 * over rows of that length); blocks of 256 make it about (256 + n/256)·2⁻²⁴.
 */
export const SUM_BLOCK = 256;

/**
 * WGSL for `body` at index = first, first + stride, … below `end`, in order, four indices an
 * iteration and the rest one at a time. Lavapipe blends every value a loop carries with the loop's
 * mask once per iteration; four steps an iteration measured GroupNorm+SiLU (256 ch @64², its
 * statistics and its apply loop) 2.8 → 2.35 ms by interleaved medians on 2 cores. The same steps in
 * the same order: results do not change. `body` must not `continue` or `break` (a copy's `continue`
 * would skip the copies after it).
 */
export function unrolledLoop(o: { index: string; first: string; end: string; stride: number; body: string }): string {
  const next = `${o.index}Unrolled`;
  return `{
    var ${next} = ${o.first};
    for (; ${next} + ${3 * o.stride}u < ${o.end}; ${next} += ${4 * o.stride}u) {
      ${[0, 1, 2, 3].map((k) => `{ let ${o.index} = ${next} + ${k * o.stride}u; ${o.body} }`).join('\n      ')}
    }
    for (var ${o.index} = ${next}; ${o.index} < ${o.end}; ${o.index} += ${o.stride}u) {
      ${o.body}
    }
  }`;
}

/**
 * WGSL for a sum over index = first, first + stride, … below `end` in blocks of SUM_BLOCK
 * iterations: each block runs `declare` (its own accumulators), then `body` for each of its
 * indices (named `index`; an unrolledLoop), then `join` (adds its accumulators to the totals).
 */
export function blockedSum(o: { index: string; first: string; end: string; stride: number; declare: string; body: string; join: string }): string {
  const span = SUM_BLOCK * o.stride;
  return `for (var blockStart = ${o.first}; blockStart < ${o.end}; blockStart += ${span}u) {
    ${o.declare}
    let blockEnd = min(blockStart + ${span}u, ${o.end});
    ${unrolledLoop({ index: o.index, first: 'blockStart', end: 'blockEnd', stride: o.stride, body: o.body })}
    ${o.join}
  }`;
}

/**
 * WGSL for d²·w (w ≤ 1) of `width` values: d·d·w, or where d·d overflows (values 1.8e19 apart,
 * whose variance still fits an f32) d·(d·w), which does not (d·d gave inf, or inf·0 = NaN on a
 * block's first value). Both orders round alike otherwise, so the statistics keep their rounding.
 */
function weightedSquare(d: string, w: string, width: number): string {
  const overflowed = width === 4
    ? `(bitcast<vec4<u32>>(${d} * ${d}) & vec4(0x7fffffffu)) == vec4(0x7f800000u)`
    : `(bitcast<u32>(${d} * ${d}) & 0x7fffffffu) == 0x7f800000u`;
  return `select(${d} * ${d} * (${w}), ${d} * (${d} * (${w})), ${overflowed})`;
}

/**
 * WGSL for the mean and 1/sqrt(variance + eps) of a row, in one pass over its `count` loads of
 * `width` values from x[base] (names of WGSL values; the row's threads start at `lane` and step by
 * `stride`, as rowReduction lays them out). The data are shifted by the row's first value, so the
 * means stay exact-ish when |mean| ≫ std, and the mean is kept as shift + offset: rounding it to
 * one f32 would lose the offset's low bits exactly then. Each of a thread's `width` streams (one
 * per component) keeps its sum s and M2 by Welford's update — a value v moves M2 by
 * (v − mean)²·cnt/(cnt + 1), mean = s/cnt before it — over each block of SUM_BLOCK loads, and
 * the blocks and then the streams are merged by Chan et al.'s rule
 * M2 = Σ M2ᵢ + Σ cntᵢ·(meanᵢ − mean)², for two parts M2 = M2₁ + M2₂ + d²·n₁n₂/(n₁ + n₂) with
 * d = mean₂ − mean₁ (never E[x²] − E[x]², which cancels); each weighted square is a
 * weightedSquare. Defines `shift`, `offset` and `rstd`; reads x.
 */
export function rowMeanAndRstd(width: number, stride: number, count: string, base: string, eps: string): string {
  const T = vectorType(width);
  return `let shift = x[${base}]${width === 4 ? '.x' : ''};
  var cnt = 0.0;
  var s = ${T}();
  var m2 = ${T}();
  ${blockedSum({
    index: 'i', first: 'lane', end: count, stride,
    declare: `var bc = 0.0;
    var bs = ${T}();
    var bm2 = ${T}();`,
    body: `let v = x[${base} + i] - shift;
      let delta = v - bs * (1.0 / max(bc, 1.0));
      bm2 += ${weightedSquare('delta', 'bc / (bc + 1.0)', width)};
      bs += v;
      bc += 1.0;`,
    join: `let d = bs * (1.0 / bc) - s * (1.0 / max(cnt, 1.0));
    m2 += bm2 + ${weightedSquare('d', 'cnt * bc / (cnt + bc)', width)};
    s += bs;
    cnt += bc;`,
  })}
  let total = f32(${count} * ${width}u);
  let offset = rowSum(${componentSum(width, 's')}, lane) / total;
  let dm = s * (1.0 / max(cnt, 1.0)) - offset;
  let rstd = inverseSqrt(rowSum(${componentSum(width, 'm2 + dm * (cnt * dm)')}, lane) / total + ${eps});`;
}
