"""Drives Strata's Flight SQL endpoint with ADBC (the Flight SQL driver through Python's
DB-API) and its pipeline actions with pyarrow.flight, as a user's scripts would.

usage: flight_sql_clients.py GRPC_URL

Needs an empty server. Checks as it goes (a failed check exits non-zero with the
reason) and prints one JSON object with what it saw, for the calling test to compare
with the server's own view.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_error(run, code_word, what):
    """Runs `run`, which must fail with an error whose text names `code_word`."""
    try:
        run()
    except adbc_driver_manager.Error as e:
        text = f"{type(e).__name__}: {e}"
        check(code_word in text, f"{what}: expected {code_word}, got {text}")
        return text
    raise AssertionError(f"{what}: no error")


def action(client, name, body):
    results = list(client.do_action(flight.Action(name, json.dumps(body).encode())))
    check(len(results) == 1, f"{name}: one result, got {len(results)}")
    return json.loads(results[0].body.to_pybytes())


def main():
    url = sys.argv[1]
    out = {}
    # Strata has no transactions: each statement commits on its own.
    with flight_sql.connect(url, autocommit=True) as conn:
        info = conn.adbc_get_info()
        check(info["vendor_name"] == "Strata", f"vendor_name {info}")
        check(conn.adbc_get_table_types() == ["TABLE"], "table types")

        cur = conn.cursor()
        # DDL and writes through cursor.execute (ADBC prepares, then runs it as a query),
        # without reading their results.
        cur.execute(
            "CREATE TABLE weather (station VARCHAR, ts BIGINT, temp DOUBLE, "
            "PRIMARY KEY ((station), ts)) WITH (shards = 2)"
        )
        cur.execute("INSERT INTO weather VALUES ('a', 1, 1.5), ('b', 2, 2.5)")
        cur.execute("SELECT station, ts, temp FROM weather ORDER BY station")
        table = cur.fetch_arrow_table()
        check(table.num_rows == 2, f"two rows after INSERT: {table}")
        check(table.column("temp").to_pylist() == [1.5, 2.5], f"temps {table}")

        # executemany: one prepared INSERT, one execution per parameter row.
        cur.executemany(
            "INSERT INTO weather VALUES (?, ?, ?)", [("c", 3, 3.5), ("c", 4, None)]
        )
        cur.execute("SELECT DISTINCT station FROM weather ORDER BY station")
        out["stations"] = [r[0] for r in cur.fetchall()]

        # Parameters: $1 (DataFusion's style) and ? (DB-API's qmark, numbered by the server).
        cur.execute("SELECT station, ts FROM weather WHERE ts = $1", (2,))
        out["parameterised"] = [list(r) for r in cur.fetchall()]
        cur.execute("SELECT station, ts FROM weather WHERE ts = ? AND temp > ?", (3, 1.0))
        out["qmark"] = [list(r) for r in cur.fetchall()]

        # Time travel: version 1 is the CREATE, 2 the first INSERT.
        cur.execute("SELECT count(*) AS n FROM weather VERSION AS OF 2")
        check(cur.fetchone()[0] == 2, "two rows at version 2")

        # Catalog metadata.
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        check([c["catalog_name"] for c in objects] == ["strata"], f"catalogs {objects}")
        schemas = objects[0]["catalog_db_schemas"]
        check([s["db_schema_name"] for s in schemas] == ["public"], f"schemas {schemas}")
        tables = schemas[0]["db_schema_tables"]
        check([t["table_name"] for t in tables] == ["weather"], f"tables {tables}")
        columns = [c["column_name"] for c in tables[0]["table_columns"]]
        check(columns == ["station", "ts", "temp"], f"columns {columns}")
        schema = conn.adbc_get_table_schema("weather")
        out["table_schema"] = schema.names
        check(schema.field("ts").type == pa.int64(), f"schema {schema}")

        # Errors carry the server's status and message.
        out["parse_error"] = expect_error(
            lambda: cur.execute("SELEC 1"), "INVALID_ARGUMENT", "bad SQL"
        )
        out["not_found_error"] = expect_error(
            lambda: cur.execute("SELECT * FROM nope"), "NOT_FOUND", "unknown table"
        )

        # Bulk ingest (adbc_ingest) into the existing dataset; visible once it returns.
        rows = pa.table(
            {
                "station": ["d", "d"],
                "ts": pa.array([5, 6], pa.int64()),
                "temp": [5.5, 6.5],
            }
        )
        out["ingested"] = cur.adbc_ingest("weather", rows, mode="append")
        cur.execute("SELECT ts FROM weather WHERE station = 'd' ORDER BY ts")
        out["ingested_rows"] = [r[0] for r in cur.fetchall()]
        out["ingest_create_error"] = expect_error(
            lambda: cur.adbc_ingest("weather", rows, mode="create"),
            "ALREADY_EXISTS",
            "ingest mode create over an existing dataset",
        )
        out["ingest_unknown_error"] = expect_error(
            lambda: cur.adbc_ingest("nope", rows, mode="append"),
            "NOT_FOUND",
            "ingest into an unknown dataset",
        )
        cur.close()

    # Pipeline actions with pyarrow.flight on the same port.
    client = flight.connect(url)
    names = [a.type for a in client.list_actions()]
    for name in ["flush", "rollback", "tag", "delete_tag", "list_versions"]:
        check(name in names, f"{name} in {names}")
    log = action(client, "list_versions", {"dataset": "weather"})
    head = log["head"]
    check([v["version"] for v in log["versions"]] == list(range(1, head + 1)), f"log {log}")
    tagged = action(client, "tag", {"dataset": "weather", "tag": "before-bad-load"})
    check(tagged["version"] == head, f"tag {tagged}")

    # A bad load through DoPut, then a rollback to the tag.
    schema = pa.schema(
        [
            pa.field("station", pa.utf8(), nullable=False),
            pa.field("ts", pa.int64(), nullable=False),
            pa.field("temp", pa.float64()),
        ]
    )
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("weather"), schema)
    writer.write_batch(
        pa.record_batch(
            [pa.array(["z"] * 3), pa.array([7, 8, 9], pa.int64()), pa.array([-99.0] * 3)],
            schema=schema,
        )
    )
    writer.done_writing()
    ack = json.loads(reader.read().to_pybytes())
    check(ack["rows"] == 3, f"ack {ack}")
    writer.close()
    rolled = action(
        client, "rollback", {"dataset": "weather", "version": {"tag": "before-bad-load"}}
    )
    check(rolled["to"] == head, f"rollback {rolled}")
    action(client, "flush", {"dataset": "weather"})
    with flight_sql.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) AS n FROM weather")
        out["after_rollback"] = cur.fetchone()[0]
        cur.close()
    try:
        action(client, "flush", {"dataset": "nope"})
        raise AssertionError("flush of an unknown dataset succeeded")
    except (flight.FlightError, pa.ArrowException) as e:  # NOT_FOUND: ArrowKeyError
        out["action_error"] = f"{type(e).__name__}: {e}"
        check("nope" in str(e), f"action error {e}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
