//! Azure Resource Manager on raw JSON: whole-resource GET, PUT with `If-Match`, long-running
//! operations followed through Azure-AsyncOperation (or Location) honouring Retry-After, PATCH,
//! and role assignment lists. Working on `serde_json::Value` keeps every field a newer API
//! version added, so a PUT never strips what kmsctl does not know.

use super::{RemoteError, error_body, error_chain, from_azure};
use crate::retry::{RetryPolicy, parse_retry_after};
use azure_core::credentials::TokenCredential;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, auth::BearerTokenAuthorizationPolicy};
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, Url,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub const ENDPOINT: &str = "https://management.azure.com";
const SCOPE: &str = "https://management.azure.com/.default";
/// The longest kmsctl follows one cluster operation (AKS updates take minutes, upgrades tens
/// of minutes); past it, kmsctl stops with what to check rather than waiting forever.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(90 * 60);

const SERVICE: &str = "Azure Resource Manager";

/// API versions kmsctl speaks; AKS's is configurable because old ones get retired.
#[derive(Clone, Debug)]
pub struct ApiVersions {
    pub aks: String,
    pub key_vault: String,
    pub authorization: String,
}

impl Default for ApiVersions {
    fn default() -> Self {
        ApiVersions {
            aks: "2025-10-01".into(),
            key_vault: "2024-11-01".into(),
            authorization: "2022-04-01".into(),
        }
    }
}

#[derive(Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    pub retry: RetryPolicy,
    pub api: ApiVersions,
}

/// A raw answer: status, the headers kmsctl uses, and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub etag: Option<String>,
    pub async_operation: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
}

/// How a long-running operation ended.
#[derive(Debug, Clone)]
pub struct OperationOutcome {
    pub status: String,
    pub error: Option<Value>,
}

impl ArmClient {
    pub fn new(
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
        api: ApiVersions,
    ) -> Self {
        let auth: Arc<dyn Policy> =
            Arc::new(BearerTokenAuthorizationPolicy::new(credential, [SCOPE]));
        let pipeline = Pipeline::new(
            Some("kmsctl"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            vec![],
            vec![auth],
            None,
        );
        ArmClient {
            pipeline,
            retry: RetryPolicy::default(),
            api,
        }
    }

    fn url(path_or_url: &str, api: &str) -> Result<Url, RemoteError> {
        let full = if path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{ENDPOINT}{path_or_url}")
        };
        let mut url = Url::parse(&full).map_err(|e| RemoteError::Other {
            service: SERVICE,
            detail: format!("bad URL {full}: {e}"),
        })?;
        if !api.is_empty() && !url.query_pairs().any(|(k, _)| k == "api-version") {
            url.query_pairs_mut().append_pair("api-version", api);
        }
        Ok(url)
    }

