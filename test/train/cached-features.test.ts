// How many classes a head over a feature cache scores (headClasses), worked by hand.
import t from 'tap';
import type { CacheSignature } from '../../src/train/cache-signature.ts';
import { headClasses } from '../../src/train/cached-features.ts';

const signature = (classes?: string[]): CacheSignature => ({ timesteps: [150], blocks: [9], pool: 2, seed: 0, count: 4, chunkSize: 4, ...(classes ? { classes: JSON.stringify(classes) } : {}) });

t.test('the classes a cache records; --classes must agree; none recorded: --classes or 10', async (t) => {
  t.equal(headClasses(signature(['a', 'b', 'c']), undefined, 'feats'), 3);
  t.equal(headClasses(signature(['a', 'b', 'c']), 3, 'feats'), 3);
  t.throws(() => headClasses(signature(['a', 'b', 'c']), 10, 'feats'), /--classes 10, but feats records 3 classes \(a, b, c\)/);
  t.equal(headClasses(signature(), undefined, 'feats'), 10);
  t.equal(headClasses(signature(), 4, 'feats'), 4);
});

t.test('a cache of one class is refused: every prediction would be right', async (t) => {
  t.throws(() => headClasses(signature(['cats']), undefined, 'feats'), /feats records one class \(cats\): classifying needs at least 2; extract from a folder with two or more class folders/);
});
