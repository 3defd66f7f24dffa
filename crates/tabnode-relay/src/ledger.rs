//! The flops-points ledger: an embedded, crash-safe database (redb) in the
//! relay's data directory.
//!
//! Every credit has a unique id (`tokens:<request>:<attempt>`,
//! `pof:<peer>:<time>:<round>`, `uptime:<peer>:<first minute>`): applying a
//! credit whose id is already recorded changes nothing, so a retried or
//! repeated credit is never counted twice. Credits are applied in
//! transactions that are durable when they commit (redb's default
//! durability: fsync), so a relay killed with `kill -9` keeps everything it
//! acknowledged. [`Ledger::submit`] batches concurrent credits into one
//! transaction (group commit) on a dedicated thread.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Points for one generated token delivered to a requester.
pub const POINTS_PER_TOKEN: u64 = 1;
/// Points per GFLOP (of `2n³`) of a passed Proof-of-FLOPS challenge: a
/// proof at n = 2048 is worth 17, one at n = 256 nothing.
pub const POINTS_PER_PROOF_GFLOP: u64 = 1;
/// Points for one minute online with a valid proof.
pub const POINTS_PER_UPTIME_MINUTE: u64 = 1;
/// Tokens a checker reads (in one teacher-forced pass) per point it earns:
/// a prefill costs a fraction of the decode it checks.
pub const CHECKED_TOKENS_PER_POINT: u64 = 4;

const CREDITS: TableDefinition<&str, &[u8]> = TableDefinition::new("credits");
const BALANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("balances");

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database file cannot be opened, read or written.
    #[error("ledger database {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// A stored record cannot be decoded.
    #[error("ledger record {key} is corrupt: {source}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A record cannot be encoded.
    #[error("ledger record {key} cannot be encoded: {source}")]
    Encode {
        /// Its key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The group commit that held these credits failed (the same failure
    /// for every batch in it).
    #[error("ledger commit failed: {0}")]
    Commit(Arc<LedgerError>),
    /// The writer thread could not be started.
    #[error("starting the ledger writer: {0}")]
    Thread(std::io::Error),
    /// The writer thread has stopped.
    #[error("the ledger writer has stopped")]
    Stopped,
}

/// What a credit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Tokens served (`amount` = tokens).
    Tokens,
    /// A passed proof (`amount` = 1).
    Proof,
    /// Minutes online (`amount` = minutes).
    Uptime,
    /// A spot check run for the network (`amount` = tokens checked).
    Check,
    /// A debit: the tokens of a request that failed its spot check
    /// (`amount` = tokens, `points` = what their credit gave).
    Clawback,
    /// A debit: tokens the account consumed through the API with one of
    /// its keys (`amount` = prompt + completion tokens).
    Spend,
}

/// One credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// Unique; a second credit with the same id is ignored.
    pub id: String,
    /// The node credited (base58 peer id).
    pub peer_id: String,
    /// What for.
    pub kind: CreditKind,
    /// Tokens, proofs or minutes.
    pub amount: u64,
    /// Points it is worth (set by whoever grants it: tokens ×
    /// [`POINTS_PER_TOKEN`], proofs by the work they proved, minutes ×
    /// [`POINTS_PER_UPTIME_MINUTE`]).
    #[serde(default)]
    pub points: u64,
}

impl Credit {
    /// A spot check of `tokens` tokens.
    pub fn check(id: String, peer_id: String, tokens: u64) -> Self {
        Self {
            id,
            peer_id,
            kind: CreditKind::Check,
            amount: tokens,
            points: tokens.div_ceil(CHECKED_TOKENS_PER_POINT),
        }
    }

    /// The debit of a [`Credit::tokens`] whose tokens failed a spot check
    /// (its id derived from the credit's: applied once).
    pub fn clawback(credit_id: &str, peer_id: String, tokens: u64) -> Self {
        Self {
            id: format!("clawback:{credit_id}"),
            peer_id,
            kind: CreditKind::Clawback,
            amount: tokens,
            points: tokens.saturating_mul(POINTS_PER_TOKEN),
        }
    }

    /// The charge of `points` for `tokens` an account used with its API
    /// key (the price is the catalog's: [`crate::catalog::Price`]).
    pub fn spend(id: String, peer_id: String, tokens: u64, points: u64) -> Self {
        Self {
            id,
            peer_id,
            kind: CreditKind::Spend,
            amount: tokens,
            points,
        }
    }

