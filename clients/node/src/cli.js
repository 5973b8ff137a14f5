// gateway-client-node: the command line of the gateway, with the contract of the Python
// `gateway-client` (same commands, flags, JSON lines, error lines and exit codes). See MANUAL.
import { readFileSync, statSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { create, toJson } from "@bufbuild/protobuf";
import {
  GatewayClient, DEFAULT_TARGET, jobStateName, parseJobState, registry, duration, webhookEvent, uploadSeconds,
} from "./client.js";
import { GatewayError, codeName, statusDetails } from "./errors.js";
import { SHELLS, completionScript } from "./completion.js";
import {
  CancelResponseSchema, DeleteResponseSchema, FetchResponseSchema, GetResponseSchema, JobSchema, JobState,
  RetryResponseSchema,
  ListResponseSchema, SubmitResponseSchema, TranscriptionTask, UploadResponseSchema, WatchJobsResponseSchema,
  WatchResponseSchema,
} from "../gen/inferencegateway/gateway/v1/gateway_pb.js";

export const PROG = "gateway-client-node";
const DEFAULT_RPC_TIMEOUT = 30;
const MAX_FETCH_WAIT = 3600;

export const MANUAL = `${PROG}: the command line of the inference gateway (the Node.js twin of gateway-client).

Synopsis:

  ${PROG} [--target HOST:PORT] [--token-file PATH | --token TOKEN] [--rpc-timeout SECONDS]
          [--tls] [--ca-file PATH] [--cert-file PATH --key-file PATH] COMMAND ...

  ${PROG} submit --route NAME (--inputs JSON | --inputs-file FILE | --audio FILE)
          [--language CODE] [--task {transcribe,translate}] [--beam-size N]
          [--word-timestamps] [--vad-filter | --no-vad-filter] [--label KEY=VALUE]... [--request-id ID]
          [--webhook URL [--webhook-events EVENT[,EVENT]...]]
          [--queue-timeout SECONDS] [--run-timeout SECONDS] [--priority 1-5] [-o {json,table,id} | -q]
  ${PROG} get JOB_ID [-o {json,table,id} | -q]
  ${PROG} watch JOB_ID [--after-revision N] [--timeout SECONDS]
  ${PROG} fetch JOB_ID [--timeout SECONDS | --wait]
  ${PROG} cancel JOB_ID [-o {json,table,id} | -q]
  ${PROG} retry JOB_ID [-o {json,table,id} | -q]
  ${PROG} delete JOB_ID [--force]
  ${PROG} list [--state STATE]... [--route NAME] [--label KEY=VALUE]...
          [--page-size N] [--page-token TOKEN] [--pages N] [-o {json,table,id} | -q]
  ${PROG} watch-jobs [--state STATE]... [--route NAME] [--label KEY=VALUE]...
          [--resume-token TOKEN] [--timeout SECONDS] [--limit N]
  ${PROG} completion {bash,zsh}

Output:
  stdout carries only response messages of the API, one per line, in the canonical protobuf JSON
  mapping (lowerCamelCase names, enums by name, int64 as strings, RFC 3339 times, fields at their
  zero value printed too), compact: submit a SubmitResponse, get a GetResponse, watch one
  WatchResponse per message, fetch a FetchResponse, cancel a CancelResponse, retry a
  RetryResponse, delete a DeleteResponse ({}), list one ListResponse per page, watch-jobs one WatchJobsResponse per message.
  On a terminal, get and list print a table instead (as the Python CLI does); -o json, -o table and
  -o id (-q: the job ids alone, one per line) pick a format anywhere.
  stderr carries errors and notes. An RPC error prints "CODE REASON: <the server's message>", then
  the ErrorInfo metadata as one JSON object, keys sorted (when there is any), then
  "  FIELD: DESCRIPTION" per invalid field.

Exit codes:
  0    ok (watch, fetch: the job SUCCEEDED)
  1    an RPC failed (the error is on stderr)
  2    usage: bad arguments, an unreadable file, a token set twice
  3    the job FAILED (watch, fetch)
  4    the job was CANCELLED (watch, fetch)
  5    --timeout passed before the job ended; the job is still queued or running
       (watch, fetch; watch-jobs ends with 0 at its --timeout)
  130  interrupted (Ctrl-C); a submitted job keeps running on the server
  141  stdout was closed early (\`| head\`)

Credentials:
  The first found of --token TOKEN, --token-file PATH, $GATEWAY_TOKEN, $GATEWAY_TOKEN_FILE (setting
  both variables is a usage error). $GATEWAY_TARGET sets the default of --target (else ${DEFAULT_TARGET}).

TLS:
  --tls connects with TLS (the system's roots), or with --ca-file PATH (implies --tls);
  --cert-file PATH and --key-file PATH present a client certificate (mTLS; both, imply --tls).

Completion:
  completion bash|zsh prints a shell completion script of these commands and options (no connection is made):
  eval "$(${PROG} completion bash)" in ~/.bashrc, or "completion zsh" in ~/.zshrc.
`;

export const ExitCode = Object.freeze({
  OK: 0, RPC_ERROR: 1, USAGE: 2, JOB_FAILED: 3, JOB_CANCELLED: 4, TIMED_OUT: 5, INTERRUPTED: 130, STDOUT_CLOSED: 141,
});

class UsageError extends Error {}
class TimedOut extends Error {}

// -- arguments ----------------------------------------------------------------------------------

// The one table of commands and options: parseArgs reads it, and so does `completion` (src/completion.js), so the
// completion script never drifts from the parser. An option is { kind, short?, store?, choices?, complete? }:
// kind "value" takes one value, "flag" none, "multi" a value each time it is given; store: [DEST, VALUE] sets DEST
// rather than the option itself (argparse's store_const); choices: the values allowed (checked here, offered by
// completion); complete: what completion offers for a value it does not check ("files", or a list of words).
const V = "value";
const F = "flag";
const M = "multi";
const value = (more = {}) => ({ kind: V, ...more });
const flag = (more = {}) => ({ kind: F, ...more });
const multi = (more = {}) => ({ kind: M, ...more });
const FILE = { complete: "files" };

const FORMATS = ["json", "table", "id"];
const TASKS = { transcribe: TranscriptionTask.TRANSCRIBE, translate: TranscriptionTask.TRANSLATE };
const STATES = Object.keys(JobState).filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED").map((k) => k.toLowerCase());

const HELP = { help: flag({ short: "-h" }) };
const OUTPUT = { output: value({ short: "-o", choices: FORMATS }), quiet: flag({ short: "-q", store: ["output", "id"] }) };
const GLOBAL = {
  target: value(), token: value(), "token-file": value(FILE), "rpc-timeout": value(), tls: flag(),
  "ca-file": value(FILE), "cert-file": value(FILE), "key-file": value(FILE), ...HELP,
};
const FILTERS = { state: multi({ complete: STATES }), route: value(), label: multi() };
const COMMANDS = {
  submit: {
    options: {
      route: value(), inputs: value(), "inputs-file": value(FILE), audio: value(FILE), language: value(),
      "language-code": value(), task: value({ choices: Object.keys(TASKS) }), "beam-size": value(),
      "word-timestamps": flag(), "vad-filter": flag(), "no-vad-filter": flag(), label: multi(), "request-id": value(),
      webhook: value(), "webhook-events": value(), "queue-timeout": value(), "run-timeout": value(),
      priority: value({ complete: ["1", "2", "3", "4", "5"] }),
      ...OUTPUT, ...HELP,
    },
    positionals: [],
  },
  get: { options: { ...OUTPUT, ...HELP }, positionals: ["JOB_ID"] },
  watch: { options: { "after-revision": value(), timeout: value(), ...HELP }, positionals: ["JOB_ID"] },
  fetch: { options: { timeout: value(), wait: flag(), ...HELP }, positionals: ["JOB_ID"] },
  cancel: { options: { ...OUTPUT, ...HELP }, positionals: ["JOB_ID"] },
  retry: { options: { ...OUTPUT, ...HELP }, positionals: ["JOB_ID"] },
  delete: { options: { force: flag(), ...HELP }, positionals: ["JOB_ID"] },
  list: { options: { ...FILTERS, "page-size": value(), "page-token": value(), pages: value(), ...OUTPUT, ...HELP }, positionals: [] },
  "watch-jobs": { options: { ...FILTERS, "resume-token": value(), timeout: value(), limit: value(), ...HELP }, positionals: [] },
  // choices: the values each positional allows, by its name.
  completion: { options: { ...HELP }, positionals: ["SHELL"], choices: { SHELL: SHELLS } },
};

/** The table of commands and options (for completion and the tests): { global, commands }. */
export const COMMAND_TABLE = Object.freeze({ global: GLOBAL, commands: COMMANDS });

const has = (table, name) => Object.hasOwn(table, name);
const choose = (choices) => choices.map((c) => `'${c}'`).join(", ");

function lookup(table, name) {
  if (has(table, name)) return name;
  const matches = Object.keys(table).filter((k) => k.startsWith(name)); // argparse's unique prefixes
  if (matches.length === 1) return matches[0];
  if (matches.length > 1) throw new UsageError(`ambiguous option: --${name} could match ${matches.map((m) => `--${m}`).join(", ")}`);
  return null;
}

/** The short options of a table: { "-o": "output", ... }. */
function shortsOf(table) {
  return Object.fromEntries(Object.entries(table).filter(([, spec]) => spec.short).map(([name, spec]) => [spec.short, name]));
}

/** Parses argv into { global, command, options, positionals } (UsageError on bad arguments). */
export function parseArgs(argv) {
  const global = {};
  const options = {};
  const positionals = [];
  let command = null;
  let table = GLOBAL;
  let shorts = shortsOf(table);
  let target = global;
  let onlyPositionals = false;
  const shown = (name) => (table[name].short ? `${table[name].short}/--${name}` : `--${name}`); // as argparse names it
  const set = (name, text) => {
    const spec = table[name];
    if (spec.kind === F) {
      if (spec.store) target[spec.store[0]] = spec.store[1];
      else target[name] = true;
      return;
    }
    if (spec.choices && !spec.choices.includes(text)) {
      throw new UsageError(`argument ${shown(name)}: invalid choice: '${text}' (choose from ${choose(spec.choices)})`);
    }
    if (spec.kind === M) (target[name] ??= []).push(text);
    else target[name] = text;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!onlyPositionals && arg === "--") { onlyPositionals = true; continue; }
    if (!onlyPositionals && has(shorts, arg)) { // -h, -o VALUE, -q
      const name = shorts[arg];
      if (table[name].kind === F) set(name);
      else if (i + 1 < argv.length) set(name, argv[++i]);
      else throw new UsageError(`argument ${shown(name)}: expected one argument`);
      continue;
    }
    if (!onlyPositionals && arg.startsWith("--") && arg.length > 2) {
      const eq = arg.indexOf("=");
      const given = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const name = lookup(table, given);
      if (name === null) throw new UsageError(`unrecognized arguments: ${arg}`);
      if (table[name].kind === F) {
        if (eq >= 0) throw new UsageError(`argument ${shown(name)}: ignored explicit argument '${arg.slice(eq + 1)}'`);
        set(name);
      } else if (eq >= 0) set(name, arg.slice(eq + 1));
      else if (i + 1 < argv.length && !(argv[i + 1].startsWith("--") && argv[i + 1].length > 2)) set(name, argv[++i]);
      else throw new UsageError(`argument ${shown(name)}: expected one argument`);
      continue;
    }
    if (command === null) {
      if (!has(COMMANDS, arg)) {
        throw new UsageError(`argument COMMAND: invalid choice: '${arg}' (choose from ${choose(Object.keys(COMMANDS))})`);
      }
      command = arg;
      table = COMMANDS[arg].options;
      shorts = shortsOf(table);
      target = options;
      continue;
    }
    positionals.push(arg);
  }
  if (global.help || options.help) return { help: true, command };
  if (command === null) throw new UsageError("the following arguments are required: COMMAND");
  const wanted = COMMANDS[command].positionals;
  if (positionals.length < wanted.length) {
    throw new UsageError(`the following arguments are required: ${wanted.slice(positionals.length).join(", ")}`);
  }
  if (positionals.length > wanted.length) throw new UsageError(`unrecognized arguments: ${positionals.slice(wanted.length).join(" ")}`);
  wanted.forEach((name, i) => {
    const allowed = COMMANDS[command].choices?.[name];
    if (allowed && !allowed.includes(positionals[i])) {
      throw new UsageError(`argument ${name}: invalid choice: '${positionals[i]}' (choose from ${choose(allowed)})`);
    }
  });
  if (global.token !== undefined && global["token-file"] !== undefined) {
    throw new UsageError("argument --token: not allowed with argument --token-file");
  }
  return { global, command, options, positionals };
}

