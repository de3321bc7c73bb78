"""Writes valid inputs for the fuzz targets (fuzz/corpus/TARGET/seed-*): Arrow IPC streams
with and without compression, Parquet files shaped like Strata's segments, SQL
statements. The fuzzer mutates them into the malformed inputs it is after."""

import io
import pathlib
import sys

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq


def table(rows: int) -> pa.Table:
    return pa.table(
        {
            "station": pa.array([f"S{i % 7}" for i in range(rows)], pa.string()),
            "ts": pa.array(range(rows), pa.timestamp("ms")),
            "temperature": pa.array([i / 3 for i in range(rows)], pa.float64()),
            "flag": pa.array([i % 2 == 0 for i in range(rows)], pa.bool_()),
        }
    )


def main(out: pathlib.Path) -> None:
    seeds = {}
    for compression in [None, "zstd", "lz4"]:
        for rows in [0, 3, 100]:
            sink = io.BytesIO()
            options = ipc.IpcWriteOptions(compression=compression)
            with ipc.new_stream(sink, table(rows).schema, options=options) as w:
                w.write_table(table(rows))
            seeds[("ipc_decode", f"{compression}-{rows}")] = sink.getvalue()
    for rows in [1, 50]:
        sink = io.BytesIO()
        pq.write_table(table(rows), sink, compression="zstd", write_page_index=True)
        seeds[("segment", f"zstd-{rows}")] = sink.getvalue()
    statements = [
        "SELECT station, avg(temperature) FROM weather WHERE ts > now() - INTERVAL '1 hour' GROUP BY station",
        "SELECT * FROM weather VERSION AS OF 3 WHERE station IN ('a', 'b') ORDER BY ts DESC LIMIT 10",
        "WITH t AS (SELECT station, max(ts) m FROM weather GROUP BY 1) SELECT * FROM t JOIN weather w ON t.station = w.station",
        "INSERT INTO weather VALUES ('a', TIMESTAMP '2026-01-01 00:00:00', 1.5)",
        "DELETE FROM weather WHERE temperature < -50 OR station = 'x'",
        "RESTORE TABLE weather TO TIMESTAMP AS OF '2026-01-01T00:00:00Z'",
        "SELECT CAST(temperature AS INT) + 1 * 2 - 3 / 4 FROM weather UNION ALL SELECT 1",
    ]
    for i, s in enumerate(statements):
        seeds[("sql", f"{i}")] = s.encode()
    for (target, name), data in seeds.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        (d / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
