"""Who may call jwsd, and with which role: the users file.

The file is TOML:

    [users]
    alex = "user"
    betty = "user"
    admin = "admin"

A caller is the Common Name of its verified client certificate: exactly one CN,
a user name (`jobworker.tls.USER_NAME`, which the users file's names obey too). With a users
file, only the names in it are known (anyone else is UNAUTHENTICATED) and an
`admin` sees and stops every job. Without one, every certificate the client CA
signed is a `user`: the CA is then the whole access policy.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from pathlib import Path

import attrs

from jobworker.echo import quoted
from jobworker.errors import SetupError, UnauthenticatedError
from jobworker.tls import USER_NAME, USER_NAME_RULE


class Role(enum.Enum):
    USER = "user"
    ADMIN = "admin"


@attrs.frozen
class Caller:
    """An authenticated caller: `name` (the certificate's CN) and its role."""

    name: str
    role: Role = Role.USER

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@attrs.frozen
class UserPolicy:
    """Maps a certificate's Common Name to a Caller.

    users: name -> role; `None` means no users file: every name is a plain user.
    """

    users: Mapping[str, Role] | None = None

    @classmethod
    def load(cls, path: Path | None) -> UserPolicy:
        """Read a users file (None: no file, every certificate is a user).
        Raises SetupError naming the file and the problem."""
        if path is None:
            return cls(None)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise SetupError(f"cannot read the users file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SetupError(f"the users file {path} is not valid TOML: {exc}") from exc
        table = data.get("users")
        if not isinstance(table, dict):
            raise SetupError(
                f'the users file {path} needs a [users] table: name = "user" or "admin"'
            )
        users: dict[str, Role] = {}
        for name, role in table.items():
            if not USER_NAME.fullmatch(name):
                raise SetupError(
                    f"the users file {path} names an invalid user {quoted(name)}: "
                    f"a user name is {USER_NAME_RULE}"
                )
            try:
                users[name] = Role(role)
            except ValueError:
                raise SetupError(
                    f'the users file {path} gives {name!r} the role {role!r}; use "user" or "admin"'
                ) from None
        return cls(users)

    def authenticate(self, common_name: str | None) -> Caller:
        """The Caller for a verified certificate's CN (as `jobworker.tls.common_name`
        reads it: None when it names nobody); raises UnauthenticatedError."""
        if not common_name or not USER_NAME.fullmatch(common_name):
            raise UnauthenticatedError(
                "no identity: the client certificate needs exactly one common name, "
                f"a user name ({USER_NAME_RULE})"
            )
        if self.users is None:
            return Caller(common_name)
        role = self.users.get(common_name)
        if role is None:
            raise UnauthenticatedError(f"unknown user {quoted(common_name)}")
        return Caller(common_name, role)
