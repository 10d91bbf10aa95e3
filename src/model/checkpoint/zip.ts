// Just enough of the ZIP format to read PyTorch checkpoints: the central directory (with ZIP64),
// stored (uncompressed) entries, random access to an entry's bytes.
import type { ByteSource } from './byte-source.ts';
import { CheckpointError } from './checkpoint-error.ts';

export interface ZipEntry {
  name: string;
  /** Absolute offset of the entry's data in the file. */
  dataOffset: number;
  size: number;
  method: number;
}

const EOCD = 0x06054b50;
const EOCD64_LOCATOR = 0x07064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

export function isZip(head: Uint8Array): boolean {
  return head.length >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) === LOCAL;
}

export async function readZipDirectory(src: ByteSource): Promise<Map<string, ZipEntry>> {
  const fail = (d: string): never => {
    throw new CheckpointError(src.name, d);
  };
  const tailLen = Math.min(src.size, 65536 + 22);
  const tail = await src.read(src.size - tailLen, tailLen);
  const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail('truncated or corrupted zip checkpoint: no end-of-central-directory record');
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (eocd >= 20 && tv.getUint32(eocd - 20, true) === EOCD64_LOCATOR) {
    const eocd64At = Number(tv.getBigUint64(eocd - 20 + 8, true));
    if (eocd64At + 56 > src.size) fail(`corrupted zip checkpoint: ZIP64 end record at ${eocd64At} past the end (${src.size} bytes)`);
    const rec = await src.read(eocd64At, 56);
    const rv = new DataView(rec.buffer, rec.byteOffset, 56);
    count = Number(rv.getBigUint64(32, true));
    cdSize = Number(rv.getBigUint64(40, true));
    cdOffset = Number(rv.getBigUint64(48, true));
  }
  if (cdOffset + cdSize > src.size) fail(`truncated zip checkpoint: central directory at ${cdOffset}+${cdSize} past the end (${src.size} bytes)`);
  const cd = await src.read(cdOffset, cdSize);
  const cv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cv.getUint32(p, true) !== CENTRAL) fail(`corrupted zip central directory at entry ${i}`);
    const method = cv.getUint16(p + 10, true);
    let size = cv.getUint32(p + 24, true);
    const nameLen = cv.getUint16(p + 28, true);
    const extraLen = cv.getUint16(p + 30, true);
    const commentLen = cv.getUint16(p + 32, true);
    let localOffset = cv.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen + commentLen > cd.length) fail(`corrupted zip central directory: entry ${i} runs past its end`);
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extended information: 64-bit sizes/offset for the fields set to 0xffffffff.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = cv.getUint16(e, true);
      const len = cv.getUint16(e + 2, true);
      if (e + 4 + len > extraEnd) fail(`corrupted zip entry ${name}: extra field runs past its end`);
      if (id === 1) {
        let q = e + 4;
        const u64 = () => {
          if (q + 8 > e + 4 + len) fail(`corrupted zip entry ${name}: ZIP64 field too short`);
          const v = Number(cv.getBigUint64(q, true));
          q += 8;
          return v;
        };
        if (size === 0xffffffff) size = u64();
        if (cv.getUint32(p + 20, true) === 0xffffffff) u64(); // compressed size
        if (localOffset === 0xffffffff) localOffset = u64();
      }
      e += 4 + len;
    }
    if (localOffset + 30 > src.size) fail(`corrupted zip entry ${name}: local header at ${localOffset} past the end (${src.size} bytes)`);
    const local = await src.read(localOffset, 30);
    const lv = new DataView(local.buffer, local.byteOffset, 30);
    if (lv.getUint32(0, true) !== LOCAL) fail(`corrupted zip entry ${name}: no local header at ${localOffset}`);
    const dataOffset = localOffset + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
    if (dataOffset + size > src.size) fail(`truncated: zip entry ${name} ends at ${dataOffset + size}, the file has ${src.size} bytes`);
    entries.set(name, { name, dataOffset, size, method });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}
