// The progress bar's rate counts only the work this process did: a resumed run's first report
// already stands at its checkpoint's count (a pretrain resumed at step 3,798 once printed
// "366 steps/s"). Time is faked, so the expected rates are worked out by hand.
import t from 'tap';
import { progressBar } from '../../src/cli/progress.ts';

function capture(fn: (bar: ReturnType<typeof progressBar>, clock: { ms: number }) => void): string[] {
  const lines: string[] = [];
  const clock = { ms: 0 }; // performance.now: ms since the process started
  const { write } = process.stderr;
  const isTTY = process.stderr.isTTY;
  const now = performance.now;
  process.stderr.isTTY = false;
  process.stderr.write = ((s: string) => lines.push(s.trim()) > 0) as typeof process.stderr.write;
  performance.now = () => clock.ms;
  try {
    fn(progressBar('pretrain', 'steps'), clock);
  } finally {
    process.stderr.write = write;
    process.stderr.isTTY = isTTY;
    performance.now = now;
  }
  return lines;
}

t.test('a resumed run: the rate and ETA count from its first report', async (t) => {
  const lines = capture((bar, clock) => {
    clock.ms = 100_000;
    bar(3800, 4000); // the first report after resuming at 3,799: no rate yet
    clock.ms = 120_000;
    bar(3820, 4000); // 20 steps in 20 s
  });
  t.equal(lines.length, 2);
  t.match(lines[0], /3800\/4000 steps$/);
  t.match(lines[1], /3820\/4000 steps, 1\.00 steps\/s, ETA 3m00s/);
});

t.test('the last report always prints, at the rate since the first', async (t) => {
  const lines = capture((bar, clock) => {
    for (let s = 1; s <= 5; s++) {
      clock.ms = 100_000 + 2000 * s;
      bar(s, 5); // quieter than one line per 10 s, but for the first and the last
    }
  });
  t.equal(lines.length, 2);
  t.match(lines[1], /5\/5 steps, 0\.50 steps\/s/);
});

// train reuses one bar for every epoch: the rate counted from epoch 1's first batch, so epoch k
// printed about 1/k of its rate (30.6, 12.0, 8.9 … batches/s for epochs of equal speed).
t.test('a count that starts again (the next epoch) gets its own rate, not one averaged since the first epoch', async (t) => {
  const lines = capture((bar, clock) => {
    for (let epoch = 0; epoch < 3; epoch++) {
      clock.ms = 100_000 * epoch + 1000; // 1000 ms between epochs (evaluation)
      for (let b = 1; b <= 10; b++) {
        bar(b, 10);
        clock.ms += 500; // 2 batches/s
      }
    }
  });
  const ends = lines.filter((l) => l.includes('10/10'));
  t.equal(ends.length, 3);
  for (const l of ends) t.match(l, /10\/10 steps, 2\.00 steps\/s, ETA 0s$/);
});
