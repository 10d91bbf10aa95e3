// conv2d (square kernel, zero padding (k − 1)/2, stride ≥ 1, NCHW) with optional bias and a fused
// residual add. Kernels and the backward derivation (stride ↔ input dilation): kernels/conv2d.wgsl.ts.
import { conv2dKernel, conv2dWeightGradKernel, rowWindowConv, subgroupConv2dKernel, subgroupConv3x3Kernel } from '../../../kernels/conv2d.wgsl.ts';
import { chooseGemmTiling, gemmWorkgroups, type MatmulTiling } from '../../../kernels/matmul.wgsl.ts';
import { subgroupGemmColumnGroups, subgroupGemmOrder, subgroupGemmRows, subgroupGemmWorkgroups, subgroupMatmulKernel, subgroupSplitSumKernel } from '../../../kernels/matmul-subgroup.wgsl.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { winogradConv, winogradFits, winogradTiles, winogradWeightGrad, winogradWeightGradTileCounts } from './conv2d-winograd.ts';
import { K_CHUNK, LONG_K } from './matmul.ts';
import { sum } from './reduce.ts';

export interface Conv2dOptions {
  bias?: Tensor;
  /** Added to the output (same shape as it), fused into the kernel's store. */
  residual?: Tensor;
  /** Zero padding on each side; only (k − 1) / 2 (the default) is supported. */
  pad?: number;
  /** Output pixel (i, j) is centred on input pixel (i·stride, j·stride); default 1. */
  stride?: number;
}

/** GEMM rows are output channels, columns pixels (or weight columns for the weight gradient). */
function tiling(e: Engine, rows: number, cols: number): MatmulTiling {
  return chooseGemmTiling(rows, cols, e.gemmPresets, e.tuning.conv2d, e.limits.maxComputeWorkgroupStorageSize);
}

interface ConvCall {
  w: Tensor;
  x: Tensor;
  out: Tensor;
  ksize: number;
  pad: number;
  stride: number;
  inputDilation: number;
  bias?: Tensor;
  residual?: Tensor;
  transposedWeight: boolean;
}

/**
 * Whether a conv goes through Winograd F(2×2, 3×3) (./conv2d-winograd.ts): only 3×3, stride 1,
 * padding 1, and only where its buffers fit a binding. Tuning `conv2dWinograd.enabled` (1 or 0)
 * forces it on or off; by default it runs on lavapipe for convs of at least
 * `conv2dWinograd.minChannels` (default 16) input and output channels on maps of 8×8 or more
 * and at least 64 tiles of 2×2 in the batch, where it measured faster (2 cores, forward +
 * backward: 256→256 @32² batch 1 359 → 199 ms, 64→64 @16² batch 16 102 → 63 ms, 512→512 @16²
 * batch 1 (64 tiles) 373 → 243 ms; at 4×4 it lost, 9.0 → 10.4 ms, and with 16 tiles,
 * 1024→1024 @8² batch 1, 368 → 720 ms: its GEMMs are 16 columns wide). GPU adapters keep the
 * direct GEMM until measured.
 */
function useWinograd(e: Engine, ksize: number, stride: number, inputDilation: number, N: number, cin: number, cout: number, H: number, W: number): boolean {
  // No channels in or out: nothing for its GEMMs (whose empty transforms cannot be bound), even when a tuning forces it.
  if (ksize !== 3 || stride !== 1 || inputDilation !== 1 || cin === 0 || cout === 0 || !winogradFits(e, N, cin, cout, H, W)) return false;
  const tuned = e.tuning.conv2dWinograd ?? {};
  if (tuned.enabled !== undefined) return tuned.enabled !== 0;
  const minChannels = tuned.minChannels ?? 16;
  return e.adapterClass === 'llvmpipe' && cin >= minChannels && cout >= minChannels && H * W >= 64 && winogradTiles(N, H, W).T >= 64;
}

/**
 * Whether a 3×3 conv's weight gradient goes through Winograd (dU = dM·Vᵀ, a Cout × Cin GEMM over
 * the tiles): wherever its forward does, and on lavapipe also wherever each chunk's GEMM runs on
 * the subgroup kernel (Cin and the chunk's tiles in fours), whatever the channels. The direct
 * weight gradient's register tiles were slower at every such shape measured (2 cores, the backward
 * to the weight alone, medians of 5): 32→3 @32² batch 16 35 → 5.2 ms, 128→3 @64² batch 8 257 → 41,
 * 4→4 @32² batch 16 17 → 2.0, 64→12 @16² batch 16 17 → 3.2, 512→512 @8² batch 1 43 → 19,
 * 256→256 @4² batch 1 7.1 → 3.6; where a GEMM takes the register-tiled kernel Winograd lost (3→32
 * @32² batch 16, 3 columns: 10 → 19 ms; 4→4 @6² batch 2048, a chunk of 2,049 tiles: 86 → 158 ms).
 * A tuning `conv2dWinograd.enabled` decides alone; one of the direct conv's tiles keeps it.
 */
