"""Python client for quiver's feature server, over Arrow Flight (pyarrow only).

    import quiver_client as qc
    client = qc.Client("grpc://127.0.0.1:8815", token="...")
    table = client.get_online_features("user_txn_stats", {"user_id": [1, 2]})

Every call returns a ``pyarrow.Table`` (or a pandas DataFrame with ``output="pandas"``)
and raises a ``QuiverError`` subclass named after the server's status.
"""

import json

import pyarrow as pa
import pyarrow.flight as fl

__all__ = [
    "Client",
    "QuiverError",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "InvalidArgument",
    "ResourceExhausted",
    "Unavailable",
    "ServerError",
]
__version__ = "0.1.0"


class QuiverError(Exception):
    """A request the server refused or failed; ``code`` is the gRPC status name."""

    code = "Unknown"


class NotFound(QuiverError):
    """No such view, version, feature, model or upload (gRPC NOT_FOUND)."""

    code = "NotFound"


class PermissionDenied(QuiverError):
    """The token's tenant may not read it (gRPC PERMISSION_DENIED)."""

    code = "PermissionDenied"


class Unauthenticated(QuiverError):
    """No token, or an unknown one (gRPC UNAUTHENTICATED)."""

    code = "Unauthenticated"


class InvalidArgument(QuiverError):
    """A malformed request: bad keys, types, feature references (gRPC INVALID_ARGUMENT)."""

    code = "InvalidArgument"


class ResourceExhausted(QuiverError):
    """Over a server limit: too many keys, rows or bytes (gRPC RESOURCE_EXHAUSTED)."""

    code = "ResourceExhausted"


class Unavailable(QuiverError):
    """The server cannot be reached or is shutting down (gRPC UNAVAILABLE)."""

    code = "Unavailable"


class ServerError(QuiverError):
    """The server failed (gRPC INTERNAL and the rest)."""

    code = "Internal"


def _translate(e):
    """The QuiverError for a pyarrow Flight exception."""
    msg = str(e)
    if isinstance(e, fl.FlightUnauthenticatedError):
        return Unauthenticated(msg)
    if isinstance(e, fl.FlightUnauthorizedError):
        return PermissionDenied(msg)
    if isinstance(e, (fl.FlightUnavailableError, fl.FlightTimedOutError)):
        return Unavailable(msg)
    if isinstance(e, (KeyError, pa.ArrowKeyError)) or "gRPC code: 5" in msg:
        return NotFound(msg)
    if isinstance(e, (pa.ArrowInvalid, ValueError)):
        return InvalidArgument(msg)
    if isinstance(e, pa.ArrowCapacityError) or "ResourceExhausted" in msg or "gRPC code: 8" in msg:
        return ResourceExhausted(msg)
    return ServerError(msg)


def _columns(keys):
    """Key columns as a {name: [values]} mapping from a dict, Arrow table or DataFrame."""
    if isinstance(keys, dict):
        return {k: list(v) for k, v in keys.items()}
    if isinstance(keys, (pa.Table, pa.RecordBatch)):
        return {name: keys.column(name).to_pylist() for name in keys.schema.names}
    if hasattr(keys, "to_dict") and hasattr(keys, "columns"):  # pandas
        return {str(c): keys[c].tolist() for c in keys.columns}
    raise TypeError("keys are a dict of columns, a pyarrow.Table or a pandas.DataFrame")


def _table(entities):
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pa.RecordBatch):
        return pa.Table.from_batches([entities])
    if hasattr(entities, "columns"):  # pandas
        return pa.Table.from_pandas(entities, preserve_index=False)
    raise TypeError("entities are a pyarrow.Table or a pandas.DataFrame")


class Client:
    """A connection to ``quiver serve``.

    ``url``: ``grpc://HOST:PORT`` (``grpc+tls://`` with TLS); ``token``: the tenant's
    bearer token; ``timeout``: seconds per call; ``output``: ``"arrow"`` (default) or
    ``"pandas"``; ``tls_root_certs``: PEM bytes of the CA for ``grpc+tls://``.
    """

    def __init__(self, url, token=None, timeout=30.0, output="arrow", tls_root_certs=None):
        if output not in ("arrow", "pandas"):
            raise ValueError(f"output is 'arrow' or 'pandas', not {output!r}")
        kwargs = {}
        if tls_root_certs is not None:
            kwargs["tls_root_certs"] = tls_root_certs
        self._flight = fl.FlightClient(url, **kwargs)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._options = fl.FlightCallOptions(headers=headers, timeout=timeout)
        self._output = output

    def close(self):
        """Close the connection."""
        self._flight.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _out(self, table):
        return table.to_pandas() if self._output == "pandas" else table

    def _get(self, command):
        try:
            return self._flight.do_get(fl.Ticket(json.dumps(command).encode()), self._options).read_all()
        except (fl.FlightError, pa.ArrowException, KeyError, ValueError) as e:
            raise _translate(e) from e

    def _action(self, name, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        try:
            results = list(self._flight.do_action(fl.Action(name, data), self._options))
        except (fl.FlightError, pa.ArrowException, KeyError, ValueError) as e:
            raise _translate(e) from e
        if not results:
            raise ServerError(f"action {name!r} answered nothing")
        return json.loads(results[0].body.to_pybytes())

    def list_views(self):
        """The feature views this token may read: name, version, keys, features, owner."""
        return self._action("list")["views"]

    def get_online_features(self, view, keys, features=None):
        """Online values of ``view`` for ``keys`` (a dict of key columns, an Arrow table
        or a DataFrame): one row per key, in order, with ``VIEW__status`` and
        ``VIEW__event_timestamp``."""
        command = {"type": "online", "view": view, "keys": _columns(keys)}
        if features is not None:
            command["features"] = list(features)
        return self._out(self._get(command))

    def get_historical_features(self, entities, features, full_names=False):
        """A point-in-time training set: ``entities`` (keys and ``event_timestamp``, as an
        Arrow table or a DataFrame) is uploaded with DoPut, then each feature reference
        (``VIEW``, ``VIEW:FEATURE``, ``VIEW@N:FEATURE``) is joined as of each row's time."""
        table = _table(entities)
        descriptor = fl.FlightDescriptor.for_command(json.dumps({"type": "upload"}))
        try:
            writer, reader = self._flight.do_put(descriptor, table.schema, self._options)
            writer.write_table(table)
            writer.done_writing()
            upload = json.loads(reader.read().to_pybytes())["upload"]
            writer.close()
        except (fl.FlightError, pa.ArrowException, KeyError, ValueError) as e:
            raise _translate(e) from e
        command = {"type": "historical", "features": list(features), "upload": upload, "full_names": full_names}
        return self._out(self._get(command))

    def score(self, model, keys, explain=False):
        """Score ``keys`` with a registered model's served versions: online features
        fetched and scored in one round trip; ``explain`` adds per-feature contributions."""
        return self._out(self._get({"type": "score", "model": model, "keys": _columns(keys), "explain": explain}))

    def health(self, max_lag_seconds=None):
        """The server's freshness: ``{"status": "ok"|"behind", "views": [...]}`` with, per
        view this token may read, the served and applied versions, the Delta versions
        held and the lag in seconds; with ``max_lag_seconds``, a view whose lag exceeds
        it is ``behind``."""
        body = None if max_lag_seconds is None else {"max_lag_seconds": max_lag_seconds}
        return self._action("health", body)

    def action(self, name, body=None):
        """Any server action (``health``, ``list``, ``model-status``, ``explain``, ...) as JSON."""
        return self._action(name, body)
