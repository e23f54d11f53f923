//! User-interactive authentication (UIA), as used by `/register`, `DELETE /devices/{id}` and
//! `/delete_devices`.
//!
//! A handler builds a [`Uia`] with its flows, calls [`Uia::start`] with the request's `auth`
//! object (a 401 challenge comes back as `Err` when there is no stage to check), validates the
//! submitted stage itself, and then calls [`Uia::complete`], which records the stage and returns
//! the session's accumulated parameters once a whole flow is done (or the 401 "continue"
//! challenge with `completed` otherwise). A stage submitted without a session creates one
//! implicitly (the one-shot `m.login.dummy` registration that matrix-nio and Complement use).

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::service::identifiers::random_alphanumeric;
use crate::service::now_ms;
use crate::store::Store;

/// `m.login.dummy`.
pub const DUMMY: &str = "m.login.dummy";
/// `m.login.password`.
pub const PASSWORD: &str = "m.login.password";
/// `m.login.registration_token`.
pub const REGISTRATION_TOKEN: &str = "m.login.registration_token";

/// One UIA-protected operation.
#[derive(Clone)]
pub struct Uia {
    store: Store,
    kind: String,
    flows: Vec<Vec<&'static str>>,
}

/// A stage the client submitted, to be validated by the handler. Its `Debug` output leaves out
/// `auth` and `params` (passwords, registration tokens).
#[derive(Clone)]
pub struct SubmittedStage {
    /// Session ID (created implicitly if the client sent none).
    pub session: String,
    /// Stage type, e.g. `m.login.password`.
    pub stage: String,
    /// The whole `auth` object (stage-specific fields).
    pub auth: Map<String, Value>,
    /// Stages completed before this one.
    pub completed: Vec<String>,
    /// Parameters stored with the session so far.
    pub params: Map<String, Value>,
}

impl std::fmt::Debug for SubmittedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmittedStage")
            .field("session", &self.session)
            .field("stage", &self.stage)
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Uia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uia")
            .field("kind", &self.kind)
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

impl Uia {
    /// `kind` binds sessions to one operation (and user), so a session from one cannot be used
    /// for another.
    pub fn new(store: Store, kind: impl Into<String>, flows: Vec<Vec<&'static str>>) -> Uia {
        Uia {
            store,
            kind: kind.into(),
            flows,
        }
    }

    /// The 401 challenge body for a session.
    pub fn challenge(&self, session: &str, completed: &[String]) -> Map<String, Value> {
        let flows: Vec<Value> = self
            .flows
            .iter()
            .map(|stages| json!({ "stages": stages }))
            .collect();
        let mut body = Map::new();
        body.insert("flows".into(), Value::Array(flows));
        body.insert("params".into(), json!({}));
        body.insert("session".into(), Value::from(session));
        if !completed.is_empty() {
            body.insert("completed".into(), json!(completed));
        }
        body
    }

    /// A 401 challenge that also reports a failed stage (`errcode`, `error`).
    pub fn failed(&self, stage: &SubmittedStage, errcode: &str, error: &str) -> ApiError {
        let mut body = self.challenge(&stage.session, &stage.completed);
        body.insert("errcode".into(), Value::from(errcode));
        body.insert("error".into(), Value::from(error));
        ApiError::uia_challenge(body)
    }

    async fn new_session(&self) -> Result<String, ApiError> {
        let session = random_alphanumeric(24);
        self.store
            .create_uia_session(&session, &self.kind, now_ms())
            .await?;
        Ok(session)
    }

    /// Looks at the request's `auth`. Returns the stage to validate, or `Err` with the 401
    /// challenge when there is none (no `auth`, or `auth` without `type`).
    pub async fn start(&self, auth: Option<&Value>) -> Result<SubmittedStage, ApiError> {
        let auth = match auth {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(ApiError::bad_json("`auth` must be an object")),
        };
        let session_id = match auth.get("session") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::bad_json("`auth.session` must be a string")),
        };
        let existing = match &session_id {
            Some(id) => self.load(id).await?,
            None => None,
        };
        let stage = match auth.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::bad_json("`auth.type` must be a string")),
        };
        let Some(stage) = stage else {
            // No stage: (re)issue the challenge for the existing or a new session.
            return Err(match (session_id, existing) {
                (Some(id), Some((completed, _))) => {
                    ApiError::uia_challenge(self.challenge(&id, &completed))
                }
                _ => {
                    let id = self.new_session().await?;
                    ApiError::uia_challenge(self.challenge(&id, &[]))
                }
            });
        };
        let (session, completed, params) = match (session_id, existing) {
            (Some(id), Some((completed, params))) => (id, completed, params),
            (Some(_), None) => {
                // Unknown or expired session: start over with a fresh one.
                let id = self.new_session().await?;
                let mut body = self.challenge(&id, &[]);
                body.insert("errcode".into(), Value::from("M_UNKNOWN"));
                body.insert(
                    "error".into(),
                    Value::from("Unknown or expired session; start again"),
                );
                return Err(ApiError::uia_challenge(body));
            }
            (None, _) => (self.new_session().await?, Vec::new(), Map::new()),
        };
        let submitted = SubmittedStage {
            session,
            stage,
            auth,
            completed,
            params,
        };
        if !self
            .flows
            .iter()
            .any(|flow| flow.iter().any(|s| *s == submitted.stage))
        {
            return Err(self.failed(
                &submitted,
                "M_UNRECOGNIZED",
                "This authentication stage is not offered here",
            ));
        }
        Ok(submitted)
    }

    async fn load(
        &self,
        session: &str,
    ) -> Result<Option<(Vec<String>, Map<String, Value>)>, ApiError> {
        let Some((kind, completed, params)) = self.store.get_uia_session(session).await? else {
            return Ok(None);
        };
        if kind != self.kind {
            return Ok(None);
        }
        let params = match serde_json::from_str::<Value>(&params) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Ok(Some((completed, params)))
    }

    /// Records a validated stage (with extra parameters to remember). Returns the session's
    /// parameters if a flow is now complete; otherwise the 401 challenge with `completed`.
    pub async fn complete(
        &self,
        mut stage: SubmittedStage,
        new_params: Map<String, Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        stage.params.extend(new_params);
        let params_json = Value::Object(stage.params.clone()).to_string();
        self.store
            .complete_uia_stage(&stage.session, &stage.stage, &params_json)
            .await?;
        if !stage.completed.contains(&stage.stage) {
            stage.completed.push(stage.stage.clone());
        }
        let done = self
            .flows
            .iter()
            .any(|flow| flow.iter().all(|s| stage.completed.iter().any(|c| c == s)));
        if done {
            Ok(stage.params)
        } else {
            Err(ApiError::uia_challenge(
                self.challenge(&stage.session, &stage.completed),
            ))
        }
    }

    /// Forgets a session after the operation it protected succeeded.
    pub async fn finish(&self, session: &str) {
        if let Err(e) = self.store.delete_uia_session(session).await {
            tracing::warn!(error = %e, "could not delete a finished UIA session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut auth = Map::new();
        auth.insert("password".into(), Value::from("hunter2-secret"));
        let mut params = Map::new();
        params.insert("registration_token".into(), Value::from("tok-secret"));
        let stage = SubmittedStage {
            session: "S".into(),
            stage: PASSWORD.into(),
            auth,
            completed: vec![],
            params,
        };
        let shown = format!("{stage:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(shown.contains("m.login.password"));
    }
}
