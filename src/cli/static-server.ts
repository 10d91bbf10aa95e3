// A static file server on 127.0.0.1 (a secure context, so pages get navigator.gpu) for the
// browser runs: the built library under /dist/, its browser dependencies under /vendor/ (mapped
// by the import map of `importMapScript`), pages and files the caller adds by path.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { extname, join, normalize } from 'node:path';

const TYPES: Record<string, string> = {
  '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html; charset=utf-8', '.css': 'text/css',
  '.json': 'application/json', '.png': 'image/png', '.map': 'application/json', '.safetensors': 'application/octet-stream',
};

/** Bare imports of the library's browser modules, and where the server serves them. */
const VENDOR: Record<string, string> = { 'wgsl-preprocessor/wgsl-preprocessor.js': 'wgsl-preprocessor/wgsl-preprocessor.js' };

export function importMapScript(): string {
  const imports = Object.fromEntries(Object.keys(VENDOR).map((spec) => [spec, `/vendor/${spec}`]));
  return `<script type="importmap">${JSON.stringify({ imports })}</script>`;
}

export interface StaticServer {
  url: string;
  close(): Promise<void>;
}

/**
 * Serves `dirs` (URL prefix → directory), `files` (URL path → file) and `pages` (URL path → HTML
 * text, or a body with its content type). Anything else, or a path that escapes its directory, is a 404.
 */
export async function startStaticServer(o: { dirs?: Record<string, string>; files?: Record<string, string>; pages?: Record<string, string | { type: string; body: string }>; port?: number }): Promise<StaticServer> {
  const require = createRequire(import.meta.url);
  const vendor = Object.fromEntries(Object.entries(VENDOR).map(([spec, mod]) => [`/vendor/${spec}`, require.resolve(mod)]));
  const files = { ...vendor, ...o.files };
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (path === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return;
    }
    const page = o.pages?.[path];
    if (page !== undefined) {
      const { type, body } = typeof page === 'string' ? { type: TYPES['.html'], body: page } : page;
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    let file = files[path];
    for (const [prefix, dir] of Object.entries(o.dirs ?? {})) {
      if (file || !path.startsWith(prefix)) continue;
      const rel = normalize(path.slice(prefix.length));
      if (!rel.startsWith('..')) file = join(dir, rel);
    }
    const info = file ? await stat(file).catch(() => null) : null;
    if (!file || !info?.isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`not found: ${path}`);
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'content-length': info.size, 'cache-control': 'no-store' });
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((resolve, reject) => server.once('error', (err: NodeJS.ErrnoException) => {
    reject(err.code === 'EADDRINUSE' ? new Error(`port ${o.port} on 127.0.0.1 is in use: give another --port, or --port 0 for a free one`) : err);
  }).listen(o.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((r) => server.close(() => r())) };
}
