// Winograd F(2×2, 3×3) for stride-1, padding-1 3×3 convs (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016, Eq. 8): each 2×2 output tile y of channel co is
//   y = Aᵀ [ Σ_ci (G g[co,ci] Gᵀ) ⊙ (Bᵀ d[ci] B) ] A
// with d the 4×4 input patch whose top-left pixel is (2·ty − 1, 2·tx − 1) (zero outside the image)
// and g the 3×3 kernel. With U[ξ] = (G g Gᵀ)[ξ] (Cout × Cin) and V[ξ] = (Bᵀ d B)[ξ] (Cin × T tiles)
// for each of the 16 positions ξ, the sum is 16 independent GEMMs M[ξ] = U[ξ]·V[ξ]: 16 multiplies
// per 4 outputs instead of 36, the other work being these transforms.
//
// Backward (src/engine/ops/conv2d-winograd.ts): the input gradient is the same forward on dy with
// the flipped, channel-swapped kernel (`transposed` weight transform); the weight gradient follows
// the chain rule through the same three steps:
//   dM = A dy Aᵀ (the tile transform of dy),  dU[ξ] = dM[ξ]·V[ξ]ᵀ (GEMM over the tiles),  dg = Gᵀ dU G.
// Layouts: V and dM are [16, C, T] with T = N·tilesY·tilesX tiles in (n, ty, tx) order (or a chunk
// of T whole tile rows from `firstTile` on, when the whole does not fit a binding), U and dU
// [16, Cout, Cin]. Every transform is written out as the sums its constant matrices give.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const WINOGRAD_WORKGROUP = 64;

/** C channels of H × W planes; tiles tilesY × tilesX per image; T tiles in this chunk, from firstTile. */
const WINOGRAD_TILE_PARAMS = uniformLayout({ C: 'u32', H: 'u32', W: 'u32', tilesY: 'u32', tilesX: 'u32', T: 'u32', firstTile: 'u32' });
/** M × Kc filters (Cout × Cin). */
const WINOGRAD_WEIGHT_PARAMS = uniformLayout({ M: 'u32', Kc: 'u32' });

const BT = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]];
const G = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]];
const AT = [[1, 1, 1, 0], [0, 1, -1, -1]];
const transpose = (m: number[][]) => m[0].map((_, j) => m.map((row) => row[j]));

/** Σ coefficient·name over the non-zero coefficients, as WGSL. */
function linear(terms: [number, string][]): string {
  const parts = terms.filter(([c]) => c !== 0).map(([c, name], i) => {
    const magnitude = Math.abs(c) === 1 ? name : `${Math.abs(c).toFixed(1)} * ${name}`;
    return i === 0 ? (c < 0 ? `-${magnitude}` : magnitude) : `${c < 0 ? '-' : '+'} ${magnitude}`;
  });
  return parts.length ? parts.join(' ') : '0.0';
}

/**
 * L · X · R for constant L (p × q) and R (r × s) and a q × r grid of WGSL values x(i, j): `let`
 * lines for the intermediate L·X (named `${tag}${i}_${j}`) and the p × s result expressions.
 */
function sandwich(L: number[][], x: (i: number, j: number) => string, R: number[][], tag: string): { lets: string; out: string[][] } {
  const lets: string[] = [];
  for (let i = 0; i < L.length; i++) {
    for (let j = 0; j < R.length; j++) lets.push(`let ${tag}${i}_${j} = ${linear(L[i].map((c, a) => [c, x(a, j)]))};`);
  }
  const out = L.map((_, i) => R[0].map((_, j) => linear(R.map((row, b) => [row[j], `${tag}${i}_${b}`]))));
  return { lets: lets.join('\n  '), out };
}

const grid = (name: string) => (i: number, j: number) => `${name}${i}_${j}`;

/** WGSL type of `width` floats. */
const vector = (width: number) => (width === 1 ? 'f32' : `vec${width}<f32>`);

/** Decodes tile t of the chunk (tile firstTile + t of the batch) into (image n, output row 2·ty, output column 2·tx). */
const tileDecode = `
fn decodeTile(t: u32) -> vec3<u32> {
  let perImage = u.tilesY * u.tilesX;
  let r = (u.firstTile + t) % perImage;
  return vec3((u.firstTile + t) / perImage, 2u * (r / u.tilesX), 2u * (r % u.tilesX));
}`;

