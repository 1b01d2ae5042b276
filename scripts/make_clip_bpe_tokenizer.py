"""Derive the full CLIP tokenizer (vocab.json + merges.txt, 49408 tokens) from OpenAI's BPE file.

Single-file checkpoints carry no tokenizer, so the runner ships the one SD 1.x, 2.x and XL were trained with:
OpenAI CLIP's byte-level BPE (`bpe_simple_vocab_16e6.txt.gz`, MIT licence; the open_clip package ships the same
file). The vocabulary is built exactly as CLIP's own `SimpleTokenizer` builds it, which is also how the
vocab.json / merges.txt of the model hub's CLIPTokenizer were made: the 256 byte symbols (in CLIP's
printable-first order), the same with the `</w>` word-end marker, the first 49152 - 256 - 2 merges joined,
then `<|startoftext|>` and `<|endoftext|>`.

Usage: python scripts/make_clip_bpe_tokenizer.py SOURCE [OUT_DIR]
  SOURCE: bpe_simple_vocab_16e6.txt.gz, or an open_clip_torch wheel (`pip download --no-deps open_clip_torch`)
  OUT_DIR: default components/assets/tokenizers/clip_bpe
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2
MAX_LENGTH = 77
# Token ids the model hub's openai/clip-vit-large-patch14 tokenizer gives; the derived vocabulary must agree.
KNOWN_IDS = {"!": 0, "a</w>": 320, "photo</w>": 1125, "of</w>": 539, "cat</w>": 2368,
             "<|startoftext|>": 49406, "<|endoftext|>": 49407}  # fmt: skip


def bytes_to_unicode() -> list[str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character map, in CLIP's order: printable bytes first."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    order, chars, extra = printable[:], [chr(b) for b in printable], 0
    for byte in range(256):
        if byte not in printable:
            order.append(byte)
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def read_bpe(source: Path) -> str:
    if source.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(source) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(BPE_NAME))
            return gzip.decompress(wheel.read(name)).decode("utf-8")
    return gzip.decompress(source.read_bytes()).decode("utf-8")


def derive(text: str) -> tuple[dict[str, int], list[str]]:
    merges = text.split("\n")[1 : MERGE_COUNT + 1]  # line 0 is the file's version line
    symbols = bytes_to_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        raise SystemExit(f"derived {len(vocab)} distinct tokens of {len(tokens)}; expected 49408")
    wrong = {t: (vocab.get(t), i) for t, i in KNOWN_IDS.items() if vocab.get(t) != i}
    if wrong:
        raise SystemExit(f"derived ids differ from CLIP's: {wrong}")
    return vocab, merges


def write(folder: Path, vocab: dict[str, int], merges: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",  # SD 1.x's; SD 2.x and SDXL's second tokenizer pad with "!" (model YAMLs)
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else Path(__file__).resolve().parent.parent / "components/assets/tokenizers/clip_bpe"
    )
    vocab, merges = derive(read_bpe(Path(sys.argv[1])))
    write(out, vocab, merges)
    print(f"wrote {out}: {len(vocab)} tokens, {len(merges)} merges")
