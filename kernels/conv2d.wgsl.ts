// 2-D convolution (square kernel, zero padding, optional stride) on NCHW data as an implicit GEMM:
//   out[n] (Cout × P) = W (Cout × K) · im2col(x[n]) (K × P) + bias (+ residual[n])
// with P = Ho·Wo output pixels and K = Cin·k·k, every image's columns side by side (N·P columns), so the
// small feature maps of a batch (4×4, 8×8) still fill whole tiles. W is PyTorch's [Cout, Cin, k, k] read row-major, so the
// checkpoint's layout is the GEMM's A operand and the output lands in NCHW without a transpose.
// im2col is never materialised: the B-tile load decodes (ci, ky, kx) and (oy, ox), reads input
// pixel (oy·s + ky − pad, ox·s + kx − pad) and zero outside the image.
//
// Backward (used by src/engine/ops/conv2d.ts), stride s:
//   dx = conv(dilate_s(dy), W') with W'[ci, co, ky, kx] = W[co, ci, k−1−ky, k−1−kx], padding k−1−pad and
//        stride 1, where dilate_s puts s−1 zeros between dy's pixels (a stride-s conv's transpose):
//        the same kernel, reading A through the `transposedWeight` index map and B through
//        `inputDilation` (the zeros are never stored);
//   dW[co, (ci,ky,kx)] = Σ_n Σ_p dy[n, co, p] · x[n, ci, oy·s+ky−pad, ox·s+kx−pad]: conv2dWeightGradKernel.
//
// Both kernels share the register-tile step of ./register-tile.ts. The im2col slab is filled by
// threads that own fixed slab columns for the whole reduction, so the integer divisions that
// decode a column (pixel (n, oy, ox) here, weight column (ci, ky, kx) in the weight gradient) run
// once per thread, not once per loaded value (CPU adapters scalarise them).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { DEFAULT_MATMUL_TILING, GEMM_BLOCK_WGSL, type MatmulTiling } from './matmul.wgsl.ts';
import { SUBGROUP_GEMM_COLUMNS, SUBGROUP_GEMM_LANES, subgroupGemmBlock, type SubgroupGemmOrder, subgroupGemmOrderKey, type SubgroupGemmRows, type SubgroupGemmStep, subgroupGemmStep } from './matmul-subgroup.wgsl.ts';
import { accumulateStep, declareAccumulators, declareSlabs, fillSlab, ownedColumnSlab, storeAccumulators, storeLoop } from './register-tile.ts';
import { uniformLayout } from './uniform-layout.ts';

/** Cin (channels of x), H, W (of x as stored), Cout (channels of out or dy), N (images), Ho, Wo (of out or dy). */
const CONV2D_PARAMS = uniformLayout({ Cin: 'u32', H: 'u32', W: 'u32', Cout: 'u32', N: 'u32', Ho: 'u32', Wo: 'u32' });
/** CONV2D_PARAMS and the reduction length of one split. */
const CONV2D_WEIGHT_GRAD_PARAMS = uniformLayout({ Cin: 'u32', H: 'u32', W: 'u32', Cout: 'u32', N: 'u32', Ho: 'u32', Wo: 'u32', qPerSplit: 'u32' });

export interface Conv2dVariant {
  ksize: number;
  pad: number;
  bias: boolean;
  residual: boolean;
  /** Read W as the flipped, channel-swapped kernel of the input gradient (see header). */
  transposedWeight: boolean;
  /** Output pixel (oy, ox) reads around input pixel (oy·stride, ox·stride). */
  stride: number;
  /** Read x as if inputDilation − 1 zeros sat between its pixels (the input gradient of a strided conv). */
  inputDilation: number;
  /** The register-tiled kernel stores through one loop (storeLoop of ./register-tile.ts: CPU adapters). */
  storeLoop?: boolean;
}

/**
 * The bindings and functions the conv kernels share: loadW (W, or the input gradient's flipped,
 * channel-swapped W), column (a batched im2col column decoded once), im2col (its value at one
 * reduction row), store (with bias and residual) and gemmBlock (a workgroup's column and row blocks).
 */