/**
 * Tiles per invocation: R horizontally adjacent tiles t … t+R−1 (tilesX divisible by R), whose
 * values at each position ξ are adjacent in the [16, C, T] layout: one vecR load or store
 * instead of R (CPU adapters run each load or store as one scalar access per invocation), and
 * neighbouring patches share their overlapping input columns.
 */
export function tilesPerInvocation(tilesX: number): number {
  return tilesX % 4 === 0 ? 4 : tilesX % 2 === 0 ? 2 : 1;
}

export type WinogradTileInput = 'input' | 'outputGrad';

/**
 * Per channel c and R tiles from t of an NCHW tensor `x` [N, C, H, W]: `input` reads the
 * 4 × (2R + 2) patch at (2ty − 1, 2tx − 1) and writes Bᵀ d B of each tile (V); `outputGrad` reads
 * the 2 × 2R output pixels at (2ty, 2tx) of dy and writes A dy Aᵀ of each tile (dM). Pixels
 * outside the image read as zero.
 * `vec4Rows` (R of 2 or 4, W divisible by 4): the patch's whole vec4s of each row — columns 2tx
 * to 2tx + 2R − 1, inside the image and aligned — come as vec4 loads (through a second binding of
 * x as vec4s), the rest as single values: 4 × 4 loads instead of 40 for four input tiles.
 * Bindings: x, out ([16, C, T] as vecR), then x again for `input` with vec4Rows (the patch's
 * edge columns are single values; `outputGrad` with vec4Rows reads only vec4s, so its x is bound
 * as vec4s in the first place: scalarInputBinding). Uniforms: C, H, W, tilesY, tilesX, T (tiles
 * in this chunk), firstTile.
 */
/** Whether the tile transform reads single values of x (binding 1 as f32s), or only vec4s. */
export const scalarInputBinding = (kind: WinogradTileInput, vec4Rows: boolean) => kind === 'input' || !vec4Rows;

export const winogradTileTransformKernel = cachedKernelFactory(function winogradTileTransformKernel(kind: WinogradTileInput, R: number, vec4Rows = false): KernelSource<typeof WINOGRAD_TILE_PARAMS> {
  const input = kind === 'input';
  const size = input ? 4 : 2;
  const offset = input ? 1 : 0;
  if (vec4Rows && R !== 2 && R !== 4) throw new RangeError(`winograd tile transform: vec4 rows need 2 or 4 tiles per invocation (got ${R})`);
  const reads: string[] = [];
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < 2 * R + size - 2; j++) {
      // Column 2tx + q of the row sits in the vec4 at 2tx + 4·⌊q/4⌋ (j = q + offset).
      const q = j - offset;
      if (!vec4Rows || q < 0 || q >= 2 * R) reads.push(`let d${i}_${j} = at(plane, y0 + ${i}, x0 + ${j});`);
      else if (q % 4 === 0) reads.push(`let r${i}_${q / 4} = rowVec4(plane, y0 + ${i}, i32(tile.z) + ${q});`);
    }
    if (vec4Rows) for (let q = 0; q < 2 * R; q++) reads.push(`let d${i}_${q + offset} = r${i}_${Math.floor(q / 4)}[${q % 4}];`);
  }
  const tiles = Array.from({ length: R }, (_, r) => {
    const patch = (i: number, j: number) => `d${i}_${2 * r + j}`;
    return input ? sandwich(BT, patch, transpose(BT), `s${r}_`) : sandwich(transpose(AT), patch, AT, `s${r}_`);
  });
  const writes = Array.from({ length: 16 }, (_, k) => {
    const lanes = tiles.map((tile) => tile.out[k >> 2][k & 3]);
    return `out[(${k}u * stride + c * u.T + t) / ${R}u] = ${R === 1 ? lanes[0] : `vec${R}(${lanes.join(', ')})`};`;
  });
  return {
    params: WINOGRAD_TILE_PARAMS,
    key: `winogradTiles.${kind}.r${R}${vec4Rows ? '.vec4' : ''}`,
    code: wgsl`
${WINOGRAD_TILE_PARAMS.wgsl}
@group(0) @binding(2) var<storage, read_write> out: array<${vector(R)}>;
${tileDecode}
#if ${scalarInputBinding(kind, vec4Rows)}
@group(0) @binding(1) var<storage, read> x: array<f32>;

fn at(plane: u32, y: i32, xx: i32) -> f32 {
  if (y < 0 || xx < 0 || y >= i32(u.H) || xx >= i32(u.W)) { return 0.0; }
  return x[plane + u32(y) * u.W + u32(xx)];
}
#endif
#if ${vec4Rows}
@group(0) @binding(${scalarInputBinding(kind, vec4Rows) ? 3 : 1}) var<storage, read> x4: array<vec4<f32>>;

/** Columns xx … xx + 3 of row y (xx divisible by 4 and inside the image; the row may be outside). */
fn rowVec4(plane: u32, y: i32, xx: i32) -> vec4<f32> {
  if (y < 0 || y >= i32(u.H)) { return vec4<f32>(); }
  return x4[(plane + u32(y) * u.W + u32(xx)) / 4u];
}
#endif

${flatMain(WINOGRAD_WORKGROUP)}
  let groups = u.T / ${R}u;
  if (i >= u.C * groups) { return; }
  let c = i / groups;
  let t = (i % groups) * ${R}u;
  let tile = decodeTile(t);
  let plane = (tile.x * u.C + c) * u.H * u.W;
  let y0 = i32(tile.y) - ${offset};
  let x0 = i32(tile.z) - ${offset};
  let stride = u.C * u.T;
  ${reads.join('\n  ')}
  ${tiles.map((tile) => tile.lets).join('\n  ')}
  ${writes.join('\n  ')}
}`,
  };
});

