// The sweep's pick: the highest top-1, ties broken the same way whatever order the grid was given in
// (the first highest in printed order depended on the order of --t and --b).
import t from 'tap';
import { bestSweepRow, type SweepRow } from '../../src/train/sweep.ts';

const row = (t: number, b: number, pool: number, standardize: boolean, top1: number): SweepRow => ({ t, b, pool, standardize, top1, top5: 1 });

t.test('ties go to the lowest t, then block, pool, raw scale, in any order of the rows', async (t) => {
  const rows = [row(20, 2, 1, false, 0.5), row(10, 2, 2, true, 0.5), row(10, 2, 2, false, 0.5), row(10, 1, 4, true, 0.5), row(10, 1, 2, true, 0.5), row(5, 1, 1, false, 0.25)];
  for (const order of [rows, [...rows].reverse(), [rows[3], rows[0], rows[5], rows[2], rows[4], rows[1]]]) {
    const { best, tied } = bestSweepRow(order);
    t.same(best, row(10, 1, 2, true, 0.5), 't 10, block 1, pool 2 (the only one at t 10, b 1, pool 2)');
    t.equal(tied, 4, 'four other rows reach 50 %');
  }
  t.same(bestSweepRow([row(10, 1, 2, true, 0.5), row(10, 1, 2, false, 0.5)]).best.standardize, false, 'raw scale before standardised');
  t.same(bestSweepRow([row(90, 9, 1, false, 0.3), row(10, 1, 1, false, 0.7)]), { best: row(10, 1, 1, false, 0.7), tied: 0 });
});
