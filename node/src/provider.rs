//! Identity providers: where a person's online identity lives, and how a node proves it
//! belongs to that person.
//!
//! A provider authenticates this node's user (OAuth device flow), publishes an identity
//! claim (a [`ClaimToken`] from this node's sigchain) where only the identity's owner can
//! publish, and finds the claims an identity has published so that anyone can check them.
//! [`GitHub`] is the one provider today: the claim is a public gist holding the token.
//! Its base URLs are configurable, so that the tests run it against a local HTTP server
//! implementing the part of GitHub's API it uses.
//!
//! Calls are blocking (the agent runs them on its blocking threads) with a deadline;
//! responses are size-limited; nothing here logs or returns the access token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::gestalt::ProviderToken;
use crate::sigchain::ClaimToken;

/// The file name a claim gist holds.
pub const CLAIM_FILE: &str = "pk-identity-claim.json";
/// The deadline of one HTTP call.
const HTTP_DEADLINE: Duration = Duration::from_secs(20);
/// The largest response read.
const MAX_RESPONSE: u64 = 1 << 20;

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider could not be reached or answered with an HTTP error.
    #[error("{provider}: {reason}")]
    Unavailable {
        /// The provider.
        provider: String,
        /// What happened.
        reason: String,
    },
    /// The provider refused (bad or expired token, denied authorisation).
    #[error("{provider} refused: {reason}")]
    Refused {
        /// The provider.
        provider: String,
        /// What it said.
        reason: String,
    },
    /// The user did not finish the device authorisation in time.
    #[error("{0}: the authorisation code expired before it was entered; start again")]
    Expired(String),
}

/// A device-flow authorisation in progress: what the user must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuth {
    /// The code the user enters.
    pub user_code: String,
    /// Where the user enters it.
    pub verification_uri: String,
    /// Seconds between polls.
    pub interval: u64,
    /// Seconds until the code expires.
    pub expires_in: u64,
}

/// The answer to one poll of the device flow.
#[derive(Debug)]
pub enum Poll {
    /// The user has not approved yet.
    Pending,
    /// Polling too fast: wait 5 seconds more between polls from now on.
    SlowDown,
    /// Approved: the access token.
    Approved(ProviderToken),
}

/// Where a provider lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubConfig {
    /// The web base URL (device flow), e.g. `https://github.com`.
    pub web_url: String,
    /// The API base URL, e.g. `https://api.github.com`.
    pub api_url: String,
    /// The OAuth app's client id.
    pub client_id: String,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        GitHubConfig {
            web_url: "https://github.com".into(),
            api_url: "https://api.github.com".into(),
            client_id: "Iv1.pk-secrets-manager".into(),
        }
    }
}

/// The GitHub provider (`github.com`).
#[derive(Clone, Debug)]
pub struct GitHub {
    config: GitHubConfig,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default = "five")]
    interval: u64,
    #[serde(default = "fifteen_minutes")]
    expires_in: u64,
}

fn five() -> u64 {
    5
}

