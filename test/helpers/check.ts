// Comparison helpers: a seeded generator, the relative-error metric, and finite-difference gradient
// checks in float64 against the reference implementations.
import { createEngine, type Engine, type Tensor } from '../../src/index.ts';
import type { Nd } from './reference.ts';

let shared: Promise<Engine> | null = null;
/** One engine per test process. */
export function testEngine(): Promise<Engine> {
  shared ??= createEngine();
  return shared;
}

/** The keys of the kernels `e` dispatches from now on (its dispatch wrapped). */
export function recordKernelKeys(e: Engine): Set<string> {
  const ran = new Set<string>();
  const dispatch = e.dispatch.bind(e);
  e.dispatch = (d) => (ran.add(d.kernel.key), dispatch(d));
  return ran;
}

/** How many bind groups `device` makes from now on; `teardown` is given what restores it. */
export function countBindGroups(device: GPUDevice, teardown: (restore: () => void) => void): () => number {
  const createBindGroup = device.createBindGroup;
  let made = 0;
  device.createBindGroup = (d) => (made++, createBindGroup.call(device, d));
  teardown(() => void (device.createBindGroup = createBindGroup));
  return () => made;
}

/** mulberry32: a small, seeded, reproducible generator. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values exactly representable in f32, so the GPU and the f64 reference see the same input. */
export function randomNd(shape: number[], seed: number, lo = -1, hi = 1): Nd {
  const r = rng(seed);
  const n = shape.reduce((p, d) => p * d, 1);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.fround(lo + (hi - lo) * r());
  return { data, shape };
}

/** max|a − r| / max|r| (the project's metric everywhere). */
export function maxRelError(actual: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (actual.length !== ref.length) throw new Error(`length ${actual.length} vs reference ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(actual[i] - ref[i]);
    if (!(d <= num)) num = Number.isNaN(d) ? Infinity : d;
    den = Math.max(den, Math.abs(ref[i]));
  }
  return den === 0 ? num : num / den;
}

export function upload(e: Engine, x: Nd, requiresGrad = false): Tensor {
  const t = e.tensor(Float32Array.from(x.data), x.shape);
  t.requiresGrad = requiresGrad;
  return t;
}

export interface GradCheckResult {
  /** Worst max-relative error over the inputs, analytic (GPU) vs finite differences (f64). */
  worst: number;
  perInput: number[];
}

/**
 * Checks the GPU backward of `gpu` against central finite differences of the float64 reference
 * `ref`, on L = Σ R ⊙ f(x) with a random cotangent R. At most `maxCoords` coordinates per input
 * are probed (chosen at random) so large inputs stay cheap.
 */
export async function gradCheck(
  e: Engine,
  gpu: (...xs: Tensor[]) => Tensor,
  ref: (...xs: Nd[]) => Nd,
  inputs: Nd[],
  opts: { seed?: number; maxCoords?: number; wrt?: boolean[] } = {},
): Promise<GradCheckResult> {
  const seed = opts.seed ?? 7;
  const wrt = opts.wrt ?? inputs.map(() => true);
  const y0 = ref(...inputs);
  const R = randomNd(y0.shape, seed + 1);
  const loss = (xs: Nd[]) => {
    const y = ref(...xs);
    let s = 0;
    for (let i = 0; i < y.data.length; i++) s += y.data[i] * R.data[i];
    return s;
  };
  const ts = inputs.map((x, i) => upload(e, x, wrt[i]));
  const y = gpu(...ts);
  const seedT = upload(e, R);
  e.tape.backward(y, seedT);
  const perInput: number[] = [];
  const pick = rng(seed + 2);
  for (let i = 0; i < inputs.length; i++) {
    if (!wrt[i]) continue;
    const g = await ts[i].grad!.read();
    const n = inputs[i].data.length;
    const coords = n <= (opts.maxCoords ?? 48) ? [...Array(n).keys()] : Array.from({ length: opts.maxCoords ?? 48 }, () => Math.floor(pick() * n));
    const num: number[] = [];
    const ana: number[] = [];
    for (const c of coords) {
      const xs = inputs.map((x) => ({ data: Float64Array.from(x.data), shape: x.shape }));
      const h = 1e-6 * Math.max(1, Math.abs(inputs[i].data[c]));
      xs[i].data[c] = inputs[i].data[c] + h;
      const lp = loss(xs);
      xs[i].data[c] = inputs[i].data[c] - h;
      const lm = loss(xs);
      num.push((lp - lm) / (2 * h));
      ana.push(g[c]);
    }
    perInput.push(maxRelError(ana, num));
  }
  for (const t of [...ts, y, seedT]) t.dispose();
  return { worst: Math.max(...perInput), perInput };
}
