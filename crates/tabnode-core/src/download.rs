//! A model file's download, resumable and verified: what the tab's worker
//! decides while its browser glue does the HTTP and the storage.
//!
//! The file arrives in order; every [`PART`] bytes become a part the worker
//! keeps (the Cache API), with the server's identity of the file (its size
//! and `Last-Modified`/`ETag`: [`Validator`]). A connection that breaks is
//! taken up again with `Range: bytes=N-` from what is held, in the same
//! visit or (from the saved parts) in the next; a `206` continues only the
//! same file, anything else starts over. The whole file is then checked
//! against the catalog's pin ([`FileCheck`]: size and SHA-256, hashed as the
//! bytes arrive); a mismatch is an error and the file is not used.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes per saved part: what a broken download can lose at most across
/// visits (within one, nothing: the bytes held in memory are kept).
pub const PART: usize = 16 << 20;

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The server answered with another status than 200 or 206.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The file.
        url: String,
        /// The status.
        status: u16,
    },
    /// A `206` whose `Content-Range` is missing, malformed or not the one
    /// asked for.
    #[error("{url}: a partial answer with Content-Range {value:?} where bytes from {from} were asked for")]
    ContentRange {
        /// The file.
        url: String,
        /// The header's value (empty when absent).
        value: String,
        /// The first byte asked for.
        from: u64,
    },
    /// The server's file is not the size the catalog pins.
    #[error(
        "{url}: the server's file is {actual} bytes, the catalog pins {expected}; not downloaded"
    )]
    Size {
        /// The file.
        url: String,
        /// The catalog's size.
        expected: u64,
        /// The server's.
        actual: u64,
    },
    /// The body ended before or after the announced size.
    #[error("{url}: {actual} bytes arrived where {expected} were announced")]
    Length {
        /// The file.
        url: String,
        /// Announced.
        expected: u64,
        /// Arrived.
        actual: u64,
    },
    /// The bytes are not the catalog's file.
    #[error("{url}: sha256 {actual}, the catalog pins {expected}; the file is not used")]
    Hash {
        /// The file.
        url: String,
        /// The catalog's hash (hex).
        expected: String,
        /// The download's (hex).
        actual: String,
    },
    /// A catalog hash that is not 64 hex digits.
    #[error("not a sha256 (64 hex digits): {0:?}")]
    BadPin(String),
}

/// What the catalog pins of a file: the page passes it to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

impl FileCheck {
    /// Refuses a hash that is not 64 hex digits (compared lower-case).
    ///
    /// # Errors
    /// [`DownloadError::BadPin`].
    pub fn new(bytes: u64, sha256: &str) -> Result<Self, DownloadError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DownloadError::BadPin(sha256.to_owned()));
        }
        Ok(Self {
            bytes,
            sha256: sha256.to_ascii_lowercase(),
        })
    }

    /// Checks a copy held already (the browser's cache): its size, then
    /// its hash.
    ///
    /// # Errors
    /// [`DownloadError::Length`] or [`DownloadError::Hash`], naming `url`.
    pub fn verify(&self, url: &str, bytes: &[u8]) -> Result<(), DownloadError> {
        if bytes.len() as u64 != self.bytes {
            return Err(DownloadError::Length {
                url: url.to_owned(),
                expected: self.bytes,
                actual: bytes.len() as u64,
            });
        }
        self.hash_is(url, Sha256::digest(bytes).as_slice())
    }

    fn hash_is(&self, url: &str, digest: &[u8]) -> Result<(), DownloadError> {
        let got = hex(digest);
        if got != self.sha256 {
            return Err(DownloadError::Hash {
                url: url.to_owned(),
                expected: self.sha256.clone(),
                actual: got,
            });
        }
        Ok(())
    }
}

/// The server's identity of the file: a resume continues only the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    /// Whole size.
    pub total: u64,
    /// `Last-Modified`, if sent.
    pub last_modified: Option<String>,
    /// `ETag`, if sent.
    pub etag: Option<String>,
}

