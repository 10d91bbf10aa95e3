// Writes a chart as FILE.svg and FILE.png side by side (atomically), from one SVG.
import { writeFileAtomic } from '../../model/checkpoint/atomic-write.ts';
import { svgToPng } from './charts.ts';

/** The two files a chart named `path` is written to: the PNG and, beside it with the same stem, the SVG. */
export function chartFiles(path: string): { png: string; svg: string } {
  const stem = path.replace(/\.(png|svg)$/i, '');
  return { png: `${stem}.png`, svg: `${stem}.svg` };
}

/** `path` names the PNG; the SVG goes beside it with the same stem. Returns both paths. */
export async function writeChart(path: string, svgText: string): Promise<{ png: string; svg: string }> {
  const files = chartFiles(path);
  await writeFileAtomic(files.svg, svgText);
  await writeFileAtomic(files.png, await svgToPng(svgText));
  return files;
}