function seconds(name, text) {
  const value = Number(text);
  if (text === undefined || text.trim() === "" || Number.isNaN(value)) {
    throw new UsageError(`argument --${name}: not a number of seconds: '${text}'`);
  }
  if (!(value > 0 && value < Infinity)) throw new UsageError(`argument --${name}: must be a positive number of seconds: '${text}'`);
  return value;
}

function count(name, text) {
  if (!/^\s*[+-]?\d+\s*$/.test(text)) throw new UsageError(`argument --${name}: not a whole number: '${text}'`);
  const value = Number(text);
  if (value < 0) throw new UsageError(`argument --${name}: must not be negative: '${text}'`);
  return value;
}

function labels(list) {
  const out = {};
  for (const text of list ?? []) {
    const eq = text.indexOf("=");
    if (eq < 0) throw new UsageError(`argument --label: wants KEY=VALUE, got '${text}'`);
    out[text.slice(0, eq)] = text.slice(eq + 1);
  }
  return out;
}

function states(list) {
  return (list ?? []).map((text) => {
    try {
      return parseJobState(text);
    } catch (err) {
      throw new UsageError(`argument --state: ${err.message.replace(/"/g, "'")}`);
    }
  });
}

function fileSize(path) {
  try {
    return statSync(path).size;
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${err.message}`);
  }
}

function readInput(path) {
  try {
    return path === "-" ? readFileSync(0) : readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${path}: ${err.message}`);
  }
}

