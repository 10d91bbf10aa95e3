// Elementwise ops: unary activations from the kernel table, and binary arithmetic with NumPy
// broadcasting. Forward kernels: kernels/elementwise.wgsl.ts. Backward rules beside each op.
import {
  type BinaryOp, binaryKernel, fillKernel, type OperandRead, type UnaryOp, unaryBackwardKernel, unaryKernel, WORKGROUP,
} from '../../../kernels/elementwise.wgsl.ts';
import { blockGrid, elementLoads } from '../../../kernels/flat-index.ts';
import type { Engine } from '../engine.ts';
import { type Shape, shapeString, type Tensor } from '../tensor.ts';
import { sumToShape } from './reduce.ts';

export function fillConstant(e: Engine, shape: Shape, value: number, label = 'fill'): Tensor {
  const out = e.empty(shape, label);
  const loads = elementLoads(out.size);
  e.dispatch({
    kernel: fillKernel(loads.vec4),
    bindings: [out],
    params: { n: loads.count, value },
    workgroups: blockGrid(loads.count, WORKGROUP),
  });
  return out;
}

function runUnary(op: UnaryOp, x: Tensor, alpha: number): Tensor {
  const e = x.engine;
  const y = e.empty(x.shape, `${op}(${x.label})`);
  const loads = elementLoads(x.size);
  e.dispatch({
    kernel: unaryKernel(op, loads.vec4),
    bindings: [x, y],
    params: { n: loads.count, alpha },
    workgroups: blockGrid(loads.count, WORKGROUP),
  });
  return y;
}

/** y = f(x) for a unary op of the table; backward dx = f'(x)·dy by the table's expression. */
export function unary(op: UnaryOp, x: Tensor, alpha = 0): Tensor {
  const e = x.engine;
  const y = runUnary(op, x, alpha);
  e.tape.record(op, [x], [y], [x, y], ([dy]) => {
    const dx = e.empty(x.shape, `d${op}`);
    const loads = elementLoads(x.size);
    e.dispatch({
      kernel: unaryBackwardKernel(op, loads.vec4),
      bindings: [x, y, dy!, dx],
      params: { n: loads.count, alpha },
      workgroups: blockGrid(loads.count, WORKGROUP),
    });
    return [dx];
  });
  return y;
}

export const relu = (x: Tensor) => unary('relu', x);
export const silu = (x: Tensor) => unary('silu', x);
export const gelu = (x: Tensor) => unary('gelu', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const square = (x: Tensor) => unary('square', x);
export const neg = (x: Tensor) => unary('neg', x);
export const scale = (x: Tensor, s: number) => unary('scale', x, s);
export const addScalar = (x: Tensor, s: number) => unary('addScalar', x, s);
/** x clamped to [−bound, bound]. */
export const clampSymmetric = (x: Tensor, bound: number) => unary('clampSymmetric', x, bound);
/** max(x, min) (torch.clamp(x, min=min)). */
export const clampMin = (x: Tensor, min: number) => unary('clampMin', x, min);
export const tanh = (x: Tensor) => unary('tanh', x);
/** log σ(x), without cancellation in either tail. */
export const logSigmoid = (x: Tensor) => unary('logSigmoid', x);
/** log(1 − e^−x) for x > 0, without cancellation near 0. */
export const log1mexp = (x: Tensor) => unary('log1mexp', x);

/** NumPy broadcasting of two shapes; throws with both shapes when they do not broadcast. */
export function broadcastShapes(a: Shape, b: Shape): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(`shapes ${shapeString(a)} and ${shapeString(b)} do not broadcast (dim ${i}: ${da} vs ${db})`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Strides to read a tensor of `shape` as if it had `outShape` (0 along broadcast dims). */
export function broadcastStrides(shape: Shape, outShape: Shape): number[] {
  const strides = new Array<number>(outShape.length).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const o = outShape.length - shape.length + i;
    strides[o] = shape[i] === 1 ? 0 : s;
    s *= shape[i];
  }
  return strides;
}

/**
 * The fewest dims that index the same elements: size-1 dims dropped, and a dim merged into the
 * next inner one wherever both operands continue contiguously across them ([N,C,H,W]·[1,C,1,1]
 * becomes [N,C,H·W]·[0,1,0]), so the kernel divides as few times as possible.
 */
export function mergeBroadcastDims(shape: Shape, aStrides: number[], bStrides: number[]): { shape: number[]; a: number[]; b: number[] } {
  const out = { shape: [] as number[], a: [] as number[], b: [] as number[] };
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = out.shape.length - 1;
    if (last >= 0 && out.a[last] === aStrides[i] * shape[i] && out.b[last] === bStrides[i] * shape[i]) {
      out.shape[last] *= shape[i];
      out.a[last] = aStrides[i];
      out.b[last] = bStrides[i];
    } else {
      out.shape.push(shape[i]);
      out.a.push(aStrides[i]);
      out.b.push(bStrides[i]);
    }
  }
  return out;
}