    /// One request, no retry; a non-2xx answer becomes `RemoteError::Status`.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, RemoteError> {
        let mut req = Request::new(url, method);
        if let Some(b) = body {
            req.insert_header("content-type", "application/json");
            req.set_json(b).map_err(|e| RemoteError::Other {
                service: SERVICE,
                detail: error_chain(&e),
            })?;
        }
        if let Some(m) = if_match {
            req.insert_header("if-match", m.to_string());
        }
        let opts = PipelineSendOptions {
            skip_checks: true,
            ..Default::default()
        };
        let rsp = self
            .pipeline
            .send(&Context::new(), &mut req, Some(opts))
            .await
            .map_err(|e| from_azure(SERVICE, e))?;
        let (status, headers, bytes) = rsp.deconstruct();
        let status = u16::from(status);
        let header = |n: &'static str| {
            headers
                .get_optional_str(&HeaderName::from_static(n))
                .map(str::to_string)
        };
        let retry_after = parse_retry_after(header("retry-after").as_deref());
        if status >= 300 {
            let (code, message) = error_body(&bytes);
            return Err(RemoteError::Status {
                service: SERVICE,
                status,
                code,
                message,
                retry_after,
            });
        }
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let etag = header("etag").or_else(|| body["eTag"].as_str().map(str::to_string));
        Ok(Answer {
            status,
            body,
            etag,
            async_operation: header("azure-asyncoperation"),
            location: header("location"),
            retry_after,
        })
    }

    pub async fn get(&self, path: &str, api: &str) -> Result<Answer, RemoteError> {
        let url = Self::url(path, api)?;
        self.retry
            .run("ARM GET", || {
                self.send_once(Method::Get, url.clone(), None, None)
            })
            .await
    }

    /// One GET, no retry: for a read whose failure only means "find out later", so a throttled
    /// or failing service does not delay what comes next.
    pub async fn get_once(&self, path: &str, api: &str) -> Result<Answer, RemoteError> {
        self.send_once(Method::Get, Self::url(path, api)?, None, None)
            .await
    }

    /// PUT the whole resource, only if it has not changed since `etag` was read (412 otherwise).
    pub async fn put_if_match(
        &self,
        path: &str,
        api: &str,
        body: &Value,
        etag: &str,
    ) -> Result<Answer, RemoteError> {
        let url = Self::url(path, api)?;
        self.retry
            .run("ARM PUT", || {
                self.send_once(Method::Put, url.clone(), Some(body), Some(etag))
            })
            .await
    }

    /// POST of a read-only query (Azure Resource Graph): it changes nothing, so it is retried
    /// as a GET is.
    pub async fn post_query(
        &self,
        path: &str,
        api: &str,
        body: &Value,
    ) -> Result<Answer, RemoteError> {
        let url = Self::url(path, api)?;
        self.retry
            .run("ARM query", || {
                self.send_once(Method::Post, url.clone(), Some(body), None)
            })
            .await
    }

    /// POST of a read-only action without a body (listClusterUserCredential): retried as a
    /// GET is.
    pub async fn post_action(&self, path: &str, api: &str) -> Result<Answer, RemoteError> {
        let url = Self::url(path, api)?;
        self.retry
            .run("ARM POST", || {
                self.send_once(Method::Post, url.clone(), None, None)
            })
            .await
    }

    pub async fn patch(&self, path: &str, api: &str, body: &Value) -> Result<Answer, RemoteError> {
        let url = Self::url(path, api)?;
        self.retry
            .run("ARM PATCH", || {
                self.send_once(Method::Patch, url.clone(), Some(body), None)
            })
            .await
    }

    /// Follows an operation to its end, for at most `OPERATION_DEADLINE`. `on_poll` sees each
    /// status (for progress).
    pub async fn wait_operation(
        &self,
        started: &Answer,
        mut on_poll: impl FnMut(&str),
    ) -> Result<OperationOutcome, RemoteError> {
        let Some(url) = started
            .async_operation
            .clone()
            .or_else(|| started.location.clone())
        else {
            return Ok(OperationOutcome {
                status: "Succeeded".into(),
                error: None,
            });
        };
        let by_location = started.async_operation.is_none();
        let mut wait = started.retry_after.unwrap_or(Duration::from_secs(5));
        let began = std::time::Instant::now();
        loop {
            if began.elapsed() >= OPERATION_DEADLINE {
                return Err(RemoteError::Other {
                    service: SERVICE,
                    detail: format!(
                        "the cluster operation did not finish within {} minutes; it may still be running. Check `az aks show --query provisioningState`, then run `kmsctl resume`",
                        OPERATION_DEADLINE.as_secs() / 60
                    ),
                });
            }
            tokio::time::sleep(wait.clamp(Duration::from_millis(250), Duration::from_secs(60)))
                .await;
            let answer = self.get(&url, "").await?;
            wait = answer.retry_after.unwrap_or(Duration::from_secs(5));
            let status = if by_location {
                if answer.status == 202 {
                    "InProgress".to_string()
                } else {
                    "Succeeded".to_string()
                }
            } else {
                answer.body["status"]
                    .as_str()
                    .unwrap_or("InProgress")
                    .to_string()
            };
            on_poll(&status);
            match status.to_ascii_lowercase().as_str() {
                "succeeded" | "failed" | "canceled" | "cancelled" => {
                    return Ok(OperationOutcome {
                        status,
                        error: answer.body.get("error").cloned().filter(|e| !e.is_null()),
                    });
                }
                _ => {}
            }
        }
    }

    /// Every item of a collection, following `nextLink` page by page.
    pub async fn list_all(&self, path: &str, api: &str) -> Result<Vec<Value>, RemoteError> {
        self.pages(Self::url(path, api)?).await
    }

    async fn pages(&self, first: Url) -> Result<Vec<Value>, RemoteError> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(u) = next.take() {
            let a = self.get(&u, "").await?;
            out.extend(a.body["value"].as_array().cloned().unwrap_or_default());
            next = a.body["nextLink"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string);
        }
        Ok(out)
    }

    /// Role assignments that apply at `scope` (including inherited ones), optionally for one principal.
    pub async fn role_assignments(
        &self,
        scope: &str,
        principal: Option<&str>,
    ) -> Result<Vec<Value>, RemoteError> {
        let mut url = Self::url(
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignments"),
            &self.api.authorization,
        )?;
        // assignedTo() also returns the assignments of the groups the principal is in.
        if let Some(p) = principal {
            url.query_pairs_mut()
                .append_pair("$filter", &format!("assignedTo('{p}')"));
        }
        self.pages(url).await
    }
}
