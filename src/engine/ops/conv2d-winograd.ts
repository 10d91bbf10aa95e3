// The stride-1, padding-1 3×3 conv through Winograd F(2×2, 3×3): tile transforms and 16 batched
// GEMMs (kernels/winograd.wgsl.ts has the algorithm and the backward's derivation). conv2d
// (./conv2d.ts) decides when to use it and records the tape; these functions only run kernels.
import { grid1d } from '../../../kernels/flat-index.ts';
import {
  scalarInputBinding,
  tilesPerInvocation,
  WINOGRAD_WORKGROUP,
  winogradOutputTransformKernel,
  winogradTileTransformKernel,
  winogradWeightGradTransformKernel,
  winogradWeightTransformKernel,
} from '../../../kernels/winograd.wgsl.ts';
import type { Engine } from '../engine.ts';
import type { Tensor } from '../tensor.ts';
import { add } from './elementwise.ts';
import { dispatchMatmul, LONG_K } from './matmul.ts';

/** 2×2 output tiles of an H × W map over N images: per column, per row and in the batch (T). */
export function winogradTiles(N: number, H: number, W: number) {
  const tilesY = Math.ceil(H / 2);
  const tilesX = Math.ceil(W / 2);
  return { tilesY, tilesX, T: N * tilesY * tilesX };
}

/** How many tile rows of `channels` channels fit one binding of V, M or dM (16 values per channel and tile). */
const tileRowsPerBinding = (e: Engine, channels: number, tilesX: number) => Math.floor(e.maxBindingBytes / (16 * channels * tilesX * 4));

/**
 * The tiles of the batch in chunks of whole tile rows whose buffers (V, M or dM: 16 values per
 * channel and tile, about 4× the maps) fit one storage binding, and of at most `maxTiles` tiles
 * where a row holds fewer: [firstTile, count] pairs. Every tile's result is computed the same way
 * whatever the chunking, so a batch split over several calls (or an engine with a lower binding
 * limit) gives identical forward values. Null when not even one tile row fits.
 */
function tileChunks(e: Engine, channels: number, tilesX: number, T: number, maxTiles = Infinity): [number, number][] | null {
  const fitting = tileRowsPerBinding(e, channels, tilesX);
  if (fitting < 1) return null;
  const rows = Math.max(1, Math.min(fitting, Math.floor(maxTiles / tilesX)));
  const chunks: [number, number][] = [];
  for (let first = 0; first < T; first += rows * tilesX) chunks.push([first, Math.min(rows * tilesX, T - first)]);
  return chunks;
}

/**
 * Whether a conv from cin to cout channels on [N, ·, H, W] maps can run through Winograd here:
 * U (16 × the kernel) and one tile row's buffers must each fit a binding.
 */
export function winogradFits(e: Engine, N: number, cin: number, cout: number, H: number, W: number): boolean {
  return 16 * cin * cout * 4 <= e.maxBindingBytes && tileRowsPerBinding(e, Math.max(cin, cout), winogradTiles(N, H, W).tilesX) >= 1;
}

/** V or dM ([16, C, count]) of tiles first … first + count − 1 of the NCHW tensor x. */
function tileTransform(e: Engine, x: Tensor, kind: 'input' | 'outputGrad', [first, count]: [number, number]): Tensor {
  const [, C, H, W] = x.shape;
  const { tilesY, tilesX } = winogradTiles(1, H, W);
  const R = tilesPerInvocation(tilesX);
  const vec4Rows = R > 1 && W % 4 === 0;
  const out = e.empty([16, C, count], kind === 'input' ? 'winograd.V' : 'winograd.dM');
  e.dispatch({
    kernel: winogradTileTransformKernel(kind, R, vec4Rows),
    bindings: vec4Rows && scalarInputBinding(kind, vec4Rows) ? [x, out, x] : [x, out],
    params: { C, H, W, tilesY, tilesX, T: count, firstTile: first },
    workgroups: grid1d((C * count) / R, WINOGRAD_WORKGROUP),
  });
  return out;
}

/** U ([16, M, Kc]) of w [Cout, Cin, 3, 3]; transposed: the input gradient's kernel (M = Cin). */
function weightTransform(e: Engine, w: Tensor, transposed: boolean): Tensor {
  const [cout, cin] = w.shape;
  const [M, Kc] = transposed ? [cin, cout] : [cout, cin];
  const U = e.empty([16, M, Kc], 'winograd.U');
  e.dispatch({
    kernel: winogradWeightTransformKernel(transposed),
    bindings: [w, U],
    params: { M, Kc },
    workgroups: grid1d(M * Kc, WINOGRAD_WORKGROUP),
  });
  return U;
}

