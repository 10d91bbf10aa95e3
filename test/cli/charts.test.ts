// The SVG charts: bar lengths in proportion to the values (in the SVG and in the PNG rendered from
// it, counting bar-coloured pixels), text kept as text, and a heatmap cell per value.
import t from 'tap';
import { decode } from 'fast-png';
import { BAR_COLOUR, barChartSvg, heatmapSvg, svgToPng } from '../../src/cli/render/charts.ts';

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
  for (const s of ['>0.25<', '>1.00<', '>b5<', '>t150<']) t.ok(svg.includes(s), s);
  t.ok(decode(await svgToPng(svg)).width > 88);
});
