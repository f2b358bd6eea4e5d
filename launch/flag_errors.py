"""One clear line for a `--config.<path>=value` override that names a key the config lacks.

ml_collections raises a KeyError / AttributeError from inside absl's flag parsing when an
override names a key the loaded config does not have, and absl shows it as a traceback of
library frames. `parse_flags` is the launchers' `flags_parser` for `absl.app.run`: it reports
such an override as absl reports any bad flag ("FATAL Flags parsing error: ...", exit 1), with
the whole override, the full path of the unknown key, the closest existing keys and the keys
that the config holds at that level. Any other KeyError / AttributeError (a bug in the config
file, say) propagates with its traceback.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any, Sequence

from absl import app, flags


def unknown_override(argv: Sequence[str], config: Any) -> str | None:
    """The message for the first `--config.a.b=v` of argv whose path leaves `config`'s keys, or
    None if every override's path exists (paths through non-dict values are not judged)."""
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0].split(".")
        node, seen = config, []
        for key in path:
            if not hasattr(node, "keys"):
                break
            keys = sorted(str(k) for k in node.keys())
            if key not in keys:
                where = f"config.{'.'.join(seen)}" if seen else "the config"
                close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(repr('.'.join(seen + [c])) for c in close)}?" if close else ""
                shown = ", ".join(keys[:30]) + (", ..." if len(keys) > 30 else "")
                return (f"{arg}: unknown config key {'.'.join(seen + [key])!r}{hint} "
                        f"({where} has the keys: {shown})")
            node, seen = node[key], seen + [key]
    return None


def _config_file(argv: Sequence[str]) -> Any:
    """The config that `--config=FILE[:ARG]` loads, without its overrides (None if it cannot be
    loaded: then the original error propagates)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        else:
            continue
        try:
            return flags.FLAGS["config"].parser.parse(spec)
        except Exception:  # noqa: BLE001 - a config that fails to load: the original error propagates
            return None
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's `parse_flags_with_usage`, with unknown config keys reported as flag errors."""
    try:
        return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError):
        config = _config_file(argv) if "config" in flags.FLAGS else None
        message = unknown_override(argv, config) if config is not None else None
        if message is None:  # not an unknown key (e.g. a bug in the config file): its traceback
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                         "Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
