// Grey images (Fashion-MNIST's 28×28) as the U-Net's input, with no Node import, so the example
// page gives its bundled samples exactly the CLI's model input.

export interface GreyImages {
  /** Row-major uint8 pixels, `count` images of `rows` × `cols`. */
  pixels: Uint8Array;
  labels: Uint8Array;
  count: number;
  rows: number;
  cols: number;
}

/**
 * Images i ∈ `indices` as model input: the 28×28 grey image bilinearly resized to size×size
 * (align_corners=False), replicated to 3 channels, scaled to [−1, 1]; NCHW.
 */
export function toModelInput(ds: GreyImages, indices: readonly number[], size: number): Float32Array {
  const out = new Float32Array(indices.length * 3 * size * size);
  const plane = size * size;
  const { rows: H, cols: W } = ds;
  indices.forEach((idx, n) => {
    const img = ds.pixels.subarray(idx * H * W, (idx + 1) * H * W);
    for (let y = 0; y < size; y++) {
      const sy = Math.max((y + 0.5) * (H / size) - 0.5, 0);
      const y0 = Math.min(Math.floor(sy), H - 1);
      const y1 = Math.min(y0 + 1, H - 1);
      const ly = sy - y0;
      for (let x = 0; x < size; x++) {
        const sx = Math.max((x + 0.5) * (W / size) - 0.5, 0);
        const x0 = Math.min(Math.floor(sx), W - 1);
        const x1 = Math.min(x0 + 1, W - 1);
        const lx = sx - x0;
        const v = (1 - ly) * ((1 - lx) * img[y0 * W + x0] + lx * img[y0 * W + x1]) + ly * ((1 - lx) * img[y1 * W + x0] + lx * img[y1 * W + x1]);
        const s = v / 127.5 - 1;
        for (let c = 0; c < 3; c++) out[(n * 3 + c) * plane + y * size + x] = s;
      }
    }
  });
  return out;
}
