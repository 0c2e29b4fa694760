"""The two websocket subprotocols under the same rules.

Strawberry's graphql-transport-ws handler already closes a bad connection with the protocol's
4xxx codes; its legacy graphql-ws handler mostly ignores bad input. Both handlers here:

- close 4400 on a frame that is not a JSON object with a known `type` and a well-formed body,
  4401 on an operation before the ack, 4403 when `on_ws_connect` rejects the connection,
  4408 when no connection_init arrives in time, 4409 on an id that is already running and
  4429 on a second connection_init;
- refuse an operation past the per-connection cap with an `error` message whose code is
  TOO_MANY_SUBSCRIPTIONS, counting only operations that are still running;
- close 4403 "Token expired" when the principal's token expires, which ends every operation;
- close once, and send nothing after closing.

The view passes the limits (`max_subscriptions_per_connection`, `connection_init_wait_timeout`).
The frame checks, the socket that closes once and the token's deadline are in graphql_api.frames.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from contextlib import suppress
from datetime import timedelta
from typing import Any, Protocol, TypeVar, cast

from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import AsyncBaseHTTPView, AsyncWebSocketAdapter
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)
from strawberry.schema import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws import types as transport
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,  # what Strawberry's run_operation catches (see run_operation)
)
from strawberry.subscriptions.protocols.graphql_ws import types as legacy
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.unset import UnsetType

from graphql_api.frames import (
    INIT_TIMEOUT,
    Alarm,
    ClosingSocket,
    Deadline,
    legacy_message_problem,
    shared_timeouts,
    transport_message_problem,
)
from taskwire.identity import Principal

TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
TOKEN_EXPIRED = "Token expired"


class ConnectionContext(Protocol):
    """What the handlers need of the view's context: on_ws_connect sets `principal`."""

    principal: Principal | None
    connection_params: dict[str, Any]


ContextT = TypeVar("ContextT", bound=ConnectionContext)
RootValueT = TypeVar("RootValueT")
View = AsyncBaseHTTPView[Any, Any, Any, Any, Any, ContextT, RootValueT]


# A handler's attributes (ours and every one Strawberry's handler sets) are slots: a handler
# lives as long as its connection, and an instance dict costs more, the more so as the view
# makes the handler through a subscripted generic (TransportWsHandler[Context, None]), which
# sets __orig_class__ on it after __init__ (about 200 bytes more in a dict).


