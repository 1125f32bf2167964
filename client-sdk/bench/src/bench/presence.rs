//! Scenario `presence`: U users `p{i}` on a ring, each letting the C users after
//! it, `p{i+1}` .. `p{i+C}` (mod U), watch its presence. Setup, timed: the U × C
//! `PUT /v1/contacts` over S HTTP connections, then every user connects once and
//! subscribes, in one SUBSCRIBE, the `presence/...` of the C users it watches.
//!
//! Measured: F users spread evenly over the ring, one after another, disconnect
//! (DISCONNECT, then close) and reconnect. Each of their C watchers times the
//! `offline` presence from the DISCONNECT, and the `online` one from the start of
//! the reconnect. One user at a time, so every watcher is connected when a change
//! comes; the next one starts once every watcher has seen the change, or after
//! the stall time, when those not seen count as missing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use imqtt_client::wire::{Presence, PresenceStatus, topic};
use rumqttc::mqttbytes::v4::Packet;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::Api;
use super::histogram::{Latencies, REQUEST_QUANTILES};
use super::procfs::CpuMeter;
use super::schedule::share;
use super::subscriber::{self, Errors, Started, start_all};
use super::{BenchError, Connection, JwtSecret, Target, per_sec, secs};

/// Room a user's read asks for: a few small presence messages.
const READ_CHUNK: usize = 1024;
const SUBSCRIBE_PKID: u16 = 1;
/// A change seen within this long counts as prompt.
const PROMPT: Duration = Duration::from_secs(1);
/// Percentiles printed for presence changes.
const CHANGE_QUANTILES: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99), ("max", 1.0)];

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct PresenceOptions {
    /// The HTTP API's base URL.
    pub(crate) base: String,
    /// Signs the users' tokens.
    pub(crate) secret: JwtSecret,
    /// Users on the ring (`p0` .. `p{U-1}`), each one MQTT connection.
    pub(crate) users: usize,
    /// Watchers of each user (fewer than `users`).
    pub(crate) contacts: usize,
    /// Users that disconnect and reconnect, one after another.
    pub(crate) flaps: usize,
    /// HTTP connections making the contacts.
    pub(crate) senders: usize,
    /// MQTT connects in progress at once.
    pub(crate) connect_concurrency: usize,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// The server's pid, for its CPU time.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long a change may take to reach every watcher before the rest count as
    /// missing.
    pub(crate) stall: Duration,
}

/// The name of user `index`.
fn user_name(index: usize) -> String {
    format!("p{index}")
}

/// The ring: who watches whom.
#[derive(Debug, Clone, Copy)]
struct Ring {
    users: usize,
    contacts: usize,
}

impl Ring {
    /// The users allowed to watch `user`: the `contacts` after it.
    fn watchers(self, user: usize) -> impl Iterator<Item = usize> {
        (1..=self.contacts).map(move |d| (user + d) % self.users)
    }

    /// The users `watcher` watches: the `contacts` before it.
    fn watched(self, watcher: usize) -> impl Iterator<Item = usize> {
        (1..=self.contacts).map(move |d| (watcher + self.users - d) % self.users)
    }

    /// `watcher`'s place among `user`'s watchers, if it is one.
    fn slot(self, user: usize, watcher: usize) -> Option<usize> {
        let d = (watcher + self.users - user) % self.users;
        (1..=self.contacts).contains(&d).then(|| d - 1)
    }

    /// The `flaps` users that disconnect, spread evenly over the ring.
    fn sample(self, flaps: usize) -> impl Iterator<Item = usize> {
        let users = self.users;
        (0..flaps).map(move |k| k * users / flaps)
    }
}

/// One kind of change (offline or online) over every flap.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Watcher receipts expected: watchers × flaps begun.
    pub(crate) expected: usize,
    /// Those seen before the flap moved on.
    pub(crate) seen: usize,
    /// Those seen within [`PROMPT`].
    pub(crate) prompt: usize,
    /// From the DISCONNECT (offline) or the reconnect's start (online) to each
    /// watcher's receipt.
    pub(crate) latencies: Latencies,
    /// The first change a watcher missed: `p{user}@p{watcher}`.
    pub(crate) first_missing: Option<String>,
}

