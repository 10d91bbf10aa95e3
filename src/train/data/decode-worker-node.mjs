// Node entry of the decode worker: worker threads do not inherit tsx's loader, so register it here
// before loading the TypeScript worker body. (Deno runs decode-worker.ts directly.)
import { register } from 'tsx/esm/api';

register();
await import('./decode-worker.ts');
