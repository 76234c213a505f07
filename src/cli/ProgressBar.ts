import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';
import { formatBytes, formatDuration } from '../util/size.js';

/** cli-progress, loaded when a bar is first drawn: a copy without one (`--json`, no terminal) starts 20 ms sooner. */
let cliProgress: typeof cliProgressModule | undefined;
function loadCliProgress(): typeof cliProgressModule {
  return (cliProgress ??= createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule);
}

/** Redraws at most this often (the brief asks for no more than 10 a second). */
const MAX_FPS = 10;
/** Width of the bar graphic when there is room... */
const BAR_MAX_COLUMNS = 30;
/** ...and the narrowest it gets before fields less important than it are dropped. */
const BAR_MIN_COLUMNS = 10;
/** Columns assumed when the stream does not say (not a terminal, or one that does not report it). */
const DEFAULT_COLUMNS = 80;
const SEPARATOR = ' | ';
/** shades_classic, as the bar always drew. */
const BAR_DONE = '\u2588';
const BAR_LEFT = '\u2591';

/**
 * How important a field of the bar is: lower is more important. A line too long for the terminal
 * drops fields from the highest number down.
 */
export const FieldPriority = {
  /** The percentage done: the last field to go. */
  PERCENTAGE: 0,
  /** A mirror's phase (running, ready...): what the job is doing matters as much as how far it is. */
  PHASE: 1,
  /** Bytes done of bytes in all. */
  AMOUNT: 3,
  ETA: 4,
  /** Bytes a mirror still has to copy again. */
  DIRTY: 5,
  /** The copy rate. */
  RATE: 6,
  /** How fast a mirror's source is being written to. */
  DIRTY_RATE: 7,
  /** Free text ({@link BarValues.note}): dropped first. */
  NOTE: 8,
} as const;

/**
 * Where the bar graphic ranks among the fields: after the percentage and the phase, before the
 * numbers. Fields of this priority or lower are kept before the graphic.
 */
export const BAR_GRAPHIC_PRIORITY = 2;

/** One field of the bar's line. */
export interface BarField {
  /** The text shown, in one-column characters (`ETA 4m05s`, `dirty 12.3 MiB`). */
  readonly text: string;
  /** See {@link FieldPriority}: lower numbers are kept longer. */
  readonly priority: number;
}

/** Values shown by the bar. */
export interface BarValues {
  readonly done: number;
  readonly total: number;
  /** Bytes per second. */
  readonly rate: number;
  readonly etaSeconds: number;
  /** More fields after the numbers, in the order shown (a mirror's phase, dirty bytes and dirty rate). */
  readonly fields?: readonly BarField[];
  /** Free text after every other field, dropped before any of them. */
  readonly note?: string;
}

/** The stream a bar draws on: stderr, or a stand-in for it in tests. */
export type BarStream = NodeJS.WritableStream & { readonly columns?: number; readonly isTTY?: boolean };

/** Options of the {@link ProgressBar} constructor. */
export interface ProgressBarOptions {
  /** Where to draw (default `process.stderr`); its `columns` give the width at each redraw. */
  readonly stream?: BarStream;
}

/** Terminal columns a text takes: one per code point (every field is plain text, the graphic's blocks are one column wide). */
function columnsOf(text: string): number {
  return [...text].length;
}

/** The bar graphic, `columns` wide, `fraction` of it filled. */
function barGraphic(columns: number, fraction: number): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  const done = Math.round(f * columns);
  return BAR_DONE.repeat(done) + BAR_LEFT.repeat(columns - done);
}

/**
 * Lays out one line of the bar for a terminal `width` columns wide: the bar graphic, then the
 * fields (in the order given) joined by ` | `. The line never exceeds `width` columns. Fields
 * are admitted from the most important down, and the first that does not fit ends it, so a
 * less important field never shows while a more important one is missing. The graphic shrinks
 * to {@link BAR_MIN_COLUMNS} before any field is dropped, and ranks at
 * {@link BAR_GRAPHIC_PRIORITY}: below that the graphic goes, and the line is text only.
 * Pure: the same width and values give the same line.
 */
