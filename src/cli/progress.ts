// A one-line progress bar with rate and ETA on stderr (plain lines when stderr is not a terminal).
import { fmtTime } from '../train/format-time.ts';

export { fmtTime };
/**
 * The rate counts from the first report on, not from zero: a resumed run's first report already
 * stands at its checkpoint's count, which this process did not do (and a first step's time is
 * mostly shader compilation). Until a second report there is no rate, so none is printed. A count
 * that goes back (the next epoch of a bar reused for each) starts a new pass: its rate counts from
 * there, not from the first epoch's start.
 */
export function progressBar(label: string, unit: string) {
  const tty = process.stderr.isTTY;
  let first: { done: number; at: number } | undefined;
  let last = 0;
  let lastPrint = 0;
  return (done: number, total: number) => {
    const now = performance.now();
    if (!first || done < last) first = { done, at: now };
    last = done;
    if (done < total && now - lastPrint < (tty ? 200 : 10000)) return;
    lastPrint = now;
    const rate = done > first.done ? (done - first.done) / Math.max((now - first.at) / 1000, 1e-9) : undefined;
    const speed = rate === undefined ? '' : `, ${rate.toFixed(2)} ${unit}/s, ETA ${fmtTime((total - done) / rate)}`;
    const width = 24;
    const fill = Math.round((width * done) / Math.max(total, 1));
    const line = `${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${done}/${total} ${unit}${speed}`;
    process.stderr.write(tty ? `\r${line}${done >= total ? '\n' : ''}` : `${line}\n`);
  };
}