    /// A credit for `tokens` delivered to a requester.
    pub fn tokens(id: String, peer_id: String, tokens: u64) -> Self {
        Self {
            id,
            peer_id,
            kind: CreditKind::Tokens,
            amount: tokens,
            points: tokens.saturating_mul(POINTS_PER_TOKEN),
        }
    }
}

/// A node's account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The node.
    pub peer_id: String,
    /// Points in total.
    pub points: u64,
    /// Tokens served.
    pub tokens: u64,
    /// Requests it served tokens for.
    pub requests: u64,
    /// Proofs passed.
    pub proofs: u64,
    /// Minutes of uptime credited.
    pub uptime_minutes: u64,
    /// Spot checks run for the network.
    #[serde(default)]
    pub checks: u64,
    /// Tokens checked in them.
    #[serde(default)]
    pub checked_tokens: u64,
    /// Requests whose tokens failed a spot check (their credit taken
    /// back).
    #[serde(default)]
    pub clawed_back_requests: u64,
    /// Tokens taken back.
    #[serde(default)]
    pub clawed_back_tokens: u64,
    /// Points taken back.
    #[serde(default)]
    pub clawed_back_points: u64,
    /// Requests the account made with its API keys.
    #[serde(default)]
    pub spent_requests: u64,
    /// Tokens they consumed (prompt and completion).
    #[serde(default)]
    pub spent_tokens: u64,
    /// Points they cost.
    #[serde(default)]
    pub spent_points: u64,
    /// Points earned, by what earned them (before spending and
    /// clawbacks).
    #[serde(default)]
    pub earned: Earned,
}

/// Points an account earned, by kind of work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earned {
    /// For tokens served (generated and embedded).
    pub tokens: u64,
    /// For Proof-of-FLOPS proofs passed.
    pub proofs: u64,
    /// For uptime.
    pub uptime: u64,
    /// For spot checks run for the network.
    pub checks: u64,
}

impl Balance {
    fn add(&mut self, c: &Credit) {
        if matches!(c.kind, CreditKind::Clawback | CreditKind::Spend) {
            self.points = self.points.saturating_sub(c.points);
        } else {
            self.points = self.points.saturating_add(c.points);
        }
        let earned = match c.kind {
            CreditKind::Tokens => Some(&mut self.earned.tokens),
            CreditKind::Proof => Some(&mut self.earned.proofs),
            CreditKind::Uptime => Some(&mut self.earned.uptime),
            CreditKind::Check => Some(&mut self.earned.checks),
            CreditKind::Spend | CreditKind::Clawback => None,
        };
        if let Some(e) = earned {
            *e = e.saturating_add(c.points);
        }
        match c.kind {
            CreditKind::Check => {
                self.checks += 1;
                self.checked_tokens = self.checked_tokens.saturating_add(c.amount);
            }
            CreditKind::Spend => {
                self.spent_requests += 1;
                self.spent_tokens = self.spent_tokens.saturating_add(c.amount);
                self.spent_points = self.spent_points.saturating_add(c.points);
            }
            CreditKind::Clawback => {
                self.clawed_back_requests += 1;
                self.clawed_back_tokens = self.clawed_back_tokens.saturating_add(c.amount);
                self.clawed_back_points = self.clawed_back_points.saturating_add(c.points);
            }
            CreditKind::Tokens => {
                self.tokens = self.tokens.saturating_add(c.amount);
                self.requests += 1;
            }
            CreditKind::Proof => self.proofs = self.proofs.saturating_add(c.amount),
            CreditKind::Uptime => {
                self.uptime_minutes = self.uptime_minutes.saturating_add(c.amount)
            }
        }
    }
}

/// Sums over all nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Nodes with an account.
    pub nodes: u64,
    /// Points.
    pub points: u64,
    /// Tokens served.
    pub tokens: u64,
    /// Proofs passed.
    pub proofs: u64,
    /// Minutes of uptime.
    pub uptime_minutes: u64,
}

type Batch = (
    Vec<Credit>,
    Option<oneshot::Sender<Result<(), Arc<LedgerError>>>>,
);

/// The ledger: reads go straight to the database, writes through the
/// group-commit thread.
#[derive(Debug)]
pub struct Ledger {
    db: Arc<Database>,
    path: PathBuf,
    writes: Option<mpsc::UnboundedSender<Batch>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Accounts whose balance changed since [`Ledger::take_changed`] was
    /// last called.
    changed: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Ledger {
    /// Finishes the queued writes and closes the database, so that it can
    /// be opened again at once.
    fn drop(&mut self) {
        self.writes.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn db_err<E: Into<redb::Error>>(path: &Path) -> impl Fn(E) -> LedgerError + '_ {
    move |e| LedgerError::Database {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Balance, LedgerError> {
    serde_json::from_slice(bytes).map_err(|source| LedgerError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value).map_err(|source| LedgerError::Encode {
        key: key.to_string(),
        source,
    })
}

impl Ledger {
    /// Opens (or creates) the ledger at `path` and starts its writer thread.
    ///
    /// # Errors
    /// The file cannot be created or is not a ledger.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let db = Database::create(path).map_err(db_err(path))?;
        // Create the tables so that readers find them.
        let w = db.begin_write().map_err(db_err(path))?;
        w.open_table(CREDITS).map_err(db_err(path))?;
        w.open_table(BALANCES).map_err(db_err(path))?;
        w.commit().map_err(db_err(path))?;
        let db = Arc::new(db);
        let (writes, rx) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        let writer_path = path.to_path_buf();
        let changed = Arc::<Mutex<HashSet<String>>>::default();
        let writer_changed = changed.clone();
        let writer = std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || writer(&writer_db, &writer_path, rx, &writer_changed))
            .map_err(LedgerError::Thread)?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            writes: Some(writes),
            writer: Some(writer),
            changed,
        })
    }

    /// Applies `credits`; resolves once they are durable (credits whose id
    /// was already recorded are skipped).
    ///
    /// # Errors
    /// The database failed, or the writer stopped.
    pub async fn apply(&self, credits: Vec<Credit>) -> Result<(), LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or(LedgerError::Stopped)?
            .send((credits, Some(tx)))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await
            .map_err(|_| LedgerError::Stopped)?
            .map_err(LedgerError::Commit)
    }

    /// Queues `credits` without waiting for them to commit.
    pub fn submit(&self, credits: Vec<Credit>) {
        let queued = self.writes.as_ref().map(|w| w.send((credits, None)));
        if !matches!(queued, Some(Ok(()))) {
            tracing::error!("the ledger writer has stopped; credits lost");
        }
    }

    /// The accounts whose balance changed since the last call (the
    /// dashboard's roster re-reads only these each sample; one reader).
    pub fn take_changed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every credit applied, in id order.
    ///
    /// # Errors
    /// The database failed or a record is corrupt.
    pub fn credits(&self) -> Result<Vec<Credit>, LedgerError> {
        let r = self.db.begin_read().map_err(db_err(&self.path))?;
        let table = r.open_table(CREDITS).map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err(&self.path))? {
            let (key, value) = entry.map_err(db_err(&self.path))?;
            let credit =
                serde_json::from_slice(value.value()).map_err(|source| LedgerError::Corrupt {
                    key: key.value().to_string(),
                    source,
                })?;
            out.push(credit);
        }
        Ok(out)
    }

    /// The account of `peer_id` (all zeros if it has none).
    ///
    /// # Errors
    /// The database failed or the record is corrupt.
    pub fn balance(&self, peer_id: &str) -> Result<Balance, LedgerError> {
        let r = self.db.begin_read().map_err(db_err(&self.path))?;
        let t = r.open_table(BALANCES).map_err(db_err(&self.path))?;
        self.read_balance(&t, peer_id)
    }

    /// `peer_id`'s account in `t` (zeros if it has none).
    fn read_balance(
        &self,
        t: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        peer_id: &str,
    ) -> Result<Balance, LedgerError> {
        match t.get(peer_id).map_err(db_err(&self.path))? {
            Some(v) => decode(peer_id, v.value()),
            None => Ok(Balance {
                peer_id: peer_id.to_string(),
                ..Balance::default()
            }),
        }
    }

    /// The accounts of `peer_ids`, in order (zeros for one without), read
    /// in one transaction.
    ///
    /// # Errors
    /// The database failed or a record is corrupt.
    pub fn balances_of(&self, peer_ids: &[String]) -> Result<Vec<Balance>, LedgerError> {
        let r = self.db.begin_read().map_err(db_err(&self.path))?;
        let t = r.open_table(BALANCES).map_err(db_err(&self.path))?;
        peer_ids
            .iter()
            .map(|peer_id| self.read_balance(&t, peer_id))
            .collect()
    }

    /// Every account, most points first, and the totals.
    ///
    /// # Errors
    /// The database failed or a record is corrupt.
    pub fn balances(&self) -> Result<(Vec<Balance>, Totals), LedgerError> {
        let r = self.db.begin_read().map_err(db_err(&self.path))?;
        let t = r.open_table(BALANCES).map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        let mut totals = Totals::default();
        for entry in t.iter().map_err(db_err(&self.path))? {
            let (k, v) = entry.map_err(db_err(&self.path))?;
            let b = decode(k.value(), v.value())?;
            totals.nodes += 1;
            totals.points += b.points;
            totals.tokens += b.tokens;
            totals.proofs += b.proofs;
            totals.uptime_minutes += b.uptime_minutes;
            out.push(b);
        }
        out.sort_by(|a, b| b.points.cmp(&a.points).then(a.peer_id.cmp(&b.peer_id)));
        Ok((out, totals))
    }

    /// Whether a credit with `id` is recorded.
    ///
    /// # Errors
    /// The database failed.
    pub fn has_credit(&self, id: &str) -> Result<bool, LedgerError> {
        let r = self.db.begin_read().map_err(db_err(&self.path))?;
        let t = r.open_table(CREDITS).map_err(db_err(&self.path))?;
        Ok(t.get(id).map_err(db_err(&self.path))?.is_some())
    }
}

