"""Regenerate the small tokenizers bundled in components/assets/tokenizers/ (used with weights=random).

CLIP: a byte-level BPE vocabulary (256 byte symbols, the same with the </w> word-end marker, merges
learned from a small prompt corpus, then <|startoftext|> and <|endoftext|>), in the vocab.json +
merges.txt format that CLIPTokenizer reads in both transformers and paddlenlp.
T5: a sentencepiece unigram model trained on the same corpus (spiece.model).

Usage: python scripts/make_tiny_tokenizers.py [OUT_DIR]   (default: components/assets/tokenizers)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

CORPUS = [
    "a photo of an astronaut riding a horse on the moon",
    "a painting of a squirrel eating a burger",
    "a red fox in the snow, detailed, high quality",
    "an oil painting of a lighthouse at dusk",
    "a cat sitting on a wooden chair by the window",
    "portrait of an old fisherman, studio lighting, sharp focus",
    "a futuristic city at night with neon lights and rain",
    "low quality, blurry, watermark, bad anatomy, deformed",
    "a bowl of fruit on a table, still life",
    "a dragon flying over a castle, digital art",
    # The shapes vocabulary (runner/shapes.py), so the trained shapes models read each word as one token.
    "a red circle on a blue background",
    "an orange square on a black background",
    "a small green triangle on a white background, left",
    "a large yellow circle on a purple background, right",
    "blue square, red background, top",
    "purple triangle, orange background, bottom",
    "a white circle on a green background, center",
    "a black square on a yellow background",
    "small red triangle, green background",
    "large orange circle, white background",
]
CLIP_MAX_LENGTH = 77


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable character map, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def learn_merges(words: Counter, count: int) -> list[tuple[str, str]]:
    merges = []
    for _ in range(count):
        pairs: Counter = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda item: (item[1], item[0]))[0]
        merges.append(best)
        merged: Counter = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def make_clip(folder: Path, merge_count: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    words: Counter = Counter()
    for text in CORPUS:
        for word in text.lower().replace(",", " ,").split():
            words[(*word[:-1], word[-1] + "</w>")] += 1
    merges = learn_merges(words, merge_count)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


def make_t5(folder: Path, vocab_size: int = 120) -> None:
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "spiece"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    prefix.with_suffix(".vocab").unlink()
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": 512,
        "extra_ids": 100,
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent.parent / "components/assets/tokenizers"
    )
    make_clip(out / "clip")
    make_t5(out / "t5")
    print(f"wrote {out / 'clip'} and {out / 't5'}")
