//! The proxy's side of `run-app` in a pod with several app containers: the injector names the
//! containers it wrapped (`STRAIT_RUN_APP_CONTAINERS=a,b`), each run-app reports its own end
//! (`POST /quitquitquit?container=a`), and the proxy stops once every one of them has ended.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The variable (and `--run-app-containers`) the injector sets on the proxy container.
pub const ENV: &str = "STRAIT_RUN_APP_CONTAINERS";

/// The containers that run under `run-app`, and which of them have ended. Empty: none are
/// known, and only a plain `/quitquitquit` stops the proxy.
#[derive(Debug, Default)]
pub struct RunApps {
    /// Container name -> whether it has reported its end.
    ended: Mutex<BTreeMap<String, bool>>,
}

/// What a container's report leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Every container has ended: the proxy stops.
    AllEnded,
    /// These have not ended yet (sorted).
    Waiting(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunAppsError {
    #[error("{}", unknown(.name, .known))]
    Unknown { name: String, known: Vec<String> },
    #[error("{ENV}: {name:?} is not a container name (lowercase letters, digits and '-')")]
    BadName { name: String },
}

fn unknown(name: &str, known: &[String]) -> String {
    if known.is_empty() {
        format!("unknown container {name:?}: this proxy was told of no run-app containers ({ENV})")
    } else {
        format!(
            "unknown container {name:?}: the run-app containers are {}",
            known.join(", ")
        )
    }
}

/// A Kubernetes container name: an RFC 1123 label.
pub fn is_container_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl RunApps {
    /// From the names the injector wrote; empty names are skipped, repeats count once.
    pub fn new<I, S>(names: I) -> Result<RunApps, RunAppsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut ended = BTreeMap::new();
        for name in names {
            let name = name.as_ref().trim();
            if name.is_empty() {
                continue;
            }
            if !is_container_name(name) {
                return Err(RunAppsError::BadName { name: name.into() });
            }
            ended.insert(name.to_string(), false);
        }
        Ok(RunApps {
            ended: Mutex::new(ended),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The containers, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// `name` has ended. Reporting twice changes nothing; an unknown name is an error and is
    /// not counted.
    pub fn ended(&self, name: &str) -> Result<Report, RunAppsError> {
        let mut ended = self.lock();
        match ended.get_mut(name) {
            Some(done) => *done = true,
            None => {
                return Err(RunAppsError::Unknown {
                    name: name.to_string(),
                    known: ended.keys().cloned().collect(),
                });
            }
        }
        let waiting: Vec<String> = ended
            .iter()
            .filter(|(_, done)| !**done)
            .map(|(name, _)| name.clone())
            .collect();
        Ok(if waiting.is_empty() {
            Report::AllEnded
        } else {
            Report::Waiting(waiting)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_stops_once_every_container_has_ended() {
        let apps = RunApps::new(["b", "a", "", "a"]).unwrap();
        assert_eq!(apps.names(), ["a", "b"]);
        assert_eq!(apps.ended("a"), Ok(Report::Waiting(vec!["b".into()])));
        assert_eq!(
            apps.ended("a"),
            Ok(Report::Waiting(vec!["b".into()])),
            "a second report changes nothing"
        );
        let err = apps.ended("c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown container \"c\": the run-app containers are a, b"
        );
        assert_eq!(apps.ended("b"), Ok(Report::AllEnded));
        assert_eq!(apps.ended("b"), Ok(Report::AllEnded));
    }

    #[test]
    fn without_containers_every_name_is_unknown() {
        let apps = RunApps::new(Vec::<String>::new()).unwrap();
        assert!(apps.is_empty());
        let err = apps.ended("a").unwrap_err();
        assert!(
            err.to_string().contains("told of no run-app containers"),
            "{err}"
        );
    }

    #[test]
    fn names_must_be_container_names() {
        for bad in ["A", "a_b", "-a", "a-", "a b", &"x".repeat(64)] {
            assert!(
                matches!(RunApps::new([bad]), Err(RunAppsError::BadName { .. })),
                "{bad}"
            );
        }
        assert!(RunApps::new(["a-1", " web "]).is_ok());
    }
}
