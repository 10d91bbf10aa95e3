// DifFeed's horizontal flips: a fair coin per image and epoch (RandomHorizontalFlip, p = 0.5), the
// same whatever batch the image is in.
import t from 'tap';
import { imageFlips } from '../../src/train/fit-difeed.ts';

t.test('a one-image batch is mirrored in about half the epochs, not in every one', async (t) => {
  const flipped = Array.from({ length: 200 }, (_, epoch) => imageFlips(3, epoch, [17])[0]).filter(Boolean).length;
  // Binomial(200, 1/2): mean 100, sd 7.1; ±4 sd.
  t.ok(flipped > 71 && flipped < 129, `${flipped} of 200 epochs`);
});

t.test('about half of 2,000 images per epoch, and an image\'s coin does not depend on its batch', async (t) => {
  const idx = Array.from({ length: 2000 }, (_, i) => i);
  const all = imageFlips(0, 4, idx);
  const n = all.filter(Boolean).length;
  t.ok(n > 910 && n < 1090, `${n} of 2000 (sd 22)`);
  t.same(imageFlips(0, 4, [1999, 5, 640]), [all[1999], all[5], all[640]]);
  t.notSame(imageFlips(0, 5, idx), all, 'another epoch, other coins');
});