export interface WinogradConvCall {
  w: Tensor;
  x: Tensor;
  out: Tensor;
  bias?: Tensor;
  residual?: Tensor;
  /** Convolve with the flipped, channel-swapped kernel (the input gradient). */
  transposedWeight: boolean;
}

/** out = conv3×3(x, w) (+ bias) (+ residual), out and x of the same H × W; winogradFits must hold. */
export function winogradConv(e: Engine, c: WinogradConvCall): void {
  const [N, cin, H, W] = c.x.shape;
  const cout = c.out.shape[1];
  const { tilesY, tilesX, T } = winogradTiles(N, H, W);
  const R = tilesPerInvocation(tilesX);
  const U = weightTransform(e, c.w, c.transposedWeight);
  const kernel = winogradOutputTransformKernel({ bias: !!c.bias, residual: !!c.residual, R, evenWidth: W % 2 === 0 });
  for (const chunk of tileChunks(e, Math.max(cin, cout), tilesX, T)!) {
    const count = chunk[1];
    const V = tileTransform(e, c.x, 'input', chunk);
    const M = e.empty([16, cout, count], 'winograd.M');
    dispatchMatmul(U, V, M, { M: cout, N: count, K: cin, batch: 16, transA: false, transB: false });
    V.dispose();
    const bindings = [M, c.out];
    if (c.bias) bindings.push(c.bias);
    if (c.residual) bindings.push(c.residual);
    e.dispatch({
      kernel,
      bindings,
      params: { C: cout, H, W, tilesY, tilesX, T: count, firstTile: chunk[0] },
      workgroups: grid1d((cout * count) / R, WINOGRAD_WORKGROUP),
    });
    M.dispose();
  }
  U.dispose();
}

/**
 * The tiles each GEMM of winogradWeightGrad sums over, chunk by chunk (its K): at most LONG_K, in
 * whole tile rows, each chunk's buffers within a binding; winogradFits must hold.
 */
export function winogradWeightGradTileCounts(e: Engine, N: number, cin: number, cout: number, H: number, W: number): number[] {
  const { tilesX, T } = winogradTiles(N, H, W);
  return tileChunks(e, Math.max(cin, cout), tilesX, T, LONG_K)!.map(([, count]) => count);
}

/** dw [Cout, Cin, 3, 3] of out = conv3×3(x, w), from the output gradient dy; winogradFits must hold. */
export function winogradWeightGrad(e: Engine, dy: Tensor, x: Tensor): Tensor {
  const [N, cin, H, W] = x.shape;
  const cout = dy.shape[1];
  const { tilesX, T } = winogradTiles(N, H, W);
  // dU = Σ over chunks of dM·Vᵀ, summed in chunk order. Each GEMM sums its chunk's tiles in one f32
  // chain per output, so a chunk holds at most LONG_K tiles (or one tile row, past 32,768 pixels
  // wide), as matmul's reductions: the binding's whole (131,072 tiles of 4 channels on lavapipe)
  // was 8.7e-6 off float64 for a [128, 4, 64, 64] batch of positive data where the direct conv's
  // split sums are 8e-7 off.
  let dU: Tensor | null = null;
  for (const chunk of tileChunks(e, Math.max(cin, cout), tilesX, T, LONG_K)!) {
    const V = tileTransform(e, x, 'input', chunk);
    const dM = tileTransform(e, dy, 'outputGrad', chunk);
    const part = e.empty([16, cout, cin], 'winograd.dU');
    dispatchMatmul(dM, V, part, { M: cout, N: cin, K: chunk[1], batch: 16, transA: false, transB: true });
    dM.dispose();
    V.dispose();
    if (dU) {
      const total = add(dU, part);
      dU.dispose();
      part.dispose();
      dU = total;
    } else dU = part;
  }
  const dw = e.empty([cout, cin, 3, 3], 'dconv2d.w');
  e.dispatch({
    kernel: winogradWeightGradTransformKernel(),
    bindings: [dU!, dw],
    params: { M: cout, Kc: cin },
    workgroups: grid1d(cout * cin, WINOGRAD_WORKGROUP),
  });
  dU!.dispose();
  return dw;
}
