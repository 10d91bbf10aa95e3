// Output files named on the command line are checked before the work that produces them: a typo in
// --out's folder was found only after sampling (minutes to hours of DDPM steps lost), and an output
// named like one of the command's inputs replaced it (`sample --checkpoint ck --out ck` turned the
// weights into a PNG).
import { realpath, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve, sep } from 'node:path';
import { nearestExisting, unwritableReason } from '../model/checkpoint/atomic-write.ts';
import { UsageError } from './args.ts';
import { chartFiles } from './render/write-chart.ts';

/** A file or folder an output must not replace or write into, and what it is: "--checkpoint's weights". */
export interface KeptPath {
  path: string;
  what: string;
}

/** `path` absolute with symbolic links resolved as far as it exists, so two names of one file compare equal. */
async function realPath(path: string): Promise<string> {
  const absolute = resolve(path);
  try {
    return await realpath(absolute);
  } catch {
    const parent = dirname(absolute);
    return parent === absolute ? absolute : join(await realPath(parent), basename(absolute));
  }
}

const isFolder = async (path: string) => (await stat(path).catch(() => undefined))?.isDirectory() ?? false;

/**
 * Throws a UsageError naming `--option` unless `path` can be written: its folder exists and is
 * writable, it is not a folder itself, and it is none of `keep` nor inside a folder of `keep`.
 */
export async function checkOutputFile(command: string, option: string, path: string, keep: readonly KeptPath[] = []): Promise<void> {
  const reason = await unwritableReason(path);
  if (reason) throw new UsageError(`difrep ${command}: --${option} ${reason.startsWith(path) ? reason : `${path}: ${reason}`}`);
  await checkNotKept(command, option, path, keep);
}

/**
 * Throws a UsageError unless `path` (an output folder) is a folder or can be made one, and is none
 * of `keep` nor inside a folder of `keep`: found before the data load, not at the first save.
 */
export async function checkOutputFolder(command: string, option: string, path: string, keep: readonly KeptPath[] = []): Promise<void> {
  const found = await stat(path).catch(() => undefined);
  if (found && !found.isDirectory()) throw new UsageError(`difrep ${command}: --${option} ${path} is a file; it names a folder for this command's outputs: give a folder`);
  if (!found) {
    // The nearest existing folder above it must be writable (mkdir -p makes the rest).
    const above = await nearestExisting(dirname(resolve(path)));
    const reason = await unwritableReason(join(above.path, basename(path)));
    if (reason) throw new UsageError(`difrep ${command}: --${option} ${path} cannot be created: ${reason}`);
  }
  await checkNotKept(command, option, path, keep);
}

/** checkOutputFile for both files of a chart named `path` (its PNG and SVG: chartFiles); another extension is refused. */
export async function checkChartOutput(command: string, option: string, path: string, keep: readonly KeptPath[] = []): Promise<void> {
  const ext = extname(path);
  if (ext && !/^\.(png|svg)$/i.test(ext)) throw new UsageError(`difrep ${command}: --${option} ${path}: a chart is written as a PNG and an SVG beside it; give a name ending in .png (not ${ext})`);
  for (const file of Object.values(chartFiles(path))) await checkOutputFile(command, option, file, keep);
}

/** Throws a UsageError when `path` (an output of --option) is one of `keep` or lies inside a folder of `keep`. */
export async function checkNotKept(command: string, option: string, path: string, keep: readonly KeptPath[]): Promise<void> {
  const out = await realPath(path);
  for (const k of keep) {
    const kept = await realPath(k.path);
    if (out === kept) throw new UsageError(`difrep ${command}: --${option} ${path} is ${k.what} (${k.path}); writing it would replace that: choose another path`);
    if (out.startsWith(kept + sep) && (await isFolder(kept))) throw new UsageError(`difrep ${command}: --${option} ${path} lies inside ${k.what} (${k.path}), which this command reads: write it elsewhere`);
  }
}
