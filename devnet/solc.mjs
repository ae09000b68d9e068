#!/usr/bin/env node
// Minimal `solc` command backed by the pinned npm solc (wasm), for tools that expect a native
// compiler binary (Slither via crytic-compile). Supports `--version` and `--standard-json`
// (input on stdin); imports resolve against the working directory, then devnet/.
import { readFileSync, writeSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const devnetDir = dirname(fileURLToPath(import.meta.url));
const solc = createRequire(import.meta.url)("solc");
const args = process.argv.slice(2);

if (args.includes("--version")) {
  writeSync(1, `solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}
if (!args.includes("--standard-json")) {
  process.stderr.write("this wrapper only supports --version and --standard-json\n");
  process.exit(2);
}

function findImports(path) {
  for (const base of [process.cwd(), devnetDir, resolve(devnetDir, "..")]) {
    try {
      return { contents: readFileSync(join(base, path), "utf8") };
    } catch {
      // try the next base
    }
  }
  return { error: `file not found: ${path}` };
}

const input = readFileSync(0, "utf8");
// Synchronous write: process.stdout.write + exit truncates large output at 64 KiB.
writeSync(1, solc.compile(input, { import: findImports }));
