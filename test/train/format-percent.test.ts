// Accuracies printed with one decimal, from counts over n images: exact halves round away from zero
// however the binary fraction falls (toFixed printed 1553/2000 as 77.6 and 1481/2000 as 74.1).
// Expected: the decimal values worked by hand.
import t from 'tap';
import { fmtPercent } from '../../src/train/format-percent.ts';

t.test('halves of a tenth round away from zero, whichever side of them the binary fraction lies', async (t) => {
  for (const [hits, n, want] of [
    [1553, 2000, '77.7'], // 77.65, stored just below
    [1481, 2000, '74.1'], // 74.05, stored just above
    [1601, 2000, '80.1'],
    [1987, 2000, '99.4'],
    [1979, 2000, '99.0'], // 98.95
    [79, 2000, '4.0'], // a gap of 3.95 points
    [-93, 2000, '-4.7'], // a gap of −4.65 points
    [-72, 2000, '-3.6'],
  ] as const) t.equal(fmtPercent(hits / n), want, `${hits}/${n}`);
});

t.test('other values round to the nearest tenth; no "-0.0"', async (t) => {
  t.equal(fmtPercent(0), '0.0');
  t.equal(fmtPercent(1), '100.0');
  t.equal(fmtPercent(2 / 3), '66.7');
  t.equal(fmtPercent(0.12344), '12.3');
  t.equal(fmtPercent(0.12349), '12.3');
  t.equal(fmtPercent(-0.0004), '0.0');
  t.equal(fmtPercent(NaN), 'NaN');
});
