"""How an exception becomes a message and an exit code: the one place every entry point uses.

``stllm`` sub-commands, ``torchrun stllm/train/train_mem.py`` and the modules' own ``main()`` all run
through :func:`run_command`, so a user error reads the same whatever raised it: one line on stderr,
exit 2, the traceback only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# exceptions whose message is the answer: bad flags, files, data (json.JSONDecodeError and
# stllm.data.CityDataError are ValueErrors); safetensors' SafetensorError is added lazily
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)  # fmt: skip
BUG_HINT = "this is a bug in stllm; please report it with the output of `stllm env`"
_HF_DEBUG_VALUES = ("underflow_overflow", "tpu_metrics_debug")  # `--debug <value>` belongs to TrainingArguments


def user_error_types() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` plus safetensors' error (a truncated or foreign ``.safetensors`` file),
    imported here so that ``stllm --help`` does not pay for it."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        return USER_ERRORS
    return (*USER_ERRORS, SafetensorError)


def error_message(exc: BaseException) -> str:
    """One line for a user error: an OSError names its file (``path: reason``), not ``[Errno 2] ...``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def run_command(name: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run sub-command ``name`` (``fn`` does the work) and return the process exit code.

    Exit codes: 0 success (or ``fn``'s own code); 2 a user error (:func:`user_error_types`, or a
    ``SystemExit("message")``): ``stllm <name>: error: <message>`` on stderr, no traceback (argparse's
    usage errors also exit 2); 130 interrupted (Ctrl-C); 1 a bug: the traceback, then one line asking
    for a report. ``debug`` (``--debug`` / ``STLLM_DEBUG=1``) re-raises user errors and interrupts so
    their traceback shows.
    """
    prog = f"stllm {name}" if name else "stllm"
    try:
        code = fn()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if not isinstance(e.code, str) or debug:  # argparse's exits and plain sys.exit(n) keep their code
            raise
        print(f"{prog}: error: {e.code}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        if debug:
            raise
        if isinstance(e, user_error_types()):
            print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
        traceback.print_exc()
        print(f"{prog}: {BUG_HINT}", file=sys.stderr)
        return EXIT_BUG
    return EXIT_OK if code is None else int(code)


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Remove stllm's ``--debug`` from anywhere in ``argv`` (so no sub-command parser sees it); the
    environment variable ``STLLM_DEBUG=1`` also turns it on. ``--debug underflow_overflow`` is left
    to ``stllm train``'s TrainingArguments."""
    rest, debug = [], os.environ.get("STLLM_DEBUG", "") not in ("", "0")
    for i, arg in enumerate(argv):
        if arg == "--debug" and argv[i + 1 : i + 2] not in ([v] for v in _HF_DEBUG_VALUES):
            debug = True
        else:
            rest.append(arg)
    return rest, debug
