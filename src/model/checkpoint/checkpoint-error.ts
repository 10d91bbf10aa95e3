// The one error type of the checkpoint readers: the file and what is wrong with it.

/** A missing, unreadable, malformed or truncated checkpoint. */
export class CheckpointError extends Error {
  constructor(file: string, detail: string) {
    super(`${file}: ${detail}`);
    this.name = 'CheckpointError';
  }
}
