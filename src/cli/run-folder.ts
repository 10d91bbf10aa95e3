// A training run's output folder, held for the run: made if missing, locked against a second run
// into it (../train/cache-lock.ts), and cleared of the temp files a killed run left there.
import { mkdir, rmdir, stat } from 'node:fs/promises';
import { removeStaleTempFiles } from '../model/checkpoint/atomic-write.ts';
import { type CacheLock, lockRunFolder } from '../train/cache-lock.ts';

/**
 * Release the lock once the run's last output is written (a stop signal releases it too). A folder
 * this made is removed again at release if the run left nothing in it (it failed before its first
 * save: a user would otherwise find empty run folders of refused runs).
 */
export async function holdRunFolder(dir: string): Promise<CacheLock> {
  const existed = await stat(dir).then(() => true, () => false);
  await mkdir(dir, { recursive: true });
  const lock = await lockRunFolder(dir, (m) => console.error(`difrep: warning: ${m}`));
  // Only under the lock: another run's temp files are its live writes.
  await removeStaleTempFiles(dir);
  return {
    file: lock.file,
    async release() {
      await lock.release();
      if (!existed) await rmdir(dir).catch(() => {}); // refused unless empty
    },
  };
}
