#!/usr/bin/env node
// A minimal OpenFANG control client, written from protocol/PROTOCOL.md alone (sections 1-3).
//
//   node client.mjs --endpoint ipc:///path/control.sock ping|status|tree
//   node client.mjs --endpoint ENDPOINT --body '{"agent_id": "a-1"}' agent.info
//   node client.mjs --endpoint tcp://host:port --keys-dir DIR --name alice status   (CURVE, section 1.4)
//   node client.mjs --endpoint ENDPOINT raw HEX        (send HEX as the payload frame: for testing servers)
//   node client.mjs --endpoint ENDPOINT --stream --body '{"agent_id": "a-1", "text": "hi"}' agent.send
//                                                      (section 4b: each agent.send.chunk as a JSON line first)
//
// Prints the reply body as JSON on stdout. Exit status: 0 on a `.ok` reply, 2 on an `error` reply (its body
// {code, message} is printed too), 3 when no reply came in time, 1 on bad usage.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decode, encode } from "@msgpack/msgpack";
import { Dealer } from "zeromq";

const USAGE =
  "usage: node client.mjs --endpoint ENDPOINT [--timeout MS] [--body JSON] " +
  "[--keys-dir DIR --name NAME] [--stream] (ping | status | tree | TYPE | raw HEX)";

function parseArgs(argv) {
  const opts = { timeout: 10000, body: {}, name: "client", positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === "--endpoint") opts.endpoint = value();
    else if (arg === "--timeout") opts.timeout = Number(value());
    else if (arg === "--body") opts.body = JSON.parse(value());
    else if (arg === "--keys-dir") opts.keysDir = value();
    else if (arg === "--name") opts.name = value();
    else if (arg === "--stream") opts.stream = true;
    else if (arg === "--help" || arg === "-h") throw new Error(USAGE);
    else if (arg.startsWith("--")) throw new Error(`unknown option ${arg}`);
    else opts.positional.push(arg);
  }
  if (!opts.endpoint) throw new Error("--endpoint is required");
  if (opts.positional.length === 0) throw new Error("a command is required");
  if (!Number.isFinite(opts.timeout) || opts.timeout <= 0) throw new Error("--timeout must be > 0 ms");
  if (typeof opts.body !== "object" || opts.body === null || Array.isArray(opts.body)) {
    throw new Error("--body must be a JSON object");
  }
  return opts;
}

// Section 1.4: key files are ZeroMQ certificates; the keys are `public-key = "<z85>"` lines.
function readKey(path, which) {
  const match = readFileSync(path, "utf8").match(new RegExp(`^\\s*${which}\\s*=\\s*"([^"]{40})"`, "m"));
  if (!match) throw new Error(`${path}: no ${which}`);
  return match[1];
}

function curveOptions(keysDir, name) {
  if (!keysDir) return {};
  const secretFile = join(keysDir, "clients", `${name}.key_secret`);
  return {
    curveServerKey: readKey(join(keysDir, "server.key"), "public-key"),
    curvePublicKey: readKey(secretFile, "public-key"),
    curveSecretKey: readKey(secretFile, "secret-key"),
  };
}

// Section 3, step 3: wait for the reply with our id (or an `error` with id "" for an unreadable request).
// Section 4b: parts of a streamed reply (type agent.send.chunk, our id) go to onChunk and restart the wait.
async function awaitReply(socket, id, deadline, onChunk = null, timeout = 0) {
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return null;
    socket.receiveTimeout = left;
    let frames;
    try {
      frames = await socket.receive();
    } catch (err) {
      if (err.code === "EAGAIN") return null;
      throw err;
    }
    let reply;
    try {
      reply = decode(frames[frames.length - 1]);
    } catch {
      continue; // not ours (not even msgpack): nothing to match it with
    }
    if (reply === null || typeof reply !== "object") continue;
    if (onChunk !== null && reply.type === "agent.send.chunk" && reply.id === id) {
      onChunk(reply.body);
      deadline = Date.now() + timeout;
      continue;
    }
    if (id === null || reply.id === id || (reply.type === "error" && reply.id === "")) return reply;
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\n${err.message === USAGE ? "" : `${USAGE}\n`}`);
    return 1;
  }
  const [command, ...rest] = opts.positional;
  const socket = new Dealer({ linger: 0, ...curveOptions(opts.keysDir, opts.name) });
  socket.connect(opts.endpoint);
  try {
    let id = null;
    let payload;
    if (command === "raw") {
      if (rest.length !== 1 || !/^([0-9a-fA-F]{2})*$/.test(rest[0])) throw new Error("raw needs one hex string");
      payload = Buffer.from(rest[0], "hex");
    } else {
      id = randomBytes(16).toString("hex");
      const body = opts.stream ? { ...opts.body, stream: true } : opts.body;
      payload = encode({ v: 1, id, type: command, body });
    }
    const deadline = Date.now() + opts.timeout;
    socket.sendTimeout = opts.timeout;
    await socket.send(payload);
    const onChunk = opts.stream ? (part) => process.stdout.write(`${JSON.stringify({ chunk: part })}\n`) : null;
    const reply = await awaitReply(socket, id, deadline, onChunk, opts.timeout);
    if (reply === null) {
      process.stderr.write(`no reply to ${command} from ${opts.endpoint} within ${opts.timeout} ms\n`);
      return 3;
    }
    process.stdout.write(`${JSON.stringify(reply.body ?? {}, null, 2)}\n`);
    if (reply.type === "error") {
      process.stderr.write(`error ${reply.body?.code}: ${reply.body?.message}\n`);
      return 2;
    }
    return 0;
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    return 3;
  } finally {
    socket.close();
  }
}

process.exitCode = await main();
