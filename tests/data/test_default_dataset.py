"""omni_jax/data/default_dataset.py + builders/: deterministic, complete, with held-out tests."""

import json
import os

import numpy as np
import pytest

from omni_jax.data import default_dataset as dd
from omni_jax.data.audio_features import decode_wav, encode_wav
from omni_jax.data.builders import ManifestConfig, prepare
from omni_jax.data.builders.images import OmniImages
from omni_jax.data.sources import open_source
from omni_jax.data.vision_preprocessing import decode_image
from tests.data.conftest import SUBSETS


def test_generation_is_deterministic_and_decodable():
    for sub in dd.GENERATORS:
        a = list(dd.generate(sub, "test", "tiny"))
        b = list(dd.generate(sub, "test", "tiny"))
        assert [k for k, _ in a] == [k for k, _ in b]
        for (_, x), (_, y) in zip(a, b):
            for f in x:
                if isinstance(x[f], list):
                    assert all(np.array_equal(u, v) for u, v in zip(x[f], y[f]))
                else:
                    assert np.array_equal(x[f], y[f])
    _, ex = next(dd.generate("videos", "train", "tiny"))
    frames = [decode_image(f) for f in ex["frames"]]
    assert len(frames) == 4 and frames[0].shape in ((56, 56, 3), (84, 84, 3))
    assert not np.array_equal(frames[0], frames[3])  # the shape moves
    _, ex = next(dd.generate("spoken_qa", "test", "tiny"))
    assert len(decode_wav(ex["answer_audio"])) > 1600
    assert dd.translate("there are three red crosses.") == "il y a trois croix rouge."


def test_train_and_test_splits_differ():
    tr = {e["question"] + e["caption"] for _, e in dd.generate("images", "train", "tiny")}
    te = [e["question"] + e["caption"] for _, e in dd.generate("images", "test", "tiny")]
    assert sum(t in tr for t in te) < len(te)


def test_a_larger_split_keeps_the_smaller_ones_records():
    """Records are drawn one after another from one stream per (subset, split), so a larger count only
    appends: the dataset's 1.1.0 grew the default speech train split from 240 to 2400 clips and kept the
    240 of 1.0.0 as its first ones (the benchmarks' `--train_clips=240` reads exactly those)."""
    small = list(dd.speech("train", 3))
    large = list(dd.speech("train", 6))
    assert len(large) == 6
    assert small == large[:3]  # keys and every field: transcript, audio bytes, translation, voice


def test_builders_store_every_subset_with_test_splits(data_dir):
    counts = {}
    for name in SUBSETS:
        b = prepare(f"{name}/shapes_tiny", data_dir)
        src = b.as_data_source()
        counts[name] = (len(src["train"]), len(src["test"]))
    sizes = dd.SIZES["tiny"]
    assert counts["omni_images"] == sizes["images"] and counts["omni_speech"] == sizes["speech"]
    test = open_source("omni_images/shapes_tiny", "test", data_dir)
    assert all(test[i]["answer"] for i in range(len(test)))  # image QA with answers
    asr = open_source("omni_speech/shapes_tiny", "test", data_dir)
    assert all(asr[i]["transcript"] and asr[i]["audio"][:4] == b"RIFF" for i in range(len(asr)))
    sqa = open_source("omni_spoken_qa/shapes_tiny", "test", data_dir)
    assert all(len(sqa[i]["answer_audio"]) > 1000 for i in range(len(sqa)))  # speech replies


def test_regenerating_gives_identical_records(data_dir, tmp_path):
    a = prepare("omni_speech/shapes_tiny", data_dir).as_data_source()["test"]
    b = prepare("omni_speech/shapes_tiny", str(tmp_path)).as_data_source()["test"]
    ra = sorted((a[i]["id"], a[i]["audio"]) for i in range(len(a)))
    rb = sorted((b[i]["id"], b[i]["audio"]) for i in range(len(b)))
    assert ra == rb


