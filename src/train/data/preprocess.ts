// What every decoded image becomes before the U-Net sees it, the same in Node (image folders, the
// CLI) and in a browser (the example page; its decoding is the browser's, which applies EXIF
// rotation and drops colour under transparent pixels where the CLI's decoder, as Pillow, does
// neither): guided-diffusion's center_crop_arr (guided_diffusion/
// image_datasets.py, its evaluation preprocessing): Pillow BOX halving while the shorter side is at
// least twice the model size, then a BICUBIC (antialiased) resize of the shorter side to the model
// size, centre crop — bit-exact with Pillow 9.4 — then an optional horizontal flip and CHW values
// pixel / 127.5 − 1 in [−1, 1], as numpy's float32 gives them.
// The resampling is a port of Pillow's src/libImaging/Resample.c at tag 9.4.0 (the line numbers
// below are that file's): per-axis filter taps in 22-bit fixed point, a horizontal pass into an
// 8-bit image, then a vertical pass.
// No Node import: the library exports it for pages that read their own images.

/** What preprocess does, as feature caches record it (a cache of other x0s is not mixed with these). */
export const FOLDER_PREPROCESSING = 'center_crop_arr (Pillow 9.4 BOX halving + BICUBIC)';

export interface Rgb {
  width: number;
  height: number;
  /** RGB, row-major, uint8. */
  data: Uint8Array;
}

/** Resize the shorter side to `size` (as guided-diffusion's center_crop_arr), centre crop size×size, optional flip → CHW floats in [−1, 1]. */
export function preprocess(img: Rgb, size: number, flip: boolean, out: Float32Array, offset: number): void {
  if (!(Number.isInteger(img.width) && Number.isInteger(img.height) && img.width > 0 && img.height > 0)) throw new RangeError(`preprocess: an image of ${img.width} × ${img.height} pixels`);
  if (img.data.length !== img.width * img.height * 3) {
    const rgba = img.data.length === img.width * img.height * 4 ? ' (4 per pixel: RGBA, such as ImageData.data? drop the alpha)' : '';
    throw new RangeError(`preprocess: a ${img.width} × ${img.height} RGB image has ${img.width * img.height * 3} values, this one ${img.data.length}${rgba}`);
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + 3 * size * size > out.length) throw new RangeError(`preprocess: ${3 * size * size} values from offset ${offset} do not fit an output of ${out.length}`);
  const crop = centerCropArr(img, size);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const ox = flip ? size - 1 - x : x;
      const p = (y * size + x) * 3;
      for (let c = 0; c < 3; c++) out[offset + c * plane + y * size + ox] = LEVELS[crop.data[p + c]];
    }
  }
}

/** numpy's `arr.astype(np.float32) / 127.5 - 1` for each 8-bit value: float32 division then float32 subtraction. */
const LEVELS = Float32Array.from({ length: 256 }, (_, k) => Math.fround(k / 127.5) - 1);

/**
 * guided-diffusion's center_crop_arr (guided_diffusion/image_datasets.py lines 126-143 at commit
 * 22e0df8): halve with BOX (x // 2 per side) while the shorter side is at least 2·size, resize to
 * (round(w·s), round(h·s)) with BICUBIC, s = size / shorter side, and take the size×size crop at
 * ((h′ − size) // 2, (w′ − size) // 2). Only the crop of the last resize is computed: each output
 * pixel depends only on its own taps, so that is the same as cropping after.
 */
function centerCropArr(img: Rgb, size: number): Rgb {
  let im = img;
  while (Math.min(im.width, im.height) >= 2 * size) im = pillowResize(im, im.width >> 1, im.height >> 1, BOX);
  const scale = size / Math.min(im.width, im.height);
  const width = roundHalfEven(im.width * scale);
  const height = roundHalfEven(im.height * scale);
  const crop = { x: Math.floor((width - size) / 2), y: Math.floor((height - size) / 2), width: size, height: size };
  return pillowResize(im, width, height, BICUBIC, crop);
}

/** Python 3's round() of a non-negative float: halves go to the even integer. */
function roundHalfEven(x: number): number {
  const down = Math.floor(x);
  const frac = x - down;
  return frac > 0.5 || (frac === 0.5 && down % 2 === 1) ? down + 1 : down;
}

/** A filter of Resample.c: its kernel and its support (half-width) at scale 1. */
interface Filter {
  support: number;
  kernel: (x: number) => number;
}

/** Resample.c box_filter (line 13): 1 on (−0.5, 0.5]. */
const BOX: Filter = { support: 0.5, kernel: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) };

/** Resample.c bicubic_filter (line 47): Keys' cubic convolution with a = −0.5, each expression as written there so the doubles agree. */
const BICUBIC: Filter = {
  support: 2,
  kernel: (x) => {
    const a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  },
};

/** Resample.c PRECISION_BITS = 32 − 8 − 2 (line 92): weights in fixed point with 22 fractional bits. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

/** Resample.c clip8 (line 177, a lookup table over sum >> 22): the 22-bit fixed-point sum (rounding half already added) → 0..255. */
function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** The taps of some output pixels along one axis: pixel i reads source pixels start[i] .. start[i] + count[i] − 1 with weights[i·ksize + j]. */
interface Taps {
  start: Int32Array;
  count: Int32Array;
  ksize: number;
  weights: Int32Array;
}

