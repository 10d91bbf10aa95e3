// The PNG charts: the pixel font draws the glyph it is given, and bar lengths are proportional
// to the values (checked by decoding the PNG and counting bar-coloured pixels per row).
import t from 'tap';
import { decode } from 'fast-png';
import { barChartPng } from '../../src/train/bar-chart.ts';
import { drawText, textWidth } from '../../src/train/pixel-font.ts';

t.test('drawText: "1" at scale 1 and 2 sets the glyph\'s pixels (8 of 3×5: 010 110 010 010 111), lower case as capitals', async (t) => {
  for (const scale of [1, 2]) {
    const on = new Set<string>();
    drawText('1', 10, 20, scale, (x, y) => on.add(`${x},${y}`));
    t.equal(on.size, 8 * scale * scale, `scale ${scale}`);
    t.ok(on.has(`${10 + 1 * scale},${20}`), 'top middle pixel of "1"');
  }
  const upper: string[] = [];
  const lower: string[] = [];
  drawText('DIF', 0, 0, 1, (x, y) => upper.push(`${x},${y}`));
  drawText('dif', 0, 0, 1, (x, y) => lower.push(`${x},${y}`));
  t.same(lower, upper);
  t.equal(textWidth('abc', 2), 24);
});

t.test('barChartPng: bars in proportion to their values', async (t) => {
  const png = decode(barChartPng('TITLE', [{ label: 'A', value: 0.25 }, { label: 'B', value: 1 }, { label: 'C', value: 0.5 }]));
  const blueRun = (y: number) => {
    let n = 0;
    for (let x = 0; x < png.width; x++) {
      const i = (y * png.width + x) * png.channels;
      if (png.data[i] === 74 && png.data[i + 1] === 120 && png.data[i + 2] === 181) n++;
    }
    return n;
  };
  // Row centres: top 36 + i·26 + 13.
  const [a, b, c] = [0, 1, 2].map((i) => blueRun(36 + i * 26 + 13));
  t.ok(b > 0 && Math.abs(a / b - 0.25) < 0.01 && Math.abs(c / b - 0.5) < 0.01, `bar lengths ${a}, ${b}, ${c}`);
});
