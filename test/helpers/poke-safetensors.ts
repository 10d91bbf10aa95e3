// Test helper: corrupting one value of a safetensors file without going through the loader.

/**
 * A copy of safetensors `bytes` with element `index` of F32 tensor `name` set to `value`, located
 * from the header by hand (u64 LE header length, JSON header, data section), not by the loader.
 */
export function poke(bytes: Uint8Array, name: string, index: number, value: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  const view = new DataView(out.buffer);
  const headerLen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(out.subarray(8, 8 + headerLen)));
  const entry = header[name];
  if (entry?.dtype !== 'F32') throw new Error(`test setup: ${name} is not an F32 tensor`);
  view.setFloat32(8 + headerLen + entry.data_offsets[0] + 4 * index, value, true);
  return out;
}
