// Per-image noise seeds (noiseSeed): the noise of image i under one seed must not be the noise of
// another image under another seed. Seeds that were XORed straight into the image index gave
// image i under base b the noise of image i ⊕ b ⊕ b′ under base b′: DifFeed's epochs (bases seed +
// epoch + 1) recycled their noise, and two extraction seeds drew the same ε for permuted images.
import t from 'tap';
import { noiseSeed } from '../../src/train/noise-seed.ts';
import { trainingNoiseBase } from '../../src/train/fit-difeed.ts';

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

// DifFeed's training noise bases were seed + epoch + 1: seed s's epoch e drew seed s + 1's epoch
// e − 1 noise image for image, and a test set at base s (the default) seed s − 1's first epoch.
t.test('DifFeed runs of different seeds share no training noise base, nor any with a test set noised at a seed', async (t) => {
  const bases = new Map<number, string>();
  const shared: string[] = [];
  for (let seed = 0; seed < 50; seed++) {
    for (let epoch = 0; epoch < 28; epoch++) {
      const base = trainingNoiseBase(seed, epoch);
      if (bases.has(base)) shared.push(`seed ${seed}, epoch ${epoch} = ${bases.get(base)}`);
      bases.set(base, `seed ${seed}, epoch ${epoch}`);
    }
  }
  t.same(shared, [], '1,400 (seed, epoch) pairs, 1,400 bases');
  const testSeeds = Array.from({ length: 1000 }, (_, s) => s).filter((s) => bases.has(s));
  t.same(testSeeds, [], 'no training base is a small seed, the default noise base of a test set');
});
