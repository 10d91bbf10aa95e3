// Opens any supported checkpoint by its content: safetensors, or PyTorch .pt (zip or legacy).
import { openSource } from './byte-source.ts';
import { CheckpointError } from './checkpoint-error.ts';
import { isSafetensors, openSafetensors } from './safetensors.ts';
import type { TensorSource } from './tensor-source.ts';
import { isLegacyTorch, LEGACY_HEAD_BYTES, LEGACY_HEAD_DESCRIPTION, openTorchCheckpoint } from './torch-pt.ts';
import { isZip } from './zip.ts';

export { CheckpointError } from './checkpoint-error.ts';
export { encodeSafetensors, openSafetensors, writeSafetensors } from './safetensors.ts';
export { openTorchCheckpoint } from './torch-pt.ts';
export { UnsafePickleError } from './pickle.ts';
export { type TensorSource, withPrefix } from './tensor-source.ts';

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');

export async function openCheckpoint(input: string | Uint8Array): Promise<TensorSource> {
  const src = await openSource(input);
  // The longest signature is the legacy torch magic.
  const head = await src.read(0, Math.min(LEGACY_HEAD_BYTES, src.size));
  await src.close();
  if (src.size === 0) throw new CheckpointError(src.name, 'empty file');
  // Full signatures only: a first byte 0x80 (pickle PROTO) is also the low byte of 1 in 256
  // safetensors header lengths (1 in 32 of ours, whose lengths are multiples of 8).
  if (isZip(head) || isLegacyTorch(head)) return openTorchCheckpoint(input);
  if (isSafetensors(head)) return openSafetensors(input);
  const found = src.size < 9 ? `${src.size} bytes, shorter than the 8-byte header length and the "{" after it` : `it starts with ${hex(head.subarray(0, 16))}`;
  throw new CheckpointError(
    src.name,
    `not a checkpoint in an accepted format (${found}). Accepted: safetensors (a u64 header length, then a JSON header: byte 8 is "{"), ` +
      `a PyTorch zip archive (torch.save; starts with "PK\\x03\\x04") and the legacy PyTorch format (torch.save before 1.6 or with _use_new_zipfile_serialization=False; starts with ${LEGACY_HEAD_DESCRIPTION})`,
  );
}
