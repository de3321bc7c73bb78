//! Flight `DoAction`s for pipelines: flush, rollback, tags and the version log of a
//! dataset, with JSON bodies and JSON results.
//!
//! | action | body | result |
//! |---|---|---|
//! | `flush` | `{"dataset": d}` | `{"dataset", "version"}`: the version holding every row acknowledged before the call |
//! | `rollback` | `{"dataset": d, "version": V}` | `{"dataset", "version", "to"}`: the new version, equal to version `to` |
//! | `tag` | `{"dataset": d, "tag": t, "version"?: V}` | `{"dataset", "tag", "version", "created_ms"}` |
//! | `delete_tag` | `{"dataset": d, "tag": t}` | `{"dataset", "tag", "deleted": true}` |
//! | `list_versions` | `{"dataset": d}` | `{"dataset", "head", "versions": [{version, timestamp_ms, operation, rows_added, rows_removed, producers, tags}], "tags": [{name, version, created_ms}]}` |
//!
//! A version `V` is a number (`3`), `{"tag": "name"}` or `{"timestamp_ms": n}` (the
//! latest version committed at or before that time). `rollback` first commits the
//! dataset's acknowledged rows (like SQL's `RESTORE`), so a bad load still in memory is
//! rolled back with the rest; `tag` without a version flushes too and tags the head, so
//! the tag covers every row acknowledged before it.
//!
//! Errors: a body that is not such JSON `INVALID_ARGUMENT`; an unknown dataset, version
//! or tag `NOT_FOUND`; an existing tag `ALREADY_EXISTS`; a vacuumed version
//! `FAILED_PRECONDITION`; an unknown action `UNIMPLEMENTED`, naming the actions there are.

use arrow_flight::ActionType;
use serde_json::{Map, Value, json};
use strata_ingest::Ingester;
use strata_table::{Table, VersionSpec};
use tonic::Status;
use tracing::info;

use crate::error::{ingest_status, table_status};

/// The actions, with their descriptions for `ListActions`.
const ACTIONS: &[(&str, &str)] = &[
    (
        "flush",
        "Commits a dataset's acknowledged rows now. Body: JSON {\"dataset\": d}. \
         Result: JSON {\"dataset\", \"version\"}.",
    ),
    (
        "rollback",
        "Makes a new version equal to an earlier one, after committing the acknowledged \
         rows. Body: JSON {\"dataset\": d, \"version\": n | {\"tag\": t} | \
         {\"timestamp_ms\": ms}}. Result: JSON {\"dataset\", \"version\", \"to\"}.",
    ),
    (
        "tag",
        "Names a version (default: the head, after committing the acknowledged rows). \
         Body: JSON {\"dataset\": d, \"tag\": t, \"version\"?: n | {\"tag\": t} | \
         {\"timestamp_ms\": ms}}. Result: JSON {\"dataset\", \"tag\", \"version\", \
         \"created_ms\"}.",
    ),
    (
        "delete_tag",
        "Removes a tag. Body: JSON {\"dataset\": d, \"tag\": t}. Result: JSON \
         {\"dataset\", \"tag\", \"deleted\": true}.",
    ),
    (
        "list_versions",
        "Lists a dataset's versions and tags. Body: JSON {\"dataset\": d}. Result: JSON \
         {\"dataset\", \"head\", \"versions\": [...], \"tags\": [...]}.",
    ),
];

/// Runs the pipeline actions against the ingester's datasets.
#[derive(Clone, Debug)]
pub struct Actions {
    ingester: Ingester,
}

impl Actions {
    pub fn new(ingester: Ingester) -> Self {
        Self { ingester }
    }

    /// The actions for `ListActions`.
    pub fn list() -> Vec<ActionType> {
        ACTIONS
            .iter()
            .map(|(name, description)| ActionType {
                r#type: name.to_string(),
                description: description.to_string(),
            })
            .collect()
    }

    /// The role action `name` needs (unknown actions: read, to learn they are unknown).
    pub fn access(name: &str) -> strata_query::Access {
        use strata_query::Access;
        match name {
            "flush" => Access::Write,
            "rollback" | "tag" | "delete_tag" => Access::Admin,
            _ => Access::Read,
        }
    }

