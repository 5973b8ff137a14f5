// `gateway-client-node completion bash|zsh`: a shell completion script made from the CLI's own table of commands
// and options (the one parseArgs reads, src/cli.js), so it knows every command, option and choice of this version.
// No connection is made. As the Python CLI's `gateway-client completion`.

export const SHELLS = ["bash", "zsh"];

const quote = (text) => `'${text.replace(/'/g, "'\\''")}'`;

/** The words that name the options of a table: -h, --help, ... */
function optionWords(table) {
  return Object.entries(table).flatMap(([name, spec]) => (spec.short ? [spec.short, `--${name}`] : [`--${name}`])).sort();
}

/** For each option that takes a value: "<files>", its words, or "" (a free value: nothing to offer, not the options). */
function valueWords(table, found) {
  for (const [name, spec] of Object.entries(table)) {
    if (spec.kind === "flag") continue;
    const words = spec.complete === "files" ? "<files>" : (spec.choices ?? spec.complete ?? []).join(" ");
    for (const option of spec.short ? [spec.short, `--${name}`] : [`--${name}`]) found.set(option, words);
  }
  return found;
}

/** The completion script for `shell` ("bash" or "zsh") of the program `prog` with the table { global, commands }. */
export function completionScript({ global, commands }, prog, shell) {
  const fn = `_${prog.replace(/[^A-Za-z0-9_]/g, "_")}`;
  const values = new Map();
  valueWords(global, values);
  for (const { options } of Object.values(commands)) valueWords(options, values);
  const byWords = new Map(); // the options that complete the same way share a case
  for (const [option, words] of [...values].sort(([a], [b]) => (a < b ? -1 : 1))) {
    byWords.set(words, [...(byWords.get(words) ?? []), option]);
  }
  const valueCases = [...byWords].map(([words, options]) => {
    const reply = words === "<files>" ? 'COMPREPLY=($(compgen -f -- "$cur"))'
      : words === "" ? "COMPREPLY=()" : `COMPREPLY=($(compgen -W ${quote(words)} -- "$cur"))`;
    return `    ${options.join("|")}) ${reply}; return ;;`;
  }).join("\n");
  const globalValues = Object.entries(global).filter(([, spec]) => spec.kind !== "flag")
    .flatMap(([name, spec]) => (spec.short ? [spec.short, `--${name}`] : [`--${name}`]));
  const names = Object.keys(commands);
  const cases = Object.entries(commands).map(([name, { options, choices }]) => {
    const words = [...optionWords(options), ...Object.values(choices ?? {}).flat()];
    return `    ${name}) opts=${quote(words.join(" "))} ;;`;
  }).join("\n");
  const top = [...optionWords(global), ...names].join(" ");
  let header = `# ${prog} completion for ${shell}: eval "$(${prog} completion ${shell})" in your shell's rc file\n`;
  if (shell === "zsh") {
    header += "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit; }\n"
      + "autoload -U +X bashcompinit && bashcompinit\n";
  }
  return `${header}${fn}() {
  local cur prev cmd opts i
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  # bash splits --option=value at the "=": complete the value of the option before it.
  if [[ "$cur" == "=" ]]; then cur=""; elif [[ "$prev" == "=" ]]; then prev="\${COMP_WORDS[COMP_CWORD-2]}"; fi
  case "$prev" in
${valueCases}
  esac
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "\${COMP_WORDS[i]}" in
      ${globalValues.join("|")}) ((i++)) ;;
      ${names.join("|")}) cmd="\${COMP_WORDS[i]}"; break ;;
    esac
  done
  case "$cmd" in
    "") opts=${quote(top)} ;;
${cases}
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F ${fn} ${prog}
`;
}