function convModule(v: Conv2dVariant): string {
  const KK = v.ksize * v.ksize;
  const d = v.inputDilation;
  let binding = 4;
  const biasBinding = v.bias ? binding++ : 0;
  const residualBinding = v.residual ? binding++ : 0;
  return wgsl`${CONV2D_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#if ${v.bias}
@group(0) @binding(${biasBinding}) var<storage, read> bias: array<f32>;
#endif
#if ${v.residual}
@group(0) @binding(${residualBinding}) var<storage, read> residual: array<f32>;
#endif

fn loadW(m: u32, kk: u32, K: u32) -> f32 {
  if (m >= u.Cout || kk >= K) { return 0.0; }
#if ${v.transposedWeight}
  // m = ci of the forward conv (its input channel), kk = (co, ky, kx) over the forward's Cout = u.Cin.
  let co = kk / ${KK}u;
  let r = kk % ${KK}u;
  return w[(co * u.Cout + m) * ${KK}u + ${KK - 1}u - r];
#else
  return w[m * K + kk];
#endif
}

// Column c = n·P + p of the batched im2col, decoded once: (offset of image n in x, or −1 past the
// last column; top row and left column of its window, in the dilated input when d > 1).
fn column(c: u32, P: u32) -> vec3<i32> {
  if (c >= u.N * P) { return vec3(-1, 0, 0); }
  let p = c % P;
  return vec3(i32((c / P) * u.Cin * u.H * u.W), i32(p / u.Wo) * ${v.stride} - ${v.pad}, i32(p % u.Wo) * ${v.stride} - ${v.pad});
}

// im2col value of a decoded column at reduction row (ci, ky, kx); plane = ci·H·W.
fn im2col(col: vec3<i32>, plane: u32, ky: i32, kx: i32) -> f32 {
  let vy = col.y + ky;
  let vx = col.z + kx;
#if ${d > 1}
  // (vy, vx) is a pixel of the dilated input: only every d-th one is stored.
  if (vy < 0 || vx < 0 || vy % ${d} != 0 || vx % ${d} != 0) { return 0.0; }
  let yy = vy / ${d};
  let xx = vx / ${d};
#else
  let yy = vy;
  let xx = vx;
#endif
  if (col.x < 0 || yy < 0 || xx < 0 || yy >= i32(u.H) || xx >= i32(u.W)) { return 0.0; }
  return x[u32(col.x) + plane + u32(yy) * u.W + u32(xx)];
}

// value: the GEMM's sum plus the bias (convRowBias), added by the caller.
fn store(m: u32, c: u32, value: f32) {
  let P = u.Ho * u.Wo;
  if (m >= u.Cout || c >= u.N * P) { return; }
  let o = ((c / P) * u.Cout + m) * P + c % P;
#if ${v.residual}
  out[o] = value + residual[o];
#else
  out[o] = value;
#endif
}

${GEMM_BLOCK_WGSL}`;
}

/** WGSL for the bias of output channel m (a row of the GEMM; rows past Cout read the last). */
const convRowBias = (m: string) => `bias[min(${m}, u.Cout - 1u)]`;

/**
 * Bindings: w, x, out, then bias and residual when present.
 * Uniforms: Cin (channels of x), H, W (of x as stored), Cout (channels of out), N (images), Ho, Wo (of out).
 */
