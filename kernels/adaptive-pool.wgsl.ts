// PyTorch's AdaptiveAvgPool2d on NCHW planes: output cell (i, j) averages input rows
// [⌊i·H/Ho⌋, ⌈(i+1)·H/Ho⌉) and columns [⌊j·W/Wo⌋, ⌈(j+1)·W/Wo⌉). The backward spreads each
// output gradient evenly over its window; one thread per input element gathers from every output
// window that covers it (windows overlap when the sizes do not divide).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const ADAPTIVE_POOL_WORKGROUP = 256;

const ADAPTIVE_POOL_PARAMS = uniformLayout({ planes: 'u32', H: 'u32', W: 'u32', Ho: 'u32', Wo: 'u32' });

const WINDOW = /* wgsl */ `
fn windowStart(i: u32, inSize: u32, outSize: u32) -> u32 { return (i * inSize) / outSize; }
fn windowEnd(i: u32, inSize: u32, outSize: u32) -> u32 { return ((i + 1u) * inSize + outSize - 1u) / outSize; }`;

/** backward = false: x → y (one thread per output). true: dy → dx (one thread per input). Bindings: src, dst. */
export const adaptiveAvgPoolKernel = cachedKernelFactory(function adaptiveAvgPoolKernel(backward: boolean): KernelSource<typeof ADAPTIVE_POOL_PARAMS> {
  const WG = ADAPTIVE_POOL_WORKGROUP;
  return {
    key: `adaptiveAvgPool2d${backward ? 'Backward' : ''}`,
    params: ADAPTIVE_POOL_PARAMS,
    code: wgsl`
${ADAPTIVE_POOL_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
${WINDOW}
${flatMain(WG)}
#if ${!backward}
  if (i >= u.planes * u.Ho * u.Wo) { return; }
  let oj = i % u.Wo;
  let oi = (i / u.Wo) % u.Ho;
  let plane = i / (u.Wo * u.Ho);
  let r0 = windowStart(oi, u.H, u.Ho);
  let r1 = windowEnd(oi, u.H, u.Ho);
  let c0 = windowStart(oj, u.W, u.Wo);
  let c1 = windowEnd(oj, u.W, u.Wo);
  // Each window row summed on its own, then the rows: chains of a row's and a column's length, not
  // of the window's area (a 256² map pooled whole is 65,536 values; one chain lost ~1e-5 of them).
  var s = 0.0;
  for (var r = r0; r < r1; r++) {
    var rowSum = 0.0;
    for (var c = c0; c < c1; c++) { rowSum += src[(plane * u.H + r) * u.W + c]; }
    s += rowSum;
  }
  dst[i] = s / f32((r1 - r0) * (c1 - c0));
#else
  if (i >= u.planes * u.H * u.W) { return; }
  let c = i % u.W;
  let r = (i / u.W) % u.H;
  let plane = i / (u.W * u.H);
  // Output cells whose window contains (r, c) lie in a small range around r·Ho/H (a superset
  // is scanned; the window test decides).
  let oi0 = (r * u.Ho) / u.H;
  let oj0 = (c * u.Wo) / u.W;
  let oi1 = min(u.Ho, ((r + 1u) * u.Ho + u.H - 1u) / u.H + 1u);
  let oj1 = min(u.Wo, ((c + 1u) * u.Wo + u.W - 1u) / u.W + 1u);
  var s = 0.0;
  for (var oi = select(0u, oi0 - 1u, oi0 > 0u); oi < oi1; oi++) {
    let r0 = windowStart(oi, u.H, u.Ho);
    let r1 = windowEnd(oi, u.H, u.Ho);
    if (r < r0 || r >= r1) { continue; }
    for (var oj = select(0u, oj0 - 1u, oj0 > 0u); oj < oj1; oj++) {
      let c0 = windowStart(oj, u.W, u.Wo);
      let c1 = windowEnd(oj, u.W, u.Wo);
      if (c < c0 || c >= c1) { continue; }
      s += src[(plane * u.Ho + oi) * u.Wo + oj] / f32((r1 - r0) * (c1 - c0));
    }
  }
  dst[i] = s;
#endif
}`,
  };
});