    /// Runs action `name` with a JSON `body`; returns the JSON result.
    pub async fn run(&self, name: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
        if !ACTIONS.iter().any(|(n, _)| *n == name) {
            let names: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
            return Err(Status::unimplemented(format!(
                "unknown action {name:?}: Strata's actions are {} (JSON bodies), besides \
                 Flight SQL's CreatePreparedStatement and ClosePreparedStatement",
                names.join(", ")
            )));
        }
        let body = Body::parse(name, body)?;
        let result = match name {
            "flush" => self.flush(&body).await?,
            "rollback" => self.rollback(&body).await?,
            "tag" => self.tag(&body).await?,
            "delete_tag" => self.delete_tag(&body).await?,
            _ => self.list_versions(&body).await?,
        };
        Ok(serde_json::to_vec(&result).expect("JSON values serialize"))
    }

    async fn table(&self, dataset: &str) -> Result<Table, Status> {
        Ok(self
            .ingester
            .status(dataset)
            .await
            .map_err(ingest_status)?
            .table)
    }

    async fn flush(&self, body: &Body) -> Result<Value, Status> {
        let dataset = body.dataset()?;
        let version = self.ingester.flush(dataset).await.map_err(ingest_status)?;
        Ok(json!({"dataset": dataset, "version": version}))
    }

    async fn rollback(&self, body: &Body) -> Result<Value, Status> {
        let dataset = body.dataset()?;
        let to = body
            .version()?
            .ok_or_else(|| body.error("needs \"version\": the version to roll back to"))?;
        let table = self.table(dataset).await?;
        // Rows acknowledged before the rollback are committed first, so a bad load still
        // in memory is rolled back with the rest.
        self.ingester.flush(dataset).await.map_err(ingest_status)?;
        let info = table.rollback(&to).await.map_err(table_status)?;
        self.ingester
            .refresh_schema(dataset)
            .await
            .map_err(ingest_status)?;
        let target = match info.operation {
            strata_table::Operation::Rollback { to } => to,
            _ => info.version,
        };
        info!(dataset, version = info.version, to = target, "rolled back");
        Ok(json!({"dataset": dataset, "version": info.version, "to": target}))
    }

    async fn tag(&self, body: &Body) -> Result<Value, Status> {
        let dataset = body.dataset()?;
        let tag = body.string("tag")?;
        let table = self.table(dataset).await?;
        let at = match body.version()? {
            Some(at) => at,
            None => {
                self.ingester.flush(dataset).await.map_err(ingest_status)?;
                VersionSpec::Head
            }
        };
        let info = table.create_tag(tag, &at).await.map_err(table_status)?;
        Ok(json!({
            "dataset": dataset,
            "tag": info.name,
            "version": info.version,
            "created_ms": info.created_ms,
        }))
    }

    async fn delete_tag(&self, body: &Body) -> Result<Value, Status> {
        let dataset = body.dataset()?;
        let tag = body.string("tag")?;
        let table = self.table(dataset).await?;
        table.delete_tag(tag).await.map_err(table_status)?;
        Ok(json!({"dataset": dataset, "tag": tag, "deleted": true}))
    }

    async fn list_versions(&self, body: &Body) -> Result<Value, Status> {
        let dataset = body.dataset()?;
        let table = self.table(dataset).await?;
        let versions = table.list_versions().await.map_err(table_status)?;
        let tags = table.list_tags().await.map_err(table_status)?;
        let head = versions.iter().map(|v| v.version).max().unwrap_or(0);
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| {
                let mut entry = serde_json::to_value(v).expect("versions serialize");
                let names: Vec<&str> = tags
                    .iter()
                    .filter(|t| t.version == v.version)
                    .map(|t| t.name.as_str())
                    .collect();
                entry["tags"] = json!(names);
                entry
            })
            .collect();
        Ok(json!({
            "dataset": dataset,
            "head": head,
            "versions": versions,
            "tags": tags,
        }))
    }
}