function winogradWeightGradient(e: Engine, ksize: number, stride: number, N: number, cin: number, cout: number, H: number, W: number): boolean {
  if (useWinograd(e, ksize, stride, 1, N, cin, cout, H, W)) return true;
  if (ksize !== 3 || stride !== 1 || cin === 0 || cout === 0 || e.tuning.conv2dWinograd?.enabled !== undefined || e.tuning.conv2d) return false;
  if (e.adapterClass !== 'llvmpipe' || !e.subgroupMatmul || e.tuning.matmul || cin % 4 !== 0 || !winogradFits(e, N, cin, cout, H, W)) return false;
  return winogradWeightGradTileCounts(e, N, cin, cout, H, W).every((count) => count % 4 === 0);
}

/**
 * The algorithm conv2d runs for input [N, Cin, H, W] and weight [Cout, Cin, k, k] on this engine,
 * with the multiply-adds it performs (Winograd: 16 per 2×2 tile and channel pair, the direct GEMM
 * k² per pixel): what the bench needs to rate a conv against the adapter's peak.
 */
export function conv2dAlgorithm(e: Engine, xShape: readonly number[], wShape: readonly number[], stride = 1): { name: 'winograd' | 'gemm'; multiplyAdds: number } {
  const [N, cin, H, W] = xShape;
  const [cout, , ksize] = wShape;
  if (useWinograd(e, ksize, stride, 1, N, cin, cout, H, W)) {
    return { name: 'winograd', multiplyAdds: 16 * cin * cout * winogradTiles(N, H, W).T };
  }
  const pad = (ksize - 1) / 2;
  const outPixels = N * (Math.floor((H + 2 * pad - ksize) / stride) + 1) * (Math.floor((W + 2 * pad - ksize) / stride) + 1);
  return { name: 'gemm', multiplyAdds: cin * cout * ksize * ksize * outPixels };
}

/**
 * Whether a 1×1, stride-1 conv runs as one GEMM per image on the subgroup GEMM
 * (kernels/matmul-subgroup.wgsl.ts, lavapipe): the forward's input channels `cin` (W's rows) and
 * the `pixels` of a map are multiples of 4, so every operand loads as vec4s. NCHW makes x[n] a
 * Cin × pixels matrix and W a Cout × Cin one: out[n] = W·x[n], dx[n] = Wᵀ·dy[n], dW = Σ_n dy[n]·x[n]ᵀ.
 */
function pointwiseGemm(e: Engine, ksize: number, stride: number, inputDilation: number, cin: number, pixels: number): boolean {
  return ksize === 1 && stride === 1 && inputDilation === 1 && e.subgroupMatmul && !e.tuning.conv2d && cin % 4 === 0 && pixels % 4 === 0;
}

/** The forward or the input gradient of a pointwiseGemm conv: out[n] = W·x[n], or Wᵀ·x[n] with transposedWeight. */
function runPointwise(e: Engine, c: ConvCall, bindings: Tensor[]): void {
  const [N, channelsIn, H, W] = c.x.shape;
  const channelsOut = c.out.shape[1];
  const rows = subgroupGemmRows(channelsOut);
  const groups = subgroupGemmColumnGroups(H * W, false);
  const order = subgroupGemmOrder(channelsOut, H * W);
  e.dispatch({
    kernel: subgroupMatmulKernel({ transA: c.transposedWeight, transB: false, bias: false, rowBias: !!c.bias, residual: !!c.residual }, rows, groups, order),
    bindings,
    params: { M: channelsOut, N: H * W, K: channelsIn, strideA: 0, strideB: channelsIn * H * W, batches: N },
    workgroups: subgroupGemmWorkgroups(rows, channelsOut, H * W, N, groups, order),
  });
}

