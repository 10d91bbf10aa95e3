// Accuracies for people: a fraction as a percentage with one decimal, exact halves rounded away
// from zero. Accuracies over n images are multiples of 1/n, and over 2,000 images half of their
// tenths of a percent end in 5: toFixed rounds the binary value, so 1553/2000 (77.65, stored just
// below) printed 77.6 while 1481/2000 (74.05, stored just above) printed 74.1.
export function fmtPercent(fraction: number): string {
  if (!Number.isFinite(fraction)) return String(fraction);
  const tenths = 1000 * Math.abs(fraction);
  // The guard is far below a tenth's resolution and far above the binary error of a count's fraction.
  const rounded = Math.floor(tenths + 0.5 + 1e-9 * Math.max(1, tenths));
  return `${fraction < 0 && rounded > 0 ? '-' : ''}${(rounded / 10).toFixed(1)}`;
}
