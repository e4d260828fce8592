//! `csi-cloud snapshot export|import`: the EBS direct transfers from the
//! command line (docs/csi-cloud.md, "Snapshot export and import").
//!
//! AWS region, credentials and endpoint come from the usual environment and
//! files, as for the driver; `--aws-endpoint-url` points at an emulator.
//! The report (JSON, one line) goes to stdout; logs and the progress bar
//! go to stderr.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::completion::DEFAULT_WAIT_MINUTES;
use super::{
    export, import, ExportOptions, ImportOptions, Manifest, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_MINUTES,
    MAX_CONCURRENCY,
};

/// `csi-cloud snapshot …`
#[derive(Debug, Parser)]
#[command(
    name = "csi-cloud snapshot",
    about = "Export a device into an EBS snapshot, or import one onto a device, through the EBS direct APIs"
)]
pub struct SnapshotCli {
    #[command(subcommand)]
    command: Command,
    /// The AWS endpoint (an emulator); default: AWS_ENDPOINT_URL, else AWS's.
    #[arg(long, global = true)]
    aws_endpoint_url: Option<String>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a block device or image file into a new snapshot.
    Export(ExportArgs),
    /// Write a snapshot onto a block device or image file.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The block device or image file to read.
    #[arg(long)]
    source: PathBuf,
    /// Make the snapshot incremental against this one.
    #[arg(long)]
    parent: Option<String>,
    /// The parent's manifest (its export's --manifest-out): unchanged blocks are not sent.
    #[arg(long, requires = "parent")]
    parent_manifest: Option<PathBuf>,
    /// Where to write the new snapshot's manifest.
    #[arg(long)]
    manifest_out: Option<PathBuf>,
    /// The snapshot's size in GiB; default: the source's, rounded up.
    #[arg(long)]
    size_gib: Option<i64>,
    /// The snapshot's description.
    #[arg(long, default_value = "exported by csi-cloud")]
    description: String,
    /// A tag for the snapshot (key=value; repeat for more).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Blocks in flight at once (1 to 256).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = concurrency)]
    concurrency: usize,
    /// Minutes EBS waits for the export to complete before failing the snapshot.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MINUTES)]
    timeout_minutes: i32,
    /// Return after CompleteSnapshot, without waiting for the snapshot to be `completed`.
    #[arg(long)]
    no_wait: bool,
    /// Minutes to wait for the snapshot to be `completed` (1 to 1440).
    #[arg(long, default_value_t = DEFAULT_WAIT_MINUTES, conflicts_with = "no_wait",
          value_parser = clap::value_parser!(u64).range(1..=1440))]
    wait_timeout_minutes: u64,
    /// No progress bar on stderr.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The snapshot to read.
    #[arg(long)]
    snapshot_id: String,
    /// The block device or image file to write (a missing file is created).
    #[arg(long)]
    target: PathBuf,
    /// The target already holds this snapshot (an ancestor of --snapshot-id):
    /// write only the blocks that differ from it (ListChangedBlocks).
    #[arg(long, value_name = "SNAPSHOT_ID")]
    onto_parent: Option<String>,
    /// Blocks in flight at once (1 to 256).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = concurrency)]
    concurrency: usize,
    /// No progress bar on stderr.
    #[arg(long)]
    no_progress: bool,
}

/// Runs `csi-cloud snapshot <args>` (`args` without the program and
/// `snapshot`); returns the process exit code: 0 done, 1 failed, 2 bad usage.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let argv = std::iter::once(OsString::from("csi-cloud snapshot")).chain(args);
    let cli = match SnapshotCli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Err(e) = csi_core::flags::init_logging(&cli.log_level) {
        eprintln!("csi-cloud snapshot: {e}");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csi-cloud snapshot: tokio runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(execute(cli)) {
        Ok(report) => {
            // The report is the command's output (a CLI, not the plugin): stdout.
            use std::io::Write;
            match writeln!(std::io::stdout().lock(), "{report}") {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("csi-cloud snapshot: write the report: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("csi-cloud snapshot: {e}");
            1
        }
    }
}

async fn execute(cli: SnapshotCli) -> Result<String, crate::Error> {
    let clients = crate::aws::Clients::load(cli.aws_endpoint_url.as_deref()).await?;
    match cli.command {
        Command::Export(a) => {
            let tags = crate::parse_tags(&a.tags.join(","))
                .map_err(|e| csi_core::Error::InvalidArgument(format!("--tag {e}")))?;
            let parent_manifest = a.parent_manifest.as_deref().map(Manifest::load).transpose()?;
            let report = export(
                &clients,
                ExportOptions {
                    source: a.source,
                    parent: a.parent,
                    parent_manifest,
                    volume_size_gib: a.size_gib,
                    description: a.description,
                    tags,
                    concurrency: a.concurrency,
                    timeout_minutes: a.timeout_minutes,
                    progress: !a.no_progress,
                    wait: (!a.no_wait).then(|| std::time::Duration::from_secs(a.wait_timeout_minutes * 60)),
                },
            )
            .await?;
            if let Some(p) = &a.manifest_out {
                report.manifest.save(p)?;
            }
            Ok(json(&report))
        }
        Command::Import(a) => {
            let report = import(
                &clients.ebs,
                ImportOptions {
                    snapshot_id: a.snapshot_id,
                    target: a.target,
                    concurrency: a.concurrency,
                    progress: !a.no_progress,
                    onto_parent: a.onto_parent,
                },
            )
            .await?;
            Ok(json(&report))
        }
    }
}

/// `--concurrency`: 1 to [`MAX_CONCURRENCY`].
fn concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_CONCURRENCY}")),
    }
}

/// A report as one JSON line.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"encode the report: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_are_exit_code_2() {
        let a = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(run(a(&["export"])), 2, "--source is required");
        assert_eq!(run(a(&["export", "--source", "/x", "--parent-manifest", "/m"])), 2, "a manifest needs --parent");
        assert_eq!(run(a(&["import", "--snapshot-id", "s", "--target", "/t", "--concurrency", "0"])), 2);
        assert_eq!(run(a(&["frobnicate"])), 2);
        assert_eq!(run(a(&["export", "--source", "/x", "--no-wait", "--wait-timeout-minutes", "5"])), 2);
        assert_eq!(run(a(&["export", "--source", "/x", "--wait-timeout-minutes", "0"])), 2);
    }
}
