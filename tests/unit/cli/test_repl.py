"""`vllama run`'s chat session (cli/repl.py) against a recording backend: what reaches the
server for each input (multi-line messages, /set parameter in its option's type, /set
system, /clear, /load), streamed output written chunk by chunk, and leaving on /bye."""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from vllama.cli.repl import Options, Session, parse_parameter, stats_lines


class Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


class Backend:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.loaded: list[str] = []

    def chat(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        self.bodies.append(body)
        for piece in ("Hel", "lo", "!"):
            yield {"message": {"role": "assistant", "content": piece}, "done": False}
        yield {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "eval_count": 3,
            "eval_duration": 1_500_000_000,
            "total_duration": 2_000_000_000,
        }

    def show(self, model: str) -> dict[str, Any] | None:
        if model == "missing":
            return None
        return {
            "details": {"parameter_size": "361.09K", "quantization_level": "BF16"},
            "model_info": {"general.architecture": "llama", "llama.context_length": 2048},
            "capabilities": ["completion"],
            "parameters": "num_ctx 2048",
            "template": "{{ .Prompt }}",
        }

    def load(self, model: str, keep_alive: Any) -> None:
        self.loaded.append(model)

    def tags(self) -> list[dict[str, Any]]:
        return [{"name": "org/a:latest", "size": 1_000_000}]


def session(**options: Any) -> tuple[Session, Backend, Recording, Recording]:
    backend, out, err = Backend(), Recording(), Recording()
    return Session(backend, "org/a", Options(**options), out=out, err=err), backend, out, err


def feed(lines: list[str | BaseException]) -> Iterator[str]:
    for line in lines:
        if isinstance(line, BaseException):
            raise line
        yield line


def run(s: Session, lines: list[str | type[BaseException]]) -> int:
    pending = list(lines)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        item = pending.pop(0)
        if isinstance(item, type):
            raise item()
        return item

    return s.run(read)


def test_a_message_streams_and_the_conversation_grows() -> None:
    s, backend, out, _ = session()
    assert run(s, ["hi there", "and again", "/bye", "never read"]) == 0
    assert [b["messages"][-1]["content"] for b in backend.bodies] == ["hi there", "and again"]
    assert backend.bodies[1]["messages"][1] == {"role": "assistant", "content": "Hello!"}
    assert all(b["stream"] is True and b["model"] == "org/a" for b in backend.bodies)
    # Each chunk was written as it came, then the blank line Ollama leaves.
    assert [w for w in out.writes if w in ("Hel", "lo", "!", "\n\n")][:4] == [
        "Hel",
        "lo",
        "!",
        "\n\n",
    ]


def test_multi_line_messages_and_system() -> None:
    s, backend, out, _ = session()
    run(
        s,
        [
            '"""first line',
            "second line",
            'end"""',
            '"""one line"""',
            '/set system """be',
            'brief"""',
            "q",
        ],
    )
    sent = [b["messages"] for b in backend.bodies]
    assert sent[0][0]["content"] == "first line\nsecond line\nend"
    assert sent[1][-1]["content"] == "one line"
    assert sent[2][-2] == {"role": "system", "content": "be\nbrief"}
    assert "Set system message." in out.getvalue()


def test_set_parameter_types_and_options_sent() -> None:
    s, backend, out, _ = session(keep_alive="10m")
    run(
        s,
        [
            "/set parameter temperature 0",
            "/set parameter seed 42",
            "/set parameter stop a b",
            "/set parameter bogus 1",
            "/set format json",
            "/set think",
            "hello",
        ],
    )
    body = backend.bodies[0]
    assert body["options"] == {"temperature": 0.0, "seed": 42, "stop": ["a", "b"]}
    assert body["format"] == "json" and body["think"] is True and body["keep_alive"] == "10m"
    text = out.getvalue()
    assert "Set parameter 'temperature' to '0'" in text
    assert "Couldn't set parameter: \"unknown parameter 'bogus'\"" in text


def test_clear_load_show_list_and_unknown_commands() -> None:
    s, backend, out, err = session()
    run(
        s,
        [
            "hi",
            "/clear",
            "/load missing",
            "/load org/b",
            "/show info",
            "/list",
            "/nope",
            "/set nope",
            "/save x",
            "again",
        ],
    )
    assert backend.loaded == ["org/b"]
    assert backend.bodies[-1]["model"] == "org/b"
    assert backend.bodies[-1]["messages"] == [{"role": "user", "content": "again"}]
    text = out.getvalue()
    for expected in (
        "Cleared session context",
        "Couldn't find model 'missing'",
        "org/a:latest",
        "Unknown command '/nope'. Type /? for help",
        "Unknown command '/set nope'",
        "does not save sessions",
    ):
        assert expected in text
    assert "context length" in err.getvalue() and "2048" in err.getvalue()


def test_ctrl_c_at_the_prompt_and_ctrl_d_to_leave() -> None:
    s, backend, out, _ = session()
    assert run(s, [KeyboardInterrupt, "hi"]) == 0  # then EOF: Ctrl-D
    assert "Use Ctrl + d or /bye to exit." in out.getvalue()
    assert len(backend.bodies) == 1


def test_verbose_prints_the_figures() -> None:
    s, _, _, err = session(verbose=True)
    run(s, ["hi"])
    assert "eval rate:            2.00 tokens/s" in err.getvalue()
    assert stats_lines({})[0].startswith("total duration:")


@pytest.mark.parametrize(
    ("key", "values", "value"),
    [
        ("num_predict", ["8"], 8),
        ("top_p", ["0.9"], 0.9),
        ("use_mmap", ["true"], True),
        ("stop", ["<|im_end|>"], ["<|im_end|>"]),
    ],
)
def test_parameter_types(key: str, values: list[str], value: Any) -> None:
    assert parse_parameter(key, values) == value


def test_bad_parameter_values() -> None:
    for key, values in (("seed", ["x"]), ("use_mmap", ["maybe"]), ("nope", ["1"])):
        with pytest.raises(ValueError):
            parse_parameter(key, values)
