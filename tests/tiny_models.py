"""Tiny, random, hub-free diffusers pipelines for tests.

Each ``make_<family>(folder, seed=0)`` builds a complete diffusers pipeline of the
same classes (and the same pipeline-level config) as the real checkpoint, with
random weights small enough to run on a CPU in seconds, and writes it with
``pipe.save_pretrained(folder)``. Load it back exactly like a real checkpoint::

    folder = make_wan_t2v_a14b(tmp_path / "wan")
    pipe = DiffusionPipeline.from_pretrained(folder)
    video = pipe(**call_kwargs("wan", seed=0)).frames

Weights depend only on ``seed``; the global torch RNG is left untouched (every
builder runs inside ``torch.random.fork_rng``).

Nothing here touches the network: the text encoders are built from configs and the
tokenizer is a word-level ``tokenizers`` model wrapped in
``transformers.PreTrainedTokenizerFast`` (see :func:`make_word_tokenizer`).

Token grids at ``GEN_KWARGS`` (latent frames x latent H x latent W -> tokens):

===========  =======================  =========  =====================  ======
family       VAE (t, s) compression   patch      latent grid             tokens
===========  =======================  =========  =====================  ======
wan          4, 8   (z 16)            (1,2,2)    3x8x8 -> 3x4x4          48
wan-i2v      4, 8   (z 16, in 36)     (1,2,2)    3x8x8 -> 3x4x4          48
wan-ti2v     4, 16  (z 48, VAE p=2)   (1,2,2)    3x8x8 -> 3x4x4          48
ltx          4, 4   (z 8)             (1,1,1)    3x8x8                   192
cogvideox    4, 8   (z 4)             (1,2,2)    3x4x4 -> 3x2x2          12+16
===========  =======================  =========  =====================  ======
(cogvideox concatenates ``max_sequence_length`` text tokens in front of the video tokens.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = [
    "ACCEPTS_IMAGE",
    "FAMILIES",
    "GEN_KWARGS",
    "I2V_PIPELINE",
    "NEEDS_IMAGE",
    "PIPELINE_CLASS",
    "VOCAB",
    "build",
    "call_kwargs",
    "make_cogvideox",
    "make_image",
    "make_ltx",
    "make_wan_i2v_a14b",
    "make_wan_t2v_a14b",
    "make_wan_ti2v_5b",
    "make_word_tokenizer",
]

# --------------------------------------------------------------------------- tokenizer

PAD, UNK, EOS = "[PAD]", "[UNK]", "</s>"

_WORDS = """
a an the and or of in on at to with without from by for over under into through while
is are was be being has have very slowly quickly gently softly bright dark dim
cat dog bird fish horse monkey bear fox rabbit panda tiger lion person man woman child people
car boat train plane bicycle ship robot dragon astronaut
dance dances dancing run runs running walk walks walking fly flies flying swim swims swimming
jump jumps jumping sit sits sitting play plays playing eat eats eating look looks looking
street city forest beach ocean sea river lake mountain mountains desert snow rain sky sun moon
night day sunset sunrise cloud clouds light water fire tree trees flower flowers field grass road
house room kitchen window table garden park space planet star stars
red blue green yellow white black orange purple golden silver
big small tiny large old young beautiful happy sad cinematic realistic detailed high quality low
camera shot close up wide aerial view motion video scene background foreground style
blurry distorted ugly static worst jpeg artifacts watermark text subtitles deformed overexposed
""".split()

#: The word vocabulary of :func:`make_word_tokenizer` (special tokens first: ids 0, 1, 2).
VOCAB: tuple[str, ...] = tuple(dict.fromkeys([PAD, EOS, UNK, *_WORDS]))
_VOCAB_SIZE = 256  # text-encoder embedding rows (>= len(VOCAB))
assert len(VOCAB) <= _VOCAB_SIZE


def make_word_tokenizer(words: tuple[str, ...] | list[str] = VOCAB, model_max_length: int = 512):
    """A T5-like word-level tokenizer built without the hub.

    Lower-cases, splits on whitespace/punctuation, maps unknown words to ``[UNK]``
    and appends ``</s>`` when ``add_special_tokens=True``; pads with ``[PAD]`` (id 0).
    Saves with ``save_pretrained`` and reloads with ``PreTrainedTokenizerFast.from_pretrained``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([PAD, EOS, UNK, *words]))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        model_max_length=model_max_length,
        padding_side="right",
    )


def _t5_config_kwargs(d_model: int) -> dict[str, Any]:
    return dict(
        vocab_size=_VOCAB_SIZE,
        d_model=d_model,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _umt5_encoder(d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**_t5_config_kwargs(d_model))).eval()


