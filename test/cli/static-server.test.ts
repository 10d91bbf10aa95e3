// The example page's server: a port in use is named with what to do (it was Node's bare
// "listen EADDRINUSE: address already in use 127.0.0.1:8000").
import t from 'tap';
import { startStaticServer } from '../../src/cli/static-server.ts';

t.test('a port in use is refused, naming it and the ways out', async (t) => {
  const first = await startStaticServer({ pages: { '/a.html': 'a' } });
  const port = Number(new URL(first.url).port);
  await t.rejects(startStaticServer({ pages: {}, port }), { message: `port ${port} on 127.0.0.1 is in use: give another --port, or --port 0 for a free one` });
  const res = await fetch(`${first.url}/a.html`);
  t.equal(await res.text(), 'a', 'the first server serves on');
  await first.close();
});
