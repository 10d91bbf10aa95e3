// WGSL fragments of the register-tiled GEMM step shared by the conv kernels: a workgroup of
// wgX × wgY threads computes a (wgY·tm) × (wgX·tn) tile, each thread a tm × tn block of named
// scalar accumulators, reading its column of the A slab and its row of the B slab from workgroup
// memory. The slabs are stored as vectors of `vectorWidth` consecutive rows (A) or columns (B):
// CPU adapters (lavapipe, SwiftShader) run a workgroup memory read whose address differs per
// invocation as one scalar load per invocation, so a vec4 read moves four values for the cost of
// about one; on GPUs it is a 128-bit load.
import type { MatmulTiling } from './matmul.wgsl.ts';

/** The widest vector (4, 2 or 1 floats) that divides `n` outputs per thread. */
const vectorWidth = (n: number) => (n % 4 === 0 ? 4 : n % 2 === 0 ? 2 : 1);

/** WGSL type of a slab element `width` floats wide. */
const slabElement = (width: number) => (width === 1 ? 'f32' : `vec${width}<f32>`);

/** A WGSL vector (or scalar) of `width` values. */
const slabValue = (width: number, values: string[]) => (width === 1 ? values[0] : `vec${width}(${values.join(', ')})`);

const lane = (v: string, width: number, i: number) => (width === 1 ? v : `${v}[${i % width}]`);

/** The two workgroup-memory slabs of one reduction step: tk rows of A's and B's vectors, K-major. */
export function declareSlabs(t: MatmulTiling): string {
  const wa = vectorWidth(t.tm);
  const wb = vectorWidth(t.tn);
  return `var<workgroup> tileA: array<${slabElement(wa)}, ${(t.tk * t.wgY * t.tm) / wa}>;
var<workgroup> tileB: array<${slabElement(wb)}, ${(t.tk * t.wgX * t.tn) / wb}>;`;
}

/**
 * The loop that fills one reduction step of `tileA` (rows) or `tileB` (columns): slab element e
 * goes to reduction row kk and slot g, consecutive threads along k when `alongK` (the operand is
 * contiguous in k), else along the slots; slot g holds `load(first + j, kk)` for its vector lanes
 * j, first = origin + width·g.
 */
export function fillSlab(t: MatmulTiling, slab: 'tileA' | 'tileB', origin: string, alongK: boolean, load: (index: string, kk: string) => string): string {
  const width = vectorWidth(slab === 'tileA' ? t.tm : t.tn);
  const slots = (slab === 'tileA' ? t.wgY * t.tm : t.wgX * t.tn) / width;
  const kk = alongK ? `e % ${t.tk}u` : `e / ${slots}u`;
  const g = alongK ? `e / ${t.tk}u` : `e % ${slots}u`;
  const values = Array.from({ length: width }, (_, j) => load(`first + ${j}u`, 'kk'));
  return `for (var e = lid; e < ${t.tk * slots}u; e += ${t.wgX * t.wgY}u) {
      let kk = ${kk};
      let first = ${origin} + ${width}u * (${g});
      ${slab}[kk * ${slots}u + ${g}] = ${slabValue(width, values)};
    }`;
}

/**
 * fillSlab for an operand bound as `array<vec4<f32>>` whose contiguous axis has a multiple of 4
 * values (one vec4 global load moves four; CPU adapters run a per-invocation load as a gather, so
 * this cuts the fill's loads fourfold). `along: 'slot'`: the contiguous axis is the slab's vector
 * axis (Bᵀ-free B, or Aᵀ), so each vec4 is one slab element; `load(first, kk)` returns it.
 * `along: 'k'`: the contiguous axis is k (A, or Bᵀ), so a thread loads a 4 (slots' lanes) × 4 (k)
 * block as four vec4s, `load(first + j, kk)` for its lanes j, and stores their transpose.
 * Needs a slab width of 4 and a tk divisible by 4.
 */
