// Layout ops: reshape (a view), permute/transpose, slice, concat and broadcast-expand. All but
// reshape are the strided-copy kernel (kernels/copy.wgsl.ts) with different strides and offsets.
// sliceRows/concatRows move whole rows of axis 0 with buffer copies instead, which bind nothing.
import { COPY_WORKGROUP, stridedCopyKernel } from '../../../kernels/copy.wgsl.ts';
import { grid1d } from '../../../kernels/flat-index.ts';
import type { Engine } from '../engine.ts';
import { contiguousStrides, numel, type Shape, shapeString, type Tensor } from '../tensor.ts';
import { broadcastStrides, mergeBroadcastDims, vectorizeDims } from './elementwise.ts';
import { sumToShape } from './reduce.ts';

interface CopySpec {
  shape: Shape;
  inStrides: readonly number[];
  inOffset: number;
  outStrides: readonly number[];
  outOffset: number;
}

function stridedCopy(e: Engine, x: Tensor, out: Tensor, c: CopySpec): void {
  const n = numel(c.shape);
  if (n === 0) return;
  // The same copy over the fewest dimensions (a channel concat of NCHW tensors is rank 2).
  const merged = mergeBroadcastDims(c.shape, [...c.inStrides], [...c.outStrides]);
  const d = merged.shape.length ? merged : { shape: [1], a: [0], b: [0] };
  // In vec4s when every one read and written is whole: contiguous innermost runs of 4, offsets and
  // both tensors' sizes multiples of 4.
  const v = vectorizeDims(d);
  const vectorized = v !== null && v.reads.every((r) => r === 'vec4') && c.inOffset % 4 === 0 && c.outOffset % 4 === 0 && x.size % 4 === 0 && out.size % 4 === 0;
  const w = vectorized ? v : d;
  const unit = vectorized ? 4 : 1;
  // Runs of 4 along an innermost axis contiguous in both (a concat's or a slice's rows).
  const last = w.shape.length - 1;
  const run = w.shape[last] % 4 === 0 && w.a[last] === 1 && w.b[last] === 1 ? 4 : 1;
  const shape = w.shape.map((s, i) => (i === last ? s / run : s));
  const inStrides = w.a.map((s, i) => (i === last ? s * run : s));
  const outStrides = w.b.map((s, i) => (i === last ? s * run : s));
  e.dispatch({
    kernel: stridedCopyKernel(w.shape.length, vectorized, run),
    bindings: [x, out],
    params: { shape, inStrides, outStrides, n: n / unit / run, inOffset: c.inOffset / unit, outOffset: c.outOffset / unit },
    workgroups: grid1d(n / unit / run, COPY_WORKGROUP),
  });
}

/** The same elements in another shape (no copy). One dim may be -1. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const e = x.engine;
  const known = shape.filter((d) => d !== -1).reduce((p, d) => p * d, 1);
  const resolved = shape.map((d) => (d === -1 ? x.size / known : d));
  if (numel(resolved) !== x.size || resolved.some((d) => !Number.isInteger(d))) {
    throw new RangeError(`reshape: cannot view ${x.label} ${shapeString(x.shape)} as ${shapeString(shape)}`);
  }
  return e.view(x, resolved, x.label, 'reshape'); // recorded there
}

/** Reorders axes: y.shape[i] = x.shape[perm[i]]. Backward: permute by the inverse. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  const e = x.engine;
  if (perm.length !== x.rank || [...perm].sort((a, b) => a - b).some((p, i) => p !== i)) {
    throw new RangeError(`permute: ${perm} is not a permutation of the ${x.rank} axes of ${x.label}`);
  }
  const shape = perm.map((p) => x.shape[p]);
  const xs = x.strides;
  const y = e.empty(shape, `permute(${x.label})`);
  stridedCopy(e, x, y, { shape, inStrides: perm.map((p) => xs[p]), inOffset: 0, outStrides: contiguousStrides(shape), outOffset: 0 });
  const inverse = perm.map((_, i) => perm.indexOf(i));
  e.tape.record('permute', [x], [y], [], ([g]) => [permute(g!, inverse)]);
  return y;
}

/** Swaps two axes. */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const r = x.rank;
  const perm = [...Array(r).keys()];
  const i = a < 0 ? a + r : a;
  const j = b < 0 ? b + r : b;
  [perm[i], perm[j]] = [perm[j], perm[i]];
  return permute(x, perm);
}

/** x[starts[0]:ends[0], ...]; missing axes are taken whole. Backward: the gradient placed in zeros. */
export function slice(x: Tensor, starts: readonly number[], ends: readonly number[]): Tensor {
  const e = x.engine;
  if (starts.length > x.rank || ends.length > x.rank) {
    throw new RangeError(`slice: starts [${starts}] and ends [${ends}] name more axes than ${x.label} ${shapeString(x.shape)} has (${x.rank})`);
  }
  const st = x.shape.map((_, i) => starts[i] ?? 0);
  const en = x.shape.map((d, i) => ends[i] ?? d);
  st.forEach((s, i) => {
    if (s < 0 || en[i] > x.shape[i] || s > en[i]) {
      throw new RangeError(`slice: [${s}, ${en[i]}) is outside axis ${i} of ${x.label} ${shapeString(x.shape)}`);
    }
  });
  const shape = st.map((s, i) => en[i] - s);
  const xs = x.strides;
  const y = e.empty(shape, `slice(${x.label})`);
  const inOffset = st.reduce((p, s, i) => p + s * xs[i], 0);
  stridedCopy(e, x, y, { shape, inStrides: xs, inOffset, outStrides: contiguousStrides(shape), outOffset: 0 });
  e.tape.record('slice', [x], [y], [], ([g]) => {
    const gx = e.zeros(x.shape, 'dslice');
    stridedCopy(e, g!, gx, { shape, inStrides: contiguousStrides(shape), inOffset: 0, outStrides: xs, outOffset: inOffset });
    return [gx];
  });
  return y;
}

