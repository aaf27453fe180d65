"""The demo's tokenizer and model architecture, shared by ``scripts/build_demo_model.py`` and the tests.

The trained weights live in ``swift_cispo/demo/model``; this module only says how the tokenizer is
made and what shape the network has (see the build script's docstring for why).
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

# System message on its own line, then the user's text; the assistant's reply is closed by <eos>. A generation prompt
# adds nothing, so a conversational prompt renders exactly like the plain-text prompt the model was trained on
# (e.g. [{"role": "user", "content": "12+7="}] -> "12+7=").
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
    "{%- else -%}{{ message['content'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of ``ByteLevel`` pre-tokenizers.

    Printable ASCII maps to itself; space becomes "Ġ", "\\n" becomes "Ċ", and so on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_tokenizer() -> Qwen2Tokenizer:
    """Character-level (byte-level) tokenizer: ids 0-2 are ``<pad>``, ``<eos>``, ``<unk>``, byte ``b`` is id ``b + 3``.

    Why a byte-level BPE with *no merges* rather than a ``WordLevel`` vocabulary of characters: for any checkpoint
    whose ``config.json`` says ``model_type: qwen2``, transformers 5's ``AutoTokenizer`` ignores the saved tokenizer
    class and rebuilds the backend as ``Qwen2Tokenizer`` (Qwen's split regex + ``ByteLevel`` pre-tokenizer and
    decoder) around whatever vocabulary ``tokenizer.json`` holds. A plain character vocabulary then silently loses
    every space and newline on reload. Building the tokenizer with that very class, on a vocabulary of the 256
    byte-level symbols and an empty merge list, gives one token per byte (so one per ASCII character) that reloads
    identically, and round-trips any UTF-8 text. ``<unk>`` is kept as a conventional special but is never produced:
    every byte has a token.
    """
    symbols = byte_to_unicode()
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *(symbols[b] for b in range(256))])}
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],  # no merges: every byte stays its own token, so a digit is always exactly one token
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        bos_token=None,  # prompts are fed as-is
        chat_template=CHAT_TEMPLATE,
        # Spaces are real characters here; the legacy clean-up would delete those before punctuation.
        clean_up_tokenization_spaces=False,
        model_max_length=64,
    )


def build_model(tokenizer: Qwen2Tokenizer, hidden: int = 128, layers: int = 2, max_positions: int = 64) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2; the defaults are the demo's: 2 layers sized for CPU RL (~0.36M parameters).

    Larger ``hidden`` (a multiple of 64) and ``layers`` give the same family at other sizes (the benchmarks).
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=max_positions,  # demo: "19+19=" + "38" + <eos> is 9 tokens; 64 leaves room for chat templates
        tie_word_embeddings=True,  # the embedding matrix is a large share of such a small model
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,  # prompts are fed as-is, with no BOS
        dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def save_random_model(path, hidden: int = 128, layers: int = 2, max_positions: int = 64, seed: int = 0, dtype=None):
    """:func:`build_model` with the demo's tokenizer, seeded, saved with the tokenizer into ``path``
    (in ``dtype``, a torch dtype, when given; else in the default dtype)."""
    import torch

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = build_model(tokenizer, hidden, layers, max_positions)
    if dtype is not None:
        model.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(path)
    return path

