// Whether a process that claimed something by its pid (a cache lock, a temp file named after it) is
// still the one running under that pid. A pid alone does not say: a restarted container (or a new
// PID namespace, as Kubernetes Indexed Jobs and Slurm requeues give) reuses pids, often the very pid
// of the process that died, and a process judged alive by its pid would hold the claim forever. So a
// claim is live when its pid runs a process that started before the claim was made. No static Node
// import: this module is reachable from the library's browser entry.

/** Slack for the clocks compared: Linux gives a process's start in 1/100 s after a boot time in whole seconds. */
const SLACK_MS = 2000;

export type ClaimState = 'live' | 'gone' | 'unknown';

/**
 * 'live' when the process with `pid` exists and started before `claimedAtMs` (ms since the epoch);
 * 'gone' when it does not exist or started after the claim (its pid was reused); 'unknown' where
 * the runtime cannot tell (Deno without --allow-run refuses process.kill with no error code).
 */
export async function claimState(pid: number, claimedAtMs: number): Promise<ClaimState> {
  if (pid === globalThis.process?.pid) return claimedAtMs >= performance.timeOrigin - SLACK_MS ? 'live' : 'gone';
  try {
    globalThis.process.kill(pid, 0);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ESRCH') return 'gone';
    // EPERM: it exists and belongs to someone else; anything else says nothing.
    if (code !== 'EPERM') return 'unknown';
  }
  const started = await processStartMs(pid);
  return started !== undefined && claimedAtMs < started - SLACK_MS ? 'gone' : 'live';
}

/** When process `pid` started (ms since the epoch), from Linux's /proc; undefined elsewhere. */
async function processStartMs(pid: number): Promise<number | undefined> {
  try {
    const { readFile } = await import('node:fs/promises');
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime, in clock ticks since boot) counts from the fields after "(comm)", which may hold spaces.
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    const boot = /^btime (\d+)$/m.exec(await readFile('/proc/stat', 'utf8'));
    // USER_HZ is 100 on every Linux architecture Node runs on.
    return boot && Number.isFinite(ticks) ? Number(boot[1]) * 1000 + ticks * 10 : undefined;
  } catch {
    return undefined;
  }
}
