// Per-image noise seeds (noiseSeed): the noise of image i under one seed must not be the noise of
// another image under another seed. Seeds that were XORed straight into the image index gave
// image i under base b the noise of image i ⊕ b ⊕ b′ under base b′: DifFeed's epochs (bases seed +
// epoch + 1) recycled their noise, and two extraction seeds drew the same ε for permuted images.
import t from 'tap';
import { noiseSeed } from '../../src/train/extract.ts';

t.test('DifFeed\'s 28 epochs over 200 images draw 5,600 distinct noises', async (t) => {
  const seeds = new Set<number>();
  for (let epoch = 0; epoch < 28; epoch++) for (let image = 0; image < 200; image++) seeds.add(noiseSeed(epoch + 1, image, 150));
  t.equal(seeds.size, 5600);
  t.not(noiseSeed(1, 3, 150), noiseSeed(2, 0, 150), 'base 1, image 3 is not base 2, image 0 (3 ⊕ 1 ⊕ 2 = 0)');
});

t.test('two seeds share no noise over 60,000 images, and timesteps are streams of their own', async (t) => {
  const first = new Set<number>();
  for (let image = 0; image < 60000; image++) first.add(noiseSeed(0, image, 150));
  let shared = 0;
  for (let image = 0; image < 60000; image++) if (first.has(noiseSeed(1, image, 150))) shared++;
  t.equal(shared, 0);
  t.not(noiseSeed(0, 5, 150), noiseSeed(0, 5, 151));
});