export const conv2dKernel = cachedKernelFactory(function conv2dKernel(v: Conv2dVariant, t: MatmulTiling = DEFAULT_MATMUL_TILING): KernelSource<typeof CONV2D_PARAMS> {
  const BM = t.wgY * t.tm;
  const BN = t.wgX * t.tn;
  const KK = v.ksize * v.ksize;
  const d = v.inputDilation;
  // Each owned column's image offset (−1 past the last column) and its window's top-left pixel.
  const slab = ownedColumnSlab(t, (c) => `column(${c}, P)`, (col) => `im2col(${col}, plane, ky, kx)`, 'inK');
  return {
    params: CONV2D_PARAMS,
    key: `conv2d.k${v.ksize}p${v.pad}s${v.stride}d${d}${v.bias ? '.bias' : ''}${v.residual ? '.res' : ''}${v.transposedWeight ? '.wT' : ''}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}${v.storeLoop ? '.storeLoop' : ''}`,
    code: wgsl`
${convModule(v)}
${declareSlabs(t)}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let P = u.Ho * u.Wo;
  let K = u.Cin * ${KK}u;
  let block = gemmBlock(wid, nwg, (u.N * P + ${BN - 1}u) / ${BN}u, (u.Cout + ${BM - 1}u) / ${BM}u);
  let row0 = block.y * ${BM}u;
  let col0 = block.x * ${BN}u;
  ${slab.declare}
  ${declareAccumulators(t)}
  for (var k0 = 0u; k0 < K; k0 += ${t.tk}u) {
    ${fillSlab(t, 'tileA', 'row0', true, (m, kk) => `loadW(${m}, k0 + ${kk}, K)`)}
    for (var r = ${slab.firstRow}; r < ${t.tk}u; r += ${slab.rowStep}u) {
      let k = k0 + r;
      let inK = k < K;
      let ci = k / ${KK}u;
      let plane = ci * u.H * u.W;
      let ky = i32((k % ${KK}u) / ${v.ksize}u);
      let kx = i32(k % ${v.ksize}u);
      ${slab.fillRow}
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tk}u; kk++) {
      ${accumulateStep(t, 'kk')}
    }
    workgroupBarrier();
  }
  ${storeAccumulators(t, v.bias ? { row: convRowBias } : {}, v.storeLoop)}
}`,
  };
});

/**
 * conv2dKernel's GEMM on 8-lane subgroups (lavapipe; kernels/matmul-subgroup.wgsl.ts has why): a
 * workgroup is one subgroup computing `rows` output channels × 32 columns of the batched im2col,
 * lane l the 4 columns col0 + 4l … + 3, decoded once. Every step of 2 reduction rows, each lane
 * loads W at its share of the rows (2 values each) for subgroupBroadcast, and its columns' 8
 * im2col values (steps of 4 made a loop body too long for the CPU's decoded-instruction cache:
 * 256→256 @16² stride 2, batch 4, 22.8 → 15.0 ms). Same bindings and uniforms as conv2dKernel;
 * dispatch subgroupGemmWorkgroups over Cout rows and N·Ho·Wo columns, in `order`.
 */
export const subgroupConv2dKernel = cachedKernelFactory(function subgroupConv2dKernel(v: Conv2dVariant, rows: SubgroupGemmRows, order: SubgroupGemmOrder = 'columns'): KernelSource<typeof CONV2D_PARAMS> {
  const S = SUBGROUP_GEMM_LANES;
  const kStep: SubgroupGemmStep = 2;
  const KK = v.ksize * v.ksize;
  const step = subgroupGemmStep(rows, false, kStep);
  const steps = Array.from({ length: kStep }, (_, kk) => kk);
  const aLoads = Array.from({ length: rows / S }, (_, r) => {
    const m = `row0 + ${S * r}u + lane`;
    return `let a${r} = vec${kStep}(${steps.map((kk) => `loadW(${m}, k + ${kk}u, K)`).join(', ')});`;
  });
  // Reduction row k + kk is (ci, ky, kx); past K (the last step) the values are zero.
  const bLoads = steps.map((kk) => `{
      let kr = k + ${kk}u;
      let plane = (kr / ${KK}u) * u.H * u.W;
      let ky = i32((kr % ${KK}u) / ${v.ksize}u);
      let kx = i32(kr % ${v.ksize}u);
      let values = vec4(im2col(col0, plane, ky, kx), im2col(col1, plane, ky, kx), im2col(col2, plane, ky, kx), im2col(col3, plane, ky, kx));
      b${kk} = select(vec4<f32>(), values, kr < K);
    }`);
  // Row s's 4 values, its bias read once.
  const stores = storeLoop('vec4<f32>', Array.from({ length: rows }, (_, i) => `acc${i}`), [
    ...(v.bias ? [`let rowBias = ${convRowBias('row0 + s')};`] : []),
    ...[0, 1, 2, 3].map((j) => `store(row0 + s, c0 + ${j}u, value[${j}]${v.bias ? ' + rowBias' : ''});`),
  ].join('\n    '));
  return {
    params: CONV2D_PARAMS,
    key: `conv2dSubgroup.k${v.ksize}p${v.pad}s${v.stride}d${v.inputDilation}${v.bias ? '.bias' : ''}${v.residual ? '.res' : ''}${v.transposedWeight ? '.wT' : ''}.r${rows}${subgroupGemmOrderKey(order)}`,
    code: wgsl`enable subgroups;
${convModule(v)}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let P = u.Ho * u.Wo;
  let K = u.Cin * ${KK}u;
  ${subgroupGemmBlock(order, `(u.N * P + ${SUBGROUP_GEMM_COLUMNS - 1}u) / ${SUBGROUP_GEMM_COLUMNS}u`, `(u.Cout + ${rows - 1}u) / ${rows}u`)}
  let row0 = block.y * ${rows}u;
  let c0 = block.x * ${SUBGROUP_GEMM_COLUMNS}u + 4u * lane;
  let col0 = column(c0, P);
  let col1 = column(c0 + 1u, P);
  let col2 = column(c0 + 2u, P);
  let col3 = column(c0 + 3u, P);
  ${step.declare}
  ${steps.map((kk) => `var b${kk}: vec4<f32>;`).join(' ')}
  for (var k = 0u; k < K; k += ${kStep}u) {
    ${aLoads.join('\n    ')}
    ${bLoads.join('\n    ')}
    ${step.fmas}
  }
  ${stores}
}`,
  };
});

