// Elementwise kernels from one table: each unary op is a forward expression of `x` (and the
// uniform scalar `alpha`) and a backward expression of `x`, `y` (the forward output) and `dy`.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatBlockMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const WORKGROUP = 256;

/** n counts loads (vec4s when vectorized); alpha is the unary ops' scalar. */
const UNARY_PARAMS = uniformLayout({ n: 'u32', alpha: 'f32' });
/** out's shape and a's and b's strides (0 along broadcast dims), merged to the kernel's rank. */
const BINARY_PARAMS = uniformLayout({ shape: 'dims', aStrides: 'dims', bStrides: 'dims', n: 'u32' });
const FILL_PARAMS = uniformLayout({ n: 'u32', value: 'f32' });

/** erf(x) as a WGSL function (WGSL has none). */
const ERF = /* wgsl */ `
fn erf_approx(x: f32) -> f32 {
  // Numerical Recipes erfc (Chebyshev fit, fractional error < 1.2e-7 everywhere).
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
      t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}`;

export interface UnaryOpSpec {
  /** y as a WGSL expression of x and alpha. */
  forward: string;
  /** dL/dx as a WGSL expression of x, y, dy and alpha. */
  backward: string;
  needsErf?: boolean;
}

export const UNARY_OPS = {
  scale: { forward: 'alpha * x', backward: 'alpha * dy' },
  neg: { forward: '-x', backward: '-dy' },
  // NaN stays NaN (PyTorch's): WGSL's max and clamp may return either operand for a NaN. x < 0
  // picks 0 (PyTorch's x < 0 ? 0 : x), so −0 stays −0, where max(−0, 0) may give +0.
  // Its gradient is 0 where x ≤ 0 and dy elsewhere, NaN included (PyTorch's threshold_backward:
  // relu(x) ≤ 0 ? 0 : dy), so a NaN input's gradient stays visible.
  relu: { forward: 'select(select(x, 0.0, x < 0.0), x, isNan(x))', backward: 'select(dy, 0.0, x <= 0.0)' },
  // SiLU: x·σ(x); d/dx = σ(x)·(1 + x·(1 − σ(x))).
  silu: { forward: 'x / (1.0 + exp(-x))', backward: 'dy * (1.0 / (1.0 + exp(-x))) * (1.0 + x * (1.0 - 1.0 / (1.0 + exp(-x))))' },
  // GELU with the exact erf (PyTorch's default): x·Φ(x); d/dx = Φ(x) + x·φ(x).
  gelu: {
    forward: '0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752))',
    backward: 'dy * (0.5 * (1.0 + erf_approx(x * 0.70710678118654752)) + x * 0.39894228040143268 * exp(-0.5 * x * x))',
    needsErf: true,
  },
  exp: { forward: 'exp(x)', backward: 'dy * y' },
  log: { forward: 'logF32(x)', backward: 'dy / x' },
  sqrt: { forward: 'sqrt(x)', backward: 'dy * 0.5 / y' },
  square: { forward: 'x * x', backward: 'dy * 2.0 * x' },
  addScalar: { forward: 'x + alpha', backward: 'dy' },
  // x clamped to [−alpha, alpha] (torch.clamp(x, −alpha, alpha)); the gradient passes where
  // −alpha ≤ x ≤ alpha, bounds included, as PyTorch's.
  clampSymmetric: { forward: 'select(clamp(x, -alpha, alpha), x, isNan(x))', backward: 'select(0.0, dy, abs(x) <= alpha)' },
  // max(x, alpha) (torch.clamp(x, min=alpha)); the gradient passes where x ≥ alpha, as PyTorch's.
  clampMin: { forward: 'select(max(x, alpha), x, isNan(x))', backward: 'select(0.0, dy, x >= alpha)' },
  // tanhF32 (below); NaN stays NaN. d/dx = 1 − y².
  tanh: { forward: 'select(tanhF32(x), x, isNan(x))', backward: 'dy * (1.0 - y * y)' },
  // log σ(x) = min(x, 0) − log(1 + e^−|x|), exact in both tails (torch.nn.functional.logsigmoid);
  // d/dx = σ(−x) = 1/(1 + eˣ), eˣ capped at e⁸⁰ so it stays finite.
  logSigmoid: { forward: 'select(min(x, 0.0) - log1pF32(exp(-abs(x))), x, isNan(x))', backward: 'dy / (1.0 + exp(min(x, 80.0)))' },
  // log(1 − e^−x) for x > 0 (Mächler's log1mexp): 1 − e^−x by its series where it would cancel
  // (x ≤ 0.35), log1p(−e^−x) above. d/dx = e^−x/(1 − e^−x) = exp(−x − y).
  log1mexp: { forward: 'log1mexpF32(x)', backward: 'dy * exp(-x - y)' },
} satisfies Record<string, UnaryOpSpec>;