class TransportWsHandler(BaseGraphQLTransportWSHandler[ContextT, RootValueT]):
    """graphql-transport-ws: Strawberry's handler, with the rules in this module's docstring."""

    __slots__ = (
        "__orig_class__",
        "connection_acknowledged",
        "connection_init_received",
        "connection_init_timeout_task",
        "connection_init_wait_timeout",
        "connection_timed_out",
        "context",
        "deadline",
        "init_timeout",
        "max_subscriptions_per_connection",
        "operations",
        "root_value",
        "schema",
        "socket",
        "view",
        "websocket",
    )

    def __init__(
        self,
        view: View[ContextT, RootValueT],
        websocket: AsyncWebSocketAdapter,
        context: ContextT,
        root_value: RootValueT | None,
        schema: BaseSchema,
        connection_init_wait_timeout: timedelta,
        max_subscriptions_per_connection: int | None = None,
    ) -> None:
        self.socket = ClosingSocket(websocket)
        super().__init__(
            view,
            self.socket,
            context,
            root_value,
            schema,
            connection_init_wait_timeout,
            max_subscriptions_per_connection,
        )
        self.init_timeout = Alarm()
        self.deadline = Deadline()

    async def handle(self) -> None:
        # Strawberry's loop, except that the last message is not held while waiting for the
        # next one (on an idle connection, the subscribe message, for as long as it lasts).
        self.socket.forget_headers()
        self.on_request_accepted()
        try:
            try:
                async for message in self.websocket.iter_json():
                    await self.handle_message(cast("transport.Message", message))
                    del message
            except NonTextMessageReceived:
                await self.handle_invalid_message("WebSocket message type must be text")
            except NonJsonMessageReceived:
                await self.handle_invalid_message("WebSocket message must be valid JSON")
        except WebSocketDisconnected:
            pass
        finally:
            await self.shutdown()

    def on_request_accepted(self) -> None:
        # Instead of Strawberry's task sleeping out the timeout (see Alarm): Strawberry keeps
        # that task, cancelled by connection_init, for as long as the connection lasts.
        seconds = self.connection_init_wait_timeout.total_seconds()
        self.init_timeout.set(seconds, self.close_uninitialised, name=INIT_TIMEOUT)

    async def close_uninitialised(self) -> None:
        if self.connection_init_received:
            return
        self.connection_timed_out = True
        await self.socket.close(4408, "Connection initialisation timeout")

    async def shutdown(self) -> None:
        await self.init_timeout.cancel()
        await self.deadline.cancel()
        await super().shutdown()

    async def handle_message(self, message: transport.Message) -> None:
        if self.socket.closed:
            return
        problem = transport_message_problem(message)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: transport.ConnectionInitMessage) -> None:
        if not self.connection_timed_out:
            self.init_timeout.disarm()
        await super().handle_connection_init(message)
        # on_ws_connect has read the token: the principal is what the connection keeps.
        self.context.connection_params = {}
        if self.connection_acknowledged and not self.socket.closed:
            timeouts = shared_timeouts(self.view)
            self.deadline.arm(self.context.principal, self.expire, timeouts=timeouts)

    async def handle_subscribe(self, message: transport.SubscribeMessage) -> None:
        # Forget operations that ended without deregistering, so that the cap and the
        # duplicate-id check below (and Strawberry's) see only running ones.
        for operation_id, operation in list(self.operations.items()):
            if operation.task is not None and operation.task.done():
                del self.operations[operation_id]
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and limit is not None
            and len(self.operations) >= limit
        ):
            error = subscription_limit_error(limit)
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [error.formatted]}
            )
            return
        share_query(message["payload"])
        await super().handle_subscribe(message)

    async def run_operation(self, operation: Operation[ContextT, RootValueT]) -> None:
        # Strawberry's, with its _send_result_stream inline and the stream closed in a
        # `finally`: that coroutine and its aclosing context manager (an async generator and
        # its wrapper) were held for as long as the subscription lasts.
        try:
            results = await self.schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )
            try:
                first = True
                async for result in results:
                    if first and isinstance(result, PreExecutionError):
                        await self._handle_pre_execution_error(operation, result)
                        break
                    if not isinstance(result, ExecutionResult):
                        await self._reject_incremental_delivery(operation)
                        break
                    await operation.send_next(result)
                    first = False
            finally:
                with suppress(Exception):  # as Strawberry's aclosing
                    await results.aclose()
            await operation.send_operation_message({"id": operation.id, "type": "complete"})
        except _OperationStreamClosed:
            return
        except Exception as error:
            await self.handle_task_exception(error)
            with suppress(Exception):
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
            self.operations.pop(operation.id, None)
            raise

    async def expire(self) -> None:
        await self.socket.close(4403, TOKEN_EXPIRED)
        for operation in self.operations.values():
            if operation.task is not None:
                operation.task.cancel()  # left registered for shutdown to await


