import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { broadcast, concatRef, type Nd, permuteRef, sliceRef } from '../helpers/reference.ts';

const e = await testEngine();

t.test('permute and transpose match the reference, forward and backward', async (t) => {
  for (const [shape, perm] of [[[2, 3, 4], [2, 0, 1]], [[5, 1, 7, 2], [3, 1, 0, 2]], [[9, 13], [1, 0]]] as [number[], number[]][]) {
    const x = randomNd(shape, 2);
    const y = ops.permute(upload(e, x), perm);
    const ref = permuteRef(x, perm);
    t.same(y.shape, ref.shape);
    t.ok(maxRelError(await y.read(), ref.data) === 0, `${shape} by ${perm}`);
    const { worst } = await gradCheck(e, (a) => ops.permute(a, perm), (a: Nd) => permuteRef(a, perm), [x]);
    t.ok(worst < 1e-3);
  }
  const x = randomNd([3, 4, 5], 3);
  t.ok(maxRelError(await ops.transpose(upload(e, x), 0, 2).read(), permuteRef(x, [2, 1, 0]).data) === 0);
});

t.test('slice matches the reference, forward and backward', async (t) => {
  const x = randomNd([4, 6, 5], 4);
  const starts = [1, 0, 2];
  const ends = [3, 6, 5];
  t.ok(maxRelError(await ops.slice(upload(e, x), starts, ends).read(), sliceRef(x, starts, ends).data) === 0);
  const { worst } = await gradCheck(e, (a) => ops.slice(a, starts, ends), (a: Nd) => sliceRef(a, starts, ends), [x]);
  t.ok(worst < 1e-3);
  t.throws(() => ops.slice(upload(e, x), [0, 0, 0], [5, 6, 5]), /outside axis 0/);
});

t.test('slice refuses more starts or ends than the tensor has axes', async (t) => {
  const x = upload(e, randomNd([3], 4));
  t.throws(() => ops.slice(x, [1, 5], [2, 9]), new RangeError('slice: starts [1,5] and ends [2,9] name more axes than tensor [3] has (1)'));
  t.throws(() => ops.slice(x, [1], [2, 9]), /name more axes than tensor \[3\] has \(1\)/);
});

t.test('concat matches the reference on every axis, forward and backward', async (t) => {
  for (const axis of [0, 1, 2]) {
    const shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]].map((s, i) => s.map((d, k) => (k === axis ? d + i : d)));
    const xs = shapes.map((s, i) => randomNd(s, 10 + i));
    const y = ops.concat(xs.map((x) => upload(e, x)), axis);
    t.ok(maxRelError(await y.read(), concatRef(xs, axis).data) === 0, `axis ${axis}`);
    const { worst } = await gradCheck(e, (...ts) => ops.concat(ts, axis), (...ns: Nd[]) => concatRef(ns, axis), xs);
    t.ok(worst < 1e-3);
  }
  t.throws(() => ops.concat([upload(e, randomNd([2, 3], 1)), upload(e, randomNd([3, 3], 1))], 1), /does not match/);
});

t.test('concat refuses an axis out of range', async (t) => {
  const xs = [upload(e, randomNd([1, 2], 1)), upload(e, randomNd([1, 2], 2))];
  t.throws(() => ops.concat(xs, -3), new RangeError('concat: axis -3 is out of range for rank 2'));
  t.throws(() => ops.concat(xs, 2), new RangeError('concat: axis 2 is out of range for rank 2'));
});

// Copies whose runs, offsets and sizes are whole vec4s take the vec4 kernel, the others the scalar one.
t.test('vec4 and scalar strided copies: the U-Net skip concat, aligned and unaligned slices', async (t) => {
  const xs = [randomNd([2, 3, 4, 4], 20), randomNd([2, 5, 4, 4], 21), randomNd([2, 2, 4, 4], 23)];
  t.ok(maxRelError(await ops.concat(xs.map((x) => upload(e, x)), 1).read(), concatRef(xs, 1).data) === 0, 'channel concat');
  const odd = [randomNd([2, 3, 3, 3], 24), randomNd([2, 1, 3, 3], 25)];
  t.ok(maxRelError(await ops.concat(odd.map((x) => upload(e, x)), 1).read(), concatRef(odd, 1).data) === 0, 'channel concat of 3×3 maps (scalar)');
  const x = randomNd([3, 16], 26);
  for (const [starts, ends] of [[[0, 4], [3, 12]], [[1, 0], [3, 16]], [[0, 1], [3, 13]], [[0, 4], [3, 6]]]) {
    t.ok(maxRelError(await ops.slice(upload(e, x), starts, ends).read(), sliceRef(x, starts, ends).data) === 0, `slice ${starts}–${ends}`);
    const { worst } = await gradCheck(e, (a) => ops.slice(a, starts, ends), (a: Nd) => sliceRef(a, starts, ends), [x]);
    t.ok(worst < 1e-3, `slice ${starts}–${ends} backward`);
  }
});