/// Applies `credits` in one transaction; returns how many were new.
///
/// Each account touched is read and written once per transaction, however
/// many of its credits the group holds.
fn commit(db: &Database, path: &Path, credits: &[Credit]) -> Result<usize, LedgerError> {
    let w = db.begin_write().map_err(db_err(path))?;
    let mut new = 0;
    {
        let mut done = w.open_table(CREDITS).map_err(db_err(path))?;
        let mut balances = w.open_table(BALANCES).map_err(db_err(path))?;
        let mut changed: HashMap<&str, Balance> = HashMap::new();
        for c in credits {
            if done.get(c.id.as_str()).map_err(db_err(path))?.is_some() {
                continue;
            }
            let record = encode(&c.id, c)?;
            done.insert(c.id.as_str(), record.as_slice())
                .map_err(db_err(path))?;
            let b = match changed.entry(c.peer_id.as_str()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let b = match balances.get(c.peer_id.as_str()).map_err(db_err(path))? {
                        Some(v) => decode(&c.peer_id, v.value())?,
                        None => Balance {
                            peer_id: c.peer_id.clone(),
                            ..Balance::default()
                        },
                    };
                    e.insert(b)
                }
            };
            b.add(c);
            new += 1;
        }
        for (peer_id, b) in changed {
            let bytes = encode(peer_id, &b)?;
            balances
                .insert(peer_id, bytes.as_slice())
                .map_err(db_err(path))?;
        }
    }
    w.commit().map_err(db_err(path))?;
    Ok(new)
}

/// How long a group waits for more credits when the previous group held
/// several callers' (the relay is busy), like PostgreSQL's `commit_delay`:
/// fewer, larger commits (each costs about a dozen page writes and a sync,
/// whatever it holds). An idle relay commits at once.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

