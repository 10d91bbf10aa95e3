// A one-line progress bar with rate and ETA on stderr (plain lines when stderr is not a terminal).
import { fmtTime } from '../train/format-time.ts';

export { fmtTime };
export function progressBar(label: string, unit: string) {
  const start = performance.now();
  const tty = process.stderr.isTTY;
  let lastPrint = 0;
  return (done: number, total: number) => {
    const now = performance.now();
    if (done < total && now - lastPrint < (tty ? 200 : 10000)) return;
    lastPrint = now;
    const secs = (now - start) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const eta = rate > 0 ? (total - done) / rate : Infinity;
    const width = 24;
    const fill = Math.round((width * done) / Math.max(total, 1));
    const line = `${label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${done}/${total} ${unit}, ${rate.toFixed(2)} ${unit}/s, ETA ${fmtTime(eta)}`;
    process.stderr.write(tty ? `\r${line}${done >= total ? '\n' : ''}` : `${line}\n`);
  };
}
