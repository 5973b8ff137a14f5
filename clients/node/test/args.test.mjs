// The CLI's table of commands and options, read by both parseArgs and `completion` (no gateway is started).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { COMMAND_TABLE, PROG, parseArgs } from "../src/cli.js";
import { SHELLS, completionScript } from "../src/completion.js";

describe("the command table", () => {
  test("-q and --quiet both mean -o id; -o and --output check their choices", () => {
    assert.equal(parseArgs(["list", "-q"]).options.output, "id");
    assert.equal(parseArgs(["list", "--quiet"]).options.output, "id");
    assert.equal(parseArgs(["list", "-q", "-o", "json"]).options.output, "json");
    assert.equal(parseArgs(["get", "J", "--output=table"]).options.output, "table");
    assert.throws(() => parseArgs(["list", "-o", "yaml"]), /argument -o\/--output: invalid choice: 'yaml'/);
    assert.throws(() => parseArgs(["list", "--output", "yaml"]), /argument -o\/--output: invalid choice: 'yaml'/);
    assert.throws(() => parseArgs(["watch", "J", "-q"]), /unrecognized arguments: -q/);
  });

  test("submit --task checks its choices; completion checks its shell", () => {
    assert.equal(parseArgs(["submit", "--route", "r", "--audio", "a", "--task", "translate"]).options.task, "translate");
    assert.throws(() => parseArgs(["submit", "--task", "sing"]), /argument --task: invalid choice: 'sing' \(choose from 'transcribe', 'translate'\)/);
    assert.deepEqual(parseArgs(["completion", "zsh"]).positionals, ["zsh"]);
    assert.throws(() => parseArgs(["completion", "fish"]), /argument SHELL: invalid choice: 'fish' \(choose from 'bash', 'zsh'\)/);
    assert.throws(() => parseArgs(["constructor"]), /argument COMMAND: invalid choice: 'constructor'/);
  });

  test("every command and option of the table is in the completion script, for each shell", () => {
    for (const shell of SHELLS) {
      const script = completionScript(COMMAND_TABLE, PROG, shell);
      for (const [name, { options }] of Object.entries(COMMAND_TABLE.commands)) {
        const line = script.split("\n").find((l) => l.startsWith(`    ${name}) opts=`));
        assert.ok(line, `${shell}: the case of ${name}`);
        for (const [option, spec] of Object.entries(options)) {
          assert.ok(line.includes(` --${option}`) || line.includes(`'--${option}`), `${shell}: ${name} --${option}`);
          if (spec.short) assert.ok(line.includes(spec.short), `${shell}: ${name} ${spec.short}`);
        }
      }
      for (const option of Object.keys(COMMAND_TABLE.global)) assert.ok(script.includes(`--${option} `), `--${option}`);
    }
  });
});
