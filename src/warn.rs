//! Warnings a user must act on (plaintext traffic, datagrams that cannot be opened, mistyped
//! configuration) go to `tracing`; when the application has installed no subscriber they are
//! also written to stderr, so that they are visible without any setup.

/// Emits `message` as a `tracing` warning, and on stderr too when the current thread has no
/// subscriber (neither a global one nor a scoped one).
pub(crate) fn user_warning(message: &str) {
    tracing::warn!("{message}");
    let unheard = tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>());
    if unheard {
        eprintln!("mccache: warning: {message}");
    }
}