export type UnaryOp = keyof typeof UNARY_OPS;

/**
 * Elementwise kernels take `vectorized` when the element count is a multiple of 4: each load
 * then moves a vec4 (u.n counts vectors; an invocation takes VALUES_PER_INVOCATION of them). CPU adapters run a load whose address differs per
 * invocation as one scalar load per invocation, so a vec4 load moves four values for about the
 * cost of one; GPUs get 128-bit loads.
 */
const element = (vectorized: boolean) => (vectorized ? 'vec4<f32>' : 'f32');
const perComponent = (vectorized: boolean, call: (c: string) => string) =>
  vectorized ? `vec4(${['x', 'y', 'z', 'w'].map((c) => call(`.${c}`)).join(', ')})` : call('');

/**
 * WGSL helpers of the unary ops. isNan tests the bits (a compiler may fold x != x away).
 * tanhF32: tanh of x clamped to ±15 (tanh(15) is 1 in f32; implementations that form
 * (e²ˣ − 1)/(e²ˣ + 1) give inf/inf = NaN past |x| ≈ 44), and below |x| = 0.1 its Taylor series to
 * x⁷ (next term 62x⁹/2835, under 1e-10 of x there): lavapipe's tanh is off by about 3e-8 absolute,
 * 19 % of tanh(1e-7) and 0.14 % of tanh(1e-5). logF32: log of a subnormal x (bits b, x = b·2⁻¹⁴⁹)
 * as log(f32(b)) − 149·ln 2, from its bits alone (lavapipe's log read 1.4e-45 as e^−88.03, not
 * e^−103.28, and its multiplies flush subnormals to zero). log1pF32: log(1 + e) for e > −1, below
 * |e| = 0.05 its series to e⁸ (next term under 5e-12 of it), where 1 + e would round e away.
 * log1mexpF32: log(1 − e^−x) for x > 0; below x = 0.35 the series of 1 − e^−x to x⁸ (next term
 * under 1e-9 of it), where 1 − e^−x cancels.
 */
const UNARY_HELPERS = `fn isNan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn tanhF32(x: f32) -> f32 {
  let x2 = x * x;
  return select(tanh(clamp(x, -15.0, 15.0)), x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0)))), abs(x) < 0.1);
}
fn logF32(x: f32) -> f32 {
  let b = bitcast<u32>(x);
  return select(log(x), log(f32(b)) - 103.27892990343185, b > 0u && b < 0x00800000u);
}
fn log1pF32(e: f32) -> f32 {
  let series = e * (1.0 - e * (1.0 / 2.0 - e * (1.0 / 3.0 - e * (1.0 / 4.0 - e * (1.0 / 5.0 - e * (1.0 / 6.0 - e * (1.0 / 7.0 - e / 8.0)))))));
  return select(logF32(1.0 + e), series, abs(e) < 0.05);
}
fn log1mexpF32(x: f32) -> f32 {
  let series = x * (1.0 - x / 2.0 * (1.0 - x / 3.0 * (1.0 - x / 4.0 * (1.0 - x / 5.0 * (1.0 - x / 6.0 * (1.0 - x / 7.0 * (1.0 - x / 8.0)))))));
  return select(log1pF32(-exp(-x)), logF32(series), x <= 0.35);
}`;

/** y[i] = f(x[i]). Bindings: x, y. */
export const unaryKernel = cachedKernelFactory(function unaryKernel(op: UnaryOp, vectorized = false): KernelSource<typeof UNARY_PARAMS> {
  const spec: UnaryOpSpec = UNARY_OPS[op];
  return {
    params: UNARY_PARAMS,
    key: `unary.${op}${vectorized ? '.vec4' : ''}`,
    code: wgsl`
${UNARY_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> xs: array<${element(vectorized)}>;
@group(0) @binding(2) var<storage, read_write> ys: array<${element(vectorized)}>;
#if ${spec.needsErf ?? false}
${ERF}
#endif
${UNARY_HELPERS}
fn f(x: f32, alpha: f32) -> f32 {
  return ${spec.forward};
}
${flatBlockMain(WORKGROUP, 'u.n', `let x = xs[i];
    ys[i] = ${perComponent(vectorized, (c) => `f(x${c}, u.alpha)`)};`)}`,
  };
});

