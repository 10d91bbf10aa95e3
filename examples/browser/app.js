// The example page: pick images, choose t and b, run the U-Net on this browser's WebGPU, and show
// the noised input, the feature channels of block b, GPU time per block and linear CKA between
// blocks. Plain JavaScript over the built library (dist/); `npm run example` serves it.
import { ckaMatrix, createEngine, gaussianNoise, greyImagesToModelInput, linearSchedule, noiseSeed, openSafetensors, paperBlocks, preprocessImage, qSample, UNet, withPrefix } from '/dist/src/index.js';
import { memorySource } from '/dist/src/model/checkpoint/byte-source.js';

const $ = (id) => document.getElementById(id);
const auto = new URLSearchParams(location.search).has('auto');
// `ids`: each image's number for its noise (a sample's test-set index, a file's place in the list).
const state = { engine: null, unet: null, images: [], names: [], ids: [], busy: false, compiled: false };

/** Lets the browser paint (progress, results) between steps of the work. */
const nextFrame = () => new Promise((resolve) => setTimeout(resolve, 0));

function status(fraction, message) {
  $('progress').value = fraction;
  $('message').textContent = message;
}

function fail(e) {
  console.error(`difrep example: ${e?.message ?? e}`);
  status(0, `error: ${e?.message ?? e}`);
  if (auto) globalThis.difrepExit = 1;
}

async function fetchBytes(url, onFraction) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  const total = Number(res.headers.get('content-length')) || 0;
  const reader = res.body.getReader();
  const chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.byteLength;
    if (total) onFraction(got / total);
  }
  const bytes = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) (bytes.set(c, at), at += c.byteLength);
  return bytes;
}

async function loadModel() {
  const config = await (await fetch('/model/config.json')).json();
  const bytes = await fetchBytes('/model/weights.safetensors', (f) => status(0.5 * f, `downloading weights ${Math.round(100 * f)}%`));
  const source = await openSafetensors(memorySource(bytes, config.name)); // errors name the file
  const prefixed = source.keys().some((k) => k.startsWith('param.'));
  state.engine = await createEngine();
  state.unet = await UNet.load(state.engine, config.flags, prefixed ? withPrefix(source, 'param.') : source, (i, n) => status(0.5 + 0.5 * (i / n), `loading tensors ${i}/${n}`));
  const plan = state.unet.plan;
  const info = state.engine.handle.info;
  $('model').textContent = `${config.name}: ${plan.blocks.length} blocks, ${plan.flags.image_size}×${plan.flags.image_size} input · adapter ${[info.vendor, info.architecture, info.description].filter(Boolean).join(' / ')}`;
  const feature = paperBlocks(plan).feature;
  for (const b of plan.blocks) {
    const opt = new Option(`${b.b}: ${b.module} (${b.outChannels} × ${b.size}²)`, String(b.b));
    opt.selected = b.b === feature;
    $('b').append(opt);
  }
  status(1, 'model ready: choose images');
}

