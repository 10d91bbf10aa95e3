import t from 'tap';
import { balancedSubset, DatasetMissingError, loadFashionMnist, toModelInput } from '../../../src/train/data/fashion-mnist.ts';

t.test('the Fashion-MNIST test split: 10,000 28×28 images, 1,000 per class', async (t) => {
  const ds = await loadFashionMnist('test');
  t.equal(ds.count, 10000);
  t.equal(ds.rows, 28);
  t.equal(ds.cols, 28);
  const perClass = new Array(10).fill(0);
  for (const l of ds.labels) perClass[l]++;
  t.same(perClass, new Array(10).fill(1000));
});

t.test('model input: 3 identical channels in [-1, 1]; same size is the raw pixels', async (t) => {
  const ds = await loadFashionMnist('test');
  const x = toModelInput(ds, [0, 1], 28);
  t.equal(x.length, 2 * 3 * 28 * 28);
  let wrong = 0;
  for (let i = 0; i < 28 * 28; i++) {
    if (x[i] !== Math.fround(ds.pixels[i] / 127.5 - 1) || x[28 * 28 + i] !== x[i] || x[2 * 28 * 28 + i] !== x[i]) wrong++;
  }
  t.equal(wrong, 0, 'pixel / 127.5 − 1 in all three channels');
  const big = toModelInput(ds, [5], 64);
  t.ok(big.every((v) => v >= -1 && v <= 1));
});

t.test('balanced subsets are balanced, seeded and reproducible', async (t) => {
  const ds = await loadFashionMnist('test');
  const a = balancedSubset(ds.labels, 7, 1);
  t.equal(a.length, 70);
  const counts = new Array(10).fill(0);
  for (const i of a) counts[ds.labels[i]]++;
  t.same(counts, new Array(10).fill(7));
  t.same(balancedSubset(ds.labels, 7, 1), a);
  t.not(balancedSubset(ds.labels, 7, 2).join(), a.join());
});

t.test('a missing dataset names the install command', async (t) => {
  await t.rejects(loadFashionMnist('test', '/nonexistent'), DatasetMissingError);
  await t.rejects(loadFashionMnist('test', '/nonexistent'), /apt-get install dataset-fashion-mnist/);
});
