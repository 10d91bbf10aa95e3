// Output files named on the command line are checked before the work that produces them: a typo in
// --out's folder was found only after sampling (minutes to hours of DDPM steps lost).
import { unwritableReason } from '../model/checkpoint/atomic-write.ts';
import { UsageError } from './args.ts';

/** Throws a UsageError naming `--option` unless `path` can be written: its folder exists and is writable, and it is not a folder itself. */
export async function checkOutputFile(command: string, option: string, path: string): Promise<void> {
  const reason = await unwritableReason(path);
  if (reason) throw new UsageError(`difrep ${command}: --${option} ${reason.startsWith(path) ? reason : `${path}: ${reason}`}`);
}
