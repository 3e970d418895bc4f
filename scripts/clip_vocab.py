"""CLIP's BPE vocabulary, built exactly as OpenAI's `simple_tokenizer.py` builds it.

Importable helper for the fixture scripts (no third-party dependencies):

    from clip_vocab import load_merges, build_vocab, write_vocab_files

The merge list is `/work/shared/clip/bpe_simple_vocab_16e6.txt.gz` by default (override with the
environment variable CLIP_BPE_PATH or the `bpe_path` argument). Its first line is a header; the
next 48,894 lines are merges (OpenAI keeps `lines[1:49152-256-2+1]`).

Vocabulary order (49,408 entries):
    0..255       the 256 byte-unicode characters, in `bytes_to_unicode()` order
    256..511     the same characters with "</w>" appended
    512..49405   one token per merge (the concatenation of its two halves)
    49406        "<|startoftext|>"
    49407        "<|endoftext|>"

Run as a script to write vocab.json + merges.txt into a folder:
    python3 scripts/clip_vocab.py OUT_DIR
"""

import gzip
import json
import os
import sys

DEFAULT_BPE_PATH = "/work/shared/clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894
VOCAB_SIZE = 49408
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"


def bpe_path_default():
    return os.environ.get("CLIP_BPE_PATH", DEFAULT_BPE_PATH)


def bytes_to_unicode():
    """OpenAI's (and GPT-2's) reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    cs = [chr(n) for n in cs]
    return dict(zip(bs, cs))


def load_merges(bpe_path=None):
    """The 48,894 merges as (left, right) tuples, in rank order."""
    bpe_path = bpe_path or bpe_path_default()
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    merges = [tuple(m.split()) for m in merges]
    assert len(merges) == NUM_MERGES, len(merges)
    assert all(len(m) == 2 for m in merges)
    return merges


def build_vocab(merges=None):
    """List of 49,408 token strings; the index is the token id."""
    if merges is None:
        merges = load_merges()
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend([SOT, EOT])
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    assert len(set(vocab)) == VOCAB_SIZE, "duplicate tokens"
    return vocab


def write_vocab_files(out_dir, bpe_path=None):
    """Write Hugging Face style vocab.json and merges.txt into out_dir.

    merges.txt starts with "#version: 0.2" and then has one "left right" line per merge.
    Returns (vocab_json_path, merges_txt_path).
    """
    merges = load_merges(bpe_path)
    vocab = build_vocab(merges)
    os.makedirs(out_dir, exist_ok=True)
    vocab_path = os.path.join(out_dir, "vocab.json")
    merges_path = os.path.join(out_dir, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab_path, merges_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    v, m = write_vocab_files(sys.argv[1])
    print(f"wrote {v}")
    print(f"wrote {m}")
