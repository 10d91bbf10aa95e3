// What every image becomes before the U-Net sees it, the same in Node (image folders, the CLI) and
// in a browser (the example page): the shorter side resized to the model size (area averaging when
// shrinking, bilinear when growing), a centre crop, an optional horizontal flip, CHW in [−1, 1].
// No Node import: the library exports it for pages that read their own images.

export interface Rgb {
  width: number;
  height: number;
  /** RGB, row-major, uint8. */
  data: Uint8Array;
}

/** Resize the shorter side to `size`, centre crop size×size, optional flip → CHW floats in [−1, 1]. */
export function preprocess(img: Rgb, size: number, flip: boolean, out: Float32Array, offset: number): void {
  const scale = size / Math.min(img.width, img.height);
  const w = Math.max(size, Math.round(img.width * scale));
  const h = Math.max(size, Math.round(img.height * scale));
  const x0 = Math.floor((w - size) / 2);
  const y0 = Math.floor((h - size) / 2);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    // Source interval covered by this output pixel (area averaging when shrinking).
    const sy0 = (y + y0) / scale;
    const sy1 = (y + y0 + 1) / scale;
    for (let x = 0; x < size; x++) {
      const ox = flip ? size - 1 - x : x;
      const sx0 = (x + x0) / scale;
      const sx1 = (x + x0 + 1) / scale;
      const acc = [0, 0, 0];
      let wsum = 0;
      if (scale < 1) {
        for (let yy = Math.floor(sy0); yy < Math.min(img.height, Math.ceil(sy1)); yy++) {
          const wy = Math.min(yy + 1, sy1) - Math.max(yy, sy0);
          for (let xx = Math.floor(sx0); xx < Math.min(img.width, Math.ceil(sx1)); xx++) {
            const wgt = wy * (Math.min(xx + 1, sx1) - Math.max(xx, sx0));
            for (let c = 0; c < 3; c++) acc[c] += wgt * img.data[(yy * img.width + xx) * 3 + c];
            wsum += wgt;
          }
        }
      } else {
        const sy = Math.min(Math.max((sy0 + sy1) / 2 - 0.5, 0), img.height - 1);
        const sx = Math.min(Math.max((sx0 + sx1) / 2 - 0.5, 0), img.width - 1);
        const ya = Math.floor(sy);
        const xa = Math.floor(sx);
        const yb = Math.min(ya + 1, img.height - 1);
        const xb = Math.min(xa + 1, img.width - 1);
        const ly = sy - ya;
        const lx = sx - xa;
        for (let c = 0; c < 3; c++) {
          const v = (r: number, q: number) => img.data[(r * img.width + q) * 3 + c];
          acc[c] = (1 - ly) * ((1 - lx) * v(ya, xa) + lx * v(ya, xb)) + ly * ((1 - lx) * v(yb, xa) + lx * v(yb, xb));
        }
        wsum = 1;
      }
      for (let c = 0; c < 3; c++) out[offset + c * plane + y * size + ox] = acc[c] / wsum / 127.5 - 1;
    }
  }
}