/**
 * subgroupConv2dKernel for the 3×3 conv with stride 1 and padding 1 (and the input gradient of
 * one, `transposedWeight`) on maps whose width is a multiple of 4: a lane's 4 columns are then 4
 * neighbouring pixels (ox … ox + 3) of one output row, and for each input channel ci and kernel
 * row ky their 12 im2col values are 6 neighbouring pixels of one input row, ox − 1 … ox + 4,
 * read as a vec4 (x4, the same buffer as x) and two single values instead of 12 decoded gathers
 * (on lavapipe every load is a per-lane gather, so the loads set the speed). The reduction runs
 * over (ci, ky, kx) in W's order, as subgroupConv2dKernel's does: the same sums, bit for bit (but for
 * the sign of a zero). One loop step is one (ci, ky), not one ci with its three kernel rows
 * unrolled: a loop body of 3·rows vec4 FMAs stays in the CPU's decoded-instruction cache, where
 * 9·rows did not (1024→1024 @8² on lavapipe: 62 → 41 ms, the speed of a matmul of the same M, N, K).
 * Bindings: conv2dKernel's, then x again as x4. Dispatch: subgroupGemmWorkgroups, in `order`.
 */
export const subgroupConv3x3Kernel = cachedKernelFactory(function subgroupConv3x3Kernel(v: Conv2dVariant, rows: SubgroupGemmRows, order: SubgroupGemmOrder = 'columns'): KernelSource<typeof CONV2D_PARAMS> {
  if (!rowWindowConv(v)) throw new RangeError('subgroupConv3x3Kernel: 3×3 kernels with stride 1, padding 1 and no input dilation only');
  const S = SUBGROUP_GEMM_LANES;
  const x4Binding = 4 + Number(v.bias) + Number(v.residual);
  const aLoads = Array.from({ length: rows / S }, (_, r) => `let a${r} = weightTaps(row0 + ${S * r}u + lane, ci, ky);`);
  const fmas: string[] = [];
  for (let kx = 0; kx < 3; kx++) {
    for (let i = 0; i < rows; i++) fmas.push(`acc${i} = fma(vec4(subgroupBroadcast(a${Math.floor(i / S)}[${kx}], ${i % S}u)), b${kx}, acc${i});`);
  }
  const stores = storeLoop('vec4<f32>', Array.from({ length: rows }, (_, i) => `acc${i}`), 'storeColumns(row0 + s, o + s * P, value);');
  return {
    params: CONV2D_PARAMS,
    key: `conv2dSubgroup3x3${v.bias ? '.bias' : ''}${v.residual ? '.res' : ''}${v.transposedWeight ? '.wT' : ''}.r${rows}${subgroupGemmOrderKey(order)}`,
    code: wgsl`enable subgroups;
${convModule(v)}
@group(0) @binding(${x4Binding}) var<storage, read> x4: array<vec4<f32>>;

// W's three taps (kx = 0, 1, 2) at row m, reduction channel ci and kernel row ky; rows past Cout
// read row Cout − 1 (their sums are never stored).
fn weightTaps(m: u32, ci: u32, ky: u32) -> vec3<f32> {
  let row = min(m, u.Cout - 1u);
#if ${v.transposedWeight}
  let base = ((ci * u.Cout + row) * 3u + 2u - ky) * 3u;
  return vec3(w[base + 2u], w[base + 1u], w[base]);
#else
  let base = ((row * u.Cin + ci) * 3u + ky) * 3u;
  return vec3(w[base], w[base + 1u], w[base + 2u]);
#endif
}

// The lane's 4 outputs of channel m, from out[o].
fn storeColumns(m: u32, o: u32, value: vec4<f32>) {
  if (m >= u.Cout) { return; }
  var r = value;
#if ${v.bias}
  r += bias[m];
#endif
  for (var j = 0u; j < 4u; j++) {
#if ${v.residual}
    out[o + j] = r[j] + residual[o + j];
#else
    out[o + j] = r[j];
#endif
  }
}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let P = u.H * u.W;
  ${subgroupGemmBlock(order, `(u.N * P + ${SUBGROUP_GEMM_COLUMNS - 1}u) / ${SUBGROUP_GEMM_COLUMNS}u`, `(u.Cout + ${rows - 1}u) / ${rows}u`)}
  let row0 = block.y * ${rows}u;
  let c0 = block.x * ${SUBGROUP_GEMM_COLUMNS}u + 4u * lane;
  // Lanes past the last column compute the last 4 again (their sums are never stored).
  let column0 = min(c0, u.N * P - 4u);
  let image = column0 / P;
  let p = column0 % P;
  let oy = p / u.W;
  let ox = p % u.W;
  let lastX = arrayLength(&x) - 1u;
  ${Array.from({ length: rows }, (_, i) => `var acc${i} = vec4<f32>();`).join(' ')}
  // (ci, ky) counted along with the step rather than decoded from it by a division each step.
  var ci = 0u;
  var ky = 0u;
  for (var step = 0u; step < u.Cin * 3u; step++) {
    let iy = i32(oy + ky) - 1;
    let inside = iy >= 0 && iy < i32(u.H);
    let start = (image * u.Cin + ci) * P + u32(clamp(iy, 0, i32(u.H) - 1)) * u.W + ox;
    let mid = select(vec4<f32>(), x4[start / 4u], inside);
    let left = select(0.0, x[max(start, 1u) - 1u], inside && ox > 0u);
    let right = select(0.0, x[min(start + 4u, lastX)], inside && ox + 4u < u.W);
    let b0 = vec4(left, mid.xyz);
    let b1 = mid;
    let b2 = vec4(mid.yzw, right);
    ${aLoads.join('\n    ')}
    ${fmas.join('\n    ')}
    ky++;
    if (ky == 3u) {
      ky = 0u;
      ci++;
    }
  }
  if (c0 < u.N * P) {
    let o = (image * u.Cout + row0) * P + p;
    ${stores}
  }
}`,
  };
});

