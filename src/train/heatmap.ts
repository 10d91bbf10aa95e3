// A labelled heatmap PNG (fast-png) for CKA matrices: one cell per pair, a blue→yellow colour
// ramp over [0, 1], row and column labels drawn with the 3×5 pixel font.
import { encode } from 'fast-png';
import { drawText } from './pixel-font.ts';

function ramp(v: number): [number, number, number] {
  const x = Math.min(1, Math.max(0, v));
  return [Math.round(255 * x), Math.round(64 + 150 * x), Math.round(200 * (1 - x) + 40)];
}

/**
 * Encodes `m` (values in [0, 1]) with `rowLabels` down the left and `colLabels` (default: the row
 * labels) along the top; returns PNG bytes.
 */
export function heatmapPng(m: number[][], rowLabels: string[], colLabels: string[] = rowLabels, cell = 24): Uint8Array {
  const rows = m.length;
  const cols = m[0]?.length ?? 0;
  const scale = 2;
  const margin = Math.max(...rowLabels.map((l) => l.length), ...colLabels.map((l) => l.length)) * 4 * scale + 6;
  const W = margin + cols * cell;
  const H = margin + rows * cell;
  const px = new Uint8Array(W * H * 3).fill(255);
  const put = (x: number, y: number, [r, g, b]: [number, number, number]) => {
    if (x < 0 || y < 0 || x >= W || y >= H) return;
    px.set([r, g, b], (y * W + x) * 3);
  };
  const text = (s: string, x0: number, y0: number) => drawText(s, x0, y0, scale, (x, y) => put(x, y, [0, 0, 0]));
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const c = ramp(m[i][j]);
      for (let y = 1; y < cell; y++) for (let x = 1; x < cell; x++) put(margin + j * cell + x, margin + i * cell + y, c);
    }
    text(rowLabels[i], 2, margin + i * cell + cell / 2 - 5);
  }
  colLabels.forEach((l, j) => text(l, margin + j * cell + 2, margin - 14));
  return encode({ width: W, height: H, data: px, channels: 3, depth: 8 });
}
