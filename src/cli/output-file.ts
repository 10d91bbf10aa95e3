// Output files named on the command line are checked before the work that produces them: a typo in
// --out's folder was found only after sampling (minutes to hours of DDPM steps lost).
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { UsageError } from './args.ts';

/** Throws a UsageError naming `--option` unless `path` can be written: its folder exists and is writable, and it is not a folder itself. */
export async function checkOutputFile(command: string, option: string, path: string): Promise<void> {
  if ((await stat(path).catch(() => undefined))?.isDirectory()) throw new UsageError(`difrep ${command}: --${option} ${path} is a folder: give a file name`);
  const dir = dirname(resolve(path));
  if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new UsageError(`difrep ${command}: --${option} ${path}: the folder ${dir} does not exist; create it first`);
  try {
    await access(dir, constants.W_OK);
  } catch {
    throw new UsageError(`difrep ${command}: --${option} ${path}: ${dir} cannot be written`);
  }
}