def test_manifest_builder_reads_your_files(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    _, ex = next(dd.generate("images", "train", "tiny"))
    (root / "a.png").write_bytes(ex["image"])
    for split in ("train", "test"):
        with open(root / f"{split}.jsonl", "w") as f:
            f.write(json.dumps({"id": f"{split}-1", "image": "a.png", "caption": "my caption."}) + "\n")
    cfg = ManifestConfig(name="mine", manifest=str(root / "{split}.jsonl"))
    b = prepare("omni_images", str(tmp_path / "data"), config=cfg)
    rec = b.as_data_source()["train"][0]
    assert rec["image"] == ex["image"] and rec["caption"] == b"my caption." and rec["question"] == b""
    with open(root / "train.jsonl", "w") as f:
        f.write(json.dumps({"id": "x", "image": "a.png", "captoin": "typo"}) + "\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['captoin'\]"):
        OmniImages(config=ManifestConfig(name="bad", manifest=str(root / "{split}.jsonl")),
                   data_dir=str(tmp_path / "data2"), file_format="array_record").download_and_prepare()


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown omni_jax dataset 'omni_imgs'"):
        prepare("omni_imgs", "/tmp/unused")
    with pytest.raises(ValueError, match="unknown default-dataset subset"):
        dd.generate("pictures", "train")
    with pytest.raises(ValueError, match="has no split 'validation'"):
        open_source("omni_text/shapes_tiny", "validation", os.environ.get("OMNI_JAX_DATA_DIR"))
    assert encode_wav(np.zeros(10))[:4] == b"RIFF"


def _fake_espeak(bin_dir, wav_path, log_path):
    """An `espeak-ng` executable that logs its arguments and writes a fixed 22.05 kHz WAV to stdout."""
    import wave

    t = np.arange(22050) / 22050
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050)
        w.writeframes((0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16).tobytes())
    exe = bin_dir / "espeak-ng"
    exe.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> "{log_path}"\necho >> "{log_path}"\ncat "{wav_path}"\n')
    exe.chmod(0o755)


def test_espeak_tts_without_espeak_ng(tmp_path, monkeypatch):
    """Both paths in every environment: here espeak-ng is hidden (PATH without it)."""
    from omni_jax.data.espeak import EspeakTTS

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="espeak-ng' is not installed"):
        EspeakTTS()
    with pytest.raises(RuntimeError, match="use the built-in synthesiser"):
        prepare("omni_speech/shapes_espeak", str(tmp_path / "data"))


def test_espeak_tts_with_espeak_ng_on_the_path(tmp_path, monkeypatch):
    """...and here a stand-in `espeak-ng` is found on PATH: the voice, speed and text reach it,
    its 22.05 kHz output comes back at 16 kHz, and the espeak builder config is built with it."""
    from omni_jax.data.omni_pipeline import make_tts

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    _fake_espeak(bin_dir, tmp_path / "one_second.wav", log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    tts = make_tts({"kind": "espeak"})
    assert tts.binary == str(bin_dir / "espeak-ng")
    x = tts("three red stars.", 8)  # voice 8 = the 9th variant, f2
    assert log.read_text().splitlines() == ["-v|en+f2|-s|150|--stdout|three red stars.|"]
    assert x.dtype == np.float32 and len(x) == 16000 and abs(float(np.abs(x).max()) - 0.5) < 1e-3
    src = prepare("omni_speech/shapes_espeak", str(tmp_path / "data")).as_data_source()["test"]
    assert len(src) == dd.SIZES["tiny"]["speech"][1]
    assert len(log.read_text().splitlines()) > 1 + len(src)  # every utterance went through espeak-ng


def test_real_espeak_ng_where_installed(tmp_path):
    import shutil

    from omni_jax.data.omni_pipeline import make_tts

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed; both code paths are covered by the two tests above")
    x = make_tts({"kind": "espeak"})("three red stars.", 2)
    assert x.dtype == np.float32 and len(x) > 8000 and np.abs(x).max() > 0.01
    src = prepare("omni_speech/shapes_espeak", str(tmp_path)).as_data_source()["test"]
    assert len(src) == dd.SIZES["tiny"]["speech"][1]
