#!/usr/bin/env node
// The gateway-client-node command (see src/cli.js, or run it with --help).
import { main, ExitCode } from "../src/cli.js";

process.on("SIGINT", () => process.exit(ExitCode.INTERRUPTED)); // a submitted job keeps running on the server
process.stdout.on("error", (err) => {
  if (err.code === "EPIPE") process.exit(ExitCode.STDOUT_CLOSED); // `| head`: stop quietly
  throw err;
});

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`gateway-client-node: internal error: ${err?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
