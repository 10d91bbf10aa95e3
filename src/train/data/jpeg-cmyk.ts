// Four-component JPEGs (Adobe CMYK and YCCK) as Pillow reads them. libjpeg-turbo's WebAssembly
// build (./jpeg-decoder.ts) only outputs RGB, which libjpeg cannot make of four components, so
// jpeg-js decodes them. jpeg-js repeats each sample of a plane stored at a lower resolution than
// the others, where libjpeg (and so Pillow) interpolates it with a triangle filter ("fancy"
// upsampling, jdsample.c): a CMYK file whose M, Y and K planes are half C's width and height was
// 41/255 off Pillow at colour edges, 70/255 on noise (the test fixtures). Here the planes jpeg-js
// decodes are upsampled as libjpeg does, then converted to RGB by jpeg-js as before (within 1/255
// of Pillow on a file whose planes are all full size). A file without an Adobe marker is read as
// Adobe CMYK, as Pillow reads it.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

/** A decoded plane: rows of at least `width` samples (jpeg-js pads them to whole blocks). */
interface Plane {
  lines: Uint8Array[];
  scaleX: number;
  scaleY: number;
}

interface JpegImageInstance {
  opts: Record<string, unknown>;
  /** The Adobe (APP14) marker's fields; its transformCode 0 is CMYK, 2 YCCK. */
  adobe: { transformCode: number } | null;
  width: number;
  height: number;
  components: Plane[];
  parse(bytes: Uint8Array): void;
  copyToImageData(image: { width: number; height: number; data: Uint8Array }, formatAsRGBA: boolean): void;
}

interface JpegImageClass {
  new (): JpegImageInstance;
  resetMaxMemoryUsage(bytes: number): void;
  requestMemoryAllocation(bytes: number): void;
}

/**
 * jpeg-js's decoder class, which its package keeps to itself (it exports `decode`, which hands out
 * only the converted pixels, not the planes): its module's source evaluated once with the module
 * object it expects, the class returned. The same code that `require('jpeg-js')` runs.
 */
const JpegImage = (() => {
  const require = createRequire(import.meta.url);
  const source = readFileSync(require.resolve('jpeg-js/lib/decoder.js'), 'utf8');
  return new Function('module', `${source}\nreturn JpegImage;`)({ exports: {} }) as JpegImageClass;
})();

export interface FourComponentLimits {
  maxResolutionInMP: number;
  maxMemoryUsageInMB: number;
}

/** 8-bit RGB of a four-component JPEG, as Pillow's Image.open(f).convert('RGB') gives it. */
export function decodeFourComponentJpeg(bytes: Uint8Array, limits: FourComponentLimits): { width: number; height: number; data: Uint8Array } {
  const image = new JpegImage();
  // jpeg-js's decode() defaults, as the decoder used them before.
  image.opts = { colorTransform: undefined, useTArray: true, formatAsRGBA: false, tolerantDecoding: true, ...limits };
  JpegImage.resetMaxMemoryUsage(limits.maxMemoryUsageInMB * 2 ** 20);
  image.parse(bytes);
  // Without an Adobe marker jpeg-js refuses four components; libjpeg takes them as CMYK and Pillow
  // inverts them as Adobe's ("assume adobe conventions", JpegImagePlugin): the same pixels as
  // with a marker of transform 0.
  image.adobe ??= { transformCode: 0 };
  const { width, height } = image;
  for (const plane of image.components) {
    const fx = Math.round(1 / plane.scaleX);
    const fy = Math.round(1 / plane.scaleY);
    // Fractional ratios (libjpeg refuses them, and so Pillow) keep jpeg-js's repetition.
    if (Math.abs(fx * plane.scaleX - 1) > 1e-9 || Math.abs(fy * plane.scaleY - 1) > 1e-9) continue;
    const [planeWidth, planeHeight] = [Math.ceil(width / fx), Math.ceil(height / fy)];
    JpegImage.requestMemoryAllocation(fx * planeWidth * fy * planeHeight);
    const upsampled = upsampleLikeLibjpeg(plane.lines, planeWidth, planeHeight, fx, fy);
    if (!upsampled) continue;
    plane.lines = upsampled;
    plane.scaleX = 1;
    plane.scaleY = 1;
  }
  JpegImage.requestMemoryAllocation(width * height * 3);
  const out = { width, height, data: new Uint8Array(width * height * 3) };
  image.copyToImageData(out, false);
  return out;
}