/** Whether subgroupConv3x3Kernel computes this conv (given maps whose width is a multiple of 4). */
export function rowWindowConv(v: Pick<Conv2dVariant, 'ksize' | 'pad' | 'stride' | 'inputDilation'>): boolean {
  return v.ksize === 3 && v.pad === 1 && v.stride === 1 && v.inputDilation === 1;
}

/**
 * dW (Cout × Cin·k·k) = Σ_n dy[n] (Cout × P) · im2col(x[n])ᵀ (P × Cin·k·k): a GEMM whose reduction
 * runs over every output pixel q = n·P + p of the batch. Split-K: workgroup z reduces over
 * q ∈ [z·qPerSplit, (z+1)·qPerSplit) (qPerSplit a multiple of tk) and writes slice z of `dw`
 * ([splits, Cout, Cin·k·k]), which the caller sums when there are several.
 * Bindings: dy, x, dw. Uniforms: Cin, H, W (of x), Cout, N, Ho, Wo (of dy), qPerSplit.
 */
export const conv2dWeightGradKernel = cachedKernelFactory(function conv2dWeightGradKernel(ksize: number, pad: number, stride: number, t: MatmulTiling = DEFAULT_MATMUL_TILING, storeLoop = false): KernelSource<typeof CONV2D_WEIGHT_GRAD_PARAMS> {
  const BM = t.wgY * t.tm;
  const BN = t.wgX * t.tn;
  const KK = ksize * ksize;
  const slab = ownedColumnSlab(t, (c) => `weightColumn(${c})`, (col) => `im2colT(${col}, image, oy, ox)`, 'inQ');
  return {
    params: CONV2D_WEIGHT_GRAD_PARAMS,
    key: `conv2dWeightGrad.k${ksize}p${pad}s${stride}.${t.wgX}x${t.wgY}.${t.tm}x${t.tn}.k${t.tk}${storeLoop ? '.storeLoop' : ''}`,
    code: wgsl`
${CONV2D_WEIGHT_GRAD_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
${declareSlabs(t)}

// dy at channel m and reduction index q (zero from this split's end on).
fn loadDy(m: u32, q: u32, qEnd: u32, P: u32) -> f32 {
  if (m >= u.Cout || q >= qEnd) { return 0.0; }
  return dy[((q / P) * u.Cout + m) * P + q % P];
}

// Weight column col = (ci, ky, kx), decoded once: (offset of channel ci's plane, or −1 past the
// last column; ky − pad; kx − pad).
fn weightColumn(col: u32) -> vec3<i32> {
  if (col >= u.Cin * ${KK}u) { return vec3(-1, 0, 0); }
  let r = col % ${KK}u;
  return vec3(i32((col / ${KK}u) * u.H * u.W), i32(r / ${ksize}u) - ${pad}, i32(r % ${ksize}u) - ${pad});
}

// x at output pixel (oy, ox) of the image at offset image in x, under weight column col.
fn im2colT(col: vec3<i32>, image: u32, oy: i32, ox: i32) -> f32 {
  let yy = oy * ${stride} + col.y;
  let xx = ox * ${stride} + col.z;
  if (col.x < 0 || yy < 0 || xx < 0 || yy >= i32(u.H) || xx >= i32(u.W)) { return 0.0; }
  return x[image + u32(col.x) + u32(yy) * u.W + u32(xx)];
}

fn store(m: u32, col: u32, value: f32) {
  let KW = u.Cin * ${KK}u;
  if (m >= u.Cout || col >= KW) { return; }
  dw[(splitIndex * u.Cout + m) * KW + col] = value;
}

var<private> splitIndex: u32;

${GEMM_BLOCK_WGSL}

@compute @workgroup_size(${t.wgX}, ${t.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let tx = lid3.x;
  let ty = lid3.y;
  let lid = ty * ${t.wgX}u + tx;
  let P = u.Ho * u.Wo;
  let block = gemmBlock(wid, nwg, (u.Cin * ${KK}u + ${BN - 1}u) / ${BN}u, (u.Cout + ${BM - 1}u) / ${BM}u);
  splitIndex = block.z;
  let qBegin = block.z * u.qPerSplit;
  let qEnd = min(qBegin + u.qPerSplit, u.N * P);
  let row0 = block.y * ${BM}u;
  let col0 = block.x * ${BN}u;
  ${slab.declare}
  ${declareAccumulators(t)}
  for (var q0 = qBegin; q0 < qEnd; q0 += ${t.tk}u) {
    ${fillSlab(t, 'tileA', 'row0', true, (m, kk) => `loadDy(${m}, q0 + ${kk}, qEnd, P)`)}
    for (var r = ${slab.firstRow}; r < ${t.tk}u; r += ${slab.rowStep}u) {
      let q = q0 + r;
      let inQ = q < qEnd;
      let p = q % P;
      let image = (q / P) * u.Cin * u.H * u.W;
      let oy = i32(p / u.Wo);
      let ox = i32(p % u.Wo);
      ${slab.fillRow}
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.tk}u; kk++) {
      ${accumulateStep(t, 'kk')}
    }
    workgroupBarrier();
  }
  ${storeAccumulators(t, {}, storeLoop)}
}`,
  };
});
