import { CommanderError } from 'commander';
import { BlockmirrorError, ErrorCode } from '../errors.js';

/** Writes one NDJSON event to stdout. */
export function emitEvent(event: string, fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
}

/** A number for an NDJSON event, to one decimal; null where it is not finite (an unknown ETA). */
export function finiteOrNull(n: number): number | null {
  return Number.isFinite(n) ? Math.round(n * 10) / 10 : null;
}

/** The stable code of an error (`BM_ERR_...`); errors of unknown kind have none. */
export function errorCode(err: unknown): string | undefined {
  if (err instanceof BlockmirrorError) return err.code;
  if (err instanceof CommanderError) return ErrorCode.INVALID_OPTION;
  return undefined;
}

/** Reports a failure: a line on stderr, and an `error` event too with --json. */
export function reportError(err: unknown, json: boolean): void {
  const code = errorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  if (json) emitEvent('error', { code: code ?? null, message });
  // Commander prints its own usage errors.
  if (!(err instanceof CommanderError)) process.stderr.write(`blockmirror: ${message}${code ? ` [${code}]` : ''}\n`);
  if (code === undefined && err instanceof Error && err.stack && process.env.BLOCKMIRROR_DEBUG) {
    process.stderr.write(`${err.stack}\n`);
  }
}
