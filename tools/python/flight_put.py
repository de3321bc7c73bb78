"""Writes into a Strata dataset with pyarrow.flight DoPut, as a standard Arrow client would.

usage: flight_put.py GRPC_URL DATASET

The dataset has columns k (utf8, partition key), t (int64), v (float64). Prints one JSON
object: the acknowledgements of a plain DoPut, of an exactly-once DoPut, and of that
DoPut resent.
"""

import json
import sys

import pyarrow as pa
import pyarrow.flight as flight

SCHEMA = pa.schema(
    [
        pa.field("k", pa.utf8(), nullable=False),
        pa.field("t", pa.int64(), nullable=False),
        pa.field("v", pa.float64()),
    ]
)


def batch(first, n):
    ts = list(range(first, first + n))
    return pa.record_batch(
        [pa.array([f"k{t % 5}" for t in ts]), pa.array(ts, pa.int64()), pa.array([t / 2 for t in ts])],
        schema=SCHEMA,
    )


def put(client, path, batches, sequences=None):
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*path), SCHEMA)
    acks = []
    for i, b in enumerate(batches):
        if sequences is None:
            writer.write_batch(b)
        else:
            writer.write_with_metadata(b, pa.py_buffer(str(sequences[i]).encode()))
    writer.done_writing()
    while True:
        try:
            buf = reader.read()
        except StopIteration:
            break
        if buf is None:
            break
        acks.append(json.loads(buf.to_pybytes()))
    writer.close()
    return acks


def main():
    url, dataset = sys.argv[1], sys.argv[2]
    client = flight.connect(url)
    out = {
        "plain": put(client, [dataset], [batch(0, 10), batch(10, 10)]),
        "exactly_once": put(client, [dataset, "py-loader"], [batch(20, 5), batch(25, 5)], [1, 2]),
        "resent": put(client, [dataset, "py-loader"], [batch(20, 5), batch(25, 5)], [1, 2]),
    }
    try:
        put(client, ["no_such_dataset"], [batch(0, 1)])
        out["unknown_dataset_error"] = None
    except (flight.FlightError, pa.ArrowException) as e:  # NOT_FOUND surfaces as ArrowKeyError
        out["unknown_dataset_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
