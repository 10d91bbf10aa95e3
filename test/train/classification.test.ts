// Scores worked out by hand on four images of three classes.
import t from 'tap';
import { classificationReport } from '../../src/train/eval/classification.ts';

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
});
