// The kernel tuning cache that `difrep tune` (and `npm run bench -- --tune`) writes (~/.cache/difrep/tuning.json, or
// $DIFREP_TUNING): per adapter and driver (the adapter's description names the driver version),
// the register tiles that won on it, stamped with the kernels they were timed on. Every Node CLI
// command's engine applies the entry of its adapter; tiles timed on other kernels are left out.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { cpus, homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { createEngine, type Engine } from '../engine/engine.ts';
import { checkTuning, isRecord, TUNING_FAMILIES, type Tuning } from '../engine/tuning.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { describeFsError } from '../model/checkpoint/fs-error.ts';
import { yieldCoresUnlessKept } from './cpu-priority.ts';
import { packageRoot } from './package-root.ts';

/** Adapter → its entry; entries are checked only when their adapter uses them (one from another machine or version blocks nothing here). */
export type TuningCache = Record<string, unknown>;

// $HOME first: under Deno, os.homedir() needs a permission that reading $HOME does not.
// An empty DIFREP_TUNING (`DIFREP_TUNING= difrep …`) is unset, as for HOME, not the path "".
export const tuningPath = (): string => process.env.DIFREP_TUNING || join(process.env.HOME || homedir(), '.cache', 'difrep', 'tuning.json');

/**
 * An engine's adapter in words: its description (with the driver version) and its device (one
 * driver runs several GPUs; lavapipe's names its vector width), else vendor and architecture.
 */
export function adapterDescription(e: Engine): string {
  const i = e.handle.info;
  return [i.description, i.device].filter(Boolean).join(' · ') || `${i.vendor} ${i.architecture}`;
}

/**
 * The key of an engine's adapter in the cache: adapterDescription, and for a CPU adapter, whose
 * speed is the CPU's, the CPU model and core count too: a home folder shared by a cluster's
 * different nodes keeps one entry per kind of node.
 */
export function adapterName(e: Engine): string {
  if (!e.cpuAdapter) return adapterDescription(e);
  // A runtime that will not name the CPU (Deno without --allow-sys) gets no other machine's tiles.
  return `${adapterDescription(e)} · ${hostCpu() || 'CPU unknown'}`;
}

/** "<model> ×<cores>", or '' where the runtime will not say (Deno without --allow-sys). */
function hostCpu(): string {
  try {
    const all = cpus();
    return all.length ? `${all[0].model.trim()} ×${all.length}` : '';
  } catch {
    return '';
  }
}

/**
 * The whole cache ({} when there is no file); a file that is not a cache is an error naming it
 * (and `adapter`, the key of the adapter in use, where the fix needs it).
 */
export async function readTuningCache(adapter?: string): Promise<TuningCache> {
  const path = tuningPath();
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`kernel tuning cache ${path}${process.env.DIFREP_TUNING ? ' (DIFREP_TUNING)' : ''} cannot be read: ${describeFsError(err)}; it names a JSON file \`difrep tune\` writes`);
  }
  const fix = 'delete it (`difrep tune` writes a new one)';
  let cache: unknown;
  try {
    cache = JSON.parse(text);
  } catch (err) {
    throw new Error(`kernel tuning cache ${path} is not JSON (${(err as Error).message}): ${fix}`);
  }
  if (!isRecord(cache)) throw new Error(`kernel tuning cache ${path}: expected an object of adapter → kernel family → settings: ${fix}`);
  // A bare tuning ({"matmul": …}) names no adapter, so no adapter would ever apply it.
  const families = Object.keys(cache).filter((key) => TUNING_FAMILIES.includes(key));
  if (families.length) {
    throw new Error(
      `kernel tuning cache ${path}: ${families.map((f) => `"${f}"`).join(', ')} at its top level ${families.length > 1 ? 'are kernel families' : 'is a kernel family'}, not an adapter's name, so no adapter would use ${families.length > 1 ? 'them' : 'it'}: ` +
        `the cache maps each adapter's name to its settings ({"<adapter>": {"matmul": {…}}}); move ${families.length > 1 ? 'them' : 'it'} under ${adapter ? `"${adapter}" (this adapter's name)` : "the adapter's name"}, or ${fix}`,
    );
  }
  return cache;
}

