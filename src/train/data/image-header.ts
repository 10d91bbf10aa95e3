// The size an image file declares, read from its header without decoding it: the PNG IHDR chunk
// or the JPEG SOF frame header (and a JPEG's channel count). Checked against a pixel limit before
// decoding, as Pillow does (DecompressionBombError), so a small file declaring a huge image cannot
// take gigabytes.

/**
 * Where Pillow refuses an image (DecompressionBombError): twice its Image.MAX_IMAGE_PIXELS,
 * 1024 × 1024 × 1024 / 4 / 3 (above that once it only warns), so every image guided-diffusion's
 * loader reads is read here too: 178,956,970 pixels, about 0.5 GB as RGB.
 */
export const MAX_IMAGE_PIXELS = 2 * 89_478_485;

export interface ImageHeader {
  format: 'png' | 'jpeg';
  width: number;
  height: number;
  /** A JPEG's channels (components of its frame): 1 grey, 3 YCbCr or RGB, 4 CMYK or YCCK. */
  components?: number;
}

const u16 = (b: Uint8Array, at: number) => (b[at] << 8) | b[at + 1];
const u32 = (b: Uint8Array, at: number) => ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
// SOF0–SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
const isSof = (m: number) => m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
// Markers without a length field: TEM, RST0–7, SOI.
const standalone = (m: number) => m === 0x01 || (m >= 0xd0 && m <= 0xd8);

/** Format and declared size; throws when the header is not a PNG or JPEG one or is cut short. */
export function readImageHeader(bytes: Uint8Array): ImageHeader {
  if (PNG_SIGNATURE.every((v, i) => bytes[i] === v)) {
    // The IHDR chunk comes first: length (13), "IHDR", width, height (big-endian u32).
    if (bytes.length < 24 || String.fromCharCode(...bytes.subarray(12, 16)) !== 'IHDR') throw new Error('PNG without an IHDR chunk (truncated or corrupted)');
    return { format: 'png', width: u32(bytes, 16), height: u32(bytes, 20) };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    // Walk the marker segments up to the frame header: FF Cx, length, precision, height, width,
    // component count, then (id, sampling, table) per component.
    let at = 2;
    let frame: { width: number; height: number; components: number } | undefined;
    while (at + 4 <= bytes.length) {
      if (bytes[at] !== 0xff) {
        if (frame) break;
        throw new Error(`JPEG: no marker at byte ${at} (corrupted)`);
      }
      const m = bytes[at + 1];
      if (m === 0xff) {
        at++; // fill byte
        continue;
      }
      if (standalone(m)) {
        at += 2;
        continue;
      }
      if (m === 0xd9 || m === 0xda) break; // end of image or start of scan
      if (isSof(m)) {
        if (at + 9 > bytes.length) break;
        frame = { height: u16(bytes, at + 5), width: u16(bytes, at + 7), components: at + 10 <= bytes.length ? bytes[at + 9] : 0 };
        break;
      }
      at += 2 + u16(bytes, at + 2);
    }
    if (!frame) throw new Error('JPEG without a frame header (truncated or corrupted)');
    return { format: 'jpeg', width: frame.width, height: frame.height, components: frame.components };
  }
  throw new Error('neither PNG nor JPEG');
}

/** Throws when the declared size is empty or above `maxPixels`. */
export function checkImageSize(h: ImageHeader, maxPixels = MAX_IMAGE_PIXELS): void {
  if (h.width < 1 || h.height < 1) throw new Error(`${h.format.toUpperCase()} declares an empty image (${h.width} × ${h.height})`);
  const pixels = h.width * h.height;
  if (pixels > maxPixels) {
    throw new Error(
      `${h.format.toUpperCase()} declares ${h.width} × ${h.height} = ${pixels.toLocaleString('en')} pixels, more than the limit of ` +
        `${maxPixels.toLocaleString('en')} (maxPixels); not decoded (shrink the image, or raise maxPixels if it is genuine)`,
    );
  }
}
