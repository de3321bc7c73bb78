//! End-to-end tests through a real server on a loopback port.

mod e2e;
mod flight_sql;
