//! End-to-end tests through a real server on a loopback port.

mod auth;
mod cassandra;
mod e2e;
mod flight_sql;
mod hostile;
mod subscribe;