/// The change being watched for: `user` went `status` at `since`.
#[derive(Debug)]
struct Probe {
    user: usize,
    name: String,
    status: PresenceStatus,
    since: Instant,
    /// By watcher slot.
    seen: Vec<bool>,
    count: usize,
    open: bool,
}

#[derive(Debug, Default)]
struct WatchState {
    probe: Option<Probe>,
    offline: Changes,
    online: Changes,
}

impl WatchState {
    fn changes(&mut self, status: PresenceStatus) -> &mut Changes {
        match status {
            PresenceStatus::Offline => &mut self.offline,
            PresenceStatus::Online => &mut self.online,
        }
    }
}

/// The change watched for now and what the watchers saw of every change so far.
#[derive(Debug)]
struct Watch {
    ring: Ring,
    state: Mutex<WatchState>,
    /// Signalled when a probe begins and when its last watcher sees it.
    changed: Notify,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `user` is about to go `status`: watch for it from now on.
    fn begin(&self, user: usize, status: PresenceStatus) {
        self.lock().probe = Some(Probe {
            user,
            name: user_name(user),
            status,
            since: Instant::now(),
            seen: vec![false; self.ring.contacts],
            count: 0,
            open: true,
        });
        self.changed.notify_waiters();
    }

    /// `watcher` received `payload` on a presence topic.
    fn receive(&self, watcher: usize, payload: &[u8]) {
        let Ok(presence) = serde_json::from_slice::<Presence>(payload) else {
            return;
        };
        let mut state = self.lock();
        let Some(probe) = state.probe.as_mut().filter(|p| p.open) else {
            return;
        };
        if probe.status != presence.status || probe.name != presence.user {
            return;
        }
        let Some(slot) = self.ring.slot(probe.user, watcher) else {
            return;
        };
        if std::mem::replace(&mut probe.seen[slot], true) {
            return;
        }
        probe.count += 1;
        let latency = probe.since.elapsed();
        let all = probe.count == probe.seen.len();
        let changes = state.changes(presence.status);
        changes.latencies.record(latency);
        changes.prompt += usize::from(latency <= PROMPT);
        if all {
            self.changed.notify_waiters();
        }
    }

    /// Waits until every watcher has seen `user` go `status`, giving up `limit`
    /// after the change began (or after this call, while it has not begun) or at
    /// `deadline`; then closes the probe and counts it. Whether all saw it.
    async fn settle(
        &self,
        user: usize,
        status: PresenceStatus,
        limit: Duration,
        deadline: Instant,
    ) -> bool {
        let asked = Instant::now();
        let all = loop {
            // Registered before looking, so a signal in between is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = {
                let state = self.lock();
                match state
                    .probe
                    .as_ref()
                    .filter(|p| p.user == user && p.status == status)
                {
                    Some(p) if p.count == p.seen.len() => break true,
                    Some(p) => p.since + limit,
                    None => asked + limit,
                }
            };
            if tokio::time::timeout_at(until.min(deadline), notified)
                .await
                .is_err()
            {
                break false;
            }
        };
        let mut state = self.lock();
        let (seen, missing) = match state.probe.as_mut() {
            Some(p) if p.user == user && p.status == status => {
                p.open = false;
                (p.count, p.seen.iter().position(|seen| !seen))
            }
            _ => (0, Some(0)),
        };
        let changes = state.changes(status);
        changes.expected += self.ring.contacts;
        changes.seen += seen;
        if let Some(slot) = missing
            && changes.first_missing.is_none()
        {
            let watcher = self.ring.watchers(user).nth(slot).unwrap_or(user);
            changes.first_missing = Some(format!("{}@{}", user_name(user), user_name(watcher)));
        }
        all
    }
}

/// The order to a user's task: disconnect now, reconnect when told.
#[derive(Debug)]
struct Flap {
    /// Fires when the user is to reconnect.
    reconnect: oneshot::Receiver<()>,
    /// How the reconnect went.
    reconnected: oneshot::Sender<Result<(), BenchError>>,
}