class LegacyWsHandler(BaseGraphQLWSHandler[ContextT, RootValueT]):
    """Legacy graphql-ws (subscriptions-transport-ws) held to graphql-transport-ws's rules."""

    __slots__ = (
        "__orig_class__",
        "connection_acknowledged",
        "connection_init_received",
        "connection_init_wait_timeout",
        "context",
        "deadline",
        "init_timeout",
        "keep_alive",
        "keep_alive_interval",
        "keep_alive_task",
        "max_subscriptions_per_connection",
        "root_value",
        "schema",
        "socket",
        "subscriptions",
        "tasks",
        "view",
        "websocket",
    )

    def __init__(
        self,
        view: View[ContextT, RootValueT],
        websocket: AsyncWebSocketAdapter,
        context: ContextT,
        root_value: RootValueT | None,
        schema: BaseSchema,
        keep_alive: bool,
        keep_alive_interval: float | None,
        max_subscriptions_per_connection: int | None = None,
    ) -> None:
        self.socket = ClosingSocket(websocket)
        super().__init__(
            view,
            self.socket,
            context,
            root_value,
            schema,
            keep_alive,
            keep_alive_interval,
            max_subscriptions_per_connection,
        )
        # Strawberry's legacy handler has no init timeout; the view's is the modern one's.
        self.connection_init_wait_timeout: timedelta = view.connection_init_wait_timeout
        self.connection_init_received = False
        self.init_timeout = Alarm()
        self.deadline = Deadline()

    async def handle(self) -> None:
        self.socket.forget_headers()
        seconds = self.connection_init_wait_timeout.total_seconds()
        self.init_timeout.set(seconds, self.close_uninitialised, name=INIT_TIMEOUT)
        try:
            try:
                async for message in self.websocket.iter_json():
                    await self.handle_message(cast("legacy.OperationMessage", message))
                    del message  # not held while waiting for the next one
            except NonTextMessageReceived:
                await self.socket.close(4400, "WebSocket message type must be text")
            except NonJsonMessageReceived:
                await self.socket.close(4400, "WebSocket message must be valid JSON")
        except WebSocketDisconnected:
            pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        await self.init_timeout.cancel()
        await self.deadline.cancel()
        if self.keep_alive_task is not None:
            self.keep_alive_task.cancel()
            await asyncio.wait([self.keep_alive_task])
        await self.cleanup()

    async def close_uninitialised(self) -> None:
        if not self.connection_init_received:
            await self.socket.close(4408, "Connection initialisation timeout")

    async def handle_message(self, message: legacy.OperationMessage) -> None:
        if self.socket.closed:
            return
        problem = legacy_message_problem(message)
        if problem is not None:
            await self.socket.close(4400, problem)
            return
        kind = message["type"]
        if kind == "connection_init":
            await self.handle_connection_init(cast("legacy.ConnectionInitMessage", message))
        elif kind == "connection_terminate":
            await self.handle_connection_terminate(
                cast("legacy.ConnectionTerminateMessage", message)
            )
        elif kind == "start":
            await self.handle_start(cast("legacy.StartMessage", message))
        else:
            await self.handle_stop(cast("legacy.StopMessage", message))

    async def handle_connection_init(self, message: legacy.ConnectionInitMessage) -> None:
        self.init_timeout.disarm()
        payload = message.get("payload")
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            await self.socket.close(4400, "Invalid connection init payload")
            return
        if self.connection_init_received:
            await self.socket.close(4429, "Too many initialisation requests")
            return
        self.connection_init_received = True
        self.context.connection_params = payload
        try:
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError:
            # Like graphql-transport-ws: one reason, whatever on_ws_connect knew.
            await self.send_message(
                {"type": "connection_error", "payload": {"message": "Forbidden"}}
            )
            await self.socket.close(4403, "Forbidden")
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        # on_ws_connect has read the token: the principal is what the connection keeps.
        self.context.connection_params = {}
        self.connection_acknowledged = True
        timeouts = shared_timeouts(self.view)
        self.deadline.arm(self.context.principal, self.expire, timeouts=timeouts)
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())

    async def handle_start(self, message: legacy.StartMessage) -> None:
        if not self.connection_acknowledged:
            await self.socket.close(4401, "Unauthorized")
            return
        operation_id = message["id"]
        for finished in [key for key, task in self.tasks.items() if task.done()]:
            self.tasks.pop(finished, None)
            self.subscriptions.pop(finished, None)
        if operation_id in self.tasks:
            # Strawberry would silently replace the running operation.
            await self.socket.close(4409, f"Subscriber for {operation_id} already exists")
            return
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.tasks) >= limit:
            error = subscription_limit_error(limit)
            await self.send_message(
                {"type": "error", "id": operation_id, "payload": error.formatted}
            )
            return
        share_query(message["payload"])
        await super().handle_start(message)

    async def expire(self) -> None:
        await self.socket.close(4403, TOKEN_EXPIRED)
        for task in list(self.tasks.values()):
            task.cancel()  # shutdown awaits them


def share_query(payload: Mapping[str, Any]) -> None:
    """Make the operation's query text the one copy every operation with the same text holds
    (each keeps it for its whole life, and clients send the same few queries)."""
    query = payload.get("query")
    if isinstance(query, str):
        cast("dict[str, Any]", payload)["query"] = sys.intern(query)


def subscription_limit_error(limit: int) -> GraphQLError:
    return GraphQLError(
        f"Subscription limit reached: at most {limit} running operations per connection.",
        extensions={"code": TOO_MANY_SUBSCRIPTIONS},
    )
