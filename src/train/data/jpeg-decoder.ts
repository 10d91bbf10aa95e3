// JPEG decoding as PIL does it: libjpeg-turbo's decoder (mozjpeg's build of it, compiled to
// WebAssembly by @jsquash/jpeg) with libjpeg's defaults, the accurate integer IDCT and "fancy"
// (triangle-filter) chroma upsampling, so a 4:2:0 or 4:2:2 JPEG — most photographs — decodes to
// PIL's pixels bit for bit. jpeg-js, used before, repeats each chroma sample instead: up to 87/255
// off PIL at colour edges. libjpeg also chooses YCbCr or RGB itself, as PIL does through it.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import mozjpegDecoder from '@jsquash/jpeg/codec/dec/mozjpeg_dec.js';

const wasmPath = createRequire(import.meta.url).resolve('@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm');
const wasm = new WebAssembly.Module(readFileSync(wasmPath));
/** What libjpeg printed (warnings and errors) during the current decode. */
const messages: string[] = [];

interface JpegModule {
  decode(bytes: Uint8Array, preserveOrientation: boolean): ImageData | null;
}

/**
 * A new instance of the decoder, made synchronously: the WebAssembly instance is created inside
 * `instantiateWasm`, so Emscripten has attached `decode` to the module object when the factory
 * returns (its promise resolves to that same object).
 */
function freshDecoder(): JpegModule {
  const module: Partial<JpegModule> = {};
  void mozjpegDecoder(Object.assign(module, {
    noInitialRun: true,
    instantiateWasm: (imports: WebAssembly.Imports, done: (instance: WebAssembly.Instance) => void) => {
      const instance = new WebAssembly.Instance(wasm, imports);
      done(instance);
      return instance.exports;
    },
    print: (text: string) => messages.push(text),
    printErr: (text: string) => messages.push(text),
  })).catch(() => {}); // a start that failed leaves no `decode`: refused below
  if (typeof module.decode !== 'function') throw new Error('JPEG: the libjpeg decoder (WebAssembly) did not start');
  return module as JpegModule;
}

/**
 * Replaced after every failed decode: libjpeg's error_exit ends the WebAssembly program (exit(1))
 * without unwinding its stack or freeing its heap, and an instance used on after that ran out of
 * stack: past about 32 such failures the next valid JPEG hung the process, past about 95 every
 * later one was refused as corrupted.
 */
let decoder = freshDecoder();

/**
 * 8-bit RGB of a baseline or progressive JPEG of one or three channels, as PIL's
 * Image.open(f).convert('RGB') gives it (no EXIF rotation). A file that ends before its image
 * does is refused, as PIL refuses it ("image file is truncated"), where libjpeg would warn and
 * fill the rest grey; any other libjpeg error is refused with its message.
 */
export function decodeJpeg(bytes: Uint8Array): { width: number; height: number; data: Uint8Array } {
  messages.length = 0;
  let image: ImageData | null = null;
  try {
    image = decoder.decode(bytes, false);
  } catch (err) {
    decoder = freshDecoder();
    // libjpeg's error_exit is Emscripten's ExitStatus; anything else (a trap) is the decoder's own failure.
    if ((err as { name?: string }).name !== 'ExitStatus') throw new Error(`JPEG: the libjpeg decoder failed (${(err as Error).message ?? err})`);
  }
  const said = messages.join('; ');
  if (!image) throw new Error(`JPEG: ${said || 'libjpeg could not decode it'} (corrupted, or a kind of JPEG libjpeg does not read)`);
  if (messages.some((m) => m.startsWith('Premature end of JPEG file'))) {
    throw new Error('JPEG: the file ends before its image does (truncated); PIL refuses it too ("image file is truncated")');
  }
  const { width, height, data: rgba } = image;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    rgb[3 * i] = rgba[4 * i];
    rgb[3 * i + 1] = rgba[4 * i + 1];
    rgb[3 * i + 2] = rgba[4 * i + 2];
  }
  return { width, height, data: rgb };
}
