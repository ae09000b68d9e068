#!/usr/bin/env node
// Compiles contracts/*.sol with the pinned npm solc (wasm) and writes the artifacts the Python
// package ships (contracts/artifacts/<Name>.json).
//
// Why a script and not the solc CLI: the CLI prints a warning line before its JSON, and we want
// one reproducible set of settings shared by the build and the freshness test.
//
//   node devnet/compile.mjs            write contracts/artifacts/*.json
//   node devnet/compile.mjs --stdout   print the same artifacts as one JSON object, write nothing
//   node devnet/compile.mjs --input    print the standard-JSON compiler input (for Slither)
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync, mkdirSync, writeSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const devnetDir = dirname(fileURLToPath(import.meta.url));
const repoDir = resolve(devnetDir, "..");
const contractsDir = join(repoDir, "contracts");
const artifactsDir = join(contractsDir, "artifacts");
const require = createRequire(import.meta.url);
const solc = require("solc");

// Changing any of these changes the bytecode: the freshness test catches a stale artifact.
const SETTINGS = {
  remappings: ["@openzeppelin/=node_modules/@openzeppelin/"],
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const sources = {};
for (const name of readdirSync(contractsDir).sort()) {
  if (name.endsWith(".sol")) {
    sources[`contracts/${name}`] = { content: readFileSync(join(contractsDir, name), "utf8") };
  }
}

// Every file the compiler pulls in (OpenZeppelin included) goes into the source hash.
const imported = {};
function findImports(path) {
  try {
    const content = readFileSync(join(devnetDir, path), "utf8");
    imported[path] = content;
    return { contents: content };
  } catch (err) {
    return { error: `cannot read ${path} under devnet/: ${err.message}` };
  }
}

const input = { language: "Solidity", sources, settings: SETTINGS };
if (process.argv.includes("--input")) {
  writeSync(1, JSON.stringify(input, null, 2));
  process.exit(0);
}
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(`${e.formattedMessage}\n`);
if (errors.length > 0) process.exit(1);

const hash = createHash("sha256");
const allSources = { ...Object.fromEntries(Object.entries(sources).map(([k, v]) => [k, v.content])), ...imported };
for (const path of Object.keys(allSources).sort()) {
  hash.update(`${path}\0${allSources[path]}\0`);
}
const sourceHash = hash.digest("hex");

const artifacts = {};
for (const [sourceName, contracts] of Object.entries(output.contracts)) {
  if (!sourceName.startsWith("contracts/")) continue;
  for (const [contractName, c] of Object.entries(contracts)) {
    artifacts[contractName] = {
      contractName,
      sourceName,
      solcVersion: solc.version(),
      settings: SETTINGS,
      sourceHash,
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    };
  }
}

if (process.argv.includes("--stdout")) {
  // Synchronous write: process.stdout.write + exit truncates large output at 64 KiB.
  writeSync(1, JSON.stringify(artifacts));
} else {
  mkdirSync(artifactsDir, { recursive: true });
  for (const [name, artifact] of Object.entries(artifacts)) {
    writeFileSync(join(artifactsDir, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
    process.stderr.write(`wrote contracts/artifacts/${name}.json\n`);
  }
}
