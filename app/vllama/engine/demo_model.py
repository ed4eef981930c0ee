"""The demo model: a tiny Llama built offline in seconds, so vllama runs with no model hub.

Its weights are random, so its text is gibberish; everything on the serving path (tokenizer,
chat template, vLLM engine, streaming, usage counts) is real. Built with `tokenizers` and
`transformers` (both come with vLLM); importing this module does not import them.

Shape notes: vLLM's CPU attention kernels refuse head_dim 16, so hidden 128 / 2 heads
gives head_dim 64.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vllama.demo import DEMO_MODEL_NAME, MARKER_FILE, default_demo_dir

# Bump when the recipe changes, so a cached build is rebuilt.
RECIPE_VERSION = "1"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] if message['content'] is string else '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog.
vllama serves open language models with the Ollama API in front of vLLM.
A cat sits on the mat and a kitten rests on a rug.
Streaming answers arrive one token at a time, as newline-delimited JSON.
Operators run it with docker compose on a GPU host or with systemd on bare metal.
Why is the sky blue? Because air scatters short wavelengths of sunlight more.
Tell me a story about a lighthouse keeper who counts ships at night.
def add(a, b):
    return a + b
{"name": "get_weather", "arguments": {"city": "Paris"}}
1 2 3 4 5 6 7 8 9 10 hello world, bonjour le monde, hola mundo.
"""


def _fingerprint(seed: int = 0) -> str:
    recipe = RECIPE_VERSION + CHAT_TEMPLATE + _CORPUS + ("" if seed == 0 else f"seed={seed}")
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def is_built(path: Path, seed: int = 0) -> bool:
    """A build of the current recipe (with this seed) is at `path`."""
    marker = path / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("fingerprint") == _fingerprint(seed))
    except (OSError, ValueError):
        return False


def build_demo_model(path: Path | None = None, *, force: bool = False, seed: int = 0) -> Path:
    """Build (or reuse) the demo model at `path`; return the directory vLLM can load.
    Another `seed` gives another model of the same shape (tests need two that differ)."""
    path = default_demo_dir() if path is None else path
    if is_built(path, seed) and not force:
        return path
    path.mkdir(parents=True, exist_ok=True)

    # Imported here: only building needs them (they come with vLLM), and they are loosely
    # typed, so they are used as plain modules.
    import importlib

    torch: Any = importlib.import_module("torch")
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers: Any = importlib.import_module("transformers")
    Tokenizer, decoders, models = tokenizers.Tokenizer, tokenizers.decoders, tokenizers.models
    pre_tokenizers, trainers = tokenizers.pre_tokenizers, tokenizers.trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        dtype="bfloat16",
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    (path / MARKER_FILE).write_text(
        json.dumps({"name": DEMO_MODEL_NAME, "fingerprint": _fingerprint(seed)}) + "\n"
    )
    return path


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the vllama demo model.")
    parser.add_argument("path", nargs="?", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(build_demo_model(args.path, force=args.force))


if __name__ == "__main__":
    main()
