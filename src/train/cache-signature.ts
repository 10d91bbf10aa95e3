// The settings one feature extraction was run with (its signature), stored as JSON in every chunk
// it writes: chunks from different settings must never be mixed in one cache. The signature read
// back from a chunk is untrusted metadata, so it is checked (types, ranges, sizes) before anything
// is planned from it: a zero or huge count or chunk size must not turn into an endless loop.

/** Diffusion timesteps of the linear 1000-step schedule. */
export const TIMESTEPS = 1000;
/** Upper bounds on what a signature may declare (far above any real dataset). */
/** Images per cache: chunks store each image's index as I64, read back as float32, exact to 2^24. */
const MAX_IMAGES = 2 ** 24;
const MAX_CHUNKS = 10_000_000;
const MAX_BLOCKS = 1000;

export interface CacheSignature {
  /** Provenance given by the caller: config, checkpoint hash, dataset, … (strings). */
  [provenance: string]: unknown;
  timesteps: number[];
  blocks: number[];
  pool: number | null;
  seed: number;
  count: number;
  chunkSize: number;
}

const SETTINGS = ['timesteps', 'blocks', 'pool', 'seed', 'count', 'chunkSize'] as const;

export function makeCacheSignature(provenance: Record<string, string>, settings: Pick<CacheSignature, (typeof SETTINGS)[number]>): CacheSignature {
  for (const k of SETTINGS) if (k in provenance) throw new Error(`provenance key "${k}" clashes with the extraction setting of that name; rename it`);
  return { ...provenance, timesteps: settings.timesteps, blocks: settings.blocks, pool: settings.pool, seed: settings.seed, count: settings.count, chunkSize: settings.chunkSize };
}

const isInt = (v: unknown, lo: number, hi: number): v is number => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;

/** The first duplicate in `values`, if any. */
export function firstDuplicate(values: readonly number[]): number | undefined {
  const seen = new Set<number>();
  for (const v of values) {
    if (seen.has(v)) return v;
    seen.add(v);
  }
  return undefined;
}

/** Checks a signature's settings; `where` names the chunk (or the call) for the message. */
export function checkCacheSignature(sig: CacheSignature, where: string): void {
  const bad = (detail: string): never => {
    throw new Error(`${where}: ${detail}`);
  };
  if (!isInt(sig.count, 1, MAX_IMAGES)) bad(`image count ${JSON.stringify(sig.count)} is not an integer in 1..${MAX_IMAGES} (a cache holds at most 2^24 images: extract a larger dataset into several caches)`);
  if (!isInt(sig.chunkSize, 1, MAX_IMAGES)) bad(`chunk size ${JSON.stringify(sig.chunkSize)} is not an integer in 1..${MAX_IMAGES}`);
  if (Math.ceil(sig.count / sig.chunkSize) > MAX_CHUNKS) bad(`${sig.count} images in chunks of ${sig.chunkSize} would be more than ${MAX_CHUNKS} chunks`);
  // Block 0 (the raw-pixel input) stands alone at timestep 0: a pixel cache.
  const pixels = Array.isArray(sig.blocks) && sig.blocks.length === 1 && sig.blocks[0] === 0 && JSON.stringify(sig.timesteps) === '[0]';
  for (const [name, list, lo, hi] of [['timesteps', sig.timesteps, 0, TIMESTEPS - 1], ['blocks', sig.blocks, pixels ? 0 : 1, MAX_BLOCKS]] as const) {
    if (!Array.isArray(list) || !list.length || list.length > hi - lo + 1) bad(`${name} ${JSON.stringify(list)} is not a non-empty list`);
    for (const v of list as unknown[]) if (!isInt(v, lo, hi)) bad(`${name}: ${JSON.stringify(v)} is not an integer in ${lo}..${hi}`);
    const dup = firstDuplicate(list);
    if (dup !== undefined) bad(`${name} lists ${dup} twice`);
  }
  if (sig.pool !== null && !isInt(sig.pool, 1, 1 << 16)) bad(`pool ${JSON.stringify(sig.pool)} is neither null nor a positive integer`);
  // The noise generator takes 32 bits: seeds 5 and 5 + 2^32 drew the same noise under two signatures.
  if (!isInt(sig.seed, 0, 2 ** 32 - 1)) bad(`seed ${JSON.stringify(sig.seed)} is not an integer in 0..${2 ** 32 - 1} (the noise generator's seeds are 32-bit)`);
  for (const [k, v] of Object.entries(sig)) if (!(SETTINGS as readonly string[]).includes(k) && typeof v !== 'string') bad(`provenance "${k}" is not a string`);
}

/** Parses and checks the signature stored in a chunk's metadata. */
export function parseCacheSignature(text: string | undefined, file: string): CacheSignature {
  if (text === undefined) throw new Error(`${file} has no extraction signature in its metadata: it is not a difrep feature chunk; delete it or use another --out directory`);
  let sig: unknown;
  try {
    sig = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: extraction signature is not valid JSON (${(e as Error).message}); delete the chunk and rerun extract`);
  }
  if (!sig || typeof sig !== 'object' || Array.isArray(sig)) throw new Error(`${file}: extraction signature is not a JSON object; delete the chunk and rerun extract`);
  checkCacheSignature(sig as CacheSignature, `${file}: extraction signature`);
  return sig as CacheSignature;
}

/** A setting's value for a message: JSON, 'unset', or cut to `max` characters with "...". */
export function showSetting(v: unknown, max = 40): string {
  const s = v === undefined ? 'unset' : JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** The settings in which `a` and `b` differ, as `name (a → b)` (long provenance values shortened). */
export function signatureDifferences(a: CacheSignature, b: CacheSignature): string[] {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  return keys.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k])).map((k) => `${k} (${showSetting(a[k])} → ${showSetting(b[k])})`);
}

export interface ChunkPlan {
  start: number;
  end: number;
  file: string;
}

const chunkName = (start: number, end: number) => `chunk-${String(start).padStart(8, '0')}-${String(end).padStart(8, '0')}.safetensors`;
export const CHUNK_FILE = /^chunk-\d+-\d+\.safetensors$/;

/** The chunk files of `count` images in chunks of `chunkSize` (both positive integers, bounded). */
export function planChunks(count: number, chunkSize: number): ChunkPlan[] {
  if (!isInt(count, 1, MAX_IMAGES) || !isInt(chunkSize, 1, MAX_IMAGES) || Math.ceil(count / chunkSize) > MAX_CHUNKS) {
    throw new RangeError(`cannot plan chunks of ${chunkSize} for ${count} images: both must be positive integers, at most ${MAX_CHUNKS} chunks`);
  }
  const out: ChunkPlan[] = [];
  for (let s = 0; s < count; s += chunkSize) out.push({ start: s, end: Math.min(count, s + chunkSize), file: chunkName(s, Math.min(count, s + chunkSize)) });
  return out;
}
