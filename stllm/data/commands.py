"""``stllm data check`` and ``stllm data convert``: the city file tools of the console script.

``check`` prints what a city file holds and every problem with it (exit 2 on an error, through the
CLI's error wrapper; warnings alone exit 0). ``convert`` turns another project's files (LibCity,
BasicTS, UrbanGPT npz, a long table) into the documented form with :func:`stllm.data.convert.convert`,
imported only when asked for, then writes it with :func:`stllm.data.city_files.save_city`.
"""

from __future__ import annotations

import argparse

from stllm.data.check import check_city_file, format_report
from stllm.data.city_files import parse_overrides, save_city


def add_override_flags(p: argparse.ArgumentParser) -> None:
    """``--task``, ``--freq``, ``--channels``, ``--keys``: what the user says beats the file (shared wording)."""
    p.add_argument("--task", default=None, help="flow or event, instead of what the file says (default flow)")
    p.add_argument("--freq", default=None, help="time step (30min, 1h, 1D), instead of the file's")
    p.add_argument("--channels", default=None, help="comma-separated channel names, instead of the file's")
    p.add_argument("--keys", default=None,
                   help="npz only: field=key pairs for other key names, e.g. values=flow,time=timestamps")


def add_data_parser(sub) -> argparse.ArgumentParser:
    """Register ``stllm data {check,convert}`` on the console script's sub-parsers."""
    data = sub.add_parser("data", allow_abbrev=False, help="check a city file, or convert one into stllm's format")
    cmds = data.add_subparsers(dest="data_command", required=True)
    check = cmds.add_parser("check", allow_abbrev=False, help="summary of a city file (.npz or CSV folder) and "
                            "every problem found; exit 2 on an error")  # fmt: skip
    check.add_argument("path", help="an .npz city file or a folder with values.csv")
    add_override_flags(check)
    check.set_defaults(func=run_check)
    conv = cmds.add_parser("convert", allow_abbrev=False, help="convert LibCity / BasicTS / UrbanGPT / long-table "
                           "files into a city file (.npz or CSV folder)")  # fmt: skip
    conv.add_argument("format", help="source format, e.g. libcity, basicts, urbangpt, table")
    conv.add_argument("inputs", nargs="+", help="the source file(s)")
    conv.add_argument("--output", "-o", required=True, help="where to write: a path ending .npz, or a folder")
    conv.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a converter option (repeatable), e.g. --option freq=1h")
    conv.set_defaults(func=run_convert)
    return data


def run_check(args: argparse.Namespace) -> int:
    options = parse_overrides(args.task, args.freq, args.channels, args.keys)
    report = check_city_file(args.path, **options)
    print(format_report(report))
    if report.errors:
        more = f" (and {len(report.errors) - 1} more above)" if len(report.errors) > 1 else ""
        raise ValueError(f"{report.errors[0]}{more}")
    return 0


def _options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not (eq and key.strip()):
            raise ValueError(f"--option must be KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def run_convert(args: argparse.Namespace) -> int:
    options = _options(args.option)
    try:
        from stllm.data.convert import convert
    except ModuleNotFoundError as e:
        if e.name != "stllm.data.convert":
            raise
        raise ValueError("data convert: this installation has no converters (stllm.data.convert is missing); "
                         "write the city file yourself (README: Your own city)") from None
    city = convert(args.format, list(args.inputs), **options)
    out = save_city(city, args.output)
    report = check_city_file(out)
    print(format_report(report))
    print(f"\nwrote {out}")
    return 0
