// Scores of a classifier's logits: top-1/top-5, accuracy per class and the confusion matrix.
import { assertFiniteLogits } from '../finite.ts';

/**
 * Refuses a label that is not a class index 0..classes−1, naming the split and the image's index
 * in it (a training step would name it only by its place in a shuffled batch, or in a part of one;
 * a score would count it as a miss, a kNN vote would go nowhere).
 */
export function checkClassLabels(labels: ArrayLike<number>, classes: number, split: string): void {
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0 || y >= classes) {
      throw new RangeError(`${split} label of image ${i} is ${y}, not a class in 0..${classes - 1} (classes: ${classes})`);
    }
  }
}

/**
 * How many rows of `logits` ([n, K]) rank their label first, and among the first five. Refused: no
 * rows, logits that do not split into one row per label, a NaN or Inf logit (argmax over it is no
 * prediction; a score would count it as a miss), a label outside 0..K−1.
 */
export function countTopK(logits: Float32Array, labels: ArrayLike<number>): { top1: number; top5: number; hits: Uint8Array } {
  if (labels.length === 0) throw new RangeError('countTopK: no rows to score (0 labels); a top-1 of no images is no number');
  const K = logits.length / labels.length;
  if (!Number.isInteger(K) || K === 0) throw new RangeError(`countTopK: ${logits.length} logits do not split into ${labels.length} rows (one per label) of at least one class`);
  assertFiniteLogits(logits, K, (row) => `countTopK: the logits of row ${row}`, "; the head's output is not finite there");
  let top1 = 0;
  let top5 = 0;
  const hits = new Uint8Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const row = logits.subarray(i * K, (i + 1) * K);
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0 || y >= K) {
      throw new RangeError(`countTopK: label ${y} of row ${i} is not a class 0..${K - 1} (logits have ${K} columns); labels must be integer class indices below the head's class count`);
    }
    // Rank of the label: classes scoring higher, or equal and earlier (a stable descending sort).
    let rank = 0;
    for (let c = 0; c < K; c++) if (row[c] > row[y] || (row[c] === row[y] && c < y)) rank++;
    if (rank === 0) (top1++, (hits[i] = 1));
    if (rank < 5) top5++;
  }
  return { top1, top5, hits };
}

export interface ClassificationReport {
  images: number;
  top1: number;
  top5: number;
  /** Fraction of each class's images predicted as that class (NaN-free: a class with no image gets null). */
  perClass: (number | null)[];
  /** confusion[true class][predicted class] = image count. */
  confusion: number[][];
}

/**
 * `logits` [n, classes] against `labels`; the prediction is the first class of highest logit. A NaN
 * or Inf logit is refused, naming the image: argmax over it would be a prediction the top-1 (which
 * counts such a row as no prediction) does not make.
 */
export function classificationReport(logits: Float32Array, labels: ArrayLike<number>, classes: number): ClassificationReport {
  const n = labels.length;
  if (n === 0) throw new RangeError('classification report: no images to score (0 labels)');
  if (logits.length !== n * classes) throw new RangeError(`classification report: ${logits.length} logits for ${n} images × ${classes} classes`);
  assertFiniteLogits(logits, classes, (image) => `classification report: the logits of image ${image}`, "; the head's output is not finite there");
  const confusion = Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0 || y >= classes) throw new RangeError(`classification report: label ${y} of image ${i} is not a class 0..${classes - 1}`);
    let best = 0;
    for (let c = 1; c < classes; c++) if (logits[i * classes + c] > logits[i * classes + best]) best = c;
    confusion[y][best]++;
  }
  const { top1, top5 } = countTopK(logits, labels);
  const perClass = confusion.map((row, c) => {
    const total = row.reduce((p, v) => p + v, 0);
    return total ? row[c] / total : null;
  });
  return { images: n, top1: top1 / n, top5: top5 / n, perClass, confusion };
}
