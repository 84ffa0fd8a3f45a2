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

// The key blocks in key order, rendered one after the other.
function fieldsText(doc) {
  let out = "";
  const vals = doc.fm_vals ?? {};
  const order = [];
  for (const k of doc.fm_keys ?? []) {
    const key = s(k);
    if (!order.includes(key) && vals[key] !== undefined) order.push(key);
  }
  for (const key of Object.keys(vals).sort()) {
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
      out += s(v.head);
      items.forEach((raw, i) => {
        if (v.flow && i > 0) out += s(v.sep);
        out += raw;
      });
      out += s(v.tail);
    } else {
      out += s(v);
    }
  }
  return out;
}

// docs/schema.md, "Rendering a file".
function render(doc) {
  if (s(doc.kind) === "binary") {
    return Buffer.from(doc.bytes ?? new Uint8Array());
  }
  // Every value of `fm`, concurrent ones included.
  const modes = Object.values(A.getConflicts(doc, "fm") ?? { fm: doc.fm }).map(s);
  const fields = fieldsText(doc);
  const raw = modes.includes("raw");
  const yaml =
    modes.includes("yaml") || (doc.fm_hidden !== undefined && s(doc.fm_hidden) !== fields);
  let out = "";
  if (raw || yaml) {
    out += s(doc.fm_open);
    if (raw) out += s(doc.fm_raw);
    if (yaml) out += s(doc.fm_pre) + fields;
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
