"""Server CPU, page faults and wall time per query, cache off.

Starts `strata serve` over a data directory with `[query] cache_mb = 0` on a free
loopback port, runs one query through ADBC Flight SQL (a kept cursor) a few times to
warm up, then N times, and prints the server's CPU time (user + system, from
/proc/PID/stat) and minor page faults per query, the wall-time median and the first
run's time. For comparing two builds or two data layouts on a noisy machine: run them
alternately, several times. Linux only.
"""

import argparse
import os
import socket
import subprocess
import tempfile
import time

from adbc_driver_flightsql import dbapi as flightsql


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_usage(pid):
    """(CPU ms, minor faults) of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) * 1000 / tick, int(fields[7])


def run(cur, sql):
    started = time.perf_counter()
    cur.execute(sql)
    cur.fetch_arrow_table()
    return (time.perf_counter() - started) * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strata", required=True, help="the strata binary")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("sql")
    args = p.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        config.write(
            f"[query]\nthreads = {args.threads}\ntarget_partitions = {args.threads}\n"
            "cache_mb = 0\n"
        )
        config.flush()
        port = free_port()
        proc = subprocess.Popen(
            [args.strata, "serve", "--data-dir", args.data_dir, "--config", config.name,
             "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, STRATA_LOG="warn"),
        )
        try:
            deadline = time.time() + 120
            while True:
                try:
                    conn = flightsql.connect(f"grpc://127.0.0.1:{port}", autocommit=True)
                    cur = conn.cursor()
                    run(cur, "SELECT 1")
                    break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        raise SystemExit("strata serve did not start")
                    time.sleep(0.2)
            first = run(cur, args.sql)
            for _ in range(3):
                run(cur, args.sql)
            cpu0, faults0 = server_usage(proc.pid)
            walls = sorted(run(cur, args.sql) for _ in range(args.runs))
            cpu1, faults1 = server_usage(proc.pid)
            cur.close()
            conn.close()
        finally:
            proc.terminate()
            proc.wait()
    n = args.runs
    print(
        f"server CPU {(cpu1 - cpu0) / n:.2f} ms/query, {(faults1 - faults0) / n:.0f} "
        f"faults/query, wall median {walls[n // 2]:.2f} ms, first run {first:.1f} ms"
    )


if __name__ == "__main__":
    main()
