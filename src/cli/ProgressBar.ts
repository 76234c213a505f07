import cliProgress from 'cli-progress';
import { formatBytes, formatDuration } from '../util/size.js';

/** Redraws at most this often (the brief asks for no more than 10 a second). */
const MAX_FPS = 10;

/** Values shown by the bar. */
export interface BarValues {
  readonly done: number;
  readonly total: number;
  /** Bytes per second. */
  readonly rate: number;
  readonly etaSeconds: number;
  /** Extra text after the numbers (a mirror's phase and dirty bytes). */
  readonly note?: string;
}

/** A progress bar on stderr, for terminals only. */
export class ProgressBar {
  readonly #bar: cliProgress.SingleBar;
  #started = false;

  constructor() {
    this.#bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        fps: MAX_FPS,
        hideCursor: true,
        clearOnComplete: false,
        barsize: 30,
        format: '{bar} {percentage}% | {doneText} of {totalText} | {rateText} | ETA {etaText}{note}',
      },
      cliProgress.Presets.shades_classic,
    );
  }

  /** True when stderr is a terminal, the only place a bar belongs. */
  static wanted(): boolean {
    return process.stderr.isTTY === true;
  }

  /** A bar if the command's options and stderr want one (not with --json or --no-progress). */
  static forOptions(opts: { readonly json: boolean; readonly progress: boolean }): ProgressBar | undefined {
    return opts.progress && !opts.json && ProgressBar.wanted() ? new ProgressBar() : undefined;
  }

  /** Writes a line of text on stderr above the bar (the bar is redrawn below it on its next update). */
  message(line: string): void {
    process.stderr.write(this.#started ? `\r\x1b[K${line}\n` : `${line}\n`);
  }

  update(v: BarValues): void {
    const payload = {
      doneText: formatBytes(v.done),
      totalText: formatBytes(v.total),
      rateText: `${formatBytes(v.rate)}/s`,
      etaText: formatDuration(v.etaSeconds),
      note: v.note ? ` | ${v.note}` : '',
    };
    const total = Math.max(1, v.total);
    if (!this.#started) {
      this.#bar.start(total, Math.min(v.done, total), payload);
      this.#started = true;
    } else {
      this.#bar.setTotal(total);
      this.#bar.update(Math.min(v.done, total), payload);
    }
  }

  stop(): void {
    if (this.#started) this.#bar.stop();
    this.#started = false;
  }
}