/**
 * Resample.c precompute_coeffs (line 182; box = the whole axis) and normalize_coeffs_8bpc (line
 * 269), for output pixels [from, to) of an axis resized from `inSize` to `outSize`. When shrinking, the filter is stretched
 * by in/out (antialiasing); tap x of pixel xx is the kernel at (x + xmin − center + 0.5) / filterscale
 * with center = (xx + 0.5)·in/out, the taps are divided by their sum, then rounded half away from
 * zero to 22-bit fixed point. The C integer casts truncate toward zero (Math.trunc).
 */
function axisTaps(inSize: number, outSize: number, filter: Filter, from: number, to: number): Taps {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const n = to - from;
  const start = new Int32Array(n);
  const count = new Int32Array(n);
  const weights = new Int32Array(n * ksize);
  const k = new Float64Array(ksize);
  const ss = 1 / filterScale;
  for (let i = 0; i < n; i++) {
    const center = (from + i + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = filter.kernel((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      weights[i * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * ONE : 0.5 + w * ONE);
    }
    start[i] = xmin;
    count[i] = xmax;
  }
  return { start, count, ksize, weights };
}

/**
 * Taps that copy source pixels [from, to). Pillow skips a pass whose size is unchanged (Resample.c
 * line 633; Image.resize returns a copy when neither changes, PIL/Image.py line 2162): one tap of
 * weight 1.0 gives back each pixel exactly, (p·2²² + 2²¹) >> 22 = p, and crops to the window.
 */
function copyTaps(from: number, to: number): Taps {
  const n = to - from;
  return { start: Int32Array.from({ length: n }, (_, i) => from + i), count: new Int32Array(n).fill(1), ksize: 1, weights: new Int32Array(n).fill(ONE) };
}

/**
 * Pillow's Image.resize(size, filter) for RGB (ImagingResampleInner, line 616), keeping only
 * `window` of the result: the horizontal pass first, over just the source rows the vertical pass reads, into an
 * 8-bit image; then the vertical pass. A pass whose size is unchanged is skipped (a copy).
 */
function pillowResize(img: Rgb, width: number, height: number, filter: Filter, window = { x: 0, y: 0, width, height }): Rgb {
  const taps = (inSize: number, outSize: number, from: number, n: number) =>
    inSize === outSize ? copyTaps(from, from + n) : axisTaps(inSize, outSize, filter, from, from + n);
  const horizontal = taps(img.width, width, window.x, window.width);
  const vertical = taps(img.height, height, window.y, window.height);
  const last = window.height - 1;
  const rowFrom = vertical.start[0];
  const rowTo = vertical.start[last] + vertical.count[last];
  const rows = resampleRows(img, horizontal, rowFrom, rowTo);
  for (let i = 0; i < vertical.start.length; i++) vertical.start[i] -= rowFrom;
  return resampleColumns(rows, vertical);
}

/**
 * One output pixel of either pass: the RGB at src[p], src[p + step], … weighted by the `taps`
 * weights from weights[first], summed in fixed point from the rounding half, clip8'd into dst[o..o+2].
 */
function weightedPixel(src: Uint8Array, p: number, step: number, weights: Int32Array, first: number, taps: number, dst: Uint8Array, o: number): void {
  let r = HALF;
  let g = HALF;
  let b = HALF;
  for (let j = first, end = first + taps; j < end; j++, p += step) {
    const w = weights[j];
    r += src[p] * w;
    g += src[p + 1] * w;
    b += src[p + 2] * w;
  }
  dst[o] = clip8(r);
  dst[o + 1] = clip8(g);
  dst[o + 2] = clip8(b);
}

/** Resample.c ImagingResampleHorizontal_8bpc (line 286) over source rows [rowFrom, rowTo): each output pixel is clip8 of the rounded fixed-point weighted sum. */
function resampleRows(img: Rgb, taps: Taps, rowFrom: number, rowTo: number): Rgb {
  const width = taps.start.length;
  const height = rowTo - rowFrom;
  const src = img.data;
  const dst = new Uint8Array(width * height * 3);
  const { start, count, ksize, weights } = taps;
  let o = 0;
  for (let y = rowFrom; y < rowTo; y++) {
    const row = y * img.width * 3;
    for (let xx = 0; xx < width; xx++) {
      weightedPixel(src, row + start[xx] * 3, 3, weights, xx * ksize, count[xx], dst, o);
      o += 3;
    }
  }
  return { width, height, data: dst };
}

/** Resample.c ImagingResampleVertical_8bpc (line 378): the same along columns. */
function resampleColumns(img: Rgb, taps: Taps): Rgb {
  const width = img.width;
  const height = taps.start.length;
  const stride = width * 3;
  const src = img.data;
  const dst = new Uint8Array(width * height * 3);
  const { start, count, ksize, weights } = taps;
  let o = 0;
  for (let yy = 0; yy < height; yy++) {
    const first = start[yy] * stride;
    for (let x = 0; x < stride; x += 3) {
      weightedPixel(src, first + x, stride, weights, yy * ksize, count[yy], dst, o);
      o += 3;
    }
  }
  return { width, height, data: dst };
}
