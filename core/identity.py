"""Who is acting, and what they may do: the lab for a class.

Off by default: with no setting the lab is single-user as it always was (no names, everything allowed).
On when the dashboard sits behind a trusted auth proxy (oauth2-proxy, nginx auth_request) that forwards the
signed-in user's name in a header, or when Streamlit's own `st.login` is configured (secrets.toml [auth]).

    MNIST_LAB_TRUST_PROXY=1                 # a proxy is in front: believe its header (never set it otherwise)
    MNIST_LAB_USER_HEADER=X-Forwarded-User  # the header the proxy fills (default shown)
    MNIST_LAB_TEACHERS=ada,grace            # names that may stop, resume and delete anyone's runs
    MNIST_LAB_SWEEPS=teachers               # who may launch sweeps: everyone (default) or teachers

A page reads the name from the request (`st.context.headers`, or `st.user`), never from a widget or the URL;
core functions that change a run take that `User` and refuse anyone but its owner or a teacher (`NotAllowed`).
`user=None` everywhere means identity is off: everything is allowed, as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_HEADER = "X-Forwarded-User"  # what oauth2-proxy sends (nginx auth_request: whatever it is told to set)
MAX_NAME = 200  # characters; the width of runs.owner


class NotAllowed(PermissionError):
    """The acting user may not do this (not the owner, not a teacher, or not signed in); the message says who may."""


@dataclass(frozen=True)
class Settings:
    trust_proxy: bool = False  # a proxy in front sets `user_header`: only then is the header believed
    user_header: str = DEFAULT_HEADER
    teachers: frozenset[str] = frozenset()
    sweeps: str = "everyone"  # who may launch sweeps: "everyone" or "teachers"


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The identity settings from the environment (see the module docstring); a bad value is one ValueError line."""
    env = os.environ if environ is None else environ
    trust = env.get("MNIST_LAB_TRUST_PROXY", "").strip().lower()
    if trust not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"MNIST_LAB_TRUST_PROXY must be 1 or 0, got {trust!r}")
    sweeps = env.get("MNIST_LAB_SWEEPS", "everyone").strip().lower() or "everyone"
    if sweeps not in ("everyone", "teachers"):
        raise ValueError(f"MNIST_LAB_SWEEPS must be everyone or teachers, got {sweeps!r}")
    teachers = frozenset(t.strip() for t in env.get("MNIST_LAB_TEACHERS", "").split(",") if t.strip())
    return Settings(trust_proxy=trust in ("1", "true", "yes"),
                    user_header=env.get("MNIST_LAB_USER_HEADER", "").strip() or DEFAULT_HEADER,
                    teachers=teachers, sweeps=sweeps)


@dataclass(frozen=True)
class User:
    """The person acting. `name` "" = identity is on but nobody signed in (may look, may not change anything)."""

    name: str
    teacher: bool = False

    @property
    def signed_in(self) -> bool:
        return bool(self.name)

    def __str__(self) -> str:
        return self.name or "nobody (not signed in)"


def user_named(name: str | None, config: Settings) -> User:
    """The user of that name (whitespace trimmed; control characters and overlong names count as no name)."""
    name = (name or "").strip()
    if len(name) > MAX_NAME or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        name = ""
    return User(name, teacher=name in config.teachers)


def user_from_headers(headers: Mapping[str, str], config: Settings) -> User | None:
    """The user a trusted proxy named in the request's headers (any letter case); None when no proxy is trusted
    (identity off, unless Streamlit's login is on). A request without the header is nobody, not everybody."""
    if not config.trust_proxy:
        return None
    wanted = config.user_header.lower()
    value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return user_named(value, config)


def may_change(user: User | None, owner: str | None) -> bool:
    """May `user` stop, resume or delete what `owner` made? Identity off (None): yes. A teacher: yes. Else only
    its owner (a run made before identity was on, or from the command line, has no owner: teachers only)."""
    if user is None:
        return True
    return user.teacher or (user.signed_in and user.name == owner)


def check_may_change(user: User | None, owner: str | None, what: str, action: str) -> None:
    """`may_change`, or NotAllowed: "run 7 is alice's: only alice or a teacher may stop it"."""
    if may_change(user, owner):
        return
    if user is not None and not user.signed_in:
        raise NotAllowed(f"sign in to {action} {what}")
    whose = f"{owner}'s" if owner else "nobody's (made before sign-in was on)"
    who = f"{owner} or a teacher" if owner else "a teacher"
    raise NotAllowed(f"{what} is {whose}: only {who} may {action} it")


def check_may_start(user: User | None) -> None:
    """Anyone signed in may start a run; with identity on, nobody who is not."""
    if user is not None and not user.signed_in:
        raise NotAllowed("sign in to start a run")


def check_may_sweep(user: User | None, config: Settings) -> None:
    """Who may launch sweeps: everyone signed in, or teachers only (MNIST_LAB_SWEEPS=teachers)."""
    check_may_start(user)
    if user is not None and config.sweeps == "teachers" and not user.teacher:
        raise NotAllowed("only a teacher may launch sweeps here (MNIST_LAB_SWEEPS=teachers)")


def owner_of(user: User | None) -> str | None:
    """What a new run records as its owner: the user's name, or None with identity off."""
    return user.name if user is not None and user.signed_in else None
