// Durations for people: 42s, 3m07s, 1h05m ('?' when unknown).
export function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const pad = (v: number) => String(v).padStart(2, '0');
  // Round once, then split: rounding the parts apart printed 119.7 s as "1m60s".
  const seconds = Math.round(s);
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad(seconds % 60)}s`;
  const minutes = Math.round(s / 60);
  return `${Math.floor(minutes / 60)}h${pad(minutes % 60)}m`;
}
