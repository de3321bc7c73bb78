//! Flight SQL prepared statements, owned by the connection (session) that made them.
//!
//! A statement lives until its client closes it or its connection goes, whichever is
//! first: a client that disconnects without closing leaves nothing behind. Each session
//! holds at most `per_session` statements and [`SESSION_BYTES`] of SQL and bound rows;
//! all sessions together at most [`TOTAL_BYTES`]. A client over its limits gets
//! `RESOURCE_EXHAUSTED`; other clients are not affected (unless the server as a whole
//! is full). A handle used from another connection is unknown there (`NOT_FOUND`).
//!
//! Plans are kept for the next step of one execution, so a statement is planned once per
//! execution: the plan `CreatePreparedStatement` made serves the `GetFlightInfo` and the
//! `DoGet` that follow; a statement's `GetFlightInfo` parks its plan for its `DoGet`
//! (the ticket names it). A kept [`Plan`] is used only by the same caller, within
//! [`PLAN_REUSE`], and while nothing changed through the catalog since it was made
//! ([`strata_query::Prepared::is_current`]); otherwise the step plans again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use tonic::Status;

use strata_query::Prepared;

use crate::auth::Caller;
use crate::conn::ConnInfo;

/// SQL text and bound rows one session may keep in its prepared statements.
pub const SESSION_BYTES: usize = 256 << 20;

/// SQL text and bound rows all sessions together may keep.
pub const TOTAL_BYTES: usize = 1 << 30;

/// The longest a kept plan serves a later step of its execution.
pub const PLAN_REUSE: Duration = Duration::from_secs(10);

/// Plans one session may park for `DoGet`s to come; the oldest goes beyond.
pub const PARKED_PER_SESSION: usize = 16;

/// A statement planned for a caller, kept for the next step of its execution.
#[derive(Clone, Debug)]
pub struct Plan {
    pub prepared: Arc<Prepared>,
    caller: Option<String>,
    made: Instant,
}

impl Plan {
    pub fn new(prepared: Arc<Prepared>, caller: Option<&Caller>) -> Self {
        Self {
            prepared,
            caller: caller.map(|c| c.name.clone()),
            made: Instant::now(),
        }
    }

    /// True when `caller` may run this plan now instead of planning again.
    pub fn usable_by(&self, caller: Option<&Caller>) -> bool {
        self.caller.as_deref() == caller.map(|c| c.name.as_str())
            && self.made.elapsed() < PLAN_REUSE
            && self.prepared.is_current()
    }
}

/// A prepared statement: its SQL, the parameter rows last bound to it, and the plan
/// kept for its next execution step.
#[derive(Clone, Debug)]
pub struct Statement {
    pub sql: String,
    pub parameters: usize,
    pub bound: Option<RecordBatch>,
    pub plan: Option<Plan>,
}

impl Statement {
    fn bytes(&self) -> usize {
        self.sql.len() + self.bound.as_ref().map_or(0, |b| b.get_array_memory_size())
    }
}

/// The open prepared statements of every session.
#[derive(Debug)]
pub struct PreparedStatements {
    per_session: usize,
    state: Mutex<State>,
    next_token: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<u64, Session>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Session {
    statements: HashMap<Bytes, Statement>,
    bytes: usize,
    /// Plans parked by `GetFlightInfo` for their `DoGet`, oldest first.
    parked: VecDeque<(u64, Plan)>,
}

/// The session a request belongs to: its connection (0 without one, in-process).
fn session_of(conn: Option<&ConnInfo>) -> u64 {
    conn.map_or(0, ConnInfo::id)
}

impl PreparedStatements {
    pub fn new(per_session: usize) -> Arc<Self> {
        Arc::new(Self {
            per_session,
            state: Mutex::new(State::default()),
            next_token: AtomicU64::new(1),
        })
    }

    /// Forgets the session's statements and plans when its connection closes.
    fn watch(self: &Arc<Self>, conn: Option<&ConnInfo>) {
        if let Some(conn) = conn {
            let session = conn.id();
            let this = Arc::downgrade(self);
            conn.on_close(move || {
                if let Some(this) = this.upgrade() {
                    this.close_session(session);
                }
            });
        }
    }

    /// Parks `plan` for a `DoGet` of the request's session; returns its token.
    pub fn park(self: &Arc<Self>, conn: Option<&ConnInfo>, plan: Plan) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().expect("prepared statements");
        let new_session = !state.sessions.contains_key(&session_of(conn));
        let s = state.sessions.entry(session_of(conn)).or_default();
        s.parked.retain(|(_, p)| p.made.elapsed() < PLAN_REUSE);
        if s.parked.len() >= PARKED_PER_SESSION {
            s.parked.pop_front();
        }
        s.parked.push_back((token, plan));
        drop(state);
        if new_session {
            self.watch(conn);
        }
        token
    }

    /// Takes the plan parked under `token` by the request's session, if it is there.
    pub fn unpark(&self, conn: Option<&ConnInfo>, token: u64) -> Option<Plan> {
        let mut state = self.state.lock().expect("prepared statements");
        let s = state.sessions.get_mut(&session_of(conn))?;
        let at = s.parked.iter().position(|(t, _)| *t == token)?;
        s.parked.remove(at).map(|(_, p)| p)
    }

