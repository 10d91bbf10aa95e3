// The SVG charts: bar lengths in proportion to the values (in the SVG and in the PNG rendered from
// it, counting bar-coloured pixels), text kept as text, and a heatmap cell per value.
import t from 'tap';
import { decode } from 'fast-png';
import { BAR_COLOUR, barChartSvg, HEATMAP_MAX_GRID, heatmapSvg, lineChartSvg, svgToPng } from '../../src/cli/render/charts.ts';

const bars = [{ label: 'A', value: 0.25 }, { label: 'B & <b>', value: 1 }, { label: 'C', value: 0.5 }];

t.test('barChartSvg: bars in proportion, labels as escaped text', async (t) => {
  const svg = barChartSvg('Title', bars);
  const widths = [...svg.matchAll(/class="bar"[^>]* width="(\d+)"/g)].map((m) => Number(m[1]));
  t.equal(widths.length, 3);
  t.ok(Math.abs(widths[0] / widths[1] - 0.25) < 0.01 && Math.abs(widths[2] / widths[1] - 0.5) < 0.01, `widths ${widths}`);
  t.match(svg, />B &#38; &#60;b&#62;<\/text>/, 'a label is text, escaped');
  t.match(svg, />25\.0%<\/text>/);
});

t.test('the PNG rendered from the SVG has the same bar lengths', async (t) => {
  const png = decode(await svgToPng(barChartSvg('Title', bars)));
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(BAR_COLOUR.slice(i, i + 2), 16));
  const run = (y: number) => {
    let n = 0;
    for (let x = 0; x < png.width; x++) {
      const i = (y * png.width + x) * png.channels;
      if (png.data[i] === r && png.data[i + 1] === g && png.data[i + 2] === b) n++;
    }
    return n;
  };
  // Row centres: top 40 + i·28 + 14.
  const [a, full, c] = [0, 1, 2].map((i) => run(40 + i * 28 + 14));
  t.ok(full > 0 && Math.abs(a / full - 0.25) < 0.01 && Math.abs(c / full - 0.5) < 0.01, `bar lengths ${a}, ${full}, ${c}`);
});

t.test('heatmapSvg: a cell and its value per entry, labels on both axes', async (t) => {
  const svg = heatmapSvg([[1, 0.25], [0.25, 1]], ['b5', 'b9'], ['t90', 't150']);
  t.equal([...svg.matchAll(/<rect x=/g)].length, 4);
  for (const s of ['>0.250<', '>1.000<', '>b5<', '>t150<']) t.ok(svg.includes(s), s);
  // Half points (accuracies over 200 images) keep their digit: two decimals gave 0.84 for 0.845 and 0.78 for 0.775.
  const halves = heatmapSvg([[0.845, 0.775, 0.825]], ['b'], ['1', '2', '3']);
  for (const s of ['>0.845<', '>0.775<', '>0.825<']) t.ok(halves.includes(s), s);
  t.ok(decode(await svgToPng(svg)).width > 88);
});

// 44-px cells made a 1,000-class confusion matrix 44,042 px square: 7.8 GB for resvg, which aborts
// the process (a Rust allocation failure, no JS error) where memory is short.
t.test('heatmapSvg: many classes shrink the cells to fit HEATMAP_MAX_GRID, leaving out what no longer fits', async (t) => {
  const k = 300;
  const m = Array.from({ length: k }, (_, i) => Array.from({ length: k }, (_, j) => (i === j ? 1 : 0)));
  const names = m.map((_, i) => String(i));
  const svg = heatmapSvg(m, names, names, 'confusion');
  const size = svg.match(/<svg [^>]*width="(\d+)" height="(\d+)"/)!.slice(1).map(Number);
  t.ok(size.every((px) => px <= HEATMAP_MAX_GRID + 80), `${size.join(' × ')} px`);
  t.equal([...svg.matchAll(/<rect x=/g)].length, k * k, 'every cell drawn');
  t.notOk(svg.includes('>1.000<'), 'no values in 8-px cells');
  const png = decode(await svgToPng(svg));
  t.same([png.width, png.height], size, 'renders at that size');
  // The diagonal stays where it was: cell (i, i) is yellow (ramp(1)), (i, i + 1) blue (ramp(0)).
  const cell = Math.floor(HEATMAP_MAX_GRID / k);
  const left = 12;
  const top = 28 + 12 + 8;
  const at = (x: number, y: number) => Array.from(png.data.subarray((y * png.width + x) * png.channels, (y * png.width + x) * png.channels + 3));
  t.same(at(left + 5 * cell + cell / 2, top + 5 * cell + cell / 2), [255, 214, 40], 'cell (5, 5) is 1');
  t.same(at(left + 6 * cell + cell / 2, top + 5 * cell + cell / 2), [0, 64, 240], 'cell (5, 6) is 0');
});

t.test('lineChartSvg: x linear, y on a log axis with 1-2-5 ticks, bad points refused', async (t) => {
  // Plot area: left 64, width 760 - 64 - 16 = 680; top 36, height 360 - 36 - 48 = 276; y from 1 (top) to 0.01 (bottom).
  const svg = lineChartSvg('loss', [[0, 1], [10, 0.01], [20, 0.1]], 'step', 'MSE');
  t.match(svg, /class="loss"[^>]* points="64\.0,36\.0 404\.0,312\.0 744\.0,174\.0"/);
  for (const tick of ['0.01', '0.02', '0.05', '0.1', '0.2', '0.5', '1']) t.ok(svg.includes(`>${tick}</text>`), `tick ${tick}`);
  t.ok(svg.includes('>step</text>') && svg.includes('>MSE</text>'), 'axis labels');
  t.throws(() => lineChartSvg('loss', [[0, 1], [1, NaN]], 'step', 'MSE'), /point \[1,NaN\] is not finite with y > 0/);
  t.throws(() => lineChartSvg('loss', [[0, 1], [1, 0]], 'step', 'MSE'), /not finite with y > 0/);
  t.throws(() => lineChartSvg('loss', [[0, 1]], 'step', 'MSE'), /at least 2 points/);
  t.ok(decode(await svgToPng(svg)).width === 760);
  // A loss within one 1-2-5 step had one label or none (0.031 to 0.033: none; 0.3 to 0.6: 0.5 alone).
  const ticks = (lo: number, hi: number) => [...lineChartSvg('loss', [[0, hi], [1, lo]], 'step', 'MSE').matchAll(/text-anchor="end">([\d.e-]+)<\/text>/g)].map((m) => m[1]);
  t.same(ticks(0.3, 0.6), ['0.3', '0.4', '0.5', '0.6'], '1…9 × 10^k where 1-2-5 gives fewer than two');
  t.same(ticks(0.031, 0.033), ['0.031', '0.033'], 'the ends themselves where 1…9 gives fewer than two');
  t.same(ticks(0.01, 1), ['0.01', '0.02', '0.05', '0.1', '0.2', '0.5', '1'], '1-2-5 where it gives two or more');
  // Ends that agree to three digits get the digits that tell them apart ("1" and "1" before).
  t.same(ticks(1.0001, 1.0004), ['1.0001', '1.0004']);
  t.same(ticks(0.03112, 0.03114), ['0.03112', '0.03114']);
});