function readToken(path, source) {
  let token;
  try {
    token = readFileSync(path, "utf8").trim();
  } catch (err) {
    throw new UsageError(`cannot read the token file of ${source} (${path}): ${err.message}`);
  }
  if (!token) throw new UsageError(`the token file of ${source} (${path}) is empty`);
  return token;
}

/** --token, --token-file, $GATEWAY_TOKEN, $GATEWAY_TOKEN_FILE: the first one set. */
export function resolveToken(global, env) {
  if (global.token !== undefined) return global.token;
  if (global["token-file"] !== undefined) return readToken(global["token-file"], "--token-file");
  const value = env.GATEWAY_TOKEN;
  const path = env.GATEWAY_TOKEN_FILE;
  if (value && path) throw new UsageError("GATEWAY_TOKEN and GATEWAY_TOKEN_FILE are both set; unset one");
  if (value) return value;
  if (path) return readToken(path, "GATEWAY_TOKEN_FILE");
  return null;
}

function credentials(global) {
  const { tls, "ca-file": ca, "cert-file": cert, "key-file": key } = global;
  if ((cert === undefined) !== (key === undefined)) throw new UsageError("--cert-file and --key-file go together");
  if (!(tls || ca || cert)) return grpc.credentials.createInsecure();
  const read = (file) => {
    if (file === undefined) return null;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new UsageError(`cannot read ${file}: ${err.message}`);
    }
  };
  return grpc.credentials.createSsl(read(ca), read(key), read(cert));
}