/** A decoded image's RGBA pixels as the file stores them (no colour conversion, no premultiplied alpha). */
async function rgbaOf(source) {
  const bitmap = await createImageBitmap(source, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = document.createElement('canvas');
  [canvas.width, canvas.height] = [bitmap.width, bitmap.height];
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return { width: bitmap.width, height: bitmap.height, rgba: ctx.getImageData(0, 0, bitmap.width, bitmap.height).data };
}

/** Draws a [H, W] plane (or the mean of 3 planes) into a new canvas, scaled to [lo, hi]. */
function planeCanvas(data, W, H, zoom, lo, hi) {
  const canvas = document.createElement('canvas');
  canvas.width = W;
  canvas.height = H;
  canvas.style.width = `${W * zoom}px`;
  canvas.style.height = `${H * zoom}px`;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(W, H);
  for (let p = 0; p < W * H; p++) {
    const v = Math.max(0, Math.min(255, Math.round((255 * (data[p] - lo)) / (hi - lo || 1))));
    img.data.set([v, v, v, 255], 4 * p);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function showImages(target, images, S) {
  $(target).replaceChildren(...images.map((im) => {
    const grey = new Float32Array(S * S);
    for (let p = 0; p < S * S; p++) grey[p] = (im[p] + im[S * S + p] + im[2 * S * S + p]) / 3;
    return planeCanvas(grey, S, S, 48 / S, -1, 1);
  }));
}

function setImages(images, names, ids) {
  state.images = images;
  state.names = names;
  state.ids = ids;
  showImages('inputs', images, state.unet.plan.flags.image_size);
  $('run').disabled = images.length === 0;
  status(1, `${images.length} image(s) ready`);
}

async function useSamples() {
  const S = state.unet.plan.flags.image_size;
  const meta = await (await fetch('/examples/samples.json')).json();
  // The strip's grey 28×28 images, resized as the CLI resizes Fashion-MNIST (toModelInput: bilinear,
  // in float): the samples' model input is the CLI's for those test images.
  const strip = await rgbaOf(await (await fetch('/examples/samples.png')).blob());
  const n = meta.size;
  const count = meta.images.length;
  const pixels = new Uint8Array(count * n * n);
  for (let k = 0; k < count; k++) {
    for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) pixels[(k * n + y) * n + x] = strip.rgba[4 * (y * strip.width + k * n + x)];
  }
  const all = greyImagesToModelInput({ pixels, labels: new Uint8Array(count), count, rows: n, cols: n }, meta.images.map((_, k) => k), S);
  const per = 3 * S * S;
  setImages(meta.images.map((_, k) => all.slice(k * per, (k + 1) * per)), meta.images.map((m) => m.label), meta.images.map((m) => m.index));
}

async function useFiles(files) {
  const S = state.unet.plan.flags.image_size;
  const images = [];
  const names = [];
  const transparent = [];
  for (const f of files) {
    if (!f.type.startsWith('image/')) continue;
    // Its own pixels, then the CLI's preprocessing (shorter side to S, centre crop), not a stretch to S × S.
    const { width, height, rgba } = await rgbaOf(f);
    const rgb = new Uint8Array(width * height * 3);
    let opaque = true;
    for (let p = 0; p < width * height; p++) {
      rgb.set(rgba.subarray(4 * p, 4 * p + 3), 3 * p);
      opaque &&= rgba[4 * p + 3] === 255;
    }
    if (!opaque) transparent.push(f.name);
    const out = new Float32Array(3 * S * S);
    preprocessImage({ width, height, data: rgb }, S, false, out, 0);
    images.push(out);
    names.push(f.name);
  }
  if (!images.length) throw new Error('none of the dropped files is an image');
  setImages(images, names, images.map((_, i) => i));
  // A 2D canvas keeps no colour under fully transparent pixels; the CLI's decoder (as Pillow's
  // convert('RGB')) keeps the stored colour: such an image's input differs from the CLI's.
  if (transparent.length) status(1, `${images.length} image(s) ready; ${transparent.join(', ')} ha${transparent.length > 1 ? 've' : 's'} transparent pixels, whose colour this browser does not keep (the CLI's decoder does): their input differs from the CLI's`);
}

function showTimings(times, blocks) {
  const perBlock = new Map(blocks.map((b) => [`block ${b}`, 0]));
  for (const k of times) if (perBlock.has(k.tag)) perBlock.set(k.tag, perBlock.get(k.tag) + k.ms);
  const max = Math.max(...perBlock.values(), 1e-9);
  $('timings').replaceChildren(...[...perBlock].map(([tag, ms]) => {
    const row = document.createElement('tr');
    row.innerHTML = `<th>${tag}</th><td>${ms.toFixed(2)} ms</td><td class="bar"><span style="width:${Math.round((120 * ms) / max)}px"></span></td>`;
    return row;
  }));
}

function showCka(matrix, blocks) {
  const canvas = $('cka');
  const ctx = canvas.getContext('2d');
  const n = blocks.length;
  const cell = Math.floor((canvas.width - 24) / n);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = '9px sans-serif';
  const every = Math.ceil(n / 13); // labels that fit
  for (let i = 0; i < n; i++) {
    ctx.fillStyle = '#333';
    if (i % every === 0) {
      ctx.fillText(String(blocks[i]), 0, 14 + i * cell + cell * 0.8);
      ctx.fillText(String(blocks[i]), 24 + i * cell, 10);
    }
    for (let j = 0; j < n; j++) {
      const v = Math.max(0, Math.min(1, matrix[i][j]));
      ctx.fillStyle = `hsl(${240 - 180 * v}, 75%, ${20 + 40 * v}%)`;
      ctx.fillRect(24 + j * cell, 14 + i * cell, cell - 1, cell - 1);
    }
  }
  $('ckaNote').textContent = `${n} blocks × ${n}, over ${state.images.length} images; dark blue 0, yellow 1`;
}

async function extract() {
  if (state.busy) return;
  state.busy = true;
  $('run').disabled = true;
  try {
    const { engine, unet } = state;
    const S = unet.plan.flags.image_size;
    const N = state.images.length;
    const t = Number($('t').value);
    const b = Number($('b').value);
    const ts = new Array(N).fill(t);
    const blocks = unet.plan.blocks.map((blk) => blk.b);
    const pixels = new Float32Array(N * 3 * S * S);
    state.images.forEach((im, i) => pixels.set(im, i * im.length));
    // A headless run (difrep example --screenshot) reports what the U-Net was given, to check against the CLI's.
    if (auto) console.log(`inputs: ${N} images, Σx0 ${pixels.reduce((a, v) => a + v, 0).toFixed(6)}, Σx0² ${pixels.reduce((a, v) => a + v * v, 0).toFixed(6)}`);
    const x0 = engine.tensor(pixels, [N, 3, S, S], 'x0');
    // Each image's own noise (seed 0, its number, t), whatever the other images. (The CLI's extraction
    // also mixes the dataset's name into the seed, so its noise, and features, differ from these.)
    const eps = new Float32Array(N * 3 * S * S);
    state.ids.forEach((id, i) => eps.set(gaussianNoise(3 * S * S, noiseSeed(0, id, t)), i * 3 * S * S));
    const noise = engine.tensor(eps, x0.shape, 'noise');
    const xt = qSample(engine, linearSchedule(1000), x0, ts, noise);
    x0.dispose();
    noise.dispose();
    showImages('noised', splitImages(await xt.read(), N), S);

    // The feature itself: the U-Net up to block b, timed end to end.
    status(0.1, `extracting block ${b} at t = ${t} …`);
    await nextFrame();
    const start = performance.now();
    const feature = unet.forward(xt, ts, { taps: [b] }).taps.get(b);
    const values = await feature.read();
    const msPerImage = (performance.now() - start) / N;
    // The first run also compiles every kernel it meets (on SwiftShader ~10× a later run's time).
    const timing = `${msPerImage.toFixed(1)} ms per image${state.compiled ? '' : ' (first run: compiling the kernels included; run again for the steady time)'}`;
    state.compiled = true;
    const [, C, H, W] = feature.shape;
    $('channels').replaceChildren(...Array.from({ length: Math.min(C, 48) }, (_, c) => {
      const plane = values.subarray(c * H * W, (c + 1) * H * W);
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of plane) (lo = Math.min(lo, v), hi = Math.max(hi, v));
      return planeCanvas(plane, W, H, Math.max(1, Math.floor(48 / W)), lo, hi);
    }));
    feature.dispose();
    console.log(`extraction: ${timing} (${N} images, block ${b}, t = ${t})`);

    // Every block, once more under the GPU profiler: time per block, and CKA between blocks.
    status(0.4, 'all blocks: timing and CKA …');
    await nextFrame();
    const profiling = engine.hasFeature('timestamp-query');
    if (profiling) engine.startProfiling();
    const all = unet.forward(xt, ts, { taps: blocks });
    const sets = [];
    for (const [i, blk] of blocks.entries()) {
      const tap = all.taps.get(blk);
      sets.push({ n: N, d: tap.size / N, data: await tap.read() });
      tap.dispose();
      status(0.4 + (0.4 * (i + 1)) / blocks.length, `read block ${blk}`);
      await nextFrame();
    }
    xt.dispose();
    if (profiling) showTimings(await engine.stopProfiling(), blocks);
    else $('timings').textContent = 'this adapter has no timestamp-query feature';
    if (N >= 3) showCka(await ckaMatrix(engine, sets), blocks);
    else $('ckaNote').textContent = 'CKA needs at least 3 images (with 2, any two blocks score 1)';
    status(1, `block ${b}: ${C} × ${H} × ${W} per image, ${timing}`);
    if (auto) globalThis.difrepExit = 0;
  } catch (e) {
    fail(e);
  } finally {
    state.busy = false;
    $('run').disabled = state.images.length === 0;
  }
}

function splitImages(data, N) {
  const per = data.length / N;
  return Array.from({ length: N }, (_, i) => data.subarray(i * per, (i + 1) * per));
}

$('t').addEventListener('input', () => ($('tval').textContent = $('t').value));
$('run').addEventListener('click', () => extract());
$('samples').addEventListener('click', () => useSamples().catch(fail));
$('files').addEventListener('change', (ev) => useFiles(ev.target.files).catch(fail));
const drop = $('drop');
drop.addEventListener('dragover', (ev) => (ev.preventDefault(), drop.classList.add('over')));
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (ev) => {
  ev.preventDefault();
  drop.classList.remove('over');
  useFiles(ev.dataTransfer.files).catch(fail);
});

try {
  await loadModel();
  if (auto) {
    await useSamples();
    await extract();
  }
} catch (e) {
  fail(e);
}
