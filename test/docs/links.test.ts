/**
 * Every relative link and image in the repository's Markdown files (README.md, docs/**) must
 * resolve to a file inside the repository, and every anchor (`#...`) to a heading of its target,
 * with GitHub's heading slugs. Links with a scheme (https:, mailto:) are not checked.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** Folders that are not the repository's own documents: installed, built or generated. */
const SKIP_DIRS = new Set(['node_modules', 'dist', 'coverage', '.git', join('docs', 'api')]);

/** Markdown files under `dir`, relative to ROOT, sorted. */
function markdownFiles(dir = ROOT): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const rel = relative(ROOT, path);
    if (entry.isDirectory()) {
      if (!SKIP_DIRS.has(rel) && !entry.name.startsWith('.bm-')) found.push(...markdownFiles(path));
    } else if (entry.isFile() && entry.name.endsWith('.md')) {
      found.push(rel);
    }
  }
  return found.sort();
}

/** The lines of `text` outside fenced code blocks, with their line numbers (1-based). */
function proseLines(text: string): Array<{ line: number; text: string }> {
  const out: Array<{ line: number; text: string }> = [];
  let fence: string | undefined;
  text.split('\n').forEach((raw, i) => {
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(raw);
    if (m) {
      if (fence === undefined) fence = m[1]![0]!.repeat(m[1]!.length);
      else if (m[1]!.startsWith(fence)) fence = undefined;
      return;
    }
    if (fence === undefined) out.push({ line: i + 1, text: raw });
  });
  return out;
}

/** `text` with its code spans blanked out (a link inside backticks is not a link). */
function withoutCodeSpans(text: string): string {
  return text.replace(/(`+)(?:(?!\1)[\s\S])*?\1/g, (span) => ' '.repeat(span.length));
}

/**
 * GitHub's slug of a heading (github-slugger): the heading's text (markup removed) in lower case,
 * every character that is not a letter, digit, mark, connector ('_'), '-' or space dropped, and
 * each space turned into '-'. A repeated slug gets `-1`, `-2`... in order.
 */
export function slugOf(heading: string): string {
  const text = heading
    .replace(/!\[([^\]]*)\]\([^)]*\)/g, '$1') // images: their alt text
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1') // links: their text
    .replace(/<[^>]+>/g, '') // inline HTML tags
    .replace(/[`*_~]/g, (c) => (c === '_' ? '_' : '')); // code and emphasis markers
  return text
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, '')
    .replace(/ /g, '-');
}

/** Every anchor a Markdown file offers: its headings' slugs, and explicit `id`/`name` anchors. */
export function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const seen = new Map<string, number>();
  for (const { text } of proseLines(markdown)) {
    const h = /^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/.exec(text);
    if (h) {
      const base = slugOf(h[1]!);
      const n = seen.get(base) ?? 0;
      seen.set(base, n + 1);
      anchors.add(n === 0 ? base : `${base}-${n}`);
    }
    for (const a of text.matchAll(/<a\s[^>]*(?:id|name)="([^"]+)"/g)) anchors.add(a[1]!);
  }
  return anchors;
}

/** A link or image destination found in a Markdown file. */
export interface FoundLink {
  readonly line: number;
  readonly target: string;
}

/** Inline links and images (`[t](x)`, `![a](x)`), and reference definitions (`[r]: x`). */
export function linksOf(markdown: string): FoundLink[] {
  const links: FoundLink[] = [];
  for (const { line, text } of proseLines(markdown)) {
    const prose = withoutCodeSpans(text);
    const def = /^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)/.exec(prose);
    if (def) {
      links.push({ line, target: def[1]!.replace(/^<|>$/g, '') });
      continue;
    }
    for (const m of prose.matchAll(/!?\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/g)) {
      links.push({ line, target: m[1]!.replace(/^<|>$/g, '') });
    }
  }
  return links;
}

