// Writes the example page's bundled images: the first 2 test images of each Fashion-MNIST class
// as one 28-pixel-high strip (examples/browser/samples.png) and their labels (samples.json).
//   npx tsx scripts/make-example-samples.ts
import { writeFileSync } from 'node:fs';
import { encode } from 'fast-png';
import { FASHION_MNIST_CLASSES, loadFashionMnist } from '../src/train/data/fashion-mnist.ts';

const ds = await loadFashionMnist('test');
const picked: number[] = [];
for (let c = 0; c < 10; c++) {
  let seen = 0;
  for (let i = 0; i < ds.count && seen < 2; i++) if (ds.labels[i] === c) (picked.push(i), seen++);
}
const S = ds.rows;
const strip = new Uint8Array(picked.length * S * S);
picked.forEach((idx, k) => {
  for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) strip[y * picked.length * S + k * S + x] = ds.pixels[idx * S * S + y * S + x];
});
writeFileSync(new URL('../examples/browser/samples.png', import.meta.url), encode({ width: picked.length * S, height: S, data: strip, channels: 1, depth: 8 }));
writeFileSync(new URL('../examples/browser/samples.json', import.meta.url), JSON.stringify({
  source: 'Fashion-MNIST test set (Debian dataset-fashion-mnist), first 2 images of each class', size: S,
  images: picked.map((i) => ({ index: i, label: FASHION_MNIST_CLASSES[ds.labels[i]] })),
}, null, 1) + '\n');
console.log(`wrote ${picked.length} samples`);
