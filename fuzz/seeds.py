#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/seed-*): valid inputs of every kind a target
reads, for the fuzzer to mutate. The export seeds describe the image in fuzz/src/lib.rs."""
import hashlib, io, json, os, re, tarfile

LAYERS = [b"first layer of the fuzzed image\n", b"second layer\n"]
def sha(b): return hashlib.sha256(b).hexdigest()
DIFF = ["sha256:" + sha(l) for l in LAYERS]
CONFIG = ('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s","%s"]}}' % tuple(DIFF)).encode()
ID = sha(CONFIG)

def tar(items):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return out.getvalue()

def manifest(config, layers):
    return json.dumps([{"Config": config, "RepoTags": ["app:1"], "Layers": layers}]).encode()

corpus = {
    "export": {
        "classic": tar([("aaa/layer.tar", LAYERS[0]), ("bbb/layer.tar", LAYERS[1]), (ID + ".json", CONFIG),
                        ("manifest.json", manifest(ID + ".json", ["aaa/layer.tar", "bbb/layer.tar"])), ("repositories", b"{}")]),
        "podman": tar([(DIFF[0][7:] + ".tar", LAYERS[0]), (DIFF[1][7:] + ".tar", LAYERS[1]),
                       ("v1a/layer.tar", "../" + DIFF[0][7:] + ".tar"), ("v1b/layer.tar", "../" + DIFF[1][7:] + ".tar"),
                       (ID + ".json", CONFIG), ("manifest.json", manifest(ID + ".json", ["v1a/layer.tar", "v1b/layer.tar"]))]),
        "oci": tar([("blobs/sha256/" + DIFF[0][7:], LAYERS[0]), ("blobs/sha256/" + DIFF[1][7:], LAYERS[1]),
                    ("blobs/sha256/" + ID, CONFIG), ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
                    ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                    ("manifest.json", manifest("blobs/sha256/" + ID, ["blobs/sha256/" + DIFF[0][7:], "blobs/sha256/" + DIFF[1][7:]]))]),
        "truncated": tar([("aaa/layer.tar", LAYERS[0])])[:700],
        "link-loop": tar([("a/layer.tar", "../b/layer.tar"), ("b/layer.tar", "../a/layer.tar"), (ID + ".json", CONFIG),
                          ("manifest.json", manifest(ID + ".json", ["a/layer.tar", "b/layer.tar"]))]),
    },
    "export_metadata": {
        "classic": manifest(ID + ".json", ["aaa/layer.tar", "bbb/layer.tar"]) + b"\0" + CONFIG,
        "two-images": json.dumps([{"Config": "x.json", "Layers": []}, {"Config": ID + ".json", "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode() + b"\0" + CONFIG,
        "nested": b"[" * 200 + b"]" * 200 + b"\0" + b'{"rootfs":{"diff_ids":' + b"[" * 200 + b"]" * 200 + b"}}",
    },
    "reference": {
        "full": b"127.0.0.1:5000/team/app:1.0", "hub": b"busybox", "hub-user": b"me/app:v2",
        "localhost": b"localhost/a", "gitea": b"gitea.cnoe.localtest.me:8443/giteaadmin/app",
        "digest": b"127.0.0.1:5000/app@sha256:" + b"a" * 64, "ipv6": b"[::1]:5000/a/b:c",
        "separators": b"r.io/a__b/c-d/e.f_g:T_1.x-y", "upper": b"R.IO/Team/app",
    },
    "challenge": {
        "bearer": b'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
        "basic": b'Basic realm="Registry Realm"', "escaped": b'Bearer realm="a \\"q\\" b", error=invalid_token',
        "bare": b"Bearer", "token68": b"Negotiate abc==, Basic realm=x",
    },
    "docker_config": {
        "auths": json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpodWI="},
                                       "127.0.0.1:5000": {"username": "alice", "password": "pw"}}}).encode(),
        "helpers": json.dumps({"credsStore": "desktop", "credHelpers": {"ghcr.io": "gh"}}).encode(),
        "podman": json.dumps({"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}}}).encode(),
        "current-context": json.dumps({"auths": {}, "currentContext": "ci"}).encode(),
        "context-meta": json.dumps({"Name": "ci", "Metadata": {},
                                    "Endpoints": {"docker": {"Host": "unix:///run/ci.sock", "SkipTLSVerify": False}}}).encode(),
    },
    "storage_inspect": {
        "podman": json.dumps([{"Id": ID, "Digest": "sha256:" + ID, "RepoTags": ["localhost/app:1"],
                               "Architecture": "arm64", "Os": "linux", "Variant": "v8", "Size": 3823,
                               "RootFS": {"Type": "layers", "Layers": DIFF}}]).encode(),
        "buildah": json.dumps({"Type": "buildah 0.0.1", "FromImageID": ID,
                               "OCIv1": {"architecture": "amd64", "os": "linux",
                                         "rootfs": {"type": "layers", "diff_ids": DIFF}}}).encode(),
    },
    "manifest": {
        "oci": json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + ID, "size": len(CONFIG)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 1} for d in DIFF]}).encode(),
        "index": json.dumps({"schemaVersion": 2, "manifests": [{"digest": "sha256:" + ID, "size": 1}]}).encode(),
    },
    "image_config": {
        "minimal": CONFIG,
        "full": json.dumps({"architecture": "arm64", "os": "linux", "variant": "v8", "os.version": "1",
                            "created": "2026-11-27T00:00:00Z",
                            "config": {"Labels": {"org.opencontainers.image.source": "https://x", "a": "b"}},
                            "rootfs": {"type": "layers", "diff_ids": DIFF}}).encode(),
    },
    "cache_entry": {
        "layer": json.dumps({"diff_id": DIFF[0], "encoding": "gzip-1", "digest": DIFF[1], "size": 42}).encode(),
        "config": json.dumps({"image_id": "sha256:" + ID, "diff_ids": DIFF, "digest": "sha256:" + ID, "size": len(CONFIG)}).encode(),
    },
}

# A docker-archive file is a `docker save` tarball: the export seeds, and one with two images.
corpus["archive"] = {name: corpus["export"][name] for name in ("classic", "podman", "oci")}
OTHER = ('{"os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' % DIFF[1]).encode()
corpus["archive"]["two-images"] = tar([
    ("aaa/layer.tar", LAYERS[0]), ("bbb/layer.tar", LAYERS[1]), (ID + ".json", CONFIG), (sha(OTHER) + ".json", OTHER),
    ("manifest.json", json.dumps([{"Config": sha(OTHER) + ".json", "RepoTags": ["other:2"], "Layers": ["bbb/layer.tar"]},
                                  {"Config": ID + ".json", "RepoTags": ["app:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode())])

# An OCI layout as the layout target reads it: index.json, then NUL-separated blobs, where @dN and
# @sN stand for blob N's digest and size (so that mutations keep the digests right).
def descriptor(media_type, blob, **annotations):
    d = {"mediaType": media_type, "digest": "@d%d" % blob, "size": "@s%d" % blob}
    if annotations:
        d["annotations"] = annotations
    return d
def names(doc):
    return re.sub(rb'"(@s[0-9])"', rb"\1", json.dumps(doc).encode())
MT = "application/vnd.oci.image.manifest.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
PLAIN = names({"schemaVersion": 2, "mediaType": MT, "config": descriptor("application/vnd.oci.image.config.v1+json", 1),
               "layers": [descriptor(TAR, 2), descriptor(TAR, 3)]})
REF = "org.opencontainers.image.ref.name"
def layout(manifests):
    return b"\0".join([names({"schemaVersion": 2, "manifests": manifests}), PLAIN, CONFIG] + LAYERS)
corpus["layout"] = {
    "one": layout([descriptor(MT, 0)]),
    "tagged": layout([descriptor(MT, 0, **{REF: "1"}), descriptor(MT, 1, **{REF: "2"})]),
}

here = os.path.dirname(os.path.abspath(__file__))
for target, seeds in corpus.items():
    os.makedirs(os.path.join(here, "corpus", target), exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(here, "corpus", target, "seed-" + name), "wb") as f:
            f.write(data)
