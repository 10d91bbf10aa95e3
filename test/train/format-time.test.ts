// Durations printed for people, worked out by hand at each boundary.
import t from 'tap';
import { fmtTime } from '../../src/train/format-time.ts';

t.test('fmtTime rounds once, so no part reads 60', async (t) => {
  const cases: [number, string][] = [
    [0, '0s'], [42.4, '42s'], [59.4, '59s'], [59.6, '1m00s'], [60, '1m00s'], [187, '3m07s'],
    [119.7, '2m00s'], [3599.4, '59m59s'], [3599.6, '1h00m'], [3900, '1h05m'], [7170, '2h00m'], [7199, '2h00m'],
    [NaN, '?'], [Infinity, '?'],
  ];
  for (const [s, want] of cases) t.equal(fmtTime(s), want, `${s} s`);
});