export function fillSlabVec4(t: MatmulTiling, slab: 'tileA' | 'tileB', origin: string, along: 'slot' | 'k', load: (index: string, kk: string) => string): string {
  const width = vectorWidth(slab === 'tileA' ? t.tm : t.tn);
  if (width !== 4 || t.tk % 4 !== 0) throw new RangeError(`register tile: vec4 fill needs 4-wide slabs and tk % 4 = 0 (${JSON.stringify(t)})`);
  const slots = (slab === 'tileA' ? t.wgY * t.tm : t.wgX * t.tn) / 4;
  const threads = t.wgX * t.wgY;
  if (along === 'slot') {
    return `for (var e = lid; e < ${t.tk * slots}u; e += ${threads}u) {
      let kk = e / ${slots}u;
      let g = e % ${slots}u;
      let first = ${origin} + 4u * g;
      ${slab}[kk * ${slots}u + g] = ${load('first', 'kk')};
    }`;
  }
  const blocks = (t.tk / 4) * slots;
  return `for (var e = lid; e < ${blocks}u; e += ${threads}u) {
      let kk = 4u * (e % ${t.tk / 4}u);
      let g = e / ${t.tk / 4}u;
      let first = ${origin} + 4u * g;
      let l0 = ${load('first', 'kk')};
      let l1 = ${load('first + 1u', 'kk')};
      let l2 = ${load('first + 2u', 'kk')};
      let l3 = ${load('first + 3u', 'kk')};
      ${slab}[kk * ${slots}u + g] = vec4(l0.x, l1.x, l2.x, l3.x);
      ${slab}[(kk + 1u) * ${slots}u + g] = vec4(l0.y, l1.y, l2.y, l3.y);
      ${slab}[(kk + 2u) * ${slots}u + g] = vec4(l0.z, l1.z, l2.z, l3.z);
      ${slab}[(kk + 3u) * ${slots}u + g] = vec4(l0.w, l1.w, l2.w, l3.w);
    }`;
}

export function declareAccumulators(t: MatmulTiling): string {
  const lines: string[] = [];
  for (let i = 0; i < t.tm; i++) for (let j = 0; j < t.tn; j++) lines.push(`var acc${i}_${j} = 0.0;`);
  return lines.join(' ');
}

/** One reduction step `kk` of the thread (tx, ty): tm values from tileA, tn from tileB, tm·tn FMAs. */
export function accumulateStep(t: MatmulTiling, kk: string): string {
  const wa = vectorWidth(t.tm);
  const wb = vectorWidth(t.tn);
  const slotsA = (t.wgY * t.tm) / wa;
  const slotsB = (t.wgX * t.tn) / wb;
  const lines: string[] = [];
  for (let i = 0; i < t.tm / wa; i++) lines.push(`let a${i} = tileA[${kk} * ${slotsA}u + ty * ${t.tm / wa}u + ${i}u];`);
  for (let j = 0; j < t.tn / wb; j++) lines.push(`let b${j} = tileB[${kk} * ${slotsB}u + tx * ${t.tn / wb}u + ${j}u];`);
  for (let i = 0; i < t.tm; i++) {
    for (let j = 0; j < t.tn; j++) {
      lines.push(`acc${i}_${j} = fma(${lane(`a${Math.floor(i / wa)}`, wa, i)}, ${lane(`b${Math.floor(j / wb)}`, wb, j)}, acc${i}_${j});`);
    }
  }
  return lines.join('\n      ');
}

/**
 * WGSL storing a GEMM's accumulators through one loop (CPU adapters): the WGSL `values` (of
 * `type`) are copied into a private array, and `body` runs for each in order, reading `s` (its
 * index) and `value`. Written out per accumulator instead, every store, and every residual or bias
 * read it makes, was a per-lane gather with branches of its own on lavapipe, and those were most
 * of the kernel's compile on a cold shader cache: the subgroup matmul with row bias and residual
 * (32 rows × 2 column groups) 6.1 → 0.6 s at the same speed, the register-tiled 3×3 conv with
 * bias and residual (16 × 16 outputs a thread) 12.1 → 0.7 s (that path's matmul 1024³ perhaps a
 * few per cent slower, within the VM's drift). GPUs keep the stores written out, their
 * accumulators in registers.
 */
export function storeLoop(type: string, values: readonly string[], body: string): string {
  return `var results: array<${type}, ${values.length}>;
  ${values.map((v, s) => `results[${s}] = ${v};`).join(' ')}
  for (var s = 0u; s < ${values.length}u; s++) {
    let value = results[s];
    ${body}
  }`;
}

/**
 * A bias added to the accumulators before they are stored: WGSL for the bias of output row `m`
 * (a conv's per-channel bias) or column `n` (matmul's bias[n]). Written-out stores read it once
 * per row or column of a thread's outputs (a storeLoop reads it in its loop, compiled once). On
 * lavapipe every buffer read is a per-lane gather with branches of its own: read once per output,
 * the 256 reads of a 16 × 16 register tile took 10 s of a conv kernel's compile on a cold shader
 * cache (15 s, against 4 s without a bias; once per row, 4.4 s).
 */
export interface HoistedBias {
  row?: (m: string) => string;
  column?: (n: string) => string;
}

/**
 * Calls `store(row, column, value)` for each accumulator of the thread (tx, ty), `width` (1 or 4)
 * neighbouring columns a value (a vec4 of them, stored at its first column), value = the
 * accumulators + their row's or column's `bias` when given: the sum a store adding the bias itself
 * would make, before whatever store adds next (a residual). With `loop`, through storeLoop, the
 * bias read in the loop.
 */