/** The kernel families `difrep tune` searches: its result replaces these and nothing else. */
const TUNED_FAMILIES = ['matmul', 'conv2d'] as const;

/** The entry's key for the stamp of the kernels its tiles were timed on. */
const STAMP = 'kernels';

let stamp: string | undefined;

/**
 * A hash of the GEMM kernels' sources (kernels/*.ts): tiles timed on other kernels (an earlier or
 * later difrep) may no longer win — a tile stored before the subgroup GEMM existed turned it off.
 */
export function kernelStamp(): string {
  if (stamp) return stamp;
  const dir = join(packageRoot(), 'kernels');
  const hash = createHash('sha256');
  for (const name of readdirSync(dir).filter((n) => n.endsWith('.ts')).sort()) hash.update(name).update(readFileSync(join(dir, name)));
  stamp = hash.digest('hex').slice(0, 16);
  return stamp;
}

/**
 * The settings of `adapter`'s entry set by hand (not the tiles `difrep tune` stores, nor its
 * stamp), checked: they stay in force beside the tiles, so the tiles are timed under them.
 */
export function handSetTuning(cache: TuningCache, adapter: string): Tuning {
  const raw = cache[adapter];
  if (raw === undefined) return {};
  const where = `kernel tuning cache ${tuningPath()}: the entry of this adapter ("${adapter}")`;
  const fix = 'delete that entry, or fix it';
  if (!isRecord(raw)) return checkTuning(raw, where, fix); // throws, naming what it is
  const settings = { ...raw };
  for (const key of [...TUNED_FAMILIES, STAMP]) delete settings[key];
  return checkTuning(settings, where, fix);
}

/**
 * Refuses, before a search of a minute, a cache that could not be stored: its folder cannot be made
 * or written (the store writes a temporary file there and renames it over the cache).
 */
export async function checkTuningWritable(): Promise<void> {
  const path = tuningPath();
  const probe = join(dirname(path), `.${process.pid}.difrep-write-check`);
  try {
    await mkdir(dirname(path), { recursive: true });
    await (await open(probe, 'wx')).close();
    await unlink(probe);
  } catch (err) {
    throw new Error(`kernel tuning cache ${path}${process.env.DIFREP_TUNING ? ' (DIFREP_TUNING)' : ''} cannot be written: ${describeFsError(err)}; set DIFREP_TUNING to a file in a writable folder, or pass --dry-run`);
  }
}

/**
 * Stores the tiles `difrep tune` found (`tuning`: matmul and conv2d, a family left out keeping its
 * built-in tiles) as `adapter`'s, keeping the entry's other settings (matmulSubgroup, attention,
 * rows: set by hand, documented) and the other adapters' entries as they are.
 */
export async function storeTuning(adapter: string, tuning: Tuning): Promise<void> {
  await mkdir(dirname(tuningPath()), { recursive: true });
  // Read, edit and write under a lock: two runs at once (nodes sharing a home folder) each wrote
  // back the file as they had read it, dropping the other's entries.
  await withFileLock(`${tuningPath()}.lock`, async () => {
    const cache = await readTuningCache();
    const kept = { ...((cache[adapter] ?? {}) as Record<string, unknown>) };
    for (const family of TUNED_FAMILIES) delete kept[family];
    cache[adapter] = { ...kept, ...tuning, [STAMP]: kernelStamp() };
    await writeFileAtomic(tuningPath(), JSON.stringify(cache, null, 2) + '\n');
  });
}

/** A lock older than this is taken for a crashed run's: a store takes well under a second. */
const STALE_LOCK_MS = 30_000;

