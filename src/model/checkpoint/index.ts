// Opens any supported checkpoint by its content: safetensors, or PyTorch .pt (zip or legacy).
import { openSource } from './byte-source.ts';
import { CheckpointError } from './checkpoint-error.ts';
import { openSafetensors } from './safetensors.ts';
import type { TensorSource } from './tensor-source.ts';
import { openTorchCheckpoint } from './torch-pt.ts';
import { isZip } from './zip.ts';

export { CheckpointError } from './checkpoint-error.ts';
export { encodeSafetensors, openSafetensors, writeSafetensors } from './safetensors.ts';
export { openTorchCheckpoint } from './torch-pt.ts';
export { UnsafePickleError } from './pickle.ts';
export { type TensorSource, withPrefix } from './tensor-source.ts';

export async function openCheckpoint(input: string | Uint8Array): Promise<TensorSource> {
  const src = await openSource(input);
  const head = await src.read(0, Math.min(8, src.size));
  await src.close();
  if (src.size === 0) throw new CheckpointError(src.name, 'empty file');
  // torch.save output starts with a zip local header ("PK\x03\x04") or a pickle PROTO opcode (0x80).
  if (isZip(head) || head[0] === 0x80) return openTorchCheckpoint(input);
  return openSafetensors(input);
}
