"""The vocabulary files of slow tokenizers, rebuilt from a `tokenizer.json` (the `tokenizers` library's format).

transformers >= 5 saves a tokenizer folder as tokenizer.json + tokenizer_config.json only: no vocab.json and
merges.txt (CLIP's BPE), no spiece.model (T5's SentencePiece unigram). The Paddle engine's tokenizers
(paddlenlp's CLIPTokenizer and T5Tokenizer) and transformers 4's slow classes read those files, so a pipeline
directory saved by diffusers with transformers 5 would not load there. tokenizer.json holds the same model, and
this module writes the files back from it:

- BPE (CLIP): vocab.json is the model's vocabulary, merges.txt its merges in rank order (the "#version" header
  line the files have always had, then one "left right" pair per line).
- Unigram (T5): spiece.model is a SentencePiece ModelProto with the pieces and scores in id order, the
  normalizer's precompiled character map and the whitespace rules of the pre-tokenizer. The `<extra_id_N>`
  sentinels transformers appends to the vocabulary are left out: T5Tokenizer adds them back itself (extra_ids).

Only the shapes these converters write are accepted; anything else is refused with one line naming what
differs, since a tokenizer rebuilt from a guess would give other token ids without failing.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import ConfigError

TOKENIZER_JSON = "tokenizer.json"
# What slow tokenizers read from tokenizer_config.json besides their files (the special tokens and the length).
CONFIG_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length", "extra_ids")
_EXTRA_ID = re.compile(r"<extra_id_\d+>")


def slow_tokenizer_files(cls: Any) -> dict[str, str]:
    """The files a slow tokenizer class reads (argument name -> file name); {} for a class that reads
    tokenizer.json itself (transformers' fast classes, and every class of transformers >= 5)."""
    names = getattr(cls, "resource_files_names", None) or getattr(cls, "vocab_files_names", None) or {}
    return {} if "tokenizer_file" in names else dict(names)


def needs_rebuild(folder: Path, file_names: Mapping[str, str] | Any) -> bool:
    """True when `folder` has a tokenizer.json but lacks one of the files a slow tokenizer reads."""
    names = list(file_names.values()) if isinstance(file_names, Mapping) else list(file_names)
    return (folder / TOKENIZER_JSON).is_file() and any(not (folder / name).is_file() for name in names)


def read_tokenizer_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / TOKENIZER_JSON).read_text(encoding="utf-8"))


def slow_config(folder: Path) -> dict[str, Any]:
    """The entries of the folder's tokenizer_config.json that slow tokenizers take (special tokens as strings)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    out = {}
    for key in CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, dict):  # an AddedToken written out: its content is the token
            value = value.get("content")
        if value is not None:
            out[key] = value
    return out


def write_bpe_files(tokenizer: Mapping[str, Any], out_dir: Path) -> None:
    """vocab.json and merges.txt of a byte-level BPE tokenizer.json (CLIP's)."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"tokenizer.json holds a {model.get('type')} model; vocab.json + merges.txt need BPE")
    merges = [" ".join(m) if isinstance(m, list | tuple) else m for m in model.get("merges", [])]
    bad = [m for m in merges if len(m.split(" ")) != 2]
    if bad:
        raise ConfigError(f"tokenizer.json has a merge that is not one pair of symbols: {bad[0]!r}")
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


def _sentencepiece_rules(tokenizer: Mapping[str, Any]) -> tuple[bytes, bool, bool]:
    """(precompiled character map, add a dummy prefix, collapse whitespace) from the normalizer and
    pre-tokenizer that transformers' SentencePiece converter writes."""
    normalizer = tokenizer.get("normalizer") or {}
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    charsmap = b""
    collapse = False
    for part in parts:
        kind = part.get("type") if part else None
        if kind is None:
            continue
        if kind == "Precompiled":
            charsmap = base64.b64decode(part.get("precompiled_charsmap") or "")
        elif kind == "Replace" and part.get("content") == " " and (part.get("pattern") or {}).get("Regex") == " {2,}":
            collapse = True  # newer converters spell SentencePiece's remove_extra_whitespaces this way
        else:
            raise ConfigError(f"tokenizer.json: normalizer {kind} has no SentencePiece equivalent")
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps if s]
    if "WhitespaceSplit" in kinds:
        collapse = True
    metaspace = [s for s in steps if s and s.get("type") == "Metaspace"]
    unknown = sorted(set(kinds) - {"WhitespaceSplit", "Metaspace"})
    if unknown or len(metaspace) != 1 or metaspace[0].get("replacement", "\u2581") != "\u2581":
        raise ConfigError(f"tokenizer.json: pre-tokenizer {kinds} is not SentencePiece's (one Metaspace with '\u2581')")
    scheme = metaspace[0].get("prepend_scheme")
    dummy_prefix = metaspace[0].get("add_prefix_space", True) if scheme is None else scheme != "never"
    return charsmap, dummy_prefix, collapse


