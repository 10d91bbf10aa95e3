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

// Written by hand: IDX files of 2 images of 2 × 2 and their labels, gzipped. A label of 10 or 255
// was read (balancedSubset then left those images out unseen), bytes past the declared data were
// ignored, and a cut-short gzip said "unexpected end of file" with no file name.
t.test('damaged IDX files are refused, naming the file: labels past the classes, trailing bytes, a cut-short gzip', async (t) => {
  const { gzipSync } = await import('node:zlib');
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const be32 = (...v: number[]) => v.flatMap((x) => [x >>> 24, (x >>> 16) & 255, (x >>> 8) & 255, x & 255]);
  const images = Uint8Array.from([...be32(0x803, 2, 2, 2), 0, 1, 2, 3, 4, 5, 6, 7]);
  const labels = (...ys: number[]) => Uint8Array.from([...be32(0x801, 2), ...ys]);
  const dir = await mkdtemp(join(tmpdir(), 'difrep-idx-'));
  const write = async (img: Uint8Array, lab: Uint8Array) => {
    await writeFile(join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(img));
    await writeFile(join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(lab));
  };
  await write(images, labels(3, 9));
  const ok = await loadFashionMnist('test', dir);
  t.same([ok.count, Array.from(ok.labels), Array.from(ok.pixels)], [2, [3, 9], [0, 1, 2, 3, 4, 5, 6, 7]], 'a sound pair reads');
  await write(images, labels(3, 10));
  await t.rejects(loadFashionMnist('test', dir), /t10k-labels-idx1-ubyte\.gz: label 1 is 10, not a class 0\.\.9/);
  await write(Uint8Array.from([...images, 0, 0]), labels(3, 9));
  await t.rejects(loadFashionMnist('test', dir), /t10k-images-idx3-ubyte\.gz: 2 bytes past the 8 its header declares/);
  await write(images, labels(3, 9));
  const gz = gzipSync(images);
  await writeFile(join(dir, 't10k-images-idx3-ubyte.gz'), gz.subarray(0, gz.length - 6));
  await t.rejects(loadFashionMnist('test', dir), /t10k-images-idx3-ubyte\.gz: cannot decompress \(unexpected end of file; truncated or corrupted file/);
  // Headers cut short threw a RangeError from the DataView, naming no file; 0 × 0 images gave NaN.
  for (const [what, img, lab, expected] of [
    ['an images file of 2 bytes', images.subarray(0, 2), labels(3, 9), /t10k-images-idx3-ubyte\.gz: not an IDX file \(2 bytes, no header/],
    ['an images header cut at 10 bytes', images.subarray(0, 10), labels(3, 9), /t10k-images-idx3-ubyte\.gz: truncated IDX header \(10 of its 16 bytes\)/],
    ['an empty labels file', images, new Uint8Array(0), /t10k-labels-idx1-ubyte\.gz: not an IDX file \(0 bytes, no header/],
    ['images of 0 × 0 pixels', Uint8Array.from(be32(0x803, 2, 0, 0)), labels(3, 9), /t10k-images-idx3-ubyte\.gz: its header declares items of 0 × 0 values/],
  ] as const) {
    await write(img, lab);
    await t.rejects(loadFashionMnist('test', dir), expected, what);
  }
  await rm(dir, { recursive: true });
});
