//! A terminal chat on the client library. With a server from the README's quick
//! start (built-in accounts on):
//!
//! ```sh
//! cargo run -p client-sdk --example chat -- alice bob   # one terminal
//! cargo run -p client-sdk --example chat -- bob alice   # another
//! ```
//!
//! Signs `ME` up (password `password-ME`) unless the account exists, connects,
//! prints every message of every conversation once and in order (what was missed
//! while away first), and sends each line typed to `PEER`. `IMQTT_HTTP` and
//! `IMQTT_MQTT` point it at another server.

use imqtt_client::{Client, ClientConfig, ClientEvent, Credentials, FileCursors};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(me), Some(peer)) = (args.next(), args.next()) else {
        eprintln!("usage: chat ME PEER");
        std::process::exit(2);
    };
    let http = std::env::var("IMQTT_HTTP").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let mqtt = std::env::var("IMQTT_MQTT").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let password = format!("password-{me}");
    match imqtt_client::sign_up(&http, &me, &password).await {
        Err(e) if e.code() != Some("user_exists") => return Err(e.into()),
        _ => {}
    }

    let mut config =
        ClientConfig::new(mqtt, http, &me, "terminal", Credentials::Password(password));
    // Resume exactly where this terminal left off last time.
    config.cursors = std::sync::Arc::new(FileCursors::open(format!("{me}.cursors"))?);
    let (client, mut events) = Client::connect(config).await?;

    let sender = client.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Err(e) = sender.send(&peer, json!({ "text": line })).await {
                eprintln!("not sent: {e}");
            }
        }
    });
    while let Some(event) = events.next().await {
        match event {
            ClientEvent::Message(m) => {
                println!("[{} #{}] {}: {}", m.conv, m.seq, m.from, m.body["text"])
            }
            ClientEvent::Connected => eprintln!("(connected)"),
            ClientEvent::Disconnected { reason } => eprintln!("(reconnecting: {reason})"),
            _ => {}
        }
    }
    Ok(())
}
