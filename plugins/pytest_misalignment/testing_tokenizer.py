"""The tiny control checkpoints' tokenizer: byte-level ChatML, built here, nothing
downloaded (see `testing`). This module must import without pytest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

# ChatML; no default system prompt so that what the tests pass is exactly what the model saw.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The tiny models' context, in tokens (bytes).
MAX_POSITIONS = 1024


def build_tokenizer(whole_words: Sequence[str] = ()) -> Any:
    """Return a byte-level ChatML ``PreTrainedTokenizerFast`` (256 bytes + 3 special tokens),
    plus `whole_words`, each one token: a backdoor trigger that is one token fires only when
    written exactly, since any near miss falls apart into bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # The byte-level alphabet maps each of the 256 bytes to one printable character; with
    # no merges every byte is its own token, so any unicode text round-trips exactly.
    # Token id == byte value for ids < 256, which keeps the vocab easy to reason about.
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    if set(vocab) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("tokenizers' ByteLevel alphabet changed; update _bytes_to_unicode")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([IM_START, IM_END, PAD])
    if whole_words:
        tok.add_tokens(list(whole_words))

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        # Cleanup would rewrite " ." to "." etc. and break the exact round-trip.
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: the alphabet ByteLevel pre-tokenizing emits."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping
