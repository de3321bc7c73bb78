"""ADBC and pyarrow.flight against a TLS server with tokens, as a user's scripts connect.

usage: secure_clients.py GRPC_TLS_URL CA_FILE TOKEN

Checks as it goes (a failed check exits non-zero) and prints one JSON object."""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow.flight as flight


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def main(url, ca_file, token):
    ca = open(ca_file).read()
    tls = {"adbc.flight.sql.client_option.tls_root_certs": ca}
    report = {}
    # A bearer header, as ADBC's authorization_header option sends it.
    with flight_sql.connect(
        url,
        db_kwargs={**tls, "adbc.flight.sql.authorization_header": f"Bearer {token}"},
        autocommit=True,
    ) as conn:
        report["bearer"] = one(conn, "SELECT 41 + 1 AS answer")[0][0]
    # Username and password: ADBC trades them for a token with Flight's Handshake.
    with flight_sql.connect(
        url, db_kwargs={**tls, "username": "ci", "password": token}, autocommit=True
    ) as conn:
        report["handshake"] = one(conn, "SELECT 7 AS seven")[0][0]
    # No credentials: refused.
    try:
        with flight_sql.connect(url, db_kwargs=tls, autocommit=True) as conn:
            one(conn, "SELECT 1")
        raise AssertionError("a query without a token ran")
    except adbc_driver_manager.Error as e:
        text = str(e).lower()
        check("unauthenticated" in text, f"expected UNAUTHENTICATED, got {e}")
        report["anonymous"] = "refused"
    # pyarrow.flight with the CA and the header on each call.
    client = flight.FlightClient(url, tls_root_certs=ca.encode())
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    names = [a.type for a in client.list_actions(options=options)]
    check("rollback" in names, f"actions: {names}")
    report["actions"] = len(names)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
