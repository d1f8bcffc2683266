// A second host for the ocipush guest: the same component the `ocipush` binary embeds,
// transpiled by jco and run by Node.js, with the `ocipush:core` imports implemented here over
// plain files instead of a Docker daemon and a registry.
//
//   node tests/jco/host.mjs GUEST_WASM DOCKER_SAVE_TAR IMAGE_ID OUT_DIR
//
// - docker:      `inspect` and `export-image` answer from a `docker save` tarball on disk;
//                IMAGE_ID is the daemon's image ID (the config's sha256 on the classic store);
//                `identify` declines (no daemon; only provenance asks).
// - registry:    an OCI image layout in OUT_DIR (oci-layout, index.json, blobs/sha256/…), with
//                the host's rule that a manifest may only name blobs confirmed in this session.
//                Layers are stored as streamed: only `compression = none` is offered.
// - archive:     offered, but declines every file: this host's source is its `docker` tarball.
// - layout:      offered, but declines every directory: this host publishes only through
//                `registry` (its OCI layout in OUT_DIR).
// - credentials: none; cache: empty and forgetful; progress: events are logged on stderr.
// - clock:       Date.now(); signer: no key (nothing is signed, and no provenance is asked for).
// - WASI (a Rust std component imports wasi:cli, wasi:io and wasi:random even though it does no
//   real work with them): @bytecodealliance/preview2-shim, with nothing granted: no environment,
//   no arguments, no cwd, no stdin (reading it traps), the guest's stdout goes to stderr, and no
//   filesystem, sockets or http interfaces are offered at all (the guest imports none).
//
// It pushes the image as `img` to 127.0.0.1:5000/jco/test:1 (the destination is only parsed by the
// guest; nothing connects to it) and prints the manifest digest as the last line of stdout.
// Exit status: 0 on success, 1 when the push fails (one line on stderr), 2 on bad usage.

import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";

const SOURCE = "img";
const DESTINATION = "127.0.0.1:5000/jco/test:1";
const REF_NAME = "org.opencontainers.image.ref.name";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const symbolDispose = Symbol.dispose || Symbol.for("dispose");

function log(line) {
  process.stderr.write(`ocipush-jco: ${line}\n`);
}

/** Ends the run: one line on stderr, exit status `code` (after cleaning up). */
class Failure extends Error {
  constructor(message, code = 1) {
    super(message);
    this.code = code;
  }
}

function fail(line, code = 1) {
  throw new Failure(line, code);
}

/**
 * jco 1.34 lifts a string's pointer and length that the canonical ABI passes in a joined i64
 * slot (a variant case whose other cases hold a u64 there, as `progress.report`'s do) with
 * `Number(arg)`, keeping the slot's upper 32 bits; the ABI says to wrap them to i32
 * (`lift_flat`: `wrap_i64_to_i32`), as wasmtime does, and a guest may leave anything there.
 * This wraps them in the generated glue, so the guest is judged by the ABI, not by jco's slip.
 */
function wrapJoinedPointers(js) {
  return Buffer.from(js)
    .toString("utf8")
    .replace(/var (ptr|len)(\d+) = Number\((arg\d+)\);/g, "var $1$2 = Number(BigInt.asUintN(32, BigInt($3)));");
}

const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const isDigest = (d) => typeof d === "string" && /^sha256:[0-9a-f]{64}$/.test(d);

/** A result for jco: an explicit `{ tag, val }`, so no thrown JS error can turn into a trap. */
function result(fn) {
  try {
    return { tag: "ok", val: fn() };
  } catch (e) {
    return { tag: "err", val: e instanceof Error ? e.message : String(e) };
  }
}

/** `result` for a layer upload's calls, which fail with an `upload-error`: this host, writing
 * files, never loses an upload, so every failure is `failed`. */
function uploadResult(fn) {
  const r = result(fn);
  return r.tag === "ok" ? r : { tag: "err", val: { tag: "failed", val: r.val } };
}

// ---------------------------------------------------------------------------------------------
// The `docker save` tarball
// ---------------------------------------------------------------------------------------------

