// Random access to checkpoint bytes: a file (read piecewise, so multi-GB checkpoints never sit in
// memory whole) or bytes already in memory (browser, tests). Every read is checked against the
// size first, so a corrupted offset or length field can neither wrap around nor allocate more than
// the file holds.
import { CheckpointError } from './checkpoint-error.ts';
import { describeFsError } from './fs-error.ts';

export interface ByteSource {
  /** Where the bytes come from, for error messages. */
  readonly name: string;
  readonly size: number;
  /** Exactly `length` bytes at `offset`; a CheckpointError when that range is not inside the source. */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

function checkRange(name: string, size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new CheckpointError(name, `corrupted: asked for ${length} bytes at offset ${offset}, which is not a byte range`);
  }
  if (offset + length > size) {
    throw new CheckpointError(name, `truncated or corrupted: bytes ${offset}..${offset + length} lie past the end of the file (${size} bytes)`);
  }
}

export function memorySource(bytes: Uint8Array, name = '<memory>'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    read: async (offset, length) => {
      checkRange(name, bytes.byteLength, offset, length);
      // A copy: a view would let a caller's edit of what it read change the bytes, and every later read.
      return bytes.slice(offset, offset + length);
    },
    close: async () => {},
  };
}

/** Opens a file with node:fs (Node and Deno); every failure is a CheckpointError naming the path. */
export async function fileSource(path: string): Promise<ByteSource> {
  const runtime = globalThis as { process?: { versions?: { node?: string } }; Deno?: unknown };
  if (!runtime.process?.versions?.node && !runtime.Deno) {
    throw new CheckpointError(path, 'this runtime has no file system (a browser): fetch the file and pass its bytes (a Uint8Array) instead of a path');
  }
  const fs = await import('node:fs/promises');
  let handle;
  try {
    handle = await fs.open(path, 'r');
  } catch (e) {
    throw new CheckpointError(path, `cannot open the checkpoint: ${describeFsError(e)}`);
  }
  let size: number;
  try {
    const stat = await handle.stat();
    // On Linux a directory opens for reading; reading it fails later with EISDIR.
    if (stat.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    if (!stat.isFile()) throw new Error('not a regular file');
    size = stat.size;
  } catch (e) {
    await handle.close();
    throw new CheckpointError(path, `cannot read the checkpoint: ${describeFsError(e)}`);
  }
  const file = handle;
  return {
    name: path,
    size,
    async read(offset, length) {
      checkRange(path, size, offset, length);
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        let bytesRead: number;
        try {
          ({ bytesRead } = await file.read(out, done, length - done, offset + done));
        } catch (e) {
          throw new CheckpointError(path, `cannot read the checkpoint: ${describeFsError(e)}`);
        }
        if (bytesRead === 0) throw new CheckpointError(path, `unexpected end of file at byte ${offset + done} (the file shrank while being read?)`);
        done += bytesRead;
      }
      return out;
    },
    close: () => file.close(),
  };
}

export async function openSource(input: string | Uint8Array): Promise<ByteSource> {
  return typeof input === 'string' ? fileSource(input) : memorySource(input);
}
