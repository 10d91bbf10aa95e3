// Writes a chart as FILE.svg and FILE.png side by side (atomically), from one SVG.
import { writeFileAtomic } from '../../model/checkpoint/atomic-write.ts';
import { svgToPng } from './charts.ts';

/** `path` names the PNG; the SVG goes beside it with the same stem. Returns both paths. */
export async function writeChart(path: string, svgText: string): Promise<{ png: string; svg: string }> {
  const stem = path.replace(/\.(png|svg)$/i, '');
  await writeFileAtomic(`${stem}.svg`, svgText);
  await writeFileAtomic(`${stem}.png`, await svgToPng(svgText));
  return { png: `${stem}.png`, svg: `${stem}.svg` };
}