/** Shapes come from the tensors: x [N, Cin, H, W] as stored, out [N, Cout, Ho, Wo]. */
function runConv(e: Engine, c: ConvCall): void {
  const [N, cin, H, W] = c.x.shape;
  const [, cout, Ho, Wo] = c.out.shape;
  if (useWinograd(e, c.ksize, c.stride, c.inputDilation, N, cin, cout, H, W)) {
    winogradConv(e, c);
    return;
  }
  const bindings = [c.w, c.x, c.out];
  if (c.bias) bindings.push(c.bias);
  if (c.residual) bindings.push(c.residual);
  // The subgroup kernels bind x as vec4s: an x without values (no input channels) takes the general kernels.
  const subgroupKernels = e.subgroupMatmul && !e.tuning.conv2d && c.x.size > 0;
  // The input gradient's output channels (cout here) are the forward's input channels.
  // Its grid has a z per image, at most maxComputeWorkgroupsPerDimension; the direct kernel folds
  // every pixel of the batch into its columns.
  const imagesFit = N <= e.limits.maxComputeWorkgroupsPerDimension;
  if (subgroupKernels && imagesFit && pointwiseGemm(e, c.ksize, c.stride, c.inputDilation, c.transposedWeight ? cout : cin, H * W)) {
    runPointwise(e, c, bindings);
    return;
  }
  const variant = { ksize: c.ksize, pad: c.pad, stride: c.stride, inputDilation: c.inputDilation, bias: !!c.bias, residual: !!c.residual, transposedWeight: c.transposedWeight, storeLoop: e.cpuAdapter };
  const params = { Cin: cin, H, W, Cout: cout, N, Ho, Wo };
  if (subgroupKernels) {
    const rows = subgroupGemmRows(cout);
    const order = subgroupGemmOrder(cout, N * Ho * Wo);
    const workgroups = subgroupGemmWorkgroups(rows, cout, N * Ho * Wo, 1, 1, order);
    if (rowWindowConv(variant) && W % 4 === 0) {
      e.dispatch({ kernel: subgroupConv3x3Kernel(variant, rows, order), bindings: [...bindings, c.x], params, workgroups });
    } else {
      e.dispatch({ kernel: subgroupConv2dKernel(variant, rows, order), bindings, params, workgroups });
    }
    return;
  }
  const t = tiling(e, cout, N * Ho * Wo);
  e.dispatch({
    kernel: conv2dKernel(variant, t),
    bindings,
    params,
    workgroups: gemmWorkgroups(t, cout, N * Ho * Wo),
  });
}

/**
 * Split-K for the weight gradient: its output (Cout × Cin·k·k) is small and its reduction (every
 * pixel of the batch) long, so a few output tiles would leave most of a GPU idle. Splits the
 * reduction until there are about `splitKWorkgroups` workgroups (tuning `conv2dWeightGrad`;
 * default 64, and 1 on CPU adapters, whose few threads the output tiles already keep busy: on
 * lavapipe 8 splits measured slower), each split keeping at least SPLIT_K_MIN_REDUCTION steps so
 * the partial sums stay cheap to add, and at most about LONG_K, as matmul's (each thread's sum is
 * one f32 chain), as many as fit a binding: their partial sums take about cout·cin·k²/LONG_K floats
 * per pixel of the batch, less than its input and output gradient below about 3,600 channels at
 * 3×3 (a 31×31 kernel of 12 channels was refused where one split fits).
 */
const SPLIT_K_MIN_REDUCTION = 1024;

/**
 * The splits of a 1×1 conv weight gradient's reduction over N batches of K pixels (K a multiple
 * of 4): one up to LONG_K steps; past that, runs of at most K_CHUNK (whole batches while K is
 * shorter, else parts of each batch's pixels, multiples of 4: the kernel's step), as matmul sums a
 * long K. One f32 chain over the whole reduction was 1.6e-5 off float64 at 32 × 64² (PyTorch's
 * CPU float32: 5e-7).
 */
function pointwiseWeightGradSplits(N: number, K: number): { batchesPerSplit: number; kPerSplit: number; kSplits: number; splits: number } {
  if (N * K <= LONG_K) return { batchesPerSplit: N, kPerSplit: K, kSplits: 1, splits: 1 };
  if (K >= K_CHUNK) {
    const kPerSplit = 4 * Math.ceil(K / Math.ceil(K / K_CHUNK) / 4);
    const kSplits = Math.ceil(K / kPerSplit);
    return { batchesPerSplit: 1, kPerSplit, kSplits, splits: N * kSplits };
  }
  const batchesPerSplit = Math.floor(K_CHUNK / K);
  return { batchesPerSplit, kPerSplit: K, kSplits: 1, splits: Math.ceil(N / batchesPerSplit) };
}

