"""Talk to `quiver serve` with pyarrow's Flight client, as any Python user would:
every RPC the server offers (ListFlights, GetFlightInfo, GetSchema, DoGet, DoPut,
DoExchange with several batches, DoAction, ListActions).

Usage: flight_client.py PORT TOKEN OTHER_TENANT_TOKEN
Prints one JSON document with what it read; the Rust test checks it.
"""
import json
import sys
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.flight as fl


def table_dict(table):
    out = {}
    for name in table.column_names:
        out[name] = [None if v is None else (v.isoformat() if hasattr(v, "isoformat") else v) for v in table.column(name).to_pylist()]
    return out


def main():
    port, token, other = sys.argv[1], sys.argv[2], sys.argv[3]
    client = fl.FlightClient(f"grpc://127.0.0.1:{port}")
    auth = [(b"authorization", f"Bearer {token}".encode())]
    opts = fl.FlightCallOptions(headers=auth, timeout=30)
    out = {"pyarrow": pa.__version__}

    out["flights"] = sorted(json.loads(f.descriptor.command)["view"] for f in client.list_flights(options=opts))

    # Online features: GetFlightInfo, then DoGet on the endpoint's ticket.
    cmd = {"type": "online", "view": "stats", "keys": {"user_id": [1, 2, 3]}}
    info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(cmd)), opts)
    out["online_schema"] = info.schema.names
    out["online"] = table_dict(client.do_get(info.endpoints[0].ticket, opts).read_all())

    # Training set: upload the entity table with DoPut, then DoGet the result.
    base = int(sys.argv[4]) if len(sys.argv) > 4 else None
    when = datetime.fromtimestamp(base / 1e6, tz=timezone.utc)
    entities = pa.table({
        "user_id": pa.array([1, 2], pa.int64()),
        "event_timestamp": pa.array([when, when], pa.timestamp("us", tz="UTC")),
    })
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps({"type": "upload"})), entities.schema, opts)
    writer.write_table(entities)
    writer.done_writing()
    upload = json.loads(reader.read().to_pybytes())["upload"]
    writer.close()
    ticket = fl.Ticket(json.dumps({"type": "historical", "features": ["stats"], "upload": upload}).encode())
    out["historical"] = table_dict(client.do_get(ticket, opts).read_all())

    # GetSchema of the same descriptor.
    out["schema"] = client.get_schema(fl.FlightDescriptor.for_command(json.dumps(cmd)), opts).schema.names

    # DoExchange: pyarrow sends the descriptor alone first, then the schema and batches.
    ex = fl.FlightDescriptor.for_command(json.dumps({"type": "exchange", "view": "stats"}))
    writer, reader = client.do_exchange(ex, opts)
    key_schema = pa.schema([("user_id", pa.int64())])
    writer.begin(key_schema)
    rows = []
    for ids in ([1, 2], [3], [2, 1, 1]):
        writer.write_batch(pa.record_batch([pa.array(ids, pa.int64())], schema=key_schema))
    writer.done_writing()
    for chunk in reader:
        if chunk.data is not None:
            rows.extend(chunk.data.column("n_1d").to_pylist())
    writer.close()
    out["exchange_n_1d"] = rows

    # ListActions.
    out["action_types"] = sorted(a.type for a in client.list_actions(opts))

    # Admin action and the errors a Python user sees.
    out["actions"] = [json.loads(r.body.to_pybytes()) for r in client.do_action(fl.Action("list", b""), opts)]
    try:
        client.do_get(fl.Ticket(json.dumps(cmd).encode()), fl.FlightCallOptions(headers=[(b"authorization", b"Bearer wrong-token-0000000000")])).read_all()
    except fl.FlightUnauthenticatedError:
        out["unauthenticated"] = True
    try:
        other_opts = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {other}".encode())])
        client.do_get(fl.Ticket(json.dumps(cmd).encode()), other_opts).read_all()
    except fl.FlightUnauthorizedError:
        out["permission_denied"] = True
    try:
        client.do_get(fl.Ticket(b"{oops"), opts).read_all()
    except pa.ArrowInvalid:
        out["invalid_argument"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    main()