/**
 * A broadcast (or strided copy) in vec4 units, when that is exact: the innermost merged dimension
 * divides by 4 and each operand either steps through it contiguously with all its strides
 * multiples of 4 (read as vec4s at stride/4) or does not step through it at all (one value
 * repeated: `splat`). Else null.
 */
export function vectorizeDims(m: { shape: number[]; a: number[]; b: number[] }): { shape: number[]; a: number[]; b: number[]; reads: [OperandRead, OperandRead] } | null {
  const last = m.shape.length - 1;
  if (m.shape[last] % 4 !== 0) return null;
  const operand = (strides: number[]): { strides: number[]; read: OperandRead } | null => {
    if (strides[last] === 0) return { strides, read: 'splat' };
    if (strides[last] !== 1 || !strides.every((s, d) => d === last || s % 4 === 0)) return null;
    return { strides: strides.map((s, d) => (d === last ? 1 : s / 4)), read: 'vec4' };
  };
  const a = operand(m.a);
  const b = operand(m.b);
  if (!a || !b) return null;
  return { shape: m.shape.map((s, d) => (d === last ? s / 4 : s)), a: a.strides, b: b.strides, reads: [a.read, b.read] };
}

function runBinary(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  const e = a.engine;
  const outShape = broadcastShapes(a.shape, b.shape);
  const out = e.empty(outShape, `${op}(${a.label},${b.label})`);
  const same = a.size === out.size && b.size === out.size;
  const m = mergeBroadcastDims(outShape, broadcastStrides(a.shape, outShape), broadcastStrides(b.shape, outShape));
  const v = same ? null : vectorizeDims(m);
  const vectorized = same ? out.size % 4 === 0 : v !== null;
  const dims = v ?? { ...m, reads: ['vec4', 'vec4'] as [OperandRead, OperandRead] };
  const n = vectorized ? out.size / 4 : out.size;
  e.dispatch({
    kernel: binaryKernel(op, same ? 0 : m.shape.length, vectorized, dims.reads),
    bindings: [a, b, out],
    params: { shape: dims.shape, aStrides: dims.a, bStrides: dims.b, n },
    workgroups: blockGrid(n, WORKGROUP),
  });
  return out;
}

/**
 * `rule` gets the output's gradient and which inputs wanted one when the op ran; `saved` are the
 * inputs it reads for those (add and sub read none: their operands are freed as soon as the caller
 * drops them, not at the backward).
 */
function binary(op: BinaryOp, a: Tensor, b: Tensor, saved: (needA: boolean, needB: boolean) => Tensor[], rule: (g: Tensor, needA: boolean, needB: boolean) => [Tensor | null, Tensor | null]): Tensor {
  const out = runBinary(op, a, b);
  const [needA, needB] = [a.requiresGrad, b.requiresGrad];
  a.engine.tape.record(op, [a, b], [out], saved(needA, needB), ([g]) => {
    const [ga, gb] = rule(g!, needA, needB);
    return [ga && sumToShape(ga, a.shape), gb && sumToShape(gb, b.shape)];
  });
  return out;
}

export function add(a: Tensor, b: Tensor): Tensor {
  return binary('add', a, b, () => [], (g, needA, needB) => [needA ? g : null, needB ? g : null]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  return binary('sub', a, b, () => [], (g, needA, needB) => [needA ? g : null, needB ? neg(g) : null]);
}

/** a ⊙ b; d/da = g ⊙ b, d/db = g ⊙ a (each operand saved only for the other's gradient). */
export function mul(a: Tensor, b: Tensor): Tensor {
  return binary('mul', a, b, (needA, needB) => [...(needA ? [b] : []), ...(needB ? [a] : [])], (g, needA, needB) => [needA ? mul(g, b) : null, needB ? mul(g, a) : null]);
}

/** a / b; d/da = 1/b, d/db = −a/b². */
export function div(a: Tensor, b: Tensor): Tensor {
  return binary('div', a, b, (_, needB) => (needB ? [a, b] : [b]), (g, needA, needB) => [
    needA ? div(g, b) : null,
    needB ? neg(div(mul(g, a), square(b))) : null,
  ]);
}
