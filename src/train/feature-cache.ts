// A feature cache directory: the chunk files of one extraction (possibly written by several shard
// workers). Before extracting, the chunks already there must come from the same settings; after,
// opening the cache checks that every chunk is present, from the same settings and intact.
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { openSafetensors } from '../model/checkpoint/safetensors.ts';
import { type CacheSignature, CHUNK_FILE, parseCacheSignature, planChunks, signatureDifferences } from './cache-signature.ts';
import { openFeatureChunk } from './feature-chunk.ts';
import { featureKey } from './feature-key.ts';

async function chunkFiles(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new Error(`cannot read the feature cache directory ${dir}: ${(e as Error).message}`);
  }
  return names.filter((f) => CHUNK_FILE.test(f)).sort();
}

async function chunkSignature(file: string): Promise<CacheSignature> {
  let s;
  try {
    s = await openSafetensors(file);
  } catch (e) {
    throw new Error(`feature chunk ${(e as Error).message}; delete it or use another --out directory`);
  }
  try {
    return parseCacheSignature(s.metadata.signature, file);
  } finally {
    await s.close();
  }
}

/**
 * Checks that every chunk already in `dir` was written with `signature` (reading headers only),
 * and returns their file names. Throws, naming the settings that differ, when one was not: run it
 * before any work, so nothing is computed for a cache that would be refused. `seen` (file →
 * identity) lets a caller re-check cheaply: files unchanged since the last call are skipped.
 */
export async function checkExistingCache(dir: string, signature: CacheSignature, seen = new Map<string, string>()): Promise<string[]> {
  const files = await chunkFiles(dir);
  for (const f of files) {
    const path = join(dir, f);
    const st = await stat(path).catch(() => undefined);
    if (!st) continue; // removed meanwhile
    const identity = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (seen.get(f) === identity) continue;
    const diff = signatureDifferences(await chunkSignature(path), signature);
    if (diff.length) {
      throw new Error(`${dir} already holds features from an extraction with other settings (${f}: ${diff.join(', ')}); use another --out directory, or delete ${dir} to start over`);
    }
    seen.set(f, identity);
  }
  return files;
}

/**
 * Writes the manifest only when it is missing or says something else: readers (train, knn, cka)
 * open caches they must not modify, maybe on read-only storage, where the manifest already stands.
 */
async function refreshManifest(path: string, text: string): Promise<void> {
  if ((await readFile(path, 'utf8').catch(() => undefined)) === text) return;
  await writeFileAtomic(path, text);
}

export interface FeatureCache {
  signature: CacheSignature;
  count: number;
  labels: Int32Array;
  /** Features of one t × b for every image: [count, ...shape] flattened row-major per image. */
  features(t: number, b: number): Promise<{ data: Float32Array; shape: number[] }>;
}

export interface OpenFeatureCacheOptions {
  /**
   * Read every feature map of every chunk now and check it against its checksum (default true,
   * what merge needs). With false, headers, labels and indices are checked now and each feature
   * map when features() reads it.
   */
  verifyAll?: boolean;
  /**
   * Write (or refresh) manifest.json (default true: merge, extract). Readers (train, knn, cka,
   * eval) pass false: a cache on read-only storage, sharded and never merged, has none, and
   * reading it must not need to write one.
   */
  writeManifest?: boolean;
}

/**
 * Opens a finished extraction (all chunks present, from the same settings, intact), e.g. after
 * several shard workers, and writes/refreshes its manifest.json (unless options.writeManifest is false).
 */
export async function openFeatureCache(dir: string, options: OpenFeatureCacheOptions = {}): Promise<FeatureCache> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new Error(`feature cache ${dir} does not exist (or is not a directory)`);
  const files = await chunkFiles(dir);
  if (!files.length) throw new Error(`${dir} holds no feature chunks; run \`difrep extract --out ${dir}\` first`);
  const sig = await chunkSignature(join(dir, files[0]));
  const expected = planChunks(sig.count, sig.chunkSize);
  const planned = new Set(expected.map((c) => c.file));
  for (const f of files.filter((f) => !planned.has(f))) {
    const diff = signatureDifferences(await chunkSignature(join(dir, f)), sig);
    const why = diff.length ? `comes from an extraction with other settings than ${files[0]} (${diff.join(', ')})` : `is not a chunk of ${sig.count} images in chunks of ${sig.chunkSize}`;
    throw new Error(`${join(dir, f)} ${why}; this directory mixes extractions: delete the chunks that do not belong, or extract again into a new directory`);
  }
  const missing = expected.filter((c) => !files.includes(c.file));
  if (missing.length) {
    throw new Error(`${dir} is incomplete: ${missing.length} of ${expected.length} chunks missing (first: ${missing[0].file}); run the remaining shards (or rerun extract to resume)`);
  }
  const labels = new Int32Array(sig.count);
  const shapes = new Map<string, number[]>();
  for (const c of expected) {
    const chunk = await openFeatureChunk(join(dir, c.file), c, sig);
    try {
      for (const [k, shape] of chunk.shapes) {
        const first = shapes.get(k);
        if (first && JSON.stringify(first) !== JSON.stringify(shape)) {
          throw new Error(`${chunk.file}: "${k}" has per-image shape ${JSON.stringify(shape)} but ${expected[0].file} has ${JSON.stringify(first)}; delete ${chunk.file} and rerun extract to recompute it`);
        }
        shapes.set(k, shape);
        if (options.verifyAll ?? true) await chunk.read(k);
      }
      labels.set(chunk.labels, c.start);
    } finally {
      await chunk.close();
    }
  }
  if (options.writeManifest ?? true) await refreshManifest(join(dir, 'manifest.json'), JSON.stringify({ ...sig, chunks: expected.map((c) => c.file), complete: true }, null, 2));
  return {
    signature: sig,
    count: sig.count,
    labels,
    async features(t, b) {
      const key = featureKey(t, b);
      const shape = shapes.get(key);
      if (!shape) throw new Error(`${dir}: no features for t=${t}, b=${b} (this cache has ${[...shapes.keys()].join(', ')})`);
      const per = shape.reduce((p, d) => p * d, 1);
      const out = new Float32Array(sig.count * per);
      for (const c of expected) {
        // Reopened and rechecked: a chunk may have been replaced since the cache was opened.
        const chunk = await openFeatureChunk(join(dir, c.file), c, sig);
        try {
          if (JSON.stringify(chunk.shapes.get(key)) !== JSON.stringify(shape)) throw new Error(`${chunk.file}: "${key}" changed shape since the cache was opened; rerun`);
          out.set(await chunk.read(key), c.start * per);
        } finally {
          await chunk.close();
        }
      }
      return { data: out, shape };
    },
  };
}
