"""The model card: what a registered version is, typed (``models/<version>/metadata.json``).

``Registry.register`` takes one and ``Registry.metadata`` returns one; serving, the flows, the
CLI and feedback read its fields, never string paths into a dict. The JSON keeps the flat keys
that ``metadata.json`` has always had, so files written before the card existed still load:
what they lack takes the default that readers used to assume (``input_fit`` "resize",
threshold 0.5, temperature 1, no ``uncertain`` band, ``files`` holding only the ONNX file).
Keys the card does not know are kept (``extra="allow"``), so nothing in an old file is lost.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.calibration import Calibration
from storage.layout import PLOTS, is_plot_name

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
KERAS_FILE = "model.keras"
METADATA_FILE = "metadata.json"
CANARIES_FILE = "canaries.npz"

Variant = Literal["fp32", "int8"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class Int8Variant(_Part):
    """The INT8 file of a version and what quantising cost on the gate's data."""

    file: str = INT8_FILE
    test_accuracy: float | None = None
    accuracy_change: float | None = None
    regression_accuracy_change: float | None = None  # on the held-out feedback


class GateRecord(_Part):
    """The gate's verdict on this version, with the configuration it judged by."""

    blessed: bool
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)


class Metrics(_Part):
    """Validation and test metrics (``model.evaluation``), and the measured latency."""

    val: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    latency_ms: float | None = None


class RegisteredFrom(_Part):
    """A model trained elsewhere and registered with ``aidetect model register``."""

    file: str
    kind: str
    sha256: str


class ModelCard(_Part):
    # identity: filled in by Registry.register
    version: str = ""
    registered_at: str | None = None
    sha256: str = ""  # of model.onnx
    files: dict[str, str] = Field(default_factory=dict)  # name -> sha256
    file_sizes: dict[str, int] = Field(default_factory=dict)
    code_version: str | None = None

    # the input contract and the classes
    input_size: int
    input_fit: str = "resize"  # model.preprocess.FITS
    class_names: list[str] = Field(default_factory=lambda: ["real", "ai"])
    embedding_dim: int | None = None

    # from a raw score to a verdict
    threshold: float = 0.5
    temperature: float = 1.0
    uncertain_band: tuple[float, float] | None = None

    # what it is and where it came from
    config: dict[str, Any] | None = None  # model.config.ModelConfig.to_dict(); None for an outside model
    int8: Int8Variant | None = None
    datasets: list[str] = Field(default_factory=list)  # name@version it trained on
    test_datasets: list[str] = Field(default_factory=list)
    parent_version: str | None = None  # the champion when it was trained
    warm_started_from: str | None = None
    initial_weights: str | None = None  # where training started: warm start, a weights file, or none
    training_run: str | None = None
    trigger: str | None = None
    registered_from: RegisteredFrom | None = None
    note: str | None = None

    # how training went and how it was judged
    train: dict[str, Any] = Field(default_factory=dict)  # the training settings, beta, images, seconds
    history: list[dict[str, Any]] = Field(default_factory=list)  # one row an epoch
    best_epoch: int | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    champion_metrics: dict[str, Any] | None = None
    parity_max_abs_diff: float | None = None
    gate: GateRecord | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_files(cls, values: Any) -> Any:
        """A file from before ``files`` was recorded names only the ONNX file, by its sha256."""
        if isinstance(values, dict) and not values.get("files") and values.get("sha256"):
            values = {**values, "files": {ONNX_FILE: values["sha256"]}}
        return values

    @property
    def calibration(self) -> Calibration:
        return Calibration(self.temperature, self.threshold, self.uncertain_band)

    @property
    def name(self) -> str:
        """The architecture's name, or what it was registered from."""
        if self.config and self.config.get("name"):
            return str(self.config["name"])
        return f"registered {self.registered_from.kind}" if self.registered_from else "unknown"

    @property
    def plot_names(self) -> list[str]:
        """The plots registered with this version (``plots/<name>`` in ``files``), by name."""
        names = (name.partition("/")[2] for name in self.files if name.partition("/")[0] == PLOTS)
        return sorted(name for name in names if is_plot_name(name))

    @property
    def blessed(self) -> bool:
        return bool(self.gate and self.gate.blessed)

    @property
    def beta(self) -> float | None:
        """The fairness loss's target share of ``ai`` it was trained with."""
        beta = self.train.get("beta")
        return None if beta is None else float(beta)

    def file_for(self, variant: Variant) -> tuple[str, str]:
        """(file name, sha256) of a variant; KeyError when this version has no such file."""
        name = ONNX_FILE if variant == "fp32" else (self.int8.file if self.int8 else None)
        if name is None or name not in self.files:
            raise KeyError(f"version {self.version} has no {variant} variant")
        return name, self.files[name]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()
