"""A tiny Qwen-style byte-level BPE tokenizer with InternVL3.5's special tokens at fixed ids,
shared by the fixture scripts (tools/make_language_fixtures.py, tools/make_text_fixtures.py).

build_tokenizer() returns a `tokenizers.Tokenizer`: BPE trained on a small corpus (Qwen2 split
regex + ByteLevel, NFC), vocabulary padded with unreachable entries so the special tokens land on
ids VOCAB - len(SPECIALS) .. VOCAB - 1 in the order of SPECIALS. Deterministic.
"""

import json

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

VOCAB = 512
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
    "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<think>", "</think>",
]
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
CORPUS = [
    "Describe this image in detail.", "What is shown in the picture?", "The quick brown fox jumps over the lazy dog.",
    "A cat sits on the mat.", "user", "assistant", "system", "Hello world!", "Image-1: Image-2: Frame1: Frame2:",
    "You are an AI assistant that rigorously follows this response protocol.", "think answer question",
    "naïve café — 你好，世界 🙂", "1234567890 + - * / = ( ) [ ] { }",
]


def special_id(token):
    return VOCAB - len(SPECIALS) + SPECIALS.index(token)


def build_tokenizer(corpus=None):
    """The tokenizer, trained on `corpus` (default: CORPUS, which the fixtures use)."""
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPECIALS) - 40, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 4 if corpus is None else corpus, trainer)
    js = json.loads(tk.to_str())
    vocab = js["model"]["vocab"]
    first_special = VOCAB - len(SPECIALS)
    assert len(vocab) <= first_special, len(vocab)
    for i in range(len(vocab), first_special):
        vocab[f"<|fill_{i}|>"] = i
    tk = Tokenizer.from_str(json.dumps(js))
    tk.add_special_tokens(SPECIALS)
    for t in SPECIALS:
        assert tk.token_to_id(t) == special_id(t), (t, tk.token_to_id(t))
    return tk