/** Why `link` in the file `from` (relative to ROOT) does not resolve, or undefined when it does. */
export function problemWith(from: string, target: string, root = ROOT): string | undefined {
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return undefined; // https:, mailto:...: not ours to check
  const hash = target.indexOf('#');
  const pathPart = decodeURI(hash < 0 ? target : target.slice(0, hash));
  const anchor = hash < 0 ? undefined : decodeURIComponent(target.slice(hash + 1));
  const file = pathPart === '' ? join(root, from) : pathPart.startsWith('/') ? join(root, pathPart) : resolve(root, dirname(from), pathPart);
  const inside = relative(root, file);
  if (inside === '..' || inside.startsWith(`..${sep}`) || isAbsolute(inside)) return `${target} points outside the repository`;
  if (!existsSync(file)) return `${target}: ${inside} does not exist`;
  if (anchor === undefined || anchor === '') return undefined;
  if (statSync(file).isDirectory()) return `${target}: an anchor into a folder`;
  if (extname(file) !== '.md') {
    // Line anchors of a source file: #L12 or #L12-L20, within the file.
    const lines = /^L(\d+)(?:-L(\d+))?$/.exec(anchor);
    if (!lines) return `${target}: #${anchor} is not a line anchor of ${inside}`;
    const count = readFileSync(file, 'utf8').split('\n').length;
    return Number(lines[2] ?? lines[1]) <= count ? undefined : `${target}: ${inside} has only ${count} lines`;
  }
  return anchorsOf(readFileSync(file, 'utf8')).has(anchor) ? undefined : `${target}: ${inside} has no heading #${anchor}`;
}

describe('Markdown links', () => {
  const files = markdownFiles();

  it('finds the documents', () => {
    expect(files).toContain('README.md');
    expect(files.some((f) => f.startsWith(`docs${sep}`))).toBe(true);
  });

  it.each(files)('%s: every relative link and image resolves inside the repository', (file) => {
    const problems = linksOf(readFileSync(join(ROOT, file), 'utf8'))
      .map(({ line, target }) => {
        const why = problemWith(file, target);
        return why && `${file}:${line}: ${why}`;
      })
      .filter((p): p is string => p !== undefined);
    expect(problems).toEqual([]);
  });
});

describe('the link checker', () => {
  it("slugs headings as GitHub does", () => {
    expect(slugOf('QMP daemon: `blockmirror daemon`')).toBe('qmp-daemon-blockmirror-daemon');
    expect(slugOf('Second wave, first pass (2026-12-01): the copy measures how to read and write')).toBe(
      'second-wave-first-pass-2026-12-01-the-copy-measures-how-to-read-and-write',
    );
    expect(slugOf('Where it differs from QEMU')).toBe('where-it-differs-from-qemu');
    expect(slugOf('a — b')).toBe('a--b');
    expect(slugOf('[Link](x.md) and *emphasis*')).toBe('link-and-emphasis');
    expect(slugOf('snake_case name')).toBe('snake_case-name');
  });

  it('numbers repeated headings', () => {
    expect([...anchorsOf('# Notes\n## Notes\n### Notes\n')]).toEqual(['notes', 'notes-1', 'notes-2']);
  });

  it('ignores headings and links inside code', () => {
    const md = '# Real\n```sh\n# not a heading [x](missing.md)\n```\nsee `[y](missing.md)` and [z](#real)\n';
    expect([...anchorsOf(md)]).toEqual(['real']);
    expect(linksOf(md)).toEqual([{ line: 5, target: '#real' }]);
  });

  it('finds images, titles and reference definitions', () => {
    const md = '![a](img/a.png "A") [b](<b c.md>) [c](c.md#x)\n[ref]: docs/r.md\n';
    expect(linksOf(md).map((l) => l.target)).toEqual(['img/a.png', 'b c.md', 'c.md#x', 'docs/r.md']);
  });

  it('refuses links outside the repository, missing files and missing headings', () => {
    expect(problemWith('README.md', '../shared/DESIGN.md')).toMatch(/outside the repository/);
    expect(problemWith('README.md', 'docs/no-such-file.md')).toMatch(/does not exist/);
    expect(problemWith('README.md', 'README.md#no-such-heading')).toMatch(/no heading/);
    expect(problemWith('README.md', 'package.json#L1')).toBeUndefined();
    expect(problemWith('README.md', 'package.json#L100000')).toMatch(/only/);
    expect(problemWith('README.md', 'https://example.org/x')).toBeUndefined();
  });
});
