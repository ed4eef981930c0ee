"""`vllama run`'s interactive chat, as `ollama run` has it (ollama/ollama cmd/interactive.go):

`>>> ` prompts (`... ` inside a message), `\"\"\"` to start and end a multi-line message,
`/bye` (or Ctrl-D) to leave, Ctrl-C to stop an answer (or clear the line), line editing
and history (Python's readline, kept in ~/.vllama/history unless `/set nohistory`), and
the commands: /set parameter|system|history|nohistory|wordwrap|nowordwrap|format|
noformat|verbose|quiet|think|nothink, /show info|license|modelfile|parameters|system|
template, /load MODEL, /clear, /list, /save (refused: vLLM has no Modelfiles), /?.

The session talks to the façade only through `Backend` (cli/run_cmd.py), so it is tested
without a server.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from vllama.translate.options import KNOWN as OPTION_TYPES

PROMPT = ">>> "
ALT_PROMPT = "... "
MULTILINE = '"""'
GREY, BOLD, RESET = "\x1b[90m", "\x1b[1m", "\x1b[0m"


class Backend(Protocol):
    def chat(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]: ...
    def show(self, model: str) -> dict[str, Any] | None: ...
    def load(self, model: str, keep_alive: Any) -> None: ...
    def tags(self) -> list[dict[str, Any]]: ...


@dataclass
class Options:
    """What `vllama run`'s flags and the /set commands change."""

    keep_alive: Any = None
    format: str = ""
    think: bool | str | None = None
    hide_thinking: bool = False
    verbose: bool = False
    word_wrap: bool = True
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_parameter(key: str, values: list[str]) -> Any:
    """A `/set parameter KEY V...` value in the option's type (api.FormatParams)."""
    kind = OPTION_TYPES.get(key)
    if kind is None:
        raise ValueError(f"unknown parameter '{key}'")
    if kind == "array":
        return list(values)
    value = values[0]
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"invalid bool value '{value}'")


def stats_lines(final: dict[str, Any]) -> list[str]:
    """/set verbose: the figures of an answer's final object, as Ollama prints them."""

    def seconds(ns: Any) -> str:
        return f"{(ns or 0) / 1e9:.6f}s" if isinstance(ns, (int, float)) else "-"

    def rate(count: Any, ns: Any) -> str:
        if isinstance(count, int) and isinstance(ns, (int, float)) and ns > 0:
            return f"{count / (ns / 1e9):.2f} tokens/s"
        return "-"

    return [
        f"total duration:       {seconds(final.get('total_duration'))}",
        f"load duration:        {seconds(final.get('load_duration'))}",
        f"prompt eval count:    {final.get('prompt_eval_count', 0)} token(s)",
        f"prompt eval duration: {seconds(final.get('prompt_eval_duration'))}",
        f"prompt eval rate:     {rate(final.get('prompt_eval_count'), final.get('prompt_eval_duration'))}",
        f"eval count:           {final.get('eval_count', 0)} token(s)",
        f"eval duration:        {seconds(final.get('eval_duration'))}",
        f"eval rate:            {rate(final.get('eval_count'), final.get('eval_duration'))}",
    ]


