"""The demo recipe end to end on a tiny bank: the in-memory bank, a few steps, exact resumption, the
quick evaluation, and the recipe file's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from training.demo_bank import BankItem, PairBank, build_bank, openmoji_items
from training.demo_eval import evaluate_bank
from training.demo_train import DemoRecipe, RecipeError, draw_batch, edge_sketches, run
from training.sketch_jitter import photo_edges


def _drawing(seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(20, size - 60, 2)
        image[y:y + 40, x:x + 6] = rng.integers(0, 200, 3)
    return image


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-like folder: 6 seen + 2 unseen emojis in 3 subgroups, with split.json."""
    root = tmp_path_factory.mktemp("demo")
    layout = {"a": ["1F600", "1F601", "1F602"], "b": ["1F400", "1F401", "1F402"], "c": ["2600", "2601"]}
    for index, (subgroup, codes) in enumerate(layout.items()):
        for number, code in enumerate(codes):
            seed = 10 * index + number
            for modality in ("sketch", "photo"):
                path = root / modality / subgroup / f"{code}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = _drawing(seed)
                Image.fromarray(pixels if modality == "photo" else pixels.min(axis=2, keepdims=True).repeat(3, 2)).save(path)
    (root / "split.json").write_text(json.dumps({"seen": ["a", "b"], "unseen": ["c"]}))
    return root


