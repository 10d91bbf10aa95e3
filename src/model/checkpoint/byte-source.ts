// Random access to checkpoint bytes: a file (read piecewise, so multi-GB checkpoints never sit in
// memory whole) or bytes already in memory (browser, tests).

export interface ByteSource {
  /** Where the bytes come from, for error messages. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

export function memorySource(bytes: Uint8Array, name = '<memory>'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    read: async (offset, length) => bytes.subarray(offset, offset + length),
    close: async () => {},
  };
}

/** Opens a file with node:fs (Node and Deno). */
export async function fileSource(path: string): Promise<ByteSource> {
  const fs = await import('node:fs/promises');
  let handle;
  try {
    handle = await fs.open(path, 'r');
  } catch (e) {
    throw new Error(`cannot open checkpoint ${path}: ${(e as Error).message}`);
  }
  const { size } = await handle.stat();
  return {
    name: path,
    size,
    async read(offset, length) {
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, offset + done);
        if (bytesRead === 0) throw new Error(`${path}: unexpected end of file at byte ${offset + done} (file is ${size} bytes)`);
        done += bytesRead;
      }
      return out;
    },
    close: () => handle.close(),
  };
}

export async function openSource(input: string | Uint8Array): Promise<ByteSource> {
  return typeof input === 'string' ? fileSource(input) : memorySource(input);
}
