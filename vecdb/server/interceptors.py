"""One server interceptor for every vecdb RPC: auth, bad-input decoding, deadlines, errors,
metrics, logging. Health and reflection pass through untouched (no key needed).

::

    request bytes --safe deserializer--> message | Malformed        (never INTERNAL for garbage)
         |
    deadline already past?  -> DEADLINE_EXCEEDED
    API key -> Principal    -> UNAUTHENTICATED
    servicer(request, CallContext(context, principal))
         |  VecdbError e    -> e.grpc_code with str(e)                (the engine's clear message)
         |  other exception -> INTERNAL "internal error (ref ...)"    (details only in the log)
    metrics + log line

Oversized messages never reach this code: ``grpc.max_receive_message_length`` makes gRPC answer
RESOURCE_EXHAUSTED itself.
"""

from __future__ import annotations

import logging
import secrets
import time

import grpc

from vecdb.errors import InvalidArgument, VecdbError
from vecdb.server.auth import ANONYMOUS_ADMIN, Principal, key_from_metadata

log = logging.getLogger("vecdb.server")
_PREFIX = "/vecdb.v1."


class Malformed:
    """Stands for a request that failed to parse, so the servicer wrapper can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL for a deserializer exception)."""

    def __init__(self, err: Exception) -> None:
        self.err = err


def _safe(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # DecodeError and friends
            return Malformed(e)
    return parse


class CallContext:
    """The gRPC servicer context plus the authenticated principal of the call."""

    __slots__ = ("_ctx", "principal")

    def __init__(self, ctx, principal: Principal) -> None:
        self._ctx = ctx
        self.principal = principal

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def _check_request(req) -> None:
    if isinstance(req, Malformed):
        raise InvalidArgument(f"malformed request message: {req.err}")


def _stream_requests(it):
    for req in it:
        _check_request(req)
        yield req


class ServerInterceptor(grpc.ServerInterceptor):
    """Wraps every ``/vecdb.v1.*`` handler (see the module docstring)."""

    def __init__(self, keys, metrics, auth_enabled: bool = True) -> None:
        self.keys = keys
        self.metrics = metrics
        self.auth_enabled = auth_enabled
        self._cache: dict[str, tuple[int, Principal]] = {}  # key -> (store version, principal)

    # -- the pieces -----------------------------------------------------------------------
    def _principal(self, ctx) -> Principal:
        if not self.auth_enabled:
            return ANONYMOUS_ADMIN
        key = key_from_metadata(ctx.invocation_metadata())
        hit = self._cache.get(key) if key else None
        if hit is not None and hit[0] == self.keys.version:
            return hit[1]
        p = self.keys.authenticate(key)  # raises Unauthenticated
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (self.keys.version, p)  # a revoke bumps the version: re-checked
        return p

    def _fail(self, ctx, method: str, e: Exception) -> None:
        if isinstance(e, VecdbError):
            code = getattr(grpc.StatusCode, e.grpc_code, grpc.StatusCode.INTERNAL)
            ctx.abort(code, str(e))
        ref = secrets.token_hex(4)
        log.exception("internal error in %s (ref %s)", method, ref)
        ctx.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}; see the server log)")

    def _begin(self, ctx, method: str) -> CallContext:
        remaining = ctx.time_remaining()
        if remaining is not None and remaining <= 0:
            ctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before start")
        return CallContext(ctx, self._principal(ctx))

    def _done(self, ctx, method: str, t0: float, code: str) -> None:
        dt = time.perf_counter() - t0
        self.metrics.observe(method, code, dt)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %.3f ms", method, code, dt * 1e3)

    @staticmethod
    def _code(ctx, default: str = "OK") -> str:
        try:
            c = ctx.code()
        except Exception:
            c = None
        if c is None:
            return default
        return c.name if isinstance(c, grpc.StatusCode) else str(c)

    # -- wrapping -------------------------------------------------------------------------
    def _wrap_unary_out(self, behavior, method, stream_in):
        def handler(request, ctx):
            t0 = time.perf_counter()
            code = "OK"
            try:
                cctx = self._begin(ctx, method)
                if stream_in:
                    request = _stream_requests(request)
                else:
                    _check_request(request)
                return behavior(request, cctx)
            except Exception as e:
                code = getattr(e, "grpc_code", None) or self._code(ctx, "INTERNAL")
                if self._code(ctx, "") and self._code(ctx, "") != "OK":
                    raise  # already aborted (context.abort raised)
                self._fail(ctx, method, e)
            finally:
                self._done(ctx, method, t0, code)
        return handler

    def _wrap_stream_out(self, behavior, method, stream_in):
        def handler(request, ctx):
            t0 = time.perf_counter()
            code = "OK"
            try:
                cctx = self._begin(ctx, method)
                if stream_in:
                    request = _stream_requests(request)
                else:
                    _check_request(request)
                yield from behavior(request, cctx)
            except GeneratorExit:
                code = "CANCELLED"
                raise
            except Exception as e:
                code = getattr(e, "grpc_code", None) or self._code(ctx, "INTERNAL")
                if self._code(ctx, "") and self._code(ctx, "") != "OK":
                    raise
                self._fail(ctx, method, e)
            finally:
                self._done(ctx, method, t0, code)
        return handler

    def intercept_service(self, continuation, handler_call_details):
        h = continuation(handler_call_details)
        method = handler_call_details.method
        if h is None or not method.startswith(_PREFIX):
            return h
        short = method[len(_PREFIX):]
        deser = _safe(h.request_deserializer)
        if h.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary_out(h.unary_unary, short, False), deser, h.response_serializer)
        if h.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary_out(h.stream_unary, short, True), deser, h.response_serializer)
        if h.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream_out(h.unary_stream, short, False), deser,
                h.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream_out(h.stream_stream, short, True), deser, h.response_serializer)
