"""dq-tiny's text side: a word-level tokenizer over the world's caption grammar and a small
transformer encoder. Unknown words map to <unk> and are reported, so `dq generate` can warn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z]+")


class WordTokenizer:
    def __init__(self, words: list[str], max_length: int = 16):
        self.vocab = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.words(text) if w not in self.index]

    def words_past_limit(self, text: str) -> list[str]:
        """The words a caption loses to truncation at `max_length`."""
        return self.words(text)[self.max_length:]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] and a mask of real tokens [B, L]; long captions are truncated."""
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.index.get(w, 1) for w in self.words(text)][: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, ids != 0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"vocab": self.vocab, "max_length": self.max_length}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "WordTokenizer":
        data = json.loads(path.read_text())
        tok = cls(data["vocab"], data["max_length"])
        if tok.vocab != data["vocab"]:
            raise ValueError(f"{path}: vocabulary is not in canonical order")
        return tok


class TinyTextEncoder(ModelMixin, ConfigMixin):
    """Token embeddings + learned positions + a pre-norm transformer encoder. Padding positions
    come out as zeros, as Wan's own pipeline zeroes the padded part of its UMT5 embeddings."""

    @register_to_config
    def __init__(self, vocab_size: int = 64, max_length: int = 16, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position[: ids.shape[1]]
        # An all-padding row (the empty negative prompt) would make attention softmax over nothing.
        key_padding = ~mask & mask.any(dim=1, keepdim=True)
        x = self.encoder(x, src_key_padding_mask=key_padding)
        return self.norm(x) * mask.unsqueeze(-1).to(x.dtype)
