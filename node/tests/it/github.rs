//! A local stand-in for the part of GitHub that the `github.com` identity provider uses:
//! the OAuth device flow, the authenticated user, creating and listing gists, raw gist
//! files, and user search. Real HTTP on 127.0.0.1, so the provider's own client code runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    /// Who approves the next device authorisation.
    approver: String,
    /// Polls per device code.
    polls: HashMap<String, u32>,
    /// Gists: (owner, file content).
    gists: Vec<(String, String)>,
}

/// The stand-in server; stops when dropped.
pub(crate) struct FakeGitHub {
    server: Arc<tiny_http::Server>,
    url: String,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeGitHub {
    pub(crate) fn start() -> FakeGitHub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let thread = {
            let (server, state, url) = (server.clone(), state.clone(), url.clone());
            std::thread::spawn(move || {
                while let Ok(mut request) = server.recv() {
                    let mut body = String::new();
                    let _ = request.as_reader().read_to_string(&mut body);
                    let auth = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string());
                    let (status, answer) =
                        handle(&state, &url, request.method(), request.url(), &body, auth);
                    let response = tiny_http::Response::from_string(answer.to_string())
                        .with_status_code(status)
                        .with_header(
                            "Content-Type: application/json"
                                .parse::<tiny_http::Header>()
                                .unwrap(),
                        );
                    let _ = request.respond(response);
                }
            })
        };
        FakeGitHub {
            server,
            url,
            state,
            thread: Some(thread),
        }
    }

    /// Its base URL (web and API alike).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The next device authorisation is approved by `login`.
    pub(crate) fn approve_as(&self, login: &str) {
        self.state.lock().unwrap().approver = login.to_owned();
    }

    /// Publishes `content` as a claim gist of `login` directly (as that user could).
    pub(crate) fn publish_as(&self, login: &str, content: &str) {
        self.state
            .lock()
            .unwrap()
            .gists
            .push((login.to_owned(), content.to_owned()));
    }

    /// The claim gists of `login`.
    pub(crate) fn gists_of(&self, login: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .gists
            .iter()
            .filter(|(owner, _)| owner == login)
            .map(|(_, content)| content.clone())
            .collect()
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn form_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn handle(
    state: &Mutex<State>,
    url: &str,
    method: &tiny_http::Method,
    path: &str,
    body: &str,
    auth: Option<String>,
) -> (u16, Value) {
    let mut state = state.lock().unwrap();
    let login = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer gho_fake_"))
        .map(str::to_owned);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    match (method, path) {
        (tiny_http::Method::Post, "/login/device/code") => {
            let code = format!("device-{}", state.polls.len() + 1);
            state.polls.insert(code.clone(), 0);
            (
                200,
                json!({
                    "device_code": code,
                    "user_code": "WDJB-MJHT",
                    "verification_uri": format!("{url}/login/device"),
                    "expires_in": 900,
                    "interval": 1,
                }),
            )
        }
        (tiny_http::Method::Post, "/login/oauth/access_token") => {
            let code = form_value(body, "device_code").unwrap_or("").to_owned();
            let approver = state.approver.clone();
            match state.polls.get_mut(&code) {
                None => (200, json!({ "error": "expired_token" })),
                // The user approves between the first and the second poll.
                Some(0) => {
                    state.polls.insert(code, 1);
                    (200, json!({ "error": "authorization_pending" }))
                }
                Some(_) => (
                    200,
                    json!({ "access_token": format!("gho_fake_{approver}"), "token_type": "bearer" }),
                ),
            }
        }
        (tiny_http::Method::Get, "/user") => match login {
            Some(login) => (200, json!({ "login": login })),
            None => (401, json!({ "message": "Requires authentication" })),
        },
        (tiny_http::Method::Post, "/gists") => {
            let Some(login) = login else {
                return (401, json!({ "message": "Requires authentication" }));
            };
            let request: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let Some(content) = request["files"]
                .as_object()
                .and_then(|files| files.values().next())
                .and_then(|f| f["content"].as_str())
            else {
                return (422, json!({ "message": "no file" }));
            };
            state.gists.push((login, content.to_owned()));
            let id = state.gists.len();
            (
                201,
                json!({ "id": id.to_string(), "html_url": format!("{url}/gist/{id}") }),
            )
        }
        (tiny_http::Method::Get, p) if p.starts_with("/users/") && p.ends_with("/gists") => {
            let owner = &p["/users/".len()..p.len() - "/gists".len()];
            let list: Vec<Value> = state
                .gists
                .iter()
                .enumerate()
                .filter(|(_, (o, _))| o == owner)
                .map(|(i, _)| {
                    let id = i + 1;
                    json!({
                        "id": id.to_string(),
                        "html_url": format!("{url}/gist/{id}"),
                        "files": { node::provider::CLAIM_FILE: { "raw_url": format!("{url}/raw/{id}") } },
                    })
                })
                .collect();
            (200, Value::Array(list))
        }
        (tiny_http::Method::Get, p) if p.starts_with("/raw/") => {
            let id: usize = p["/raw/".len()..].parse().unwrap_or(0);
            match state.gists.get(id.wrapping_sub(1)) {
                Some((_, content)) => (
                    200,
                    serde_json::from_str(content).unwrap_or(Value::String(content.clone())),
                ),
                None => (404, json!({ "message": "Not Found" })),
            }
        }
        (tiny_http::Method::Get, "/search/users") => {
            let term = form_value(query, "q").unwrap_or("");
            let mut logins: Vec<String> = state.gists.iter().map(|(o, _)| o.clone()).collect();
            logins.push(state.approver.clone());
            logins.sort();
            logins.dedup();
            let items: Vec<Value> = logins
                .into_iter()
                .filter(|l| !term.is_empty() && l.contains(term))
                .map(|l| json!({ "login": l }))
                .collect();
            (200, json!({ "items": items }))
        }
        _ => (404, json!({ "message": "Not Found" })),
    }
}