/** dx[i] = f'(x[i], y[i]) · dy[i]. Bindings: x, y, dy, dx. */
export const unaryBackwardKernel = cachedKernelFactory(function unaryBackwardKernel(op: UnaryOp, vectorized = false): KernelSource<typeof UNARY_PARAMS> {
  const spec: UnaryOpSpec = UNARY_OPS[op];
  return {
    params: UNARY_PARAMS,
    key: `unaryBackward.${op}${vectorized ? '.vec4' : ''}`,
    code: wgsl`
${UNARY_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> xs: array<${element(vectorized)}>;
@group(0) @binding(2) var<storage, read> ys: array<${element(vectorized)}>;
@group(0) @binding(3) var<storage, read> dys: array<${element(vectorized)}>;
@group(0) @binding(4) var<storage, read_write> dxs: array<${element(vectorized)}>;
#if ${spec.needsErf ?? false}
${ERF}
#endif
fn df(x: f32, y: f32, dy: f32, alpha: f32) -> f32 {
  _ = x; _ = y; _ = alpha;
  return ${spec.backward};
}
${flatBlockMain(WORKGROUP, 'u.n', `let x = xs[i];
    let y = ys[i];
    let dy = dys[i];
    dxs[i] = ${perComponent(vectorized, (c) => `df(x${c}, y${c}, dy${c}, u.alpha)`)};`)}`,
  };
});

export const BINARY_OPS = {
  add: 'a + b',
  sub: 'a - b',
  mul: 'a * b',
  div: 'a / b',
} as const;

export type BinaryOp = keyof typeof BINARY_OPS;

/** Index of element `rest` in a and b, innermost dimension first; the outermost needs no division. */
function broadcastWalk(rank: number): string {
  const at = (field: string, d: number) => `u.${field}[${d >> 2}][${d & 3}]`;
  const steps: string[] = [];
  for (let d = rank - 1; d > 0; d--) {
    steps.push(`c = rest % ${at('shape', d)}; rest = rest / ${at('shape', d)}; ai += c * ${at('aStrides', d)}; bi += c * ${at('bStrides', d)};`);
  }
  if (rank > 0) steps.push(`ai += rest * ${at('aStrides', 0)}; bi += rest * ${at('bStrides', 0)};`);
  return steps.join('\n  ');
}

/**
 * How each operand of a vectorized binary kernel is read: `vec4` loads four consecutive elements,
 * `splat` loads one and repeats it (the operand is constant along the innermost dimension).
 */
export type OperandRead = 'vec4' | 'splat';

/**
 * out = a ∘ b with NumPy broadcasting. With `broadcastRank` 0, a and b have out's shape. Otherwise
 * the uniforms carry out's shape (merged to that many dims, at most 8) and a's and b's strides
 * (0 along broadcast dims); the rank is fixed at compile time, so the walk over dimensions is
 * unrolled and reads every shape and stride at a constant uniform offset (CPU adapters load those
 * once per SIMD vector, not once per invocation). With `vectorized`, each step of an invocation writes a
 * vec4 of out and the shape, strides and u.n count vectors (src/engine/ops/elementwise.ts decides when
 * that is exact); `reads` says how a and b are read then. Bindings: a, b, out.
 */
export const binaryKernel = cachedKernelFactory(function binaryKernel(op: BinaryOp, broadcastRank: number, vectorized = false, reads: [OperandRead, OperandRead] = ['vec4', 'vec4']): KernelSource<typeof BINARY_PARAMS> {
  const broadcast = broadcastRank > 0;
  const operand = (read: OperandRead) => (vectorized && read === 'vec4' ? 'vec4<f32>' : 'f32');
  const value = (name: string, index: string, read: OperandRead) => (vectorized && read === 'splat' ? `vec4(${name}[${index}])` : `${name}[${index}]`);
  return {
    params: BINARY_PARAMS,
    key: `binary.${op}.${broadcast ? `bcast${broadcastRank}` : 'same'}${vectorized ? '.vec4' : ''}${vectorized && broadcast ? `.${reads.join('.')}` : ''}`,
    code: wgsl`
${BINARY_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> lhs: array<${operand(reads[0])}>;
@group(0) @binding(2) var<storage, read> rhs: array<${operand(reads[1])}>;
@group(0) @binding(3) var<storage, read_write> out: array<${element(vectorized)}>;
${flatBlockMain(WORKGROUP, 'u.n', `${broadcast ? `var rest = i;
    var c = 0u;
    var ai = 0u;
    var bi = 0u;
    ${broadcastWalk(broadcastRank)}
    let a = ${value('lhs', 'ai', reads[0])};
    let b = ${value('rhs', 'bi', reads[1])};` : `let a = lhs[i];
    let b = rhs[i];`}
    out[i] = ${BINARY_OPS[op]};`)}`,
  };
});

/** out[i] = value. Bindings: out. */
export const fillKernel = cachedKernelFactory(function fillKernel(vectorized = false): KernelSource<typeof FILL_PARAMS> {
  return {
    params: FILL_PARAMS,
    key: `fill${vectorized ? '.vec4' : ''}`,
    code: wgsl`
${FILL_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read_write> out: array<${element(vectorized)}>;
${flatBlockMain(WORKGROUP, 'u.n', `out[i] = ${element(vectorized)}(u.value);`)}`,
  };
});