/** The entries of a tar file: name -> { offset, size, type, link }, data read lazily. */
function tarIndex(file) {
  const fd = fs.openSync(file, "r");
  const entries = new Map();
  const header = Buffer.alloc(512);
  let pos = 0;
  let longName = null;
  let paxPath = null;
  const str = (buf, start, len) => {
    const s = buf.subarray(start, start + len);
    const nul = s.indexOf(0);
    return s.subarray(0, nul < 0 ? len : nul).toString("utf8");
  };
  const num = (buf, start, len) => {
    if (buf[start] & 0x80) {
      // base-256, for sizes that do not fit in octal
      let n = 0n;
      for (let i = start + 1; i < start + len; i++) n = (n << 8n) | BigInt(buf[i]);
      return Number(n);
    }
    const s = str(buf, start, len).trim();
    return s === "" ? 0 : parseInt(s, 8);
  };
  const readAt = (offset, size) => {
    const out = Buffer.alloc(size);
    let done = 0;
    while (done < size) {
      const n = fs.readSync(fd, out, done, size - done, offset + done);
      if (n === 0) throw new Error(`${file}: truncated tar at byte ${offset + done}`);
      done += n;
    }
    return out;
  };
  try {
    for (;;) {
      if (fs.readSync(fd, header, 0, 512, pos) < 512) break;
      if (header.every((b) => b === 0)) break;
      const size = num(header, 124, 12);
      const type = String.fromCharCode(header[156] || 0x30);
      const data = pos + 512;
      const next = data + Math.ceil(size / 512) * 512;
      if (type === "L") {
        longName = readAt(data, size).toString("utf8").replace(/\0+$/, "");
      } else if (type === "x") {
        for (const record of readAt(data, size).toString("utf8").split("\n")) {
          const m = /^\d+ path=(.*)$/.exec(record);
          if (m) paxPath = m[1];
        }
      } else if (type !== "g") {
        const prefix = str(header, 345, 155);
        let name = str(header, 0, 100);
        if (prefix) name = `${prefix}/${name}`;
        name = paxPath ?? longName ?? name;
        longName = paxPath = null;
        entries.set(name.replace(/^\.\//, ""), {
          offset: data,
          size,
          type,
          link: str(header, 157, 100),
        });
      }
      pos = next;
    }
  } finally {
    fs.closeSync(fd);
  }
  const lookup = (name, hops = 0) => {
    const e = entries.get(name);
    if (!e) throw new Error(`${file}: no entry ${name}`);
    if (e.type === "2" && hops < 8) {
      return lookup(path.posix.normalize(path.posix.join(path.posix.dirname(name), e.link)), hops + 1);
    }
    return e;
  };
  return {
    size: (name) => lookup(name).size,
    read: (name) => {
      const e = lookup(name);
      const fd2 = fs.openSync(file, "r");
      try {
        const out = Buffer.alloc(e.size);
        let done = 0;
        while (done < e.size) {
          const n = fs.readSync(fd2, out, done, e.size - done, e.offset + done);
          if (n === 0) throw new Error(`${file}: ${name} is truncated`);
          done += n;
        }
        return out;
      } finally {
        fs.closeSync(fd2);
      }
    },
  };
}

