// A small U-Net config and a seeded image source for the tests that train or extract through it.
import type { ImageSource } from '../../src/train/extract.ts';
import { randomNd } from './check.ts';

/** 16×16, two levels, attention at 8×8: the smallest config with feedback blocks for DifFeed. */
export const MINI_UNET = {
  image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

/** `count` fixed random 3 × 16 × 16 images (seed 12), labelled i mod 4. */
export function randomImages(count: number): ImageSource {
  const pixels = randomNd([count, 3, 16, 16], 12).data;
  return {
    count,
    labels: Array.from({ length: count }, (_, i) => i % 4),
    images: (idx) => {
      const out = new Float32Array(idx.length * 768);
      idx.forEach((i, k) => out.set(pixels.subarray(i * 768, (i + 1) * 768), k * 768));
      return out;
    },
  };
}