/// A response's head, as the glue reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// HTTP status.
    pub status: u16,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range`.
    pub content_range: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
    /// `ETag`.
    pub etag: Option<String>,
}

/// What to do with a response's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// It continues the bytes held: read it.
    Continue,
    /// It is the whole file from its start: the bytes held (and the saved
    /// parts) are dropped; read it.
    Restarted,
    /// It cannot be used (the file changed, or the range is past its end):
    /// the saved parts are dropped; ask again, without a range.
    Again,
}

/// `Content-Range: bytes start-end/total` (a `206`'s; `*` totals refused).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (
        start.trim().parse().ok()?,
        end.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (start <= end && end < total).then_some((start, end, total))
}

/// One file's download in progress.
#[derive(Debug, Clone)]
pub struct Download {
    url: String,
    check: Option<FileCheck>,
    bytes: Vec<u8>,
    hasher: Sha256,
    validator: Option<Validator>,
    saved: usize,
}

impl Download {
    /// A download of `url`, checked against `check` if the catalog has it.
    pub fn new(url: &str, check: Option<FileCheck>) -> Self {
        Self {
            url: url.to_owned(),
            check,
            bytes: Vec::new(),
            hasher: Sha256::new(),
            validator: None,
            saved: 0,
        }
    }

    /// Takes up the parts a former try saved (in order, each with the
    /// validator it was saved under): those of part 0's file, up to the
    /// first missing or different one. Returns how many were taken; the
    /// caller drops the others.
    pub fn resume(&mut self, parts: impl IntoIterator<Item = (Validator, Vec<u8>)>) -> usize {
        for (v, bytes) in parts {
            let same = self.validator.as_ref().is_none_or(|held| *held == v);
            if !same || bytes.len() != PART {
                break;
            }
            self.validator = Some(v);
            self.hasher.update(&bytes);
            self.bytes.extend_from_slice(&bytes);
            self.saved += 1;
        }
        self.saved
    }

    /// Bytes held.
    pub fn have(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The whole size, once the server said it.
    pub fn total(&self) -> Option<u64> {
        self.validator.as_ref().map(|v| v.total)
    }

    /// The `Range` header the next request sends (none from the start).
    pub fn range(&self) -> Option<String> {
        (!self.bytes.is_empty()).then(|| format!("bytes={}-", self.bytes.len()))
    }

    /// Drops everything held: the next request starts from the first byte.
    pub fn reset(&mut self) {
        self.bytes.clear();
        self.hasher = Sha256::new();
        self.validator = None;
        self.saved = 0;
    }

    /// Judges a response to the request [`Download::range`] described.
    ///
    /// # Errors
    /// [`DownloadError::Status`] for a status other than 200, 206 or 416;
    /// [`DownloadError::ContentRange`] for a `206` that is not the range
    /// asked for; [`DownloadError::Size`] when the server's file is not the
    /// catalog's size.
    pub fn start(&mut self, head: &Head) -> Result<Start, DownloadError> {
        let (total, start) = match head.status {
            200 => {
                self.reset();
                // Without a length (a chunked body) the size is the pin's,
                // or unknown (0).
                let total = head
                    .content_length
                    .or(self.check.as_ref().map(|c| c.bytes))
                    .unwrap_or(0);
                (total, Start::Restarted)
            }
            206 => {
                let value = head.content_range.clone().unwrap_or_default();
                let from = self.have();
                let Some((first, _, total)) = parse_content_range(&value) else {
                    return Err(DownloadError::ContentRange {
                        url: self.url.clone(),
                        value,
                        from,
                    });
                };
                if first != from {
                    return Err(DownloadError::ContentRange {
                        url: self.url.clone(),
                        value,
                        from,
                    });
                }
                (total, Start::Continue)
            }
            // Asked past the end: the file is shorter than what is held.
            416 => {
                self.reset();
                return Ok(Start::Again);
            }
            status => {
                return Err(DownloadError::Status {
                    url: self.url.clone(),
                    status,
                })
            }
        };
        if let Some(check) = &self.check {
            if total != check.bytes {
                return Err(DownloadError::Size {
                    url: self.url.clone(),
                    expected: check.bytes,
                    actual: total,
                });
            }
        }
        let v = Validator {
            total,
            last_modified: head.last_modified.clone(),
            etag: head.etag.clone(),
        };
        if start == Start::Continue && self.validator.as_ref().is_some_and(|held| *held != v) {
            // Another file under the same name since the parts were saved.
            self.reset();
            return Ok(Start::Again);
        }
        self.validator = Some(v);
        Ok(start)
    }

    /// Appends a piece of the body; returns the indices of the parts it
    /// completed, to save ([`Download::part`]) under
    /// [`Download::validator`].
    pub fn push(&mut self, chunk: &[u8]) -> Range<usize> {
        self.hasher.update(chunk);
        self.bytes.extend_from_slice(chunk);
        let done = self.bytes.len() / PART;
        let from = self.saved.min(done);
        self.saved = done;
        from..done
    }

    /// Part `i`'s bytes, once whole.
    pub fn part(&self, i: usize) -> Option<&[u8]> {
        self.bytes.get(i * PART..(i + 1) * PART)
    }

    /// The identity the parts are saved under.
    pub fn validator(&self) -> Option<&Validator> {
        self.validator.as_ref()
    }

    /// The whole file, once its size and (where pinned) hash are right.
    ///
    /// # Errors
    /// [`DownloadError::Length`] when the body stopped short of (or ran
    /// past) the announced size, [`DownloadError::Hash`] when the bytes are
    /// not the catalog's file.
    pub fn finish(self) -> Result<Vec<u8>, DownloadError> {
        let actual = self.have();
        if let Some(expected) = self.total().filter(|&t| t != 0 && t != actual) {
            return Err(DownloadError::Length {
                url: self.url,
                expected,
                actual,
            });
        }
        if let Some(check) = &self.check {
            check.hash_is(&self.url, self.hasher.finalize().as_slice())?;
        }
        Ok(self.bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn pin(bytes: &[u8]) -> FileCheck {
        FileCheck::new(bytes.len() as u64, &hex(&Sha256::digest(bytes))).expect("pin")
    }

    fn whole(len: usize) -> Head {
        Head {
            status: 200,
            content_length: Some(len as u64),
            last_modified: Some("Thu, 03 Dec 2026 10:00:00 GMT".into()),
            ..Head::default()
        }
    }

    fn partial(from: usize, len: usize) -> Head {
        Head {
            status: 206,
            content_length: Some((len - from) as u64),
            content_range: Some(format!("bytes {from}-{}/{len}", len - 1)),
            last_modified: Some("Thu, 03 Dec 2026 10:00:00 GMT".into()),
            ..Head::default()
        }
    }

    #[test]
    fn content_ranges_parse_and_nonsense_does_not() {
        assert_eq!(parse_content_range("bytes 0-99/100"), Some((0, 99, 100)));
        assert_eq!(parse_content_range(" bytes 5-9/10 "), Some((5, 9, 10)));
        for bad in [
            "",
            "bytes */100",
            "bytes 9-5/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-b/c",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_broken_download_resumes_where_it_stopped_and_verifies() {
        let f = file(2 * PART + 12_345);
        let mut d = Download::new("/models/x.gguf", Some(pin(&f)));
        assert_eq!(d.range(), None);
        assert_eq!(d.start(&whole(f.len())), Ok(Start::Restarted));
        // The connection breaks a part and a bit in.
        let cut = PART + 1000;
        let mut saved = Vec::new();
        for c in f[..cut].chunks(65_536) {
            saved.extend(d.push(c));
        }
        assert_eq!(saved, [0]);
        assert_eq!(d.part(0), Some(&f[..PART]));
        assert_eq!(d.part(1), None);
        assert_eq!(d.range(), Some(format!("bytes={cut}-")));
        assert_eq!(d.start(&partial(cut, f.len())), Ok(Start::Continue));
        for c in f[cut..].chunks(1 << 20) {
            saved.extend(d.push(c));
        }
        assert_eq!(saved, [0, 1]);
        assert_eq!(d.finish(), Ok(f));
    }

    #[test]
    fn the_next_visit_takes_up_the_saved_parts() {
        let f = file(2 * PART + 10);
        let v = Validator {
            total: f.len() as u64,
            last_modified: Some("Thu, 03 Dec 2026 10:00:00 GMT".into()),
            etag: None,
        };
        let mut d = Download::new("/models/x.gguf", Some(pin(&f)));
        let parts = [
            (v.clone(), f[..PART].to_vec()),
            (v.clone(), f[PART..2 * PART].to_vec()),
        ];
        assert_eq!(d.resume(parts), 2);
        assert_eq!(d.range(), Some(format!("bytes={}-", 2 * PART)));
        assert_eq!(d.start(&partial(2 * PART, f.len())), Ok(Start::Continue));
        assert!(d.push(&f[2 * PART..]).is_empty(), "no new whole part");
        assert_eq!(d.finish(), Ok(f));
    }

    #[test]
    fn parts_of_another_file_stop_the_resume() {
        let f = file(3 * PART);
        let v = |m: &str| Validator {
            total: f.len() as u64,
            last_modified: Some(m.into()),
            etag: None,
        };
        let mut d = Download::new("/x", None);
        let parts = [
            (v("a"), f[..PART].to_vec()),
            (v("b"), f[PART..2 * PART].to_vec()),
            (v("a"), f[2 * PART..].to_vec()),
        ];
        assert_eq!(d.resume(parts), 1);
        // A short part is not one.
        let mut d = Download::new("/x", None);
        assert_eq!(d.resume([(v("a"), vec![0; 10])]), 0);
        assert_eq!(d.range(), None);
    }

    #[test]
    fn a_changed_file_or_an_ignored_range_starts_over() {
        let f = file(PART + 100);
        let mut d = Download::new("/x", Some(pin(&f)));
        d.start(&whole(f.len())).expect("start");
        d.push(&f[..PART + 10]);
        // The server ignores the range: the whole file again.
        assert_eq!(d.start(&whole(f.len())), Ok(Start::Restarted));
        assert_eq!(d.have(), 0);
        d.push(&f[..PART + 10]);
        // Modified since: ask again from the start.
        let mut changed = partial(PART + 10, f.len());
        changed.last_modified = Some("Fri, 04 Dec 2026 10:00:00 GMT".into());
        assert_eq!(d.start(&changed), Ok(Start::Again));
        assert_eq!(d.range(), None);
        // Past the end of a shorter file: again.
        d.start(&whole(f.len())).expect("start");
        d.push(&f[..10]);
        assert_eq!(
            d.start(&Head {
                status: 416,
                ..Head::default()
            }),
            Ok(Start::Again)
        );
        assert_eq!(d.have(), 0);
        d.start(&whole(f.len())).expect("start");
        d.push(&f);
        assert_eq!(d.finish(), Ok(f));
    }

    #[test]
    fn a_held_copy_is_checked_by_size_then_hash() {
        let f = file(1000);
        let check = pin(&f);
        assert_eq!(check.verify("/m/a", &f), Ok(()));
        let mut bad = f.clone();
        bad[999] ^= 0x80;
        let e = check.verify("/m/a", &bad).expect_err("hash");
        assert!(
            matches!(e, DownloadError::Hash { ref url, .. } if url == "/m/a"),
            "{e}"
        );
        let e = check.verify("/m/a", &f[..999]).expect_err("length");
        assert!(
            matches!(
                e,
                DownloadError::Length {
                    expected: 1000,
                    actual: 999,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_bytes_sizes_ranges_and_statuses_are_clear_errors() {
        let f = file(1000);
        // One byte changed: the hash refuses it.
        let mut bad = f.clone();
        bad[500] ^= 1;
        let mut d = Download::new("/models/x.gguf", Some(pin(&f)));
        d.start(&whole(f.len())).expect("start");
        d.push(&bad);
        let e = d.finish().expect_err("hash");
        assert!(matches!(e, DownloadError::Hash { .. }), "{e}");
        assert!(e.to_string().contains("the file is not used"), "{e}");
        // Short of the announced size.
        let mut d = Download::new("/x", None);
        d.start(&whole(f.len())).expect("start");
        d.push(&f[..999]);
        assert_eq!(
            d.finish(),
            Err(DownloadError::Length {
                url: "/x".into(),
                expected: 1000,
                actual: 999
            })
        );
        // Another size than the catalog's: refused before the body.
        let mut d = Download::new("/x", Some(pin(&f)));
        assert!(matches!(
            d.start(&whole(999)),
            Err(DownloadError::Size {
                expected: 1000,
                actual: 999,
                ..
            })
        ));
        // A 206 for another range, or without one.
        let mut d = Download::new("/x", None);
        d.start(&whole(f.len())).expect("start");
        d.push(&f[..100]);
        assert!(matches!(
            d.start(&partial(50, f.len())),
            Err(DownloadError::ContentRange { from: 100, .. })
        ));
        let mut no_range = partial(100, f.len());
        no_range.content_range = None;
        assert!(matches!(
            d.start(&no_range),
            Err(DownloadError::ContentRange { .. })
        ));
        assert_eq!(d.have(), 100, "an error keeps what is held");
        // Statuses.
        let mut d = Download::new("/x", None);
        assert_eq!(
            d.start(&Head {
                status: 404,
                ..Head::default()
            }),
            Err(DownloadError::Status {
                url: "/x".into(),
                status: 404
            })
        );
        // Pins.
        assert!(FileCheck::new(1, "abc").is_err());
        assert!(FileCheck::new(1, &"g".repeat(64)).is_err());
        assert_eq!(
            FileCheck::new(1, &"AB".repeat(32)).expect("pin").sha256,
            "ab".repeat(32)
        );
    }
}
