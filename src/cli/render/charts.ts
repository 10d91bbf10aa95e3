// Charts of the command line as SVG (text stays text, scales, diffs in review) and as PNG rendered
// from that SVG by resvg: a horizontal bar chart of accuracies, a labelled heatmap of a matrix
// (CKA, sweep grids, confusion matrices), and a line chart of a training loss on a log axis.
import { fmtPercent } from '../../train/format-percent.ts';

const FONT = 'DejaVu Sans, Liberation Sans, Arial, sans-serif';

const escapeXml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const text = (x: number, y: number, s: string, attrs = '') => `<text x="${x}" y="${y}"${attrs ? ` ${attrs}` : ''}>${escapeXml(s)}</text>`;
/** A rough width of `s` at `size` px in a sans-serif font, for laying out labels. */
const textWidth = (s: string, size: number) => Math.ceil(s.length * size * 0.6);

function svg(width: number, height: number, body: string[]): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT}">\n` +
    `<rect width="100%" height="100%" fill="#ffffff"/>\n${body.join('\n')}\n</svg>\n`;
}

export interface Bar {
  label: string;
  /** In [0, 1]. */
  value: number;
  /** Drawn as ± this at the bar's end (a standard error), when given. */
  error?: number;
}

export const BAR_COLOUR = '#4a78b5';

/** One labelled bar per entry, its value in percent at the bar's end, a title on top. */
export function barChartSvg(title: string, bars: Bar[], width = 760): string {
  const size = 14;
  const rowH = 28;
  const top = 40;
  const labelW = Math.max(...bars.map((b) => textWidth(b.label, size))) + 16;
  const valueW = textWidth('100.0% ± 9.9', size) + 12;
  const span = width - labelW - valueW - 8;
  const height = top + bars.length * rowH + 12;
  const body = [text(8, 22, title, `font-size="${size + 2}" font-weight="bold"`)];
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const w = Math.round(span * Math.max(0, Math.min(1, b.value)));
    body.push(text(8, y + rowH / 2 + 5, b.label, `font-size="${size}"`));
    body.push(`<rect class="bar" x="${labelW}" y="${y + 3}" width="${w}" height="${rowH - 6}" fill="${BAR_COLOUR}"/>`);
    const value = `${fmtPercent(b.value)}%${b.error !== undefined ? ` ± ${fmtPercent(b.error)}` : ''}`;
    body.push(text(labelW + w + 6, y + rowH / 2 + 5, value, `font-size="${size}"`));
  });
  body.push(`<line x1="${labelW - 0.5}" y1="${top - 2}" x2="${labelW - 0.5}" y2="${top + bars.length * rowH}" stroke="#969696"/>`);
  body.push(`<line x1="${labelW + span + 0.5}" y1="${top - 2}" x2="${labelW + span + 0.5}" y2="${top + bars.length * rowH}" stroke="#c8c8c8"/>`);
  return svg(width, height, body);
}

/** Blue → yellow over [0, 1]. */
function ramp(v: number): string {
  const x = Math.min(1, Math.max(0, v));
  return `rgb(${Math.round(255 * x)},${Math.round(64 + 150 * x)},${Math.round(200 * (1 - x) + 40)})`;
}

/** The side of a heatmap's grid of cells at most (px): 1,000 classes at 44 px a cell needed 7.8 GB to render. */
export const HEATMAP_MAX_GRID = 2400;
/** A cell's side: 44 px, smaller where the grid would pass HEATMAP_MAX_GRID, down to 2. */
const heatmapCell = (cells: number) => Math.max(2, Math.min(44, Math.floor(HEATMAP_MAX_GRID / Math.max(1, cells))));

/**
 * `m` (values in [0, 1]) as cells with `rowLabels` down the left and `colLabels` along the top, each
 * value written in its cell. Many rows or columns shrink the cells (heatmapCell); then the values,
 * and labels wider than a cell, are left out.
 */
export function heatmapSvg(m: number[][], rowLabels: string[], colLabels: string[] = rowLabels, title = ''): string {
  const size = 12;
  const cols = m[0]?.length ?? 0;
  const cell = heatmapCell(Math.max(m.length, cols));
  const gap = cell >= 8 ? 1 : 0;
  const showValues = cell >= textWidth('0.000', size - 1) + 4;
  const showRowLabels = cell >= size;
  const showColLabels = colLabels.every((l) => textWidth(l, size) <= cell);
  const left = (showRowLabels ? Math.max(...rowLabels.map((l) => textWidth(l, size))) : 0) + 12;
  const top = (title ? 28 : 8) + size + 8;
  const width = Math.max(left + cols * cell + 8, title ? textWidth(title, size + 2) + 16 : 0);
  const height = top + m.length * cell + 8;
  const body = title ? [text(8, 20, title, `font-size="${size + 2}" font-weight="bold"`)] : [];
  if (showColLabels) colLabels.forEach((l, j) => body.push(text(left + j * cell + cell / 2, top - 6, l, `font-size="${size}" text-anchor="middle"`)));
  m.forEach((row, i) => {
    if (showRowLabels) body.push(text(left - 6, top + i * cell + cell / 2 + 4, rowLabels[i], `font-size="${size}" text-anchor="end"`));
    row.forEach((v, j) => {
      const x = left + j * cell;
      const y = top + i * cell;
      body.push(`<rect x="${x + gap}" y="${y + gap}" width="${cell - 2 * gap}" height="${cell - 2 * gap}" fill="${ramp(v)}"/>`);
      // Three decimals: accuracies over 200 images are multiples of 0.005, which two decimals rounded
      // unevenly (toFixed rounds the binary value: 0.845 read 0.84, 0.775 read 0.78).
      if (showValues) body.push(text(x + cell / 2, y + cell / 2 + 4, v.toFixed(3), `font-size="${size - 1}" text-anchor="middle" fill="${v > 0.6 ? '#000000' : '#ffffff'}"`));
    });
  });
  return svg(width, height, body);
}

