import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, randomNd, testEngine, upload } from '../helpers/check.ts';
import type { Nd } from '../helpers/reference.ts';

const e = await testEngine();

t.test('gatherColumn picks each row\'s column, and its gradient puts dy back there', async (t) => {
  // 5 rows of 7: columns chosen by hand, the first and last of a row included.
  const x = randomNd([5, 7], 11);
  const columns = [0, 6, 3, 3, 1];
  const y = ops.gatherColumn(upload(e, x), columns);
  t.same(y.shape, [5]);
  t.same(Array.from(await y.read()), columns.map((c, i) => Math.fround(x.data[i * 7 + c])));
  const ref = (a: Nd) => ({ data: Float64Array.from(columns, (c, i) => a.data[i * 7 + c]), shape: [5] });
  const { worst } = await gradCheck(e, (a) => ops.gatherColumn(a, columns), ref, [x]);
  t.ok(worst < 1e-3, `${worst}`);
  t.throws(() => ops.gatherColumn(upload(e, x), [0, 1, 2, 7, 0]), /gatherColumn: column 7 of row 3 is outside 0..6/);
  t.throws(() => ops.gatherColumn(upload(e, x), [0, 1]), /gatherColumn: .* \[5,7\] with 2 columns/);
});
