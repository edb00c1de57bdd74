//! The CLI's view of the HTTP API: `NOMAD_ADDR` / `CARAVAN_ADDR`, default
//! `http://127.0.0.1:4646`, as Nomad's CLI.

use anyhow::{Context, bail};
use serde_json::Value;

const ADDR_DEFAULT: &str = "http://127.0.0.1:4646";

#[derive(Debug)]
pub(crate) struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

impl ApiClient {
    pub(crate) fn from_env() -> ApiClient {
        let base = std::env::var("CARAVAN_ADDR")
            .or_else(|_| std::env::var("NOMAD_ADDR"))
            .unwrap_or_else(|_| ADDR_DEFAULT.to_string())
            .trim_end_matches('/')
            .to_string();
        let config = ureq::Agent::config_builder().http_status_as_error(false).build();
        ApiClient { base, agent: config.into() }
    }

    fn finish(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = response.with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().with_context(|| format!("{what}: reading the response"))?;
        if !status.is_success() {
            bail!("{what}: {} ({status})", text.trim());
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: response is not JSON"))
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(&format!("GET {path}"), self.agent.get(&url).call())
    }

    /// A GET whose body is read as it comes (log streams).
    pub(crate) fn get_stream(&self, path: &str) -> anyhow::Result<impl std::io::Read + use<>> {
        let url = format!("{}{path}", self.base);
        let what = format!("GET {path}");
        let mut response =
            self.agent.get(&url).call().with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            bail!("{what}: {} ({status})", text.trim());
        }
        Ok(response.into_body().into_reader())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(&format!("POST {path}"), self.agent.post(&url).send_json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(&format!("DELETE {path}"), self.agent.delete(&url).call())
    }

    /// A full id from a unique prefix, as Nomad's CLI accepts
    /// (`alloc status 3f2a`): `list` is the collection (`/v1/allocations`)
    /// whose `?prefix=` finds the candidates; `what` names them in errors.
    pub(crate) fn resolve_id(&self, list: &str, what: &str, id_or_prefix: &str) -> anyhow::Result<String> {
        /// A whole UUID needs no lookup.
        const UUID_LEN: usize = 36;
        if id_or_prefix.len() == UUID_LEN {
            return Ok(id_or_prefix.to_string());
        }
        if id_or_prefix.is_empty() || !id_or_prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            bail!("{what} id {id_or_prefix:?} is not an id or an id prefix");
        }
        let matches = self.get(&format!("{list}?prefix={id_or_prefix}"))?;
        let ids: Vec<&str> = matches.as_array().into_iter().flatten().filter_map(|m| m["ID"].as_str()).collect();
        match ids.as_slice() {
            [] => bail!("no {what} with prefix or id {id_or_prefix:?} found"),
            [one] => Ok((*one).to_string()),
            many => bail!("prefix {id_or_prefix:?} matched multiple {what}s: {}", many.join(", ")),
        }
    }

    pub(crate) fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(&format!("PUT {path}"), self.agent.put(&url).send_json(body))
    }
}