/** Runs `fn` holding `lock` (a file created exclusively), waiting up to STALE_LOCK_MS for another holder. */
async function withFileLock<T>(lock: string, fn: () => Promise<T>): Promise<T> {
  const start = Date.now();
  let said = false;
  for (;;) {
    try {
      await (await open(lock, 'wx')).close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot lock the kernel tuning cache (${lock}): ${describeFsError(err)}`);
      const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > STALE_LOCK_MS) await unlink(lock).catch(() => {});
      else if (!said && Date.now() - start > 1000) {
        said = true;
        console.error(`difrep: waiting for another \`difrep tune\` to store its entry (${lock}; one left by a stopped run is taken over after ${STALE_LOCK_MS / 1000} s)`);
      }
      if (Date.now() - start > STALE_LOCK_MS) throw new Error(`the kernel tuning cache is locked by another \`difrep tune\` (${lock}, ${Math.round(age / 1000)} s old): wait for it, or delete the lock file if no tune is running`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(lock).catch(() => {});
  }
}

/**
 * An engine on the default device with the cached tuning of its adapter applied (one line on
 * stderr says so); without an entry, the adapter's built-in presets. Only this adapter's entry is
 * checked: one that this difrep cannot use (another version's, hand-edited) is an error naming it.
 * The main thread yields the cores to a CPU adapter's threads (yieldCoresUnlessKept) unless
 * `yieldCores` is false, for a caller that yields later (the bench starts its peer process first:
 * a child inherits its parent's nice value).
 */
export async function tunedEngine(options: { yieldCores?: boolean } = {}): Promise<Engine> {
  const e = await createEngine();
  if (options.yieldCores ?? true) await yieldCoresUnlessKept(e);
  const adapter = adapterName(e);
  const cache = await readTuningCache(adapter).catch(async (err) => {
    await e.dispose();
    throw err;
  });
  const raw = cache[adapter];
  if (raw === undefined) {
    // Before CPU adapters' keys named the CPU, their entries were keyed by the adapter alone.
    if (adapter !== adapterDescription(e) && cache[adapterDescription(e)] !== undefined) {
      console.error(`difrep: the entry "${adapterDescription(e)}" in ${tuningPath()} (an earlier difrep's, which kept CPU adapters' tiles without the CPU) is not applied: tiles are now kept per CPU model; run \`difrep tune\` again on this machine`);
    } else if (Object.keys(cache).length) {
      // A driver upgrade renames the adapter: its old entry no longer applies.
      console.error(`difrep: ${tuningPath()} has no entry for this adapter ("${adapter}"): built-in kernel presets`);
    }
    return e;
  }
  const where = `kernel tuning cache ${tuningPath()}: the entry of this adapter ("${adapter}")`;
  const fix = 'delete that entry or fix it (`difrep tune` rewrites only its matmul and conv2d tiles)';
  try {
    if (!isRecord(raw)) checkTuning(raw, where, fix); // throws, naming what it is
    const settings = { ...(raw as Record<string, unknown>) };
    const stamped = settings[STAMP];
    delete settings[STAMP];
    // Tiles with no stamp were set by hand (or stored before stamps): applied as they are.
    if (stamped !== undefined && stamped !== kernelStamp() && TUNED_FAMILIES.some((f) => f in settings)) {
      for (const family of TUNED_FAMILIES) delete settings[family];
      console.error(`difrep: the tiles in ${tuningPath()} for this adapter were timed on other kernels (another difrep version): not applied; run \`difrep tune\` again`);
    }
    const entry = checkTuning(settings, where, fix);
    if (Object.keys(entry).length) {
      e.setTuning(entry);
      console.error(`difrep: kernel tiles tuned for this adapter (${Object.keys(entry).join(', ')}) from ${tuningPath()}; delete that entry for the built-in presets`);
    }
  } catch (err) {
    await e.dispose();
    throw (err as Error).message.startsWith(where) ? err : new Error(`${where}: ${(err as Error).message}: ${fix}`);
  }
  return e;
}