/// The group-commit loop: everything queued while a commit runs (or, when
/// busy, during [`GATHER`]) goes into the next one.
fn writer(
    db: &Database,
    path: &Path,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    changed: &Mutex<HashSet<String>>,
) {
    let mut busy = false;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        if busy {
            std::thread::sleep(GATHER);
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        busy = batch.len() > 1;
        let (credits, replies): (Vec<Vec<Credit>>, Vec<_>) = batch.into_iter().unzip();
        let credits: Vec<Credit> = credits.into_iter().flatten().collect();
        let result = commit(db, path, &credits).map(|_| ()).map_err(Arc::new);
        match &result {
            Err(e) => tracing::error!("ledger {}: commit failed: {e}", path.display()),
            Ok(()) => changed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(credits.into_iter().map(|c| c.peer_id)),
        }
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credit(id: &str, peer: &str, kind: CreditKind, amount: u64) -> Credit {
        Credit {
            id: id.into(),
            peer_id: peer.into(),
            kind,
            amount,
            points: amount * 10,
        }
    }

    #[tokio::test]
    async fn credits_count_once_and_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.redb");
        {
            let l = Ledger::open(&path).expect("open");
            l.apply(vec![
                credit("tokens:1:0", "a", CreditKind::Tokens, 7),
                credit("tokens:1:1", "b", CreditKind::Tokens, 3),
                credit("pof:a:1", "a", CreditKind::Proof, 1),
            ])
            .await
            .expect("apply");
            // The same credits again (a retry): nothing changes.
            l.apply(vec![credit("tokens:1:0", "a", CreditKind::Tokens, 7)])
                .await
                .expect("apply again");
            let a = l.balance("a").expect("a");
            assert_eq!(
                (a.points, a.tokens, a.requests, a.proofs),
                (70 + 10, 7, 1, 1)
            );
            assert!(l.has_credit("tokens:1:1").expect("lookup"));
            // The accounts changed, once; read together in order.
            assert_eq!(l.take_changed(), HashSet::from(["a".into(), "b".into()]));
            assert!(l.take_changed().is_empty());
            let both = l
                .balances_of(&["b".into(), "nobody".into(), "a".into()])
                .expect("read");
            let tokens: Vec<_> = both
                .iter()
                .map(|b| (b.peer_id.as_str(), b.tokens))
                .collect();
            assert_eq!(tokens, [("b", 3), ("nobody", 0), ("a", 7)]);
        }
        let l = Ledger::open(&path).expect("reopen");
        let (all, totals) = l.balances().expect("balances");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].peer_id, "a", "most points first");
        assert_eq!(totals.tokens, 10);
        assert_eq!(l.balance("nobody").expect("zero").points, 0);
    }

    #[tokio::test]
    async fn a_clawback_takes_a_credit_back_once_and_checks_earn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(&dir.path().join("ledger.redb")).expect("open");
        let served = Credit::tokens("tokens:e-9:0".into(), "cheat".into(), 12);
        l.apply(vec![
            served.clone(),
            Credit::tokens("tokens:e-8:0".into(), "cheat".into(), 5),
        ])
        .await
        .expect("apply");
        let back = Credit::clawback(&served.id, "cheat".into(), 12);
        assert_eq!(back.id, "clawback:tokens:e-9:0");
        let check = Credit::check("check:9:cheat".into(), "checker".into(), 10);
        assert_eq!(check.points, 3, "10 tokens checked, 4 a point, rounded up");
        for _ in 0..2 {
            // Applied twice (a retried check): taken once.
            l.apply(vec![back.clone(), check.clone()])
                .await
                .expect("apply");
        }
        let c = l.balance("cheat").expect("cheat");
        assert_eq!(
            (c.points, c.tokens, c.requests),
            (5, 17, 2),
            "the points of the failed request are gone; what it served stays on record"
        );
        assert_eq!(
            (
                c.clawed_back_requests,
                c.clawed_back_tokens,
                c.clawed_back_points
            ),
            (1, 12, 12)
        );
        assert_eq!(c.earned.tokens, 17, "earned stays what was earned");
        let k = l.balance("checker").expect("checker");
        assert_eq!((k.points, k.checks, k.checked_tokens), (3, 1, 10));
        assert_eq!(
            k.earned,
            Earned {
                checks: 3,
                ..Earned::default()
            }
        );
        // A clawback past the balance leaves zero, not a wrapped number.
        l.apply(vec![Credit::clawback("tokens:x", "checker".into(), 100)])
            .await
            .expect("apply");
        assert_eq!(l.balance("checker").expect("checker").points, 0);
    }

    #[tokio::test]
    async fn concurrent_credits_are_all_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = std::sync::Arc::new(Ledger::open(&dir.path().join("l.redb")).expect("open"));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.apply(vec![credit(
                        &format!("tokens:{i}:0"),
                        &format!("p{}", i % 7),
                        CreditKind::Tokens,
                        i,
                    )])
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("apply");
        }
        let (_, totals) = l.balances().expect("balances");
        assert_eq!(totals.tokens, (0..200).sum::<u64>());
        assert_eq!(totals.nodes, 7);
    }

    #[tokio::test]
    async fn one_group_with_several_credits_per_account_and_a_repeated_id_adds_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Ledger::open(&dir.path().join("l.redb")).expect("open");
        l.apply(vec![credit("tokens:0:0", "p1", CreditKind::Tokens, 3)])
            .await
            .expect("apply");
        l.apply(vec![
            credit("tokens:1:0", "p1", CreditKind::Tokens, 5),
            credit("tokens:2:0", "p2", CreditKind::Tokens, 1),
            credit("tokens:1:0", "p1", CreditKind::Tokens, 5),
            credit("tokens:3:0", "p1", CreditKind::Tokens, 7),
            credit("tokens:0:0", "p1", CreditKind::Tokens, 3),
        ])
        .await
        .expect("apply");
        assert_eq!(l.balance("p1").expect("p1").tokens, 15);
        assert_eq!(l.balance("p2").expect("p2").tokens, 1);
        assert_eq!(l.credits().expect("credits").len(), 4);
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").expect("write");
        let err = Ledger::open(&path).expect_err("refused");
        assert!(err.to_string().contains("ledger database"), "{err}");
        assert!(path.exists(), "the file is left alone");
    }
}
