"""The public Python API: README's Python block runs exactly as written, and ``import mmduplex`` stays light.

The block is the first ```python fence of README.md that calls ``mmduplex.load``; it runs in a temporary working
directory holding what it names: ``demo_out/bundle`` (the tests' tiny trained bundle) and each
``demo_out/data/videos/*.mp4`` it names (a rendered synthetic video of the tests' data set).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PRINTED = re.compile(r"^ *\d+\.\ds  \S.*$")


def readme_python_block() -> str:
    """The first ```python block of README.md that calls ``mmduplex.load``."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    block = next((b for b in blocks if "mmduplex.load" in b), None)
    assert block is not None, "README.md has no ```python block calling mmduplex.load"
    return block


@pytest.fixture
def demo_dir(tiny_bundle, duplex_data, tmp_path, monkeypatch) -> Path:
    """A working directory laid out as ``mmduplex demo --out demo_out`` leaves it, for what the block names."""
    shutil.copytree(tiny_bundle, tmp_path / "demo_out" / "bundle")
    source = sorted((duplex_data["synthetic_dir"] / "videos").glob("*.mp4"))[1]
    named = set(re.findall(r"[\"'](demo_out/data/videos/[^\"']+\.mp4)[\"']", readme_python_block()))
    assert named, "the block names no demo video"
    for name in named:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("recipe", ["default", "smoke"])
def test_readme_video_is_held_out_by_the_demo(recipe):
    """The block's video is one of the demo's held-out videos, as its comment says, under the shipped demo recipe."""
    from mmduplex.data.synthetic import _split
    from mmduplex.demo.run import DemoConfig
    from mmduplex.recipes import recipe_path

    synthetic = DemoConfig.from_yaml(recipe_path(f"demo/{recipe}")).synthetic_config()  # what the demo generates
    named = re.findall(r"demo_out/data/videos/(\w+)\.mp4", readme_python_block())
    assert named and set(named) <= set(_split(synthetic)["heldout"]), (named, recipe)


def test_readme_python_block_runs_as_written(demo_dir, monkeypatch):
    import mmduplex
    from mmduplex.inference.commentary import Commentary
    from mmduplex.inference.model import DuplexModel

    block = readme_python_block()
    assert len(block.strip().splitlines()) <= 12, "README's Python block should stay about 10 lines"
    streams: list[Commentary] = []
    stream = DuplexModel.stream

    def recorded(self, *args, **kwargs):  # the block's streams, to check what it printed against them
        streams.append(stream(self, *args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(DuplexModel, "stream", recorded)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), namespace)  # README's own lines, as a user runs them

    assert isinstance(namespace["model"], mmduplex.DuplexModel)
    assert namespace["model"].encoder is not None and namespace["model"].encoder.spec == "mmduplex-tiny"
    (commentary,) = streams
    printed = out.getvalue().splitlines()
    lines = [p for p in printed if PRINTED.match(p)]
    assert commentary.lines, "the tiny model says something on this video"
    assert lines == [f"{line.start:5.1f}s  {line.text}" for line in commentary.lines]
    assert commentary.steps > 0 and commentary.report()["flush_steps"] >= namespace["model"].bundle.delay_steps
    assert [q.t for q, _ in commentary.loop.asked] == [q.t for q in commentary.questions] != []  # the question typed
    assert isinstance(namespace["session"], mmduplex.DuplexSession)
    tokens = namespace["tokens"]
    assert isinstance(tokens, mmduplex.VideoTokens) and tokens.encoder == "efficientnet-lite0"
    assert tokens.tokens_total == sum(f.n_tokens for f in tokens.per_frame) > 0
    assert isinstance(namespace["encoder"], mmduplex.FrozenImageEncoder)


