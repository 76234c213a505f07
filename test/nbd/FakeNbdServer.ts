/**
 * A scripted NBD server for fuzzing our client: it parses what the client sends (client flags,
 * options, requests) just enough to answer each message validly, then lets a list of mutations
 * spoil chosen answers (flipped bits, truncation, random bytes, crafted option replies and reply
 * chunks with lying fields). It keeps the export's data, so an unspoiled run can be checked for
 * correctness too. A client that goes quiet while the server waits (because a lying length made
 * it wait for bytes that never come) is hung up on after `idleMs`.
 */
import { createServer, type Server, type Socket } from 'node:net';
import {
  BASE_ALLOCATION,
  NBD_CLISERV_MAGIC,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  readUInt64,
  u16,
  u32,
  writeUInt64,
} from '../../src/io/nbd/protocol.js';

/** A crafted structured (or simple) reply chunk; every field may lie. */
export interface ChunkSpec {
  readonly magic: 'structured' | 'simple' | number;
  readonly flags: number;
  readonly type: number;
  /** `echo`: the request's own cookie; `next`: one not in flight; `high`: upper 32 bits set. */
  readonly cookie: 'echo' | 'next' | 'high' | number;
  /** `exact`: the payload's length; a number: that, whatever the payload. */
  readonly length: 'exact' | number;
  readonly payload: Uint8Array;
}

/** A crafted option reply; every field may lie. */
export interface OptionReplySpec {
  readonly magic: 'valid' | bigint;
  readonly option: 'echo' | number;
  readonly type: number;
  readonly length: 'exact' | number;
  readonly data: Uint8Array;
}

/** How one answer is spoiled. */
export type Spoil =
  | { readonly kind: 'flip'; readonly positions: readonly number[] }
  | { readonly kind: 'truncate'; readonly keep: number }
  | { readonly kind: 'random'; readonly bytes: Uint8Array; readonly thenClose: boolean }
  | { readonly kind: 'chunk'; readonly chunk: ChunkSpec; readonly alsoValid: boolean }
  | { readonly kind: 'optionReply'; readonly reply: OptionReplySpec; readonly alsoValid: boolean }
  | { readonly kind: 'greeting'; readonly second: bigint; readonly flags: number }
  /** A complete NBD_OPT_GO (or EXPORT_NAME) answer, with the export's size, flags and block sizes lying. */
  | { readonly kind: 'export'; readonly size: bigint; readonly flags: number; readonly sizes: readonly [number, number, number] | undefined }
  | { readonly kind: 'close' };

/** A spoiled answer: to the `at`-th message of the connection (0 is connecting: the greeting). */
export interface Mutation {
  readonly at: number;
  readonly spoil: Spoil;
}

/** What a connection of the script serves. */
export interface Script {
  readonly size: number;
  readonly minBlock: number;
  readonly maxBlock: number;
  readonly multiConn: boolean;
  /** Context id of `base:allocation`. */
  readonly contextId: number;
  /** READ answered as a data chunk and a hole chunk, rather than one data chunk. */
  readonly splitReads: boolean;
  readonly mutations: readonly Mutation[];
}

type ClientMessage =
  | { readonly kind: 'flags'; readonly flags: number }
  | { readonly kind: 'option'; readonly option: number; readonly data: Buffer }
  | { readonly kind: 'request'; readonly flags: number; readonly command: number; readonly cookie: Buffer; readonly offset: number; readonly length: number; readonly payload: Buffer | undefined };

