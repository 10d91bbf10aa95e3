// Standardisation statistics worked out by hand: per dimension, training mean and unbiased std + 1e-6.
import t from 'tap';
import { applyStandardizer, fitStandardizer, standardizeSplits } from '../../src/train/standardize.ts';

t.test('train statistics, applied to train and test alike', async (t) => {
  // Three images, two dimensions: dim 0 = 1, 2, 3 (mean 2, unbiased var 1); dim 1 = 10, 10, 16 (mean 12, var 12).
  const train = Float32Array.from([1, 10, 2, 10, 3, 16]);
  const s = fitStandardizer(train, 3);
  t.same(Array.from(s.mean), [2, 12]);
  t.ok(Math.abs(s.std[0] - (1 + 1e-6)) < 1e-12 && Math.abs(s.std[1] - (Math.sqrt(12) + 1e-6)) < 1e-12);
  const test = applyStandardizer(s, Float32Array.from([4, 12]));
  t.ok(Math.abs(test[0] - 2 / (1 + 1e-6)) < 1e-6 && Math.abs(test[1]) < 1e-7, `test row ${Array.from(test)}`);
  t.throws(() => applyStandardizer(s, Float32Array.from([1, 2, 3])), /not rows of the 2 dimensions/);
  t.throws(() => fitStandardizer(Float32Array.from([1, 2]), 1), /at least 2 training images/);
});

t.test('both splits use the training split\'s statistics', async (t) => {
  const f = (data: number[], count: number) => ({ features: new Map([['t150.b9', { data: Float32Array.from(data), shape: [1, 1, 1] }]]), labels: new Array(count).fill(0), count });
  // Train 0, 2 (mean 1, unbiased std √2); test 3 → (3 − 1)/(√2 + 1e-6).
  const { train, test } = standardizeSplits(f([0, 2], 2), f([3], 1));
  const s = Math.SQRT2 + 1e-6;
  t.ok(Math.abs(train.features.get('t150.b9')!.data[0] + 1 / s) < 1e-6);
  t.ok(Math.abs(test.features.get('t150.b9')!.data[0] - 2 / s) < 1e-6);
  t.same(test.features.get('t150.b9')!.shape, [1, 1, 1]);
});

t.test('a dimension constant over the training split is named in a warning (its test values grow by up to 1e6)', async (t) => {
  const f = (data: number[], count: number) => ({ features: new Map([['t150.b9', { data: Float32Array.from(data), shape: [3, 1, 1] }]]), labels: new Array(count).fill(0), count });
  // Dimension 1 is 5 in both training images: (5.5 − 5)/1e-6 = 5e5 for the test image.
  const { test, warning } = standardizeSplits(f([0, 5, 1, 2, 5, 3], 2), f([1, 5.5, 2], 1));
  t.match(warning, /feature dimensions constant over the 2 training images \(t150\.b9: 1 of 3\)/);
  t.ok(Math.abs(test.features.get('t150.b9')!.data[1] - 5e5) < 1);
  t.equal(standardizeSplits(f([0, 5, 1, 2, 6, 3], 2), f([1, 5.5, 2], 1)).warning, undefined, 'none when every dimension varies');
});

t.test('features constant in every dimension over the training split are refused: standardised they are all zero', async (t) => {
  const f = (data: number[], count: number) => ({ features: new Map([['t150.b9', { data: Float32Array.from(data), shape: [2, 1, 1] }]]), labels: new Array(count).fill(0), count });
  t.throws(() => standardizeSplits(f([4, 7, 4, 7, 4, 7], 3), f([1, 2], 1)), /standardisation: all 2 dimensions of the features t150\.b9 are constant over the 3 training images, .*leave out --standardize/);
});
