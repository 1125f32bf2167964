//! Password hashing for the built-in accounts (DESIGN.md §2): argon2id with the
//! argon2 crate's default parameters (v19, m = 19 MiB, t = 2, p = 1), stored as PHC
//! strings, so a later change of parameters still verifies the older hashes.
//!
//! One hash or verification costs tens of milliseconds of CPU and 19 MiB of memory.
//! [`Passwords`] therefore runs them on tokio's blocking pool, never on the async
//! workers, and at most a fixed number at once; the others wait for a permit (a
//! request that waits longer than `http.request_timeout` gets 503 from the API's
//! guard).

use std::fmt;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// The shortest password an account may have, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;

/// The longest password accepted, in bytes: argon2 reads all of its input, so an
/// unbounded password would be an unbounded cost per request.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Most hashes computed at once, whatever the machine: each holds 19 MiB.
const MAX_CONCURRENT: usize = 4;

/// An argon2id hash, with the default parameters, of a password no account has:
/// an unknown user's password is verified against it, so that an unknown user costs
/// what a wrong password costs and the time of the answer does not tell which
/// accounts exist. A match against it is never a success.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$\
                          +pWquYYBom5NrTsCp1DBZQ$Ow0k8cwtl5jyjTd4NUgGRMNPAUiO72M6fBGTNz/EFD0";

/// Checks a new account's password against the length rule
/// ([`MIN_PASSWORD_BYTES`] to [`MAX_PASSWORD_BYTES`] bytes).
pub fn check_new_password(password: &str) -> Result<()> {
    let len = password.len();
    if len < MIN_PASSWORD_BYTES {
        Err(Error::BadRequest(format!(
            "password must be at least {MIN_PASSWORD_BYTES} bytes"
        )))
    } else if len > MAX_PASSWORD_BYTES {
        Err(Error::BadRequest(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )))
    } else {
        Ok(())
    }
}

/// A password's PHC string (`$argon2id$v=19$...`), as the store keeps it. `Debug`
/// does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct HashedPassword(String);

impl HashedPassword {
    /// The PHC string, for the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HashedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashedPassword(<redacted>)")
    }
}

/// Hashes and verifies passwords on the blocking pool, a bounded number at a time.
/// Cheap to clone: clones share the bound.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("limit", &self.limit)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Default for Passwords {
    /// As many at once as the machine has cores, at most 4: more would not hash
    /// faster, only hold more memory and take more CPU from the async workers.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Passwords::new(cores.min(MAX_CONCURRENT))
    }
}

impl Passwords {
    /// At most `limit` (at least 1) hashes or verifications at once.
    pub fn new(limit: usize) -> Passwords {
        let limit = limit.max(1);
        Passwords {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Hashes `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<HashedPassword> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| HashedPassword(h.to_string()))
                .map_err(hash_error)
        })
        .await
    }

    /// Whether `password` matches `stored`, the PHC string of an account; with no
    /// account (`None`), `false` after the same work as a wrong password.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool> {
        self.run(move || {
            let known = stored.is_some();
            let phc =
                PasswordHash::new(stored.as_deref().unwrap_or(DUMMY_HASH)).map_err(hash_error)?;
            match Argon2::default().verify_password(password.as_bytes(), &phc) {
                Ok(()) => Ok(known),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(e) => Err(hash_error(e)),
            }
        })
        .await
    }

    /// Runs `work` on the blocking pool once a permit is free. The permit moves into
    /// the blocking task: a request dropped while its hash runs (timed out, client
    /// gone) leaves the computation holding its permit until it ends, so no more
    /// than `limit` ever run at once.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::PasswordHash("the hashing pool is closed".to_owned()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| Error::PasswordHash(e.to_string()))?
    }
}

/// argon2's errors name a field or a limit, never the password or the hash.
fn hash_error(e: argon2::password_hash::Error) -> Error {
    Error::PasswordHash(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    use argon2::{Algorithm, Params, Version};

    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let p = Passwords::new(2);
        let hash = p.hash("correct horse".to_owned()).await.expect("hash");
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!format!("{hash:?}").contains("argon2"), "{hash:?}");
        let stored = Some(hash.as_str().to_owned());
        assert!(
            p.verify("correct horse".to_owned(), stored.clone())
                .await
                .expect("verify")
        );
        assert!(
            !p.verify("correct horsE".to_owned(), stored)
                .await
                .expect("verify")
        );
        // Two hashes of one password differ (fresh salts).
        let again = p.hash("correct horse".to_owned()).await.expect("hash");
        assert_ne!(again, hash);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies_and_costs_a_real_verification() {
        let p = Passwords::new(1);
        for guess in ["", "password", "dummy"] {
            assert!(!p.verify(guess.to_owned(), None).await.expect("verify"));
        }
        // The dummy hash has the parameters every new hash gets, so checking it
        // takes as long as checking a real account's.
        let dummy = PasswordHash::new(DUMMY_HASH).expect("PHC string");
        assert_eq!(dummy.algorithm, Algorithm::Argon2id.ident());
        assert_eq!(dummy.version, Some(Version::V0x13.into()));
        let params = Params::try_from(&dummy).expect("params");
        let default = Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert_eq!(params.output_len(), Some(Params::DEFAULT_OUTPUT_LEN));
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error() {
        let p = Passwords::new(1);
        let e = p
            .verify("whatever1".to_owned(), Some("not a phc string".to_owned()))
            .await
            .expect_err("corrupt");
        assert!(matches!(e, Error::PasswordHash(_)), "{e:?}");
    }

    #[test]
    fn password_length_rule() {
        assert!(check_new_password("1234567").is_err());
        assert!(check_new_password("12345678").is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        // Bytes, not characters: four 2-byte characters are long enough.
        assert!(check_new_password("éééé").is_ok());
    }

    /// A gate the blocking closures wait at until the test opens it.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = self.open.lock().expect("gate lock");
            while !*open {
                open = self.cv.wait(open).expect("gate lock");
            }
        }

        fn open(&self) {
            *self.open.lock().expect("gate lock") = true;
            self.cv.notify_all();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_limit_run_at_once_even_when_callers_give_up() {
        let p = Passwords::new(2);
        let gate = Arc::new(Gate::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let job = || {
            let (p, gate, running, most) = (p.clone(), gate.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                p.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    gate.wait();
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        let first: Vec<_> = (0..2).map(|_| job()).collect();
        let wait_running = |n: usize| {
            let running = running.clone();
            async move {
                while running.load(Ordering::SeqCst) != n {
                    tokio::task::yield_now().await;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait_running(2))
            .await
            .expect("two jobs start");
        // Their callers give up (as a timed-out request would): the computations go
        // on and keep their permits.
        for j in &first {
            j.abort();
        }
        let rest: Vec<_> = (0..4).map(|_| job()).collect();
        tokio::task::yield_now().await;
        assert_eq!(p.permits.available_permits(), 0);
        assert_eq!(running.load(Ordering::SeqCst), 2);
        gate.open();
        for j in rest {
            j.await.expect("join").expect("job");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        tokio::time::timeout(std::time::Duration::from_secs(10), wait_running(0))
            .await
            .expect("all done");
    }
}
