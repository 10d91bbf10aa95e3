// An exclusive lock on one shard of a feature cache directory, so two extractions never write the
// same chunks at once, and on a training run's output folder. The lock is a file created with O_EXCL ('wx') holding who took it. One lock
// per shard (not per directory), so shards on different machines can share a directory on a
// network file system. A lock left by a process that died on this host (or whose pid a restarted
// container has given to another process: ../model/checkpoint/process-claim.ts) is taken over; one
// from a live process, or from another host (whose processes cannot be checked), is refused.
import { unlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { claimState } from '../model/checkpoint/process-claim.ts';

interface LockOwner {
  pid: number;
  hostname: string;
  started: string;
}

export interface CacheLock {
  file: string;
  release(): Promise<void>;
}

const lockFileName = (shard?: { index: number; count: number }) => `.lock-shard-${shard?.index ?? 0}-of-${shard?.count ?? 1}`;

function readOwner(text: string): LockOwner | undefined {
  try {
    const o = JSON.parse(text) as LockOwner;
    return Number.isInteger(o.pid) && o.pid > 0 && typeof o.hostname === 'string' && Number.isFinite(Date.parse(o.started)) ? o : undefined;
  } catch {
    return undefined;
  }
}

/** What schedulers send to stop a job (scancel, preemption, kubectl delete) or a user at a terminal. */
const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

/**
 * While the lock is held, a stop signal removes the lock file before the process ends: a job that a
 * scheduler stops and requeues on another host would otherwise meet its own lock there, which no
 * host can judge stale. The signal is then raised again, without this listener, so the process
 * ends as it would have; listeners of the application's own see it again (leaving the decision to
 * them instead, as signal-exit does, swallowed the signal when one of them left it to us in turn).
 */
function holdThroughSignals(file: string): { stop(): void } {
  const onSignal = (signal: NodeJS.Signals) => {
    stop();
    try {
      unlinkSync(file);
    } catch {
      // already gone
    }
    process.kill(process.pid, signal);
  };
  const stop = () => {
    for (const s of STOP_SIGNALS) process.off(s, onSignal);
  };
  for (const s of STOP_SIGNALS) process.on(s, onSignal);
  return { stop };
}

/** Takes the lock of this shard of `dir`, or throws naming the process that holds it. */
export function lockCacheShard(dir: string, shard: { index: number; count: number } | undefined, onWarning: (message: string) => void): Promise<CacheLock> {
  return lockFolder(dir, lockFileName(shard), { activity: 'extracted into', writer: 'extraction' }, onWarning);
}

/**
 * Takes the lock of a training run's output folder (train, pretrain), or throws naming the process
 * that holds it: two runs into one --out each saved their state over the other's and both reported
 * success.
 */
export function lockRunFolder(dir: string, onWarning: (message: string) => void): Promise<CacheLock> {
  return lockFolder(dir, '.lock-run', { activity: 'trained into', writer: 'training run' }, onWarning);
}

/** `activity` completes "DIR is being … by PROCESS"; `writer` names what holds such a lock. */
async function lockFolder(dir: string, name: string, what: { activity: string; writer: string }, onWarning: (message: string) => void): Promise<CacheLock> {
  const fs = await import('node:fs/promises');
  const file = join(dir, name);
  const me: LockOwner = { pid: process.pid, hostname: hostname(), started: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const h = await fs.open(file, 'wx');
      try {
        await h.writeFile(JSON.stringify(me));
      } finally {
        await h.close();
      }
      let released = false;
      const signals = holdThroughSignals(file);
      return {
        file,
        async release() {
          if (released) return;
          released = true;
          signals.stop();
          await fs.unlink(file).catch(() => {});
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create the lock file ${file}: ${(e as Error).message}`);
    }
    const text = await fs.readFile(file, 'utf8').catch(() => undefined);
    if (text === undefined) continue; // released between our attempt and the read: try again
    const owner = readOwner(text);
    if (!owner) {
      throw new Error(`${file} is locked by an unreadable lock file; if no ${what.writer} is writing into ${dir}, delete ${file} and rerun`);
    }
    const who = `process ${owner.pid} on ${owner.hostname} (started ${owner.started})`;
    if (owner.hostname !== me.hostname) {
      throw new Error(`${dir} is being ${what.activity} by ${who}; wait for it, or if that process is gone, delete ${file} and rerun`);
    }
    const state = await claimState(owner.pid, Date.parse(owner.started));
    if (state === 'unknown') throw new Error(`${dir} is locked by ${who}, and this runtime cannot tell whether it still runs (under Deno, allow it with --allow-run); if it is gone, delete ${file} and rerun`);
    if (state === 'live') throw new Error(`${dir} is being ${what.activity} by ${who}; wait for it to finish or use another --out directory`);
    // Move the stale lock aside and check it is still the one judged stale: a process taking it
    // over at the same moment may already have replaced it with its own live lock.
    const aside = `${file}.stale-${process.pid}`;
    if (!(await fs.rename(file, aside).then(() => true, () => false))) continue;
    const moved = await fs.readFile(aside, 'utf8').catch(() => undefined);
    if (moved !== text) {
      await fs.link(aside, file).catch(() => {});
      await fs.unlink(aside).catch(() => {});
      continue;
    }
    await fs.unlink(aside).catch(() => {});
    onWarning(`took over the stale lock ${file} of ${who}, which is no longer running`);
  }
  throw new Error(`cannot take the lock ${file}: another process keeps taking it; is another ${what.writer} starting into ${dir}?`);
}