/**
 * U[ξ, m, c] = (G g Gᵀ)[ξ] from w [Cout, Cin, 3, 3]: g = w[m, c] (M = Cout, Kc = Cin), or with
 * `transposed` the input gradient's kernel g = w[c, m] rotated by 180° (M = Cin, Kc = Cout).
 * Bindings: w, U ([16, M, Kc]). Uniforms: M, Kc.
 */
export const winogradWeightTransformKernel = cachedKernelFactory(function winogradWeightTransformKernel(transposed: boolean): KernelSource<typeof WINOGRAD_WEIGHT_PARAMS> {
  const { lets, out } = sandwich(G, grid('g'), transpose(G), 's');
  const reads: string[] = [];
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) reads.push(`let g${i}_${j} = w[base + ${transposed ? 8 - (3 * i + j) : 3 * i + j}u];`);
  }
  const writes = out.flat().map((v, k) => `U[${k}u * stride + m * u.Kc + c] = ${v};`);
  return {
    params: WINOGRAD_WEIGHT_PARAMS,
    key: `winogradWeights${transposed ? '.transposed' : ''}`,
    code: wgsl`
${WINOGRAD_WEIGHT_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> U: array<f32>;

${flatMain(WINOGRAD_WORKGROUP)}
  if (i >= u.M * u.Kc) { return; }
  let m = i / u.Kc;
  let c = i % u.Kc;
#if ${transposed}
  let base = (c * u.M + m) * 9u;
#else
  let base = (m * u.Kc + c) * 9u;
#endif
  let stride = u.M * u.Kc;
  ${reads.join('\n  ')}
  ${lets}
  ${writes.join('\n  ')}
}`,
  };
});

export interface WinogradOutputVariant {
  bias: boolean;
  residual: boolean;
  /** Tiles per invocation (tilesPerInvocation). */
  R: number;
  /** W is even: no tile is cut at the right edge and each tile row is one vec2 store. */
  evenWidth: boolean;
}

/**
 * y[n, co, 2ty + i, 2tx + j] = (Aᵀ M A)[i, j] (+ bias[co]) (+ residual) from M [16, Cout, T], R
 * tiles per invocation, skipping the pixels of partial tiles past the image's edge.
 * Bindings: M (as vecR), y (as vec2 when evenWidth), then bias and residual when present.
 * Uniforms: C (= Cout), H, W (of y), tilesY, tilesX, T (tiles in this chunk), firstTile.
 */
