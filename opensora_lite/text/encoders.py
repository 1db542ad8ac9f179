"""Frozen text encoders: T5 (token sequence -> txt_in) and CLIP (pooled vector -> vector_in).

Real weights load from local folders (`path`); nothing is downloaded. With `tiny` set instead, a small
random model is built from that transformers config under a fixed seed, so every process and every
stage sees the same encoder, with a tokenizer that needs no vocabulary file (bytes, or hashed words).
The token encoder is T5 or UMT5 (Wan's UMT5-XXL), chosen by the folder's config.json `model_type`
(`tiny`: its `model_type` key, t5 unless set).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from packaging.version import Version
from torch import Tensor, nn

from opensora_lite.config.schema import TextEncoderConfig, TextModelConfig
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError


def _load(kind: str, cfg: TextModelConfig) -> tuple[nn.Module, object]:
    import transformers as tf

    path = Path(cfg.path)
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise CheckpointError(
            f"text_encoder.{kind}.path: {path} {problem} (a local folder with config.json, weights and "
            "tokenizer files: nothing is downloaded)"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(f"text_encoder.{kind}.path: {path} has no config.json (a transformers model folder)")
    if kind == "t5":
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "t5")
        cls = tf.UMT5EncoderModel if model_type == "umt5" else tf.T5EncoderModel  # UMT5: a bias in every layer
    else:
        cls = tf.CLIPTextModel
    # a diffusers pipeline's text_encoder/ keeps its tokenizer in the sibling tokenizer/
    vocab = path.parent / "tokenizer" if path.name == "text_encoder" and (path.parent / "tokenizer").is_dir() else path
    dtype_kw = "dtype" if Version(tf.__version__) >= Version("4.56") else "torch_dtype"  # renamed in 4.56
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(vocab, local_files_only=True)
        model = cls.from_pretrained(path, local_files_only=True, **{dtype_kw: DTYPES[cfg.dtype]})
    except (OSError, ValueError) as e:  # weights or tokenizer files missing or unreadable
        detail = " ".join(str(e).split())
        raise CheckpointError(f"text_encoder.{kind}.path: cannot load from {path}: {detail}") from e
    width = model.config.d_model if kind == "t5" else model.config.hidden_size
    if width != cfg.dim:
        raise CheckpointError(f"text_encoder.{kind}.dim: {cfg.dim}, but the model at {path} outputs {width}")
    return model, tokenizer


class WordTokenizer:
    """Whole words (and punctuation marks) hashed into a fixed vocabulary: pad 0, eos 1, words 2...

    The tiny encoders' alternative to bytes. Like a real subword tokenizer on common words, each word is
    one token, so a caption's words keep fixed, distinct positions and embeddings (with bytes, a word's
    bytes shift with the length of every word before it). Deterministic in every process (crc32), needs
    no vocabulary file, takes any text; distinct words can share an id only by hash collision.
    """

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, vocab_size: int):
        if vocab_size < 3:
            raise ValueError(f"tokenizer: words needs vocab_size >= 3, got {vocab_size}")
        self.vocab_size = vocab_size

    def word_id(self, word: str) -> int:
        import zlib

        return 2 + zlib.crc32(word.lower().encode()) % (self.vocab_size - 2)

    def ids(self, text: str) -> list[int]:
        import re

        return [self.word_id(w) for w in re.findall(r"\w+|[^\w\s]", text)]

    def __call__(self, texts: list[str], max_length: int, **_) -> "_Ids":
        rows = []
        for text in texts:
            row = self.ids(text)[: max_length - 1] + [self.eos_token_id]
            rows.append(row + [self.pad_token_id] * (max_length - len(row)))
        return _Ids(torch.tensor(rows, dtype=torch.long))


class _Ids:
    def __init__(self, input_ids: Tensor):
        self.input_ids = input_ids


def _tokenizer(kind: str, cfg: TextModelConfig):
    import transformers as tf

    if cfg.tokenizer == "bytes":
        return tf.ByT5Tokenizer()
    if cfg.tokenizer == "words":
        return WordTokenizer(int(cfg.tiny["vocab_size"]))
    raise ValueError(f"text_encoder.{kind}.tokenizer: {cfg.tokenizer!r} is not one of bytes, words")


def tiny_token_encoder(tiny: dict) -> nn.Module:
    """A random T5 encoder from transformers config kwargs, UMT5 where they say `model_type: umt5`."""
    import transformers as tf

    kwargs = dict(tiny)
    if kwargs.pop("model_type", "t5") == "umt5":
        return tf.UMT5EncoderModel(tf.UMT5Config(**kwargs))
    return tf.T5EncoderModel(tf.T5Config(**kwargs))


def _build(kind: str, cfg: TextModelConfig, seed: int) -> tuple[nn.Module, object]:
    import transformers as tf

    if cfg.path:
        return _load(kind, cfg)
    if not cfg.tiny:
        raise ValueError(f"text_encoder.{kind}: set either path (local weights) or tiny (a config to build)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "t5":
            model = tiny_token_encoder(cfg.tiny)
        else:
            # Both tokenizers: pad 0, eos 1; CLIP pools the hidden state at the first eos token.
            model = tf.CLIPTextModel(tf.CLIPTextConfig(pad_token_id=0, eos_token_id=1, bos_token_id=0, **cfg.tiny))
    return model.to(DTYPES[cfg.dtype]), _tokenizer(kind, cfg)


class TextEncoders(nn.Module):
    """T5 + CLIP, frozen. `encode(texts)` -> (t5 [B, L, D], clip [B, D]); `empty` caches ("")."""

    def __init__(self, cfg: TextEncoderConfig, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.t5, self.t5_tokenizer = _build("t5", cfg.t5, cfg.init_seed)
        self.clip, self.clip_tokenizer = _build("clip", cfg.clip, cfg.init_seed + 1)
        self.requires_grad_(False).eval().to(device)
        self._empty: tuple[Tensor, Tensor] | None = None
        self._memo: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()  # LRU of per-caption outputs

    @property
    def device(self) -> torch.device:
        return next(self.t5.parameters()).device

    def _ids(self, tokenizer, texts: list[str], max_length: int) -> Tensor:
        out = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        return out.input_ids.to(self.device)

    @torch.no_grad()
    def encode_native(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """(T5 tokens [B, L, D], CLIP pooled [B, D]) in each encoder's own dtype, not memoised.

        `encode` is this followed by `.float()`: storing these (a latent cache) and converting at training
        time gives bitwise what `encode` returns for the same batch.
        """
        # No attention mask on T5, as Flux and Open-Sora: padding tokens are part of the sequence. With
        # t5.mask_padding (Wan) the encoder sees only the caption and the padding positions are zeros.
        ids = self._ids(self.t5_tokenizer, texts, self.cfg.t5.max_length)
        if self.cfg.t5.mask_padding:
            keep = ids != self.t5_tokenizer.pad_token_id
            t5 = self.t5(input_ids=ids, attention_mask=keep.long()).last_hidden_state
            t5 = t5.masked_fill(~keep[..., None], 0.0)
        else:
            t5 = self.t5(input_ids=ids).last_hidden_state
        clip = self.clip(input_ids=self._ids(self.clip_tokenizer, texts, self.cfg.clip.max_length)).pooler_output
        return t5, clip

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        t5, clip = self.encode_native(texts)
        return t5.float(), clip.float()

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """(T5 tokens [B, L, D], CLIP pooled [B, D]) for a batch of captions, float32."""
        if not self.cfg.cache_size:
            return self._encode(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            t5, clip = self._encode(todo)
            for i, text in enumerate(todo):
                self._memo[text] = (t5[i].clone(), clip[i].clone())  # not views pinning the batch
        for text in texts:
            self._memo.move_to_end(text)
        out = [self._memo[t] for t in texts]
        while len(self._memo) > self.cfg.cache_size:
            self._memo.popitem(last=False)
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def empty(self) -> tuple[Tensor, Tensor]:
        """Embeddings of the empty prompt (used for CFG dropout and the unconditional branch), once."""
        if self._empty is None:
            self._empty = self.encode([""])
        return self._empty

    def keep_empty_with(self, path: Path, write: bool) -> None:
        """Cache the empty-prompt embeddings with the run: read them from `path` when it holds those of
        these same encoder settings, else compute them once and (where `write`) save them there."""
        import dataclasses
        import json

        from safetensors import safe_open
        from safetensors.torch import save_file

        settings = json.dumps(dataclasses.asdict(self.cfg), sort_keys=True, default=str)
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("text_encoder") == settings:
                    self._empty = (f.get_tensor("t5").to(self.device), f.get_tensor("clip").to(self.device))
                    return
        t5, clip = self.empty()
        if write:
            tmp = path.with_name(path.name + ".partial")
            save_file({"t5": t5.cpu(), "clip": clip.cpu()}, str(tmp), metadata={"text_encoder": settings})
            tmp.replace(path)

    def train(self, mode: bool = True) -> "TextEncoders":
        return super().train(False)  # always frozen
