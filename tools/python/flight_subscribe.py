"""Follows a Strata dataset's changes with pyarrow.flight DoGet, as a standard Arrow
client would: the ticket is a protobuf Any holding a strata.v1.SubscribeRequest (encoded
here by hand, so no protobuf package is needed).

usage: flight_subscribe.py GRPC_URL DATASET FROM_VERSION UNTIL_VERSION FILTER

Prints one JSON object: the stream's column names, the versions completed in order, and
the rows of each version by change type.
"""

import json
import sys

import pyarrow.flight as flight


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (strings, bytes, messages)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def subscribe_ticket(dataset, from_version, filter_sql):
    request = field(1, dataset.encode()) + varint(2 << 3) + varint(from_version)
    if filter_sql:
        request += field(4, filter_sql.encode())
    any_message = field(1, b"type.googleapis.com/strata.v1.SubscribeRequest") + field(2, request)
    return flight.Ticket(any_message)


def main():
    url, dataset, first, until, filter_sql = sys.argv[1:6]
    client = flight.FlightClient(url)
    reader = client.do_get(subscribe_ticket(dataset, int(first), filter_sql))
    completed, rows = [], {}
    while not completed or completed[-1] < int(until):
        chunk = reader.read_chunk()
        meta = json.loads(chunk.app_metadata.to_pybytes())
        version = meta["version"]
        if meta["complete"]:
            assert chunk.data.num_rows == 0
            completed.append(version)
            continue
        kinds = chunk.data.column("_change_type").to_pylist()
        for kind in kinds:
            counts = rows.setdefault(str(version), {})
            counts[kind] = counts.get(kind, 0) + 1
    print(
        json.dumps(
            {"columns": reader.schema.names, "completed": completed, "rows": rows}
        )
    )
    client.close()


if __name__ == "__main__":
    main()
