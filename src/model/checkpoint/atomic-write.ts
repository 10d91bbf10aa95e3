// Writes a file so that readers see either the old contents or the new, never a partial file: the
// data goes to `<path>.<pid>.<ms>.tmp` beside the target, is fsynced, then is renamed over it, and
// the directory is fsynced so that the rename survives a crash too. A failed write removes its
// temp file; temp files of processes that died mid-write are removed by removeStaleTempFiles (the
// pid and time in the name tell whether the writer still runs: ./process-claim.ts).
import { describeFsError } from './fs-error.ts';
import { claimState } from './process-claim.ts';

/** `<target>.<pid>.<Date.now()>.<random>.tmp` (without `.<random>` before 2026-12-07) */
const TEMP_NAME = /^(.+)\.(\d+)\.(\d{13,})(?:\.[0-9a-z]+)?\.tmp$/;

/** Errors of a directory fsync on systems and file systems that do not support one (Windows cannot open a directory). */
const NO_DIRECTORY_SYNC = new Set(['EINVAL', 'EISDIR', 'EPERM', 'EACCES', 'ENOTSUP', 'EOPNOTSUPP', 'EBADF']);

/** The nearest of `path` (absolute) and the folders above it that exists, and whether it is a folder. */
export async function nearestExisting(path: string): Promise<{ path: string; isFolder: boolean }> {
  const { stat } = await import('node:fs/promises');
  const { dirname } = await import('node:path');
  for (let at = path; ; at = dirname(at)) {
    const found = await stat(at).catch(() => undefined);
    if (found || dirname(at) === at) return { path: at, isFolder: found?.isDirectory() ?? false };
  }
}

/**
 * Why `path` could not be written, checked before the work that produces it (a typo in a folder was
 * found only at the first save, after the training or sampling it was to keep): it is a folder, its
 * folder does not exist, or that folder cannot be written. Undefined when it can.
 */
export async function unwritableReason(path: string): Promise<string | undefined> {
  const { access, constants, stat } = await import('node:fs/promises');
  const { dirname, resolve } = await import('node:path');
  if ((await stat(path).catch(() => undefined))?.isDirectory()) return `${path} is a folder: give a file name`;
  const dir = dirname(resolve(path));
  // A file there or further up (notes.txt/a/b) makes the folder impossible to create, not merely missing.
  const above = await nearestExisting(dir);
  if (!above.isFolder) return `${above.path} is a file, not a folder`;
  if (above.path !== dir) return `the folder ${dir} does not exist; create it first`;
  try {
    await access(dir, constants.W_OK);
  } catch {
    return `${dir} cannot be written`;
  }
  return undefined;
}

export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const fs = await import('node:fs/promises');
  const { dirname } = await import('node:path');
  const sync = async (p: string, flags: string) => {
    const handle = await fs.open(p, flags);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  };
  // A name of its own for each write: two writes of one path in the same millisecond (two fits
  // given one checkpoint) shared the temporary file, and one renamed the other's away mid-write.
  const tmp = `${path}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2, 10)}.tmp`;
  try {
    await fs.writeFile(tmp, data, { flag: 'wx' });
    // Without this fsync a crash after the rename can leave the new name on an empty or partial
    // file (ext4 delayed allocation, XFS): the data must be on disk before the name points to it.
    await sync(tmp, 'r+');
    await fs.rename(tmp, path);
  } catch (e) {
    await fs.rm(tmp, { force: true }).catch(() => {});
    throw new Error(`cannot write ${path}: ${describeFsError(e)}; ${path} is unchanged`, { cause: e });
  }
  // The rename itself is durable only once the directory holding the entry is synced.
  try {
    await sync(dirname(path), 'r');
  } catch (e) {
    if (!NO_DIRECTORY_SYNC.has((e as { code?: string }).code ?? '')) {
      throw new Error(`wrote ${path} but cannot sync its directory: ${describeFsError(e)}; the new contents may not survive a crash`, { cause: e });
    }
  }
}

/**
 * Removes the temp files that writeFileAtomic calls of dead processes left in `dir` (a process
 * killed between write and rename, also where a restarted container gave its pid to another process
 * or to this one). Temp files of live writers, this process included, are kept.
 * Returns the paths removed; a missing directory has none.
 */
export async function removeStaleTempFiles(dir: string): Promise<string[]> {
  const fs = await import('node:fs/promises');
  const { join } = await import('node:path');
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return [];
    throw e;
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = TEMP_NAME.exec(name);
    if (!m) continue;
    const path = join(dir, name);
    // Kept unless its writer is gone: a pid that no longer runs, or runs a process started after the write.
    if ((await claimState(Number(m[2]), Number(m[3]))) !== 'gone') continue;
    const stat = await fs.lstat(path).catch(() => null);
    if (!stat?.isFile()) continue;
    await fs.rm(path, { force: true });
    removed.push(path);
  }
  return removed;
}
