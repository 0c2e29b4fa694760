"""One base error for everything Taskwire raises on purpose.

Each class's docstring is its default message, and `code` is what GraphQL clients see in
`extensions.code`. Anything that is not a TaskwireError is unexpected and gets masked.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TaskwireError(Exception):
    """Something went wrong."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)

    @property
    def extensions(self) -> dict[str, Any]:
        # graphql-core copies `original_error.extensions` onto the GraphQLError it builds.
        return {"code": self.code, **self.details}


class BadUserInput(TaskwireError):
    """The input is not valid."""

    code = "BAD_USER_INPUT"


class NotFound(TaskwireError):
    """No task with that id."""

    code = "NOT_FOUND"


class Conflict(TaskwireError):
    """The request conflicts with the task's current state."""

    code = "CONFLICT"


class ServiceUnavailable(TaskwireError):
    """A service Taskwire depends on is unavailable; try again shortly."""

    code = "SERVICE_UNAVAILABLE"


class SettingsError(TaskwireError):
    """The configuration is not valid."""

    code = "BAD_CONFIGURATION"


class Unauthenticated(TaskwireError):
    """A valid bearer token is required."""

    code = "UNAUTHENTICATED"


class Forbidden(TaskwireError):
    """This token may not do that."""

    code = "FORBIDDEN"


class RateLimited(TaskwireError):
    """Too many requests; try again after `retryAfter` seconds."""

    code = "RATE_LIMITED"