    /// Replaces the plan kept with a statement (`None`: takes it away); returns the
    /// plan it held.
    pub fn swap_plan(
        &self,
        conn: Option<&ConnInfo>,
        handle: &Bytes,
        plan: Option<Plan>,
    ) -> Option<Plan> {
        let mut state = self.state.lock().expect("prepared statements");
        let statement = state
            .sessions
            .get_mut(&session_of(conn))?
            .statements
            .get_mut(handle)?;
        std::mem::replace(&mut statement.plan, plan)
    }

    /// Keeps a new statement for the request's session; returns its handle.
    pub fn insert(
        self: &Arc<Self>,
        conn: Option<&ConnInfo>,
        statement: Statement,
    ) -> Result<Bytes, Status> {
        let session = session_of(conn);
        let handle = Bytes::from(format!("ps-{}", uuid::Uuid::new_v4()));
        let bytes = statement.bytes();
        let mut state = self.state.lock().expect("prepared statements");
        let new_session = !state.sessions.contains_key(&session);
        let open = state
            .sessions
            .get(&session)
            .map_or(0, |s| s.statements.len());
        let held = state.sessions.get(&session).map_or(0, |s| s.bytes);
        if open >= self.per_session {
            return Err(Status::resource_exhausted(format!(
                "this connection has {open} prepared statements open, the most allowed \
                 (max_prepared_per_session): close some (ClosePreparedStatement)"
            )));
        }
        check_bytes(state.bytes, held, bytes)?;
        let entry = state.sessions.entry(session).or_default();
        entry.statements.insert(handle.clone(), statement);
        entry.bytes += bytes;
        state.bytes += bytes;
        drop(state);
        if new_session {
            self.watch(conn);
        }
        Ok(handle)
    }

    /// The statement behind a handle of the request's session.
    pub fn get(&self, conn: Option<&ConnInfo>, handle: &Bytes) -> Result<Statement, Status> {
        let state = self.state.lock().expect("prepared statements");
        state
            .sessions
            .get(&session_of(conn))
            .and_then(|s| s.statements.get(handle))
            .cloned()
            .ok_or_else(|| unknown_handle(handle))
    }

    /// Binds parameter rows to a statement (replacing rows bound before).
    pub fn bind(
        &self,
        conn: Option<&ConnInfo>,
        handle: &Bytes,
        rows: Option<RecordBatch>,
    ) -> Result<(), Status> {
        let session = session_of(conn);
        let new = rows.as_ref().map_or(0, |b| b.get_array_memory_size());
        let mut guard = self.state.lock().expect("prepared statements");
        let state = &mut *guard;
        let Some(s) = state.sessions.get_mut(&session) else {
            return Err(unknown_handle(handle));
        };
        let Some(statement) = s.statements.get_mut(handle) else {
            return Err(unknown_handle(handle));
        };
        let old = statement
            .bound
            .as_ref()
            .map_or(0, |b| b.get_array_memory_size());
        check_bytes(state.bytes - old, s.bytes - old, new)?;
        statement.bound = rows;
        s.bytes = s.bytes - old + new;
        state.bytes = state.bytes - old + new;
        Ok(())
    }

    /// Forgets a statement; closing one that is gone is not an error.
    pub fn remove(&self, conn: Option<&ConnInfo>, handle: &Bytes) {
        let session = session_of(conn);
        let mut state = self.state.lock().expect("prepared statements");
        let Some(s) = state.sessions.get_mut(&session) else {
            return;
        };
        if let Some(st) = s.statements.remove(handle) {
            let bytes = st.bytes();
            s.bytes -= bytes;
            state.bytes -= bytes;
        }
    }

    /// Forgets every statement of a session (its connection closed).
    pub fn close_session(&self, session: u64) {
        let mut state = self.state.lock().expect("prepared statements");
        if let Some(s) = state.sessions.remove(&session) {
            state.bytes -= s.bytes;
        }
    }

    /// Open statements of all sessions.
    pub fn len(&self) -> usize {
        let state = self.state.lock().expect("prepared statements");
        state.sessions.values().map(|s| s.statements.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refuses `more` bytes for a session holding `held`, all sessions holding `total`.
fn check_bytes(total: usize, held: usize, more: usize) -> Result<(), Status> {
    if held + more > SESSION_BYTES {
        return Err(Status::resource_exhausted(format!(
            "this connection's prepared statements would hold {} bytes of SQL and bound \
             rows, more than the {SESSION_BYTES} allowed: close some",
            held + more
        )));
    }
    if total + more > TOTAL_BYTES {
        return Err(Status::resource_exhausted(
            "the server holds as many prepared statements as it can; try again later",
        ));
    }
    Ok(())
}

pub fn unknown_handle(handle: &Bytes) -> Status {
    Status::not_found(format!(
        "no open prepared statement {:?} on this connection (closed, the connection was \
         reset, or the server restarted): prepare it again",
        String::from_utf8_lossy(handle)
    ))
}
