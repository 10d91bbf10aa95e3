// Atomic writes: a failed write leaves no temp file and names the target; temp files left by dead
// processes are found by their pid and removed, those of live processes kept.
import { spawnSync } from 'node:child_process';
import * as realFs from 'node:fs/promises';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { removeStaleTempFiles, writeFileAtomic } from '../../src/model/checkpoint/atomic-write.ts';

const failure = (p: Promise<unknown>) => p.then(() => null, (e: Error) => e);

t.test('a write into a path whose parent is a file fails naming the target, leaving nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  await writeFile(join(dir, 'file'), 'x');
  const target = join(dir, 'file', 'out.json');
  const err = await failure(writeFileAtomic(target, '{}'));
  t.equal(err?.message, `cannot write ${target}: a component of the path is not a directory (ENOTDIR); ${target} is unchanged`);
  t.same(await readdir(dir), ['file']);
  await rm(dir, { recursive: true });
});

t.test('a write onto a directory (EISDIR at the rename) removes its temp file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  const target = join(dir, 'results');
  await mkdir(target);
  const err = await failure(writeFileAtomic(target, 'data'));
  t.equal(err?.message, `cannot write ${target}: is a directory (EISDIR); ${target} is unchanged`);
  t.same(await readdir(dir), ['results'], 'no .tmp left beside the target');
  t.same(await readdir(target), []);
  await rm(dir, { recursive: true });
});

t.test('a disk that fills up mid-write (ENOSPC) leaves the old file and no temp file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  const target = join(dir, 'state.safetensors');
  await writeFile(target, 'old contents');
  // writeFile that writes half the data, then fails as a full disk does.
  const { writeFileAtomic: write } = await t.mockImport<typeof import('../../src/model/checkpoint/atomic-write.ts')>('../../src/model/checkpoint/atomic-write.ts', {
    'node:fs/promises': {
      ...realFs,
      writeFile: async (path: string, data: Uint8Array) => {
        await realFs.writeFile(path, data.subarray(0, data.length / 2));
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      },
    },
  });
  const err = await failure(write(target, new Uint8Array(1000)));
  t.equal(err?.message, `cannot write ${target}: no space left on the device (ENOSPC); ${target} is unchanged`);
  t.same(await readdir(dir), ['state.safetensors'], 'the half-written temp file is gone');
  t.equal(await readFile(target, 'utf8'), 'old contents');
  await rm(dir, { recursive: true });
});

// Two writes of one path in the same millisecond shared one temporary name: one renamed the
// other's file away, which then failed with ENOENT (or both "succeeded" on one file).
t.test('writes of one path at once each complete, leaving one whole file and no temp file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  const target = join(dir, 'state.json');
  const contents = Array.from({ length: 20 }, (_, i) => `run ${i} `.repeat(5000));
  const results = await Promise.allSettled(contents.map((c) => writeFileAtomic(target, c)));
  t.same(results.map((r) => r.status), contents.map(() => 'fulfilled'), 'every write completed');
  t.ok(contents.includes(await readFile(target, 'utf8')), 'the file holds one write whole');
  t.same(await readdir(dir), ['state.json'], 'no temp file left');
  await rm(dir, { recursive: true });
});

t.test('removeStaleTempFiles removes the temp files of dead processes only', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  // A pid that certainly belonged to a process that has exited: a child we ran to completion.
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  const ms = Date.now();
  const files = {
    deadTemp: `chunk-0003.safetensors.${dead}.${ms}.tmp`,
    deadTempNamed: `chunk-0004.safetensors.${dead}.${ms}.k3x9q2a1.tmp`,
    ownTemp: `manifest.json.${process.pid}.${ms}.tmp`,
    liveTemp: `result.json.1.${ms}.tmp`, // pid 1 is always alive
    // Pids reused by a restarted container: written before the process now holding that pid started.
    reusedOwnPid: `state.safetensors.${process.pid}.${Math.round(performance.timeOrigin) - 60_000}.tmp`,
    reusedPid1: `ema.safetensors.1.${Date.parse('2001-09-09T01:46:40Z')}.tmp`,
    otherTmp: 'notes.tmp',
    notTemp: `chunk-0003.safetensors`,
  };
  for (const f of Object.values(files)) await writeFile(join(dir, f), 'x');
  await mkdir(join(dir, `folder.${dead}.${ms}.tmp`));
  const removed = await removeStaleTempFiles(dir);
  t.same(removed.sort(), [join(dir, files.deadTemp), join(dir, files.deadTempNamed), join(dir, files.reusedOwnPid), join(dir, files.reusedPid1)].sort());
  t.same((await readdir(dir)).sort(), [files.notTemp, `folder.${dead}.${ms}.tmp`, files.ownTemp, files.liveTemp, files.otherTmp].sort());
  t.same(await removeStaleTempFiles(join(dir, 'missing')), [], 'a missing directory has nothing to remove');
  await rm(dir, { recursive: true });
});

/** writeFileAtomic over fs/promises that logs writes, renames and fsyncs; the directory's fsync fails with `dirSyncError`. */
async function loggedWrite(t: Test, dir: string, target: string, dirSyncError: string) {
  const calls: string[] = [];
  const name = (p: string) => (p === dir ? '<dir>' : p === target ? '<target>' : p.startsWith(`${target}.`) ? '<tmp>' : p);
  const { writeFileAtomic: write } = await t.mockImport<typeof import('../../src/model/checkpoint/atomic-write.ts')>('../../src/model/checkpoint/atomic-write.ts', {
    'node:fs/promises': {
      ...realFs,
      writeFile: async (p: string, data: string) => {
        calls.push(`write ${name(p)}`);
        await realFs.writeFile(p, data);
      },
      rename: async (from: string, to: string) => {
        calls.push(`rename ${name(from)} ${name(to)}`);
        await realFs.rename(from, to);
      },
      open: async (p: string, flags: string) => {
        const handle = await realFs.open(p, flags);
        return {
          sync: async () => {
            calls.push(`fsync ${name(p)}`);
            if (p === dir) throw Object.assign(new Error(`${dirSyncError}: fsync`), { code: dirSyncError });
            await handle.sync();
          },
          close: () => handle.close(),
        };
      },
    },
  });
  return { calls, write };
}

t.test('the temp file is fsynced before the rename and the directory after it; a directory fsync refused (EINVAL) is ignored', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  const target = join(dir, 'state.safetensors');
  const { calls, write } = await loggedWrite(t, dir, target, 'EINVAL');
  await write(target, 'new contents');
  t.same(calls, ['write <tmp>', 'fsync <tmp>', 'rename <tmp> <target>', 'fsync <dir>']);
  t.equal(await readFile(target, 'utf8'), 'new contents');
  t.same(await readdir(dir), ['state.safetensors']);
  await rm(dir, { recursive: true });
});

t.test('a directory fsync that fails (EIO) says the file was written but may not survive a crash', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-atomic-'));
  const target = join(dir, 'state.safetensors');
  const { write } = await loggedWrite(t, dir, target, 'EIO');
  const err = await failure(write(target, 'new contents'));
  t.equal(err?.message, `wrote ${target} but cannot sync its directory: input/output error (EIO); the new contents may not survive a crash`);
  t.equal(await readFile(target, 'utf8'), 'new contents');
  await rm(dir, { recursive: true });
});
