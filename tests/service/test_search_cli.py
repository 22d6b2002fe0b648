"""`sbir search`: the server's ranking for a sketch file, printed without a server; one-line errors."""

from __future__ import annotations

import json

from PIL import Image

from service.cli import main
from tests.support.api import search
from tests.support.checkpoints import write_checkpoint
from tests.support.images import sketch_png


def test_json_output_is_the_servers_ranking_with_the_manifests_checkpoint(client, workspace, tmp_path, capsys):
    sketch = tmp_path / "cat.png"
    sketch.write_bytes(sketch_png("square"))
    assert main(["search", str(sketch), "--index", str(workspace.index_dir), "-k", "5", "--json",
                 "--device", "cpu"]) == 0  # no --checkpoint: the manifest's
    printed = json.loads(capsys.readouterr().out)
    served = search(client, sketch_png("square"), k=5).json()
    assert printed["reranked"] is True and printed["index"] == {"name": "main", "size": 8}
    assert [(r["image_id"], r["key"], r["label"]) for r in printed["results"]] == \
        [(r["image_id"], r["key"], r["label"]) for r in served["results"]]
    for mine, theirs in zip(printed["results"], served["results"], strict=True):
        assert abs(mine["relation_score"] - theirs["relation_score"]) < 1e-5


def test_text_output_lists_rank_id_score_label_and_key(workspace, tmp_path, capsys):
    sketch = tmp_path / "s.png"
    sketch.write_bytes(sketch_png())
    assert main(["search", str(sketch), "--index", str(workspace.index_dir), "--checkpoint",
                 str(workspace.checkpoint), "-k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "index main (8 photos), ranked by relation score"
    assert len(lines) == 4 and lines[2].split()[0] == "1" and lines[3].split()[0] == "2"
    assert all(line.split()[-1].endswith(".png") and line.split()[3] in ("circle", "square") for line in lines[2:])


def test_errors_are_one_line_with_exit_status_2(workspace, tmp_path, capsys):
    sketch = tmp_path / "s.png"
    sketch.write_bytes(sketch_png())
    other = write_checkpoint(tmp_path / "other.pt", "zse-tiny", seed=1)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 100), "white").save(blank)
    cases = [
        (["search", str(tmp_path / "none.png"), "--index", str(workspace.index_dir)], "sketch not found"),
        (["search", str(sketch), "--index", str(tmp_path)], "not an index directory"),
        (["search", str(sketch), "--index", str(workspace.index_dir), "--checkpoint", str(other)],
         str(workspace.index_dir)),
        (["search", str(sketch), "--index", str(workspace.index_dir), "--checkpoint", str(tmp_path / "x.pt")],
         "checkpoint not found"),
        (["search", str(blank), "--index", str(workspace.index_dir)], "the sketch is blank"),
        (["search", str(sketch), "--index", str(workspace.index_dir), "--rerank-mode", "fp16"],
         "--rerank-mode: re-rank precision must be one of fp32, bf16, int8"),
        (["search", str(sketch), "--index", str(workspace.index_dir), "--rerank-mode", "prescore30"],
         f"{workspace.checkpoint}: re-rank mode fp32+prescore30: the checkpoint has no pre-scorer"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--device", "cpu"]) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("sbir search: error: ") and expected in error, error
        assert len(error.strip().splitlines()) == 1, error


def test_a_cascade_over_the_whole_shortlist_prints_the_exact_ranking(workspace, tmp_path, capsys):
    sketch = tmp_path / "s.png"
    sketch.write_bytes(sketch_png("square"))
    rankings = []
    for mode in ("fp32", "int8+cascade8"):
        assert main(["search", str(sketch), "--index", str(workspace.index_dir), "-k", "8", "--shortlist", "8",
                     "--json", "--device", "cpu", "--rerank-mode", mode]) == 0
        rankings.append(json.loads(capsys.readouterr().out)["results"])
    assert [r["image_id"] for r in rankings[0]] == [r["image_id"] for r in rankings[1]]
    for exact, cascaded in zip(*rankings, strict=True):
        assert abs(exact["relation_score"] - cascaded["relation_score"]) < 1e-5