/// An action's JSON body.
struct Body {
    action: String,
    fields: Map<String, Value>,
}

impl Body {
    fn parse(action: &str, body: &[u8]) -> Result<Self, Status> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Status::invalid_argument(format!(
                "action {action}: the body must be a JSON object: {e}"
            ))
        })?;
        let Value::Object(fields) = value else {
            return Err(Status::invalid_argument(format!(
                "action {action}: the body must be a JSON object, got {value}"
            )));
        };
        let allowed: &[&str] = match action {
            "rollback" => &["dataset", "version"],
            "tag" => &["dataset", "tag", "version"],
            "delete_tag" => &["dataset", "tag"],
            _ => &["dataset"],
        };
        if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(Status::invalid_argument(format!(
                "action {action}: unknown field {unknown:?} (fields: {})",
                allowed.join(", ")
            )));
        }
        Ok(Self {
            action: action.to_string(),
            fields,
        })
    }

    fn error(&self, message: &str) -> Status {
        Status::invalid_argument(format!("action {}: {message}", self.action))
    }

    fn string(&self, field: &str) -> Result<&str, Status> {
        match self.fields.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(other) => Err(self.error(&format!(
                "\"{field}\" must be a non-empty string, got {other}"
            ))),
            None => Err(self.error(&format!("needs \"{field}\""))),
        }
    }

    fn dataset(&self) -> Result<&str, Status> {
        self.string("dataset")
    }

    /// `"version"`: a number, `{"tag": t}` or `{"timestamp_ms": n}`.
    fn version(&self) -> Result<Option<VersionSpec>, Status> {
        let Some(v) = self.fields.get("version") else {
            return Ok(None);
        };
        let bad = || {
            self.error(&format!(
                "\"version\" must be a version number, {{\"tag\": name}} or \
                 {{\"timestamp_ms\": ms}}, got {v}"
            ))
        };
        let spec = match v {
            Value::Number(n) => VersionSpec::Version(n.as_u64().ok_or_else(bad)?),
            Value::Object(o) if o.len() == 1 => match o.iter().next() {
                Some((k, Value::String(t))) if k == "tag" => VersionSpec::Tag(t.clone()),
                Some((k, Value::Number(ms))) if k == "timestamp_ms" => {
                    VersionSpec::Timestamp(ms.as_i64().ok_or_else(bad)?)
                }
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        Ok(Some(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(action: &str, json: &str) -> Result<Body, Status> {
        Body::parse(action, json.as_bytes())
    }

    #[test]
    fn versions_in_bodies() {
        let v = |json: &str| body("rollback", json).unwrap().version();
        assert_eq!(
            v(r#"{"dataset":"d","version":3}"#).unwrap(),
            Some(VersionSpec::Version(3))
        );
        assert_eq!(
            v(r#"{"dataset":"d","version":{"tag":"good"}}"#).unwrap(),
            Some(VersionSpec::Tag("good".into()))
        );
        assert_eq!(
            v(r#"{"dataset":"d","version":{"timestamp_ms":1700000000000}}"#).unwrap(),
            Some(VersionSpec::Timestamp(1_700_000_000_000))
        );
        assert_eq!(v(r#"{"dataset":"d"}"#).unwrap(), None);
        for bad in [
            r#"{"dataset":"d","version":-1}"#,
            r#"{"dataset":"d","version":"3"}"#,
            r#"{"dataset":"d","version":{"tag":1}}"#,
            r#"{"dataset":"d","version":{"tag":"a","timestamp_ms":1}}"#,
        ] {
            assert_eq!(
                v(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_invalid_arguments() {
        for (action, json) in [
            ("flush", "not json"),
            ("flush", "[1]"),
            ("flush", r#"{"dataset":"d","extra":1}"#),
        ] {
            assert_eq!(
                body(action, json).err().unwrap().code(),
                tonic::Code::InvalidArgument
            );
        }
        let b = body("tag", r#"{"dataset":"d","tag":""}"#).unwrap();
        assert_eq!(
            b.string("tag").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            b.string("missing").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
