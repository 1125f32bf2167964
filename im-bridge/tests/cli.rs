//! The `imqtt` command line: config errors and token minting.

use std::process::Command;

use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};

const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";

fn imqtt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imqtt"));
    c.env_remove("RUST_LOG");
    c
}

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("imqtt.toml");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn bad_config_lists_every_problem_and_exits_2() {
    let (_dir, path) = write_config(
        "[mqtt]\nmax_conections = 1\nmax_packet_size = \"huge\"\n[http]\nlisten = \"nowhere\"\n[surprise]\n",
    );
    let out = imqtt()
        .arg("--config")
        .arg(&path)
        .env("IMQTT_STORE__RETENTION", "sometimes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "mqtt.max_conections",
        "mqtt.max_packet_size",
        "http.listen",
        "surprise",
        "store.retention (from IMQTT_STORE__RETENTION)",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[test]
fn sample_secret_is_refused_without_the_dev_switch() {
    let (_dir, path) = write_config("[store]\npath = \"unused\"\n");
    let out = imqtt().arg("--config").arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
    assert!(stderr.contains("allow_insecure_default"), "{stderr}");
}

#[test]
fn token_command_mints_a_token_the_server_accepts() {
    let (_dir, path) = write_config(&format!("[auth]\njwt_secret = \"{SECRET}\"\n"));
    let out = imqtt()
        .args([
            "token", "alice", "--role", "service", "--ttl", "1h", "--config",
        ])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let verifier = TokenVerifier::new(&AuthConfig {
        jwt_secret: Secret::new(SECRET),
        ..AuthConfig::default()
    })
    .expect("verifier");
    let claims = verifier
        .verify(token.trim())
        .expect("minted token verifies");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.role, Role::Service);
    let ttl = claims.exp - broker::auth::unix_now();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[test]
fn token_command_refuses_an_invalid_uid() {
    let (_dir, path) = write_config(&format!("[auth]\njwt_secret = \"{SECRET}\"\n"));
    let out = imqtt()
        .args(["token", "a/b", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid id"));
}
