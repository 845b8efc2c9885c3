//! Ranks agreeing: on success before going on, and on what they hold.

use sha2::{Digest, Sha256};

use super::Ranks;
use crate::error::{Error, Result};

impl Ranks {
    /// Collective: `result` of every rank, so that all go on or all stop. A rank that failed
    /// returns its own error; the others return an error naming the first rank that failed and
    /// its message.
    pub fn all_ok<T>(&self, result: Result<T>) -> Result<T> {
        if !self.is_distributed() {
            return result;
        }
        let mine = match &result {
            Ok(_) => Vec::new(),
            Err(e) => {
                let mut m = vec![1u8];
                m.extend_from_slice(e.to_string().as_bytes());
                m
            }
        };
        let all = self.collective().all_gather(&mine);
        let value = result?;
        match all.iter().position(|m| !m.is_empty()) {
            None => Ok(value),
            Some(rank) => Err(Error::Rank {
                rank,
                size: self.size(),
                reason: format!("failed: {}", String::from_utf8_lossy(&all[rank][1..])),
            }),
        }
    }

    /// Collective: rank 0 runs `f` first (making what the others then find: a generated
    /// dataset, a pretrained backbone's cache), then every other rank; all stop if one fails.
    pub fn root_first<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.is_distributed() {
            return f();
        }
        if self.is_root() {
            let r = self.all_ok(f())?;
            self.all_ok(Ok(r))
        } else {
            self.all_ok(Ok(()))?;
            self.all_ok(f())
        }
    }

    /// Collective: an error unless every rank's `bytes` equal rank 0's; it names the first rank
    /// that differs and `what` differs (the same error on every rank).
    pub fn check_same(&self, what: &str, bytes: &[u8]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let digest = Sha256::digest(bytes);
        let all = self.collective().all_gather(&digest);
        match all.iter().position(|d| d != &all[0]) {
            None => Ok(()),
            Some(rank) => Err(Error::Rank {
                rank,
                size: self.size(),
                reason: format!(
                    "{what} not the same as rank 0's (sha256 {} vs {}); every rank must be \
                     started with the same arguments, data and weights",
                    hex(&all[rank]),
                    hex(&all[0])
                ),
            }),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Ranks, test_ranks::Mirror};
    use crate::error::Error;

    #[test]
    fn a_rank_that_differs_is_named() {
        let same = Ranks::new(Mirror {
            rank: 0,
            size: 3,
            others: None,
        });
        same.check_same("configuration", b"abc").unwrap();
        let differs = Ranks::new(Mirror {
            rank: 0,
            size: 3,
            others: Some(vec![0; 32]),
        });
        let e = differs.check_same("configuration", b"abc").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Rank {
                    rank: 1,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("configuration not the same"), "{e}");
    }

    #[test]
    fn a_failed_rank_stops_the_others() {
        let mut msg = vec![1u8];
        msg.extend_from_slice(b"no such file");
        let r = Ranks::new(Mirror {
            rank: 0,
            size: 2,
            others: Some(msg),
        });
        let e = r.all_ok(Ok(5)).unwrap_err();
        assert_eq!(e.to_string(), "rank 1 of 2: failed: no such file");
        let ok = Ranks::new(Mirror {
            rank: 1,
            size: 2,
            others: Some(Vec::new()),
        });
        assert_eq!(ok.all_ok(Ok(5)).unwrap(), 5);
    }
}