fn fifteen_minutes() -> u64 {
    900
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Gist {
    #[serde(default)]
    html_url: String,
    #[serde(default)]
    files: std::collections::BTreeMap<String, GistFile>,
}

#[derive(Deserialize)]
struct GistFile {
    #[serde(default)]
    raw_url: String,
}

#[derive(Deserialize)]
struct SearchUsers {
    items: Vec<User>,
}

impl GitHub {
    /// The provider's id in gestalt ids (`github.com:<login>`).
    pub const ID: &'static str = "github.com";

    /// A GitHub provider at `config`'s URLs.
    pub fn new(config: GitHubConfig) -> GitHub {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(HTTP_DEADLINE))
                .http_status_as_error(false)
                .build(),
        );
        GitHub { config, agent }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ProviderError {
        ProviderError::Unavailable {
            provider: Self::ID.into(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, reason: impl std::fmt::Display) -> ProviderError {
        ProviderError::Refused {
            provider: Self::ID.into(),
            reason: reason.to_string(),
        }
    }

    /// Reads a JSON answer; HTTP errors become [`ProviderError`]s naming the status.
    fn answer<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ProviderError> {
        let mut response = response.map_err(|e| self.unavailable(format!("{what}: {e}")))?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.refused(format!("{what}: HTTP {status}")));
        }
        if !(200..300).contains(&status) {
            return Err(self.unavailable(format!("{what}: HTTP {status}")));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_json()
            .map_err(|e| self.unavailable(format!("{what}: unreadable answer ({e})")))
    }

    /// A form POST to the web site at `path` (the device flow), with this app's client id
    /// before `fields`; the answer is asked for as JSON.
    fn post_form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let client_id = ("client_id", self.config.client_id.as_str());
        self.agent
            .post(format!("{}{path}", self.config.web_url))
            .header("Accept", "application/json")
            .send_form(std::iter::once(&client_id).chain(fields).copied())
    }

    fn bearer(token: &ProviderToken) -> String {
        format!("Bearer {}", token.access_token)
    }

    /// Starts the device flow; the `device_code` stays with the caller.
    pub fn start_auth(&self) -> Result<(DeviceAuth, String), ProviderError> {
        let response = self.post_form("/login/device/code", &[("scope", "gist")]);
        let code: DeviceCode = self.answer("starting the device authorisation", response)?;
        Ok((
            DeviceAuth {
                user_code: code.user_code,
                verification_uri: code.verification_uri,
                interval: code.interval.clamp(1, 60),
                expires_in: code.expires_in.min(3600),
            },
            code.device_code,
        ))
    }

    /// One poll of the device flow.
    pub fn poll_auth(&self, device_code: &str) -> Result<Poll, ProviderError> {
        let response = self.post_form(
            "/login/oauth/access_token",
            &[
                ("device_code", device_code),
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ],
        );
        let answer: AccessToken = self.answer("checking the device authorisation", response)?;
        match (answer.access_token, answer.error.as_deref()) {
            (Some(access_token), _) => {
                let mut token = ProviderToken {
                    provider: Self::ID.into(),
                    identity: String::new(),
                    access_token,
                };
                token.identity = self.user(&token)?;
                Ok(Poll::Approved(token))
            }
            (None, Some("authorization_pending")) => Ok(Poll::Pending),
            (None, Some("slow_down")) => Ok(Poll::SlowDown),
            (None, Some("expired_token")) => Err(ProviderError::Expired(Self::ID.into())),
            (None, Some(other)) => Err(self.refused(other)),
            (None, None) => Err(self.unavailable("an empty answer to the device authorisation")),
        }
    }

    /// The login the token belongs to.
    pub fn user(&self, token: &ProviderToken) -> Result<String, ProviderError> {
        let response = self
            .agent
            .get(format!("{}/user", self.config.api_url))
            .header("Accept", "application/vnd.github+json")
            .header("Authorization", &Self::bearer(token))
            .call();
        let user: User = self.answer("reading the authenticated user", response)?;
        Ok(user.login)
    }

    /// Publishes `claim` as a public gist of the token's user; its URL.
    pub fn publish(
        &self,
        token: &ProviderToken,
        claim: &ClaimToken,
    ) -> Result<String, ProviderError> {
        let content = serde_json::to_string_pretty(claim).expect("a token always serialises");
        let response = self
            .agent
            .post(format!("{}/gists", self.config.api_url))
            .header("Accept", "application/vnd.github+json")
            .header("Authorization", &Self::bearer(token))
            .send_json(json!({
                "description": "pk identity claim: this GitHub account and a pk node are one gestalt",
                "public": true,
                "files": { CLAIM_FILE: { "content": content } },
            }));
        let gist: Gist = self.answer("publishing the claim", response)?;
        Ok(gist.html_url)
    }

    /// The claims `login` has published, with where each was found. Gists that hold no
    /// readable claim are skipped.
    pub fn claims(&self, login: &str) -> Result<Vec<(ClaimToken, String)>, ProviderError> {
        let response = self
            .agent
            .get(format!("{}/users/{login}/gists", self.config.api_url))
            .header("Accept", "application/vnd.github+json")
            .call();
        let gists: Vec<Gist> = self.answer("listing the user's gists", response)?;
        let mut out = Vec::new();
        for gist in gists {
            let Some(file) = gist.files.get(CLAIM_FILE) else {
                continue;
            };
            // The address comes from the provider's answer: followed only to the provider's
            // own hosts, never to any host and scheme it names (our network, a file).
            if !self.own_url(&file.raw_url) {
                continue;
            }
            let response = self.agent.get(&file.raw_url).call();
            if let Ok(token) = self.answer::<ClaimToken>("reading a claim", response) {
                out.push((token, gist.html_url.clone()));
            }
        }
        Ok(out)
    }

    /// Whether `url` is on one of the provider's hosts: the API's or the web's (same
    /// scheme, host and port), or GitHub's host for raw gist files.
    fn own_url(&self, url: &str) -> bool {
        let origin = |u: &str| -> Option<String> {
            let (scheme, rest) = u.split_once("://")?;
            let host = rest.split(['/', '?', '#']).next()?;
            if host.is_empty() || host.contains('@') {
                return None;
            }
            Some(format!(
                "{}://{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            ))
        };
        let Some(found) = origin(url) else {
            return false;
        };
        [
            self.config.api_url.as_str(),
            self.config.web_url.as_str(),
            "https://gist.githubusercontent.com",
        ]
        .iter()
        .filter_map(|u| origin(u))
        .any(|allowed| allowed == found)
    }

    /// Logins matching `term`.
    pub fn search(&self, term: &str) -> Result<Vec<String>, ProviderError> {
        let response = self
            .agent
            .get(format!("{}/search/users", self.config.api_url))
            .query("q", term)
            .header("Accept", "application/vnd.github+json")
            .call();
        let found: SearchUsers = self.answer("searching users", response)?;
        Ok(found.items.into_iter().map(|u| u.login).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, 1.15: a gist's `raw_url` is followed only to the provider's own hosts.
    #[test]
    fn raw_urls_are_followed_only_to_the_providers_hosts() {
        let github = GitHub::new(GitHubConfig::default());
        assert!(github.own_url("https://gist.githubusercontent.com/u/1/raw/claim"));
        assert!(github.own_url("https://api.github.com/gists/1"));
        for url in [
            "http://gist.githubusercontent.com/u/1/raw/claim",
            "https://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8443/api/status",
            "file:///etc/passwd",
            "https://gist.githubusercontent.com@evil.example/x",
            "https://gist.githubusercontent.com.evil.example/x",
            "gist.githubusercontent.com/u/1",
        ] {
            assert!(!github.own_url(url), "{url}");
        }
    }
}
