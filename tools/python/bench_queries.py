"""Strata's analyst queries against DuckDB and DataFusion over the same rows.

Run by tools/bench-queries, which builds the release binaries and this virtualenv. For each
row count, `bench-data` builds the weather feed's rows as a Strata data directory and as
plain Parquet files (cached under --data, reused while the build is the same). Then:

- Strata: `strata serve` on a free loopback port over that directory, queried through ADBC
  Flight SQL (one connection, as a dashboard keeps). Cold: the first run of a query after a
  server restart (each client has connected and run `SELECT 1` first, as DuckDB's
  connection is opened untimed). Hot: runs after that, on the same server.
- DuckDB native: the Parquet files loaded into an in-memory DuckDB table (CREATE TABLE AS),
  queried in process. Only hot runs (it has no cold state besides the load).
- DuckDB over Parquet and DataFusion over Parquet (the `datafusion` Python package): cold
  is the first run in a fresh connection/context, hot the runs after it.

Cold times are the median of --cold-runs rounds (5); in each round every query runs cold
through Strata's two clients and then through DuckDB over Parquet, one after the other,
so both sides meet the machine in the same state (DataFusion's cold run is one run).

Strata's hot and cold runs are measured through two standard clients: ADBC's Flight SQL
driver (Go, loaded by `adbc_driver_flightsql`) and Arrow's C++ Flight client
(`pyarrow.flight`) sending the same Flight SQL statement (GetFlightInfo on a
CommandStatementQuery, then DoGet on its endpoint). Both pay the request's round trips;
the ADBC driver also runs a full Go garbage collection each time a result stream is
released (`runtime.GC()` in its ArrayStreamRelease; `GODEBUG=gctrace=1` prints one
"(forced)" collection per query).

Every system runs on --threads threads (2). Each query's hot time is the median of --runs
runs after one warm-up; every system's answer is checked against Strata's (floats within a
relative 1e-9) and the run stops if one differs. Also measured: `SELECT 1` and a point
query (one station, one hour, one column) through both clients, the median of
--latency-runs, and each client's floor against a Flight server that does nothing (in a
process of its own). The operating system's page cache is warm for everyone (the files were
just read or written).

Prints one table per row count (milliseconds and ratios to DuckDB native and to DuckDB
over Parquet) and the memory each system held; --json FILE also writes the figures.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import threading

import adbc_driver_flightsql.dbapi as flightsql
import datafusion
import duckdb
import pyarrow as pa
import pyarrow.flight as flight


def free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class IdleFlightServer(flight.FlightServerBase):
    """A Flight server that does no work: every GetFlightInfo gets one endpoint, every DoGet
    a one-row table (an empty SqlInfo answer for the driver's handshake). ADBC's
    `adbc_get_table_types` (GetFlightInfo + DoGet) against it is the client's own floor for
    a query's two round trips, measured beside Strata in the same run."""

    TABLE = pa.table({"table_type": ["TABLE"]})
    SQL_INFO = pa.schema(
        [
            pa.field("info_name", pa.uint32(), nullable=False),
            pa.field(
                "value",
                pa.dense_union(
                    [
                        pa.field("string_value", pa.utf8()),
                        pa.field("bool_value", pa.bool_()),
                        pa.field("bigint_value", pa.int64()),
                        pa.field("int32_bitmask", pa.int32()),
                        pa.field("string_list", pa.list_(pa.utf8())),
                        pa.field(
                            "int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32()))
                        ),
                    ]
                ),
                nullable=False,
            ),
        ]
    )

    def get_flight_info(self, context, descriptor):
        if b"CommandGetSqlInfo" in descriptor.command:
            return flight.FlightInfo(
                self.SQL_INFO, descriptor, [flight.FlightEndpoint(b"info", [])], 0, -1
            )
        return flight.FlightInfo(
            self.TABLE.schema, descriptor, [flight.FlightEndpoint(b"rows", [])], 1, -1
        )

    def do_get(self, context, ticket):
        if ticket.ticket == b"info":
            return flight.RecordBatchStream(pa.Table.from_batches([], self.SQL_INFO))
        return flight.RecordBatchStream(self.TABLE)


def median_ms(run, runs):
    run()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def serve_idle():
    """`--idle-server`: serves IdleFlightServer on a free loopback port, prints the port and
    stops when its standard input closes."""
    server = IdleFlightServer("grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.shutdown()


def client_floors(runs):
    """The medians of GetFlightInfo + DoGet against a server that does nothing, run in a
    process of its own: through ADBC (`adbc_get_table_types`) and through the C++ client."""
    idle = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--idle-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        uri = f"grpc://127.0.0.1:{int(idle.stdout.readline())}"
        conn = flightsql.connect(uri, autocommit=True)
        try:
            adbc = median_ms(conn.adbc_get_table_types, runs)
        finally:
            conn.close()
        client = flight.connect(uri)
        try:
            descriptor = flight.FlightDescriptor.for_command(b"table types")
            native = median_ms(lambda: fetch_flight(client, descriptor), runs)
        finally:
            client.close()
        return adbc, native
    finally:
        idle.stdin.close()
        idle.wait(60)


def protobuf_field(number, data):
    """One length-delimited protobuf field."""
    out, n = bytearray([number << 3 | 2]), len(data)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def statement_descriptor(sql):
    """A Flight SQL CommandStatementQuery, packed in a protobuf Any, as a Flight descriptor."""
    command = protobuf_field(1, sql.encode())
    packed = protobuf_field(
        1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    ) + protobuf_field(2, command)
    return flight.FlightDescriptor.for_command(packed)


def fetch_flight(client, descriptor):
    """GetFlightInfo, then DoGet on each endpoint, as a Flight SQL client runs a statement."""
    info = client.get_flight_info(descriptor)
    return pa.concat_tables([client.do_get(e.ticket).read_all() for e in info.endpoints])


class Server:
    """`strata serve` over a data directory, on a free loopback port."""

    def __init__(self, strata, data_dir, threads, cache_mb, extra):
        config = os.path.join(data_dir, "bench.toml")
        with open(config, "w") as f:
            f.write(f"[query]\nthreads = {threads}\ntarget_partitions = {threads}\n")
            if cache_mb is not None:
                f.write(f"cache_mb = {cache_mb}\n")
        self.cmd = [strata, "serve", "--data-dir", data_dir, "--config", config] + extra
        self.proc = None
        self.conn = None
        self.cursors = {}
        self.client = None

    def start(self):
        port = free_port()
        env = dict(os.environ, STRATA_LOG="warn")
        self.log = open(os.path.join(self.cmd[3], "serve.log"), "ab")
        self.proc = subprocess.Popen(
            self.cmd + ["--listen", f"127.0.0.1:{port}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 120
        while True:
            try:
                self.conn = flightsql.connect(f"grpc://127.0.0.1:{port}", autocommit=True)
                cur = self.conn.cursor()
                cur.execute("SELECT 1")
                cur.fetch_arrow_table()
                cur.close()
                # Both clients are connected before any timed query (as the ADBC one is
                # by the query above): a Flight client opens its connection at its first
                # call, and DuckDB's connection is not timed either.
                self.client = flight.connect(f"grpc://127.0.0.1:{port}")
                fetch_flight(self.client, statement_descriptor("SELECT 1"))
                return
            except Exception:
                if self.conn is not None:
                    with contextlib.suppress(Exception):
                        self.conn.close()
                    self.conn = None
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"strata serve did not start: see {self.log.name}")
                time.sleep(0.2)

    def settle(self, timeout=600):
        """Waits until the server's background cache fills are done (if it has a cache)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                stats = self.query("SELECT fills_pending FROM strata_cache()").to_pylist()
            except Exception:
                return
            if stats[0]["fills_pending"] == 0:
                return
            # Fills wait for 50 ms without queries, and this poll is one.
            time.sleep(0.25)

    def query(self, sql):
        """Runs `sql` on a cursor kept for it, as a dashboard repeating a query does
        (ADBC prepares a statement when a cursor's SQL changes, then reuses it)."""
        cur = self.cursors.get(sql)
        if cur is None:
            cur = self.cursors[sql] = self.conn.cursor()
        cur.execute(sql)
        return cur.fetch_arrow_table()

    def flight_query(self, sql):
        """Runs `sql` through Arrow's C++ Flight client on a kept connection."""
        return fetch_flight(self.client, statement_descriptor(sql))

    def query_fresh(self, sql):
        """Runs `sql` on a new cursor (prepare, execute, fetch, close)."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
            return cur.fetch_arrow_table()
        finally:
            cur.close()

    def stop(self):
        for cur in self.cursors.values():
            with contextlib.suppress(Exception):
                cur.close()
        self.cursors = {}
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def duckdb_over_parquet(parquet, threads):
    """A fresh in-memory DuckDB connection with the Parquet files as the view `weather`."""
    con = duckdb.connect(config={"threads": threads})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW weather AS SELECT * FROM read_parquet('{parquet}')")
    return con


def duckdb_parquet_cold(parquet, sql, threads):
    """The first run of `sql` in a fresh connection (opening it is not timed): seconds,
    and the answer."""
    con = duckdb_over_parquet(parquet, threads)
    try:
        return timed(lambda s: con.sql(s).to_arrow_table(), duckdb_sql(sql))
    finally:
        con.close()


def duckdb_sql(sql):
    # DuckDB calls DataFusion's date_bin time_bucket.
    return sql.replace("date_bin(", "time_bucket(")


def normalize(table):
    """Rows as tuples of plain values, for comparison."""
    out = []
    for row in table.to_pylist():
        out.append(tuple(row.values()))
    return out


def same_value(a, b):
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and same_value(float(a), float(b))
    return a == b


def same_rows(a, b, ordered):
    if len(a) != len(b):
        return f"{len(a)} rows against {len(b)}"
    if not ordered:
        key = lambda r: tuple((v is None, repr(v) if isinstance(v, float) else v) for v in r)
        a, b = sorted(a, key=key), sorted(b, key=key)
    for i, (x, y) in enumerate(zip(a, b)):
        if len(x) != len(y) or not all(same_value(p, q) for p, q in zip(x, y)):
            return f"row {i}: {x} against {y}"
    return None


def timed(run, sql):
    t = time.perf_counter()
    result = run(sql)
    return time.perf_counter() - t, result


def hot(run, sql, runs):
    run(sql)
    samples = []
    for _ in range(runs):
        t, result = timed(run, sql)
        samples.append(t)
    return statistics.median(samples), result


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def build(args, rows):
    out = os.path.join(args.data, f"weather-{rows}")
    stamp = os.path.join(out, "done")
    built = os.path.join(out, "built-by")
    if os.path.exists(stamp) and open(built).read() == args.build_id:
        return out
    if os.path.exists(out):
        subprocess.run(["rm", "-rf", out], check=True)
    print(f"building {rows:,} rows in {out} ...", file=sys.stderr, flush=True)
    subprocess.run([args.bench_data, "--rows", str(rows), "--out", out], check=True)
    with open(built, "w") as f:
        f.write(args.build_id)
    return out


def bench(args, rows):
    out = build(args, rows)
    with open(os.path.join(out, "queries.json")) as f:
        queries = [q for q in json.load(f)["queries"] if q["id"] <= 6]
    parquet = os.path.join(out, "parquet", "*.parquet")
    results = {q["id"]: {"label": q["label"]} for q in queries}
    memory = {}

    # Strata hot, each query on a server started for it, through ADBC Flight SQL and the
    # C++ client (its answers checked against the ADBC ones).
    server = Server(
        args.strata, os.path.join(out, "strata"), args.threads, args.cache_mb, args.serve_arg
    )
    answers = {}
    try:
        for q in queries:
            server.stop()
            server.start()
            sql = q["sql"].replace("{t}", "weather")
            server.query(sql)
            # Hot: once what the first run queued for the cache is decoded (the first
            # queries after a start run while it is, at the speed of a cold cache).
            server.settle()
            t, answers[q["id"]] = hot(server.query, sql, args.runs)
            t_flight, answer = hot(server.flight_query, sql, args.runs)
            check(q, "Strata through the C++ Flight client", answers[q["id"]], answer)
            results[q["id"]]["strata_hot"] = t
            results[q["id"]]["strata_flight_hot"] = t_flight
        # Every query again on one server (hot), so its memory holds what all of them read.
        for q in queries:
            server.query(q["sql"].replace("{t}", "weather"))
            server.settle()
        memory["strata_rss_mib"] = rss_kib(server.proc.pid) / 1024
        memory["strata_peak_mib"] = rss_kib(server.proc.pid, "VmHWM") / 1024
        with contextlib.suppress(Exception):
            cache = server.query("SELECT * FROM strata_cache()")
            memory["strata_cache"] = cache.to_pylist()
        lat = {}
        point = queries[2]["sql"].replace("{t}", "weather").replace("SELECT *", "SELECT temperature")
        for name, sql in (("select_1", "SELECT 1"), ("point", point)):
            for suffix, run in (
                ("", server.query),
                ("_new_cursor", server.query_fresh),
                ("_flight", server.flight_query),
            ):
                lat[name + suffix] = median_ms(lambda: run(sql), args.latency_runs)
        lat["table_types"] = median_ms(server.conn.adbc_get_table_types, args.latency_runs)
        # Cold, --cold-runs rounds. A round runs each query once after a server restart
        # through each client, then once in a fresh DuckDB connection over the Parquet
        # files: the two sides alternate, so both meet the machine as it is at the time
        # (single cold runs here vary by ±30%). Each cold time is the median of its runs.
        samples = {q["id"]: {"adbc": [], "flight": [], "duckdb": []} for q in queries}
        for _ in range(args.cold_runs):
            for q in queries:
                sql = q["sql"].replace("{t}", "weather")
                for client, run in (("adbc", server.query), ("flight", server.flight_query)):
                    server.stop()
                    server.start()
                    t, answer = timed(run, sql)
                    check(q, f"Strata cold ({client})", answers[q["id"]], answer)
                    samples[q["id"]][client].append(t)
                if not args.strata_only:
                    t, answer = duckdb_parquet_cold(parquet, sql, args.threads)
                    check(q, "DuckDB over Parquet, cold", answers[q["id"]], answer)
                    samples[q["id"]]["duckdb"].append(t)
        for q in queries:
            r, x = results[q["id"]], samples[q["id"]]
            r["strata_cold"] = statistics.median(x["adbc"])
            r["strata_flight_cold"] = statistics.median(x["flight"])
            if x["duckdb"]:
                r["duckdb_parquet_cold"] = statistics.median(x["duckdb"])
            r["cold_runs"] = x
    finally:
        server.stop()
    lat["table_types_idle_server"], lat["flight_idle_server"] = client_floors(args.latency_runs)

    if args.strata_only:
        for q in queries:
            r = results[q["id"]]
            print(f"{q['id']} {q['label'][:36]:36} hot {r['strata_hot'] * 1000:8.1f} ms"
                  f" (flight {r['strata_flight_hot'] * 1000:8.1f})"
                  f"  cold {r['strata_cold'] * 1000:8.1f} ms"
                  f" (flight {r['strata_flight_cold'] * 1000:8.1f})")
        print(f"latency {lat}; {memory}")
        return {"rows": rows, "queries": results, "latency": lat, "memory": memory}

    # DuckDB over Parquet, hot (in a fresh connection per query; its cold runs are above).
    for q in queries:
        con = duckdb_over_parquet(parquet, args.threads)
        sql = duckdb_sql(q["sql"].replace("{t}", "weather"))
        run = lambda s: con.sql(s).to_arrow_table()
        t, answer = hot(run, sql, args.runs)
        results[q["id"]]["duckdb_parquet_hot"] = t
        check(q, "DuckDB over Parquet", answers[q["id"]], answer)
        con.close()

    # DuckDB native tables.
    before = rss_kib(os.getpid())
    con = duckdb.connect(config={"threads": args.threads})
    con.execute("SET TimeZone = 'UTC'")
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE weather AS SELECT * FROM read_parquet('{parquet}')")
    load = time.perf_counter() - t0
    run = lambda s: con.sql(s).to_arrow_table()
    for q in queries:
        sql = duckdb_sql(q["sql"].replace("{t}", "weather"))
        t, answer = hot(run, sql, args.runs)
        results[q["id"]]["duckdb_native_hot"] = t
        check(q, "DuckDB native", answers[q["id"]], answer)
    memory["duckdb_native_mib"] = (rss_kib(os.getpid()) - before) / 1024
    memory["duckdb_native_load_s"] = load
    with contextlib.suppress(Exception):
        memory["duckdb_memory_mib"] = (
            con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0] / 2**20
        )
    con.close()

    # DataFusion over Parquet.
    for q in queries:
        config = datafusion.SessionConfig().with_target_partitions(args.threads)
        ctx = datafusion.SessionContext(config)
        ctx.register_parquet("weather", os.path.join(out, "parquet"))
        run = lambda s: ctx.sql(s).to_arrow_table()
        sql = q["sql"].replace("{t}", "weather")
        cold, _ = timed(run, sql)
        t, answer = hot(run, sql, args.runs)
        results[q["id"]]["datafusion_parquet_cold"] = cold
        results[q["id"]]["datafusion_parquet_hot"] = t
        check(q, "DataFusion over Parquet", answers[q["id"]], answer)

    report(rows, queries, results, lat, memory)
    return {"rows": rows, "queries": results, "latency": lat, "memory": memory}


def check(q, system, strata, other):
    ordered = "ORDER BY" in q["sql"]
    if q["id"] == 6:
        # Top 10 by precip_1h: rows tied on it may be any of the tied rows.
        strata, other = strata.select(["precip_1h"]), other.select(["precip_1h"])
    why = same_rows(normalize(strata), normalize(other), ordered)
    if why is not None:
        sys.exit(f"query {q['id']} ({q['label']}): {system} differs from Strata: {why}")


def report(rows, queries, results, lat, memory):
    ms = lambda s: f"{s * 1000:9.1f}"
    print(f"\n== {rows:,} rows of the weather feed (ms; ratios: Strata / peer)")
    print("Strata hot through ADBC (adbc) and through Arrow's C++ Flight client (flight)")
    print(
        f"{'query':38} {'adbc':>9} {'flight':>9} {'duck nat':>9} {'duck pq':>9} {'df pq':>9}"
        f" {'/nat':>6} {'fl/nat':>6} {'/dpq':>6} | {'cold':>9} {'fl cold':>9} {'dpq cold':>9}"
        f" {'df cold':>9} {'/dpq':>6} {'fl/dpq':>6}"
    )
    hot_ratios, flight_ratios, cold_ratios, flight_cold_ratios = [], [], [], []
    for q in queries:
        r = results[q["id"]]
        rn = r["strata_hot"] / r["duckdb_native_hot"]
        rf = r["strata_flight_hot"] / r["duckdb_native_hot"]
        rp = r["strata_hot"] / r["duckdb_parquet_hot"]
        rc = r["strata_cold"] / r["duckdb_parquet_cold"]
        rfc = r["strata_flight_cold"] / r["duckdb_parquet_cold"]
        r.update(
            hot_vs_native=rn,
            flight_hot_vs_native=rf,
            hot_vs_duckdb_parquet=rp,
            cold_vs_duckdb_parquet=rc,
            flight_cold_vs_duckdb_parquet=rfc,
        )
        hot_ratios.append(rn)
        flight_ratios.append(rf)
        cold_ratios.append(rc)
        flight_cold_ratios.append(rfc)
        label = f"{q['id']} {q['label']}"[:38]
        print(
            f"{label:38} {ms(r['strata_hot'])} {ms(r['strata_flight_hot'])}"
            f" {ms(r['duckdb_native_hot'])} {ms(r['duckdb_parquet_hot'])}"
            f" {ms(r['datafusion_parquet_hot'])} {rn:6.2f} {rf:6.2f} {rp:6.2f} |"
            f" {ms(r['strata_cold'])} {ms(r['strata_flight_cold'])} {ms(r['duckdb_parquet_cold'])}"
            f" {ms(r['datafusion_parquet_cold'])} {rc:6.2f} {rfc:6.2f}"
        )
    print(
        f"geometric mean, Strata hot / DuckDB native: {geomean(hot_ratios):.2f} through ADBC"
        f" (worst {max(hot_ratios):.2f}), {geomean(flight_ratios):.2f} through the C++ Flight"
        f" client (worst {max(flight_ratios):.2f}); Strata cold / DuckDB over Parquet cold:"
        f" {geomean(cold_ratios):.2f} through ADBC (worst {max(cold_ratios):.2f}),"
        f" {geomean(flight_cold_ratios):.2f} through the C++ client"
        f" (worst {max(flight_cold_ratios):.2f})"
    )
    f = lambda key: f"{lat[key] * 1000:.2f}"
    print(
        f"ADBC round trip (a cursor kept per query; a new cursor each time): SELECT 1"
        f" {f('select_1')} ms ({f('select_1_new_cursor')}), point query (one station, one"
        f" hour) {f('point')} ms ({f('point_new_cursor')}); the driver's floor, GetFlightInfo"
        f" + DoGet (adbc_get_table_types) against a Flight server doing nothing:"
        f" {f('table_types_idle_server')} ms (Strata {f('table_types')})"
    )
    print(
        f"C++ Flight client round trip (a kept connection): SELECT 1 {f('select_1_flight')} ms,"
        f" point query {f('point_flight')} ms; its floor against the server doing nothing:"
        f" {f('flight_idle_server')} ms"
    )
    print(
        f"memory: strata server RSS {memory['strata_rss_mib']:.0f} MiB"
        f" (peak {memory['strata_peak_mib']:.0f}); DuckDB native table"
        f" {memory.get('duckdb_memory_mib', float('nan')):.0f} MiB by duckdb_memory(),"
        f" process grew {memory['duckdb_native_mib']:.0f} MiB"
    )
    if "strata_cache" in memory:
        print(f"strata cache: {memory['strata_cache']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strata", required=True)
    p.add_argument("--bench-data", required=True)
    p.add_argument("--build-id", required=True, help="rebuild the data when this changes")
    p.add_argument("--data", required=True)
    p.add_argument("--rows", default="10000000,50000000")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument(
        "--cold-runs", type=int, default=5, help="cold runs per query and system (the median)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-mb", type=int, help="the server's [query] cache_mb")
    p.add_argument("--strata-only", action="store_true", help="skip the peers")
    p.add_argument("--json")
    p.add_argument("--serve-arg", action="append", default=[], help="passed to strata serve")
    p.add_argument("--idle-server", action="store_true", help=argparse.SUPPRESS)
    if "--idle-server" in sys.argv[1:]:
        return serve_idle()
    args = p.parse_args()
    figures = [bench(args, int(r.replace("_", ""))) for r in args.rows.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
