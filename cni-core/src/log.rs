//! Logging for plugins: `tracing` to stderr, or to the file named by the
//! config's `logFile`. Never stdout: stdout carries the result.

use std::sync::Once;

use crate::types::NetConf;

static INIT: Once = Once::new();

/// Installs the global subscriber once. Level: config `logLevel`, else the
/// `CNI_LOG_LEVEL` environment variable, else `warn`.
pub fn init(conf: &NetConf) {
    INIT.call_once(|| {
        let level = conf
            .log_level
            .clone()
            .or_else(|| std::env::var("CNI_LOG_LEVEL").ok())
            .and_then(|l| l.parse::<tracing::Level>().ok())
            .unwrap_or(tracing::Level::WARN);
        let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(false).with_target(false);
        let file =
            conf.log_file.as_deref().and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
        let _ = match file {
            Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    });
}