export function layoutBarLine(width: number, fraction: number, fields: readonly BarField[]): string {
  const room = Number.isFinite(width) ? Math.max(0, Math.floor(width)) : 0;
  // Importance order, ties in display order; the graphic after the fields it ranks below.
  const ranked = fields.map((field, index) => ({ field, index })).sort((a, b) => a.field.priority - b.field.priority || a.index - b.index);
  const graphicAt = ranked.findIndex((r) => r.field.priority > BAR_GRAPHIC_PRIORITY);
  const order: Array<(typeof ranked)[number] | 'graphic'> = [...ranked];
  order.splice(graphicAt < 0 ? order.length : graphicAt, 0, 'graphic');

  const kept = new Set<number>();
  let textColumns = 0;
  let graphic = false;
  const lineColumns = (text: number, withGraphic: boolean): number => (withGraphic ? BAR_MIN_COLUMNS + (text > 0 ? 1 + text : 0) : text);
  for (const candidate of order) {
    if (candidate === 'graphic') {
      if (lineColumns(textColumns, true) > room) break;
      graphic = true;
      continue;
    }
    const added = columnsOf(candidate.field.text) + (kept.size > 0 ? SEPARATOR.length : 0);
    if (lineColumns(textColumns + added, graphic) > room) break;
    kept.add(candidate.index);
    textColumns += added;
  }

  const text = fields
    .filter((_, i) => kept.has(i))
    .map((f) => f.text)
    .join(SEPARATOR);
  if (!graphic) return text;
  const barColumns = Math.min(BAR_MAX_COLUMNS, room - (text === '' ? 0 : textColumns + 1));
  return text === '' ? barGraphic(barColumns, fraction) : `${barGraphic(barColumns, fraction)} ${text}`;
}

/** The fields every bar shows, in display order: percentage, amount, rate, ETA; then the caller's. */
export function barFields(v: BarValues, fraction: number): BarField[] {
  const fields: BarField[] = [
    { text: `${Math.floor(fraction * 100)}%`, priority: FieldPriority.PERCENTAGE },
    { text: `${formatBytes(v.done)} of ${formatBytes(v.total)}`, priority: FieldPriority.AMOUNT },
    { text: `${formatBytes(v.rate)}/s`, priority: FieldPriority.RATE },
    { text: `ETA ${formatDuration(v.etaSeconds)}`, priority: FieldPriority.ETA },
    ...(v.fields ?? []),
  ];
  if (v.note) fields.push({ text: v.note, priority: FieldPriority.NOTE });
  return fields;
}

/**
 * A progress bar on stderr, for terminals only. Each redraw lays the line out for the terminal's
 * width at that moment ({@link layoutBarLine}), so a resized terminal gets a line that fits.
 */
export class ProgressBar {
  readonly #bar: cliProgressModule.SingleBar;
  readonly #stream: BarStream;
  #started = false;
  #fraction = 0;
  #fields: readonly BarField[] = [];
  /** Redraws at once for the new width instead of at the next tick. */
  readonly #onResize = (): void => {
    if (this.#started) this.#bar.render();
  };

  constructor(options: ProgressBarOptions = {}) {
    this.#stream = options.stream ?? process.stderr;
    const cliProgress = loadCliProgress();
    this.#bar = new cliProgress.SingleBar(
      {
        stream: this.#stream,
        fps: MAX_FPS,
        hideCursor: true,
        clearOnComplete: false,
        // The line is laid out here, not from a template: cli-progress would cut it at the margin.
        format: () => layoutBarLine(this.width(), this.#fraction, this.#fields),
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

  /** The width lines are laid out for: the terminal's columns now, or {@link DEFAULT_COLUMNS} when it does not say. */
  width(): number {
    const columns = this.#stream.columns;
    return typeof columns === 'number' && columns > 0 ? columns : DEFAULT_COLUMNS;
  }

  /** Writes a line of text on stderr above the bar (the bar is redrawn below it on its next update). */
  message(line: string): void {
    this.#stream.write(this.#started ? `\r\x1b[K${line}\n` : `${line}\n`);
  }

  update(v: BarValues): void {
    const total = Math.max(1, v.total);
    const done = Math.min(v.done, total);
    this.#fraction = done / total;
    this.#fields = barFields(v, this.#fraction);
    if (!this.#started) {
      this.#bar.start(total, done);
      this.#started = true;
      this.#stream.on('resize', this.#onResize);
    } else {
      this.#bar.setTotal(total);
      this.#bar.update(done);
    }
  }

  stop(): void {
    if (this.#started) {
      this.#stream.removeListener('resize', this.#onResize);
      this.#bar.stop();
    }
    this.#started = false;
  }
}
