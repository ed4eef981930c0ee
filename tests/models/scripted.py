"""A tiny model that follows a script: known, deterministic answers from a real vLLM engine.

The demo model is random, so its text never holds a tool call or a reasoning trace. This one
answers with fixed scripts, chosen by its chat template, so the engine's tool-call parser
(hermes) and reasoning parser (qwen3) act on real output, streamed and not.

How it works (a one-layer Llama, built in a second):

- every script piece is one added token of the tokenizer, so each script is a fixed token
  sequence with no token used twice;
- the layer's attention and MLP weights are zero, so the hidden state at each position is the
  embedding of that position's token alone: the next token depends on the current token only;
- each token that leads somewhere has an embedding of its own (a basis vector); all other
  tokens share one more basis vector;
- the untied `lm_head` maps each token's vector to its successor with a large logit (every
  other logit is 0), and the shared vector to the first token of the plain answer. Greedy and
  sampled decoding alike (temperature up to ~2) follow the script, which ends in EOS;
- the chat template ends the prompt with a marker token that selects the script from the
  conversation: a tool turn, a tool result matched by id, thinking on or off, the level.

What it cannot show: anything that depends on understanding the prompt. Its answers do not
change with the question, only with what the template sees (tools offered, the last
message's role and ids, `enable_thinking`, `reasoning_effort`, images).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "vllama-scripted"

EOS = "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
CALL_START, CALL_END = "<tool_call>", "</tool_call>"

# The tool the script calls, and its arguments (a string and an integer: JSON types survive).
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris", "days": 2}


@dataclass(frozen=True)
class Script:
    marker: str  # the special token the template ends the prompt with ("" = any other token)
    pieces: tuple[str, ...]  # what follows, one added token each, then EOS


ANSWER = Script("", ("The answer", " is 42."))
# <think> is in the prompt (the template opens the block), as Qwen3's thinking templates do.
THINK = Script(THINK_START, ("Let me", " think", " step by step.", THINK_END, *ANSWER.pieces))
THINK_LOW = Script("<|script:think_low|>", ("Quick.", THINK_END, *ANSWER.pieces))
THINK_HIGH = Script(
    "<|script:think_high|>",
    ("First,", " consider", " every", " case.", " Then", " conclude.", THINK_END, *ANSWER.pieces),
)
_CALL_JSON = ('\n{"name": "get_weather", ', '"arguments": {"city": "Paris", ', '"days": 2}}\n')
TOOL_CALL = Script("<|script:call|>", (CALL_START, *_CALL_JSON, CALL_END))
# Thinking and tools: a short reasoning, ended by the call itself (qwen3's grammar allows it).
THINK_CALL = Script("<|script:think_call|>", ("I need", " the weather.", *TOOL_CALL.pieces))
TOOL_RESULT = Script("<|script:result|>", ("It is", " sunny", " in Paris."))
UNMATCHED_RESULT = Script("<|script:unmatched|>", ("That tool result", " answers no call."))
IMAGE = Script("<|script:image|>", ("I see", " an image."))

SCRIPTS = (ANSWER, THINK, THINK_LOW, THINK_HIGH, TOOL_CALL, THINK_CALL, TOOL_RESULT)
SCRIPTS += (UNMATCHED_RESULT, IMAGE)


def text_of(*pieces: str) -> str:
    return "".join(pieces)


REASONING = {
    "medium": text_of(*THINK.pieces[: THINK.pieces.index(THINK_END)]),
    "low": text_of(*THINK_LOW.pieces[: THINK_LOW.pieces.index(THINK_END)]),
    "high": text_of(*THINK_HIGH.pieces[: THINK_HIGH.pieces.index(THINK_END)]),
}
ANSWER_TEXT = text_of(*ANSWER.pieces)
CALL_REASONING = text_of(*THINK_CALL.pieces[:2])
RESULT_TEXT = text_of(*TOOL_RESULT.pieces)
UNMATCHED_TEXT = text_of(*UNMATCHED_RESULT.pieces)
IMAGE_TEXT = text_of(*IMAGE.pieces)

# The template's choice of script, from what vLLM passes it. Tool messages are matched to the
# assistant's calls by id: only a result whose tool_call_id names one of them gets TOOL_RESULT.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(call_ids=[], images=0, text='') -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor -%}"
    "{{ '</tools><|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set ns.text = message['content'] if message['content'] is string else '' -%}"
    "{%- if message['content'] is not string and message['content'] is not none -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' %}{% set ns.text = ns.text + part['text'] %}{% endif -%}"
    "{%- if part['type'] == 'image' %}{% set ns.images = ns.images + 1 %}"
    "{% set ns.text = ns.text + '<image>' %}{% endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{%- set ns.call_ids = [] -%}"
    "{{ '<|im_start|>assistant\\n' + ns.text }}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set ns.call_ids = ns.call_ids + [call['id']] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{ '<tool_call>\\n' }}{{ {'name': fn['name'], 'arguments': fn['arguments']} | tojson }}"
    "{{ '\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{ '<|im_start|>tool\\n<tool_response id=\"' + (message['tool_call_id'] or '') + '\">' }}"
    "{{ ns.text + '</tool_response><|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + ns.text + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- set last = messages[-1] -%}"
    "{%- set thinking = enable_thinking is defined and enable_thinking -%}"
    "{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort else 'medium' -%}"
    "{%- if last['role'] == 'tool' -%}"
    "{{ '<|script:result|>' if last['tool_call_id'] in ns.call_ids else '<|script:unmatched|>' }}"
    "{%- elif tools -%}"
    "{{ '<|script:think_call|>' if thinking else '<|script:call|>' }}"
    "{%- elif thinking -%}"
    "{{ '<|script:think_low|>' if effort in ('low', 'minimal') else "
    "('<|script:think_high|>' if effort in ('high', 'xhigh', 'max') else '<think>') }}"
    "{%- elif ns.images -%}"
    "{{ '<|script:image|>' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Idefics3's processor wraps each image in these (<row_i_col_j> only when it splits images).
_IMAGE_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", EOS, *_IMAGE_TOKENS]
_MARKERS = sorted({s.marker for s in SCRIPTS if s.marker.startswith("<|script:")})
# Qwen3 keeps these as ordinary added tokens (not special), so they survive detokenisation.
_TAG_TOKENS = [THINK_START, THINK_END, CALL_START, CALL_END]

_CORPUS = """\
What is the weather in Paris?
Tell me about llamas. Why is the sky blue? Think step by step.
The user asks a question and the model answers with a script.
hello world, bonjour le monde, 1 2 3 4 5.
{"type": "object", "properties": {"city": {"type": "string"}}}
"""

# Images: resized to 32x32 pixels, 8x8 patches, merged 2x2 by the connector: 4 image tokens.
IMAGE_SIZE, PATCH_SIZE, SCALE_FACTOR = 32, 8, 2
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2

_LOGIT = 40.0  # the successor's logit; every other token's is 0


def _fingerprint() -> str:
    """Changes with this file: any change to the recipe rebuilds a cached model."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def is_built(path: Path) -> bool:
    try:
        marker = json.loads((path / "vllama-scripted.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("fingerprint") == _fingerprint())


def successors() -> dict[str, str]:
    """token text → the token that follows it in some script ("" = every other token)."""
    out: dict[str, str] = {}
    for script in SCRIPTS:
        chain = [script.marker, *script.pieces, EOS]
        for here, after in itertools.pairwise(chain):
            if out.get(here, after) != after:
                raise ValueError(f"{here!r} leads to both {out[here]!r} and {after!r}")
            out[here] = after
    return out


def _tokenizer(path: Path) -> Any:
    tokenizers: Any = importlib.import_module("tokenizers")
    transformers: Any = importlib.import_module("transformers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=EOS,
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["<|im_start|>", EOS, *_IMAGE_TOKENS, *_MARKERS],
    )
    pieces = sorted({p for s in SCRIPTS for p in s.pieces if p not in _TAG_TOKENS})
    added = [
        tokenizers.AddedToken(t, special=False, normalized=False) for t in _TAG_TOKENS + pieces
    ]
    fast.add_tokens(added)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 2048
    fast.save_pretrained(path)
    return fast


def _weights(fast: Any, hidden: int) -> tuple[Any, Any]:
    """(embedding, lm_head): each leading token a basis vector, its successor's row on it."""
    torch: Any = importlib.import_module("torch")
    vocab = len(fast)
    ids = fast.get_vocab()
    follow = successors()
    leaders = sorted(t for t in follow if t)
    if len(leaders) + 1 > hidden:
        raise ValueError(f"{len(leaders)} script tokens need a hidden size above {hidden}")
    shared = len(leaders)  # the vector every other token shares
    embed = torch.zeros(vocab, hidden)
    embed[:, shared] = 1.0
    head = torch.zeros(vocab, hidden)
    # After the final RMSNorm a basis vector has norm sqrt(hidden): scale the rows to _LOGIT.
    scale = _LOGIT / hidden**0.5
    for slot, token in enumerate(leaders):
        if token not in ids:
            raise ValueError(f"script token {token!r} is not in the vocabulary")
        embed[ids[token], shared] = 0.0
        embed[ids[token], slot] = 1.0
        head[ids[follow[token]], slot] = scale
    head[ids[follow[""]], shared] = scale
    return embed, head


def build_scripted_model(path: Path, *, force: bool = False) -> Path:
    """Build (or reuse) the scripted model at `path`, in seconds, under 1 MB.

    An Idefics3 (the SmolVLM architecture: a SigLIP vision tower and a projector, one layer,
    random) whose language model is the scripted Llama: vLLM's CPU build serves it without
    torchvision, which its LLaVA and Qwen2-VL code paths import.
    """
    if is_built(path) and not force:
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    fast = _tokenizer(path)
    text = _text_config(transformers, fast)
    vision = transformers.Idefics3VisionConfig(
        hidden_size=64,  # one head of 64 (see the text model's note on head_dim)
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    config = transformers.Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        scale_factor=SCALE_FACTOR,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.Idefics3ForConditionalGeneration(config)
    language = model.model.text_model
    embed, head = _weights(fast, text.hidden_size)
    with torch.no_grad():
        for param in language.parameters():
            param.zero_()
        for layer in language.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        language.norm.weight.fill_(1.0)
        language.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    image_processor = transformers.Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = transformers.Idefics3Processor(
        image_processor=image_processor,
        tokenizer=fast,
        image_seq_len=IMAGE_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    _write_generation_config(path, fast)
    (path / "vllama-scripted.json").write_text(
        json.dumps({"name": NAME, "fingerprint": _fingerprint()}) + "\n"
    )
    return path


def _text_config(transformers: Any, fast: Any) -> Any:
    return transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,  # 2 heads of 64: the CPU attention kernels refuse head_dim 16
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        dtype="bfloat16",
    )


def _write_generation_config(path: Path, fast: Any) -> None:
    (path / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": fast.bos_token_id,
                "eos_token_id": fast.eos_token_id,
                "pad_token_id": fast.pad_token_id,
            }
        )
        + "\n"
    )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the scripted test model.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    print(build_scripted_model(args.path, force=args.force))


if __name__ == "__main__":
    main()