// -- output -------------------------------------------------------------------------------------

class Output {
  constructor(stdout, stderr) {
    this.stdout = stdout;
    this.stderr = stderr;
  }

  emit(schema, message) {
    const json = toJson(schema, message, { alwaysEmitImplicit: true, registry });
    this.stdout.write(`${JSON.stringify(json)}\n`);
  }

  /** One response as -o asks: json (the JSON line), id (the job ids, one per line), table (for people). */
  show(schema, message, fmt, first = true) {
    const jobs = message.jobs ?? (message.job?.id ? [message.job] : []);
    if (fmt === "json") this.emit(schema, message);
    else if (fmt === "id") for (const job of jobs) this.stdout.write(`${job.id}\n`);
    else if (message.jobs) this.stdout.write(tableRows(jobs, first));
    else if (jobs.length) this.stdout.write(tableFields(jobs[0], message.existing));
    else this.emit(schema, message);
  }

  note(text) {
    this.stderr.write(`${PROG}: ${text}\n`);
  }

  error(err) {
    const head = errorHead(err.codeName, err.reason);
    let text = `${head}: ${err.details ?? err.message}\n`;
    if (err.metadata && Object.keys(err.metadata).length) {
      const sorted = Object.fromEntries(Object.keys(err.metadata).sort().map((k) => [k, err.metadata[k]]));
      text += `${JSON.stringify(sorted)}\n`;
    }
    for (const { field, description } of err.fieldViolations ?? []) text += `  ${field}: ${description}\n`;
    this.stderr.write(text);
  }
}