class Session:
    """One conversation with one model (`/load` switches it)."""

    def __init__(
        self,
        backend: Backend,
        model: str,
        options: Options,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        spinner: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        set_history: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.options = options
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.spinner = spinner or contextlib.nullcontext
        self.set_history = set_history or (lambda on: None)
        self.system = ""
        self.messages: list[dict[str, Any]] = []
        self.history = True
        self.color = self.out.isatty()

    # --- printing -------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str = "") -> None:
        print(text, file=self.err, flush=True)

    def usage(self) -> None:
        for line in (
            "Available Commands:",
            "  /set            Set session variables",
            "  /show           Show model information",
            "  /load <model>   Load a session or model",
            "  /save <model>   Save your current session",
            "  /clear          Clear session context",
            "  /bye            Exit",
            "  /?, /help       Help for a command",
            "  /? shortcuts    Help for keyboard shortcuts",
            "",
            'Use """ to begin a multi-line message.',
            "",
        ):
            self.note(line)

    def usage_set(self) -> None:
        for line in (
            "Available Commands:",
            "  /set parameter ...     Set a parameter",
            "  /set system <string>   Set system message",
            "  /set history           Enable history",
            "  /set nohistory         Disable history",
            "  /set wordwrap          Enable wordwrap",
            "  /set nowordwrap        Disable wordwrap",
            "  /set format json       Enable JSON mode",
            "  /set noformat          Disable formatting",
            "  /set verbose           Show LLM stats",
            "  /set quiet             Disable LLM stats",
            "  /set think             Enable thinking",
            "  /set nothink           Disable thinking",
            "",
        ):
            self.note(line)

    def usage_show(self) -> None:
        for line in (
            "Available Commands:",
            "  /show info         Show details for this model",
            "  /show license      Show model license",
            "  /show modelfile    Show Modelfile for this model",
            "  /show parameters   Show parameters for this model",
            "  /show system       Show system message",
            "  /show template     Show prompt template",
            "",
        ):
            self.note(line)

    def usage_parameters(self) -> None:
        for line in (
            "Available Parameters:",
            "  /set parameter seed <int>             Random number seed",
            "  /set parameter num_predict <int>      Max number of tokens to predict",
            "  /set parameter top_k <int>            Pick from top k num of tokens",
            "  /set parameter top_p <float>          Pick token based on sum of probabilities",
            "  /set parameter min_p <float>          Pick token based on top token probability * min_p",
            "  /set parameter temperature <float>    Set creativity level",
            "  /set parameter repeat_penalty <float> How strongly to penalize repetitions",
            "  /set parameter stop <string> <string> ...   Set the stop parameters",
            "  (num_ctx is the engine's --max-model-len: it cannot change per request)",
            "",
        ):
            self.note(line)

    def usage_shortcuts(self) -> None:
        for line in (
            "Available keyboard shortcuts:",
            "  Ctrl + a            Move to the beginning of the line (Home)",
            "  Ctrl + e            Move to the end of the line (End)",
            "  Ctrl + k            Delete the sentence after the cursor",
            "  Ctrl + u            Delete the sentence before the cursor",
            "  Ctrl + w            Delete the word before the cursor",
            "  Ctrl + l            Clear the screen",
            "  Ctrl + c            Stop the model from responding",
            "  Ctrl + d            Exit vllama (/bye)",
            "",
        ):
            self.note(line)

    # --- commands -------------------------------------------------------------------------

    def set_command(self, args: list[str]) -> str | None:
        """/set ...; returns the start of a multi-line system message when one begins."""
        if not args:
            self.usage_set()
            return None
        what, rest = args[0], args[1:]
        opts = self.options
        if what in ("history", "nohistory"):
            self.history = what == "history"
            self.set_history(self.history)
        elif what in ("wordwrap", "nowordwrap"):
            opts.word_wrap = what == "wordwrap"
            self.say(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            opts.verbose = what == "verbose"
            self.say(f"Set '{what}' mode.")
        elif what == "think":
            opts.think = rest[0] if rest else True
            self.say(f"Set 'think' mode to '{rest[0]}'." if rest else "Set 'think' mode.")
        elif what == "nothink":
            opts.think = False
            self.say("Set 'nothink' mode.")
        elif what == "format":
            if rest[:1] != ["json"]:
                self.say("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                opts.format = "json"
                self.say("Set format to 'json' mode.")
        elif what == "noformat":
            opts.format = ""
            self.say("Disabled format.")
        elif what == "parameter":
            if len(rest) < 2:
                self.usage_parameters()
                return None
            try:
                opts.parameters[rest[0]] = parse_parameter(rest[0], rest[1:])
            except (ValueError, IndexError) as exc:
                self.say(f"Couldn't set parameter: {str(exc)!r}")
                return None
            self.say(f"Set parameter '{rest[0]}' to '{', '.join(rest[1:])}'")
        elif what == "system":
            if not rest:
                self.usage_set()
                return None
            text = " ".join(rest)
            if text.startswith(MULTILINE):
                text = text[len(MULTILINE) :]
                if not text.endswith(MULTILINE):
                    return text  # continues on the next lines
                text = text[: -len(MULTILINE)]
            self.set_system(text)
        else:
            self.say(f"Unknown command '/set {what}'. Type /? for help")
        return None

    def set_system(self, text: str) -> None:
        self.system = text
        message = {"role": "system", "content": text}
        if self.messages and self.messages[-1]["role"] == "system":
            self.messages[-1] = message
        else:
            self.messages.append(message)
        self.say("Set system message.")

    def show_command(self, args: list[str]) -> None:
        if not args:
            self.usage_show()
            return
        info = self.backend.show(self.model)
        if info is None:
            self.say("error: couldn't get model")
            return
        what = args[0]
        if what == "info":
            self.show_info(info)
        elif what == "license":
            self.say(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            self.say(str(info.get("modelfile", "")))
        elif what == "parameters":
            self.say("Model defined parameters:")
            params = str(info.get("parameters") or "")
            if not params:
                self.say("  No additional parameters were specified for this model.")
            for line in params.splitlines():
                self.say(f"  {line}")
            self.say()
            if self.options.parameters:
                self.say("User defined parameters:")
                for key, value in self.options.parameters.items():
                    self.say(f"  {key:<30} {value}")
                self.say()
        elif what == "system":
            self.say(
                self.system + "\n"
                if self.system
                else "No system message was specified for this model."
            )
        elif what == "template":
            self.say(info.get("template") or "No prompt template was specified for this model.")
        else:
            self.say(f"Unknown command '/show {what}'. Type /? for help")

    def show_info(self, info: dict[str, Any]) -> None:
        details = info.get("details") or {}
        model_info = info.get("model_info") or {}
        arch = model_info.get("general.architecture") or details.get("family")
        rows = [
            ("architecture", arch),
            ("parameters", details.get("parameter_size")),
            ("context length", model_info.get(f"{arch}.context_length")),
            ("embedding length", model_info.get(f"{arch}.embedding_length")),
            ("quantization", details.get("quantization_level")),
        ]
        self.note("  Model")
        for label, value in rows:
            if value not in (None, ""):
                self.note(f"    {label:<20}{value}")
        self.note()
        if info.get("capabilities"):
            self.note("  Capabilities")
            for cap in info["capabilities"]:
                self.note(f"    {cap}")
            self.note()

    def list_command(self) -> None:
        models = self.backend.tags()
        self.say(f"{'NAME':<40}SIZE")
        for m in models:
            size = m.get("size") or 0
            self.say(f"{m.get('name')!s:<40}{size / 1e6:.1f} MB")

    def load_command(self, args: list[str]) -> None:
        if len(args) != 1:
            self.say("Usage:\n  /load <modelname>")
            return
        self.say(f"Loading model '{args[0]}'")
        if self.backend.show(args[0]) is None:
            self.say(f"Couldn't find model '{args[0]}'")
            return
        with self.spinner():
            self.backend.load(args[0], self.options.keep_alive)
        self.model = args[0]
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def clear_command(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.say("Cleared session context")

    # --- chatting -------------------------------------------------------------------------

    def request(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages),
            "stream": True,
        }
        if self.options.parameters:
            body["options"] = dict(self.options.parameters)
        if self.options.format:
            body["format"] = self.options.format
        if self.options.think is not None:
            body["think"] = self.options.think
        if self.options.keep_alive is not None:
            body["keep_alive"] = self.options.keep_alive
        return body

    def send(self, text: str) -> None:
        """One user message: the answer streams to the terminal as it arrives."""
        self.messages.append({"role": "user", "content": text})
        content: list[str] = []
        final: dict[str, Any] = {}
        thinking = False
        stream = self.backend.chat(self.request())
        try:
            with self.spinner() as spin, contextlib.closing(stream):
                stopped = False
                for chunk in stream:
                    message = chunk.get("message") or {}
                    think_text = message.get("thinking") or ""
                    text_part = message.get("content") or ""
                    if (think_text or text_part) and not stopped:
                        if spin is not None and hasattr(spin, "stop"):
                            spin.stop()
                        stopped = True
                    if think_text and not self.options.hide_thinking:
                        if not thinking:
                            self.out.write(self._grey("Thinking...\n"))
                            thinking = True
                        self.out.write(self._grey(think_text))
                    if text_part:
                        if thinking:
                            self.out.write(self._grey("\n...done thinking.\n\n"))
                            thinking = False
                        self.out.write(text_part)
                        content.append(text_part)
                    self.out.flush()
                    if chunk.get("done"):
                        final = chunk
        except KeyboardInterrupt:  # Ctrl-C: stop the answer; the question stays asked
            self.say()
            return
        self.out.write("\n\n")
        self.out.flush()
        self.messages.append({"role": "assistant", "content": "".join(content)})
        if self.options.verbose and final:
            for line in stats_lines(final):
                self.note(line)
            self.note()

    def _grey(self, text: str) -> str:
        return f"{GREY}{text}{RESET}" if self.color else text

    # --- the loop -------------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """One complete line (not inside a multi-line message); False: leave."""
        if line.startswith(("/exit", "/bye")):
            return False
        if line.startswith("/"):
            words = line.split()
            command, args = words[0], words[1:]
            if command == "/set":
                pending = self.set_command(args)
                if pending is not None:
                    self._pending_system = pending
            elif command == "/show":
                self.show_command(args)
            elif command in ("/help", "/?"):
                topic = args[0] if args else ""
                if topic in ("set", "/set"):
                    self.usage_set()
                elif topic in ("show", "/show"):
                    self.usage_show()
                elif topic in ("shortcut", "shortcuts"):
                    self.usage_shortcuts()
                else:
                    self.usage()
            elif command == "/clear":
                self.clear_command()
            elif command == "/load":
                self.load_command(args)
            elif command == "/list":
                self.list_command()
            elif command == "/save":
                self.say(
                    "error: vllama does not save sessions as models (vLLM has no Modelfiles); "
                    "give a model another name with `vllama cp` or [aliases]"
                )
            else:
                self.say(f"Unknown command '{command}'. Type /? for help")
            return True
        if line.strip():
            self.send(line)
        return True

    _pending_system: str | None = None

    def run(self, read: Callable[[str], str]) -> int:
        """Read lines with `read(prompt)` until /bye or end of input."""
        buffer: list[str] = []
        mode: str | None = None  # "prompt" or "system" inside a multi-line message
        while True:
            try:
                line = read(ALT_PROMPT if mode else PROMPT)
            except EOFError:
                self.say()
                return 0
            except KeyboardInterrupt:
                if not buffer and not mode:
                    self.say("\nUse Ctrl + d or /bye to exit.")
                else:
                    self.say()
                buffer, mode = [], None
                continue
            if mode is not None:
                done = line.endswith(MULTILINE)
                buffer.append(line[: -len(MULTILINE)] if done else line)
                if not done:
                    continue
                text = "\n".join(buffer)
                buffer = []
                if mode == "system":
                    self.set_system(text)
                    mode = None
                    continue
                mode = None
                self.send(text)
                continue
            if line.startswith(MULTILINE):
                rest = line[len(MULTILINE) :]
                if rest.endswith(MULTILINE) and len(rest) >= len(MULTILINE):
                    self.send(rest[: -len(MULTILINE)])
                    continue
                buffer, mode = [rest], "prompt"
                continue
            if not self.handle(line):
                return 0
            if self._pending_system is not None:
                buffer, mode = [self._pending_system], "system"
                self._pending_system = None


@contextlib.contextmanager
def line_editing(
    history_file: Path | None,
) -> Iterator[tuple[Callable[[str], str], Callable[[bool], None]]]:
    """(`input` with readline's editing and history, a switch for adding to the history);
    the history is read from and written to `history_file`."""
    try:
        import readline
    except ImportError:  # not on every platform: plain input still works
        yield input, lambda on: None
        return
    if history_file is not None:
        with contextlib.suppress(OSError):
            history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.read_history_file(history_file)
    try:
        yield input, readline.set_auto_history
    finally:
        if history_file is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(history_file)