/** The fake server: one listening socket, the current script applied to each connection. */
export class FakeNbdServer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #idleMs: number;
  #script: Script | undefined;
  /** The export's bytes, shared by the connections of one script. */
  data = Buffer.alloc(0);

  constructor(idleMs = 40) {
    this.#idleMs = idleMs;
    this.#server = createServer((socket) => this.#serve(socket));
  }

  listen(path: string): Promise<void> {
    return new Promise((resolve) => this.#server.listen(path, resolve));
  }

  /** Sets what the next connections get, with fresh export data (a byte pattern). */
  use(script: Script): void {
    this.#script = script;
    this.data = Buffer.alloc(script.size);
    for (let i = 0; i < this.data.length; i++) this.data[i] = (i * 13 + 5) & 0xff;
  }

  /** Connections still open. */
  get connections(): number {
    return this.#sockets.size;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #serve(socket: Socket): void {
    const script = this.#script!;
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    let pending = Buffer.alloc(0);
    let index = 0;
    let phase: 'flags' | 'messages' = 'flags';
    let structured = false;
    let noZeroes = false;
    let idle: NodeJS.Timeout | undefined;
    const quietly = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => socket.destroy(), this.#idleMs);
    };
    /** Sends the answer to message `index`, spoiled if the script says so; false once the connection is closed. */
    const answer = (valid: Buffer, close: boolean, message: ClientMessage | undefined): boolean => {
      const spoil = script.mutations.find((m) => m.at === index)?.spoil;
      index++;
      const out = spoil ? spoiled(valid, spoil, message) : { bytes: valid, close };
      if (out.bytes.length > 0 && !socket.destroyed) socket.write(out.bytes);
      if (out.close || close) {
        socket.end();
        setTimeout(() => socket.destroy(), 50).unref();
        return false;
      }
      quietly();
      return true;
    };
    const validGreeting = Buffer.alloc(18);
    validGreeting.writeBigUInt64BE(NBD_MAGIC, 0);
    validGreeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    validGreeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    if (!answer(validGreeting, false, undefined)) return;

    const respond = (m: ClientMessage): { bytes: Buffer; close: boolean } => {
      if (m.kind === 'flags') {
        noZeroes = (m.flags & NBD_FLAG_C_NO_ZEROES) !== 0;
        return { bytes: Buffer.alloc(0), close: false };
      }
      if (m.kind === 'option') return this.#optionAnswer(script, m, noZeroes, () => (structured = true));
      return this.#requestAnswer(script, m, structured);
    };

    socket.on('data', (chunk: Buffer) => {
      clearTimeout(idle);
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        let m: ClientMessage | undefined;
        if (phase === 'flags') {
          if (pending.length < 4) break;
          m = { kind: 'flags', flags: pending.readUInt32BE(0) };
          pending = pending.subarray(4);
          phase = 'messages';
        } else {
          if (pending.length < 4) break;
          if (pending.readUInt32BE(0) === NBD_REQUEST_MAGIC) {
            if (pending.length < 28) break;
            const command = pending.readUInt16BE(6);
            const length = pending.readUInt32BE(24);
            const total = 28 + (command === NBD_CMD_WRITE ? length : 0);
            if (pending.length < total) break;
            m = {
              kind: 'request',
              flags: pending.readUInt16BE(4),
              command,
              cookie: Buffer.from(pending.subarray(8, 16)),
              offset: readUInt64(pending, 16),
              length,
              payload: command === NBD_CMD_WRITE ? Buffer.from(pending.subarray(28, total)) : undefined,
            };
            pending = pending.subarray(total);
          } else if (pending.length >= 8 && pending.readBigUInt64BE(0) === NBD_OPTS_MAGIC) {
            if (pending.length < 16) break;
            const length = pending.readUInt32BE(12);
            if (pending.length < 16 + length) break;
            m = { kind: 'option', option: pending.readUInt32BE(8), data: Buffer.from(pending.subarray(16, 16 + length)) };
            pending = pending.subarray(16 + length);
          } else if (pending.length >= 8) {
            socket.destroy(); // the client sent something no NBD client sends: it is broken, not us
            return;
          } else {
            break;
          }
        }
        const { bytes, close } = respond(m);
        if (!answer(bytes, close, m)) return;
      }
      quietly();
    });
  }

  #optionAnswer(script: Script, m: { option: number; data: Buffer }, noZeroes: boolean, structured: () => void): { bytes: Buffer; close: boolean } {
    const reply = (type: number, data: Buffer = Buffer.alloc(0)): Buffer => optionReply(m.option, type, data);
    switch (m.option) {
      case NBD_OPT_STRUCTURED_REPLY:
        structured();
        return { bytes: reply(NBD_REP_ACK), close: false };
      case NBD_OPT_SET_META_CONTEXT:
        return {
          bytes: Buffer.concat([reply(NBD_REP_META_CONTEXT, Buffer.concat([u32(script.contextId), Buffer.from(BASE_ALLOCATION)])), reply(NBD_REP_ACK)]),
          close: false,
        };
      case NBD_OPT_GO:
      case NBD_OPT_INFO: {
        const info = Buffer.alloc(12);
        info.writeUInt16BE(NBD_INFO_EXPORT, 0);
        writeUInt64(info, script.size, 2);
        info.writeUInt16BE(transmissionFlags(script), 10);
        const sizes = Buffer.concat([u16(NBD_INFO_BLOCK_SIZE), u32(script.minBlock), u32(Math.max(4096, script.minBlock)), u32(script.maxBlock)]);
        return { bytes: Buffer.concat([reply(NBD_REP_INFO, info), reply(NBD_REP_INFO, sizes), reply(NBD_REP_ACK)]), close: false };
      }
      case NBD_OPT_EXPORT_NAME: {
        const out = Buffer.alloc(10 + (noZeroes ? 0 : 124));
        writeUInt64(out, script.size, 0);
        out.writeUInt16BE(transmissionFlags(script), 8);
        return { bytes: out, close: false };
      }
      case NBD_OPT_LIST:
        return {
          bytes: Buffer.concat([reply(NBD_REP_SERVER, Buffer.concat([u32(4), Buffer.from('disk'), Buffer.from('a fake disk')])), reply(NBD_REP_ACK)]),
          close: false,
        };
      case NBD_OPT_ABORT:
        return { bytes: reply(NBD_REP_ACK), close: true };
      default:
        return { bytes: reply(NBD_REP_ERR_UNSUP), close: false };
    }
  }

  #requestAnswer(script: Script, r: Extract<ClientMessage, { kind: 'request' }>, structured: boolean): { bytes: Buffer; close: boolean } {
    if (r.command === NBD_CMD_DISC) return { bytes: Buffer.alloc(0), close: true };
    const inRange = r.offset + r.length <= this.data.length;
    if (r.command === NBD_CMD_READ && inRange) {
      const data = this.data.subarray(r.offset, r.offset + r.length);
      if (!structured) return { bytes: Buffer.concat([simpleReply(r.cookie, 0), data]), close: false };
      if (script.splitReads && r.length >= 2 && data.subarray(r.length >> 1).every((b) => b === 0)) {
        const half = r.length >> 1;
        const hole = Buffer.alloc(12);
        writeUInt64(hole, r.offset + half, 0);
        hole.writeUInt32BE(r.length - half, 8);
        return {
          bytes: Buffer.concat([
            chunk(r.cookie, 0, NBD_REPLY_TYPE_OFFSET_HOLE, hole),
            chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, Buffer.concat([offsetBytes(r.offset), data.subarray(0, half)])),
          ]),
          close: false,
        };
      }
      return { bytes: chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, Buffer.concat([offsetBytes(r.offset), data])), close: false };
    }
    if (r.command === NBD_CMD_BLOCK_STATUS && structured && inRange && r.length > 0) {
      const first = Math.max(script.minBlock, r.length >> 1) - (Math.max(script.minBlock, r.length >> 1) % script.minBlock);
      const extents = first > 0 && first < r.length ? [u32(first), u32(0), u32(r.length - first), u32(NBD_STATE_HOLE | NBD_STATE_ZERO)] : [u32(r.length), u32(0)];
      return { bytes: chunk(r.cookie, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, Buffer.concat([u32(script.contextId), ...extents])), close: false };
    }
    if (!inRange) return { bytes: simpleReply(r.cookie, 22), close: false };
    if (r.command === NBD_CMD_WRITE) r.payload!.copy(this.data, r.offset);
    if (r.command === NBD_CMD_WRITE_ZEROES) this.data.fill(0, r.offset, r.offset + r.length);
    return { bytes: simpleReply(r.cookie, 0), close: false };
  }
}

