// A Node.js client of the gateway on the real @grpc/grpc-js and @grpc/proto-loader, loading
// proto/inferencegateway/gateway/v1/gateway.proto at run time (no generated code), as a Node user would.
//
//   node tests/node/client.js HOST:PORT
//
// With GATEWAY_CA_FILE set it connects with TLS, verifying the gateway with that CA; with
// GATEWAY_CERT_FILE and GATEWAY_KEY_FILE too it presents that client certificate (mTLS); with
// GATEWAY_TOKEN too it sends that bearer token.
//
// Submits an echo job, Watches it to the end (one JSON line per revision), Fetches the result, asks
// Get for an unknown job and decodes the ErrorInfo from the grpc-status-details-bin trailer, then
// prints one JSON line with everything: {"event": "done", ...}. Exits non-zero on any surprise.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const ROOT = path.resolve(__dirname, "..", "..");
const INCLUDE_DIRS = [path.join(ROOT, "proto"), path.join(ROOT, "third_party", "googleapis")];
const DEADLINE_MS = 30000;

function loadService() {
  const definition = protoLoader.loadSync("inferencegateway/gateway/v1/gateway.proto", {
    includeDirs: INCLUDE_DIRS,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).inferencegateway.gateway.v1.GatewayService;
}

// google.rpc.Status from the googleapis copy in third_party; ErrorInfo and BadRequest as in
// google/rpc/error_details.proto (same field numbers), declared here since only status.proto is vendored.
function loadStatusTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    for (const dir of INCLUDE_DIRS) {
      const candidate = path.join(dir, target);
      if (require("fs").existsSync(candidate)) return candidate;
    }
    return target; // google/protobuf/*.proto: bundled with protobufjs
  };
  root.loadSync("google/rpc/status.proto");
  protobuf.parse(`
    syntax = "proto3";
    package google.rpc;
    message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
    message BadRequest {
      message FieldViolation { string field = 1; string description = 2; }
      repeated FieldViolation field_violations = 1;
    }
  `, root, { keepCase: true });
  return {
    Status: root.lookupType("google.rpc.Status"),
    ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
  };
}

// JSON <-> google.protobuf.Struct / Value, as protobufjs objects.
function toValue(value) {
  if (value === null) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

function fromValue(value) {
  switch (value.kind) {
    case "nullValue": return null;
    case "numberValue": return value.numberValue;
    case "stringValue": return value.stringValue;
    case "boolValue": return value.boolValue;
    case "listValue": return (value.listValue.values || []).map(fromValue);
    case "structValue": return fromStruct(value.structValue);
    default: throw new Error(`unknown Value kind ${value.kind}`);
  }
}

function fromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries(struct.fields || {})) out[key] = fromValue(value);
  return out;
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function line(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function watch(client, jobId) {
  return new Promise((resolve, reject) => {
    const jobs = [];
    const call = client.Watch({ job_id: jobId, after_revision: 0 });
    call.on("data", (response) => {
      if (response.event !== "update") return; // heartbeats
      const job = response.update.job;
      jobs.push(job);
      line({ event: "job", state: job.state, done: job.done, revision: Number(job.revision), progress: job.progress });
      if (job.done) resolve(jobs); // the terminal revision is the last; the stream ends with OK
    });
    call.on("error", reject);
    call.on("end", () => resolve(jobs));
  });
}

function decodeDetails(err, types) {
  const raw = err.metadata && err.metadata.get("grpc-status-details-bin");
  if (!raw || raw.length === 0) return { trailer: false };
  const status = types.Status.decode(raw[0]);
  const out = { trailer: true, status_code: status.code, message: status.message, reasons: [], domains: [] };
  for (const any of status.details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      const info = types.ErrorInfo.decode(any.value);
      out.reasons.push(info.reason);
      out.domains.push(info.domain);
      out.metadata = info.metadata;
    }
  }
  return out;
}

function channelCredentials() {
  const fs = require("fs");
  const { GATEWAY_CA_FILE: ca, GATEWAY_CERT_FILE: cert, GATEWAY_KEY_FILE: key } = process.env;
  if (!ca) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  const tls = grpc.credentials.createSsl(read(ca), read(key), read(cert));
  const token = process.env.GATEWAY_TOKEN;
  if (!token) return tls;
  // The bearer token rides on every call, and only over TLS (grpc-js refuses call credentials on plaintext).
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

async function main() {
  const target = process.argv[2];
  if (!target) throw new Error("usage: node client.js HOST:PORT");
  const GatewayService = loadService();
  const types = loadStatusTypes();
  const client = new GatewayService(target, channelCredentials());
  try {
    const inputs = { delay_ms: 300, steps: 3, from: "node" };
    const submitted = await unary(client, "Submit", {
      route: "echo",
      inputs: toStruct(inputs),
      labels: { client: "node" },
      request_id: `node-${process.pid}-${Date.now()}`,
    });
    const job = submitted.job;
    line({ event: "submitted", id: job.id, state: job.state, revision: Number(job.revision), existing: submitted.existing });

    const updates = await watch(client, job.id);
    const fetched = await unary(client, "Fetch", { job_id: job.id });
    if (fetched.result !== "output") throw new Error(`expected an output result, got ${fetched.result}`);

    let notFound;
    try {
      await unary(client, "Get", { job_id: "0".repeat(32) });
      throw new Error("Get of an unknown job succeeded");
    } catch (err) {
      if (err.code === undefined) throw err;
      notFound = { code: err.code, code_name: grpc.status[err.code], ...decodeDetails(err, types) };
    }

    line({
      event: "done",
      id: job.id,
      states: updates.map((j) => j.state),
      revisions: updates.map((j) => Number(j.revision)),
      final_state: fetched.job.state,
      labels: fetched.job.labels,
      output: fromValue(fetched.output),
      not_found: notFound,
    });
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`node client failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