// -- the formats for people (the Python CLI's gateway_client/cli/table.py, line for line) ----------

function format(o, tableOnATerminal) { // (-o's choices are checked by parseArgs)
  if (o.output) return o.output;
  return tableOnATerminal && process.stdout.isTTY ? "table" : "json";
}

const shortState = (state) => jobStateName(state).replace(/^JOB_STATE_/, "");

function failureOf(job) {
  if (!job.error) return "";
  const details = statusDetails(job.error);
  return `${details.reason || codeName(job.error.code)}: ${job.error.message}`;
}

function ageOf(job, now) {
  if (!job.createTime) return "";
  const s = Math.max(0, Math.floor(now - Number(job.createTime.seconds) - job.createTime.nanos / 1e9));
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= size) return `${Math.floor(s / size)}${unit}`;
  return `${s}s`;
}

function clip(text, width) {
  const flat = text.split(/\s+/).filter(Boolean).join(" ");
  return flat.length <= width ? flat : `${flat.slice(0, width - 1)}…`;
}

function tableRows(jobs, header) {
  const now = Date.now() / 1000;
  const rows = jobs.map((j) => [j.id, j.route, shortState(j.state), `${Math.round(j.progress * 100)}%`, ageOf(j, now),
    clip(failureOf(j), 60)]);
  const head = ["ID", "ROUTE", "STATE", "PROGRESS", "AGE", "ERROR"];
  const widths = head.slice(0, -1).map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return (header ? [head, ...rows] : rows).map((r) => `${r.slice(0, -1).map((c, i) => c.padEnd(widths[i])).join("  ")}  ${r.at(-1)}`.trimEnd())
    .map((line) => `${line}\n`).join("");
}