function transmissionFlags(script: Script): number {
  return (
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | (script.multiConn ? NBD_FLAG_CAN_MULTI_CONN : 0)
  );
}

function optionReply(option: number, type: number, data: Uint8Array, magic: bigint = NBD_REP_MAGIC, length = data.length): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(magic, 0);
  h.writeUInt32BE(option >>> 0, 8);
  h.writeUInt32BE(type >>> 0, 12);
  h.writeUInt32BE(length >>> 0, 16);
  return Buffer.concat([h, data]);
}

function simpleReply(cookie: Buffer, error: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(error, 4);
  cookie.copy(h, 8);
  return h;
}

function chunk(cookie: Buffer, flags: number, type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  cookie.copy(h, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

function offsetBytes(offset: number): Buffer {
  const b = Buffer.alloc(8);
  writeUInt64(b, offset, 0);
  return b;
}

/** The bytes actually sent for a spoiled answer, and whether to hang up after them. */
function spoiled(valid: Buffer, spoil: Spoil, message: ClientMessage | undefined): { bytes: Buffer; close: boolean } {
  switch (spoil.kind) {
    case 'flip': {
      const out = Buffer.from(valid);
      if (out.length > 0) for (const p of spoil.positions) out[p % out.length]! ^= 1 << (p % 8);
      return { bytes: out, close: false };
    }
    case 'truncate':
      return { bytes: valid.subarray(0, spoil.keep % (valid.length + 1)), close: true };
    case 'random':
      return { bytes: Buffer.from(spoil.bytes), close: spoil.thenClose };
    case 'close':
      return { bytes: valid, close: true };
    case 'greeting': {
      if (message !== undefined) return { bytes: valid, close: false };
      const g = Buffer.alloc(18);
      g.writeBigUInt64BE(NBD_MAGIC, 0);
      g.writeBigUInt64BE(spoil.second === 0n ? NBD_CLISERV_MAGIC : spoil.second, 8);
      g.writeUInt16BE(spoil.flags, 16);
      return { bytes: g, close: false };
    }
    case 'export': {
      if (message?.kind !== 'option') return { bytes: valid, close: false };
      if (message.option === NBD_OPT_EXPORT_NAME) {
        const out = Buffer.from(valid);
        out.writeBigUInt64BE(spoil.size, 0);
        out.writeUInt16BE(spoil.flags, 8);
        return { bytes: out, close: false };
      }
      if (message.option !== NBD_OPT_GO && message.option !== NBD_OPT_INFO) return { bytes: valid, close: false };
      const info = Buffer.alloc(12);
      info.writeUInt16BE(NBD_INFO_EXPORT, 0);
      info.writeBigUInt64BE(spoil.size, 2);
      info.writeUInt16BE(spoil.flags, 10);
      const parts = [optionReply(message.option, NBD_REP_INFO, info)];
      if (spoil.sizes) parts.push(optionReply(message.option, NBD_REP_INFO, Buffer.concat([u16(NBD_INFO_BLOCK_SIZE), ...spoil.sizes.map(u32)])));
      parts.push(optionReply(message.option, NBD_REP_ACK, Buffer.alloc(0)));
      return { bytes: Buffer.concat(parts), close: false };
    }
    case 'optionReply': {
      const r = spoil.reply;
      const option = r.option === 'echo' ? (message?.kind === 'option' ? message.option : 0) : r.option;
      const crafted = optionReply(option, r.type, r.data, r.magic === 'valid' ? NBD_REP_MAGIC : r.magic, r.length === 'exact' ? r.data.length : r.length);
      return { bytes: spoil.alsoValid ? Buffer.concat([crafted, valid]) : crafted, close: false };
    }
    case 'chunk': {
      const c = spoil.chunk;
      const own = message?.kind === 'request' ? message.cookie : Buffer.alloc(8);
      const cookie = Buffer.alloc(8);
      if (c.cookie === 'echo') own.copy(cookie);
      else if (c.cookie === 'next') cookie.writeUInt32BE((own.readUInt32BE(4) + 1) >>> 0, 4);
      else if (c.cookie === 'high') {
        own.copy(cookie);
        cookie.writeUInt32BE(1, 0);
      } else cookie.writeUInt32BE(c.cookie >>> 0, 4);
      const length = c.length === 'exact' ? c.payload.length : c.length;
      let header: Buffer;
      if (c.magic === 'simple') {
        header = Buffer.alloc(16);
        header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
        header.writeUInt32BE(((c.flags << 16) | c.type) >>> 0, 4);
        cookie.copy(header, 8);
      } else {
        header = Buffer.alloc(20);
        header.writeUInt32BE(c.magic === 'structured' ? NBD_STRUCTURED_REPLY_MAGIC : c.magic >>> 0, 0);
        header.writeUInt16BE(c.flags & 0xffff, 4);
        header.writeUInt16BE(c.type & 0xffff, 6);
        cookie.copy(header, 8);
        header.writeUInt32BE(length >>> 0, 16);
      }
      const crafted = Buffer.concat([header, c.payload]);
      return { bytes: spoil.alsoValid ? Buffer.concat([crafted, valid]) : crafted, close: false };
    }
  }
}