def test_stream_api_equals_the_command(tiny_bundle, duplex_data, tmp_path):
    """``DuplexModel.stream`` and ``mmduplex stream`` run the same loop: the same lines and report figures."""
    import mmduplex
    from mmduplex.cli import main
    from mmduplex.errors import InputError
    from mmduplex.io.outputs import read_commentary

    video = sorted((duplex_data["synthetic_dir"] / "videos").glob("*.mp4"))[0]
    model = mmduplex.load(tiny_bundle)
    commentary = model.stream(str(video), ask={2.5: "what moved", "end": "red"}, max_seconds=6, pad_bias=-2.0)
    lines = list(commentary)
    out, report = tmp_path / "c.jsonl", tmp_path / "r.json"
    argv = ["stream", str(video), "--checkpoint", str(tiny_bundle), "--out", str(out), "--report", str(report),
            "--max-seconds", "6", "--pad-bias", "-2", "--ask", "2.5:what moved", "--ask", "end:red"]  # fmt: skip
    assert main(argv) == 0
    assert lines and read_commentary(out) == lines == commentary.lines
    figures, data = commentary.report(), json.loads(report.read_text())
    for key in ("steps", "flush_steps", "frames", "video_tokens", "lines", "questions", "video_s", "stream_s"):
        assert figures[key] == data[key], key
    with pytest.raises(InputError, match="runs once"):
        next(iter(commentary))


def test_stream_takes_frames_or_features_as_they_come(tiny_bundle):
    """A source may be ``(t, frame)`` pairs or ``(t, patches)`` pairs: both give the file's commentary."""
    import torch

    import mmduplex
    from mmduplex.errors import InputError

    model = mmduplex.load(tiny_bundle)
    frames = torch.randint(0, 255, (8, 96, 96, 3), dtype=torch.uint8)  # [T, H, W, 3]
    pairs = [(k / model.fps, frame) for k, frame in enumerate(frames)]
    from_frames = list(model.stream(pairs, pad_bias=-2.0))
    patches = [model.encoder.encode(frame[None]).patches[0] for frame in frames]  # [P, D] each, as push_frame does
    from_features = list(model.stream([(t, p) for (t, _), p in zip(pairs, patches, strict=True)], pad_bias=-2.0))
    assert from_frames == from_features and from_frames
    with pytest.raises(InputError, match="ask"):
        list(model.stream(pairs, ask={-1.0: "what"}))


def test_import_mmduplex_is_light_and_lists_its_names():
    import mmduplex

    probe = "import json, sys, mmduplex; print(json.dumps([sorted(dir(mmduplex)), 'torch' in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    names, torch_loaded = json.loads(done.stdout)
    assert not torch_loaded
    assert set(mmduplex.__all__) <= set(names)
    assert {"load", "DuplexModel", "DuplexSession", "CommentaryLine", "tokenize", "create_encoder"} <= set(
        mmduplex.__all__
    )
    for name in mmduplex.__all__:
        assert getattr(mmduplex, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        mmduplex.no_such_name  # noqa: B018


def test_load_takes_a_bundle_written_before_the_package_move(tiny_bundle, tmp_path):
    """A bundle naming ``tokenizer.bflow.BFlowTokenizer`` (the tokenizer installed as a top-level package then) loads
    through ``mmduplex.load`` and streams as the same bundle does."""
    import torch

    import mmduplex

    old = tmp_path / "old_bundle"
    shutil.copytree(tiny_bundle, old)
    config = json.loads((old / "config.json").read_text())
    assert config["video_tokenizer"]["class_path"] == "mmduplex.tokenizer.bflow.BFlowTokenizer"
    config["video_tokenizer"]["class_path"] = "tokenizer.bflow.BFlowTokenizer"
    (old / "config.json").write_text(json.dumps(config))
    frames = torch.randint(0, 255, (4, 96, 96, 3), dtype=torch.uint8)  # [T, H, W, 3]
    pairs = [(k / 2.0, frame) for k, frame in enumerate(frames)]
    lines = [list(mmduplex.load(path).stream(pairs, pad_bias=-2.0)) for path in (old, tiny_bundle)]
    assert lines[0] == lines[1] and lines[0]
