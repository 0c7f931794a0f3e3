"""Where `jws` finds its defaults: flags, then JWS_* environment variables, then
the config file `jws login` writes ($XDG_CONFIG_HOME/jobworker/jws.toml, by
default ~/.config/jobworker/jws.toml), then built-in defaults."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import attrs

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_TLS_DIR = "certs/dev"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jobworker" / "jws.toml"


@attrs.frozen
class ClientConfig:
    """The stored defaults; `None` where the file says nothing."""

    user: str | None = None
    addr: str | None = None
    tls_dir: str | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """The config file's values; an absent file is an empty config. Raises ValueError for a broken one."""
        path = path or config_path()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(
                f"cannot read {path}: {exc}; fix it or run `jws login USER` again"
            ) from exc
        return cls(
            user=_str(data.get("user")),
            addr=_str(data.get("addr")),
            tls_dir=_str(data.get("tls_dir")),
        )

    def save(self, path: Path | None = None) -> Path:
        """Write these values (only the set ones) to the config file; returns its path."""
        path = path or config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"{name} = {_toml_string(value)}"
            for name, value in attrs.asdict(self).items()
            if value is not None
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("# written by `jws login`\n" + "\n".join(lines) + "\n")
        tmp.replace(path)
        return path


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
