"""`sbir explain`: the explanations of GET /explain from a sketch file, without a server."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import CliError, SbirError
from service.errors import InvalidParameterError, NotFoundError, NotSupportedError
from service.explain_cli import register
from tests.support.datasets import Workspace
from tests.support.images import sketch_png


def run(argv: list[str]) -> int:
    """`sbir explain ...` through its own parser (service.cli lists the command once it is added)."""
    parser = argparse.ArgumentParser(prog="sbir")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["explain", *argv])
    return int(args.handler(args))


@pytest.fixture(scope="module")
def sketch_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sketch.png"
    path.write_bytes(sketch_png("square"))
    return path


def common(workspace: Workspace, sketch_file: Path) -> list[str]:
    return [str(sketch_file), "--index", str(workspace.index_dir), "--checkpoint", str(workspace.checkpoint),
            "--image-id", "3", "--device", "cpu"]


@pytest.mark.parametrize("kind", ["correspondence", "attention", "influence", "synthesis"])
def test_png_and_json_for_every_kind(workspace, sketch_file, tmp_path, kind):
    assert run([*common(workspace, sketch_file), "--kind", kind, "--out", str(tmp_path / "why.png")]) == 0
    image = Image.open(tmp_path / "why.png")
    assert image.format == "PNG" and image.size == (480, 224)
    assert run([*common(workspace, sketch_file), "--kind", kind, "--out", str(tmp_path / "why.json")]) == 0
    body = json.loads((tmp_path / "why.json").read_text())
    assert body["kind"] == kind and body["image_id"] == 3 and body["query_id"] is None


def test_json_equals_the_api(workspace, sketch_file, tmp_path, client):
    out = tmp_path / "why.out"
    assert run([*common(workspace, sketch_file), "--kind", "correspondence", "--level", "token",
                "--box", "0,0,112,112", "--format", "json", "--out", str(out)]) == 0
    body = json.loads(out.read_text())
    query_id = client.post("/search", files={"sketch": ("s.png", sketch_file.read_bytes(), "image/png")}).json()[
        "query_id"]
    api = client.get(f"/explain/{query_id}/3", params={"level": "token", "box": "0,0,112,112"}).json()
    assert body["pairs"] == api["pairs"] and body["region"] == api["region"]
    np.testing.assert_allclose(body["kernel"], api["kernel"], atol=1e-6)


def test_user_errors_are_one_line_domain_errors(workspace, sketch_file, tmp_path):
    # The API's own domain errors, unchanged: `sbir` prints any SbirError as one line (exit 2).
    base = common(workspace, sketch_file)
    cases = [
        ([*base[:-4], "--image-id", "99", "--device", "cpu"], NotFoundError, "image 99 is not in index"),
        ([*base, "--kind", "synthesis", "--source", "gallery"], NotSupportedError, "no patch index"),
        ([*base, "--box", "1,2,3"], InvalidParameterError, "box"),
        ([*base, "--top", "50"], InvalidParameterError, "top"),
        ([str(tmp_path / "missing.png"), *base[1:]], CliError, "sketch not found"),
    ]
    for argv, error_type, message in cases:
        with pytest.raises(error_type, match=message) as caught:
            run([*argv, "--out", str(tmp_path / "x.json")])
        assert isinstance(caught.value, SbirError) and "\n" not in str(caught.value)
    assert not (tmp_path / "x.json").exists()


def test_registration_does_not_import_torch_or_faiss():
    code = ("import argparse, sys; import service.explain_cli as c; "
            "c.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
