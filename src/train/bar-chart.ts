// A horizontal bar chart PNG (fast-png) of accuracies: one labelled bar per method, its value in
// percent at the bar's end, a title on top; drawn with the 3×5 pixel font.
import { encode } from 'fast-png';
import { drawText, textWidth } from './pixel-font.ts';

export interface Bar {
  label: string;
  /** In [0, 1]. */
  value: number;
}

export function barChartPng(title: string, bars: Bar[], width = 720): Uint8Array {
  const scale = 2;
  const rowH = 26;
  const top = 36;
  const labelW = Math.max(...bars.map((b) => textWidth(b.label, scale))) + 16; // labels in capitals
  const valueW = textWidth('100.0%', scale) + 12;
  const H = top + bars.length * rowH + 10;
  const px = new Uint8Array(width * H * 3).fill(255);
  const fill = (x0: number, y0: number, w: number, h: number, rgb: [number, number, number]) => {
    for (let y = Math.max(0, y0); y < Math.min(H, y0 + h); y++) for (let x = Math.max(0, x0); x < Math.min(width, x0 + w); x++) px.set(rgb, (y * width + x) * 3);
  };
  const ink = (x: number, y: number) => fill(x, y, 1, 1, [20, 20, 20]);
  drawText(title.toUpperCase(), 8, 10, scale, ink);
  const span = width - labelW - valueW - 8;
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    drawText(b.label.toUpperCase(), 8, y + 8, scale, ink);
    const w = Math.round(span * Math.max(0, Math.min(1, b.value)));
    fill(labelW, y + 3, w, rowH - 6, [74, 120, 181]);
    drawText(`${(100 * b.value).toFixed(1)}%`, labelW + w + 6, y + 8, scale, ink);
  });
  // A light axis at 0% and 100%.
  fill(labelW - 1, top - 2, 1, bars.length * rowH + 2, [150, 150, 150]);
  fill(labelW + span, top - 2, 1, bars.length * rowH + 2, [200, 200, 200]);
  return encode({ width, height: H, data: px, channels: 3, depth: 8 });
}