/**
 * A plane of `width` × `height` samples (its rows may be longer) brought to fx·width ×
 * fy·height as libjpeg-turbo's jdsample.c does with its default fancy upsampling: the triangle
 * filters h2v1 (fx 2, fy 1) and h2v2 (2, 2), where the plane is more than 2 samples wide, and h1v2
 * (1, 2); rows above the first and below the last are copies of them (jdmainct.c). Null where
 * libjpeg repeats samples (other factors, or planes 1–2 samples wide), as jpeg-js does already.
 */
export function upsampleLikeLibjpeg(lines: readonly Uint8Array[], width: number, height: number, fx: number, fy: number): Uint8Array[] | null {
  const row = (y: number) => lines[Math.min(Math.max(y, 0), height - 1)]!;
  if (fx === 2 && fy === 1 && width > 2) return Array.from({ length: height }, (_, y) => h2v1(row(y), width));
  if (fx === 2 && fy === 2 && width > 2) {
    return Array.from({ length: 2 * height }, (_, r) => {
      const y = r >> 1;
      return h2v2(row(y), row(r & 1 ? y + 1 : y - 1), width);
    });
  }
  if (fx === 1 && fy === 2) {
    return Array.from({ length: 2 * height }, (_, r) => {
      const y = r >> 1;
      const near = row(y);
      const far = row(r & 1 ? y + 1 : y - 1);
      const bias = r & 1 ? 2 : 1;
      return Uint8Array.from({ length: width }, (_, x) => (near[x]! * 3 + far[x]! + bias) >> 2);
    });
  }
  return null;
}

/** jdsample.c's h2v1_fancy_upsample: each output 3/4 of its nearer input and 1/4 of the further one. */
function h2v1(input: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(2 * width);
  out[0] = input[0]!;
  out[1] = (input[0]! * 3 + input[1]! + 2) >> 2;
  for (let i = 1; i < width - 1; i++) {
    const v = input[i]! * 3;
    out[2 * i] = (v + input[i - 1]! + 1) >> 2;
    out[2 * i + 1] = (v + input[i + 1]! + 2) >> 2;
  }
  out[2 * width - 2] = (input[width - 1]! * 3 + input[width - 2]! + 1) >> 2;
  out[2 * width - 1] = input[width - 1]!;
  return out;
}

/**
 * jdsample.c's h2v2_fancy_upsample for one output row: column sums 3·near + far of the nearer
 * input row and the one above or below it, then 3/4 of the nearer column sum and 1/4 of the
 * further one, over 16 with biases of 8 and 7.
 */
function h2v2(near: Uint8Array, far: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(2 * width);
  const colsum = (i: number) => near[i]! * 3 + far[i]!;
  out[0] = (colsum(0) * 4 + 8) >> 4;
  out[1] = (colsum(0) * 3 + colsum(1) + 7) >> 4;
  for (let i = 1; i < width - 1; i++) {
    const c = colsum(i) * 3;
    out[2 * i] = (c + colsum(i - 1) + 8) >> 4;
    out[2 * i + 1] = (c + colsum(i + 1) + 7) >> 4;
  }
  out[2 * width - 2] = (colsum(width - 1) * 3 + colsum(width - 2) + 8) >> 4;
  out[2 * width - 1] = (colsum(width - 1) * 4 + 7) >> 4;
  return out;
}
