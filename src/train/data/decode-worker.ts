// Worker thread body of DecodePool: reads, decodes and preprocesses image batches.
import { parentPort } from 'node:worker_threads';
import { loadBatch } from './image-folder.ts';

parentPort!.on('message', async (m: { id: number; files: string[]; size: number; flips?: boolean[] }) => {
  const r = await loadBatch(m.files, m.size, m.flips);
  parentPort!.postMessage({ id: m.id, images: r.images, failed: r.failed }, [r.images.buffer as ArrayBuffer]);
});