def test_bank_decodes_like_the_service_and_groups_members(folder: Path, tmp_path: Path) -> None:
    from models import preprocess

    items = openmoji_items(folder, "seen")
    assert {item.instance for item in items} == {f"emoji:{c}" for c in ("1F600", "1F601", "1F602", "1F400", "1F401", "1F402")}
    bank = build_bank(items, cache=tmp_path)
    assert bank.sketches.shape == (6, 224, 224) and bank.photos.shape == (6, 3, 224, 224)
    # The stored sketch is the service's preprocessing, back in uint8.
    first = sorted(item.path for item in items if item.modality == "sketch")[0]
    with Image.open(first) as image:
        expected = ((preprocess.sketch(image) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).min(dim=0).values
    assert torch.equal(bank.sketches[0], expected)
    assert [bank.concepts[int(c)] for c in bank.instance_concept] == ["b", "b", "b", "a", "a", "a"]
    assert len(bank.trainable_instances()) == 6
    assert all(len(rows) == 1 for rows in bank.members("photo"))
    assert len(list(tmp_path.glob("bank-*.pt"))) == 1
    again = build_bank(items, cache=tmp_path)  # read back from the cache
    assert torch.equal(again.photos, bank.photos) and again.instances == bank.instances


def _bank(instances: int = 10, seed: int = 0) -> PairBank:
    generator = torch.Generator().manual_seed(seed)
    photos = torch.randint(0, 256, (instances, 3, 224, 224), generator=generator, dtype=torch.uint8)
    return PairBank(
        sketches=photos.min(dim=1).values.clone(), photos=photos,
        sketch_instance=torch.arange(instances), photo_instance=torch.arange(instances),
        instance_concept=torch.arange(instances) % 3,
        sketch_source=torch.zeros(instances, dtype=torch.int64), photo_source=torch.zeros(instances, dtype=torch.int64),
        instances=[f"i{n}" for n in range(instances)], concepts=["x", "y", "z"], sources=["s"],
    )


def _recipe(run_dir: Path, **changes: object) -> DemoRecipe:
    settings = dict(run_dir=str(run_dir), batch=6, steps=4, warmup_steps=1, relation_negatives=2,
                    relation_sketches=3, hard_fraction=0.5, neighbours=2, refresh_every=2, log_every=1,
                    eval_every=1000, bf16=False, threads=1)
    settings.update(changes)
    return DemoRecipe(**settings)  # type: ignore[arg-type]


def test_hard_batches_hold_neighbours_of_their_seeds() -> None:
    bank = _bank()
    instances = bank.trainable_instances()
    neighbours = torch.tensor([[(i + 1) % 10, (i + 2) % 10] for i in range(10)])
    chosen, sketch_rows, photo_rows = draw_batch(
        bank, instances, bank.members("sketch"), bank.members("photo"), neighbours,
        _recipe(Path("unused")), torch.Generator().manual_seed(0),
    )
    assert len(chosen) == 6
    seeds, hard = chosen[:3], chosen[3:]
    for seed, extra in zip(seeds.tolist(), hard.tolist(), strict=True):
        assert extra in neighbours[seed].tolist()
    assert torch.equal(bank.sketch_instance[sketch_rows], chosen) and torch.equal(bank.photo_instance[photo_rows], chosen)


def _two_style_bank() -> PairBank:
    """Four instances with an OpenMoji picture each; instances 0 and 2 also have a Noto picture."""
    photos = torch.full((6, 3, 224, 224), 255, dtype=torch.uint8)  # the model's input size
    photos[4, :, 10:40, 12:50] = 40  # instance 0's Noto picture: a dark box
    photos[5, 0, 20:30, 20:30] = 0   # instance 2's: a small cyan square
    return PairBank(
        sketches=torch.full((4, 224, 224), 255, dtype=torch.uint8), photos=photos,
        sketch_instance=torch.arange(4), photo_instance=torch.tensor([0, 1, 2, 3, 0, 2]),
        instance_concept=torch.zeros(4, dtype=torch.int64),
        sketch_source=torch.zeros(4, dtype=torch.int64), photo_source=torch.tensor([1, 1, 1, 1, 0, 0]),
        instances=["a", "b", "c", "d"], concepts=["x"], sources=["noto-photo", "openmoji-photo", "openmoji-sketch"],
    )


def test_edge_sketches_replace_drawings_with_edges_of_the_named_styles_pictures() -> None:
    bank = _two_style_bank()
    chosen = torch.tensor([3, 2, 1, 0])
    recipe = _recipe(Path("unused"), styles=["openmoji", "noto"], photo_edges=["noto"], photo_edge_share=1.0,
                     edge_outline_share=0.0)
    positions, drawn = edge_sketches(bank, chosen, bank.members("photo"), recipe, torch.Generator().manual_seed(0))
    # Only the instances with a Noto picture, each drawn from that picture (never from an OpenMoji one).
    assert positions.tolist() == [1, 3]
    expected = photo_edges(bank.photos[torch.tensor([5, 4])], torch.tensor([False, False]))
    assert torch.equal(drawn, expected) and (drawn < 128).any(dim=(1, 2)).all()


def test_edge_sketches_off_draw_nothing_and_leave_the_generator_alone() -> None:
    bank = _two_style_bank()
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    recipe = _recipe(Path("unused"), styles=["openmoji", "noto"], photo_edges=["noto"], photo_edge_share=0.0)
    positions, drawn = edge_sketches(bank, torch.arange(4), bank.members("photo"), recipe, generator)
    assert len(positions) == 0 and drawn.shape == (0, 224, 224)
    assert torch.equal(generator.get_state(), before)


def test_edges_of_a_style_the_recipe_does_not_load_are_refused() -> None:
    with pytest.raises(RecipeError, match="photo_edges: noto"):
        _recipe(Path("unused"), styles=["openmoji"], photo_edges=["noto"], photo_edge_share=0.5)


def test_training_with_edge_sketches_runs(tmp_path: Path) -> None:
    bank = _two_style_bank()
    recipe = _recipe(tmp_path, batch=4, relation_negatives=2, relation_sketches=2, neighbours=2, styles=["openmoji", "noto"],
                     photo_edges=["noto"], photo_edge_share=1.0, align_weight=0.5, steps=2)
    record = run(recipe, bank)
    assert record["step"] == 2 and np.isfinite(record["loss"])


def test_training_runs_writes_a_loadable_model_and_resumes_exactly(tmp_path: Path) -> None:
    bank = _bank()
    straight = run(_recipe(tmp_path / "straight"), bank)
    assert straight["step"] == 4 and np.isfinite(straight["loss"]) and "relation" in straight
    model = models.load_checkpoint(tmp_path / "straight" / "model.pt")
    assert model.config.name == "zse-tiny" and model.config.dropout == 0.0

    stop_after = iter([False, False, True])
    run(_recipe(tmp_path / "resumed"), bank, should_stop=lambda: next(stop_after))
    assert json.loads((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    resumed = run(_recipe(tmp_path / "resumed"), bank)
    assert resumed["loss"] == straight["loss"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    events = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 2}.items() <= events[2].items()


def test_resuming_with_another_recipe_is_refused(tmp_path: Path) -> None:
    bank = _bank()
    run(_recipe(tmp_path, steps=1), bank)
    with pytest.raises(RecipeError, match="lr"):
        run(_recipe(tmp_path, steps=2, lr=5e-4), bank)


def test_quick_evaluation_matches_a_brute_force_ranking(folder: Path) -> None:
    torch.manual_seed(0)
    model = models.build_model("zse-tiny").eval()
    queries = build_bank([item for item in openmoji_items(folder, "unseen") if item.modality == "sketch"])
    gallery = build_bank([item for item in openmoji_items(folder, "all") if item.modality == "photo"])
    found = evaluate_bank(model, queries, gallery, shortlist=3)
    from training.demo_train import encode_photos, encode_sketches

    sketch_ret, _ = encode_sketches(model, queries.sketches, torch.device("cpu"), False)
    photo_ret = encode_photos(model, gallery.photos, torch.device("cpu"), False)
    ranks = []
    for row, instance in enumerate(queries.sketch_instance.tolist()):
        own = gallery.instances.index(queries.instances[instance])
        order = torch.argsort(-(sketch_ret[row] @ photo_ret.T), stable=True).tolist()
        ranks.append(order.index(own))
    assert found["ret"]["acc_1"] == np.mean([rank == 0 for rank in ranks])
    assert found["ret"]["acc_10"] == np.mean([rank < 10 for rank in ranks])
    assert 0.0 <= found["two_stage"]["map_all"] <= 1.0


def test_recipe_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("batch: 64\nlearning_rate: 0.1\n")
    with pytest.raises(RecipeError, match="unknown key.*learning_rate"):
        DemoRecipe.from_file(path)
    path.write_text("temperature: 2\n")
    with pytest.raises(RecipeError, match="temperature"):
        DemoRecipe.from_file(path)
    with pytest.raises(RecipeError, match="no-such.yaml"):
        DemoRecipe.from_file(tmp_path / "no-such.yaml")
    path.write_text("steps: 10\n")
    assert DemoRecipe.from_file(path, steps=20, run_dir=None).steps == 20


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "demo").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_recipes_parse(path: Path) -> None:
    recipe = DemoRecipe.from_file(path)
    assert "openmoji" in recipe.styles and recipe.model == "zse-tiny"


def test_the_three_stages_chain() -> None:
    folder = Path(__file__).resolve().parents[2] / "configs" / "demo"
    first, styles, align = (DemoRecipe.from_file(folder / f"zse-tiny-demo{suffix}.yaml") for suffix in ("", "-styles", "-align"))
    assert first.init_checkpoint is None
    assert styles.init_checkpoint == f"{first.run_dir}/model.pt"
    assert align.init_checkpoint == f"{styles.run_dir}/model.pt" and align.align_weight > 0


def test_bank_item_is_hashable_by_value() -> None:
    item = BankItem(Path("x.png"), "sketch", "emoji:1", "c", "s")
    assert item == BankItem(Path("x.png"), "sketch", "emoji:1", "c", "s")


def test_the_command_names_a_missing_demo_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data_root: {tmp_path / 'nowhere'}\nrun_dir: {tmp_path / 'run'}\n")
    assert main(["demo", "train", "--recipe", str(recipe)]) != 0
    err = capsys.readouterr().err
    assert "nowhere" in err and "sbir demo prepare" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_the_prescore_command_adds_a_distilled_pre_scorer_and_nothing_else(
        folder: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    out = tmp_path / "with-prescorer.pt"
    assert main(["demo", "prescore", "--checkpoint", str(checkpoint), "--data", str(folder), "--out", str(out),
                 "--shortlist", "10", "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "seen: 6 drawings x 8 relation scores" in printed and "unseen: 2 drawings x 8" in printed
    assert "share of the exact top 10 inside the pre-score top M: 1.000 at M = 20" in printed  # 8 photos < 20
    before, after = models.load(checkpoint, "cpu").model, models.load(out, "cpu").model
    assert before.prescorer is None and after.prescorer is not None
    grown = after.state_dict()
    for key, value in before.state_dict().items():  # the rest as it was, up to the float16 of the file
        torch.testing.assert_close(grown[key], value.half().float(), atol=0, rtol=0)
    assert main(["demo", "prescore", "--data", str(tmp_path / "nowhere"), "--checkpoint", str(checkpoint),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "sbir demo prepare" in err and len(err.strip().splitlines()) == 1
    assert main(["demo", "prescore", "--data", str(folder), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--styles", "openmoji,tabler"]) == 2
    err = capsys.readouterr().err
    assert "style 'tabler' is not prepared" in err and len(err.strip().splitlines()) == 1
