"""The token store: a frozen tokenizer's tokens computed once into shards beside the features, keyed by the
tokenizer's fingerprint; another tokenizer's (or a stale) store is refused naming the file."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mmduplex.errors import CacheError
from mmduplex.io.feature_cache import FeatureCache
from mmduplex.lm.bundle import describe_video_tokenizer
from mmduplex.tokenizer.bflow import BFlowConfig, BFlowTokenizer
from mmduplex.train.token_store import TokenStore, tokenize_video, tokenizer_fingerprint


def bflow(**changes) -> BFlowTokenizer:
    """An untrained B-Flow of the ``mmduplex-tiny`` features' shape (64 x 12 x 12), as the tiny recipe's."""
    return BFlowTokenizer(BFlowConfig(dim=64, grid=(12, 12), num_key_tokens=8, max_flow_tokens=16, **changes)).eval()


def fingerprint(tokenizer) -> dict:
    return tokenizer_fingerprint(tokenizer, describe_video_tokenizer(tokenizer))


def test_fingerprint_names_class_settings_and_weights():
    a = fingerprint(bflow())
    assert a == fingerprint(bflow()) and len(a["digest"]) == 16
    assert fingerprint(bflow(flow_threshold=0.3))["digest"] != a["digest"]
    other = bflow()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    changed = fingerprint(other)
    assert changed["weights_sha256"] != a["weights_sha256"] and changed["digest"] != a["digest"]


@pytest.mark.parametrize("changes", [{}, {"flow_mode": "region", "refresh_interval_s": 1.0}])
def test_store_holds_each_videos_tokens_in_shards_and_reads_them_back(duplex_data, tmp_path, changes):
    """Also: the store tokenizes videos in groups (``tokenize_many``), and each video's stored tokens are exactly
    what tokenizing it alone gives (the store's staleness check and the streaming session rely on it)."""
    cache, tokenizer = FeatureCache(duplex_data["features"]), bflow(**changes)
    store = TokenStore(tmp_path / "tokens", fingerprint(tokenizer))
    keys = cache.keys()
    store.update(cache, keys[:3], tokenizer, shard_mb=0.01)  # tiny shards: one video each
    assert len(store) == 3 and len(store.index["shards"]) == 3
    store.update(cache, keys, tokenizer, num_workers=2, shard_mb=0.5)  # only the missing videos are tokenized
    assert sorted(store.keys()) == sorted(keys) and len(store.index["shards"]) == 4
    reopened = pickle.loads(pickle.dumps(TokenStore(tmp_path / "tokens", fingerprint(tokenizer))))
    for key in keys:
        want, got = tokenize_video(tokenizer, cache, key), reopened.tokens(key)
        assert all(torch.equal(got[name], want[name]) for name in want), key
        video = reopened.video(key)
        assert video.counts.tolist() == want["counts"].tolist() and video.times.tolist() == want["times"].tolist()
        assert torch.equal(video.rows(2, 9), want["tokens"][2:9])
    assert (duplex_data["features"] / "index.json").is_file()  # the store is its own folder: the cache is untouched


def test_another_tokenizers_store_is_refused_naming_the_file(duplex_data, tmp_path):
    cache = FeatureCache(duplex_data["features"])
    TokenStore(tmp_path / "tokens", fingerprint(bflow())).update(cache, cache.keys()[:1], bflow())
    foreign = bflow(flow_threshold=0.3)
    with pytest.raises(CacheError, match="another video tokenizer") as error:
        TokenStore(tmp_path / "tokens", fingerprint(foreign))
    assert error.value.path == str(tmp_path / "tokens" / "index.json")
    assert "init_args" in str(error.value)  # which part of the fingerprint differs


def test_a_store_whose_tokens_differ_from_the_tokenizers_now_is_stale(duplex_data, tmp_path, monkeypatch):
    cache, tokenizer = FeatureCache(duplex_data["features"]), bflow()
    store = TokenStore(tmp_path / "tokens", fingerprint(tokenizer)).update(cache, cache.keys()[:2], tokenizer)
    original = BFlowTokenizer.tokenize

    def changed_code(self, patches, timestamps):  # same settings and weights, other tokens: a code change
        video = original(self, patches, timestamps)
        for frame in video.frames:
            frame.tokens = frame.tokens + 1e-4
        return video

    monkeypatch.setattr(BFlowTokenizer, "tokenize", changed_code)
    with pytest.raises(CacheError, match="stale") as error:
        store.update(cache, cache.keys()[:2], tokenizer)
    assert error.value.path == str(tmp_path / "tokens" / "index.json")


def test_changed_features_are_tokenized_again_and_another_encoders_refused(duplex_data, tmp_path):
    cache, tokenizer = FeatureCache(duplex_data["features"]), bflow()
    store = TokenStore(tmp_path / "tokens", fingerprint(tokenizer)).update(cache, cache.keys(), tokenizer)
    first = cache.keys()[0]
    index = json.loads(store.index_path.read_text())
    index["videos"][first]["feature_bytes"] -= 1  # as if the feature shard had been rewritten since
    store.index_path.write_text(json.dumps(index))
    store = TokenStore(tmp_path / "tokens", fingerprint(tokenizer)).update(cache, cache.keys(), tokenizer)
    assert store.index["videos"][first]["shard"] == 1 and len(store.index["shards"]) == 2
    index = json.loads(store.index_path.read_text())
    index["features"]["fps"] = 4.0
    store.index_path.write_text(json.dumps(index))
    with pytest.raises(CacheError, match="another encoder or fps"):
        TokenStore(tmp_path / "tokens", fingerprint(tokenizer)).update(cache, cache.keys(), tokenizer)


def test_token_store_benchmark_runs_and_finds_groups_identical(capsys):
    from benchmarks.bench_token_store import main

    main(["--videos", "5", "--groups", "1", "4"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2 and all(row.rstrip(" |").endswith("True") for row in rows), rows
