// preprocess() against the reference pipeline's evaluation preprocessing: guided-diffusion's
// center_crop_arr (Pillow BOX halving, BICUBIC resize of the shorter side, centre crop) and the
// optional width flip, run by Pillow 9.4 (test/fixtures/preprocess.safetensors, made by
// make-preprocess.py). Bit-exact: every pixel the same 8-bit level, every value numpy's float32.
import { createHash } from 'node:crypto';
import t from 'tap';
import { openSafetensors } from '../../../src/model/checkpoint/safetensors.ts';
import { preprocess, type Rgb } from '../../../src/train/data/preprocess.ts';

const dump = await openSafetensors(new URL('../../fixtures/preprocess.safetensors', import.meta.url).pathname);
t.teardown(() => dump.close());
/** numpy's float32 k / 127.5 − 1, k = 0..255. */
const levels = await dump.read('levels');
const cases = JSON.parse(dump.metadata.cases) as [name: string, size: number, flip: boolean][];
const hashed = JSON.parse(dump.metadata.hashed) as [width: number, height: number, size: number, flip: boolean, seed: number, sha256: string][];

async function image(key: string): Promise<Rgb> {
  const [height, width] = dump.info(key)!.shape;
  return { width, height, data: Uint8Array.from(await dump.read(key)) };
}

/** CHW values in [−1, 1] → HWC, in 8-bit levels (v · 127.5 + 127.5, not rounded). */
function hwcLevels(out: Float32Array, size: number): Float64Array {
  const plane = size * size;
  const hwc = new Float64Array(3 * plane);
  for (let c = 0; c < 3; c++) for (let i = 0; i < plane; i++) hwc[i * 3 + c] = out[c * plane + i] * 127.5 + 127.5;
  return hwc;
}

/** The values that are not numpy's float32 for their level (`want`, HWC). */
function notNumpy(out: Float32Array, size: number, want: ArrayLike<number>): number {
  const plane = size * size;
  let n = 0;
  for (let c = 0; c < 3; c++) for (let i = 0; i < plane; i++) if (out[c * plane + i] !== levels[want[i * 3 + c]]) n++;
  return n;
}

t.test('each case equals Pillow 9.4 running center_crop_arr, to the level', async (t) => {
  t.equal(cases.length, 18);
  for (const [name, size, flip] of cases) {
    const input = await image(`${name}.input`);
    const expected = await dump.read(`${name}.expected`);
    const out = new Float32Array(3 * size * size);
    preprocess(input, size, flip, out, 0);
    const got = hwcLevels(out, size);
    let maxDiff = 0;
    let first = -1;
    for (let i = 0; i < got.length; i++) {
      const d = Math.abs(got[i] - expected[i]);
      if (d >= 1e-3 && first < 0) first = i;
      maxDiff = Math.max(maxDiff, d);
    }
    const where = first < 0 ? '' : ` (first at y ${Math.floor(first / 3 / size)}, x ${Math.floor(first / 3) % size}, channel ${first % 3}: ${got[first].toFixed(2)} vs ${expected[first]})`;
    t.ok(maxDiff < 1e-3, `${name}${flip ? ' flipped' : ''} (${input.width}×${input.height} → ${size}): max difference ${maxDiff.toFixed(4)} levels${where}`);
    t.equal(notNumpy(out, size, expected), 0, `${name}: every value is numpy's float32 pixel / 127.5 − 1`);
  }
});

/** An integer hash image, the same as hashed_image in make-preprocess.py: a checkerboard of
 * 32-pixel squares, hashed noise in one colour and a sawtooth (hard 255 → 0 wraps) in the other. */
function hashedImage(width: number, height: number, seed: number): Rgb {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let v = (Math.imul(x, 374761393) + Math.imul(y, 668265263) + Math.imul(c, 2246822519) + seed) >>> 0;
        v = Math.imul(v ^ (v >>> 13), 1274126177) >>> 0;
        v = (v ^ (v >>> 16)) >>> 0;
        data[(y * width + x) * 3 + c] = ((x >> 5) + (y >> 5)) & 1 ? v & 255 : (x * 3 + y * 5 + c * 85) & 255;
      }
    }
  }
  return { width, height, data };
}

t.test('photo-sized images (720×480, 1203×907, 517×1030 flipped) hash the same as Pillow\'s output', async (t) => {
  for (const [width, height, size, flip, seed, sha256] of hashed) {
    const out = new Float32Array(3 * size * size);
    preprocess(hashedImage(width, height, seed), size, flip, out, 0);
    const got = hwcLevels(out, size);
    const hwc = Uint8Array.from(got, (v) => Math.round(v));
    t.equal(createHash('sha256').update(hwc).digest('hex'), sha256, `${width}×${height} → ${size}${flip ? ' flipped' : ''}`);
    t.equal(notNumpy(out, size, hwc), 0, "every value is numpy's float32 pixel / 127.5 − 1");
  }
});

t.test('writes only its own slot of a batch', async (t) => {
  const input = await image('13x50-11.input');
  const size = 11;
  const n = 3 * size * size;
  const batch = new Float32Array(3 * n).fill(7);
  preprocess(input, size, false, batch, n);
  const alone = new Float32Array(n);
  preprocess(input, size, false, alone, 0);
  t.ok(batch.subarray(0, n).every((v) => v === 7) && batch.subarray(2 * n).every((v) => v === 7), 'the neighbours untouched');
  t.same(Array.from(batch.subarray(n, 2 * n)), Array.from(alone));
});

t.test('an image whose data is not width × height × 3 values, or an output too short, is refused', (t) => {
  const out = new Float32Array(12);
  const rgba = { width: 2, height: 2, data: new Uint8Array(16) };
  t.throws(() => preprocess(rgba, 2, false, out, 0), /a 2 × 2 RGB image has 12 values, this one 16 \(4 per pixel: RGBA, such as ImageData.data\? drop the alpha\)/);
  t.throws(() => preprocess({ width: 2, height: 2, data: new Uint8Array(10) }, 2, false, out, 0), /has 12 values, this one 10$/);
  t.throws(() => preprocess({ width: 2, height: 2, data: new Uint8Array(12) }, 2, false, new Float32Array(6), 0), /12 values from offset 0 do not fit an output of 6/);
  t.throws(() => preprocess({ width: 2, height: 2, data: new Uint8Array(12) }, 2, false, out, 3), /from offset 3 do not fit an output of 12/);
  t.end();
});