def sentencepiece_model(tokenizer: Mapping[str, Any], config: Mapping[str, Any]) -> bytes:
    """A serialized SentencePiece unigram model equivalent to a T5-style tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = tokenizer.get("model") or {}
    if model.get("type") != "Unigram":
        raise ConfigError(f"tokenizer.json holds a {model.get('type')} model; spiece.model needs Unigram")
    if model.get("byte_fallback"):
        raise ConfigError("tokenizer.json: a unigram model with byte fallback has no rebuilt spiece.model here")
    vocab = [(str(piece), float(score)) for piece, score in model["vocab"]]
    # The sentinels transformers appends after the SentencePiece vocabulary (T5Tokenizer adds them back).
    while vocab and _EXTRA_ID.fullmatch(vocab[-1][0]):
        vocab.pop()
    if any(_EXTRA_ID.fullmatch(piece) for piece, _ in vocab):
        raise ConfigError("tokenizer.json: <extra_id_*> tokens inside the vocabulary, not after it")
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    unk_id = model.get("unk_id")
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    charsmap, dummy_prefix, collapse = _sentencepiece_rules(tokenizer)

    proto = pb.ModelProto()
    for i, (piece, score) in enumerate(vocab):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, score
        if i == unk_id:
            entry.type = pb.ModelProto.SentencePiece.UNKNOWN
        elif piece in special:
            entry.type = pb.ModelProto.SentencePiece.CONTROL
        else:
            entry.type = pb.ModelProto.SentencePiece.NORMAL
    trainer = proto.trainer_spec
    trainer.model_type = pb.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(vocab)
    trainer.hard_vocab_limit = False
    for name, default in (("unk", "<unk>"), ("bos", None), ("eos", "</s>"), ("pad", "<pad>")):
        token = config.get(f"{name}_token", default)
        token_id = ids.get(token, -1) if token is not None else -1
        if name == "unk" and unk_id is not None:
            token_id = unk_id
        setattr(trainer, f"{name}_id", token_id)
        if token_id >= 0:
            setattr(trainer, f"{name}_piece", vocab[token_id][0])
    normalizer = proto.normalizer_spec
    normalizer.name = "nmt_nfkc" if charsmap else "identity"
    normalizer.precompiled_charsmap = charsmap
    normalizer.add_dummy_prefix = dummy_prefix
    normalizer.remove_extra_whitespaces = collapse
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def write_slow_files(folder: Path, out_dir: Path, file_names: Mapping[str, str]) -> dict[str, Any]:
    """Write the files named in `file_names` (a slow tokenizer's `vocab_files_names`) rebuilt from the folder's
    tokenizer.json into `out_dir`; returns the slow tokenizer's keyword arguments from tokenizer_config.json."""
    tokenizer = read_tokenizer_json(folder)
    config = slow_config(folder)
    names = set(file_names.values())
    if names == {"vocab.json", "merges.txt"}:
        write_bpe_files(tokenizer, out_dir)
    elif names == {"spiece.model"}:
        (out_dir / "spiece.model").write_bytes(sentencepiece_model(tokenizer, config))
    else:
        raise ConfigError(f"{folder}: no rebuild of {sorted(names)} from tokenizer.json")
    return config


_REBUILT_ROOT: Path | None = None


def rebuilt_slow_files(folder: Path, file_names: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    """A folder holding the slow files rebuilt from `folder`'s tokenizer.json, and the tokenizer's keyword
    arguments. The folder lives until the process exits: slow tokenizers may reopen their files (T5's
    SentencePiece model is reloaded when the tokenizer is copied or unpickled)."""
    global _REBUILT_ROOT
    if _REBUILT_ROOT is None:
        _REBUILT_ROOT = Path(tempfile.mkdtemp(prefix="diffusion-runner-tokenizers-"))
        atexit.register(shutil.rmtree, _REBUILT_ROOT, True)
    digest = hashlib.sha256((folder / TOKENIZER_JSON).read_bytes())
    digest.update(json.dumps(sorted(file_names.values())).encode())
    out_dir = _REBUILT_ROOT / digest.hexdigest()[:16]
    out_dir.mkdir(exist_ok=True)
    return out_dir, write_slow_files(folder, out_dir, file_names)