function timeOf(ts) {
  if (!ts) return "";
  const d = new Date(Number(ts.seconds) * 1000 + ts.nanos / 1e6);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

function tableFields(job, existing) {
  let state = shortState(job.state);
  if (job.state === JobState.QUEUED && job.queuePosition) state += ` (position ${job.queuePosition})`;
  const fields = [
    ["id", job.id], ["route", job.route], ["state", state], ["error", failureOf(job)],
    ["progress", `${Math.round(job.progress * 100)}%`], ["revision", String(job.revision)], ["priority", String(job.priority)],
    ["attempt", job.attempt > 1 ? String(job.attempt) : ""],
    ["created", timeOf(job.createTime)], ["started", timeOf(job.startTime)], ["finished", timeOf(job.finishTime)],
    ["expires", timeOf(job.expireTime)], ["estimated start", timeOf(job.estimatedStartTime)],
    ["labels", Object.entries(job.labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${k}=${v}`).join(", ")],
    ["request id", job.requestId], ["retry of", job.retryOf], ["retried by", job.retriedBy],
    ["segments", job.segments?.length ? String(job.segments.length) : ""], ["existing", existing ? "yes" : ""],
  ].filter(([, value]) => value);
  const width = Math.max(...fields.map(([name]) => name.length)) + 1;
  return fields.map(([name, value]) => `${`${name}:`.padEnd(width)} ${value}\n`).join("");
}

/** A gRPC target the CLI can use (HOST:PORT, [IPV6]:PORT, or a gRPC URI): a host without a port is refused rather
 * than sent to port 443. */
function checkTarget(target) {
  if (/^(unix|unix-abstract|dns|ipv4|ipv6|vsock):/.test(target)) return target;
  const colon = target.lastIndexOf(":");
  const host = colon < 0 ? "" : target.slice(0, colon);
  const port = colon < 0 ? "" : target.slice(colon + 1);
  if (colon < 0 || !host || (host.includes(":") && !(host.startsWith("[") && host.endsWith("]")))) {
    throw new UsageError(`--target '${target}' has no port: give HOST:PORT (a gateway listens on port 50051 unless told otherwise), or unix:PATH`);
  }
  if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw new UsageError(`--target '${target}': the port must be a number from 1 to 65535`);
  }
  return target;
}

const CONNECT_FAILED = /failed to connect to all addresses|Connection refused|DNS resolution failed|Name or service not known|errors resolving|lookup error|No connection established/i;

function fmtSeconds(value) {
  return String(Number(value.toPrecision(6))); // Python's {:g}, for the usual values
}

function ending(out, job) {
  if (job.state === JobState.SUCCEEDED) return ExitCode.OK;
  const cancelled = job.state === JobState.CANCELLED
    || (job.state !== JobState.FAILED && job.error !== undefined && job.error.code === grpc.status.CANCELLED);
  if (job.state !== JobState.FAILED && !cancelled && job.error === undefined) return ExitCode.OK;
  const how = cancelled ? "was cancelled" : "failed";
  if (job.error !== undefined) {
    const d = statusDetails(job.error);
    const head = errorHead(codeName(d.code), d.reason);
    out.note(`job ${job.id} ${how}: ${head}: ${d.message}`);
  } else {
    out.note(`job ${job.id} ${how}`);
  }
  return cancelled ? ExitCode.JOB_CANCELLED : ExitCode.JOB_FAILED;
}

function timedOut(out, jobId, job, timeout) {
  const where = job ? `is still ${jobStateName(job.state)} at revision ${job.revision}` : "has not ended";
  out.note(`timed out after ${fmtSeconds(timeout)} s: job ${jobId} ${where}`);
  return ExitCode.TIMED_OUT;
}

/** An AbortSignal that aborts with TimedOut after `timeout` seconds (none without a timeout). */
function deadline(timeout) {
  if (timeout === undefined) return { signal: undefined, clear() {} };
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new TimedOut()), timeout * 1000);
  return { signal: controller.signal, clear: () => clearTimeout(timer) };
}

// -- the commands -------------------------------------------------------------------------------

async function submit(client, out, o) {
  const sources = ["inputs", "inputs-file", "audio"].filter((k) => o[k] !== undefined);
  if (o.route === undefined) throw new UsageError("the following arguments are required: --route");
  if (sources.length === 0) throw new UsageError("one of the arguments --inputs --inputs-file --audio is required");
  if (sources.length > 1) throw new UsageError(`argument --${sources[1]}: not allowed with argument --${sources[0]}`);
  if (o["vad-filter"] && o["no-vad-filter"]) throw new UsageError("argument --no-vad-filter: not allowed with argument --vad-filter");
  const language = o.language ?? o["language-code"];
  const vad = o["vad-filter"] ? true : o["no-vad-filter"] ? false : undefined;
  const beam = o["beam-size"] === undefined ? undefined : count("beam-size", o["beam-size"]);
  const request = { route: o.route, labels: labels(o.label), requestId: o["request-id"] ?? "" };
  if (o["webhook-events"] !== undefined && o.webhook === undefined) throw new UsageError("--webhook-events needs --webhook");
  if (o.webhook !== undefined) {
    const events = (o["webhook-events"] === undefined ? [] : o["webhook-events"].split(",")).map((name) => {
      try {
        return webhookEvent(name.trim());
      } catch (err) {
        throw new UsageError(`argument --webhook-events: ${err.message}`);
      }
    });
    request.webhook = { url: o.webhook, events };
  }
  for (const [flag, field] of [["queue-timeout", "queueTimeout"], ["run-timeout", "runTimeout"]]) {
    if (o[flag] !== undefined) request[field] = duration(seconds(flag, o[flag]));
  }
  if (o.priority !== undefined) {
    if (!/^[1-5]$/.test(o.priority)) throw new UsageError(`argument --priority: 1 (most urgent) to 5, not ${o.priority}`);
    request.priority = Number(o.priority);
  }
  if (o.audio === undefined) {
    if (o["word-timestamps"] || [language, o.task, beam, vad].some((v) => v !== undefined)) {
      throw new UsageError("--language, --task, --beam-size, --word-timestamps and --vad-filter apply to --audio only");
    }
    const origin = o["inputs-file"] ?? "--inputs";
    const text = o["inputs-file"] === undefined ? o.inputs : readInput(o["inputs-file"]).toString("utf8");
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new UsageError(`${origin} is not JSON: ${err.message}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new UsageError(`${origin} must hold a JSON object`);
    }
    request.input = { case: "inputs", value };
  } else {
    // A large file goes by Upload, read as it is sent (never whole in memory).
    const size = o.audio === "-" ? 0 : fileSize(o.audio);
    const large = size > client.uploadAbove;
    const transcription = {
      audio: large ? new Uint8Array(0) : readInput(o.audio), languageCode: language ?? "", beamSize: beam ?? 0,
      wordTimestamps: Boolean(o["word-timestamps"]), task: o.task ? TASKS[o.task] : TranscriptionTask.UNSPECIFIED,
    };
    if (vad !== undefined) transcription.vadFilter = vad;
    request.input = { case: "transcription", value: transcription };
    if (large) {
      out.emit(UploadResponseSchema, await client.call("Upload", { submit: request, audio: o.audio },
        { timeout: uploadSeconds(client.timeout, size) }));
      return ExitCode.OK;
    }
  }
  out.show(SubmitResponseSchema, await client.call("Submit", request), format(o, false));
  return ExitCode.OK;
}

async function get(client, out, o, [jobId]) {
  out.show(GetResponseSchema, await client.call("Get", { jobId }), format(o, true));
  return ExitCode.OK;
}

async function cancel(client, out, o, [jobId]) {
  out.show(CancelResponseSchema, await client.call("Cancel", { jobId }), format(o, false));
  return ExitCode.OK;
}

/** "CODE REASON", or the code alone when there is no reason or it only says the code again (CANCELLED). */
function errorHead(code, reason) {
  return reason && reason !== code ? `${code} ${reason}` : code;
}

async function retry(client, out, o, [jobId]) {
  out.show(RetryResponseSchema, await client.call("Retry", { jobId }), format(o, false));
  return ExitCode.OK;
}

async function del(client, out, o, [jobId]) {
  out.emit(DeleteResponseSchema, await client.call("Delete", { jobId, force: Boolean(o.force) }));
  return ExitCode.OK;
}

async function watch(client, out, o, [jobId]) {
  const afterRevision = o["after-revision"] === undefined ? 0 : count("after-revision", o["after-revision"]);
  const timeout = o.timeout === undefined ? undefined : seconds("timeout", o.timeout);
  const limit = deadline(timeout);
  let job = null;
  try {
    const responses = client.watchResponses(jobId, {
      afterRevision, resume: "after-first", signal: limit.signal,
      onResume: (err, last) => out.note(`the stream was cut (${err.message}); resuming after revision ${last}`),
    });
    for await (const response of responses) {
      out.emit(WatchResponseSchema, response);
      if (response.event.case === "update") job = response.event.value.job;
    }
  } catch (err) {
    if (err instanceof TimedOut) return timedOut(out, jobId, job, timeout);
    throw err;
  } finally {
    limit.clear();
  }
  if (job === null || !job.done) { // nothing after --after-revision: how did the job end?
    job = (await client.call("Get", { jobId })).job;
    if (!job.done) {
      out.note(`the Watch stream of job ${jobId} ended before the job did`);
      return ExitCode.RPC_ERROR;
    }
  }
  return ending(out, job);
}

async function fetch(client, out, o, [jobId]) {
  if (o.wait && o.timeout !== undefined) throw new UsageError("argument --wait: not allowed with argument --timeout");
  const wait = o.wait ? MAX_FETCH_WAIT : o.timeout === undefined ? 0 : seconds("timeout", o.timeout);
  const request = { jobId };
  if (wait) request.timeout = duration(wait);
  const response = await client.call("Fetch", request, { timeout: wait + client.timeout });
  out.emit(FetchResponseSchema, response);
  if (!response.job?.done) return timedOut(out, jobId, response.job ?? null, wait);
  return ending(out, response.job);
}

async function list(client, out, o) {
  const pages = o.pages === undefined ? 0 : count("pages", o.pages);
  const request = {
    pageSize: o["page-size"] === undefined ? 0 : count("page-size", o["page-size"]), pageToken: o["page-token"] ?? "",
    states: states(o.state), route: o.route ?? "", labels: labels(o.label),
  };
  const fmt = format(o, true);
  for (let n = 1; ; n++) {
    const response = await client.call("List", request);
    out.show(ListResponseSchema, response, fmt, n === 1);
    if (!response.nextPageToken || n === pages) return ExitCode.OK;
    request.pageToken = response.nextPageToken;
  }
}

async function watchJobs(client, out, o) {
  const timeout = o.timeout === undefined ? undefined : seconds("timeout", o.timeout);
  const max = o.limit === undefined ? 0 : count("limit", o.limit);
  const request = { states: states(o.state), route: o.route ?? "", labels: labels(o.label), resumeToken: o["resume-token"] ?? "" };
  const limit = deadline(timeout);
  let jobs = 0;
  try {
    for await (const response of client._stream("WatchJobs", request, { signal: limit.signal })) {
      out.emit(WatchJobsResponseSchema, response);
      if (response.event.case === "job") jobs += 1;
      if (max && jobs >= max) break;
    }
  } catch (err) {
    if (!(err instanceof TimedOut)) throw err; // the usual way to end this endless stream
  } finally {
    limit.clear();
  }
  return ExitCode.OK;
}

const RUN = { submit, get, watch, fetch, cancel, retry, delete: del, list, "watch-jobs": watchJobs };

/** Runs the command line; resolves with the exit code. */
export async function main(argv, { env = process.env, stdout = process.stdout, stderr = process.stderr } = {}) {
  const out = new Output(stdout, stderr);
  let client = null;
  let target = "";
  try {
    const args = parseArgs(argv);
    if (args.help) {
      stdout.write(MANUAL);
      return ExitCode.OK;
    }
    if (args.command === "completion") {
      stdout.write(completionScript(COMMAND_TABLE, PROG, args.positionals[0]));
      return ExitCode.OK;
    }
    const { global } = args;
    const rpcTimeout = global["rpc-timeout"] === undefined ? DEFAULT_RPC_TIMEOUT : seconds("rpc-timeout", global["rpc-timeout"]);
    const token = resolveToken(global, env);
    target = checkTarget(global.target ?? (env.GATEWAY_TARGET || DEFAULT_TARGET));
    client = new GatewayClient(target, {
      token, credentials: credentials(global), timeout: rpcTimeout, retry: { maxAttempts: 1 },
    });
    return await RUN[args.command](client, out, args.options, args.positionals);
  } catch (err) {
    if (err instanceof UsageError) {
      stderr.write(`usage: ${PROG} [options] COMMAND ... (${PROG} --help)\n${PROG}: error: ${err.message}\n`);
      return ExitCode.USAGE;
    }
    if (err instanceof GatewayError) {
      if (err.code === grpc.status.UNAVAILABLE && CONNECT_FAILED.test(err.details ?? err.message ?? "")) {
        const text = (err.details ?? err.message ?? "").toLowerCase();
        const why = text.includes("refused") ? "connection refused"
          : text.includes("resolv") || text.includes("lookup") ? "its name does not resolve" : "no connection";
        stderr.write(`UNAVAILABLE: cannot connect to ${target} (${why}): is a gateway running there? Start one with `
          + "`gateway serve` (`make run` in a checkout), or point --target or $GATEWAY_TARGET at one.\n");
        return ExitCode.RPC_ERROR;
      }
      out.error(err);
      return ExitCode.RPC_ERROR;
    }
    throw err;
  } finally {
    client?.close();
  }
}

export { create, JobSchema };
