//! The process-wide ONNX Runtime environment and a small pool of sessions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use super::ModelError;

/// Environment variable naming the `libonnxruntime.so` to load when no explicit
/// path is configured.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The one ONNX Runtime environment of this process and the library it was loaded from.
static ORT_ENV: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing we do under these locks can leave the data half-updated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Loads ONNX Runtime (once per process) and returns its environment.
///
/// The library is `dylib` if given, else `$ORT_DYLIB_PATH`. ONNX Runtime can be
/// loaded only once per process: later calls return the existing environment
/// (with a warning if they asked for a different library). A failed load is not
/// remembered, so a later call with a correct path can still succeed.
pub fn ort_environment(dylib: Option<&Path>) -> Result<Environment, ModelError> {
    let mut guard = lock(&ORT_ENV);
    let requested = dylib.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(ORT_DYLIB_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    if let Some((env, loaded)) = guard.as_ref() {
        if let Some(req) = &requested
            && std::fs::canonicalize(req).ok().as_deref() != Some(loaded.as_path())
        {
            tracing::warn!(
                requested = %req.display(),
                loaded = %loaded.display(),
                "ONNX Runtime is already loaded from another library; keeping it"
            );
        }
        return Ok(env.clone());
    }
    let path = requested.ok_or_else(|| ModelError::OrtLibrary {
        reason: format!("no library path configured and {ORT_DYLIB_ENV} is not set"),
    })?;
    let path = std::fs::canonicalize(&path).map_err(|e| ModelError::OrtLibrary {
        reason: format!("{}: {e}", path.display()),
    })?;
    if !path.is_file() {
        return Err(ModelError::OrtLibrary {
            reason: format!("{} is not a file", path.display()),
        });
    }
    let builder = ort::init_from(&path).map_err(|e| ModelError::OrtLibrary {
        reason: e.to_string(),
    })?;
    let env = builder
        .with_name("embedder")
        .with_telemetry(false)
        .build()
        .map_err(ModelError::ort("creating the ONNX Runtime environment"))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    *guard = Some((env.clone(), path));
    Ok(env)
}

/// Builds one CPU session with our standard options.
pub(crate) fn build_session(
    env: &Environment,
    model: &Path,
    intra_threads: usize,
) -> Result<Session, ModelError> {
    if !model.is_file() {
        return Err(ModelError::MissingFile {
            path: model.to_path_buf(),
        });
    }
    let ctx = "configuring the session";
    Session::builder(env)
        .map_err(ModelError::ort(ctx))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ModelError::ort(ctx))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(ModelError::ort(ctx))?
        .with_inter_threads(1)
        .map_err(ModelError::ort(ctx))?
        .with_intra_op_spinning(false)
        .map_err(ModelError::ort(ctx))?
        .with_inter_op_spinning(false)
        .map_err(ModelError::ort(ctx))?
        .commit_from_file(model)
        .map_err(|e| ModelError::BadModel {
            path: model.to_path_buf(),
            reason: format!("ONNX Runtime could not load it: {e}"),
        })
}

/// A fixed set of sessions, each behind its own mutex. `get` prefers a free
/// session and otherwise waits for one (round robin).
pub(crate) struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        Self {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of sessions, i.e. how many runs can go at the same time.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn get(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        lock(&self.sessions[start % n])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // This unit-test binary never loads ONNX Runtime successfully, so these
    // exercise the failure paths of the one-per-process initialisation.
    #[test]
    fn missing_or_invalid_library_is_a_clear_error() {
        let err = ort_environment(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(matches!(err, ModelError::OrtLibrary { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("make model") && msg.contains(ORT_DYLIB_ENV),
            "{msg}"
        );

        // A file that is not a shared library.
        let not_a_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = ort_environment(Some(&not_a_lib)).unwrap_err();
        assert!(matches!(err, ModelError::OrtLibrary { .. }), "{err:?}");
    }
}