t.test('sliceRows and concatRows copy whole rows, also of tensors over the binding limit, and fall back to slice/concat for gradients', async (t) => {
  const { createEngine } = await import('../../src/engine/engine.ts');
  const small = await createEngine({ device: e.device, maxBindingBytes: 256 }); // 64 floats
  const x = randomNd([5, 3, 7], 20); // 105 floats: over the limit
  const rows = ops.sliceRows(upload(small, x), 1, 3);
  t.same(rows.shape, [2, 3, 7]);
  t.ok(maxRelError(await rows.read(), sliceRef(x, [1, 0, 0], [3, 3, 7]).data) === 0, 'rows 1..2');
  t.same(ops.sliceRows(upload(small, x), 2, 2).shape, [0, 3, 7], 'no rows');
  t.throws(() => ops.sliceRows(upload(small, x), 4, 6), /sliceRows: rows \[4, 6\) are outside tensor \[5,3,7\]/);
  const parts = [randomNd([2, 3, 7], 21), randomNd([1, 3, 7], 22), randomNd([3, 3, 7], 23)];
  const joined = ops.concatRows(parts.map((p) => upload(small, p)));
  t.ok(joined.byteLength > 256 && maxRelError(await joined.read(), concatRef(parts, 0).data) === 0, '126 floats joined past the 64-float limit');
  t.throws(() => ops.concatRows([upload(small, parts[0]), upload(small, randomNd([1, 7, 3], 24))]), /concatRows: tensor \[1,7,3\] does not match \[2,3,7\] past axis 0/);
  // With a gradient wanted they are slice/concat, whose backward is checked above.
  const { worst } = await gradCheck(e, (a, b) => ops.concatRows([ops.sliceRows(a, 1, 3), b]), (a: Nd, b: Nd) => concatRef([sliceRef(a, [1, 0, 0], [3, 3, 7]), b], 0), [x, parts[1]]);
  t.ok(worst < 1e-3);
  await small.dispose();
});

t.test('reshape shares the buffer and passes gradients through', async (t) => {
  const x = randomNd([2, 6], 5);
  const y = ops.reshape(upload(e, x), [3, -1]);
  t.same(y.shape, [3, 4]);
  t.ok(maxRelError(await y.read(), x.data) === 0);
  const { worst } = await gradCheck(e, (a) => ops.mul(ops.reshape(a, [4, 3]), ops.reshape(a, [4, 3])), (a: Nd) => ({ data: a.data.map((v) => v * v), shape: [4, 3] }), [x]);
  t.ok(worst < 1e-3);
  t.throws(() => ops.reshape(upload(e, x), [5, -1]), /cannot view/);
});

t.test('expand broadcasts and its backward sums', async (t) => {
  const x = randomNd([3, 1], 6);
  const shape = [2, 3, 4];
  const ref = (a: Nd) => broadcast(a, { data: new Float64Array(24), shape }, (p) => p);
  t.ok(maxRelError(await ops.expand(upload(e, x), shape).read(), ref(x).data) === 0);
  const { worst } = await gradCheck(e, (a) => ops.expand(a, shape), ref, [x]);
  t.ok(worst < 1e-3);
});

t.test('expand refuses shapes that do not broadcast (NumPy rules), naming both', async (t) => {
  const x = upload(e, randomNd([3], 7));
  t.throws(() => ops.expand(x, [2, 4]), new RangeError('expand: tensor [3] does not broadcast to [2,4]'));
  t.throws(() => ops.expand(upload(e, randomNd([2, 3], 8)), [3]), new RangeError('expand: tensor [2,3] does not broadcast to [3]'));
  t.throws(() => ops.expand(upload(e, randomNd([2, 1], 9)), [3, 4]), /does not broadcast to \[3,4\]/);
  t.same(ops.expand(upload(e, randomNd([1, 3], 10)), [2, 0, 3]).shape, [2, 0, 3], 'a size-1 axis may expand to 0');
});
