//! Accounts and API keys (issue #16). An account is a libp2p identity: a
//! tab's, or a native node's key file. Its owner manages its keys over the
//! authenticated connection (`Request::ApiKeys`: create, revoke, list), so
//! no password exists; the relay keeps each key's SHA-256 only (in
//! `keys.redb`), the secret shown once at creation. `/v1/*` requests with
//! `Authorization: Bearer <key>` are the account's (charged in points,
//! `inference::run_request`); an unknown or revoked key is refused at once.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tabnode_core::{ApiKeyCommand, ApiKeyInfo, ApiKeyList};

/// The SHA-256 of a key (hex) → its record.
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

/// What a key's secret starts with (so it is recognisable in a config
/// file or a leak scanner).
pub const KEY_PREFIX: &str = "tn-";
/// Keys an account may hold (revoked ones included).
pub const MAX_KEYS: usize = 32;
/// The longest label.
pub const MAX_LABEL_CHARS: usize = 64;

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The database file cannot be opened, read or written.
    #[error("keys database {path}: {source}")]
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// A stored record cannot be read.
    #[error("key record {0} is corrupt")]
    Corrupt(String),
    /// The request is not acceptable (label, too many keys, unknown id).
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    account: String,
    info: ApiKeyInfo,
}

/// The relay's API keys.
#[derive(Debug)]
pub struct KeyStore {
    db: Database,
    path: PathBuf,
}

fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl KeyStore {
    /// Opens (or creates) the store.
    ///
    /// # Errors
    /// [`AccountError::Database`].
    pub fn open(path: &Path) -> Result<Self, AccountError> {
        let bad = |e: redb::Error| AccountError::Database {
            path: path.to_owned(),
            source: e,
        };
        let db = tabnode_vectors::open_when_free(path).map_err(|e| bad(e.into()))?;
        let tx = db.begin_write().map_err(|e| bad(e.into()))?;
        tx.open_table(KEYS).map_err(|e| bad(e.into()))?;
        tx.commit().map_err(|e| bad(e.into()))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn bad(&self, e: impl Into<redb::Error>) -> AccountError {
        AccountError::Database {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn records(&self) -> Result<Vec<(String, Record)>, AccountError> {
        let tx = self.db.begin_read().map_err(|e| self.bad(e))?;
        let t = tx.open_table(KEYS).map_err(|e| self.bad(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.bad(e))? {
            let (k, v) = entry.map_err(|e| self.bad(e))?;
            let r: Record = serde_json::from_slice(v.value())
                .map_err(|_| AccountError::Corrupt(k.value().to_owned()))?;
            out.push((k.value().to_owned(), r));
        }
        Ok(out)
    }

    fn put(&self, hash: &str, r: &Record) -> Result<(), AccountError> {
        let bytes = serde_json::to_vec(r).map_err(|_| AccountError::Corrupt(hash.to_owned()))?;
        let tx = self.db.begin_write().map_err(|e| self.bad(e))?;
        {
            let mut t = tx.open_table(KEYS).map_err(|e| self.bad(e))?;
            t.insert(hash, bytes.as_slice()).map_err(|e| self.bad(e))?;
        }
        tx.commit().map_err(|e| self.bad(e))
    }

    /// `account`'s keys, oldest first.
    ///
    /// # Errors
    /// [`AccountError::Database`], [`AccountError::Corrupt`].
    pub fn list(&self, account: &str) -> Result<Vec<ApiKeyInfo>, AccountError> {
        let mut keys: Vec<ApiKeyInfo> = self
            .records()?
            .into_iter()
            .filter(|(_, r)| r.account == account)
            .map(|(_, r)| r.info)
            .collect();
        keys.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// Carries out `command` for `account`.
    ///
    /// # Errors
    /// [`AccountError::Invalid`] for a bad label, too many keys or an
    /// unknown id; the database's errors.
    pub fn apply(
        &self,
        account: &str,
        command: &ApiKeyCommand,
    ) -> Result<ApiKeyList, AccountError> {
        let mut created = None;
        match command {
            ApiKeyCommand::List => {}
            ApiKeyCommand::Create { label } => {
                let label = label.trim();
                if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
                    return Err(AccountError::Invalid(format!(
                        "a label is at most {MAX_LABEL_CHARS} printable characters"
                    )));
                }
                if self.list(account)?.len() >= MAX_KEYS {
                    return Err(AccountError::Invalid(format!(
                        "an account holds at most {MAX_KEYS} keys"
                    )));
                }
                let secret: String = (0..32)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                let key = format!("{KEY_PREFIX}{secret}");
                let h = hash(&key);
                let info = ApiKeyInfo {
                    id: h[..12].to_owned(),
                    label: label.to_owned(),
                    created_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    revoked: false,
                };
                self.put(
                    &h,
                    &Record {
                        account: account.to_owned(),
                        info,
                    },
                )?;
                created = Some(key);
            }
            ApiKeyCommand::Revoke { id } => {
                let Some((h, mut r)) = self
                    .records()?
                    .into_iter()
                    .find(|(_, r)| r.account == account && r.info.id == *id)
                else {
                    return Err(AccountError::Invalid(format!(
                        "this account has no key {id}"
                    )));
                };
                r.info.revoked = true;
                self.put(&h, &r)?;
            }
        }
        Ok(ApiKeyList {
            created,
            keys: self.list(account)?,
        })
    }

    /// The account `key` belongs to, if it is a live key.
    ///
    /// # Errors
    /// The database's errors.
    pub fn account_of(&self, key: &str) -> Result<Option<String>, AccountError> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let tx = self.db.begin_read().map_err(|e| self.bad(e))?;
        let t = tx.open_table(KEYS).map_err(|e| self.bad(e))?;
        let h = hash(key);
        let Some(v) = t.get(h.as_str()).map_err(|e| self.bad(e))? else {
            return Ok(None);
        };
        let r: Record = serde_json::from_slice(v.value()).map_err(|_| AccountError::Corrupt(h))?;
        Ok((!r.info.revoked).then_some(r.account))
    }
}

/// Why a paying account may not start a request: it has no points left
/// (it may end a request a little below zero: a charge is known at the
/// end; the balance stops at zero). `None` when it may.
pub(crate) fn broke(state: &crate::state::RelayState, account: &str) -> Option<String> {
    let ledger = state.ledger()?;
    let points = ledger.balance(account).map_or(0, |b| b.points);
    (points == 0).then(|| {
        format!(
            "The account {account} has no points left: contribute compute from a tab or a node to earn them."
        )
    })
}

/// Charges `account` `points` for `tokens` (once: `id` names the work),
/// durably before the caller answers.
pub(crate) async fn charge(
    state: &crate::state::RelayState,
    id: String,
    account: &str,
    tokens: u64,
    points: u64,
) {
    let Some(ledger) = state.ledger() else {
        return;
    };
    let spend = crate::ledger::Credit::spend(id.clone(), account.to_owned(), tokens, points);
    if let Err(e) = ledger.apply(vec![spend]).await {
        tracing::error!("charging {account} for {id}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_listed_revoked_and_kept_hashed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys.redb");
        let store = KeyStore::open(&path).expect("open");
        let made = store
            .apply(
                "alice",
                &ApiKeyCommand::Create {
                    label: "laptop".into(),
                },
            )
            .expect("create");
        let key = made.created.clone().expect("the secret, once");
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert_eq!(made.keys.len(), 1);
        assert_eq!(
            store.account_of(&key).expect("lookup"),
            Some("alice".into())
        );
        // Never shown again; others cannot see or revoke it.
        let listed = store.apply("alice", &ApiKeyCommand::List).expect("list");
        assert_eq!(listed.created, None);
        assert!(store.list("bob").expect("list").is_empty());
        let id = listed.keys[0].id.clone();
        assert!(matches!(
            store.apply("bob", &ApiKeyCommand::Revoke { id: id.clone() }),
            Err(AccountError::Invalid(_))
        ));
        assert_eq!(
            store.account_of(&key).expect("lookup"),
            Some("alice".into())
        );
        // The file holds the hash, not the secret.
        drop(store);
        let raw = std::fs::read(&path).expect("file");
        assert!(!raw.windows(key.len()).any(|w| w == key.as_bytes()));
        let store = KeyStore::open(&path).expect("reopen");
        assert_eq!(store.account_of(&key).expect("kept"), Some("alice".into()));
        let after = store
            .apply("alice", &ApiKeyCommand::Revoke { id })
            .expect("revoke");
        assert!(after.keys[0].revoked);
        assert_eq!(
            store.account_of(&key).expect("lookup"),
            None,
            "revoked at once"
        );
        // Bad labels, unknown keys, too many keys.
        for label in ["x".repeat(65), "a\nb".into()] {
            assert!(matches!(
                store.apply("alice", &ApiKeyCommand::Create { label }),
                Err(AccountError::Invalid(_))
            ));
        }
        assert_eq!(store.account_of("tn-00").expect("lookup"), None);
        assert_eq!(store.account_of("sk-whatever").expect("lookup"), None);
        for i in 1..MAX_KEYS {
            store
                .apply(
                    "carol",
                    &ApiKeyCommand::Create {
                        label: format!("k{i}"),
                    },
                )
                .expect("create");
        }
        store
            .apply(
                "carol",
                &ApiKeyCommand::Create {
                    label: "last".into(),
                },
            )
            .expect("the 32nd");
        assert!(matches!(
            store.apply(
                "carol",
                &ApiKeyCommand::Create {
                    label: "one more".into()
                }
            ),
            Err(AccountError::Invalid(_))
        ));
    }
}
