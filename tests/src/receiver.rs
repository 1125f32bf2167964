//! A webhook receiver for the tests: a real HTTP/1.1 server on a loopback port
//! that records every POST, and answers 200, or 500 while told to fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One POST as it arrived.
#[derive(Clone, Debug)]
pub struct Post {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// Whether it was answered 200.
    pub accepted: bool,
}

#[derive(Debug, Default)]
struct State {
    posts: Vec<Post>,
    /// Answer this many more with 500.
    fail_next: usize,
    /// Answer everything with 500.
    down: bool,
}

/// The receiver; it stops with the test process.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Receiver { url, state }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` POSTs get 500.
    pub fn fail_next(&self, n: usize) {
        self.state().fail_next = n;
    }

    /// While down, every POST gets 500.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Every POST so far.
    pub fn posts(&self) -> Vec<Post> {
        self.state().posts.clone()
    }

    /// The events of the accepted POSTs, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .filter(|p| p.accepted)
            .flat_map(|p| {
                serde_json::from_slice::<Value>(&p.body)
                    .ok()
                    .and_then(|v| v["events"].as_array().cloned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Waits until the accepted POSTs hold `n` events with distinct ids (or
    /// `within` passes); returns the events.
    pub async fn wait_events(&self, n: usize, within: Duration) -> Vec<Value> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let events = self.events();
            let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() >= n || tokio::time::Instant::now() > until {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Serves one connection's requests (keep-alive) until it closes.
async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let accepted = {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let fail = s.down || s.fail_next > 0;
            s.fail_next = s.fail_next.saturating_sub(1);
            s.posts.push(Post {
                headers,
                body,
                accepted: !fail,
            });
            !fail
        };
        let answer: &[u8] = if accepted {
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
        };
        if conn.write_all(answer).await.is_err() {
            return;
        }
    }
}
