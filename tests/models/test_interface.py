"""models.interface: one loader (file -> LoadedModel on its device, hashed) and one model interface."""

from __future__ import annotations

import hashlib

import pytest
import torch

import models
from models.device import DeviceError, resolve_device
from models.interface import RetrievalModel


def test_load_reads_hashes_and_puts_the_model_in_eval_mode(tmp_path) -> None:
    torch.manual_seed(0)
    built = models.build_model("zse-tiny")
    models.save_checkpoint(built, tmp_path / "tiny.pt")
    loaded = models.load(tmp_path / "tiny.pt", "cpu")
    assert loaded.sha256 == hashlib.sha256((tmp_path / "tiny.pt").read_bytes()).hexdigest()
    assert loaded.path == (tmp_path / "tiny.pt").absolute() and loaded.device == torch.device("cpu")
    assert not loaded.model.training and loaded.name == "zse-tiny" and loaded.family == "zse"
    assert loaded.has_relation and loaded.embed_dim == built.embed_dim
    assert loaded.describe()["checkpoint_sha256"] == loaded.sha256
    for name, tensor in built.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, atol=0, rtol=0)


def test_a_missing_checkpoint_is_a_one_line_error_naming_it(tmp_path) -> None:
    with pytest.raises(models.CheckpointError, match="absent.pt: no such checkpoint file") as caught:
        models.load(tmp_path / "absent.pt")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("preset", ["zse-tiny", "amff-tiny"])
def test_both_families_satisfy_the_retrieval_model_protocol(preset: str) -> None:
    model = models.build_model(preset)
    assert isinstance(model, RetrievalModel)
    assert model.has_relation == (model.family == "zse")


def test_device_choice_refuses_what_this_machine_cannot_run() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