export const winogradOutputTransformKernel = cachedKernelFactory(function winogradOutputTransformKernel(v: WinogradOutputVariant): KernelSource<typeof WINOGRAD_TILE_PARAMS> {
  const { R, evenWidth } = v;
  let binding = 3;
  const biasBinding = v.bias ? binding++ : 0;
  const residualBinding = v.residual ? binding++ : 0;
  const lane = (k: number, r: number) => (R === 1 ? `m${k}` : `m${k}[${r}]`);
  const reads = Array.from({ length: 16 }, (_, k) => `let m${k} = M[(${k}u * stride + i) / ${R}u];`);
  const tiles = Array.from({ length: R }, (_, r) => sandwich(AT, (a, b) => lane(4 * a + b, r), transpose(AT), `s${r}_`));
  const writes = tiles.flatMap(({ out }, r) =>
    evenWidth
      ? out.map((row, i) => `put2(plane, tile.y + ${i}u, tile.z + ${2 * r}u, vec2(${row[0]}, ${row[1]}) + b);`)
      : out.flatMap((row, i) => row.map((value, j) => `put(plane, tile.y + ${i}u, tile.z + ${2 * r + j}u, ${value} + b);`)),
  );
  const element = evenWidth ? 'vec2<f32>' : 'f32';
  return {
    params: WINOGRAD_TILE_PARAMS,
    key: `winogradOutput.r${R}${evenWidth ? '.even' : ''}${v.bias ? '.bias' : ''}${v.residual ? '.res' : ''}`,
    code: wgsl`
${WINOGRAD_TILE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> M: array<${vector(R)}>;
@group(0) @binding(2) var<storage, read_write> y: array<${element}>;
#if ${v.bias}
@group(0) @binding(${biasBinding}) var<storage, read> bias: array<f32>;
#endif
#if ${v.residual}
@group(0) @binding(${residualBinding}) var<storage, read> residual: array<${element}>;
#endif
${tileDecode}

#if ${evenWidth}
// Pixels (row, col) and (row, col + 1); col is even and W too, so o is whole.
fn put2(plane: u32, row: u32, col: u32, value: vec2<f32>) {
  if (row >= u.H) { return; }
  let o = (plane + row * u.W + col) / 2u;
#if ${v.residual}
  y[o] = value + residual[o];
#else
  y[o] = value;
#endif
}
#else
fn put(plane: u32, row: u32, col: u32, value: f32) {
  if (row >= u.H || col >= u.W) { return; }
  let o = plane + row * u.W + col;
#if ${v.residual}
  y[o] = value + residual[o];
#else
  y[o] = value;
#endif
}
#endif

${flatMain(WINOGRAD_WORKGROUP, 'g')}
  let groups = u.T / ${R}u;
  if (g >= u.C * groups) { return; }
  let co = g / groups;
  let t = (g % groups) * ${R}u;
  // i = co·T + t: the index of the first tile's element at position ξ = 0.
  let i = co * u.T + t;
  let tile = decodeTile(t);
  let plane = (tile.x * u.C + co) * u.H * u.W;
  let stride = u.C * u.T;
#if ${v.bias}
  let b = bias[co];
#else
  let b = 0.0;
#endif
  ${reads.join('\n  ')}
  ${tiles.map((tile) => tile.lets).join('\n  ')}
  ${writes.join('\n  ')}
}`,
  };
});

/**
 * dw[co, ci] (3×3) = Gᵀ dU[co, ci] G from dU [16, Cout, Cin].
 * Bindings: dU, dw ([Cout, Cin, 3, 3]). Uniforms: M (= Cout), Kc (= Cin).
 */
export const winogradWeightGradTransformKernel = cachedKernelFactory(function winogradWeightGradTransformKernel(): KernelSource<typeof WINOGRAD_WEIGHT_PARAMS> {
  const { lets, out } = sandwich(transpose(G), grid('u'), G, 's');
  const reads: string[] = [];
  for (let i = 0; i < 4; i++) {
    for (let j = 0; j < 4; j++) reads.push(`let u${i}_${j} = dU[${4 * i + j}u * stride + i];`);
  }
  const writes = out.flat().map((v, k) => `dw[i * 9u + ${k}u] = ${v};`);
  return {
    params: WINOGRAD_WEIGHT_PARAMS,
    key: 'winogradWeightGrad',
    code: wgsl`
${WINOGRAD_WEIGHT_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> dU: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;

// i = co·Cin + ci: dU's element at ξ = 0 and the first of dw's nine.
${flatMain(WINOGRAD_WORKGROUP)}
  if (i >= u.M * u.Kc) { return; }
  let stride = u.M * u.Kc;
  ${reads.join('\n  ')}
  ${lets}
  ${writes.join('\n  ')}
}`,
  };
});