/** `ocipush:core/docker` over one `docker save` tarball of one image. */
function dockerOverTarball(tarball, imageId) {
  let summary = null;
  const names = () => [SOURCE, imageId];

  class ExportStream {
    #fd;
    #offset = 0;
    constructor() {
      this.#fd = fs.openSync(tarball, "r");
    }
    read(max) {
      return result(() => {
        if (this.#fd === null) return new Uint8Array(0);
        const buf = Buffer.alloc(Math.max(0, Math.min(max, 16 << 20)));
        const n = fs.readSync(this.#fd, buf, 0, buf.length, this.#offset);
        this.#offset += n;
        if (n === 0) this[symbolDispose]();
        return new Uint8Array(buf.buffer, buf.byteOffset, n);
      });
    }
    skip(n) {
      return result(() => {
        const size = this.#fd === null ? this.#offset : fs.fstatSync(this.#fd).size;
        const to = this.#offset + Number(n);
        if (to > size) throw new Error(`the export ended ${to - size} bytes short of a skip of ${n}`);
        this.#offset = to;
      });
    }
    [symbolDispose]() {
      if (this.#fd !== null) {
        fs.closeSync(this.#fd);
        this.#fd = null;
      }
    }
  }

  return {
    ExportStream,
    // This host builds nothing: the guest's build export is not exercised here.
    BuildJob: class {},
    build: (request) => ({ tag: "err", val: `this host builds nothing (asked to build ${request.tag})` }),
    // No daemon stands behind this host's images: provenance, which alone asks, is not offered.
    identify: (image) => ({ tag: "err", val: `this host has no daemon to name (${image} is read from ${tarball})` }),
    inspect(image) {
      return result(() => {
        if (!names().includes(image)) {
          throw new Error(`image ${image} not found in ${tarball} (it holds ${names().join(", ")})`);
        }
        if (!summary) {
          const tar = tarIndex(tarball);
          const manifest = JSON.parse(tar.read("manifest.json").toString("utf8"));
          if (!Array.isArray(manifest) || manifest.length !== 1) {
            throw new Error(`${tarball}: manifest.json should describe exactly one image`);
          }
          const config = JSON.parse(tar.read(manifest[0].Config).toString("utf8"));
          summary = {
            id: imageId,
            diffIds: config.rootfs.diff_ids,
            // The daemon's figure is only the expected total for progress: the layer tars' sizes
            // are as good here.
            size: BigInt(manifest[0].Layers.reduce((sum, layer) => sum + tar.size(layer), 0)),
            // A docker save tarball's image ID is its config's digest.
            idKind: "config",
            // As the daemon states them: the config's labels, sorted by key.
            labels: Object.entries(config.config?.Labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
          };
        }
        return summary;
      });
    },
    exportImage(image) {
      return result(() => {
        if (image !== imageId) {
          throw new Error(`export of ${image}: export by the inspected ID ${imageId}`);
        }
        return new ExportStream();
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// An OCI image layout as the registry
// ---------------------------------------------------------------------------------------------

function registryOverLayout(outDir) {
  const blobs = path.join(outDir, "blobs", "sha256");
  const blobPath = (digest) => {
    if (!isDigest(digest)) throw new Error(`not a sha256 digest: ${JSON.stringify(digest)}`);
    return path.join(blobs, digest.slice("sha256:".length));
  };
  const writeAtomically = (file, data) => {
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  };
  const sizeOf = (file) => {
    try {
      return fs.statSync(file).size;
    } catch (e) {
      if (e.code === "ENOENT") return undefined;
      throw e;
    }
  };
  let uploads = 0;

  class LayerUpload {
    #tmp;
    #fd;
    #hash = createHash("sha256");
    #written = 0n;
    #closed = null;
    #repository;
    constructor(repository) {
      this.#repository = repository;
      this.#tmp = path.join(blobs, `.upload-${process.pid}-${uploads++}`);
      this.#fd = fs.openSync(this.#tmp, "wx");
    }
    write(data) {
      return uploadResult(() => {
        if (this.#fd === null) throw new Error("write to a finished or cancelled layer upload");
        fs.writeSync(this.#fd, data);
        this.#hash.update(data);
        this.#written += BigInt(data.length);
      });
    }
    progress() {
      return { written: this.#written, sent: this.#written };
    }
    /**
     * Ends the stream; the blob is stored by `finish`. The guest's digest of what it wrote is
     * not taken: this host hashes what it writes, the only check an image layout has.
     */
    close(_written) {
      return uploadResult(() => this.#close());
    }
    #close() {
      if (this.#closed) return this.#closed;
      if (this.#fd === null) throw new Error("close of a finished or cancelled layer upload");
      fs.closeSync(this.#fd);
      this.#fd = null;
      this.#closed = { digest: `sha256:${this.#hash.digest("hex")}`, size: this.#written };
      return this.#closed;
    }
    finish() {
      return uploadResult(() => {
        if (this.#tmp === null) throw new Error("finish of a finished or cancelled layer upload");
        const { digest } = this.#close();
        fs.renameSync(this.#tmp, blobPath(digest));
        this.#tmp = null;
        this.#repository.confirm(digest);
        return { digest, size: this.#written };
      });
    }
    /** Dropped before `finish`: cancelled, nothing committed. */
    [symbolDispose]() {
      if (this.#fd !== null) {
        fs.closeSync(this.#fd);
        this.#fd = null;
      }
      if (this.#tmp !== null) {
        fs.rmSync(this.#tmp, { force: true });
        this.#tmp = null;
        log("layer upload cancelled");
      }
    }
  }

  class Repository {
    #confirmed = new Set();
    constructor(registry, name) {
      this.registry = registry;
      this.name = name;
      fs.mkdirSync(blobs, { recursive: true });
      writeAtomically(path.join(outDir, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    }
    confirm(digest) {
      this.#confirmed.add(digest);
    }
    blobSize(digest) {
      return result(() => {
        const size = sizeOf(blobPath(digest));
        if (size === undefined) return undefined;
        this.confirm(digest);
        return BigInt(size);
      });
    }
    // One directory stands for the registry: there is no other repository to mount from.
    mountBlob(_digest, _source) {
      return result(() => false);
    }
    putBlob(digest, data) {
      return result(() => {
        const actual = sha256(data);
        if (actual !== digest) throw new Error(`blob ${digest}: the data hashes to ${actual}`);
        writeAtomically(blobPath(digest), data);
        this.confirm(digest);
      });
    }
    startLayer(compression, _level) {
      return result(() => {
        if (compression !== "none") {
          throw new Error(`compression ${compression} is not offered by this host (only none)`);
        }
        return new LayerUpload(this);
      });
    }
    putManifest(reference, mediaType, body) {
      return result(() => {
        let manifest;
        try {
          manifest = JSON.parse(Buffer.from(body).toString("utf8"));
        } catch (e) {
          throw new Error(`manifest ${reference} is not JSON: ${e.message}`);
        }
        const named = [manifest.config, ...(manifest.layers ?? []), ...(manifest.manifests ?? [])]
          .concat(manifest.subject ? [manifest.subject] : [])
          .filter(Boolean)
          .map((d) => d.digest);
        for (const digest of named) {
          if (!this.#confirmed.has(digest) || sizeOf(blobPath(digest)) === undefined) {
            throw new Error(
              `manifest ${reference} names blob ${digest}, which was not confirmed in ` +
                `${outDir} during this session; nothing written`,
            );
          }
        }
        const digest = sha256(body);
        writeAtomically(blobPath(digest), body);
        const indexFile = path.join(outDir, "index.json");
        const index = fs.existsSync(indexFile)
          ? JSON.parse(fs.readFileSync(indexFile, "utf8"))
          : { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] };
        index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== reference);
        index.manifests.push({
          mediaType,
          digest,
          size: body.length,
          annotations: { [REF_NAME]: reference },
        });
        writeAtomically(indexFile, JSON.stringify(index));
        return digest;
      });
    }
    getManifest(reference) {
      return result(() => {
        // By digest, or by the tag index.json names it under.
        const entry = isDigest(reference)
          ? { digest: reference }
          : JSON.parse(fs.readFileSync(path.join(outDir, "index.json"), "utf8")).manifests.find(
              (m) => m.annotations?.[REF_NAME] === reference,
            );
        if (!entry || sizeOf(blobPath(entry.digest)) === undefined) return undefined;
        return new Uint8Array(fs.readFileSync(blobPath(entry.digest)));
      });
    }
  }

  return {
    LayerUpload,
    Repository,
    open(registry, name, _credential) {
      return result(() => new Repository(registry, name));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// WASI, with nothing granted
// ---------------------------------------------------------------------------------------------

async function wasiImports() {
  const { cli, io, random } = await import("@bytecodealliance/preview2-shim");
  cli._setEnv({});
  cli._setArgs([]);
  cli._setCwd(undefined);
  // Whatever the guest might print must not mix with the digest on our stdout.
  cli._setStdout(cli.stderr.getStderr());
  return {
    "wasi:cli/environment": cli.environment,
    "wasi:cli/exit": cli.exit,
    "wasi:cli/stdin": {
      getStdin() {
        throw new Error("wasi:cli/stdin is not granted to the guest");
      },
    },
    "wasi:cli/stdout": cli.stdout,
    "wasi:cli/stderr": cli.stderr,
    "wasi:cli/terminal-input": cli.terminalInput,
    "wasi:cli/terminal-output": cli.terminalOutput,
    "wasi:cli/terminal-stdin": { getTerminalStdin: () => undefined },
    "wasi:cli/terminal-stdout": { getTerminalStdout: () => undefined },
    "wasi:cli/terminal-stderr": { getTerminalStderr: () => undefined },
    "wasi:io/error": io.error,
    "wasi:io/poll": io.poll,
    "wasi:io/streams": io.streams,
    "wasi:random/insecure-seed": random.insecureSeed,
  };
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main() {
  const [guestWasm, tarball, imageId, outDir] = process.argv.slice(2);
  if (process.argv.length !== 6) {
    fail("usage: node host.mjs GUEST_WASM DOCKER_SAVE_TAR IMAGE_ID OUT_DIR", 2);
  }
  if (!isDigest(imageId)) fail(`IMAGE_ID must be sha256:<64 hex>, not ${imageId}`, 2);

  let transpile;
  try {
    ({ transpile } = await import("@bytecodealliance/jco"));
  } catch (e) {
    fail(`cannot load @bytecodealliance/jco (${e.code ?? e.message}): run npm ci in tests/jco`);
  }

  // Transpile: core wasm modules plus JS glue that takes the imports as an object keyed by
  // interface name, so the imports below are plain objects and classes.
  const started = Date.now();
  let component;
  try {
    component = fs.readFileSync(guestWasm);
  } catch (e) {
    fail(`cannot read the guest component: ${e.message}`);
  }
  if (!fs.statSync(tarball, { throwIfNoEntry: false })?.isFile()) {
    fail(`no docker save tarball at ${tarball}`);
  }
  const { files, imports } = await transpile(component, {
    name: "guest",
    instantiation: "async",
    noTypescript: true,
    quiet: true,
  });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ocipush-jco-"));
  try {
    for (const [name, data] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
      fs.writeFileSync(path.join(dir, name), name.endsWith(".js") ? wrapJoinedPointers(data) : data);
    }
    log(`transpiled ${guestWasm} in ${Date.now() - started} ms; it imports ${imports.join(", ")}`);

    const events = [];
    const docker = dockerOverTarball(tarball, imageId);
    const registry = registryOverLayout(outDir);
    class Credential {}
    const hostImports = {
      "ocipush:core/types": {},
      "ocipush:core/docker": docker,
      "ocipush:core/credentials": { Credential, lookup: () => undefined },
      "ocipush:core/registry": registry,
      "ocipush:core/archive": {
        Tarball: class {},
        open: (file) => ({ tag: "err", val: `this host opens no archives (asked for ${file})` }),
      },
      "ocipush:core/layout": {
        Directory: class {},
        LayerFile: class {},
        Reader: class {},
        openReader: (dir) => ({ tag: "err", val: `this host reads no OCI layout directories (asked for ${dir})` }),
        open: (dir) => ({ tag: "err", val: `this host writes no OCI layout directories (asked for ${dir})` }),
      },
      "ocipush:core/cache": { get: () => undefined, put: () => {} },
      "ocipush:core/clock": {
        now() {
          const ms = Date.now();
          return { seconds: BigInt(Math.floor(ms / 1000)), nanoseconds: (ms % 1000) * 1e6 };
        },
      },
      "ocipush:core/signer": { SigningKey: class {}, key: () => undefined },
      "ocipush:core/progress": {
        report(event) {
          events.push(event);
          if (event.tag !== "layer-progress") {
            log(JSON.stringify(event, (_k, v) => (typeof v === "bigint" ? Number(v) : v)));
          }
        },
      },
      ...(await wasiImports()),
    };
    const missing = imports.filter((i) => !(i.replace(/@[^/]*$/, "") in hostImports));
    if (missing.length) fail(`the guest imports what this host does not offer: ${missing.join(", ")}`);

    const { instantiate } = await import(pathToFileURL(path.join(dir, "guest.js")).href);
    const guest = await instantiate(
      (name) => WebAssembly.compile(fs.readFileSync(path.join(dir, name))),
      hostImports,
    );
    let pushed;
    try {
      pushed = guest.push({
        source: SOURCE,
        destinations: [DESTINATION],
        settings: {
          compression: "none",
          level: 0,
          format: "oci",
          annotations: [],
          verify: false,
          jobs: 2,
          chosen: { compression: true, format: false },
          evidence: { provenance: false, guestDigest: sha256(component) },
        },
        platforms: [],
      });
    } catch (e) {
      fail(e.payload ?? e.message);
    }
    const done = events.filter((e) => e.tag === "manifest-done");
    if (done.length !== 1 || done[0].val.digest !== pushed.digest) {
      fail(`push returned ${pushed.digest} but the progress events say ${JSON.stringify(done)}`);
    }
    log(`pushed ${SOURCE} to ${pushed.repository} in ${Date.now() - started} ms`);
    process.stdout.write(`${pushed.digest}\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    const line = e instanceof Failure ? e.message : (e?.stack ?? String(e));
    process.stderr.write(`ocipush-jco: error: ${line}\n`);
    process.exit(e instanceof Failure ? e.code : 1);
  },
);