/**
 * Ticks 1, 2, 5 × 10^k within [lo, hi] (lo > 0); over a narrower range (a loss from 0.031 to 0.033
 * had none) 1…9 × 10^k, and where fewer than two of those fall inside either, lo and hi themselves.
 */
function logTicks(lo: number, hi: number): number[] {
  for (const mantissas of [[1, 2, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    const ticks: number[] = [];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of mantissas) {
        const v = m * 10 ** k;
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push(v);
      }
    }
    if (ticks.length >= 2) return ticks;
  }
  return [lo, hi];
}

export const LINE_COLOUR = '#c0504d';

/**
 * `points` ([x, y], y > 0, in order of x) as one polyline, x linear and y on a log axis (a loss
 * falls over decades), with the axes labelled. The plot area is x ∈ [left, left + plotW],
 * y ∈ [top, top + plotH]; the polyline's points carry the class "loss".
 */
export function lineChartSvg(title: string, points: [number, number][], xLabel: string, yLabel: string, width = 760, height = 360): string {
  if (points.length < 2) throw new RangeError(`line chart "${title}": needs at least 2 points, got ${points.length}`);
  const bad = points.find(([x, y]) => !Number.isFinite(x) || !Number.isFinite(y) || y <= 0);
  if (bad) throw new RangeError(`line chart "${title}": point [${bad}] is not finite with y > 0 (a log axis)`);
  const size = 12;
  const left = 64;
  const top = 36;
  const plotW = width - left - 16;
  const plotH = height - top - 48;
  const x0 = points[0][0];
  const x1 = points[points.length - 1][0];
  const ys = points.map((p) => p[1]);
  const lo = Math.min(...ys);
  const hi = Math.max(...ys);
  const [logLo, logHi] = lo === hi ? [Math.log10(lo) - 0.5, Math.log10(hi) + 0.5] : [Math.log10(lo), Math.log10(hi)];
  const px = (x: number) => left + (x1 === x0 ? plotW / 2 : ((x - x0) / (x1 - x0)) * plotW);
  const py = (y: number) => top + ((logHi - Math.log10(y)) / (logHi - logLo)) * plotH;
  const body = [text(8, 22, title, `font-size="${size + 2}" font-weight="bold"`)];
  const ticks = logTicks(10 ** logLo, 10 ** logHi);
  // Three significant digits, more where ticks would share a label (the ends of a narrow range: 1.0001 and 1.0004).
  let digits = 3;
  const label = (v: number) => String(Number(v.toPrecision(digits)));
  while (digits < 17 && new Set(ticks.map(label)).size < ticks.length) digits++;
  for (const v of ticks) {
    const y = py(v).toFixed(1);
    body.push(`<line x1="${left}" y1="${y}" x2="${left + plotW}" y2="${y}" stroke="#e0e0e0"/>`);
    body.push(text(left - 6, Number(y) + 4, label(v), `font-size="${size}" text-anchor="end"`));
  }
  for (let i = 0; i <= 4; i++) {
    const x = x0 + ((x1 - x0) * i) / 4;
    body.push(text(px(x), top + plotH + 18, String(Math.round(x)), `font-size="${size}" text-anchor="middle"`));
  }
  body.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#969696"/>`);
  body.push(`<polyline class="loss" fill="none" stroke="${LINE_COLOUR}" stroke-width="1.5" points="${points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' ')}"/>`);
  body.push(text(left + plotW / 2, height - 8, xLabel, `font-size="${size}" text-anchor="middle"`));
  body.push(text(14, top + plotH / 2, yLabel, `font-size="${size}" text-anchor="middle" transform="rotate(-90 14 ${top + plotH / 2})"`));
  return svg(width, height, body);
}

/**
 * PNG bytes of an SVG document, rendered at its own size with the system's fonts. The renderer (a
 * native addon) is loaded on first use, so commands that draw nothing never load it (Deno runs the
 * CLI without the permissions its platform probe needs).
 */
export async function svgToPng(svgText: string): Promise<Uint8Array> {
  const { Resvg } = await import('@resvg/resvg-js');
  return new Resvg(svgText, { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' }, background: '#ffffff' }).render().asPng();
}
