//! The chat page and the operator's page in a real browser: runs the
//! Playwright suite of `tests/browser/` (Python, headless Chromium from the system,
//! never a downloaded build) against the `imqtt` binary cargo built.
//!
//! It needs `python3` with the packages of `tests/browser/requirements.txt` and
//! Chromium (`/usr/bin/chromium`, Debian's `chromium`, or `$CHROMIUM`); `.ci/run`
//! installs them. Where they are missing the test says what to install and passes,
//! except under CI (`CI` set), where a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the suite cannot run here, if it cannot.
fn missing(root: &Path) -> Option<String> {
    let python = Command::new("python3")
        .args(["-c", "import playwright, pytest"])
        .current_dir(root)
        .output();
    match python {
        Ok(out) if out.status.success() => {}
        _ => {
            return Some(
                "python3 with playwright and pytest (pip install -r tests/browser/requirements.txt)"
                    .into(),
            );
        }
    }
    let chromium = chromium();
    (!chromium.exists()).then(|| format!("{} (apt-get install chromium)", chromium.display()))
}

#[test]
fn the_web_pages_work_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    if let Some(what) = missing(&root) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser tests need {what}; .ci/run installs it"
        );
        eprintln!("SKIPPED: the browser tests need {what}");
        return;
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "tests/browser",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&root)
        .env("IMQTT_BIN", imqtt_tests::imqtt_bin())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("python3 runs");
    assert!(status.success(), "the browser suite failed: {status}");
}
