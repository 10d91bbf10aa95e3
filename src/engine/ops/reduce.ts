// Sum and mean over axes. Forward kernel: kernels/reduce.wgsl.ts (one pass per run of adjacent
// reduced axes). Backward: broadcast the gradient back to the input's shape (times 1/n for mean).
import { grid1d } from '../../../kernels/flat-index.ts';
import { REDUCE_WORKGROUP, reduceRowsVec4Kernel, reduceSumKernel } from '../../../kernels/reduce.wgsl.ts';
import type { Engine } from '../engine.ts';
import { numel, type Shape, shapeString, type Tensor } from '../tensor.ts';
import { scale } from './elementwise.ts';
import { expand } from './layout.ts';
import { workgroupCombine } from './normalize.ts';

function normaliseAxes(axes: number[] | undefined, rank: number, label: string): number[] {
  // PyTorch 1.13's x.sum(dim=[]) reduces every axis, NumPy's none: either reading is a surprise.
  if (axes?.length === 0) throw new RangeError(`${label}: axes [] is ambiguous (PyTorch reduces every axis, NumPy none): leave axes out to reduce all of them`);
  const list = axes ?? [...Array(rank).keys()];
  const out = [...new Set(list.map((a) => (a < 0 ? a + rank : a)))].sort((x, y) => x - y);
  for (const a of out) {
    if (a < 0 || a >= rank) throw new RangeError(`${label}: axis out of range for rank ${rank}: ${axes}`);
  }
  return out;
}

/** Σ over [outer, n, inner] middle axis, times `scale`. */
function reduceMiddle(e: Engine, x: Tensor, outer: number, n: number, inner: number, scaleBy: number): Tensor {
  const out = e.empty([outer * inner], `sum(${x.label})`);
  // A workgroup per row only pays when there are few rows: on CPU adapters (lavapipe) its barriers
  // cost more than one thread summing a whole row (2048×256: 27 ms vs 1 ms). Tunable per adapter.
  const rowwise = inner === 1 && n >= 64 && outer < (e.tuning.reduce?.workgroupPerRowBelow ?? 16);
  // Otherwise a thread per output; rows of a multiple of 4 values (n counted in vec4s) read as vec4s.
  const vec4Rows = !rowwise && inner === 1 && n % 4 === 0 && n > 0;
  e.dispatch({
    kernel: vec4Rows ? reduceRowsVec4Kernel() : reduceSumKernel(rowwise, workgroupCombine(e)),
    bindings: [x, out],
    params: { outer, n: vec4Rows ? n / 4 : n, inner, scale: scaleBy },
    workgroups: rowwise ? grid1d(outer, 1) : grid1d(outer * inner, REDUCE_WORKGROUP),
  });
  return out;
}

function runSum(x: Tensor, axes: number[], scaleBy: number): Tensor {
  const e = x.engine;
  // Runs of adjacent axes, reduced from the last run to the first so earlier axes keep their place.
  const runs: [number, number][] = [];
  for (const a of axes) {
    const last = runs[runs.length - 1];
    if (last && last[1] === a) last[1] = a + 1;
    else runs.push([a, a + 1]);
  }
  let cur = x;
  let shape = [...x.shape];
  for (let r = runs.length - 1; r >= 0; r--) {
    const [s, t] = runs[r];
    const outer = numel(shape.slice(0, s));
    const n = numel(shape.slice(s, t));
    const inner = numel(shape.slice(t));
    const next = reduceMiddle(e, cur, outer, n, inner, r === 0 ? scaleBy : 1);
    if (cur !== x) cur.dispose();
    cur = next;
    shape = [...shape.slice(0, s), ...new Array(t - s).fill(1), ...shape.slice(t)];
  }
  if (cur === x) return reduceMiddle(e, x, 1, 1, x.size, scaleBy); // no axes: a copy
  return cur;
}

function reduce(x: Tensor, axes: number[] | undefined, keepDims: boolean, mean: boolean): Tensor {
  const e = x.engine;
  const ax = normaliseAxes(axes, x.rank, mean ? 'mean' : 'sum');
  const n = ax.reduce((p, a) => p * x.shape[a], 1);
  const emptyAxis = ax.find((a) => x.shape[a] === 0);
  if (mean && emptyAxis !== undefined) {
    throw new RangeError(`mean: axis ${emptyAxis} of ${x.label} ${shapeString(x.shape)} has size 0: a mean over no values`);
  }
  const flat = runSum(x, ax, mean ? 1 / n : 1);
  const keptShape = x.shape.map((d, i) => (ax.includes(i) ? 1 : d));
  const outShape = keepDims ? keptShape : x.shape.filter((_, i) => !ax.includes(i));
  const out = e.view(flat, outShape, `${mean ? 'mean' : 'sum'}(${x.label})`);
  flat.dispose();
  e.tape.record(mean ? 'mean' : 'sum', [x], [out], [], ([g]) => {
    const gk = e.view(g!, keptShape);
    const gx = expand(gk, x.shape);
    return [mean ? scale(gx, 1 / n) : gx];
  });
  return out;
}

export const sum = (x: Tensor, axes?: number[], keepDims = false) => reduce(x, axes, keepDims, false);
export const mean = (x: Tensor, axes?: number[], keepDims = false) => reduce(x, axes, keepDims, true);

/** Sums `g` over the axes along which `shape` was broadcast to g's shape (gradient of broadcasting). */
export function sumToShape(g: Tensor, shape: Shape): Tensor {
  if (g.size === numel(shape) && g.rank >= shape.length) return g.rank === shape.length ? g : g.engine.view(g, shape);
  const lead = g.rank - shape.length;
  if (lead < 0) throw new RangeError(`sumToShape: ${shapeString(g.shape)} cannot reduce to ${shapeString(shape)}`);
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const s = sum(g, axes, false);
  const out = g.engine.view(s, shape);
  s.dispose();
  return out;
}
