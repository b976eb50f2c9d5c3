"""Config files: the bundled `configs/*.py` by name or path, a file's ConfigDict, and field overrides
checked with a did-you-mean. Light (no jax): launch.py reads configs before JAX starts.

A config file is a Python file with `get_config()` returning an `ml_collections.ConfigDict`. The bundled
ones live in the repository's `configs/` folder, beside the package (an editable install, as the README
sets up, or a checkout on `PYTHONPATH`).
"""
import ast
import difflib
import glob
import importlib.util
import os

from spr_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def bundled_configs() -> list[tuple[str, str]]:
    """(path relative to the repository, first docstring line) of every bundled configs/*.py."""
    out = []
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
        try:
            doc = ast.get_docstring(ast.parse(open(path).read())) or ""
        except SyntaxError:
            doc = "(cannot be parsed)"
        out.append((os.path.relpath(path, REPO), doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def resolve(name_or_path: str) -> str:
    """A config file's path: an existing path as given, else a bundled config's name ("tiny", "tiny.py",
    "configs/tiny.py")."""
    if name_or_path and os.path.exists(name_or_path):
        return name_or_path
    base = os.path.basename(name_or_path or "")
    bundled = os.path.join(CONFIGS, base if base.endswith(".py") else base + ".py")
    if name_or_path and os.path.isfile(bundled) and os.path.dirname(name_or_path) in ("", "configs"):
        return bundled
    return name_or_path


def load_file(path: str, flag: str = "--config"):
    """The ConfigDict of a config file (a path or a bundled name), or UserError in one line."""
    import ml_collections
    hint = "bundled configs: " + ", ".join(p for p, _ in bundled_configs()) + " (python launch.py --help)"
    if path is None:
        raise UserError(f"{flag} is required, e.g. {flag}=configs/digits.py", hint)
    if os.path.isdir(path):
        inside = sorted(glob.glob(os.path.join(path, "*.py")))
        raise UserError(f"{flag}={path} is a folder; pass one config file in it",
                        f"for example {flag}=" + f", {flag}=".join(inside[:4]) if inside else hint)
    resolved = resolve(path)
    if not os.path.isfile(resolved):
        raise UserError(f"{flag}={path}: no such file", hint)
    try:
        spec = importlib.util.spec_from_file_location("spr_jax_config_file", resolved)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{flag}={path}: syntax error at line {e.lineno}: {e.msg}") from e
    except Exception as e:
        raise UserError(f"{flag}={path} fails to load: {type(e).__name__}: {one_line(e)}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"{flag}={path} has no get_config() function")
    try:
        config = module.get_config()
    except Exception as e:
        raise UserError(f"{flag}={path}: get_config() fails: {type(e).__name__}: {one_line(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"{flag}={path}: get_config() returns a {type(config).__name__}, not an "
                        f"ml_collections.ConfigDict")
    return config


def check_field(config, dotted: str, prefix: str = "--config.") -> None:
    """`dotted` ("noise.rate") names a field of config, or UserError with a did-you-mean."""
    node, walked, parts = config, [], dotted.split(".")
    for i, part in enumerate(parts):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = "config" + "".join(f".{w}" for w in walked)
            close = difflib.get_close_matches(part, keys, n=1)
            raise UserError(f"{prefix}{dotted}: {where} has no field {part!r}",
                            f"did you mean {prefix}{'.'.join(walked + close + parts[i + 1:])}?" if close
                            else f"fields of {where}: {', '.join(keys)}")
        walked.append(part)
        node = node[part]


# Config blocks whose fields a plug-in reads as keyword settings, and the field naming the plug-in.
PLUGIN_BLOCKS = {"filter": "kind", "buffer": "policy", "model": "encoder", "eval": "loss"}


def declare_plugin_settings(config, overrides: dict, prefix: str = "") -> list:
    """Adds to `config`, at their default values, the keyword settings of its plug-ins that `overrides`
    ({"filter.k": "7", ...}, values as given) name but the config does not hold yet, so that they can be
    overridden like any field (the plug-in reads its block's fields by name). A name close to one of the
    plug-in's settings is refused with a did-you-mean; any other unknown name is left alone (check_field
    then refuses it). Returns the fields added."""
    wanted = [d for d in overrides if d.count(".") == 1 and d.split(".")[0] in PLUGIN_BLOCKS
              and d.split(".")[0] in config and d.split(".")[1] not in config[d.split(".")[0]]]
    if not wanted:
        return []
    from spr_jax import buffers, plugins, settings
    probe = config.copy_and_resolve_references()
    for block, field in PLUGIN_BLOCKS.items():  # the plug-ins as the overrides choose them
        if f"{block}.{field}" in overrides:
            probe[block][field] = overrides[f"{block}.{field}"]
    resolved = settings.resolve_plugins(probe)
    defaults = {"filter": plugins.setting_defaults(resolved.filter),
                "buffer": plugins.policy_setting_defaults(resolved.policy),  # (init, offer and sample together)
                "model": plugins.setting_defaults(resolved.encoder), "eval": plugins.setting_defaults(resolved.loss)}
    added = []
    for dotted in wanted:
        block, field = dotted.split(".")
        settable = defaults[block]
        if field in settable:
            with config.unlocked():
                config[block][field] = settable[field]
            added.append(dotted)
            continue
        close = difflib.get_close_matches(field, list(settable) + list(config[block].keys()), n=1)
        if close and close[0] in settable:
            raise UserError(f"{prefix}{dotted}: neither config.{block} nor its plug-in "
                            f"{probe[block][PLUGIN_BLOCKS[block]]!r} has a setting {field!r}",
                            f"did you mean {prefix}{block}.{close[0]}?")
    return added


def apply_overrides(config, overrides: dict) -> None:
    """Sets {"noise.rate": 0.2, ...} on config in place; every name is checked first (a plug-in's keyword
    setting, e.g. "filter.k" for a filter taking k, is added at its default first)."""
    declare_plugin_settings(config, overrides)
    for dotted in overrides:
        check_field(config, dotted, prefix="")
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = config
        for part in path:
            node = node[part]
        try:
            node[last] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"{dotted}={value!r}: {one_line(e)}") from e


def parse_text(text: str, current, field: str, prefix: str = "--config."):
    """A value given as text on the command line, parsed as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1")
        if isinstance(current, float):
            return float(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, str):
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise UserError(f"{prefix}{field}={text!r} is not of type {type(current).__name__} ({one_line(e)})") from e


def one_line(e) -> str:
    text = str(e.args[0]) if len(getattr(e, "args", ())) == 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(text.split())
