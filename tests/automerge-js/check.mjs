// Reads a `cue export --automerge DIR` folder with the reference JavaScript automerge
// (@automerge/automerge) and checks that every file renders, by docs/schema.md's rules,
// to the exact bytes cue wrote (the manifest's SHA-256, and the file in the workspace
// when its folder is given, with its executable bit), and that each document saves again
// to the same bytes.
//
//   node check.mjs EXPORT_DIR [WORKSPACE_DIR]
//
// Prints one line per file; exits 1 on the first mismatch.
import * as A from "@automerge/automerge";
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";

const [dir, workspace] = process.argv.slice(2);
const s = (v) => (v === undefined || v === null ? "" : String(v));

// Each key's block in key order, rendered. (The single-map case: documents whose
// fields two devices made at once, merged from two maps, are not among the checked.)
function fieldBlocks(doc) {
  const out = [];
  const vals = doc.fm_vals ?? {};
  const order = [];
  for (const k of doc.fm_keys ?? []) {
    const key = s(k);
    if (!order.includes(key) && vals[key] !== undefined) order.push(key);
  }
  const bytes = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));
  for (const key of Object.keys(vals).sort(bytes)) {
    if (!order.includes(key)) order.push(key);
  }
  for (const key of order) {
    const v = vals[key];
    if (typeof v === "object" && v !== null && !(v instanceof A.ImmutableString)) {
      const seen = new Set();
      const items = (v.items ?? []).map(s).filter((raw) => {
        // Unique by value; raw text stands for the value in these checks.
        const value = v.flow ? raw.trim() : raw.trim().replace(/^-\s*/, "");
        if (seen.has(value)) return false;
        seen.add(value);
        return true;
      });
      if (items.length === 0 && v.gone === true) continue;
      let block = s(v.head);
      items.forEach((raw, i) => {
        if (v.flow && i > 0) block += s(v.sep);
        block += raw;
      });
      out.push(block + s(v.tail));
    } else {
      out.push(s(v));
    }
  }
  return out;
}

// Every value of a key, concurrent ones included.
const allOf = (doc, key) =>
  doc[key] === undefined ? [] : Object.values(A.getConflicts(doc, key) ?? { v: doc[key] }).map(s);

// docs/schema.md, "Rendering a file".
function render(doc) {
  if (s(doc.kind) === "binary") {
    return Buffer.from(doc.bytes ?? new Uint8Array());
  }
  const modes = allOf(doc, "fm");
  const pre = s(doc.fm_pre);
  const blocks = fieldBlocks(doc);
  // A snapshot (`fm_hidden`: the lines before the first key, then each block, joined
  // by NUL) covers the fields when they hold nothing it did not.
  const covers = (snap) => {
    const [first, ...held] = snap.split("\0");
    return first === pre && blocks.every((b) => held.includes(b));
  };
  const hidden = allOf(doc, "fm_hidden");
  const rawHidden = allOf(doc, "fm_raw_hidden");
  const raw =
    modes.includes("raw") || (rawHidden.length > 0 && !rawHidden.includes(s(doc.fm_raw)));
  const yaml = modes.includes("yaml") || (hidden.length > 0 && !hidden.some(covers));
  const fields = pre + blocks.join("");
  let out = "";
  if (raw || yaml) {
    out += s(doc.fm_open);
    if (raw) out += s(doc.fm_raw);
    if (yaml) out += fields;
    out += s(doc.fm_close);
  }
  out += s(doc.body);
  return Buffer.from(out, "utf8");
}

const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
const sha = (b) => createHash("sha256").update(b).digest("hex");
let failed = false;
const index = readFileSync(join(dir, manifest.index));
const indexDoc = A.load(index);
for (const m of ["path", "origin", "tomb", "members", "conflicts"]) {
  if (typeof indexDoc[m] !== "object") {
    console.log(`index: no map ${m}`);
    failed = true;
  }
}
for (const f of manifest.files) {
  const bytes = readFileSync(join(dir, f.document));
  const doc = A.load(bytes);
  const content = render(doc);
  const problems = [];
  if (sha(content) !== f.sha256) problems.push("renders to other bytes than cue's");
  if (workspace) {
    const disk = readFileSync(join(workspace, f.path));
    if (Buffer.compare(disk, content) !== 0) problems.push("differs from the file on disk");
    // docs/schema.md: `exec` true is executable (the owner's x, git's rule); else not.
    const exec = doc.exec === true;
    const diskExec = (statSync(join(workspace, f.path)).mode & 0o100) !== 0;
    if (exec !== diskExec) problems.push(`exec is ${exec}, the file on disk is ${diskExec ? "" : "not "}executable`);
  }
  if (Buffer.compare(Buffer.from(A.save(doc)), bytes) !== 0) problems.push("saves to other bytes");
  const pathOfId = indexDoc.path?.[f.file_id];
  if (pathOfId === undefined) problems.push("not in the index's path map");
  console.log(`${f.path}: ${problems.length ? problems.join("; ") : "ok"} (${content.length} bytes)`);
  if (problems.length) failed = true;
}
process.exit(failed ? 1 : 0);
