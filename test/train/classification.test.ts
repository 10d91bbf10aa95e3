// Scores worked out by hand on four images of three classes.
import t from 'tap';
import { classificationReport, countTopK } from '../../src/train/eval/classification.ts';

t.test('top-1, top-5, accuracy per class and the confusion matrix', async (t) => {
  // Predictions (argmax): image 0 → 0 (label 0, right), 1 → 2 (label 1, wrong), 2 → 1 (label 1, right), 3 → 2 (label 2, right).
  const logits = Float32Array.from([5, 1, 0, 0, 1, 3, 0, 4, 2, 1, 0, 9]);
  const r = classificationReport(logits, [0, 1, 1, 2], 3);
  t.equal(r.top1, 0.75);
  t.equal(r.top5, 1, 'three classes: every label is within the first five');
  t.same(r.perClass, [1, 0.5, 1]);
  t.same(r.confusion, [[1, 0, 0], [0, 1, 1], [0, 0, 1]]);
  t.same(classificationReport(Float32Array.from([1, 0, 0]), [0], 3).perClass, [1, null, null], 'a class without images has no accuracy');
  t.throws(() => classificationReport(logits, [0, 1, 1, 3], 3), /label 3 of image 3 is not a class 0..2/);
  // A NaN (argmax would stay on class 0, image 1's label) or Inf logit is no prediction: refused, naming the image.
  const nan = Float32Array.from(logits);
  nan[4] = Number.NaN;
  t.throws(() => classificationReport(nan, [0, 0, 1, 2], 3), { name: 'NonFiniteError', message: /the logits of image 1 hold NaN \(class 1\)/ });
  nan[4] = Number.POSITIVE_INFINITY;
  t.throws(() => classificationReport(nan, [0, 1, 1, 2], 3), /the logits of image 1 hold Infinity/);
});

t.test('countTopK: a label ranked 5th is a top-5 hit, 6th a miss (eight classes, ties to the earlier class)', async (t) => {
  // Row A descending: c1 8, c6 7, c3 6, c4 5, c7 4, c0 3, c5 2, c2 1 → class 7 is 5th, class 0 6th.
  // Row B has c0 = c7 = 4: the earlier class ranks first, so class 0 is 5th and class 7 6th.
  const a = [3, 8, 1, 6, 5, 2, 7, 4];
  const b = [4, 8, 1, 6, 5, 2, 7, 4];
  const logits = Float32Array.from([...a, ...a, ...a, ...b, ...b]);
  t.has(countTopK(logits, [1, 7, 0, 0, 7]), { top1: 1, top5: 3 });
  t.has(countTopK(Float32Array.from(a), [7]), { top1: 0, top5: 1 }, 'A, label 7: 5th');
  t.has(countTopK(Float32Array.from(a), [0]), { top1: 0, top5: 0 }, 'A, label 0: 6th');
});

t.test('countTopK refuses a label outside 0..K−1 or not an integer', async (t) => {
  const logits = Float32Array.from([1, 2, 3, 3, 2, 1]);
  t.throws(() => countTopK(logits, [0, 3]), { name: 'RangeError', message: /label 3 of row 1 is not a class 0\.\.2/ });
  t.throws(() => countTopK(logits, [-1, 0]), { name: 'RangeError', message: /label -1 of row 0 is not a class 0\.\.2/ });
  t.throws(() => countTopK(logits, [1.5, 0]), { name: 'RangeError', message: /label 1\.5 of row 0 is not a class 0\.\.2/ });
});

// countTopK scored a NaN row as a miss, 7 logits for 2 labels as rows of 3.5 and no rows as 0/0.
t.test('countTopK and classificationReport refuse no rows, logits that do not split into rows, and NaN/Inf logits', async (t) => {
  t.throws(() => countTopK(new Float32Array(0), []), /countTopK: no rows to score/);
  t.throws(() => classificationReport(new Float32Array(0), [], 3), /classification report: no images to score/);
  t.throws(() => countTopK(new Float32Array(7), [0, 1]), /countTopK: 7 logits do not split into 2 rows/);
  t.throws(() => countTopK(Float32Array.from([1, 2, 3, Number.NaN, 0, 5]), [2, 2]), { name: 'NonFiniteError', message: /countTopK: the logits of row 1 hold NaN \(class 0\)/ });
  t.throws(() => countTopK(Float32Array.from([1, 2, Number.NEGATIVE_INFINITY]), [0]), { name: 'NonFiniteError', message: /row 0 hold -Infinity \(class 2\)/ });
});

t.test('countTopK marks each row\'s top-1 hit; the paired standard error of two heads\' difference counts the images they disagree on', async (t) => {
  // 3 classes, 4 rows: hits 1, 0, 1, 0 (row 3 ties classes 0 and 2: the earlier ranks first).
  const logits = Float32Array.from([5, 1, 0, 0, 3, 1, 1, 0, 4, 2, 0, 2]);
  t.same(Array.from(countTopK(logits, [0, 2, 2, 2]).hits), [1, 0, 1, 0]);
  const { pairedStdErr } = await import('../../src/train/miniature.ts');
  // d = a − b over 4 images: 1, 0, 0, −1 → mean 0, mean of d² 0.5, so sqrt(0.5 / 4).
  t.equal(pairedStdErr(Uint8Array.from([1, 1, 0, 0]), Uint8Array.from([0, 1, 0, 1])), Math.sqrt(0.5 / 4));
  // Heads right on the same images differ by exactly 0: no error, where two independent binomial errors would add up.
  t.equal(pairedStdErr(Uint8Array.from([1, 0, 1, 1]), Uint8Array.from([1, 0, 1, 1])), 0);
  t.throws(() => pairedStdErr(new Uint8Array(3), new Uint8Array(4)), /3 against 4 test images/);
});

t.test('the demo\'s ordering line: equal top-1s are "=", gaps within twice the paired standard error "≈", others "<"', async (t) => {
  const { describeOrdering } = await import('../../src/train/miniature.ts');
  const hits = (bits: string) => Uint8Array.from(bits, Number);
  // 20 images. A and B: the same 10 right (different images, so paired s.e. > 0): "=".
  const a = hits('11111111110000000000');
  const b = hits('00000111111111100000');
  // C: B's 10 and 9 more right (19/20): C − B ∈ {0, 1}, mean 0.45, s.e. sqrt((0.45 − 0.2025)/20) = 0.111; gap 0.45 > 0.222: "<".
  const c = hits('11111111111111111110');
  // D: C and one more (20/20): gap 0.05, s.e. sqrt((0.05 − 0.0025)/20) = 0.049; 0.05 < 0.097: "≈".
  const d = hits('11111111111111111111');
  const mean = (h: Uint8Array) => h.reduce((p, v) => p + v, 0) / h.length;
  const line = describeOrdering([a, b, c, d].map((h, i) => ({ name: 'ABCD'[i], top1: mean(h), hits: h })));
  t.equal(line, 'A = B < C ≈ D');
});
