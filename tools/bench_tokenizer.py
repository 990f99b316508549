#!/usr/bin/env python3
"""A tokenizer for the random benchmark checkpoint of tools/bench_language_torch.py, which has
none: `dvd bench engine` runs the continuous-batching engine, which detokenises every generated
token, so every id the model can produce (0 .. vocab_size - 1) must decode.

Writes DIR/tokenizer.json: the Qwen-style byte-level BPE of tools/tiny_tokenizer.py (Qwen2 split
regex + ByteLevel, NFC, trained on the same small corpus), its vocabulary filled up to the model's
vocab_size with distinct word pieces (" ab", " ac", ...; byte-level encoded like real Qwen
entries, so each decodes to a space and 2-4 ASCII letters), and InternVL3.5's special tokens on
the last ids. Deterministic; reads vocab_size from DIR/config.json.

Usage:  .venv/bin/python tools/bench_tokenizer.py [--out /tmp/dvd-language-bench]
(requirements: the `tokenizers` package, as for tools/tiny_tokenizer.py)
"""

import argparse
import itertools
import json
import string
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_tokenizer import CORPUS, QWEN_SPLIT, SPECIALS  # noqa: E402


def bytes_to_unicode():
    # GPT-2's byte -> printable character table, as ByteLevel uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def word_pieces():
    # " ab", " ac", ..., " zz", " aaa", ...: distinct, valid UTF-8, like a real vocabulary's words.
    for n in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=n):
            yield " " + "".join(letters)


def build_tokenizer(vocab_size):
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size - len(SPECIALS), 1024), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 4, trainer)
    js = json.loads(tk.to_str())
    vocab = js["model"]["vocab"]
    first_special = vocab_size - len(SPECIALS)
    assert len(vocab) <= first_special, (len(vocab), first_special)
    table = bytes_to_unicode()
    pieces = word_pieces()
    while len(vocab) < first_special:
        entry = "".join(table[b] for b in next(pieces).encode())
        if entry not in vocab:
            vocab[entry] = len(vocab)
    tk = Tokenizer.from_str(json.dumps(js))
    tk.add_special_tokens(SPECIALS)
    for i, t in enumerate(SPECIALS):
        assert tk.token_to_id(t) == first_special + i, (t, tk.token_to_id(t))
    assert tk.get_vocab_size(with_added_tokens=True) == vocab_size
    return tk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/dvd-language-bench"),
                    help="the checkpoint directory (its config.json gives vocab_size)")
    args = ap.parse_args()
    config = json.loads((args.out / "config.json").read_text())
    vocab_size = config.get("vocab_size") or config["llm_config"]["vocab_size"]
    tk = build_tokenizer(vocab_size)
    # Every id decodes to text (no id is dropped as unknown).
    assert all(tk.id_to_token(i) is not None for i in range(vocab_size))
    tk.save(str(args.out / "tokenizer.json"))
    print(json.dumps({"tokenizer": str(args.out / "tokenizer.json"), "vocab_size": vocab_size,
                      "sample": tk.decode([1000, 5000, 20000, 31000])}))


if __name__ == "__main__":
    main()
