// Test helpers: a real gateway process (the project's venv), and waits with deadlines.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_ROOT = path.resolve(PACKAGE_DIR, "..", "..");
/** The project's virtual environment: $GATEWAY_VENV, else <repo>/.venv. */
export const VENV = process.env.GATEWAY_VENV ? path.resolve(process.env.GATEWAY_VENV) : path.join(REPO_ROOT, ".venv");
export const GATEWAY_BIN = path.join(VENV, "bin", "gateway");
export const PYTHON_BIN = path.join(VENV, "bin", "python");
export const CLI_BIN = path.join(PACKAGE_DIR, "bin", "gateway-client-node.js");

export const ECHO_CONFIG = '[routes.echo]\nbackend = "echo"\n';
export const AUTH_CONFIG = `${ECHO_CONFIG}[auth]\nenabled = true\n[auth.tokens]\n"tok" = "team"\n`;

/** A scratch directory removed by the returned cleanup. */
export function scratch(prefix = "gateway-node-") {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts `gateway serve` and resolves once it prints its serving line: { target, proc, stop() }.
 * `listen` defaults to a free port; pass a previous target to restart on the same address.
 */
export function startGateway({ dataDir, config = ECHO_CONFIG, listen = "127.0.0.1:0", timeoutMs = 60_000 }) {
  const configFile = path.join(dataDir, "..", `${path.basename(dataDir)}.toml`);
  writeFileSync(configFile, config);
  const proc = spawn(GATEWAY_BIN, ["serve", "--listen", listen, "--http-listen", "", "--data-dir", dataDir,
    "--config", configFile], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (chunk) => { stderr = (stderr + chunk).slice(-20_000); });
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`the gateway did not serve within ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    proc.on("error", (err) => { clearTimeout(timer); reject(err); });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before serving; stderr:\n${stderr}`));
    });
    proc.stdout.on("data", (chunk) => {
      buffered += chunk;
      for (const line of buffered.split("\n").slice(0, -1)) {
        let event;
        try {
          event = JSON.parse(line);
        } catch {
          continue;
        }
        if (event.event === "serving") {
          clearTimeout(timer);
          resolve({
            target: event.grpc, proc, stderr: () => stderr,
            /** SIGTERM, and resolves once it has exited (SIGKILL after the deadline). */
            stop: async (stopMs = 30_000) => {
              if (proc.exitCode !== null || proc.signalCode !== null) return exited;
              proc.kill("SIGTERM");
              const killer = setTimeout(() => proc.kill("SIGKILL"), stopMs);
              try {
                return await exited;
              } finally {
                clearTimeout(killer);
              }
            },
          });
        }
      }
      buffered = buffered.slice(buffered.lastIndexOf("\n") + 1);
    });
  });
}

/** Resolves once `predicate()` is truthy (polled every `everyMs`); rejects after `timeoutMs`. */
export async function waitFor(predicate, { timeoutMs = 30_000, everyMs = 20, what = "a condition" } = {}) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A promise with a deadline. */
export function within(promise, timeoutMs, what = "a promise") {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Runs a command; resolves with { code, stdout, stderr } (kills it after timeoutMs). */
export function run(command, args, { env = {}, timeoutMs = 60_000, input } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    proc.stdout.on("data", (c) => { stdout += c; });
    proc.stderr.on("data", (c) => { stderr += c; });
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.on("error", (err) => { clearTimeout(timer); reject(err); });
    proc.on("close", (code, signal) => {
      clearTimeout(timer);
      if (signal === "SIGKILL") reject(new Error(`${command} ${args.join(" ")} ran past ${timeoutMs} ms\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
    proc.stdin.end(input ?? "");
  });
}

/** The node CLI. */
export function nodeCli(target, args, options) {
  return run(process.execPath, [CLI_BIN, "--target", target, ...args], options);
}

/** The Python CLI of the same project (the reference). */
export function pythonCli(target, args, options) {
  return run(PYTHON_BIN, ["-m", "gateway_client.cli", "--target", target, ...args], options);
}
