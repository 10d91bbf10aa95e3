// Random horizontal flips (torchvision's RandomHorizontalFlip and guided-diffusion's random_flip,
// p = 1/2) of NCHW images. Each coin comes from a hash of a stream seed and an item (noiseSeed in
// a stream of its own), not from a run's generator, so turning flips on or off leaves every other
// draw of a run as it was.
import { noiseSeed } from './noise-seed.ts';

/** Keeps the flips' hash stream apart from the noise's (noiseSeed's third input is a timestep there). */
const FLIP_STREAM = 0xf119;

/** One fair coin per item of `items` (true: mirror it), from `seed`. */
export function coinFlips(seed: number, items: readonly number[]): boolean[] {
  return items.map((item) => (noiseSeed(seed, item, FLIP_STREAM) & 1) === 1);
}

/** A copy of `n` images [n, channels, size, size] with image i mirrored left–right where `which[i]`. */
export function mirrorImages(x: Float32Array, n: number, channels: number, size: number, which: readonly boolean[]): Float32Array {
  const out = Float32Array.from(x);
  for (let i = 0; i < n; i++) {
    if (!which[i]) continue;
    for (let row = i * channels * size; row < (i + 1) * channels * size; row++) {
      for (let col = 0; col < size; col++) out[row * size + col] = x[row * size + size - 1 - col];
    }
  }
  return out;
}