function conv2dWeightGrad(e: Engine, dy: Tensor, x: Tensor, wShape: readonly number[], pad: number, stride: number): Tensor {
  const [N, cin, H, W] = x.shape;
  const [, cout, Ho, Wo] = dy.shape;
  const ksize = wShape[2];
  if (x.size === 0 || dy.size === 0) return e.zeros(wShape, 'dconv2d.w'); // a sum over no pixels
  if (winogradWeightGradient(e, ksize, stride, N, cin, cout, H, W)) return winogradWeightGrad(e, dy, x);
  if (pointwiseGemm(e, ksize, stride, 1, cin, H * W)) {
    const s = pointwiseWeightGradSplits(N, H * W);
    const partial = e.empty(s.splits > 1 ? [s.splits, ...wShape] : wShape, 'dconv2d.w');
    const rows = subgroupGemmRows(cout);
    e.dispatch({
      kernel: subgroupSplitSumKernel(rows),
      bindings: [dy, x, partial],
      params: { M: cout, N: cin, K: H * W, strideA: cout * H * W, strideB: cin * H * W, batches: N, batchesPerSplit: s.batchesPerSplit, kPerSplit: s.kPerSplit, kSplits: s.kSplits },
      workgroups: subgroupGemmWorkgroups(rows, cout, cin, s.splits),
    });
    return sumSplits(partial, s.splits);
  }
  const columns = cin * ksize * ksize;
  const t = tiling(e, cout, columns);
  const tiles = gemmWorkgroups(t, cout, columns).reduce((a, b) => a * b, 1); // output tiles, folds included
  const reduction = N * Ho * Wo;
  const target = e.tuning.conv2dWeightGrad?.splitKWorkgroups ?? (e.cpuAdapter ? 1 : 64);
  const fitting = Math.max(1, Math.floor(e.maxBindingBytes / (4 * cout * columns))); // partial sums bound whole
  const wanted = Math.min(fitting, Math.max(Math.ceil(reduction / LONG_K), Math.min(Math.ceil(target / tiles), Math.floor(reduction / SPLIT_K_MIN_REDUCTION))));
  const qPerSplit = Math.ceil(reduction / Math.max(1, wanted) / t.tk) * t.tk;
  const splits = Math.ceil(reduction / qPerSplit);
  const partial = e.empty(splits > 1 ? [splits, ...wShape] : wShape, 'dconv2d.w');
  e.dispatch({
    kernel: conv2dWeightGradKernel(ksize, pad, stride, t, e.cpuAdapter),
    bindings: [dy, x, partial],
    params: { Cin: cin, H, W, Cout: cout, N, Ho, Wo, qPerSplit },
    workgroups: gemmWorkgroups(t, cout, columns, splits),
  });
  return sumSplits(partial, splits);
}

/** The weight gradient from its splits' partial sums ([splits, …wShape]), or the one split as it is. */
function sumSplits(partial: Tensor, splits: number): Tensor {
  if (splits === 1) return partial;
  const dw = sum(partial, [0]);
  partial.dispose();
  return dw;
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
    throw new RangeError(`conv2d: only padding (k−1)/2 is supported; got k=${ksize}, pad=${pad}`);
  }
  const stride = opts.stride ?? 1;
  if (!Number.isInteger(stride) || stride < 1) throw new RangeError(`conv2d: stride ${stride} must be a positive integer`);
  if (opts.bias && opts.bias.size !== cout) throw new RangeError(`conv2d: bias ${shapeString(opts.bias.shape)} does not match ${cout} output channels`);
  // PyTorch's output size: ⌊(H + 2·pad − k) / stride⌋ + 1.
  const Ho = Math.floor((H + 2 * pad - ksize) / stride) + 1;
  const Wo = Math.floor((W + 2 * pad - ksize) / stride) + 1;
  const outShape = [N, cout, Ho, Wo];
  if (opts.residual && opts.residual.shape.join() !== outShape.join()) {
    throw new RangeError(`conv2d: residual ${shapeString(opts.residual.shape)} does not match output ${shapeString(outShape)}`);
  }
  const out = e.empty(outShape, `conv2d(${w.label})`);
  runConv(e, { w, x, out, ksize, pad, stride, inputDilation: 1, bias: opts.bias, residual: opts.residual, transposedWeight: false });
  const inputs = [x, w, ...(opts.bias ? [opts.bias] : []), ...(opts.residual ? [opts.residual] : [])];
  e.tape.record('conv2d', inputs, [out], [x, w], ([g]) => {
    const dy = g!;
    let dx: Tensor | null = null;
    if (x.requiresGrad) {
      dx = e.empty(x.shape, 'dconv2d.x');
      runConv(e, { w, x: dy, out: dx, ksize, pad: ksize - 1 - pad, stride: 1, inputDilation: stride, transposedWeight: true });
    }
    const dw = w.requiresGrad ? conv2dWeightGrad(e, dy, x, w.shape, pad, stride) : null;
    const grads: (Tensor | null)[] = [dx, dw];
    if (opts.bias) grads.push(opts.bias.requiresGrad ? sum(dy, [0, 2, 3]) : null);
    if (opts.residual) grads.push(opts.residual.requiresGrad ? dy : null);
    return grads;
  });
  return out;
}
