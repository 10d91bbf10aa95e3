// How many classes a head over a feature cache scores (headClasses), and labels past them
// (checkLabels), worked by hand.
import t from 'tap';
import type { CacheSignature } from '../../src/train/cache-signature.ts';
import { checkLabels, headClasses, splitClasses } from '../../src/train/cached-features.ts';

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

// A label past a recorded class count advised --classes 13, which headClasses then refused
// ("--classes 13, but feats records 10 classes: leave out --classes").
t.test('a label past the classes: --classes where none are recorded; the record and the labels disagree where they are', async (t) => {
  const data = { features: new Map(), labels: [3, 1, 12, 0], count: 4 };
  t.throws(() => checkLabels(data, 10, 'test-feats'), /^test-feats has labels up to 12, but --classes is 10: give --classes 13 or more$/);
  t.throws(() => checkLabels(data, 10, 'test-feats', 'feats'), /^test-feats has label 12 at image 2, but feats records 10 classes: they are not of one dataset; extract the cache again$/);
  t.doesNotThrow(() => checkLabels(data, 13, 'test-feats', 'feats'));
  // splitClasses passes the training cache as the record's source where it records classes.
  const ten = Array.from({ length: 10 }, (_, i) => `c${i}`);
  const ok = { features: new Map(), labels: [3, 1, 9, 0], count: 4 };
  t.throws(() => splitClasses({ ...ok, signature: signature(ten) }, data, undefined, 'feats', 'test-feats'), /^test-feats has label 12 at image 2, but feats records 10 classes/);
  t.throws(() => splitClasses({ ...ok, signature: signature() }, data, undefined, 'feats', 'test-feats'), /^test-feats has labels up to 12, but --classes is 10: give --classes 13 or more$/);
  t.equal(splitClasses({ ...ok, signature: signature(ten) }, ok, undefined, 'feats', 'test-feats'), 10);
});
