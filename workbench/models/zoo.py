"""Building the shipped architectures and loading any pipeline.

``load_pipeline(name_or_path)`` accepts an embedded name (``tiny-unet``, ``tiny-dit``), a local diffusers folder
or a hub id. Safetensors only (``use_safetensors=True``), never ``trust_remote_code``; a hub that cannot be reached
gives one :class:`ModelLoadError` naming what was tried, within ``HUB_TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DConditionModel

from workbench.models import pipeline as _pipeline_module
from workbench.models.catalog import (
    CLASSES,
    CLASSIFIER_NAME,
    EMBEDDED,
    MODELS_DIR,
    ModelLoadError,
    ModelSpec,
    embedded_path,
    list_models,
)
from workbench.models.pipeline import ClassTokenEncoder, ShapesPipeline

# Folders saved before the package was split into rooms name the class encoder's module ``workbench.pipeline`` in
# model_index.json; diffusers resolves it from sys.modules, so that name keeps pointing at the module.
sys.modules.setdefault("workbench.pipeline", _pipeline_module)

# the catalogue's names, importable from here as before the catalogue moved out (it needs neither torch nor diffusers)
__all__ = ["CLASSIFIER_NAME", "EMBEDDED", "HUB_TIMEOUT_S", "MODELS_DIR", "ModelLoadError", "ModelSpec",
           "build_pipeline", "default_scheduler", "embedded_path", "list_models", "load_pipeline"]
HUB_TIMEOUT_S = 20.0

def default_scheduler() -> DDIMScheduler:
    """DDPM-style linear β schedule (1e-4 → 0.02, 1000 steps), DDIM sampling with trailing timestep spacing and no
    clipping of the predicted x0."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,  # every solver integrates the model's predictions unclipped; so does DDIM (issue 17)
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )


def build_pipeline(name: str, seed: int = 0) -> ShapesPipeline:
    """A randomly initialised pipeline of an embedded architecture (what training starts from)."""
    spec = _spec(name)
    if spec.architecture == "sd":
        import tempfile

        from workbench.models.tiny_sd import build_tiny_sd

        with tempfile.TemporaryDirectory() as tmp:  # the tokenizer's files are read into memory
            return build_tiny_sd(Path(tmp), seed=seed)
    torch.manual_seed(seed)
    if spec.architecture == "unet":
        unet = UNet2DConditionModel(**spec.denoiser_config)
        enc = ClassTokenEncoder(len(CLASSES), spec.class_tokens, spec.denoiser_config["cross_attention_dim"])
        pipe = ShapesPipeline(default_scheduler(), unet=unet, class_encoder=enc, class_names=CLASSES,
                              default_guidance_scale=spec.default_guidance_scale)
    else:
        dit = DiTTransformer2DModel(**spec.denoiser_config)
        pipe = ShapesPipeline(default_scheduler(), transformer=dit, class_names=CLASSES,
                              default_guidance_scale=spec.default_guidance_scale)
    for module in (pipe.denoiser, pipe.class_encoder):
        if module is not None:
            # Inference mode, as from_pretrained leaves them: DiT's label embedding drops classes in train mode.
            module.train(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _spec(name: str) -> ModelSpec:
    if name not in EMBEDDED:
        raise ModelLoadError(f"unknown embedded model {name!r}; embedded models: {', '.join(EMBEDDED)}")
    return EMBEDDED[name]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def load_pipeline(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load an embedded model, a local diffusers folder or a hub id, on ``device`` in ``dtype``.

    Raises :class:`ModelLoadError` with one message that names what was tried.
    """
    target = str(name_or_path).strip()
    if not target:
        raise ModelLoadError("no model given; embedded models: " + ", ".join(EMBEDDED))
    if target in EMBEDDED:
        path = embedded_path(target)
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"embedded model {target!r} has no weights at {path}; "
                                 f"train it with `python -m workbench train --model {target}`")
        pipe = _load_folder(path, dtype)
    elif Path(target).expanduser().is_dir():
        pipe = _load_folder(Path(target).expanduser(), dtype)
    elif os.path.exists(target):
        raise ModelLoadError(f"{target!r} is a file, not a diffusers model folder (expected model_index.json inside)")
    elif _HUB_ID.match(target):
        pipe = _load_hub(target, dtype)
    else:
        raise ModelLoadError(
            f"unknown model {target!r}: not an embedded model ({', '.join(EMBEDDED)}), "
            "not an existing local folder, and not a hub id of the form owner/name"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_folder(path: Path, dtype: torch.dtype):
    index = path / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        config = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{index} is not a diffusers model index (a JSON {type(config).__name__}, not an object)")
    for component, entry in config.items():
        # Components are [library, class] pairs; other entries are plain pipeline config values.
        is_component = isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str | None) for e in entry)
        if component.startswith("_") or not is_component or entry[0] is None:
            continue
        sub = path / component
        if not sub.is_dir():
            raise ModelLoadError(f"{path} lists component {component!r} but the folder {sub} is missing")
        weights = list(sub.glob("*.safetensors"))
        needs_weights = component not in ("scheduler", "tokenizer", "feature_extractor", "image_processor")
        if needs_weights and (sub / "config.json").exists() and not weights:
            raise ModelLoadError(f"{sub} has no .safetensors weights (other formats are not loaded, for safety)")
        for w in weights:
            _check_safetensors(w)
    pipeline_cls = ShapesPipeline if config.get("_class_name") == "ShapesPipeline" else None
    try:
        if pipeline_cls is not None:
            return pipeline_cls.from_pretrained(path, use_safetensors=True, dtype=dtype, low_cpu_mem_usage=False)
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(path, use_safetensors=True, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many kinds; the user needs one message
        raise ModelLoadError(f"could not load the pipeline in {path}: {type(exc).__name__}: {exc}") from exc


def _check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file, so corruption is reported by file name before any model is built."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:
        raise ModelLoadError(f"weights file {path} is corrupt or not a safetensors file ({exc})") from None


def _load_hub(repo_id: str, dtype: torch.dtype):
    """Load from the hub with a hard time limit, so an offline machine gets an answer, not a hang."""
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    result: dict = {}

    def worker():
        try:
            if not offline:
                from huggingface_hub import model_info

                model_info(repo_id, timeout=HUB_TIMEOUT_S / 2)
            result["pipe"] = DiffusionPipeline.from_pretrained(
                repo_id, use_safetensors=True, local_files_only=offline, dtype=dtype
            )
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    if thread.is_alive():
        raise ModelLoadError(
            f"{repo_id!r} is not an embedded model or local folder, and the hub did not answer within "
            f"{HUB_TIMEOUT_S:.0f} s (offline?). Download it elsewhere and pass the local folder instead."
        )
    if "error" in result:
        exc = result["error"]
        raise ModelLoadError(
            f"{repo_id!r} is not an embedded model or local folder, and loading it from the hub failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return result["pipe"]