/// What every user's task shares.
#[derive(Debug)]
struct Users {
    target: Target,
    ring: Ring,
    slots: Semaphore,
    watch: Watch,
    errors: Errors,
}

impl Users {
    /// Connects `user` and subscribes the presence of everyone it watches.
    async fn login(&self, user: usize) -> Result<Connection, BenchError> {
        let name = user_name(user);
        let topics = self
            .ring
            .watched(user)
            .map(|w| topic::presence(&user_name(w)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BenchError::Unexpected(e.to_string()))?;
        let mut conn = self
            .target
            .connect(
                &format!("bench-{name}"),
                &name,
                None,
                self.target.source_for(user),
                READ_CHUNK,
            )
            .await?;
        self.target
            .subscribe_all(&mut conn, &topics, SUBSCRIBE_PKID)
            .await?;
        Ok(conn)
    }
}

/// User `index`'s connection for the whole run: log in, report, then watch until
/// the process ends; when `control` orders a flap, disconnect, and log in again
/// when told.
async fn user(
    index: usize,
    users: Arc<Users>,
    mut control: Option<mpsc::Receiver<Flap>>,
    ready: mpsc::Sender<Result<(), BenchError>>,
) {
    let first = {
        // The semaphore is never closed, so acquiring only fails in theory.
        let _slot = users.slots.acquire().await;
        users.login(index).await
    };
    let mut conn = match first {
        Ok(conn) => conn,
        Err(error) => {
            let _ = ready.send(Err(error)).await;
            return;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    loop {
        let order = async {
            match control.as_mut() {
                Some(control) => control.recv().await,
                None => std::future::pending().await,
            }
        };
        let watch = &users.watch;
        let served = subscriber::serve(&mut conn, users.target.keep_alive, order, |publish| {
            watch.receive(index, &publish.payload)
        })
        .await;
        let flap = match served {
            Ok(Some(flap)) => flap,
            // No more orders: the connection stays, watching, until the run ends.
            Ok(None) => {
                control = None;
                continue;
            }
            Err(error) => {
                users.errors.record(&error);
                return;
            }
        };
        watch.begin(index, PresenceStatus::Offline);
        let sent = conn.send(&Packet::Disconnect).await;
        drop(conn);
        if let Err(error) = sent {
            users.errors.record(&error);
        }
        if flap.reconnect.await.is_err() {
            return;
        }
        watch.begin(index, PresenceStatus::Online);
        match users.login(index).await {
            Ok(again) => {
                conn = again;
                let _ = flap.reconnected.send(Ok(()));
            }
            Err(error) => {
                let _ = flap.reconnected.send(Err(error));
                return;
            }
        }
    }
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct PresenceReport {
    pub(crate) users: usize,
    pub(crate) contacts: usize,
    pub(crate) flaps: usize,
    pub(crate) senders: usize,
    /// `PUT /v1/contacts` answered 204.
    pub(crate) contacts_made: usize,
    pub(crate) contacts_failed: usize,
    pub(crate) contacts_requests: Latencies,
    pub(crate) contacts_elapsed: Option<Duration>,
    pub(crate) contacts_cpu: Vec<String>,
    pub(crate) connect: Started,
    pub(crate) connect_cpu: Vec<String>,
    /// Flaps whose reconnect succeeded.
    pub(crate) flaps_done: usize,
    pub(crate) flaps_elapsed: Option<Duration>,
    pub(crate) flaps_cpu: Vec<String>,
    pub(crate) offline: Changes,
    pub(crate) online: Changes,
    pub(crate) subscriber_errors: usize,
    pub(crate) subscriber_first_error: Option<String>,
    pub(crate) error: Option<String>,
    /// The phase in which the deadline passed.
    pub(crate) timed_out: Option<&'static str>,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: PresenceOptions) -> PresenceReport {
    let mut report = PresenceReport {
        users: opts.users,
        contacts: opts.contacts,
        flaps: opts.flaps,
        senders: opts.senders,
        ..PresenceReport::default()
    };
    let ring = Ring {
        users: opts.users,
        contacts: opts.contacts,
    };

    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    let made = tokio::time::timeout_at(opts.deadline, make_contacts(&opts, ring, &mut report));
    match made.await {
        Ok(Ok(())) => report.contacts_elapsed = Some(start.elapsed()),
        Ok(Err(e)) => report.error = Some(format!("contacts: {e}")),
        Err(_) => report.timed_out = Some("contacts"),
    }
    report.contacts_cpu = cpu.phase_lines("presence_contacts_", &[(report.contacts_made, "put")]);
    eprintln!(
        "{} contacts made in {} s",
        report.contacts_made,
        secs(start.elapsed())
    );
    if report.error.is_some() || report.timed_out.is_some() {
        return report;
    }

    let users = Arc::new(Users {
        target: target.clone(),
        ring,
        slots: Semaphore::new(opts.connect_concurrency.max(1)),
        watch: Watch {
            ring,
            state: Mutex::new(WatchState::default()),
            changed: Notify::new(),
        },
        errors: Errors::default(),
    });
    let sample: Vec<usize> = ring.sample(opts.flaps).collect();
    let mut controls: Vec<Option<mpsc::Receiver<Flap>>> = (0..opts.users).map(|_| None).collect();
    let mut orders = Vec::with_capacity(sample.len());
    for &u in &sample {
        let (tx, rx) = mpsc::channel(1);
        controls[u] = Some(rx);
        orders.push((u, tx));
    }
    let controls = Mutex::new(controls);
    let cpu = CpuMeter::start(opts.server_pid);
    report.connect = start_all(opts.users, opts.deadline, |index, ready| {
        let control = controls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(index)
            .and_then(Option::take);
        user(index, Arc::clone(&users), control, ready)
    })
    .await;
    report.connect_cpu = cpu.phase_lines("presence_connect_", &[(report.connect.ok, "connection")]);
    eprintln!(
        "{} of {} users connected in {} s",
        report.connect.ok,
        opts.users,
        secs(report.connect.elapsed)
    );
    if report.connect.timed_out {
        report.timed_out = Some("connect");
    } else if let Some(e) = &report.connect.first_error {
        report.error = Some(format!("user: {e}"));
    } else {
        let cpu = CpuMeter::start(opts.server_pid);
        let start = Instant::now();
        flap_all(&opts, &users, orders, &mut report).await;
        report.flaps_elapsed = Some(start.elapsed());
        report.flaps_cpu = cpu.phase_lines("presence_flaps_", &[(report.flaps_done, "flap")]);
    }
    let mut state = users.watch.lock();
    report.offline = std::mem::take(&mut state.offline);
    report.online = std::mem::take(&mut state.online);
    drop(state);
    report.subscriber_errors = users.errors.count();
    report.subscriber_first_error = users.errors.first();
    report
}

/// What one connection made of the contacts.
#[derive(Debug, Default)]
struct Made {
    count: usize,
    latencies: Latencies,
    error: Option<BenchError>,
}

/// Every user lets its watchers see its presence: `senders` connections, each
/// doing its share of the users one request at a time, until its first error.
async fn make_contacts(
    opts: &PresenceOptions,
    ring: Ring,
    report: &mut PresenceReport,
) -> Result<(), BenchError> {
    let mut set = JoinSet::new();
    let mut first = 0;
    for k in 0..opts.senders {
        let count = share(opts.users, opts.senders, k);
        let mine = first..first + count;
        first += count;
        let conn = Api::new(
            &opts.base,
            &opts.secret,
            &user_name(mine.start),
            opts.request_timeout,
        )?;
        let secret = opts.secret.clone();
        set.spawn(async move {
            let mut made = Made::default();
            let puts = async {
                for u in mine {
                    let api = conn.as_user(&secret, &user_name(u))?;
                    for w in ring.watchers(u) {
                        let started = Instant::now();
                        api.add_contact(&user_name(w)).await?;
                        made.latencies.record(started.elapsed());
                        made.count += 1;
                    }
                }
                Ok::<_, BenchError>(())
            };
            made.error = puts.await.err();
            made
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let made = joined.map_err(|e| BenchError::Unexpected(format!("contacts task: {e}")))?;
        report.contacts_made += made.count;
        report.contacts_requests.merge(&made.latencies);
        if let Some(error) = made.error {
            report.contacts_failed += 1;
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The flaps, one after another.
async fn flap_all(
    opts: &PresenceOptions,
    users: &Users,
    orders: Vec<(usize, mpsc::Sender<Flap>)>,
    report: &mut PresenceReport,
) {
    for (u, order) in orders {
        if Instant::now() >= opts.deadline {
            report.timed_out = Some("flaps");
            return;
        }
        let (go, reconnect) = oneshot::channel();
        let (reconnected, outcome) = oneshot::channel();
        if order
            .send(Flap {
                reconnect,
                reconnected,
            })
            .await
            .is_err()
        {
            report
                .error
                .get_or_insert_with(|| format!("{} had lost its connection", user_name(u)));
            continue;
        }
        let watch = &users.watch;
        watch
            .settle(u, PresenceStatus::Offline, opts.stall, opts.deadline)
            .await;
        let _ = go.send(());
        watch
            .settle(u, PresenceStatus::Online, opts.stall, opts.deadline)
            .await;
        match tokio::time::timeout_at(opts.deadline, outcome).await {
            Ok(Ok(Ok(()))) => report.flaps_done += 1,
            Ok(Ok(Err(e))) => {
                report
                    .error
                    .get_or_insert_with(|| format!("reconnecting {}: {e}", user_name(u)));
            }
            Ok(Err(_)) => {
                report
                    .error
                    .get_or_insert_with(|| format!("{} stopped while flapping", user_name(u)));
            }
            Err(_) => {
                report.timed_out = Some("flaps");
                return;
            }
        }
    }
}

impl PresenceReport {
    /// Whether setup completed and every watcher saw every change.
    pub(crate) fn complete(&self) -> bool {
        let expected = self.flaps * self.contacts;
        self.error.is_none()
            && self.timed_out.is_none()
            && self.subscriber_errors == 0
            && self.connect.ok == self.users
            && self.flaps_done == self.flaps
            && self.offline.expected == expected
            && self.offline.seen == expected
            && self.online.expected == expected
            && self.online.seen == expected
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=presence".to_owned(),
            format!("users={}", self.users),
            format!("contacts={}", self.contacts),
            format!("flaps={}", self.flaps),
            format!("senders={}", self.senders),
            format!("presence_contacts_made={}", self.contacts_made),
            format!("presence_contacts_failed_senders={}", self.contacts_failed),
        ];
        if let Some(d) = self.contacts_elapsed {
            out.push(format!("presence_contacts_secs={}", secs(d)));
            out.push(format!(
                "presence_contacts_per_sec={:.1}",
                per_sec(self.contacts_made, d)
            ));
        }
        out.extend(
            self.contacts_requests
                .lines("presence_contacts_request", REQUEST_QUANTILES),
        );
        out.extend(self.contacts_cpu.iter().cloned());
        out.push(format!("presence_connected={}", self.connect.ok));
        out.push(format!("presence_connect_failed={}", self.connect.failed));
        out.push(format!(
            "presence_connect_secs={}",
            secs(self.connect.elapsed)
        ));
        out.push(format!(
            "presence_connect_per_sec={:.1}",
            per_sec(self.connect.ok, self.connect.elapsed)
        ));
        out.extend(self.connect_cpu.iter().cloned());
        out.push(format!("presence_flaps_done={}", self.flaps_done));
        if let Some(d) = self.flaps_elapsed {
            out.push(format!("presence_flaps_secs={}", secs(d)));
        }
        for (name, c) in [("offline", &self.offline), ("online", &self.online)] {
            out.push(format!("presence_{name}_expected={}", c.expected));
            out.push(format!("presence_{name}_seen={}", c.seen));
            out.push(format!("presence_{name}_within_1s={}", c.prompt));
            out.push(format!(
                "presence_{name}_missing={}",
                c.expected.saturating_sub(c.seen)
            ));
            out.extend(
                c.latencies
                    .lines(&format!("presence_{name}"), CHANGE_QUANTILES),
            );
            if let Some(m) = &c.first_missing {
                out.push(format!("presence_{name}_first_missing={m}"));
            }
        }
        out.extend(self.flaps_cpu.iter().cloned());
        out.push(format!("subscriber_errors={}", self.subscriber_errors));
        if let Some(e) = &self.subscriber_first_error {
            out.push(format!("subscriber_first_error={e}"));
        }
        if let Some(e) = &self.error {
            out.push(format!("error={e}"));
        }
        if let Some(phase) = self.timed_out {
            out.push(format!("timed_out_in={phase}"));
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "presence: {} users watched by {} contacts each",
            self.users, self.contacts
        );
        if let Some(d) = self.contacts_elapsed {
            s += &format!(
                "; {} contacts made in {} s ({:.0}/s)",
                self.contacts_made,
                secs(d),
                per_sec(self.contacts_made, d)
            );
        }
        s += &format!(
            "; {}/{} connected in {} s",
            self.connect.ok,
            self.users,
            secs(self.connect.elapsed)
        );
        s += &format!("; {}/{} flaps", self.flaps_done, self.flaps);
        for (name, from, c) in [
            ("offline", "disconnect", &self.offline),
            ("online", "reconnect", &self.online),
        ] {
            if c.expected == 0 {
                continue;
            }
            s += &format!(
                "; {from} to watcher {name}: {} of {} seen ({} within 1 s)",
                c.seen, c.expected, c.prompt
            );
            if c.latencies.count() > 0 {
                s += &format!(", {}", c.latencies.summary(CHANGE_QUANTILES));
            }
        }
        s += ".";
        if let Some(e) = &self.error {
            s += &format!(" Error: {e}.");
        }
        if self.subscriber_errors > 0 {
            s += &format!(
                " {} users dropped, first: {}.",
                self.subscriber_errors,
                self.subscriber_first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(phase) = self.timed_out {
            s += &format!(" Timed out during {phase}.");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_watches_the_users_before_and_is_watched_by_those_after() {
        let ring = Ring {
            users: 50,
            contacts: 20,
        };
        assert_eq!(
            ring.watchers(45).collect::<Vec<_>>()[..6],
            [46, 47, 48, 49, 0, 1]
        );
        assert_eq!(ring.watched(3).take(4).collect::<Vec<_>>(), [2, 1, 0, 49]);
        for user in [0, 17, 49] {
            for (slot, watcher) in ring.watchers(user).enumerate() {
                assert_eq!(ring.slot(user, watcher), Some(slot));
                assert!(ring.watched(watcher).any(|w| w == user));
            }
            assert_eq!(ring.slot(user, user), None);
            assert_eq!(ring.slot(user, (user + 21) % 50), None);
        }
        assert_eq!(ring.sample(5).collect::<Vec<_>>(), [0, 10, 20, 30, 40]);
    }

    #[tokio::test]
    async fn a_change_settles_once_every_watcher_saw_it_or_the_limit_passes() {
        let ring = Ring {
            users: 4,
            contacts: 2,
        };
        let watch = Watch {
            ring,
            state: Mutex::new(WatchState::default()),
            changed: Notify::new(),
        };
        let offline = br#"{"user":"p1","status":"offline","devices":[],"ts":1}"#;
        let far = Instant::now() + Duration::from_secs(60);
        watch.begin(1, PresenceStatus::Offline);
        watch.receive(2, offline);
        watch.receive(2, offline);
        watch.receive(0, offline);
        watch.receive(3, offline);
        assert!(
            watch
                .settle(1, PresenceStatus::Offline, Duration::from_secs(5), far)
                .await
        );
        watch.begin(1, PresenceStatus::Online);
        watch.receive(
            2,
            br#"{"user":"p1","status":"online","devices":["d"],"ts":2}"#,
        );
        // The limit passes with one watcher short.
        assert!(
            !watch
                .settle(1, PresenceStatus::Online, Duration::from_millis(20), far)
                .await
        );
        let state = watch.lock();
        assert_eq!((state.offline.expected, state.offline.seen), (2, 2));
        assert_eq!((state.online.expected, state.online.seen), (2, 1));
        assert_eq!(state.offline.prompt, 2);
    }
}