/** Joins tensors along `axis`. Backward: each input's slice of the gradient. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new RangeError('concat: no tensors given');
  const e = xs[0].engine;
  const r = xs[0].rank;
  const ax = axis < 0 ? axis + r : axis;
  if (!Number.isInteger(ax) || ax < 0 || ax >= r) throw new RangeError(`concat: axis ${axis} is out of range for rank ${r}`);
  for (const t of xs) {
    if (t.rank !== r || t.shape.some((d, i) => i !== ax && d !== xs[0].shape[i])) {
      throw new RangeError(`concat along axis ${ax}: ${shapeString(t.shape)} does not match ${shapeString(xs[0].shape)}`);
    }
  }
  const shape = [...xs[0].shape];
  shape[ax] = xs.reduce((p, t) => p + t.shape[ax], 0);
  const out = e.empty(shape, 'concat');
  const outStrides = contiguousStrides(shape);
  const offsets: number[] = [];
  let at = 0;
  for (const t of xs) {
    offsets.push(at);
    stridedCopy(e, t, out, { shape: t.shape, inStrides: t.strides, inOffset: 0, outStrides, outOffset: at * outStrides[ax] });
    at += t.shape[ax];
  }
  e.tape.record('concat', [...xs], [out], [], ([g]) =>
    xs.map((t, i) => (t.requiresGrad ? slice(g!, shape.map((_, d) => (d === ax ? offsets[i] : 0)), shape.map((s, d) => (d === ax ? offsets[i] + t.shape[ax] : s))) : null)));
  return out;
}

/**
 * Rows [start, end) of axis 0, copied as one byte range: no kernel binds x, so this works on a
 * tensor over the largest storage binding (a batch run in chunks). When x needs a gradient it is
 * slice() instead, which binds x whole.
 */
export function sliceRows(x: Tensor, start: number, end: number): Tensor {
  const e = x.engine;
  if (e.tape.needsGrad([x])) return slice(x, [start], [end]);
  if (x.rank === 0 || !Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > x.shape[0] || start > end) {
    throw new RangeError(`sliceRows: rows [${start}, ${end}) are outside ${x.label} ${shapeString(x.shape)}`);
  }
  const rowBytes = 4 * numel(x.shape.slice(1));
  const y = e.empty([end - start, ...x.shape.slice(1)], `rows(${x.label})`);
  if (y.byteLength > 0) e.copyBuffer(x.buffer, start * rowBytes, y.buffer, 0, y.byteLength);
  return y;
}

/**
 * Joins tensors along axis 0 with buffer copies, binding nothing, so the result may exceed the
 * largest storage binding. When any of them needs a gradient it is concat() instead, which binds
 * the result whole.
 */
export function concatRows(xs: readonly Tensor[]): Tensor {
  if (xs.length === 0) throw new RangeError('concatRows: no tensors given');
  const e = xs[0].engine;
  if (e.tape.needsGrad(xs)) return concat(xs, 0);
  const rest = xs[0].shape.slice(1);
  for (const t of xs) {
    e.checkOwn(t, 'concatRows');
    if (t.rank === 0 || t.shape.slice(1).join() !== rest.join()) {
      throw new RangeError(`concatRows: ${t.label} ${shapeString(t.shape)} does not match ${shapeString(xs[0].shape)} past axis 0`);
    }
  }
  const out = e.empty([xs.reduce((n, t) => n + t.shape[0], 0), ...rest], 'concat');
  let at = 0;
  for (const t of xs) {
    if (t.byteLength > 0) e.copyBuffer(t.buffer, 0, out.buffer, at, t.byteLength);
    at += t.byteLength;
  }
  return out;
}

/** Broadcasts x to `shape` (NumPy rules), materialised. Backward: sum over the broadcast axes. */
export function expand(x: Tensor, shape: Shape): Tensor {
  const e = x.engine;
  const lead = shape.length - x.rank;
  if (lead < 0 || x.shape.some((d, i) => d !== 1 && d !== shape[lead + i])) {
    throw new RangeError(`expand: ${x.label} ${shapeString(x.shape)} does not broadcast to ${shapeString(shape)}`);
  }
  const y = e.empty(shape, `expand(${x.label})`);
  stridedCopy(e, x, y, { shape, inStrides: broadcastStrides(x.shape, shape), inOffset: 0, outStrides: contiguousStrides(shape), outOffset: 0 });
  e.tape.record('expand', [x], [y], [], ([g]) => [sumToShape(g!, x.shape)]);
  return y;
}