def _t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**_t5_config_kwargs(d_model))).eval()


# --------------------------------------------------------------------------- seeding


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's CPU RNG inside, restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _sub(seed: int, k: int) -> int:
    """Independent sub-seed for component ``k`` (so the two Wan experts differ)."""
    return (seed * 1_000_003 + k * 7_919) % (2**63)


def _save(pipe, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- Wan

_WAN_TEXT_DIM = 32


def _wan_transformer(in_channels: int, out_channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=_WAN_TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def _wan_vae_16():
    """Wan 2.1 VAE layout (A14B): z 16, 8x spatial, 4x temporal."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _wan_vae_48():
    """Wan 2.2 TI2V-5B VAE layout: z 48, 2x2 pixel patchify (12 channels in), 16x spatial."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    ).eval()


def _wan_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def make_wan_t2v_a14b(folder: Path, seed: int = 0) -> Path:
    """Wan 2.2 T2V-A14B layout: ``WanPipeline`` with two experts, ``boundary_ratio=0.875``."""
    from diffusers import WanPipeline

    with _seeded(_sub(seed, 0)):
        vae = _wan_vae_16()
    with _seeded(_sub(seed, 1)):
        text_encoder = _umt5_encoder(_WAN_TEXT_DIM)
    with _seeded(_sub(seed, 2)):
        transformer = _wan_transformer(16, 16)
    with _seeded(_sub(seed, 3)):
        transformer_2 = _wan_transformer(16, 16)
    pipe = WanPipeline(
        tokenizer=make_word_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875,
    )
    return _save(pipe, folder)


def make_wan_i2v_a14b(folder: Path, seed: int = 0) -> Path:
    """Wan 2.2 I2V-A14B layout: ``WanImageToVideoPipeline``, two experts, ``boundary_ratio=0.9``,
    no CLIP image encoder (``image_encoder=None, image_processor=None``), ``expand_timesteps=False``.

    The transformer input is ``cat([noise latents (16), mask (4), encoded image video (16)])`` = 36 channels.
    """
    from diffusers import WanImageToVideoPipeline

    z = 16
    with _seeded(_sub(seed, 0)):
        vae = _wan_vae_16()
    with _seeded(_sub(seed, 1)):
        text_encoder = _umt5_encoder(_WAN_TEXT_DIM)
    with _seeded(_sub(seed, 2)):
        transformer = _wan_transformer(2 * z + 4, z)
    with _seeded(_sub(seed, 3)):
        transformer_2 = _wan_transformer(2 * z + 4, z)
    pipe = WanImageToVideoPipeline(
        tokenizer=make_word_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        image_processor=None,
        image_encoder=None,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.9,
        expand_timesteps=False,
    )
    return _save(pipe, folder)


def make_wan_ti2v_5b(folder: Path, seed: int = 0) -> Path:
    """Wan 2.2 TI2V-5B layout: ``WanPipeline``, one transformer (48 -> 48 channels), 48-channel VAE,
    ``expand_timesteps=True`` (per-token timesteps), ``boundary_ratio=None``.

    Text-to-video: ``DiffusionPipeline.from_pretrained(folder)`` (a ``WanPipeline``; it has no
    ``image`` argument). Image-to-video: ``WanImageToVideoPipeline.from_pretrained(folder)`` on the
    same folder (image_encoder / image_processor load as None), then pass ``image=``; the first
    latent frame is replaced by the encoded image and its tokens get timestep 0.
    """
    from diffusers import WanPipeline

    with _seeded(_sub(seed, 0)):
        vae = _wan_vae_48()
    with _seeded(_sub(seed, 1)):
        text_encoder = _umt5_encoder(_WAN_TEXT_DIM)
    with _seeded(_sub(seed, 2)):
        transformer = _wan_transformer(48, 48)
    pipe = WanPipeline(
        tokenizer=make_word_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        transformer=transformer,
        transformer_2=None,
        boundary_ratio=None,
        expand_timesteps=True,
    )
    return _save(pipe, folder)


# --------------------------------------------------------------------------- LTX


def make_ltx(folder: Path, seed: int = 0) -> Path:
    """LTX-Video layout: ``LTXPipeline``, transformer patch (1,1,1), VAE 4x spatial / 4x temporal
    (the real VAE is 32x / 8x), 8 latent channels, ``FlowMatchEulerDiscreteScheduler`` with LTX's
    dynamic shifting."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    with _seeded(_sub(seed, 0)):
        vae = AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            decoder_inject_noise=(False, False, False, False, False),
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        ).eval()
    with _seeded(_sub(seed, 1)):
        text_encoder = _t5_encoder(32)
    with _seeded(_sub(seed, 2)):
        transformer = LTXVideoTransformer3DModel(
            in_channels=8,
            out_channels=8,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=4,
            attention_head_dim=8,
            cross_attention_dim=32,
            num_layers=2,
            caption_channels=32,
        ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=make_word_tokenizer(), transformer=transformer
    )
    return _save(pipe, folder)


# --------------------------------------------------------------------------- CogVideoX


def make_cogvideox(folder: Path, seed: int = 0) -> Path:
    """CogVideoX-2B layout: ``CogVideoXPipeline``, patch 2 (no temporal patch), sin-cos positional
    embeddings (no RoPE), text tokens concatenated before video tokens, ``CogVideoXDDIMScheduler``
    (v-prediction, zero-SNR, trailing)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    with _seeded(_sub(seed, 0)):
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        ).eval()
    with _seeded(_sub(seed, 1)):
        text_encoder = _t5_encoder(32)
    with _seeded(_sub(seed, 2)):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=32,
            num_layers=2,
            sample_width=4,
            sample_height=4,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=16,
        ).eval()
    scheduler = CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        snr_shift_scale=3.0,
    )
    pipe = CogVideoXPipeline(
        tokenizer=make_word_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return _save(pipe, folder)


# --------------------------------------------------------------------------- registry

FAMILIES: dict[str, Callable[..., Path]] = {
    "wan": make_wan_t2v_a14b,
    "wan-i2v": make_wan_i2v_a14b,
    "wan-ti2v": make_wan_ti2v_5b,
    "ltx": make_ltx,
    "cogvideox": make_cogvideox,
}

#: ``model_index.json`` ``_class_name`` each builder writes.
PIPELINE_CLASS: dict[str, str] = {
    "wan": "WanPipeline",
    "wan-i2v": "WanImageToVideoPipeline",
    "wan-ti2v": "WanPipeline",
    "ltx": "LTXPipeline",
    "cogvideox": "CogVideoXPipeline",
}

#: Families whose pipeline requires ``image=``.
NEEDS_IMAGE = frozenset({"wan-i2v"})
#: Families that can do image-to-video, and the diffusers class to load the folder with for it.
I2V_PIPELINE: dict[str, str] = {"wan-i2v": "WanImageToVideoPipeline", "wan-ti2v": "WanImageToVideoPipeline"}
ACCEPTS_IMAGE = frozenset(I2V_PIPELINE)

#: Plain generation kwargs per family (no generator / prompt / image); shape of the output is
#: ``(1, num_frames, 3, height, width)`` for output_type "pt" / "np" (np: channels last).
GEN_KWARGS: dict[str, dict[str, Any]] = {
    "wan": dict(num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=4.0, max_sequence_length=16),
    "wan-i2v": dict(
        num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=4.0, max_sequence_length=16
    ),
    "wan-ti2v": dict(
        num_frames=9, height=128, width=128, num_inference_steps=3, guidance_scale=4.0, max_sequence_length=16
    ),
    "ltx": dict(num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=3.0, max_sequence_length=16),
    "cogvideox": dict(
        num_frames=9, height=32, width=32, num_inference_steps=3, guidance_scale=6.0, max_sequence_length=16
    ),
}

PROMPT = "a cat dancing in the rain, cinematic close up shot"
NEGATIVE_PROMPT = "blurry, distorted, static, low quality, watermark"


def make_image(height: int, width: int, seed: int = 0):
    """A small deterministic RGB ``PIL.Image`` (smooth gradient + noise) for image-to-video."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0 * xx], axis=-1) * 200.0
    arr = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def call_kwargs(family: str, seed: int = 0, *, image: Any = None, **overrides) -> dict[str, Any]:
    """Full keyword arguments for ``pipe(**kwargs)``: GEN_KWARGS + prompt, negative prompt,
    a CPU generator seeded with ``seed`` and ``output_type="np"``. ``image``: None = only for
    families that need one, True = the default :func:`make_image`, False = none, anything else
    (a PIL image, array, tensor) is passed as is. Pass ``image=True`` for "wan-ti2v" when the folder
    was loaded with ``WanImageToVideoPipeline``."""
    kw: dict[str, Any] = dict(GEN_KWARGS[family])
    kw.update(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    if image is None:
        image = family in NEEDS_IMAGE
    if image is not False:
        if family not in ACCEPTS_IMAGE:
            raise ValueError(f"family {family!r} has no image-to-video pipeline")
        kw["image"] = make_image(kw["height"], kw["width"], seed=1234) if image is True else image
    kw.update(overrides)
    return kw


def build(family: str, folder: Path, seed: int = 0) -> Path:
    """``FAMILIES[family](folder, seed)``."""
    return FAMILIES[family](folder, seed)
