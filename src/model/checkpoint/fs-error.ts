// File-system failures in words, for errors that name the path (the errno code kept for searching).

const REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'a component of the path is not a directory',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only file system',
  ELOOP: 'too many symbolic links',
  EMFILE: 'too many open files',
  EIO: 'input/output error',
};

/** "no space left on the device (ENOSPC)" for a Node errno error; its message otherwise. */
export function describeFsError(e: unknown): string {
  const err = e as { code?: string; message?: string } | undefined;
  return err?.code && REASONS[err.code] ? `${REASONS[err.code]} (${err.code})` : String(err?.message ?? e);
}