export function storeAccumulators(t: MatmulTiling, bias: HoistedBias = {}, loop = false, width: 1 | 4 = 1): string {
  const perRow = t.tn / width;
  const value = (i: number, v: number) => (width === 1 ? `acc${i}_${v}` : `vec4(${[0, 1, 2, 3].map((q) => `acc${i}_${width * v + q}`).join(', ')})`);
  const row = (i: number) => `row0 + ty * ${t.tm}u + ${i}u`;
  const column = (v: number) => `col0 + tx * ${t.tn}u + ${width * v}u`;
  if (loop) {
    const values: string[] = [];
    for (let i = 0; i < t.tm; i++) for (let v = 0; v < perRow; v++) values.push(value(i, v));
    const withBias = `value${bias.row ? ` + ${bias.row('m')}` : ''}${bias.column ? ` + ${bias.column('n')}` : ''}`;
    return storeLoop(width === 1 ? 'f32' : 'vec4<f32>', values, `let m = row0 + ty * ${t.tm}u + s / ${perRow}u;
    let n = col0 + tx * ${t.tn}u + ${width === 1 ? '' : `${width}u * `}(s % ${perRow}u);
    store(m, n, ${withBias});`);
  }
  const lines: string[] = [];
  if (bias.row) for (let i = 0; i < t.tm; i++) lines.push(`let rowBias${i} = ${bias.row(row(i))};`);
  if (bias.column) for (let v = 0; v < perRow; v++) lines.push(`let columnBias${v} = ${bias.column(column(v))};`);
  for (let i = 0; i < t.tm; i++) {
    for (let v = 0; v < perRow; v++) {
      lines.push(`store(${row(i)}, ${column(v)}, ${value(i, v)}${bias.row ? ` + rowBias${i}` : ''}${bias.column ? ` + columnBias${v}` : ''});`);
    }
  }
  return lines.join('\n  ');
}

/**
 * WGSL for the B slab of a register tile filled by threads that own fixed slots (fixedSlotFill):
 * `declare` (before the reduction loop) decodes each owned column once with `decode(column)`;
 * `fillRow` (inside the row loop `r`, from `firstRow` by `rowStep`) stores row r, each value
 * `value(decoded)`, or zeros where `inRange` is false.
 */
export function ownedColumnSlab(t: MatmulTiling, decode: (column: string) => string, value: (decoded: string) => string, inRange: string) {
  const threads = t.wgX * t.wgY;
  const wb = vectorWidth(t.tn);
  const slotsB = (t.wgX * t.tn) / wb;
  const fill = ownedColumnFill(t);
  const declare: string[] = [];
  const fillRow: string[] = [];
  for (let g = 0; g < fill.groups; g++) {
    declare.push(`let slot${g} = ${fill.rowStep > 1 ? `lid % ${slotsB}u` : `lid + ${g * threads}u`};`);
    const values: string[] = [];
    for (let j = 0; j < wb; j++) {
      declare.push(`let col${g}_${j} = ${decode(`col0 + slot${g} * ${wb}u + ${j}u`)};`);
      values.push(value(`col${g}_${j}`));
    }
    fillRow.push(`tileB[r * ${slotsB}u + slot${g}] = select(${slabElement(wb)}(), ${slabValue(wb, values)}, ${inRange});`);
  }
  return { declare: declare.join('\n  '), fillRow: fillRow.join('\n      '), firstRow: fill.rowStep > 1 ? `lid / ${slotsB}u` : '0u', rowStep: fill.rowStep };
}

/** How a tiling's threads fill its owned-column B slab (fixedSlotFill); throws for tilings that cannot (sizes not powers of two). */
export function ownedColumnFill(t: MatmulTiling): { groups: number; rowStep: number } {
  return fixedSlotFill(t.wgX * t.wgY, (t.wgX * t.tn) / vectorWidth(t.tn), t.tk);
}

/**
 * How the threads fill a tk × `slots` slab when each owns fixed slots (columns) for the whole
 * reduction: `groups` slots per thread (lid + g·threads), or, with more threads than slots, one
 * slot (lid mod slots) and every `rowStep`-th row from lid / slots (threads whose first row is
 * past tk fill nothing). Needs powers of two.
 */
function fixedSlotFill(threads: number, slots: number, tk: number): { groups: number; rowStep: number } {
  for (const [name, v] of [['threads', threads], ['slab slots', slots], ['tk', tk]] as const) {
    if (!Number.isInteger(Math.log2(v))) throw new RangeError(`register tile: ${name} ${v} must be a power of two`);
  }
  return { groups: Math.max(1, slots / threads), rowStep: Math.max(1, threads / slots) };
}
