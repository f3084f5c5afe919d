"""The tiny random pipelines of tests/tiny_models.py: build, save, reload like a real checkpoint, run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import tiny_models as tm
except ImportError:  # tests/ imported as a package
    from tests import tiny_models as tm

diffusers = pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline, WanImageToVideoPipeline  # noqa: E402

def _load(cls, folder: Path):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe, family: str, seed: int, **kw) -> np.ndarray:
    out = pipe(**tm.call_kwargs(family, seed=seed, **kw)).frames
    return np.asarray(out)


def _check_video(frames: np.ndarray, family: str) -> None:
    g = tm.GEN_KWARGS[family]
    assert frames.shape == (1, g["num_frames"], g["height"], g["width"], 3)
    assert frames.dtype == np.float32
    assert np.isfinite(frames).all()
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert frames.std() > 1e-3  # not a constant image


# ------------------------------------------------------------------ tokenizer


def test_word_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = tm.make_word_tokenizer()
    tok.save_pretrained(tmp_path)
    for cls in (PreTrainedTokenizerFast, AutoTokenizer):
        t2 = cls.from_pretrained(tmp_path)
        enc = t2(
            ["A cat, Dancing in the RAIN!", "zebra"],
            padding="max_length",
            max_length=10,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = enc.input_ids, enc.attention_mask
        assert ids.shape == mask.shape == (2, 10)
        v = t2.get_vocab()
        words = ["a", "cat", ",", "dancing", "in", "the", "rain", "!"]
        expect0 = [v.get(w, t2.unk_token_id) for w in words] + [t2.eos_token_id]
        assert ids[0, :9].tolist() == expect0 and ids[0, 9].item() == t2.pad_token_id
        assert ids[1, :2].tolist() == [t2.unk_token_id, t2.eos_token_id]
        assert mask[0].tolist() == [1] * 9 + [0] and mask[1].sum().item() == 2
        assert t2.pad_token_id == 0 and t2.eos_token_id == 1
        assert max(v.values()) < tm._VOCAB_SIZE
        # truncation keeps max_length tokens
        long = t2("cat " * 50, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
        assert long.input_ids.shape == (1, 8)


# ------------------------------------------------------------------ builders


def test_builders_leave_global_rng_alone_and_are_seeded(tmp_path):
    from safetensors.torch import load_file

    state = torch.random.get_rng_state()
    a = tm.make_ltx(tmp_path / "a", seed=0)
    b = tm.make_ltx(tmp_path / "b", seed=0)
    c = tm.make_ltx(tmp_path / "c", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        (f,) = (folder / "transformer").glob("*.safetensors")
        return load_file(f)

    wa, wb, wc = weights(a), weights(b), weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("family", list(tm.FAMILIES))
def test_folder_layout(family_dir, family):
    folder = family_dir(family)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == tm.PIPELINE_CLASS[family]
    assert index["tokenizer"][0] == "transformers"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 4 * 2**20, f"{family}: {size} bytes"
    if family in ("wan", "wan-i2v"):
        assert index["transformer_2"][1] == "WanTransformer3DModel"
        assert index["boundary_ratio"] == {"wan": 0.875, "wan-i2v": 0.9}[family]
        assert index["expand_timesteps"] is False
    if family == "wan-i2v":
        assert index["image_encoder"] == [None, None] and index["image_processor"] == [None, None]
    if family == "wan-ti2v":
        assert index["expand_timesteps"] is True and index["boundary_ratio"] is None
        assert index["transformer_2"] == [None, None]


# ------------------------------------------------------------------ full pipeline runs


@pytest.mark.parametrize("family", list(tm.FAMILIES))
def test_reload_and_generate(family_dir, family):
    folder = family_dir(family)
    pipe = _load(DiffusionPipeline, folder)
    assert type(pipe).__name__ == tm.PIPELINE_CLASS[family]

    calls: dict[str, int] = {}
    if family.startswith("wan"):
        patch = tuple(pipe.transformer.config.patch_size)
        assert patch == (1, 2, 2)
        if family in ("wan", "wan-i2v"):
            assert pipe.transformer_2 is not None
            assert pipe.config.boundary_ratio == {"wan": 0.875, "wan-i2v": 0.9}[family]
            z = pipe.vae.config.z_dim
            assert pipe.transformer.config.in_channels == (z if family == "wan" else 2 * z + 4)
            assert pipe.transformer.config.out_channels == z
            # the two experts are distinct random models
            w1, w2 = pipe.transformer.proj_out.weight, pipe.transformer_2.proj_out.weight
            assert not torch.equal(w1, w2)
            for name in ("transformer", "transformer_2"):
                getattr(pipe, name).register_forward_pre_hook(
                    lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
                )
        else:
            assert pipe.transformer_2 is None and pipe.config.expand_timesteps is True
            assert pipe.vae.config.z_dim == pipe.transformer.config.in_channels == 48

    f0 = _frames(pipe, family, seed=0)
    _check_video(f0, family)
    if calls:  # CFG: 2 calls per step; 3 steps at t = 999, 857, 600 -> high-noise expert only at 999
        assert calls == {"transformer": 2, "transformer_2": 4}, calls
    f0b = _frames(pipe, family, seed=0)
    np.testing.assert_array_equal(f0, f0b)
    f1 = _frames(pipe, family, seed=1)
    _check_video(f1, family)
    assert np.abs(f0 - f1).max() > 1e-4


def test_wan_i2v_image_conditions_output(family_dir):
    pipe = _load(DiffusionPipeline, family_dir("wan-i2v"))
    g = tm.GEN_KWARGS["wan-i2v"]
    # compared on latents: the random tiny VAE decoder squashes differences to ~1e-5 in pixels
    a = _frames(pipe, "wan-i2v", seed=0, output_type="latent")
    b = _frames(pipe, "wan-i2v", seed=0, output_type="latent", image=tm.make_image(g["height"], g["width"], seed=7))
    assert a.shape == (1, 16, 3, g["height"] // 8, g["width"] // 8)
    assert np.abs(a - b).max() > 1e-4


def test_wan_ti2v_image_to_video(family_dir):
    """TI2V-5B: the same folder loads as WanImageToVideoPipeline (no image encoder) and takes image=."""
    folder = family_dir("wan-ti2v")
    pipe = _load(WanImageToVideoPipeline, folder)
    assert pipe.image_encoder is None and pipe.image_processor is None
    assert pipe.config.expand_timesteps is True and pipe.transformer_2 is None
    f0 = _frames(pipe, "wan-ti2v", seed=0, image=True)
    _check_video(f0, "wan-ti2v")
    np.testing.assert_array_equal(f0, _frames(pipe, "wan-ti2v", seed=0, image=True))
    g = tm.GEN_KWARGS["wan-ti2v"]
    a = _frames(pipe, "wan-ti2v", seed=0, image=True, output_type="latent")
    b = _frames(pipe, "wan-ti2v", seed=0, output_type="latent", image=tm.make_image(g["height"], g["width"], seed=7))
    assert a.shape == (1, 48, 3, g["height"] // 16, g["width"] // 16)
    # expand_timesteps: latent frame 0 is the encoded image, the rest is denoised
    assert np.abs(a[:, :, :1] - b[:, :, :1]).max() > 1e-4
    assert np.abs(a - b).max() > 1e-4
