// Work bound whole that cannot fit the device's largest storage binding is refused before it runs,
// naming the option that makes it fit (it failed with the engine's generic "split the batch", some
// of it after minutes of work). The engine's binding limit is lowered so small shapes reach it.
import t from 'tap';
import { createEngine } from '../../src/engine/engine.ts';
import { sample } from '../../src/model/sampling.ts';
import { UNet } from '../../src/model/unet.ts';
import { ckaMatrix } from '../../src/train/eval/cka.ts';
import { knnClassify } from '../../src/train/eval/knn.ts';
import type { ImageSource } from '../../src/train/extract.ts';
import { fitDifFeed } from '../../src/train/fit-difeed.ts';
import { randomNd } from '../helpers/check.ts';
import { MINI_UNET } from '../helpers/images.ts';

const e = await createEngine({ maxBindingBytes: 160 * 1024 });
t.teardown(() => e.dispose());
const matrix = (n: number, d: number) => ({ data: Float32Array.from(randomNd([n, d], n + d).data), n, d });
const images = (count: number, size: number): ImageSource => ({ count, labels: Array.from({ length: count }, (_, i) => i % 4), images: (sel) => Float32Array.from({ length: sel.length * 3 * size * size }, (_, i) => Math.sin(i)) });

t.test('kNN and CKA over more features than one binding holds', async (t) => {
  // 300 × 200 floats = 240,000 bytes.
  const big = matrix(300, 200);
  await t.rejects(knnClassify(e, big, new Array(300).fill(0), matrix(5, 200), [0, 0, 0, 0, 0], { ks: [1], classes: 2 }), /kNN: the 300 × 200 training features bind 240000 bytes at once, over this device's largest storage binding \(163840\): pool them smaller \(--pool\) or use fewer training images/);
  await t.rejects(ckaMatrix(e, [big, big]), /CKA: 300 examples of 200 features bind 360000 bytes at once \(the features or their 300 × 300 Gram\), .*: use fewer images or pool the features smaller/);
});

t.test('sampling a batch whose images do not fit one binding (pretraining trains such a batch in parts: pretrain.test.ts)', async (t) => {
  const tiny = { image_size: 8, num_channels: 32, num_res_blocks: 1, channel_mult: '1', attention_resolutions: '', num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true };
  const unet = UNet.random(e, tiny, 1);
  // 3 × 8 × 8 floats = 768 bytes an image: 213 fit in 160 KiB.
  await t.rejects(sample(e, unet, { count: 300, ddimSteps: 2 }), /sample: 300 images of 8×8 bind 230400 bytes at once, .*: draw 213 or fewer at a time \(--count\)/);
});

t.test('a DifFeed head whose attention weights for one image do not fit one binding (a batch more trains in parts: difeed-parts.test.ts)', async (t) => {
  const big = await createEngine({ maxBindingBytes: 300 * 1024 });
  t.teardown(() => big.dispose());
  const unet = UNet.random(big, MINI_UNET, 11);
  const live = big.memoryStats().liveBytes;
  // Head tokens: 16 × 16 + CLS = 257; 4 · 257 · max(2 · 257, 4 · 128, 3 · 128) = 528,392 bytes an image, over 300 KiB.
  await t.rejects(fitDifFeed(big, unet, images(12, 16), images(4, 16), { classes: 4, head: { dim: 128, heads: 2, layers: 1, prePoolSize: 16 }, epochs: 1, batchSize: 4 }),
    /DifFeed: its head binds 528392 bytes for one image .*: give a smaller --dim or --pre-pool/);
  t.equal(big.memoryStats().liveBytes, live, 'the refused fit freed its head and feedback layers');
});
