// A grid of generated images as a PNG file (written atomically).
import { encode } from 'fast-png';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { imageGrid } from '../model/sampling.ts';

/** Writes `count` images ([count, channels, size, size] in [−1, 1]) as a PNG grid. */
export async function writeImageGridPng(path: string, images: Float32Array, count: number, channels: number, size: number, cols?: number): Promise<void> {
  const grid = imageGrid(images, count, channels, size, cols);
  await writeFileAtomic(path, encode({ width: grid.width, height: grid.height, data: grid.rgb, channels: 3, depth: 8 }));
}
