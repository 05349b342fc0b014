"""Build a network from (architecture name, config dict): how a bundle rebuilds its models from JSON.

Names: "resnet" (:class:`ResNetEstimator`), "attention" (:class:`AttentionEstimator`), "patch"
(:class:`PatchEstimator`, the CPU-cheap variant), "pca" (:class:`PCAEstimator`, a fixed per-order PCA
front end learned from the grid and an MLP), "dae" (:class:`DenoisingAutoencoder`). Config dicts are the dataclass fields; JSON lists become
tuples again; unknown fields are refused.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from torch import nn

from .attention import AttentionConfig, AttentionEstimator
from .dae import DAEConfig, DenoisingAutoencoder
from .patch import PatchConfig, PatchEstimator
from .pca import PCAConfig, PCAEstimator
from .resnet import ResNetConfig, ResNetEstimator


@dataclass(frozen=True)
class Architecture:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    estimator: bool
    """True when the model returns a GaussianOutput (an estimator), False for the DAE."""


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("resnet", ResNetConfig, ResNetEstimator, True),
        Architecture("attention", AttentionConfig, AttentionEstimator, True),
        Architecture("patch", PatchConfig, PatchEstimator, True),
        Architecture("pca", PCAConfig, PCAEstimator, True),
        Architecture("dae", DAEConfig, DenoisingAutoencoder, False),
    )
}


class ModelConfigError(ValueError):
    """An architecture name or config dict this code cannot build."""


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelConfigError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None


def config_from_dict(name: str, values: dict[str, Any] | None = None, preset: str | None = None):
    """The config dataclass of ``name`` from a (JSON) dict, on top of the defaults or of ``preset``
    ('tiny'). Lists are turned back into tuples; unknown keys raise :class:`ModelConfigError`."""
    cls = architecture(name).config_cls
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ModelConfigError(f"{name} config has unknown fields {unknown}")
    hints = typing.get_type_hints(cls)
    for key, v in values.items():
        if isinstance(v, list) and "tuple" in str(hints.get(key, "")):
            values[key] = tuple(v)
    if preset is None:
        base = cls()
    elif preset == "tiny":
        base = cls.tiny()
    else:
        raise ModelConfigError(f"unknown preset {preset!r}")
    try:
        return dataclasses.replace(base, **values)
    except (TypeError, ValueError) as e:
        raise ModelConfigError(f"bad {name} config: {e}") from e


def config_to_dict(config) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def build_model(name: str, config: dict[str, Any] | Any = None, preset: str | None = None) -> nn.Module:
    """A freshly initialised network ``name`` from a config dict or dataclass."""
    arch = architecture(name)
    if config is None or isinstance(config, dict):
        config = config_from_dict(name, config, preset)
    elif not isinstance(config, arch.config_cls):
        raise ModelConfigError(f"{name} needs a {arch.config_cls.__name__}, got {type(config).__name__}")
    return arch.model_cls(config)


def describe(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(architecture name, config dict) of a network built here; inverse of :func:`build_model`."""
    name = getattr(model, "architecture", None)
    if name not in ARCHITECTURES or not isinstance(model, ARCHITECTURES[name].model_cls):
        raise ModelConfigError(f"{type(model).__name__} is not a registered architecture")
    return name, config_to_dict(model.config)
