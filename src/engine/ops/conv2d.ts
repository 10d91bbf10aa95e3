// conv2d (stride 1, square kernel, zero padding, NCHW) with optional bias and a fused residual add.
// Kernels and the backward derivation: kernels/conv2d.wgsl.ts.
import { conv2dKernel, conv2dWeightGradKernel } from '../../../kernels/conv2d.wgsl.ts';
import { chooseTiling, type MatmulTiling } from '../../../kernels/matmul.wgsl.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { Uniforms } from '../uniforms.ts';
import { sum } from './reduce.ts';

export interface Conv2dOptions {
  bias?: Tensor;
  /** Added to the output (same shape as it), fused into the kernel's store. */
  residual?: Tensor;
  /** Zero padding on each side; default keeps the size: (k − 1) / 2. */
  pad?: number;
}

/** GEMM rows are output channels, columns pixels (or weight columns for the weight gradient). */
function tiling(e: Engine, rows: number, cols: number): MatmulTiling {
  return chooseTiling(rows, cols, e.tuning.conv2d, e.limits.maxComputeWorkgroupStorageSize);
}

interface ConvCall {
  w: Tensor;
  x: Tensor;
  out: Tensor;
  ksize: number;
  pad: number;
  cin: number;
  cout: number;
  H: number;
  W: number;
  N: number;
  bias?: Tensor;
  residual?: Tensor;
  transposedWeight: boolean;
}

function runConv(e: Engine, c: ConvCall): void {
  const t = tiling(e, c.cout, c.N * c.H * c.W);
  const bindings = [c.w, c.x, c.out];
  if (c.bias) bindings.push(c.bias);
  if (c.residual) bindings.push(c.residual);
  e.dispatch({
    kernel: conv2dKernel({ ksize: c.ksize, pad: c.pad, bias: !!c.bias, residual: !!c.residual, transposedWeight: c.transposedWeight }, t),
    bindings,
    uniforms: new Uniforms().u32(c.cin, c.H, c.W, c.cout, c.N).toArrayBuffer(),
    workgroups: [Math.ceil((c.N * c.H * c.W) / (t.wgX * t.tn)), Math.ceil(c.cout / (t.wgY * t.tm))],
  });
}

export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  const e = x.engine;
  if (x.rank !== 4 || w.rank !== 4 || w.shape[2] !== w.shape[3]) {
    throw new RangeError(`conv2d: input ${x.label} ${shapeString(x.shape)} must be [N,C,H,W] and weight ${w.label} ${shapeString(w.shape)} [Cout,Cin,k,k]`);
  }
  const [N, cin, H, W] = x.shape;
  const [cout, wcin, ksize] = w.shape;
  if (wcin !== cin) throw new RangeError(`conv2d: weight ${w.label} ${shapeString(w.shape)} expects ${wcin} input channels, input ${x.label} has ${cin}`);
  const pad = opts.pad ?? (ksize - 1) / 2;
  if (!Number.isInteger(pad) || 2 * pad !== ksize - 1) {
    throw new RangeError(`conv2d: only "same" convolutions (pad = (k−1)/2) are supported; got k=${ksize}, pad=${pad}`);
  }
  if (opts.bias && opts.bias.size !== cout) throw new RangeError(`conv2d: bias ${shapeString(opts.bias.shape)} does not match ${cout} output channels`);
  const outShape = [N, cout, H, W];
  if (opts.residual && opts.residual.shape.join() !== outShape.join()) {
    throw new RangeError(`conv2d: residual ${shapeString(opts.residual.shape)} does not match output ${shapeString(outShape)}`);
  }
  const out = e.empty(outShape, `conv2d(${w.label})`);
  runConv(e, { w, x, out, ksize, pad, cin, cout, H, W, N, bias: opts.bias, residual: opts.residual, transposedWeight: false });
  const inputs = [x, w, ...(opts.bias ? [opts.bias] : []), ...(opts.residual ? [opts.residual] : [])];
  e.tape.record('conv2d', inputs, [out], [x, w], ([g]) => {
    const dy = g!;
    let dx: Tensor | null = null;
    if (x.requiresGrad) {
      dx = e.empty(x.shape, 'dconv2d.x');
      runConv(e, { w, x: dy, out: dx, ksize, pad: ksize - 1 - pad, cin: cout, cout: cin, H, W, N, transposedWeight: true });
    }
    let dw: Tensor | null = null;
    if (w.requiresGrad) {
      dw = e.empty(w.shape, 'dconv2d.w');
      const t = tiling(e, cout, cin * ksize * ksize);
      e.dispatch({
        kernel: conv2dWeightGradKernel(ksize, pad, t),
        bindings: [dy, x, dw],
        uniforms: new Uniforms().u32(cin, H, W, cout, N).toArrayBuffer(),
        workgroups: [Math.ceil((cin * ksize * ksize) / (t.wgX * t.tn)), Math.ceil(cout / (t.wgY * t.tm)), 1],
      });
    }
    const grads: (Tensor | null)[] = [dx, dw];
    if (opts.bias) grads.push(opts.bias.requiresGrad ? sum(dy, [0, 2, 3]) : null);
    if (opts.residual) grads.push(opts.residual.requiresGrad ? dy : null);
    return grads;
  });
  return out;
}
