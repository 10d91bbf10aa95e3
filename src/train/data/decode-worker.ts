// Worker thread body of DecodePool: reads, decodes and preprocesses image batches. Replies with
// structured results (one {file, ok, error} per file), or {error} if the whole batch failed.
import { parentPort } from 'node:worker_threads';
import { loadBatch } from './image-folder.ts';

parentPort!.on('message', async (m: { id: number; files: string[]; size: number; flips?: boolean[]; maxPixels?: number; sha256?: string[] }) => {
  try {
    const r = await loadBatch(m.files, m.size, m.flips, { maxPixels: m.maxPixels }, m.sha256);
    parentPort!.postMessage({ id: m.id, images: r.images, results: r.results }, [r.images.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ id: m.id, error: (e as Error).message });
  }
});
